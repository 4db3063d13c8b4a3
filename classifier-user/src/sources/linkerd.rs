//! The policy compiler for Linkerd's own resources: a [`DocumentSet`] in,
//! a [`Policy`] out, with the verdicts Linkerd's semantics give.
//!
//! | document | rules |
//! |---|---|
//! | `ClassifierPolicy` (at most one) | defaults, excluded UIDs, mark, `clusterNetworks`; its own rules first (ids 1..) |
//! | `Server` | per selected pod: its IPs, `port` (number or named container port), `proxyProtocol` |
//! | `Service` | cluster IPs: opaque-ports annotation (own, else namespace's), `appProtocol: linkerd.io/opaque` ports |
//! | `Pod` | pod IPs: opaque-ports annotation (own, else namespace's); UID -> namespace |
//! | `Namespace` | only its annotation, inherited by Services and Pods |
//! | `EgressNetwork` | its networks: annotation (else default) opaque, every other port detect |
//!
//! Linkerd's semantics and how the rules reproduce them:
//!
//! - **An opaque-ports annotation replaces the default list** for what it is
//!   on (that is what Linkerd's proxy injector does), so an annotated Service
//!   or Pod gets an opaque rule for the annotated ports and a wildcard-port
//!   `detect` rule for the rest. A Service's `appProtocol: linkerd.io/opaque`
//!   ports are opaque in any case; without an annotation the other ports keep
//!   the default opaque ports.
//! - **An EgressNetwork that matches decides the whole port space**
//!   (Linkerd's egress fallback is detection, whatever the default ports):
//!   an opaque rule for its ports and a wildcard-port `detect` rule.
//!   EgressNetworks in the global namespace (`linkerd-egress` unless
//!   configured) are node-wide rules; the others apply only to clients in
//!   their own namespace (scoped rules), which come first. Among the matching
//!   ones of a universe the smallest CIDR wins (rule semantics), then the
//!   oldest (`creationTimestamp`; none counts as newest), then by name:
//!   their rules get ids in that order. Where two EgressNetworks have the
//!   same CIDR, the winner also gets explicit `detect` rules for the loser's
//!   opaque ports, because an explicit-port rule would otherwise beat the
//!   winner's wildcard rule.
//! - **Server** `proxyProtocol`: `opaque` -> opaque, `HTTP/1` -> http1,
//!   `HTTP/2` and `gRPC` -> http2. `unknown` -> no rule (Linkerd detects).
//!   `TLS` -> no rule: Linkerd skips detection and forwards the bytes as
//!   TLS without terminating, but a TLS client speaks first (ClientHello),
//!   so detection never stalls and there is nothing to say in the kernel.
//!   Server rules come before the Pod rules of the same IPs, so a Server's
//!   protocol wins over the pod's annotation on its port; among Servers
//!   selecting the same pod port the oldest wins (then by name).
//! - Pods that have finished (`Succeeded`, `Failed`; their IPs get reused)
//!   and `hostNetwork` pods (their IP is the node's, and Linkerd does not
//!   mesh them) get no rules.
//!
//! Everything else in the set is skipped with a debug log. Malformed
//! documents of the kinds above are errors naming the document (origin,
//! kind, namespace/name), the field and the value.
//!
//! Rule ids are deterministic: ClassifierPolicy rules, then Servers, then
//! Services, then Pods (each in (namespace, name) order), then
//! EgressNetworks in precedence order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_yaml::Value;

use super::document::{show, Document, DocumentSet};
use crate::policy::file::{check_except, default_cluster_networks, parse_cidr};
use crate::policy::{Network, Policy, PolicyError, PortSet, Protocol, Rule};

/// Linkerd's annotation for opaque ports.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
/// A Service port with this `appProtocol` is opaque.
pub const OPAQUE_APP_PROTOCOL: &str = "linkerd.io/opaque";
/// Linkerd's default global egress namespace.
pub const DEFAULT_EGRESS_NAMESPACE: &str = "linkerd-egress";

const POLICY_GROUP: &str = "policy.linkerd.io/";
const SERVER_VERSIONS: [&str; 3] = ["v1beta1", "v1beta2", "v1beta3"];
const EGRESS_VERSIONS: [&str; 1] = ["v1alpha1"];

/// Compiler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// EgressNetworks in this namespace apply to every client.
    pub egress_global_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            egress_global_namespace: DEFAULT_EGRESS_NAMESPACE.to_string(),
        }
    }
}

/// Compiles `set` into a policy; see the module documentation.
pub fn compile_documents(set: &DocumentSet, opts: &Options) -> Result<Policy, PolicyError> {
    let mut c = Compiler::default();

    // ClassifierPolicy: settings and its own rules, ids 1.. as in a file.
    let mut ours = set.iter().filter(|d| d.is_classifier_policy());
    let (mut policy, cluster_networks) = match ours.next() {
        Some(doc) => {
            if let Some(other) = ours.next() {
                return Err(invalid(
                    other,
                    "kind",
                    format!(
                        "at most one ClassifierPolicy is allowed; another one is at {}",
                        doc.origin
                    ),
                ));
            }
            let parsed = set.parse_classifier_policy(doc)?;
            let mut policy = parsed.policy;
            for r in &mut policy.rules {
                r.origin = format!("{} ({}) {}", doc.describe(), doc.origin, r.origin);
            }
            (policy, parsed.cluster_networks)
        }
        None => (Policy::builtin_default(), default_cluster_networks()),
    };
    c.next_id = policy.rules.len() as u32 + 1;
    c.rules = std::mem::take(&mut policy.rules);
    let defaults = policy.default_opaque_ports.clone();

    for doc in set.iter() {
        let known = match doc.kind.as_str() {
            "Namespace" | "Service" | "Pod" => doc.api_version == "v1",
            "Server" => is_version(doc, &SERVER_VERSIONS),
            "EgressNetwork" => is_version(doc, &EGRESS_VERSIONS),
            _ => doc.is_classifier_policy(),
        };
        if !known {
            tracing::debug!(origin = %doc.origin, kind = %doc.kind, api_version = %doc.api_version, "skipping a document the policy compiler does not read");
        }
    }

    // Namespace annotations, inherited by Services and Pods.
    let mut ns_ports: BTreeMap<&str, PortSet> = BTreeMap::new();
    for doc in set.of_kind("Namespace").filter(|d| d.api_version == "v1") {
        need_name(doc)?;
        if let Some(ports) = opaque_annotation(doc, None)? {
            ns_ports.insert(&doc.name, ports);
        }
    }

    // Pods, parsed once: Servers select them and get their own rules.
    let mut pods: Vec<PodInfo> = Vec::new();
    for doc in set.of_kind("Pod").filter(|d| d.api_version == "v1") {
        need_name(doc)?;
        let ns = doc.namespace.as_deref().unwrap_or("default");
        if let Some(uid) = str_at(doc, &["metadata", "uid"])? {
            if !uid.is_empty() {
                policy
                    .pod_namespaces
                    .insert(uid.to_string(), ns.to_string());
            }
        }
        pods.push(PodInfo::parse(doc)?);
    }

    // Servers, oldest first so that they win ties on the same pod port.
    let mut servers: Vec<&Document> = set
        .of_kind("Server")
        .filter(|d| is_version(d, &SERVER_VERSIONS))
        .collect();
    servers.sort_by(|a, b| age_order(a, b));
    for doc in servers {
        c.server(doc, &pods)?;
    }

    for doc in set.of_kind("Service").filter(|d| d.api_version == "v1") {
        c.service(doc, &ns_ports)?;
    }

    for pod in &pods {
        c.pod(pod, &ns_ports)?;
    }

    c.egress_networks(set, opts, &defaults, &cluster_networks)?;

    policy.rules = c.rules;
    Ok(policy)
}

fn is_version(doc: &Document, versions: &[&str]) -> bool {
    doc.api_version
        .strip_prefix(POLICY_GROUP)
        .is_some_and(|v| versions.contains(&v))
}

/// Oldest first (a missing timestamp counts as newest), then by name.
fn age_order(a: &Document, b: &Document) -> std::cmp::Ordering {
    let key = |d: &Document| {
        (
            d.creation_timestamp.is_none(),
            d.creation_timestamp.clone(),
            d.namespace.clone(),
            d.name.clone(),
        )
    };
    key(a).cmp(&key(b))
}

fn invalid(doc: &Document, field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        origin: format!("{} ({})", doc.origin, doc.describe()),
        field: field.into(),
        message: message.into(),
    }
}

fn need_name(doc: &Document) -> Result<(), PolicyError> {
    if doc.name.is_empty() {
        return Err(invalid(doc, "metadata.name", "missing"));
    }
    Ok(())
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    (!cur.is_null()).then_some(cur)
}

fn str_at<'a>(doc: &'a Document, path: &[&str]) -> Result<Option<&'a str>, PolicyError> {
    match at(&doc.body, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(
            doc,
            path.join("."),
            format!("expected a string, got {}", show(other)),
        )),
    }
}

fn seq_at<'a>(doc: &'a Document, path: &[&str]) -> Result<&'a [Value], PolicyError> {
    match at(&doc.body, path) {
        None => Ok(&[]),
        Some(Value::Sequence(s)) => Ok(s),
        Some(other) => Err(invalid(
            doc,
            path.join("."),
            format!("expected a list, got {}", show(other)),
        )),
    }
}

/// A string-to-string map (labels, matchLabels); scalar values are taken
/// as their text.
fn string_map(
    doc: &Document,
    v: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, PolicyError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let Value::Mapping(m) = v else {
        return Err(invalid(
            doc,
            field,
            format!("expected a map, got {}", show(v)),
        ));
    };
    for (k, val) in m {
        let (Some(k), Some(val)) = (scalar_text(k), scalar_text(val)) else {
            return Err(invalid(
                doc,
                field,
                format!(
                    "expected string keys and values, got {} -> {}",
                    show(k),
                    show(val)
                ),
            ));
        };
        out.insert(k, val);
    }
    Ok(out)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The document's opaque-ports annotation, if it has one. `names` resolves
/// named ports (a Pod's container ports), when given.
fn opaque_annotation(
    doc: &Document,
    names: Option<&BTreeMap<String, u16>>,
) -> Result<Option<PortSet>, PolicyError> {
    let field = format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}");
    let Some(v) = doc
        .body
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
    else {
        return Ok(None);
    };
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(invalid(
                doc,
                field,
                format!("expected a port list string, got {}", show(other)),
            ))
        }
    };
    match text.parse::<PortSet>() {
        Ok(set) => Ok(Some(set)),
        Err(e) => {
            // Linkerd also takes container port names on Pods.
            if let Some(names) = names {
                let mut set = PortSet::new();
                let mut ok = true;
                for item in text.split(',').map(str::trim) {
                    if let Ok(s) = item.parse::<PortSet>() {
                        set.union_with(&s);
                    } else if let Some(&p) = names.get(item) {
                        set.insert(p);
                    } else {
                        ok = false;
                        break;
                    }
                }
                if ok && !text.split(',').any(|i| i.trim().is_empty()) {
                    return Ok(Some(set));
                }
            }
            Err(invalid(doc, field, format!("{e} (in {text:?})")))
        }
    }
}

fn parse_ip(doc: &Document, field: &str, text: &str) -> Result<IpAddr, PolicyError> {
    text.parse::<IpAddr>()
        .map_err(|_| invalid(doc, field, format!("{text:?} is not an IP address")))
}

fn host_networks(ips: &[IpAddr]) -> Vec<Network> {
    let set: BTreeSet<IpNet> = ips.iter().map(|&ip| IpNet::from(ip)).collect();
    set.into_iter().map(Network::new).collect()
}

/// What the compiler needs of a Pod.
struct PodInfo<'a> {
    doc: &'a Document,
    namespace: &'a str,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    /// Container port name -> number.
    port_names: BTreeMap<String, u16>,
    /// Finished or host-network: no rules.
    inactive: bool,
}

impl<'a> PodInfo<'a> {
    fn parse(doc: &'a Document) -> Result<Self, PolicyError> {
        let labels = string_map(
            doc,
            at(&doc.body, &["metadata", "labels"]),
            "metadata.labels",
        )?;
        let mut ips = Vec::new();
        if let Some(ip) = str_at(doc, &["status", "podIP"])? {
            if !ip.is_empty() {
                ips.push(parse_ip(doc, "status.podIP", ip)?);
            }
        }
        for (i, entry) in seq_at(doc, &["status", "podIPs"])?.iter().enumerate() {
            let field = format!("status.podIPs[{i}].ip");
            match entry.get("ip") {
                Some(Value::String(s)) => ips.push(parse_ip(doc, &field, s)?),
                other => {
                    return Err(invalid(
                        doc,
                        field,
                        format!(
                            "expected a string, got {}",
                            other.map_or("nothing".into(), show)
                        ),
                    ))
                }
            }
        }
        ips.sort();
        ips.dedup();
        let mut port_names = BTreeMap::new();
        for (ci, c) in seq_at(doc, &["spec", "containers"])?.iter().enumerate() {
            let Some(ports) = c.get("ports") else {
                continue;
            };
            let Value::Sequence(ports) = ports else {
                return Err(invalid(
                    doc,
                    format!("spec.containers[{ci}].ports"),
                    format!("expected a list, got {}", show(ports)),
                ));
            };
            for (pi, p) in ports.iter().enumerate() {
                let Some(name) = p.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let field = format!("spec.containers[{ci}].ports[{pi}].containerPort");
                let port = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .filter(|&n| (1..=65535).contains(&n))
                    .ok_or_else(|| {
                        invalid(
                            doc,
                            &field,
                            format!(
                                "expected a port number 1-65535, got {}",
                                p.get("containerPort").map_or("nothing".into(), show)
                            ),
                        )
                    })?;
                port_names.entry(name.to_string()).or_insert(port as u16);
            }
        }
        let phase = str_at(doc, &["status", "phase"])?.unwrap_or("");
        let host_network = matches!(
            at(&doc.body, &["spec", "hostNetwork"]),
            Some(Value::Bool(true))
        );
        Ok(PodInfo {
            doc,
            namespace: doc.namespace.as_deref().unwrap_or("default"),
            labels,
            ips,
            port_names,
            inactive: host_network || phase == "Succeeded" || phase == "Failed",
        })
    }
}

/// A `podSelector`: matchLabels AND every matchExpression.
struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, Op, BTreeSet<String>)>,
}

#[derive(Clone, Copy)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    fn parse(doc: &Document, v: &Value, field: &str) -> Result<Selector, PolicyError> {
        if !v.is_mapping() {
            return Err(invalid(
                doc,
                field,
                format!("expected a map, got {}", show(v)),
            ));
        }
        let labels = string_map(
            doc,
            v.get("matchLabels").filter(|v| !v.is_null()),
            &format!("{field}.matchLabels"),
        )?;
        let mut exprs = Vec::new();
        match v.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(list)) => {
                for (i, e) in list.iter().enumerate() {
                    let f = format!("{field}.matchExpressions[{i}]");
                    let key = e.get("key").and_then(Value::as_str).ok_or_else(|| {
                        invalid(
                            doc,
                            format!("{f}.key"),
                            format!(
                                "expected a string, got {}",
                                e.get("key").map_or("nothing".into(), show)
                            ),
                        )
                    })?;
                    let op_text = e.get("operator").and_then(Value::as_str).unwrap_or("");
                    let op = match op_text {
                        "In" => Op::In,
                        "NotIn" => Op::NotIn,
                        "Exists" => Op::Exists,
                        "DoesNotExist" => Op::DoesNotExist,
                        _ => {
                            return Err(invalid(
                                doc,
                                format!("{f}.operator"),
                                format!(
                                "unknown operator {}, expected In, NotIn, Exists or DoesNotExist",
                                e.get("operator").map_or("(missing)".into(), show)
                            ),
                            ))
                        }
                    };
                    let mut values = BTreeSet::new();
                    match e.get("values") {
                        None | Some(Value::Null) => {}
                        Some(Value::Sequence(vs)) => {
                            for (j, v) in vs.iter().enumerate() {
                                values.insert(scalar_text(v).ok_or_else(|| {
                                    invalid(
                                        doc,
                                        format!("{f}.values[{j}]"),
                                        format!("expected a string, got {}", show(v)),
                                    )
                                })?);
                            }
                        }
                        Some(other) => {
                            return Err(invalid(
                                doc,
                                format!("{f}.values"),
                                format!("expected a list, got {}", show(other)),
                            ))
                        }
                    }
                    match op {
                        Op::In | Op::NotIn if values.is_empty() => {
                            return Err(invalid(
                                doc,
                                format!("{f}.values"),
                                format!("operator {op_text} needs at least one value"),
                            ))
                        }
                        Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                            return Err(invalid(
                                doc,
                                format!("{f}.values"),
                                format!("operator {op_text} takes no values"),
                            ))
                        }
                        _ => {}
                    }
                    exprs.push((key.to_string(), op, values));
                }
            }
            Some(other) => {
                return Err(invalid(
                    doc,
                    format!("{field}.matchExpressions"),
                    format!("expected a list, got {}", show(other)),
                ))
            }
        }
        Ok(Selector { labels, exprs })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|(k, op, values)| match op {
                Op::In => labels.get(k).is_some_and(|v| values.contains(v)),
                Op::NotIn => labels.get(k).is_none_or(|v| !values.contains(v)),
                Op::Exists => labels.contains_key(k),
                Op::DoesNotExist => !labels.contains_key(k),
            })
    }
}

#[derive(Default)]
struct Compiler {
    rules: Vec<Rule>,
    next_id: u32,
}

/// `Kind ns/name (origin)`, a rule's origin.
fn rule_origin(doc: &Document) -> String {
    format!("{} ({})", doc.describe(), doc.origin)
}

impl Compiler {
    fn push(
        &mut self,
        networks: Vec<Network>,
        ports: PortSet,
        protocol: Protocol,
        scope: Option<String>,
        origin: String,
    ) {
        if networks.is_empty() || ports.is_empty() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.rules.push(Rule {
            id,
            networks,
            ports,
            protocol,
            scope,
            origin,
        });
    }

    /// Rules for an annotated destination: the annotated ports opaque, all
    /// others detect (the annotation replaces the default list).
    fn annotated(&mut self, networks: Vec<Network>, ports: PortSet, origin: String) {
        self.push(
            networks.clone(),
            ports,
            Protocol::Opaque,
            None,
            origin.clone(),
        );
        self.push(networks, PortSet::all(), Protocol::Detect, None, origin);
    }

    fn server(&mut self, doc: &Document, pods: &[PodInfo]) -> Result<(), PolicyError> {
        need_name(doc)?;
        let ns = doc.namespace.as_deref().unwrap_or("default");
        let Some(sel) = at(&doc.body, &["spec", "podSelector"]) else {
            if at(&doc.body, &["spec", "externalWorkloadSelector"]).is_some() {
                tracing::debug!(origin = %doc.origin, "skipping a Server for external workloads");
                return Ok(());
            }
            return Err(invalid(doc, "spec.podSelector", "missing"));
        };
        let selector = Selector::parse(doc, sel, "spec.podSelector")?;
        let protocol_text = str_at(doc, &["spec", "proxyProtocol"])?.unwrap_or("unknown");
        let protocol = match protocol_text {
            "opaque" => Some(Protocol::Opaque),
            "HTTP/1" => Some(Protocol::Http1),
            "HTTP/2" | "gRPC" => Some(Protocol::Http2),
            // unknown: Linkerd detects. TLS: Linkerd forwards without
            // detection, but the client speaks first, so nothing stalls.
            "unknown" | "TLS" => None,
            other => {
                return Err(invalid(
                    doc,
                    "spec.proxyProtocol",
                    format!("unknown proxyProtocol {other:?}, expected unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS"),
                ))
            }
        };
        enum Port<'a> {
            Number(u16),
            Name(&'a str),
        }
        let port = match at(&doc.body, &["spec", "port"]) {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => Port::Number(p as u16),
                _ => {
                    return Err(invalid(
                        doc,
                        "spec.port",
                        format!("port {n} is out of range (1-65535)"),
                    ))
                }
            },
            Some(Value::String(s)) if !s.is_empty() => match s.parse::<u16>() {
                Ok(p) if p > 0 => Port::Number(p),
                _ => Port::Name(s),
            },
            Some(other) => {
                return Err(invalid(
                    doc,
                    "spec.port",
                    format!("expected a port number or name, got {}", show(other)),
                ))
            }
            None => return Err(invalid(doc, "spec.port", "missing")),
        };
        let Some(protocol) = protocol else {
            return Ok(());
        };
        // One rule per resolved port number, on the IPs of the pods with it.
        let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
        for pod in pods
            .iter()
            .filter(|p| p.namespace == ns && !p.inactive && selector.matches(&p.labels))
        {
            let number = match port {
                Port::Number(n) => n,
                Port::Name(name) => match pod.port_names.get(name) {
                    Some(&n) => n,
                    None => {
                        tracing::debug!(server = %doc.describe(), pod = %pod.doc.describe(), port = name, "pod has no container port of that name");
                        continue;
                    }
                },
            };
            by_port.entry(number).or_default().extend(&pod.ips);
        }
        for (number, ips) in by_port {
            self.push(
                host_networks(&ips),
                std::iter::once(number).collect(),
                protocol,
                None,
                rule_origin(doc),
            );
        }
        Ok(())
    }

    fn service(
        &mut self,
        doc: &Document,
        ns_ports: &BTreeMap<&str, PortSet>,
    ) -> Result<(), PolicyError> {
        need_name(doc)?;
        let ns = doc.namespace.as_deref().unwrap_or("default");
        let mut ips = Vec::new();
        let mut take = |field: &str, ip: &str| -> Result<(), PolicyError> {
            if !ip.is_empty() && ip != "None" {
                ips.push(parse_ip(doc, field, ip)?);
            }
            Ok(())
        };
        if let Some(ip) = str_at(doc, &["spec", "clusterIP"])? {
            take("spec.clusterIP", ip)?;
        }
        for (i, ip) in seq_at(doc, &["spec", "clusterIPs"])?.iter().enumerate() {
            let field = format!("spec.clusterIPs[{i}]");
            match ip {
                Value::String(s) => take(&field, s)?,
                other => {
                    return Err(invalid(
                        doc,
                        field,
                        format!("expected a string, got {}", show(other)),
                    ))
                }
            }
        }
        ips.sort();
        ips.dedup();

        let mut app_opaque = PortSet::new();
        for (i, p) in seq_at(doc, &["spec", "ports"])?.iter().enumerate() {
            if p.get("appProtocol").and_then(Value::as_str) != Some(OPAQUE_APP_PROTOCOL) {
                continue;
            }
            let port = p
                .get("port")
                .and_then(Value::as_u64)
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| {
                    invalid(
                        doc,
                        format!("spec.ports[{i}].port"),
                        format!(
                            "expected a port number 1-65535, got {}",
                            p.get("port").map_or("nothing".into(), show)
                        ),
                    )
                })?;
            app_opaque.insert(port as u16);
        }
        let annotation = opaque_annotation(doc, None)?.or_else(|| ns_ports.get(ns).cloned());
        if ips.is_empty() {
            return Ok(());
        }
        let networks = host_networks(&ips);
        match annotation {
            Some(ports) => self.annotated(networks, ports.union(&app_opaque), rule_origin(doc)),
            None => self.push(
                networks,
                app_opaque,
                Protocol::Opaque,
                None,
                rule_origin(doc),
            ),
        }
        Ok(())
    }

    fn pod(
        &mut self,
        pod: &PodInfo,
        ns_ports: &BTreeMap<&str, PortSet>,
    ) -> Result<(), PolicyError> {
        let own = opaque_annotation(pod.doc, Some(&pod.port_names))?;
        let Some(ports) = own.or_else(|| ns_ports.get(pod.namespace).cloned()) else {
            return Ok(());
        };
        if pod.inactive || pod.ips.is_empty() {
            return Ok(());
        }
        self.annotated(host_networks(&pod.ips), ports, rule_origin(pod.doc));
        Ok(())
    }

    fn egress_networks(
        &mut self,
        set: &DocumentSet,
        opts: &Options,
        defaults: &PortSet,
        cluster_networks: &[IpNet],
    ) -> Result<(), PolicyError> {
        struct Egress<'a> {
            doc: &'a Document,
            scope: Option<String>,
            networks: Vec<Network>,
            ports: PortSet,
        }
        let mut all: Vec<Egress> = Vec::new();
        for doc in set
            .of_kind("EgressNetwork")
            .filter(|d| is_version(d, &EGRESS_VERSIONS))
        {
            need_name(doc)?;
            let ns = doc.namespace.clone().unwrap_or_else(|| "default".into());
            let scope = (ns != opts.egress_global_namespace).then_some(ns);
            if let Some(tp) = str_at(doc, &["spec", "trafficPolicy"])? {
                if tp != "Allow" && tp != "Deny" {
                    return Err(invalid(
                        doc,
                        "spec.trafficPolicy",
                        format!("unknown trafficPolicy {tp:?}, expected Allow or Deny"),
                    ));
                }
            }
            let mut networks = Vec::new();
            for (i, n) in seq_at(doc, &["spec", "networks"])?.iter().enumerate() {
                let field = format!("spec.networks[{i}]");
                let cidr_text = n.get("cidr").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        doc,
                        format!("{field}.cidr"),
                        format!(
                            "expected a CIDR string, got {}",
                            n.get("cidr").map_or("nothing".into(), show)
                        ),
                    )
                })?;
                let cidr =
                    parse_cidr(cidr_text).map_err(|m| invalid(doc, format!("{field}.cidr"), m))?;
                let mut except = Vec::new();
                match n.get("except") {
                    None | Some(Value::Null) => {}
                    Some(Value::Sequence(list)) => {
                        for (j, e) in list.iter().enumerate() {
                            let f = format!("{field}.except[{j}]");
                            let text = e.as_str().ok_or_else(|| {
                                invalid(doc, &f, format!("expected a CIDR string, got {}", show(e)))
                            })?;
                            let e = parse_cidr(text).map_err(|m| invalid(doc, &f, m))?;
                            check_except(cidr, e).map_err(|m| invalid(doc, &f, m))?;
                            except.push(e);
                        }
                    }
                    Some(other) => {
                        return Err(invalid(
                            doc,
                            format!("{field}.except"),
                            format!("expected a list, got {}", show(other)),
                        ))
                    }
                }
                networks.push(Network { cidr, except });
            }
            if networks.is_empty() {
                // Everything outside the cluster's networks, v4 and v6.
                for all_net in ["0.0.0.0/0", "::/0"] {
                    let cidr: IpNet = all_net.parse().expect("valid");
                    let mut except: Vec<IpNet> = cluster_networks
                        .iter()
                        .copied()
                        .filter(|c| check_except(cidr, *c).is_ok())
                        .collect();
                    except.sort();
                    except.dedup();
                    networks.push(Network { cidr, except });
                }
            }
            let ports = opaque_annotation(doc, None)?.unwrap_or_else(|| defaults.clone());
            all.push(Egress {
                doc,
                scope,
                networks,
                ports,
            });
        }
        // Node-wide first, then by namespace; within one, precedence order.
        all.sort_by(|a, b| a.scope.cmp(&b.scope).then_with(|| age_order(a.doc, b.doc)));
        for i in 0..all.len() {
            let e = &all[i];
            let cidrs: BTreeSet<IpNet> = e.networks.iter().map(|n| n.cidr).collect();
            // Opaque ports of later EgressNetworks with one of our CIDRs:
            // their explicit rules would beat our wildcard detect rule.
            let mut contested = PortSet::new();
            for later in all[i + 1..].iter().filter(|l| l.scope == e.scope) {
                if later.networks.iter().any(|n| cidrs.contains(&n.cidr)) && !later.ports.is_all() {
                    contested.union_with(&later.ports);
                }
            }
            let origin = rule_origin(e.doc);
            let (networks, ports, scope) = (e.networks.clone(), e.ports.clone(), e.scope.clone());
            self.push(
                networks.clone(),
                ports.clone(),
                Protocol::Opaque,
                scope.clone(),
                origin.clone(),
            );
            if ports.is_all() {
                // Our opaque rule is itself a wildcard one.
                self.push(
                    networks.clone(),
                    contested.clone(),
                    Protocol::Opaque,
                    scope.clone(),
                    origin.clone(),
                );
            } else {
                let detect: PortSet = contested.iter().filter(|p| !ports.contains(*p)).collect();
                self.push(
                    networks.clone(),
                    detect,
                    Protocol::Detect,
                    scope.clone(),
                    origin.clone(),
                );
            }
            self.push(networks, PortSet::all(), Protocol::Detect, scope, origin);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

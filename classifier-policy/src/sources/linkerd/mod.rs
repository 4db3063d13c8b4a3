//! The policy compiler for Linkerd's own resources: a [`DocumentSet`] in,
//! a [`Policy`] out, with the verdicts Linkerd's semantics give.
//!
//! | document | rules |
//! |---|---|
//! | `ClassifierPolicy` (at most one) | defaults, excluded UIDs, mark, `clusterNetworks`; its own rules first (ids 1..) |
//! | `Server` | per selected pod: its IPs, `port` (number or named container port), `proxyProtocol` |
//! | `Service` | cluster IPs: opaque-ports annotation (own, else namespace's), each port's `appProtocol` |
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
//!   A port the pod's (or its namespace's) opaque-ports annotation lists
//!   gets no Server rule: the annotation wins, as in Linkerd. Among Servers
//!   selecting the same pod port the oldest wins (then by name).
//! - Pods that are going away (`deletionTimestamp`, phase `Succeeded` or
//!   `Failed`; their IPs get reused), pods without an IP and `hostNetwork`
//!   pods (their IP is the node's, and Linkerd does not mesh them) get no
//!   rules; an IP two live pods claim gets no pod rules (logged).
//! - EgressNetworks of the global namespace are node-wide rules of their own
//!   tier ([`Rule::global_egress`]): a namespace with EgressNetworks of its
//!   own never sees them.
//!
//! The README's "Linkerd's own resources" lists the linkerd2 source each
//! rule follows, and every deliberate difference.
//!
//! Everything else in the set is skipped with a debug log. Malformed
//! documents of the kinds above are errors naming the document (origin,
//! kind, namespace/name), the field and the value.
//!
//! Rule ids are deterministic: ClassifierPolicy rules, then Servers, then
//! Services, then Pods (each in (namespace, name) order), then
//! EgressNetworks in precedence order.
//!
//! The parts: [`values`] (typed reads of document fields, with errors
//! that name them), [`pod`] (what the compiler needs of a Pod),
//! [`selector`] (label selectors), [`egress`] (EgressNetwork precedence)
//! and this module (the compiler, one kind at a time).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml::Value;

use super::document::{show, Document, DocumentSet};
use super::kinds::{self, KubeKind};
use crate::model::{default_cluster_networks, Network, Policy, PolicyError, Protocol, Rule};
use crate::ports::PortSet;
use pod::PodInfo;
use selector::Selector;
use service::ServiceInfo;
use values::{at, host_networks, invalid, need_name, opaque_annotation, str_at, PortsAnnotation};

mod egress;
mod pod;
mod selector;
mod service;
pub mod suggest;
mod values;

/// Linkerd's annotation for opaque ports.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";
/// A Service port with this `appProtocol` is opaque.
pub const OPAQUE_APP_PROTOCOL: &str = "linkerd.io/opaque";

/// What a Service port's `appProtocol` says, as linkerd2's `AppProtocol`
/// (`policy-controller/core/src/outbound.rs`) reads it, case-insensitive:
/// `http` is HTTP/1, `kubernetes.io/h2c` HTTP/2, `linkerd.io/opaque` and
/// `linkerd.io/tcp` opaque, and any other value is `Unknown`, which
/// `policy-controller/grpc/src/outbound.rs` serves as opaque.
pub fn app_protocol_of(value: &str) -> Protocol {
    match value.to_ascii_lowercase().as_str() {
        "http" => Protocol::Http1,
        "kubernetes.io/h2c" => Protocol::Http2,
        _ => Protocol::Opaque,
    }
}
/// Linkerd's default global egress namespace.
pub const DEFAULT_EGRESS_NAMESPACE: &str = "linkerd-egress";

/// Trie entries one namespace's rules may take, by default (65,536): a
/// quarter of what one policy may hold per address family
/// ([`crate::compile::MAX_V4_ENTRIES`]), so that no one namespace can take
/// the tables from the others, while a namespace of several thousand
/// annotated pods (two to ten entries each) still fits.
pub const DEFAULT_NAMESPACE_ENTRY_BUDGET: u64 = crate::compile::MAX_V4_ENTRIES / 4;

/// Compiler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// EgressNetworks in this namespace apply to every client.
    pub egress_global_namespace: String,
    /// At most this many trie entries (IPv4 and IPv6 together, counted by
    /// [`crate::compile::entry_bound`]) for the rules of one namespace's
    /// objects; a namespace over it has all its rules dropped and reported.
    pub namespace_entry_budget: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            egress_global_namespace: DEFAULT_EGRESS_NAMESPACE.to_string(),
            namespace_entry_budget: DEFAULT_NAMESPACE_ENTRY_BUDGET,
        }
    }
}

/// An object the compiler skipped, and why; the rest of the policy applies
/// without it.
#[derive(Debug)]
pub struct Rejected {
    /// `file#N` or `kubernetes:Kind/ns/name`.
    pub origin: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Names the document, the field and the value.
    pub error: PolicyError,
}

impl Rejected {
    fn of(doc: &Document, error: PolicyError) -> Rejected {
        tracing::warn!(origin = %doc.origin, object = %doc.describe(), %error, "skipping an object the policy compiler rejects; the rest of the policy applies");
        Rejected {
            origin: doc.origin.clone(),
            kind: doc.kind.clone(),
            namespace: doc.namespace.clone(),
            name: doc.name.clone(),
            error,
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}

/// A compiled policy and the objects left out of it.
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    /// In the order the compiler met them.
    pub rejected: Vec<Rejected>,
}

/// Compiles `set` into a policy; see the module documentation. Strict: the
/// first object [`compile_documents_report`] would skip is the error.
pub fn compile_documents(set: &DocumentSet, opts: &Options) -> Result<Policy, PolicyError> {
    let compiled = compile_documents_report(set, opts)?;
    match compiled.rejected.into_iter().next() {
        Some(r) => Err(r.error),
        None => Ok(compiled.policy),
    }
}

/// Compiles `set` into a policy, skipping (and returning, and logging) the
/// objects that are malformed or whose namespace is over its entry budget:
/// one tenant's mistake never takes the others' policy with it. Only the
/// ClassifierPolicy (the operator's, not a tenant's) is an error.
pub fn compile_documents_report(
    set: &DocumentSet,
    opts: &Options,
) -> Result<Compiled, PolicyError> {
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
    c.owners = vec![None; c.rules.len()];
    let defaults = policy.default_opaque_ports.clone();

    for doc in set.iter() {
        let known = match kinds::by_name(&doc.kind) {
            Some(k) => k.reads_api_version(&doc.api_version),
            None => doc.is_classifier_policy(),
        };
        if !known {
            tracing::debug!(origin = %doc.origin, kind = %doc.kind, api_version = %doc.api_version, "skipping a document the policy compiler does not read");
        }
    }

    // Namespace annotations, inherited by Services and Pods (port names in
    // them resolve per pod, or per Service).
    let mut ns_ports: BTreeMap<&str, PortsAnnotation> = BTreeMap::new();
    for doc in read(set, &kinds::NAMESPACE) {
        match need_name(doc).and_then(|()| opaque_annotation(doc, true)) {
            Ok(Some(ports)) => {
                ns_ports.insert(&doc.name, ports);
            }
            Ok(None) => {}
            Err(e) => c.rejected.push(Rejected::of(doc, e)),
        }
    }

    // Pods, parsed once: Servers select them and get their own rules.
    let mut pods: Vec<PodInfo> = Vec::new();
    for doc in read(set, &kinds::POD) {
        let ns = doc.namespace.as_deref().unwrap_or("default");
        let uid = need_name(doc).and_then(|()| str_at(doc, &["metadata", "uid"]));
        match uid {
            Ok(Some(uid)) if !uid.is_empty() => {
                // Kept for a pod that is going away too (its processes may
                // still connect, and the UID is its own), and for a pod
                // whose rules are rejected (its cgroup is still in its
                // namespace).
                policy
                    .pod_namespaces
                    .insert(uid.to_string(), ns.to_string());
            }
            Ok(_) => {}
            Err(e) => {
                c.rejected.push(Rejected::of(doc, e));
                continue;
            }
        }
        match PodInfo::parse(doc, ns_ports.get(ns)) {
            Ok(pod) => pods.push(pod),
            Err(e) => c.rejected.push(Rejected::of(doc, e)),
        }
    }
    drop_contested_ips(&mut pods);

    // Servers, oldest first so that they win ties on the same pod port.
    let mut servers: Vec<&Document> = read(set, &kinds::SERVER).collect();
    servers.sort_by(|a, b| age_order(a, b));
    for doc in servers {
        c.owner = doc.namespace.clone();
        if let Err(e) = c.server(doc, &pods) {
            c.rejected.push(Rejected::of(doc, e));
        }
    }

    for doc in read(set, &kinds::SERVICE) {
        c.owner = doc.namespace.clone();
        if let Err(e) = c.service(doc, &ns_ports) {
            c.rejected.push(Rejected::of(doc, e));
        }
    }

    for pod in &pods {
        c.owner = Some(pod.namespace.to_string());
        c.pod(pod);
    }

    c.egress_networks(set, opts, &defaults, &cluster_networks);
    c.enforce_budget(set, opts.namespace_entry_budget);

    policy.rules = c.rules;
    Ok(Compiled {
        policy,
        rejected: c.rejected,
    })
}

/// An IP that two live pods claim belongs to neither: no pod rule (Server
/// or annotation) is written for it. linkerd2's destination service
/// refuses such an address too (`getPodByPodIP` in
/// `controller/api/destination/watcher/workload_watcher.go`: "found
/// conflicting ... IP on the pod network").
fn drop_contested_ips(pods: &mut [PodInfo]) {
    let mut claims: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate().filter(|(_, p)| !p.inactive) {
        for ip in &pod.ips {
            claims.entry(*ip).or_default().push(i);
        }
    }
    for (ip, owners) in claims.into_iter().filter(|(_, o)| o.len() > 1) {
        let names: Vec<String> = owners.iter().map(|&i| pods[i].doc.describe()).collect();
        tracing::warn!(%ip, pods = %names.join(", "), "live pods claim the same IP; none of them gets a rule for it");
        for i in owners {
            pods[i].ips.retain(|a| *a != ip);
        }
    }
}

/// The documents of `kind` in `set` at an API version the compiler reads.
fn read<'a>(set: &'a DocumentSet, kind: &'a KubeKind) -> impl Iterator<Item = &'a Document> + 'a {
    set.of_kind(kind.kind)
        .filter(|d| kind.reads_api_version(&d.api_version))
}

/// Oldest first (a missing timestamp counts as newest), then by name.
pub(super) fn age_order(a: &Document, b: &Document) -> std::cmp::Ordering {
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

#[derive(Default)]
struct Compiler {
    rules: Vec<Rule>,
    /// The namespace of the object each rule comes from (`None`: the
    /// ClassifierPolicy's), for the entry budget.
    owners: Vec<Option<String>>,
    /// The namespace of the object being compiled.
    owner: Option<String>,
    next_id: u32,
    rejected: Vec<Rejected>,
}

/// `Kind ns/name (origin)`, a rule's origin.
fn rule_origin(doc: &Document) -> String {
    format!("{} ({})", doc.describe(), doc.origin)
}

impl Compiler {
    pub(super) fn push(
        &mut self,
        networks: Vec<Network>,
        ports: PortSet,
        protocol: Protocol,
        scope: Option<String>,
        origin: String,
    ) {
        self.push_rule(networks, ports, protocol, scope, false, origin);
    }

    pub(super) fn push_rule(
        &mut self,
        networks: Vec<Network>,
        ports: PortSet,
        protocol: Protocol,
        scope: Option<String>,
        global_egress: bool,
        origin: String,
    ) {
        if networks.is_empty() || ports.is_empty() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.owners.push(self.owner.clone());
        self.rules.push(Rule {
            id,
            networks,
            ports,
            protocol,
            scope,
            global_egress,
            origin,
        });
    }

    /// Drops the rules of every namespace whose objects need more trie
    /// entries than `budget`, reporting each of its objects that had rules
    /// (the count is taken before any trie is built), and renumbers the
    /// remaining rules 1.. in order.
    fn enforce_budget(&mut self, set: &DocumentSet, budget: u64) {
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, owner) in self.owners.iter().enumerate() {
            if let Some(ns) = owner {
                by_ns.entry(ns).or_default().push(i);
            }
        }
        let mut over: BTreeMap<String, u64> = BTreeMap::new();
        for (ns, idx) in by_ns {
            let (n4, n6) = crate::compile::entry_bound(idx.iter().map(|&i| &self.rules[i]));
            let n = n4.saturating_add(n6);
            if n > budget {
                over.insert(ns.to_string(), n);
            }
        }
        if over.is_empty() {
            return;
        }
        // Report each object of those namespaces that had rules, by origin.
        let docs: std::collections::HashMap<String, &Document> = set
            .iter()
            .filter(|d| d.namespace.as_ref().is_some_and(|n| over.contains_key(n)))
            .map(|d| (rule_origin(d), d))
            .collect();
        let mut reported = std::collections::BTreeSet::new();
        for (r, owner) in self.rules.iter().zip(&self.owners) {
            let Some(n) = owner.as_ref().and_then(|o| over.get(o)) else {
                continue;
            };
            let Some(&doc) = docs.get(&r.origin) else {
                continue;
            };
            if reported.insert(doc.origin.clone()) {
                let e = invalid(
                    doc,
                    "metadata.namespace",
                    format!(
                        "namespace {:?} needs at least {n} trie entries, over its budget of {budget}; all of its rules are dropped",
                        owner.as_deref().unwrap_or_default()
                    ),
                );
                self.rejected.push(Rejected::of(doc, e));
            }
        }
        let owners = std::mem::take(&mut self.owners);
        let rules = std::mem::take(&mut self.rules);
        for (mut r, owner) in rules.into_iter().zip(owners) {
            if owner.as_ref().is_some_and(|o| over.contains_key(o)) {
                continue;
            }
            r.id = self.rules.len() as u32 + 1;
            self.rules.push(r);
            self.owners.push(owner);
        }
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
            // The pod's (or its namespace's) opaque-ports annotation wins
            // over a Server: Linkerd's destination service marks the port
            // opaque from the annotation (`GetAnnotatedOpaquePorts`,
            // controller/api/destination/watcher/workload_watcher.go)
            // whatever Server selects it. A Server's HTTP hint is our
            // extension and only applies where no annotation says opaque.
            if pod.opaque.as_ref().is_some_and(|o| o.contains(number)) {
                continue;
            }
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
        ns_ports: &BTreeMap<&str, PortsAnnotation>,
    ) -> Result<(), PolicyError> {
        need_name(doc)?;
        let ns = doc.namespace.as_deref().unwrap_or("default");
        let ServiceInfo {
            ips,
            app,
            port_names,
        } = ServiceInfo::parse(doc)?;
        const WHAT: &str = "port of the Service";
        let annotation = match (opaque_annotation(doc, true)?, ns_ports.get(ns)) {
            (Some(a), _) => Some(a.resolve(doc, &port_names, WHAT, true)?),
            (None, Some(a)) => Some(a.resolve(doc, &port_names, WHAT, false)?),
            (None, None) => None,
        };
        if ips.is_empty() {
            return Ok(());
        }
        let networks = host_networks(&ips);
        // A port's appProtocol wins over the opaque-ports annotation (and
        // the default ports) on that port, as linkerd2's outbound index
        // does ("`appProtocol` set on service port, ignoring opaque port
        // setting", policy-controller/k8s/index/src/outbound/index.rs).
        for protocol in [Protocol::Opaque, Protocol::Http1, Protocol::Http2] {
            let ports: PortSet = app
                .iter()
                .filter(|(_, p)| **p == protocol)
                .map(|(n, _)| *n)
                .collect();
            self.push(networks.clone(), ports, protocol, None, rule_origin(doc));
        }
        if let Some(ports) = annotation {
            let ports: PortSet = ports.iter().filter(|p| !app.contains_key(p)).collect();
            self.annotated(networks, ports, rule_origin(doc));
        }
        Ok(())
    }

    fn pod(&mut self, pod: &PodInfo) {
        let Some(ports) = &pod.opaque else {
            return;
        };
        if pod.inactive || pod.ips.is_empty() {
            return;
        }
        self.annotated(host_networks(&pod.ips), ports.clone(), rule_origin(pod.doc));
    }
}

#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod suggest_tests;
#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
mod tests;

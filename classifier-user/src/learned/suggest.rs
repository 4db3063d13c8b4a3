//! `classifier suggest`: the mesh configuration that fixes the learned
//! destinations, so that stock Linkerd (or Istio) skips detection for them
//! with its own mTLS, metrics and policy, and the classifier is no longer
//! needed for them.
//!
//! * `linkerd`: with the cluster's documents (`--policy`, `--kubernetes`),
//!   an address a Service or live Pod holds gets the
//!   `config.linkerd.io/opaque-ports` annotation to set on that object, as
//!   a merge patch naming it (kind, namespace, name); the value is computed
//!   by `classifier_policy::sources::linkerd::suggest` (the object's
//!   current opaque ports plus the learned ones). Every other address gets
//!   one `EgressNetwork` per scope and address (in the client's namespace,
//!   or `linkerd-egress` for the node scope) whose annotation lists the
//!   learned ports plus the cluster's default opaque ports (an annotation
//!   replaces the defaults for its network: listing them keeps every other
//!   verdict).
//! * `istio`: `ServiceEntry` objects with `protocol: TCP`.
//! * `policy`: a `ClassifierPolicy` with one opaque rule per address.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result};
use classifier_policy::sources::{
    linkerd::suggest::{opaque_ports_patches, CurrentPorts, Fixes, OpaquePortsPatch},
    linkerd::OPAQUE_PORTS_ANNOTATION,
    DocumentSet,
};

use super::LearnedDestination;
use crate::policy::{PortSet, LINKERD_DEFAULT_OPAQUE_PORTS};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Linkerd,
    Istio,
    Policy,
}

/// Namespace of EgressNetworks that apply to every client (the agent's
/// --egress-namespace default).
pub const GLOBAL_EGRESS_NAMESPACE: &str = "linkerd-egress";

fn cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn object_name(ip: IpAddr) -> String {
    let flat: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("learned-{}", flat.trim_matches('-'))
}

fn ports_text(ports: &BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Learned ports by (namespace, or `None` for the node, address).
type Groups = BTreeMap<(Option<String>, IpAddr), BTreeSet<u16>>;

/// Active entries grouped by (namespace or node, address).
fn grouped(entries: &[LearnedDestination]) -> Groups {
    let mut out = Groups::new();
    for e in entries.iter().filter(|e| e.active) {
        let scope = if e.scope_id == 0 {
            None
        } else {
            Some(
                e.namespace
                    .clone()
                    .unwrap_or_else(|| format!("scope-{}", e.scope_id)),
            )
        };
        out.entry((scope, e.address)).or_default().insert(e.port);
    }
    out
}

/// The YAML for `format`. `documents`: the cluster's, for `linkerd`
/// (Services and Pods get annotation patches); the other formats ignore it.
/// Fails only on a malformed ClassifierPolicy among the documents.
pub fn render(
    format: Format,
    entries: &[LearnedDestination],
    documents: Option<&DocumentSet>,
) -> Result<String> {
    let groups = grouped(entries);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# classifier suggest --format {}: {} learned server-first destination(s)",
        match format {
            Format::Linkerd => "linkerd",
            Format::Istio => "istio",
            Format::Policy => "policy",
        },
        groups.values().map(BTreeSet::len).sum::<usize>()
    );
    match format {
        Format::Linkerd => render_linkerd(&mut out, groups, documents)?,
        Format::Istio => render_istio(&mut out, &groups)?,
        Format::Policy => render_policy(&mut out, &groups)?,
    }
    Ok(out)
}

/// A Kubernetes object as `suggest` writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<Spec> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<Spec>,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

impl Metadata {
    fn opaque_ports(name: String, namespace: String, ports: String) -> Self {
        Self {
            name,
            namespace,
            annotations: [(OPAQUE_PORTS_ANNOTATION, ports)].into(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EgressNetworkSpec {
    traffic_policy: &'static str,
    networks: Vec<EgressNetworkNetwork>,
}

#[derive(Serialize)]
struct EgressNetworkNetwork {
    cidr: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceEntrySpec {
    hosts: Vec<String>,
    addresses: Vec<String>,
    export_to: Vec<&'static str>,
    location: &'static str,
    resolution: &'static str,
    endpoints: Vec<ServiceEntryEndpoint>,
    ports: Vec<ServiceEntryPort>,
}

#[derive(Serialize)]
struct ServiceEntryEndpoint {
    address: String,
}

#[derive(Serialize)]
struct ServiceEntryPort {
    number: u16,
    name: String,
    protocol: &'static str,
}

#[derive(Serialize)]
struct PolicySpec {
    rules: Vec<PolicyRule>,
}

#[derive(Serialize)]
struct PolicyRule {
    networks: Vec<String>,
    ports: String,
    protocol: &'static str,
}

/// One YAML document: `---`, comment lines, then `value`.
fn document(out: &mut String, comments: &[String], value: &impl Serialize) -> Result<()> {
    out.push_str("---\n");
    body(out, comments, value)
}

/// As [`document`], without the separator.
fn body(out: &mut String, comments: &[String], value: &impl Serialize) -> Result<()> {
    for comment in comments {
        for line in comment.lines() {
            let _ = writeln!(out, "# {line}");
        }
    }
    out.push_str(&serde_saphyr::to_string(value).context("encoding a suggested object")?);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(())
}

/// Annotation patches for the Services and Pods that hold learned
/// destinations (with `documents`), and an EgressNetwork per scope and
/// address for the rest.
fn render_linkerd(
    out: &mut String,
    mut groups: Groups,
    documents: Option<&DocumentSet>,
) -> Result<()> {
    let mut defaults: PortSet = LINKERD_DEFAULT_OPAQUE_PORTS
        .parse()
        .expect("the built-in port list parses");
    let mut in_cluster: BTreeSet<IpAddr> = BTreeSet::new();
    // Namespaces with EgressNetworks of their own, in the documents.
    let mut egress_namespaces: BTreeSet<String> = BTreeSet::new();
    if let Some(set) = documents {
        egress_namespaces = set
            .of_kind("EgressNetwork")
            .filter_map(|d| d.namespace.as_deref().map(str::to_owned))
            .collect();
        let learned: Vec<SocketAddr> = groups
            .iter()
            .flat_map(|((_, ip), ports)| ports.iter().map(|p| SocketAddr::new(*ip, *p)))
            .collect();
        let fixes = opaque_ports_patches(set, &learned)?;
        render_patches(out, &fixes, &learned_by(&groups))?;
        // What is left for EgressNetworks: the unheld destinations.
        let unheld: BTreeSet<SocketAddr> = fixes.unheld.iter().map(|u| u.destination).collect();
        in_cluster = fixes
            .unheld
            .iter()
            .filter(|u| u.in_cluster_networks)
            .map(|u| u.destination.ip())
            .collect();
        for ((_, ip), ports) in &mut groups {
            ports.retain(|p| unheld.contains(&SocketAddr::new(*ip, *p)));
        }
        groups.retain(|_, ports| !ports.is_empty());
        defaults = fixes.defaults;
    }
    for ((scope, ip), ports) in &groups {
        let namespace = scope.as_deref().unwrap_or(GLOBAL_EGRESS_NAMESPACE);
        let mut annotation: PortSet = ports.iter().copied().collect();
        annotation.union_with(&defaults);
        let mut comments = Vec::new();
        if let Some(ns) = scope.as_deref().filter(|ns| {
            !egress_namespaces.contains(*ns) && egress_namespaces.contains(GLOBAL_EGRESS_NAMESPACE)
        }) {
            comments.push(format!(
                "Namespace {ns} has no EgressNetwork of its own yet: with this one, Linkerd stops applying\n{GLOBAL_EGRESS_NAMESPACE}'s EgressNetworks to its clients (a namespace's own shadow the global ones).\nCopy the ones its clients rely on into {ns}, or put this one in {GLOBAL_EGRESS_NAMESPACE}."
            ));
        }
        if in_cluster.contains(ip) {
            comments.push(format!(
                "{ip} is inside the cluster's networks, but no Service or live Pod of the documents has it:\nLinkerd does not apply EgressNetworks there; annotate the object that owns it."
            ));
        }
        comments.push(format!(
            "learned: {}; the default opaque ports kept",
            ports_text(ports)
        ));
        let egress = Object {
            api_version: "policy.linkerd.io/v1alpha1",
            kind: "EgressNetwork",
            metadata: Some(Metadata::opaque_ports(
                object_name(*ip),
                namespace.to_owned(),
                annotation.to_string(),
            )),
            spec: Some(EgressNetworkSpec {
                traffic_policy: "Allow",
                networks: vec![EgressNetworkNetwork { cidr: cidr(*ip) }],
            }),
        };
        document(out, &comments, &egress)?;
    }
    Ok(())
}

/// A ServiceEntry with `protocol: TCP` ports per scope and address.
fn render_istio(out: &mut String, groups: &Groups) -> Result<()> {
    for ((scope, ip), ports) in groups {
        let name = object_name(*ip);
        let entry = Object {
            api_version: "networking.istio.io/v1",
            kind: "ServiceEntry",
            metadata: Some(Metadata {
                name: name.clone(),
                namespace: scope.as_deref().unwrap_or("istio-system").to_owned(),
                annotations: BTreeMap::new(),
            }),
            spec: Some(ServiceEntrySpec {
                hosts: vec![format!("{name}.learned.invalid")],
                addresses: vec![cidr(*ip)],
                export_to: vec![if scope.is_some() { "." } else { "*" }],
                location: "MESH_EXTERNAL",
                resolution: "STATIC",
                endpoints: vec![ServiceEntryEndpoint {
                    address: ip.to_string(),
                }],
                ports: ports
                    .iter()
                    .map(|&number| ServiceEntryPort {
                        number,
                        name: format!("tcp-{number}"),
                        protocol: "TCP",
                    })
                    .collect(),
            }),
        };
        document(out, &[], &entry)?;
    }
    Ok(())
}

/// One ClassifierPolicy with an opaque rule per address.
fn render_policy(out: &mut String, groups: &Groups) -> Result<()> {
    let namespaces: BTreeSet<&str> = groups.keys().filter_map(|(s, _)| s.as_deref()).collect();
    let mut comments = Vec::new();
    if !namespaces.is_empty() {
        comments.push(format!(
            "Some rules were learned by clients in namespace(s) {}; a ClassifierPolicy rule is node-wide\n(use --format linkerd for a namespace-scoped fix).",
            namespaces.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let policy = Object {
        api_version: "classifier.dev/v1alpha1",
        kind: "ClassifierPolicy",
        metadata: None,
        spec: Some(PolicySpec {
            rules: groups
                .iter()
                .map(|((_, ip), ports)| PolicyRule {
                    networks: vec![cidr(*ip)],
                    ports: ports_text(ports),
                    protocol: "opaque",
                })
                .collect(),
        }),
    };
    body(out, &comments, &policy)
}

/// One merge patch per object (`kubectl patch --type merge --patch-file`),
/// each with a comment saying what it fixes and what it keeps, then the
/// learned destinations of those objects that need no patch or that an
/// annotation cannot fix.
fn render_patches(
    out: &mut String,
    fixes: &Fixes,
    by: &BTreeMap<SocketAddr, BTreeSet<String>>,
) -> Result<()> {
    for p in &fixes.patches {
        render_patch(out, p, by)?;
    }
    if !fixes.unpatched.is_empty() {
        out.push_str("---\n# Learned destinations of Services and Pods that get no patch:\n");
        for u in &fixes.unpatched {
            let _ = writeln!(out, "#   {}: {}", u.destination, u.reason);
        }
    }
    Ok(())
}

/// Who learned each destination: `node`, `namespace web`, ...
fn learned_by(groups: &Groups) -> BTreeMap<SocketAddr, BTreeSet<String>> {
    let mut by: BTreeMap<SocketAddr, BTreeSet<String>> = BTreeMap::new();
    for ((scope, ip), ports) in groups {
        let label = scope
            .as_ref()
            .map_or("node".to_owned(), |ns| format!("namespace {ns}"));
        for port in ports {
            by.entry(SocketAddr::new(*ip, *port))
                .or_default()
                .insert(label.clone());
        }
    }
    by
}

fn render_patch(
    out: &mut String,
    p: &OpaquePortsPatch,
    by: &BTreeMap<SocketAddr, BTreeSet<String>>,
) -> Result<()> {
    let addresses: Vec<String> = p.addresses.iter().map(IpAddr::to_string).collect();
    // The annotation is the object's: it applies to every client, whoever learned it.
    let scopes: BTreeSet<&str> = p
        .addresses
        .iter()
        .flat_map(|a| p.learned.iter().map(move |port| SocketAddr::new(*a, port)))
        .filter_map(|d| by.get(&d))
        .flatten()
        .map(String::as_str)
        .collect();
    let now = match &p.current {
        CurrentPorts::Own(text) => format!("its own annotation {text:?}"),
        CurrentPorts::Namespace { namespace, text } => {
            format!(
                "namespace {namespace}'s annotation {text:?} ({})",
                p.current_ports
            )
        }
        CurrentPorts::Defaults => format!("the default opaque ports ({})", p.current_ports),
    };
    let mut comments = vec![format!(
        "{what} ({origin}) holds {addresses}: learned server-first on port(s) {learned}\nby clients of: {scopes} (the annotation applies to every client of the object).\nIts opaque ports now: {now}; the annotation replaces them, so they are kept.",
        what = p.describe(),
        origin = p.origin,
        addresses = addresses.join(", "),
        learned = p.learned,
        scopes = scopes.into_iter().collect::<Vec<_>>().join(", "),
    )];
    if let Some(owner) = &p.owner {
        comments.push(format!(
            "The pod goes with its owner ({owner}): set the annotation in the pod template of the workload that owns it too."
        ));
    }
    comments.push(format!(
        "kubectl -n {ns} annotate --overwrite {kind}/{name} {OPAQUE_PORTS_ANNOTATION}={value}",
        ns = p.namespace,
        kind = p.kind.to_ascii_lowercase(),
        name = p.name,
        value = p.value,
    ));
    let patch = PatchObject {
        api_version: &p.api_version,
        kind: &p.kind,
        metadata: Metadata::opaque_ports(p.name.clone(), p.namespace.clone(), p.value.to_string()),
    };
    document(out, &comments, &patch)
}

/// A merge patch of one object's annotations.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PatchObject<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(scope_id: u32, namespace: Option<&str>, dst: &str) -> LearnedDestination {
        let dst: SocketAddr = dst.parse().unwrap();
        LearnedDestination {
            scope_id,
            namespace: namespace.map(str::to_owned),
            address: dst.ip(),
            port: dst.port(),
            observations: 1,
            first_seen_unix: 0,
            last_seen_unix: 0,
            active: true,
        }
    }

    const CLUSTER: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 8080, appProtocol: http}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cache-0, namespace: shop, ownerReferences: [{kind: ReplicaSet, name: cache-5f6d}]}\nstatus: {podIP: 10.244.0.5}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {name: partners, namespace: linkerd-egress}\nspec: {trafficPolicy: Allow, networks: [{cidr: 198.51.100.0/24}]}\n";

    /// Every document of the output is YAML; the patches name their object
    /// and carry the value; the rest is an EgressNetwork per scope and address.
    #[test]
    fn linkerd_with_documents_patches_services_and_pods() {
        let mut set = DocumentSet::new();
        set.add_text(CLUSTER, "cluster.yaml").unwrap();
        let entries = [
            entry(0, None, "10.96.0.10:3307"),
            entry(7, Some("web"), "10.96.0.10:3307"),
            entry(7, Some("web"), "10.96.0.10:8080"),
            entry(7, Some("web"), "10.244.0.5:2300"),
            entry(7, Some("web"), "10.0.0.9:2301"),
            entry(0, None, "203.0.113.9:2302"),
        ];
        let text = render(Format::Linkerd, &entries, Some(&set)).unwrap();
        let docs: Vec<serde_json::Value> = text
            .split("\n---\n")
            .filter_map(|d| classifier_policy::file::parse_yaml_value(d, "suggest", 0).ok())
            .filter(|v| !v.is_null())
            .collect();
        let kinds: Vec<(&str, &str, &str)> = docs
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["namespace"].as_str().unwrap(),
                    d["metadata"]["annotations"][OPAQUE_PORTS_ANNOTATION]
                        .as_str()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("Pod", "shop", "25,587,2300,3306,4444,5432,6379,9300,11211"),
                (
                    "Service",
                    "shop",
                    "25,587,3306-3307,4444,5432,6379,9300,11211"
                ),
                (
                    "EgressNetwork",
                    "linkerd-egress",
                    "25,587,2302,3306,4444,5432,6379,9300,11211"
                ),
                (
                    "EgressNetwork",
                    "web",
                    "25,587,2301,3306,4444,5432,6379,9300,11211"
                ),
            ],
            "{text}"
        );
        assert!(
            text.contains("# 10.0.0.9 is inside the cluster's networks"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.10:8080: port 8080 of Service shop/db has an appProtocol"),
            "{text}"
        );
        assert!(text.contains("owner (ReplicaSet cache-5f6d)"), "{text}");
        assert!(
            text.contains("# Namespace web has no EgressNetwork of its own yet"),
            "{text}"
        );
        assert!(
            text.contains("by clients of: namespace web, node (the annotation applies"),
            "{text}"
        );
        assert!(
            text.contains("6 learned server-first destination(s)"),
            "{text}"
        );
    }
}

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

use anyhow::Result;
use classifier_policy::sources::{
    linkerd::suggest::{opaque_ports_patches, CurrentPorts, Fixes, OpaquePortsPatch},
    linkerd::OPAQUE_PORTS_ANNOTATION,
    DocumentSet,
};

use super::LearnedDestination;
use crate::policy::{PortSet, LINKERD_DEFAULT_OPAQUE_PORTS};

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

/// Active entries grouped by (namespace or node, address).
fn grouped(entries: &[LearnedDestination]) -> BTreeMap<(Option<String>, IpAddr), BTreeSet<u16>> {
    let mut out: BTreeMap<(Option<String>, IpAddr), BTreeSet<u16>> = BTreeMap::new();
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
    let mut groups = grouped(entries);
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
        Format::Linkerd => {
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
                render_patches(&mut out, &fixes, &learned_by(&groups));
                // What is left for EgressNetworks: the unheld destinations.
                let unheld: BTreeSet<SocketAddr> =
                    fixes.unheld.iter().map(|u| u.destination).collect();
                in_cluster = fixes
                    .unheld
                    .iter()
                    .filter(|u| u.in_cluster_networks)
                    .map(|u| u.destination.ip())
                    .collect();
                for ((_, ip), ports) in groups.iter_mut() {
                    ports.retain(|p| unheld.contains(&SocketAddr::new(*ip, *p)));
                }
                groups.retain(|_, ports| !ports.is_empty());
                defaults = fixes.defaults;
            }
            for ((scope, ip), ports) in &groups {
                let namespace = scope.as_deref().unwrap_or(GLOBAL_EGRESS_NAMESPACE);
                let mut annotation: PortSet = ports.iter().copied().collect();
                annotation.union_with(&defaults);
                out.push_str("---\n");
                if let Some(ns) = scope.as_deref().filter(|ns| {
                    !egress_namespaces.contains(*ns)
                        && egress_namespaces.contains(GLOBAL_EGRESS_NAMESPACE)
                }) {
                    let _ = writeln!(
                        out,
                        "# Namespace {ns} has no EgressNetwork of its own yet: with this one, Linkerd stops applying\n# {GLOBAL_EGRESS_NAMESPACE}'s EgressNetworks to its clients (a namespace's own shadow the global ones).\n# Copy the ones its clients rely on into {ns}, or put this one in {GLOBAL_EGRESS_NAMESPACE}."
                    );
                }
                if in_cluster.contains(ip) {
                    let _ = writeln!(
                        out,
                        "# {ip} is inside the cluster's networks, but no Service or live Pod of the documents has it:\n# Linkerd does not apply EgressNetworks there; annotate the object that owns it."
                    );
                }
                let _ = write!(
                    out,
                    "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    # learned: {learned}; the default opaque ports kept\n    {OPAQUE_PORTS_ANNOTATION}: \"{annotation}\"\nspec:\n  trafficPolicy: Allow\n  networks:\n    - cidr: \"{cidr}\"\n",
                    name = object_name(*ip),
                    learned = ports_text(ports),
                    cidr = cidr(*ip),
                );
            }
        }
        Format::Istio => {
            for ((scope, ip), ports) in &groups {
                let namespace = scope.as_deref().unwrap_or("istio-system");
                let export = if scope.is_some() {
                    "[\".\"]"
                } else {
                    "[\"*\"]"
                };
                let _ = write!(
                    out,
                    "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  hosts: [\"{name}.learned.invalid\"]\n  addresses: [\"{cidr}\"]\n  exportTo: {export}\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  endpoints:\n    - address: \"{ip}\"\n  ports:\n",
                    name = object_name(*ip),
                    cidr = cidr(*ip),
                );
                for port in ports {
                    let _ = writeln!(
                        out,
                        "    - number: {port}\n      name: tcp-{port}\n      protocol: TCP"
                    );
                }
            }
        }
        Format::Policy => {
            let _ = write!(
                out,
                "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n"
            );
            if groups.is_empty() {
                out.truncate(out.len() - "  rules:\n".len());
                out.push_str("  rules: []\n");
            }
            for ((scope, ip), ports) in &groups {
                if let Some(ns) = scope {
                    let _ = writeln!(
                        out,
                        "    # learned by clients in namespace {ns}; a ClassifierPolicy rule is node-wide (use --format linkerd for a namespace-scoped fix)"
                    );
                }
                let _ = writeln!(
                    out,
                    "    - networks: [\"{}\"]\n      ports: \"{}\"\n      protocol: opaque",
                    cidr(*ip),
                    ports_text(ports)
                );
            }
        }
    }
    Ok(out)
}

/// One merge patch per object (`kubectl patch --type merge --patch-file`),
/// each with a comment saying what it fixes and what it keeps, then the
/// learned destinations of those objects that need no patch or that an
/// annotation cannot fix.
fn render_patches(out: &mut String, fixes: &Fixes, by: &BTreeMap<SocketAddr, BTreeSet<String>>) {
    for p in &fixes.patches {
        render_patch(out, p, by);
    }
    if !fixes.unpatched.is_empty() {
        out.push_str("---\n# Learned destinations of Services and Pods that get no patch:\n");
        for u in &fixes.unpatched {
            let _ = writeln!(out, "#   {}: {}", u.destination, u.reason);
        }
    }
}

/// Who learned each destination: `node`, `namespace web`, ...
fn learned_by(
    groups: &BTreeMap<(Option<String>, IpAddr), BTreeSet<u16>>,
) -> BTreeMap<SocketAddr, BTreeSet<String>> {
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
) {
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
    let _ = write!(
        out,
        "---\n# {what} ({origin}) holds {addresses}: learned server-first on port(s) {learned}\n# by clients of: {scopes} (the annotation applies to every client of the object).\n# Its opaque ports now: {now}; the annotation replaces them, so they are kept.\n",
        what = p.describe(),
        origin = p.origin,
        addresses = addresses.join(", "),
        learned = p.learned,
        scopes = scopes.into_iter().collect::<Vec<_>>().join(", "),
    );
    if let Some(owner) = &p.owner {
        let _ = writeln!(
            out,
            "# The pod goes with its owner ({owner}): set the annotation in the pod template of the workload that owns it too."
        );
    }
    let _ = write!(
        out,
        "# kubectl -n {ns} annotate --overwrite {kind}/{name} {OPAQUE_PORTS_ANNOTATION}={value}\napiVersion: {api}\nkind: {kind_name}\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n    {OPAQUE_PORTS_ANNOTATION}: \"{value}\"\n",
        ns = p.namespace,
        kind = p.kind.to_ascii_lowercase(),
        kind_name = p.kind,
        name = p.name,
        value = p.value,
        api = p.api_version,
    );
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

//! `classifier suggest`: the mesh configuration that fixes the learned
//! destinations, so that stock Linkerd (or Istio) skips detection for them
//! with its own mTLS, metrics and policy, and the classifier is no longer
//! needed for them.
//!
//! * `linkerd`: one `EgressNetwork` per scope and address (in the client's
//!   namespace, or `linkerd-egress` for the node scope) whose
//!   `config.linkerd.io/opaque-ports` annotation lists the learned ports
//!   plus Linkerd's default opaque ports (an annotation replaces the
//!   defaults for its network: listing them keeps every other verdict).
//! * `istio`: `ServiceEntry` objects with `protocol: TCP`.
//! * `policy`: a `ClassifierPolicy` with one opaque rule per address.
//!
//! Not done: naming the Service or Pod behind an in-cluster address (an
//! annotation patch on it); the EgressNetwork form is given for every
//! destination.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
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

pub fn render(format: Format, entries: &[LearnedDestination]) -> String {
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
        Format::Linkerd => {
            let defaults: PortSet = LINKERD_DEFAULT_OPAQUE_PORTS
                .parse()
                .expect("the built-in port list parses");
            for ((scope, ip), ports) in &groups {
                let namespace = scope.as_deref().unwrap_or(GLOBAL_EGRESS_NAMESPACE);
                let _ = write!(
                    out,
                    "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    # learned: {learned}; Linkerd's defaults kept\n    config.linkerd.io/opaque-ports: \"{learned},{defaults}\"\nspec:\n  trafficPolicy: Allow\n  networks:\n    - cidr: \"{cidr}\"\n",
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
    out
}

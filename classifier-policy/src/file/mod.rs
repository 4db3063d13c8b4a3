//! Reading a policy file (YAML) into a [`Policy`].
//!
//! Value checks live in `Deserialize` impls and report through
//! `de::Error::custom`: only an error raised while the value is read gets
//! the value's line/column from serde-saphyr and its field path from
//! serde_path_to_error ([`read::from_yaml_str`]), and a user editing a
//! 500-rule file needs both.
//! Checks that need the whole document (duplicates, totals) run afterwards
//! and name the field instead.

//!
//! - [`schema`]: the document's shape and the per-value checks;
//! - [`read`]: bounded, UTF-8 file reading;
//! - this module: the whole-document checks and the [`Policy`] they give.
//!
//! Loading a path that may hold Kubernetes manifests instead is
//! `sources::load_policy_path`, a layer above: the file format knows
//! nothing of manifests.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::model::{default_cluster_networks, Network, Policy, PolicyError, Protocol, Rule};
use crate::ports::PortSet;
use schema::{ClusterNetworks, Document};

pub mod read;
mod schema;
#[cfg(test)]
mod tests;

pub use read::{
    load_policy_file, parse_yaml_value, read_policy_text, to_yaml_string, MAX_POLICY_FILE_BYTES,
};

pub const API_VERSION: &str = "classifier.dev/v1alpha1";
pub const KIND: &str = "ClassifierPolicy";

/// At most half of the UID set: both policy slots share it during a switch.
pub const MAX_EXCLUDED_UIDS: usize = classifier_common::maps::EXCLUDED_UIDS_CAPACITY as usize / 2;

/// Parses and validates policy text; `origin` (usually the file name)
/// starts every error message.
pub fn parse_policy(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    parse_policy_document(text, origin).map(|p| p.policy)
}

/// [`parse_policy`], keeping the document-only settings (`clusterNetworks`).
pub fn parse_policy_document(text: &str, origin: &str) -> Result<ParsedPolicy, PolicyError> {
    parse_policy_document_at(text, origin, 0)
}

/// [`parse_policy_document`] for a document whose first line is line
/// `line_offset + 1` of its file: positions in errors are the file's.
pub fn parse_policy_document_at(
    text: &str,
    origin: &str,
    line_offset: usize,
) -> Result<ParsedPolicy, PolicyError> {
    let doc: Document =
        read::from_yaml_str(text, line_offset).map_err(|message| PolicyError::Syntax {
            origin: origin.to_string(),
            message,
        })?;
    let invalid = |field: String, message: String| PolicyError::Invalid {
        origin: origin.to_string(),
        field,
        message,
    };

    let spec = doc.spec.unwrap_or_default();
    let default = Policy::builtin_default();
    let exclude_uids = exclude_uids(spec.exclude_uids, default.exclude_uids)
        .map_err(|message| invalid("spec.excludeUids".into(), message))?;
    let rules = rules(spec.rules.unwrap_or_default())
        .map_err(|(field, message)| invalid(field, message))?;

    let policy = Policy {
        default_opaque_ports: spec
            .default_opaque_ports
            .unwrap_or(default.default_opaque_ports),
        exclude_uids,
        rules,
        mark: spec.mark.map(|m| m.0),
        pod_namespaces: Default::default(),
        learning: learning(spec.learning),
    };
    let cluster_networks = match spec.cluster_networks {
        Some(ClusterNetworks(n)) => n,
        None => default_cluster_networks(),
    };
    Ok(ParsedPolicy {
        policy,
        cluster_networks,
    })
}

/// `spec.excludeUids` (or the built-in list when absent), first mention
/// first, within [`MAX_EXCLUDED_UIDS`]; the error is the message.
fn exclude_uids(
    listed: Option<Vec<schema::Uint32>>,
    default: Vec<u32>,
) -> Result<Vec<u32>, String> {
    let listed = match listed {
        Some(uids) => uids.into_iter().map(|u| u.0).collect(),
        None => default,
    };
    let mut exclude_uids = Vec::new();
    for uid in listed {
        // A repeated UID is harmless; keep the first mention's order.
        if !exclude_uids.contains(&uid) {
            exclude_uids.push(uid);
        }
    }
    if exclude_uids.len() > MAX_EXCLUDED_UIDS {
        return Err(format!(
            "{} distinct UIDs listed, at most {MAX_EXCLUDED_UIDS} are supported",
            exclude_uids.len()
        ));
    }
    Ok(exclude_uids)
}

/// `spec.rules` numbered from 1, refusing a rule that repeats an earlier
/// one; the error is (field, message).
fn rules(raw_rules: Vec<schema::RawRule>) -> Result<Vec<Rule>, (String, String)> {
    let mut rules = Vec::with_capacity(raw_rules.len());
    // Same rule twice is almost always a copy/paste slip, and the second
    // copy could never decide anything; order-insensitive on networks.
    let mut seen: HashMap<(Vec<Network>, PortSet, Protocol), usize> = HashMap::new();
    for (i, raw) in raw_rules.into_iter().enumerate() {
        let id = u32::try_from(i + 1)
            .map_err(|_| ("spec.rules".to_string(), "too many rules".to_string()))?;
        let key = (
            canonical_networks(&raw.networks.0),
            raw.ports.0.clone(),
            raw.protocol,
        );
        if let Some(&first) = seen.get(&key) {
            return Err((
                format!("spec.rules[{i}]"),
                format!(
                    "rule {id} duplicates spec.rules[{first}] (rule {}): same networks, ports {} and protocol {}",
                    first + 1,
                    raw.ports.0,
                    raw.protocol
                ),
            ));
        }
        seen.insert(key, i);
        rules.push(Rule {
            id,
            networks: raw.networks.0,
            ports: raw.ports.0,
            protocol: raw.protocol,
            scope: None,
            global_egress: false,
            origin: format!("spec.rules[{i}]"),
        });
    }
    Ok(rules)
}

/// A rule's networks sorted and deduplicated (their `except` lists too), so
/// that two rules listing the same networks in another order compare equal.
fn canonical_networks(networks: &[Network]) -> Vec<Network> {
    let mut canon = networks.to_vec();
    for n in &mut canon {
        n.except.sort();
        n.except.dedup();
    }
    canon.sort();
    canon.dedup();
    canon
}

/// `spec.learning` over its defaults (values were checked when read).
fn learning(raw: Option<schema::RawLearning>) -> crate::model::Learning {
    let mut out = crate::model::Learning::default();
    let Some(raw) = raw else {
        return out;
    };
    if let Some(enabled) = raw.enabled {
        out.enabled = enabled.0;
    }
    if let Some(ttl) = raw.ttl {
        out.ttl = ttl.0;
    }
    if let Some(n) = raw.min_observations {
        out.min_observations = n.0;
    }
    if let Some(scope) = raw.scope {
        out.scope = scope.0;
    }
    out
}

/// A ClassifierPolicy document: the [`Policy`] it gives on its own, plus the
/// settings only the document compiler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPolicy {
    pub policy: Policy,
    /// `spec.clusterNetworks`: what an EgressNetwork without `networks`
    /// leaves out (default [`LINKERD_DEFAULT_CLUSTER_NETWORKS`]).
    pub cluster_networks: Vec<IpNet>,
}

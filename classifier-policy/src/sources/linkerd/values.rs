//! Typed reads of document fields: every mismatch is an error naming the
//! document, the field and the value found.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_yaml::Value;

use super::OPAQUE_PORTS_ANNOTATION;
use crate::model::{Network, PolicyError};
use crate::ports::PortSet;
use crate::sources::document::{show, Document};

pub(super) fn invalid(
    doc: &Document,
    field: impl Into<String>,
    message: impl Into<String>,
) -> PolicyError {
    PolicyError::Invalid {
        origin: format!("{} ({})", doc.origin, doc.describe()),
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn need_name(doc: &Document) -> Result<(), PolicyError> {
    if doc.name.is_empty() {
        return Err(invalid(doc, "metadata.name", "missing"));
    }
    Ok(())
}

pub(super) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    (!cur.is_null()).then_some(cur)
}

pub(super) fn str_at<'a>(doc: &'a Document, path: &[&str]) -> Result<Option<&'a str>, PolicyError> {
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

pub(super) fn seq_at<'a>(doc: &'a Document, path: &[&str]) -> Result<&'a [Value], PolicyError> {
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
pub(super) fn string_map(
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

pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An opaque-ports annotation, checked but not yet resolved: its port
/// numbers and ranges, and the port names in it, which mean the container
/// ports (on a Pod, or a Namespace's annotation inherited by its pods) or
/// the Service ports of that name.
///
/// As linkerd2's `ParseContainerOpaquePorts` (`pkg/util/parsing.go`) and
/// `parseServiceOpaquePorts`
/// (`controller/api/destination/watcher/opaque_ports_watcher.go`) read it:
/// items split at commas (one trailing comma ignored), names first. A
/// port name (IANA_SVC_NAME) always has a letter, a port range never has,
/// so the two cannot be confused.
#[derive(Clone, Debug)]
pub(super) struct PortsAnnotation {
    pub(super) text: String,
    pub(super) ports: PortSet,
    pub(super) names: Vec<String>,
}

impl PortsAnnotation {
    /// The ports, with names resolved through `lookup`. An unknown name is
    /// an error naming `doc` (the object the ports are for) when the
    /// annotation is its own (`own`); in an annotation inherited from the
    /// namespace it is skipped, as Linkerd skips an item it cannot resolve
    /// (a namespace's names need not exist in every pod).
    pub(super) fn resolve(
        &self,
        doc: &Document,
        lookup: &BTreeMap<String, u16>,
        what: &str,
        own: bool,
    ) -> Result<PortSet, PolicyError> {
        let mut set = self.ports.clone();
        for name in &self.names {
            match lookup.get(name) {
                Some(&p) => {
                    set.insert(p);
                }
                None if !own => {}
                None => {
                    return Err(invalid(
                        doc,
                        format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}"),
                        format!(
                            "port name {name:?} is not the name of any {what} (in {:?})",
                            self.text
                        ),
                    ))
                }
            }
        }
        Ok(set)
    }
}

/// Whether `item` is a Kubernetes port name (IANA_SVC_NAME: 1-15
/// lowercase letters, digits and dashes, at least one letter, no dash at
/// either end nor two in a row).
fn is_port_name(item: &str) -> bool {
    (1..=15).contains(&item.len())
        && item
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && item.bytes().any(|b| b.is_ascii_lowercase())
        && !item.starts_with('-')
        && !item.ends_with('-')
        && !item.contains("--")
}

/// The document's opaque-ports annotation, if it has one. `allow_names`:
/// whether port names are meaningful on this kind (Pod, Namespace,
/// Service); elsewhere a name is an error.
pub(super) fn opaque_annotation(
    doc: &Document,
    allow_names: bool,
) -> Result<Option<PortsAnnotation>, PolicyError> {
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
    // Numbers only: the port-list parser's own errors, as before.
    let numeric = text.parse::<PortSet>();
    if let Ok(ports) = &numeric {
        return Ok(Some(PortsAnnotation {
            text,
            ports: ports.clone(),
            names: Vec::new(),
        }));
    }
    let err = numeric.expect_err("checked above");
    if !allow_names {
        return Err(invalid(doc, field, format!("{err} (in {text:?})")));
    }
    let body = text.strip_suffix(',').unwrap_or(&text);
    let mut ports = PortSet::new();
    let mut names = Vec::new();
    for item in body.split(',').map(str::trim) {
        if is_port_name(item) {
            names.push(item.to_string());
        } else {
            match item.parse::<PortSet>() {
                Ok(p) if !item.is_empty() => ports.union_with(&p),
                _ => return Err(invalid(doc, field, format!("{err} (in {text:?})"))),
            }
        }
    }
    Ok(Some(PortsAnnotation { text, ports, names }))
}

pub(super) fn parse_ip(doc: &Document, field: &str, text: &str) -> Result<IpAddr, PolicyError> {
    text.parse::<IpAddr>()
        .map_err(|_| invalid(doc, field, format!("{text:?} is not an IP address")))
}

pub(super) fn host_networks(ips: &[IpAddr]) -> Vec<Network> {
    let set: BTreeSet<IpNet> = ips.iter().map(|&ip| IpNet::from(ip)).collect();
    set.into_iter().map(Network::new).collect()
}

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

/// The document's opaque-ports annotation, if it has one. `names` resolves
/// named ports (a Pod's container ports), when given.
pub(super) fn opaque_annotation(
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

pub(super) fn parse_ip(doc: &Document, field: &str, text: &str) -> Result<IpAddr, PolicyError> {
    text.parse::<IpAddr>()
        .map_err(|_| invalid(doc, field, format!("{text:?} is not an IP address")))
}

pub(super) fn host_networks(ips: &[IpAddr]) -> Vec<Network> {
    let set: BTreeSet<IpNet> = ips.iter().map(|&ip| IpNet::from(ip)).collect();
    set.into_iter().map(Network::new).collect()
}

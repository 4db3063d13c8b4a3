//! Typed reads of a document's fields: every mismatch is a [`FieldError`]
//! naming the field and the value found.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::FieldError;
use crate::model::Network;

/// A short rendering of a value for error messages.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", crate::model::clip(s)),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

/// `show` of an optional value, `nothing` when it is missing.
pub(super) fn show_opt(v: Option<&Value>) -> String {
    v.map_or("nothing".into(), show)
}

/// The value at `path`, `None` when missing or null.
pub(super) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    (!cur.is_null()).then_some(cur)
}

pub(super) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Result<Option<&'a str>, FieldError> {
    match at(v, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FieldError::new(
            path.join("."),
            format!("expected a string, got {}", show(other)),
        )),
    }
}

pub(super) fn seq_at<'a>(v: &'a Value, path: &[&str]) -> Result<&'a [Value], FieldError> {
    match at(v, path) {
        None => Ok(&[]),
        Some(Value::Array(s)) => Ok(s),
        Some(other) => Err(FieldError::new(
            path.join("."),
            format!("expected a list, got {}", show(other)),
        )),
    }
}

/// A port number 1-65535 at `v`'s `key`, if it is one.
pub(super) fn port_of(v: &Value, key: &str) -> Option<u16> {
    v.get(key)
        .and_then(Value::as_u64)
        .filter(|n| (1..=65535).contains(n))
        .map(|n| n as u16)
}

/// A string-to-string map (labels, matchLabels); scalar values are taken
/// as their text.
pub(super) fn string_map(
    v: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    Ok(string_entries(v, field)?
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_owned()))
        .collect())
}

/// [`string_map`]'s entries, in the map's order, with the same errors,
/// borrowing what is text already (a pod's labels are read into a
/// [`super::PackedMap`] without a `String` per label).
pub(super) fn string_entries<'a>(
    v: Option<&'a Value>,
    field: &str,
) -> Result<Vec<(&'a str, std::borrow::Cow<'a, str>)>, FieldError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Object(m) = v else {
        return Err(FieldError::new(
            field,
            format!("expected a map, got {}", show(v)),
        ));
    };
    let mut out = Vec::with_capacity(m.len());
    for (k, val) in m {
        let text = match val {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            other => match scalar_text(other) {
                Some(t) => std::borrow::Cow::Owned(t),
                None => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "expected string keys and values, got {:?} -> {}",
                            k,
                            show(val)
                        ),
                    ))
                }
            },
        };
        out.push((k.as_str(), text));
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

pub(super) fn parse_ip(field: &str, text: &str) -> Result<IpAddr, FieldError> {
    text.parse::<IpAddr>()
        .map_err(|_| FieldError::new(field, format!("{text:?} is not an IP address")))
}

/// One host network (/32 or /128) per address.
pub fn host_networks(ips: &[IpAddr]) -> Vec<Network> {
    if let [one] = ips {
        // The common case (a pod, a single-stack Service).
        return vec![Network::new(IpNet::from(*one))];
    }
    let set: BTreeSet<IpNet> = ips.iter().map(|&ip| IpNet::from(ip)).collect();
    set.into_iter().map(Network::new).collect()
}

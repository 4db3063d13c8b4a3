//! Kubernetes label selectors (`podSelector`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::packed::PackedMap;
use super::values::{scalar_text, show, show_opt, string_map};
use super::FieldError;

/// A `podSelector`: matchLabels AND every matchExpression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    exprs: Vec<(String, Op, BTreeSet<String>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    pub(super) fn parse(v: &Value, field: &str) -> Result<Selector, FieldError> {
        if !v.is_object() {
            return Err(FieldError::new(
                field,
                format!("expected a map, got {}", show(v)),
            ));
        }
        let labels = string_map(
            v.get("matchLabels").filter(|v| !v.is_null()),
            &format!("{field}.matchLabels"),
        )?;
        let exprs = match v.get("matchExpressions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, e)| expression(e, &format!("{field}.matchExpressions[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{field}.matchExpressions"),
                    format!("expected a list, got {}", show(other)),
                ))
            }
        };
        Ok(Selector { labels, exprs })
    }

    pub fn matches(&self, labels: &PackedMap) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.exprs.iter().all(|(k, op, values)| match op {
                Op::In => labels.get(k).is_some_and(|v| values.contains(v)),
                Op::NotIn => labels.get(k).is_none_or(|v| !values.contains(v)),
                Op::Exists => labels.contains_key(k),
                Op::DoesNotExist => !labels.contains_key(k),
            })
    }
}

/// One `matchExpressions` entry at field `f`: key, operator and values,
/// the values' count checked against the operator.
fn expression(e: &Value, f: &str) -> Result<(String, Op, BTreeSet<String>), FieldError> {
    let key = e.get("key").and_then(Value::as_str).ok_or_else(|| {
        FieldError::new(
            format!("{f}.key"),
            format!("expected a string, got {}", show_opt(e.get("key"))),
        )
    })?;
    let op_text = e.get("operator").and_then(Value::as_str).unwrap_or("");
    let op = match op_text {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        _ => {
            return Err(FieldError::new(
                format!("{f}.operator"),
                format!(
                    "unknown operator {}, expected In, NotIn, Exists or DoesNotExist",
                    e.get("operator").map_or("(missing)".into(), show)
                ),
            ))
        }
    };
    let values = expression_values(e, f)?;
    match op {
        Op::In | Op::NotIn if values.is_empty() => Err(FieldError::new(
            format!("{f}.values"),
            format!("operator {op_text} needs at least one value"),
        )),
        Op::Exists | Op::DoesNotExist if !values.is_empty() => Err(FieldError::new(
            format!("{f}.values"),
            format!("operator {op_text} takes no values"),
        )),
        _ => Ok((key.to_string(), op, values)),
    }
}

/// A `matchExpressions` entry's `values`: absent or null is none.
fn expression_values(e: &Value, f: &str) -> Result<BTreeSet<String>, FieldError> {
    let mut values = BTreeSet::new();
    match e.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(vs)) => {
            for (j, v) in vs.iter().enumerate() {
                values.insert(scalar_text(v).ok_or_else(|| {
                    FieldError::new(
                        format!("{f}.values[{j}]"),
                        format!("expected a string, got {}", show(v)),
                    )
                })?);
            }
        }
        Some(other) => {
            return Err(FieldError::new(
                format!("{f}.values"),
                format!("expected a list, got {}", show(other)),
            ))
        }
    }
    Ok(values)
}

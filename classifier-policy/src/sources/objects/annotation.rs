//! Linkerd's `config.linkerd.io/opaque-ports` annotation.

use serde_json::Value;

use super::packed::PortNames;
use super::values::show;
use super::FieldError;
use crate::{model::clip, ports::PortSet};

/// Linkerd's annotation for opaque ports.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortsAnnotation {
    pub text: String,
    pub ports: PortSet,
    pub names: Vec<String>,
}

impl PortsAnnotation {
    /// The ports, with names resolved through `lookup` (`what` says what
    /// the names are, for the error). An unknown name is an error when
    /// the annotation is the object's own (`own`); in an annotation
    /// inherited from the namespace it is skipped, as Linkerd skips an
    /// item it cannot resolve (a namespace's names need not exist in every
    /// pod).
    pub fn resolve(
        &self,
        lookup: &PortNames,
        what: &str,
        own: bool,
    ) -> Result<PortSet, FieldError> {
        let mut set = self.ports.clone();
        for name in &self.names {
            match lookup.get(name) {
                Some(p) => {
                    set.insert(p);
                }
                None if !own => {}
                None => {
                    return Err(FieldError::new(
                        annotation_field(),
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

fn annotation_field() -> String {
    format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}")
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
    body: &Value,
    allow_names: bool,
) -> Result<Option<PortsAnnotation>, FieldError> {
    let Some(v) = body
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
            return Err(FieldError::new(
                annotation_field(),
                format!("expected a port list string, got {}", show(other)),
            ))
        }
    };
    PortsAnnotation::parse(text, allow_names).map(Some)
}

impl PortsAnnotation {
    /// An annotation's value; `allow_names` as in `opaque_annotation`.
    pub fn parse(text: String, allow_names: bool) -> Result<PortsAnnotation, FieldError> {
        // Numbers only: the port-list parser's own errors, as before.
        let numeric = text.parse::<PortSet>();
        if let Ok(ports) = &numeric {
            return Ok(PortsAnnotation {
                text,
                ports: ports.clone(),
                names: Vec::new(),
            });
        }
        let err = numeric.expect_err("checked above");
        if !allow_names {
            return Err(FieldError::new(
                annotation_field(),
                format!("{err} (in {:?})", clip(&text)),
            ));
        }
        let body = text.strip_suffix(',').unwrap_or(&text);
        let mut ranges = Vec::new();
        let mut names = Vec::new();
        for item in body.split(',').map(str::trim) {
            if is_port_name(item) {
                names.push(item.to_string());
            } else {
                match item.parse::<PortSet>() {
                    Ok(p) if !item.is_empty() => ranges.extend_from_slice(p.ranges()),
                    _ => {
                        return Err(FieldError::new(
                            annotation_field(),
                            format!("{err} (in {:?})", clip(&text)),
                        ))
                    }
                }
            }
        }
        let ports = PortSet::from_ranges(ranges);
        Ok(PortsAnnotation { text, ports, names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant's 256 KiB annotation is not copied into its error: the
    /// message (logged, and kept in the rejected-objects report) quotes a
    /// bounded prefix and says how long the value was.
    #[test]
    fn an_error_about_a_huge_annotation_quotes_a_bounded_part_of_it() {
        let huge = format!("25,{}", "9".repeat(256 * 1024));
        for allow_names in [false, true] {
            let err = PortsAnnotation::parse(huge.clone(), allow_names).unwrap_err();
            assert!(
                err.message.len() < 600,
                "{} bytes: {}",
                err.message.len(),
                &err.message[..300]
            );
            assert!(err.message.contains("bytes)"), "{}", err.message);
        }
        // Many port names and numbers, in the worst order: parsed at once.
        let mixed: Vec<String> = (1..=20_000u32)
            .rev()
            .map(|p| {
                if p % 2 == 0 {
                    p.to_string()
                } else {
                    format!("n{p}")
                }
            })
            .collect();
        let parsed = PortsAnnotation::parse(mixed.join(","), true).unwrap();
        assert_eq!(parsed.ports.len(), 10_000);
        assert_eq!(parsed.names.len(), 10_000);
    }
}

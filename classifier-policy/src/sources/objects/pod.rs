//! What the compiler reads of a Pod: labels, IPs, named container ports,
//! its opaque-ports annotation, and whether it can have connections at all.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use super::annotation::{opaque_annotation, PortsAnnotation};
use super::packed::{PackedMap, PortNames};
use super::values::{at, parse_ip, seq_at, show, show_opt, str_at, string_entries};
use super::FieldError;

/// A Pod, as the compiler reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub labels: PackedMap,
    pub ips: Vec<IpAddr>,
    /// Container port name -> number.
    pub port_names: PortNames,
    /// Going away, finished, without an IP, or host-network: no rules.
    pub inactive: bool,
    /// Its own annotation, unresolved (names resolve against
    /// `port_names`); `None` for an inactive pod, whose annotation is not
    /// read.
    pub opaque: Option<Box<PortsAnnotation>>,
    /// `Kind name` of its first `metadata.ownerReferences` entry (the
    /// workload whose pod template an annotation belongs in), for
    /// `suggest`; `None` for an inactive pod. Shared with the other pods
    /// of that owner.
    pub owner: Option<Arc<str>>,
}

impl Pod {
    pub(super) fn read(body: &Value) -> Result<Self, FieldError> {
        let labels = string_entries(at(body, &["metadata", "labels"]), "metadata.labels")?;
        let ips = pod_ips(body)?;
        let port_names = named_ports(body)?;
        let phase = str_at(body, &["status", "phase"])?.unwrap_or("");
        let host_network = matches!(at(body, &["spec", "hostNetwork"]), Some(Value::Bool(true)));
        // A pod that is going away contributes nothing: its IP is about to
        // be another pod's. linkerd2's `podNotTerminating`
        // (controller/api/destination/watcher/k8s.go): a deletionTimestamp,
        // or phase Succeeded or Failed.
        let deleting = at(body, &["metadata", "deletionTimestamp"]).is_some();
        let inactive =
            host_network || deleting || phase == "Succeeded" || phase == "Failed" || ips.is_empty();
        if inactive {
            // Nothing else of it is ever read: keep nothing.
            return Ok(Pod {
                labels: PackedMap::default(),
                ips,
                port_names: PortNames::default(),
                inactive,
                opaque: None,
                owner: None,
            });
        }
        let opaque = opaque_annotation(body, true)?.map(Box::new);
        Ok(Pod {
            labels: PackedMap::from_entries(labels).map_err(|bad| {
                FieldError::new("metadata.labels", format!("{bad:?} has a NUL character"))
            })?,
            ips,
            port_names: PortNames::from_entries(port_names).map_err(|bad| {
                FieldError::new(
                    "spec.containers",
                    format!("port name {bad:?} has a NUL character"),
                )
            })?,
            inactive,
            opaque,
            owner: first_owner(body),
        })
    }
}

/// `status.podIP` and `status.podIPs`, sorted and deduplicated.
fn pod_ips(body: &Value) -> Result<Vec<IpAddr>, FieldError> {
    let mut ips = Vec::new();
    if let Some(ip) = str_at(body, &["status", "podIP"])? {
        if !ip.is_empty() {
            ips.push(parse_ip("status.podIP", ip)?);
        }
    }
    for (i, entry) in seq_at(body, &["status", "podIPs"])?.iter().enumerate() {
        let field = format!("status.podIPs[{i}].ip");
        match entry.get("ip") {
            Some(Value::String(s)) => ips.push(parse_ip(&field, s)?),
            other => {
                return Err(FieldError::new(
                    field,
                    format!("expected a string, got {}", show_opt(other)),
                ))
            }
        }
    }
    ips.sort();
    ips.dedup();
    // Kept as long as the pod: one or two addresses, not the four that
    // pushing made room for.
    ips.shrink_to_fit();
    Ok(ips)
}

/// Container port name -> number, in the order met.
///
/// Init containers first, then containers, a later name replacing an
/// earlier one ([`PortNames::from_entries`] keeps the last): linkerd2's `GetNamedPorts` (pkg/util/parsing.go), which the
/// destination service's `GetAnnotatedOpaquePorts`
/// (controller/api/destination/watcher/workload_watcher.go) and the proxy
/// injector use.
fn named_ports(body: &Value) -> Result<Vec<(&str, u16)>, FieldError> {
    let mut port_names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (ci, c) in seq_at(body, &["spec", list])?.iter().enumerate() {
            let Some(ports) = c.get("ports").filter(|p| !p.is_null()) else {
                continue;
            };
            let Value::Array(ports) = ports else {
                return Err(FieldError::new(
                    format!("spec.{list}[{ci}].ports"),
                    format!("expected a list, got {}", show(ports)),
                ));
            };
            for (pi, p) in ports.iter().enumerate() {
                let Some(name) = p.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let port = super::values::port_of(p, "containerPort").ok_or_else(|| {
                    FieldError::new(
                        format!("spec.{list}[{ci}].ports[{pi}].containerPort"),
                        format!(
                            "expected a port number 1-65535, got {}",
                            show_opt(p.get("containerPort"))
                        ),
                    )
                })?;
                port_names.push((name, port));
            }
        }
    }
    Ok(port_names)
}

/// `Kind name` of the first `metadata.ownerReferences` entry.
fn first_owner(body: &Value) -> Option<Arc<str>> {
    let owner = at(body, &["metadata", "ownerReferences"])?
        .as_array()?
        .first()?;
    Some(crate::sources::intern::intern(&format!(
        "{} {}",
        owner.get("kind")?.as_str()?,
        owner.get("name")?.as_str()?
    )))
}

//! What the compiler needs of a Pod: labels, IPs, named container ports,
//! its opaque ports, and whether it can have connections at all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml::Value;

use super::values::{
    at, invalid, opaque_annotation, parse_ip, seq_at, str_at, string_map, PortsAnnotation,
};
use crate::model::PolicyError;
use crate::ports::PortSet;
use crate::sources::document::{show, Document};

/// What the compiler needs of a Pod.
pub(super) struct PodInfo<'a> {
    pub(super) doc: &'a Document,
    pub(super) namespace: &'a str,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) ips: Vec<IpAddr>,
    /// Container port name -> number.
    pub(super) port_names: BTreeMap<String, u16>,
    /// Going away, finished, without an IP, or host-network: no rules.
    pub(super) inactive: bool,
    /// Its opaque-ports annotation, else its namespace's, with port names
    /// resolved against its container ports; `None` when neither has one.
    pub(super) opaque: Option<PortSet>,
}

impl<'a> PodInfo<'a> {
    /// `ns_ports`: the namespace's annotation, which the pod inherits when
    /// it has none of its own.
    pub(super) fn parse(
        doc: &'a Document,
        ns_ports: Option<&PortsAnnotation>,
    ) -> Result<Self, PolicyError> {
        let labels = string_map(
            doc,
            at(&doc.body, &["metadata", "labels"]),
            "metadata.labels",
        )?;
        let mut ips = Vec::new();
        if let Some(ip) = str_at(doc, &["status", "podIP"])? {
            if !ip.is_empty() {
                ips.push(parse_ip(doc, "status.podIP", ip)?);
            }
        }
        for (i, entry) in seq_at(doc, &["status", "podIPs"])?.iter().enumerate() {
            let field = format!("status.podIPs[{i}].ip");
            match entry.get("ip") {
                Some(Value::String(s)) => ips.push(parse_ip(doc, &field, s)?),
                other => {
                    return Err(invalid(
                        doc,
                        field,
                        format!(
                            "expected a string, got {}",
                            other.map_or("nothing".into(), show)
                        ),
                    ))
                }
            }
        }
        ips.sort();
        ips.dedup();
        // Init containers first, then containers, a later name replacing
        // an earlier one: linkerd2's `GetNamedPorts` (pkg/util/parsing.go),
        // which the destination service's `GetAnnotatedOpaquePorts`
        // (controller/api/destination/watcher/workload_watcher.go) and the
        // proxy injector use.
        let mut port_names = BTreeMap::new();
        for list in ["initContainers", "containers"] {
            for (ci, c) in seq_at(doc, &["spec", list])?.iter().enumerate() {
                let Some(ports) = c.get("ports") else {
                    continue;
                };
                let Value::Sequence(ports) = ports else {
                    return Err(invalid(
                        doc,
                        format!("spec.{list}[{ci}].ports"),
                        format!("expected a list, got {}", show(ports)),
                    ));
                };
                for (pi, p) in ports.iter().enumerate() {
                    let Some(name) = p.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let field = format!("spec.{list}[{ci}].ports[{pi}].containerPort");
                    let port = p
                        .get("containerPort")
                        .and_then(Value::as_u64)
                        .filter(|&n| (1..=65535).contains(&n))
                        .ok_or_else(|| {
                            invalid(
                                doc,
                                &field,
                                format!(
                                    "expected a port number 1-65535, got {}",
                                    p.get("containerPort").map_or("nothing".into(), show)
                                ),
                            )
                        })?;
                    port_names.insert(name.to_string(), port as u16);
                }
            }
        }
        let phase = str_at(doc, &["status", "phase"])?.unwrap_or("");
        let host_network = matches!(
            at(&doc.body, &["spec", "hostNetwork"]),
            Some(Value::Bool(true))
        );
        // A pod that is going away contributes nothing: its IP is about to
        // be another pod's. linkerd2's `podNotTerminating`
        // (controller/api/destination/watcher/k8s.go): a deletionTimestamp,
        // or phase Succeeded or Failed.
        let deleting = at(&doc.body, &["metadata", "deletionTimestamp"]).is_some();
        let inactive =
            host_network || deleting || phase == "Succeeded" || phase == "Failed" || ips.is_empty();
        let opaque = if inactive {
            None
        } else {
            const WHAT: &str = "container port of the pod";
            match (opaque_annotation(doc, true)?, ns_ports) {
                (Some(a), _) => Some(a.resolve(doc, &port_names, WHAT, true)?),
                (None, Some(a)) => Some(a.resolve(doc, &port_names, WHAT, false)?),
                (None, None) => None,
            }
        };
        Ok(PodInfo {
            doc,
            namespace: doc.namespace.as_deref().unwrap_or("default"),
            labels,
            inactive,
            ips,
            port_names,
            opaque,
        })
    }
}

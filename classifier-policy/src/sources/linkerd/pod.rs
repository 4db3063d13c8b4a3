//! What the compiler needs of a Pod: labels, IPs, named container ports,
//! and whether it can have connections at all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml::Value;

use super::values::{at, invalid, parse_ip, seq_at, str_at, string_map};
use crate::model::PolicyError;
use crate::sources::document::{show, Document};

/// What the compiler needs of a Pod.
pub(super) struct PodInfo<'a> {
    pub(super) doc: &'a Document,
    pub(super) namespace: &'a str,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) ips: Vec<IpAddr>,
    /// Container port name -> number.
    pub(super) port_names: BTreeMap<String, u16>,
    /// Finished or host-network: no rules.
    pub(super) inactive: bool,
}

impl<'a> PodInfo<'a> {
    pub(super) fn parse(doc: &'a Document) -> Result<Self, PolicyError> {
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
        let mut port_names = BTreeMap::new();
        for (ci, c) in seq_at(doc, &["spec", "containers"])?.iter().enumerate() {
            let Some(ports) = c.get("ports") else {
                continue;
            };
            let Value::Sequence(ports) = ports else {
                return Err(invalid(
                    doc,
                    format!("spec.containers[{ci}].ports"),
                    format!("expected a list, got {}", show(ports)),
                ));
            };
            for (pi, p) in ports.iter().enumerate() {
                let Some(name) = p.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let field = format!("spec.containers[{ci}].ports[{pi}].containerPort");
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
                port_names.entry(name.to_string()).or_insert(port as u16);
            }
        }
        let phase = str_at(doc, &["status", "phase"])?.unwrap_or("");
        let host_network = matches!(
            at(&doc.body, &["spec", "hostNetwork"]),
            Some(Value::Bool(true))
        );
        Ok(PodInfo {
            doc,
            namespace: doc.namespace.as_deref().unwrap_or("default"),
            labels,
            ips,
            port_names,
            inactive: host_network || phase == "Succeeded" || phase == "Failed",
        })
    }
}

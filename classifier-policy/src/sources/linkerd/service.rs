//! What the compiler (and `suggest`) needs of a Service: its cluster IPs,
//! the `appProtocol` of its ports and the names of its ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml::Value;

use super::app_protocol_of;
use super::values::{invalid, parse_ip, seq_at, str_at};
use crate::model::{PolicyError, Protocol};
use crate::sources::document::{show, Document};

/// What the compiler needs of a Service.
pub(super) struct ServiceInfo {
    /// `spec.clusterIP` and `spec.clusterIPs`, sorted, without `None`
    /// (a headless Service has no address of its own).
    pub(super) ips: Vec<IpAddr>,
    /// Port -> protocol of the ports with an `appProtocol`.
    pub(super) app: BTreeMap<u16, Protocol>,
    /// Port name -> number (for names in its annotation).
    pub(super) port_names: BTreeMap<String, u16>,
}

impl ServiceInfo {
    pub(super) fn parse(doc: &Document) -> Result<ServiceInfo, PolicyError> {
        let mut ips = Vec::new();
        let mut take = |field: &str, ip: &str| -> Result<(), PolicyError> {
            if !ip.is_empty() && ip != "None" {
                ips.push(parse_ip(doc, field, ip)?);
            }
            Ok(())
        };
        if let Some(ip) = str_at(doc, &["spec", "clusterIP"])? {
            take("spec.clusterIP", ip)?;
        }
        for (i, ip) in seq_at(doc, &["spec", "clusterIPs"])?.iter().enumerate() {
            let field = format!("spec.clusterIPs[{i}]");
            match ip {
                Value::String(s) => take(&field, s)?,
                other => {
                    return Err(invalid(
                        doc,
                        field,
                        format!("expected a string, got {}", show(other)),
                    ))
                }
            }
        }
        ips.sort();
        ips.dedup();

        let mut app: BTreeMap<u16, Protocol> = BTreeMap::new();
        let mut port_names: BTreeMap<String, u16> = BTreeMap::new();
        for (i, p) in seq_at(doc, &["spec", "ports"])?.iter().enumerate() {
            if let (Some(name), Some(n)) = (
                p.get("name").and_then(Value::as_str),
                p.get("port")
                    .and_then(Value::as_u64)
                    .filter(|n| (1..=65535).contains(n)),
            ) {
                port_names.insert(name.to_string(), n as u16);
            }
            let Some(app_protocol) = p.get("appProtocol").and_then(Value::as_str) else {
                continue;
            };
            let port = p
                .get("port")
                .and_then(Value::as_u64)
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| {
                    invalid(
                        doc,
                        format!("spec.ports[{i}].port"),
                        format!(
                            "expected a port number 1-65535, got {}",
                            p.get("port").map_or("nothing".into(), show)
                        ),
                    )
                })?;
            app.insert(port as u16, app_protocol_of(app_protocol));
        }
        Ok(ServiceInfo {
            ips,
            app,
            port_names,
        })
    }
}

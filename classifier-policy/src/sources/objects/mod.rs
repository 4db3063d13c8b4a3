//! What the compiler reads of each Kubernetes kind, as typed values.
//!
//! A document is read once, when it arrives (from a file, or from the
//! live watch): [`Object::read`] keeps only the fields the compiler
//! uses, checked, and drops the rest of the body. A policy of 50,000 pods
//! then holds 50,000 small structs rather than 50,000 YAML trees, and a
//! recompile never parses a field twice.
//!
//! A field that does not read is a [`FieldError`] (the field and the
//! value); the document is kept with it, and the compiler reports it as a
//! rejected object.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::model::{check_except, parse_cidr, Network, Protocol};
use crate::ports::PortSet;

mod annotation;
mod packed;
mod pod;
pub mod pruned;
mod selector;
mod values;

pub use annotation::{PortsAnnotation, OPAQUE_PORTS_ANNOTATION};
pub use packed::{PackedMap, PortNames};
pub use pod::Pod;
pub use pruned::Pruned;
pub use selector::Selector;
pub use values::{host_networks, show};

use super::kinds::{self, KubeKind};
use values::{at, parse_ip, port_of, seq_at, show_opt, str_at};

/// A field that does not read: which, and why (naming the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One object of a kind the compiler reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    Server(Server),
    EgressNetwork(EgressNetwork),
}

impl Object {
    /// Reads `body` as an object of `kind`.
    pub fn read(kind: &KubeKind, body: &Value) -> Result<Object, FieldError> {
        Ok(match kind.kind {
            k if k == kinds::NAMESPACE.kind => Object::Namespace(Namespace {
                opaque: annotation::opaque_annotation(body, true)?.map(Box::new),
            }),
            k if k == kinds::POD.kind => Object::Pod(Pod::read(body)?),
            k if k == kinds::SERVICE.kind => Object::Service(Service::read(body)?),
            k if k == kinds::SERVER.kind => Object::Server(Server::read(body)?),
            k if k == kinds::EGRESS_NETWORK.kind => {
                Object::EgressNetwork(EgressNetwork::read(body)?)
            }
            other => unreachable!("kinds::KINDS has no reader for {other}"),
        })
    }
}

/// A Namespace: only its annotation, which its Services and Pods inherit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub opaque: Option<Box<PortsAnnotation>>,
}

/// A Service: its cluster IPs and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `clusterIP` and `clusterIPs`, sorted, without `None` (headless).
    pub ips: Vec<IpAddr>,
    /// The protocol of each port with an `appProtocol`.
    pub app: BTreeMap<u16, Protocol>,
    /// Port name -> number, for names in its annotation.
    pub port_names: PortNames,
    /// Its own annotation, unresolved.
    pub opaque: Option<Box<PortsAnnotation>>,
}

/// What a Service port's `appProtocol` says, as linkerd2's `AppProtocol`
/// (`policy-controller/core/src/outbound.rs`) reads it, case-insensitive:
/// `http` is HTTP/1, `kubernetes.io/h2c` HTTP/2, `linkerd.io/opaque` and
/// `linkerd.io/tcp` opaque, and any other value is `Unknown`, which
/// `policy-controller/grpc/src/outbound.rs` serves as opaque.
pub fn app_protocol_of(value: &str) -> Protocol {
    match value.to_ascii_lowercase().as_str() {
        "http" => Protocol::Http1,
        "kubernetes.io/h2c" => Protocol::Http2,
        _ => Protocol::Opaque,
    }
}

impl Service {
    fn read(body: &Value) -> Result<Self, FieldError> {
        let mut ips = Vec::new();
        let mut take = |field: &str, ip: &str| -> Result<(), FieldError> {
            if !ip.is_empty() && ip != "None" {
                ips.push(parse_ip(field, ip)?);
            }
            Ok(())
        };
        if let Some(ip) = str_at(body, &["spec", "clusterIP"])? {
            take("spec.clusterIP", ip)?;
        }
        for (i, ip) in seq_at(body, &["spec", "clusterIPs"])?.iter().enumerate() {
            let field = format!("spec.clusterIPs[{i}]");
            match ip {
                Value::String(s) => take(&field, s)?,
                other => {
                    return Err(FieldError::new(
                        field,
                        format!("expected a string, got {}", show(other)),
                    ))
                }
            }
        }
        ips.sort();
        ips.dedup();
        let mut app = BTreeMap::new();
        let mut port_names = BTreeMap::new();
        for (i, p) in seq_at(body, &["spec", "ports"])?.iter().enumerate() {
            if let (Some(name), Some(n)) =
                (p.get("name").and_then(Value::as_str), port_of(p, "port"))
            {
                port_names.insert(name.to_string(), n);
            }
            let Some(app_protocol) = p.get("appProtocol").and_then(Value::as_str) else {
                continue;
            };
            let port = port_of(p, "port").ok_or_else(|| {
                FieldError::new(
                    format!("spec.ports[{i}].port"),
                    format!(
                        "expected a port number 1-65535, got {}",
                        show_opt(p.get("port"))
                    ),
                )
            })?;
            app.insert(port, app_protocol_of(app_protocol));
        }
        Ok(Service {
            ips,
            app,
            port_names: PortNames::new(&port_names).map_err(|bad| {
                FieldError::new(
                    "spec.ports",
                    format!("port name {bad:?} has a NUL character"),
                )
            })?,
            opaque: annotation::opaque_annotation(body, true)?.map(Box::new),
        })
    }
}

/// A Server's `port`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPort {
    Number(u16),
    Name(String),
}

/// A Server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `None`: it selects external workloads, which have no rules here.
    pub selector: Option<Selector>,
    /// `None`: `unknown` or `TLS`, no rule (see the compiler).
    pub protocol: Option<Protocol>,
    pub port: ServerPort,
}

impl Server {
    fn read(body: &Value) -> Result<Self, FieldError> {
        let Some(sel) = at(body, &["spec", "podSelector"]) else {
            if at(body, &["spec", "externalWorkloadSelector"]).is_some() {
                return Ok(Server {
                    selector: None,
                    protocol: None,
                    port: ServerPort::Number(0),
                });
            }
            return Err(FieldError::new("spec.podSelector", "missing"));
        };
        let selector = Selector::parse(sel, "spec.podSelector")?;
        let protocol_text = str_at(body, &["spec", "proxyProtocol"])?.unwrap_or("unknown");
        let protocol = match protocol_text {
            "opaque" => Some(Protocol::Opaque),
            "HTTP/1" => Some(Protocol::Http1),
            "HTTP/2" | "gRPC" => Some(Protocol::Http2),
            // unknown: Linkerd detects. TLS: Linkerd forwards without
            // detection, but the client speaks first, so nothing stalls.
            "unknown" | "TLS" => None,
            other => {
                return Err(FieldError::new(
                    "spec.proxyProtocol",
                    format!("unknown proxyProtocol {other:?}, expected unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS"),
                ))
            }
        };
        let port = match at(body, &["spec", "port"]) {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => ServerPort::Number(p as u16),
                _ => {
                    return Err(FieldError::new(
                        "spec.port",
                        format!("port {n} is out of range (1-65535)"),
                    ))
                }
            },
            Some(Value::String(s)) if !s.is_empty() => match s.parse::<u16>() {
                Ok(p) if p > 0 => ServerPort::Number(p),
                _ => ServerPort::Name(s.clone()),
            },
            Some(other) => {
                return Err(FieldError::new(
                    "spec.port",
                    format!("expected a port number or name, got {}", show(other)),
                ))
            }
            None => return Err(FieldError::new("spec.port", "missing")),
        };
        Ok(Server {
            selector: Some(selector),
            protocol,
            port,
        })
    }
}

/// An EgressNetwork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressNetwork {
    /// Empty: everything outside the cluster's networks (filled in by the
    /// compiler, which knows them).
    pub networks: Vec<Network>,
    /// Its annotation's ports; `None`: the default opaque ports.
    pub opaque: Option<PortSet>,
}

impl EgressNetwork {
    fn read(body: &Value) -> Result<Self, FieldError> {
        if let Some(tp) = str_at(body, &["spec", "trafficPolicy"])? {
            if tp != "Allow" && tp != "Deny" {
                return Err(FieldError::new(
                    "spec.trafficPolicy",
                    format!("unknown trafficPolicy {tp:?}, expected Allow or Deny"),
                ));
            }
        }
        let mut networks = Vec::new();
        for (i, n) in seq_at(body, &["spec", "networks"])?.iter().enumerate() {
            let field = format!("spec.networks[{i}]");
            let cidr_text = n.get("cidr").and_then(Value::as_str).ok_or_else(|| {
                FieldError::new(
                    format!("{field}.cidr"),
                    format!("expected a CIDR string, got {}", show_opt(n.get("cidr"))),
                )
            })?;
            let cidr =
                parse_cidr(cidr_text).map_err(|m| FieldError::new(format!("{field}.cidr"), m))?;
            let mut except = Vec::new();
            match n.get("except") {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for (j, e) in list.iter().enumerate() {
                        let f = format!("{field}.except[{j}]");
                        let text = e.as_str().ok_or_else(|| {
                            FieldError::new(&f, format!("expected a CIDR string, got {}", show(e)))
                        })?;
                        let e = parse_cidr(text).map_err(|m| FieldError::new(&f, m))?;
                        check_except(cidr, e).map_err(|m| FieldError::new(&f, m))?;
                        except.push(e);
                    }
                }
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{field}.except"),
                        format!("expected a list, got {}", show(other)),
                    ))
                }
            }
            networks.push(Network { cidr, except });
        }
        Ok(EgressNetwork {
            networks,
            opaque: annotation::opaque_annotation(body, false)?.map(|a| a.ports),
        })
    }
}

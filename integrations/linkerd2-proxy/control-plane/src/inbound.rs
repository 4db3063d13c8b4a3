//! `io.linkerd.proxy.inbound.InboundServerPolicies`: the cluster-default
//! `all-unauthenticated` server for every port.
//!
//! The proxy eagerly watches the policy of its admin port (and of every port
//! in `LINKERD2_PROXY_INBOUND_PORTS`). It starts with its configured default
//! policy and does not block on the answer, but without this service it logs
//! a warning and retries with backoff for the whole run.
//!
//! For a port that no `Server` resource selects, linkerd2's policy controller
//! answers with the cluster's default policy; with the stock default
//! (`all-unauthenticated`) that is: protocol `Detect`, one authorization
//! allowing every IPv4 and IPv6 client without TLS. No HTTP routes are sent,
//! which makes the proxy use a single catch-all route carrying the server's
//! authorizations.

use crate::{identity::fmt_remote, log, watch_once, WatchStream};
use linkerd2_proxy_api::{
    inbound::{self as pb, inbound_server_policies_server::InboundServerPolicies},
    meta::{metadata, Metadata},
};
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

pub const DEFAULT_POLICY_NAME: &str = "all-unauthenticated";

pub struct Inbound {
    detect_timeout: Duration,
}

impl Inbound {
    pub fn new(detect_timeout: Duration) -> Self {
        Self { detect_timeout }
    }

    fn check(&self, rpc: &str, req: tonic::Request<pb::PortSpec>) -> Result<(), tonic::Status> {
        let remote = req.remote_addr();
        let pb::PortSpec { workload, port } = req.into_inner();
        let result = match u16::try_from(port) {
            Ok(p) if p != 0 => Ok(()),
            _ => Err(tonic::Status::invalid_argument(format!(
                "invalid port: {port}"
            ))),
        };
        match &result {
            Ok(()) => log!(
                "InboundServerPolicies/{rpc} from {} workload={workload:?} port={port} -> default:{DEFAULT_POLICY_NAME} Detect(timeout={:?})",
                fmt_remote(remote),
                self.detect_timeout,
            ),
            Err(status) => log!(
                "InboundServerPolicies/{rpc} from {} workload={workload:?} port={port} -> {:?}: {}",
                fmt_remote(remote),
                status.code(),
                status.message()
            ),
        }
        result
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for Inbound {
    async fn get_port(
        &self,
        req: tonic::Request<pb::PortSpec>,
    ) -> Result<tonic::Response<pb::Server>, tonic::Status> {
        self.check("GetPort", req)?;
        Ok(tonic::Response::new(default_server(self.detect_timeout)))
    }

    type WatchPortStream = WatchStream<pb::Server>;

    async fn watch_port(
        &self,
        req: tonic::Request<pb::PortSpec>,
    ) -> Result<tonic::Response<Self::WatchPortStream>, tonic::Status> {
        self.check("WatchPort", req)?;
        Ok(tonic::Response::new(watch_once(default_server(
            self.detect_timeout,
        ))))
    }
}

/// Labels identifying a cluster default (as opposed to a `Server` or
/// authorization resource); the proxy turns these into `Meta::Default`.
fn default_labels(name: &str) -> HashMap<String, String> {
    [("group", ""), ("kind", "default"), ("name", name)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn default_server(detect_timeout: Duration) -> pb::Server {
    let everyone = pb::Authz {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default(DEFAULT_POLICY_NAME.to_string())),
        }),
        labels: default_labels(DEFAULT_POLICY_NAME),
        networks: vec![
            pb::Network {
                net: Some((Ipv4Addr::UNSPECIFIED, 0u8).into()),
                except: vec![],
            },
            pb::Network {
                net: Some((Ipv6Addr::UNSPECIFIED, 0u8).into()),
                except: vec![],
            },
        ],
        authentication: Some(pb::Authn {
            permit: Some(pb::authn::Permit::Unauthenticated(
                pb::authn::PermitUnauthenticated {},
            )),
        }),
    };

    pb::Server {
        protocol: Some(pb::ProxyProtocol {
            kind: Some(pb::proxy_protocol::Kind::Detect(
                pb::proxy_protocol::Detect {
                    timeout: Some(
                        detect_timeout
                            .try_into()
                            .expect("detect timeout fits in a protobuf Duration"),
                    ),
                    http_routes: vec![],
                    http_local_rate_limit: None,
                },
            )),
        }),
        server_ips: vec![],
        authorizations: vec![everyone],
        labels: default_labels(DEFAULT_POLICY_NAME),
    }
}

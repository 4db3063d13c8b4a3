//! `io.linkerd.proxy.outbound.OutboundPolicies`: the "no resource covers this
//! address" answer, for every target.
//!
//! For an IP:port that is not a Service (or covered by an EgressNetwork),
//! linkerd2's policy controller builds a fallback policy with default
//! metadata `egress-fallback`: protocol `Detect` whose opaque route and whose
//! single catch-all HTTP/1 and HTTP/2 route each send everything to one
//! `Forward` backend, the original destination address, behind the
//! controller's default queue (capacity 100, fail-fast 3 s). The only
//! difference here is that the detect timeout is configurable (the controller
//! hard-codes 10 s).
//!
//! The proxy (sidecar mode, this proxy version) only looks at the policy's
//! protocol *kind*: the read timeout it applies to outbound detection is its
//! own `LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT`, not the timeout carried here
//! (checked end to end: policy 8 s, env 2 s -> connections wait 2 s).
//!
//! For the targets given with `--http-route`, the answer is instead the one
//! the policy controller gives for a Service port without `appProtocol` that
//! an HTTPRoute attaches to (linkerd2 `policy-controller/grpc/src/outbound.rs`
//! sends such ports to `http::protocol` in `outbound/http.rs`): still
//! `Detect`, with the same opaque route, but HTTP routes that carry the
//! HTTPRoute's resource metadata. Its one rule adds the response header
//! [`ROUTE_HEADER`], so a client can tell that the route applied.
//!
//! The proxy's own synthesized equivalent (used when the controller answers
//! `NotFound`) is `synthesize_forward_policy` in
//! `linkerd/app/outbound/src/discover.rs`; the two lead to the same stack.

use crate::{identity::fmt_remote, log, watch_once, WatchStream};
use linkerd2_proxy_api::{
    destination, http_route, http_types,
    meta::{self, metadata, Metadata},
    outbound::{self as pb, outbound_policies_server::OutboundPolicies},
};
use std::{net::SocketAddr, time::Duration};

/// Default metadata name the policy controller uses for its fallback policy.
pub const FALLBACK_NAME: &str = "egress-fallback";
/// The name of the HTTPRoute served for `--http-route` targets.
pub const ROUTE_NAME: &str = "e2e-route";
/// The response header that route adds (value: [`ROUTE_NAME`]).
pub const ROUTE_HEADER: &str = "l5d-e2e-route";
/// The policy controller's default backend queue.
const QUEUE_CAPACITY: u32 = 100;
const QUEUE_FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Outbound {
    detect_timeout: Duration,
    http_routes: Vec<SocketAddr>,
}

impl Outbound {
    pub fn new(detect_timeout: Duration, http_routes: Vec<SocketAddr>) -> Self {
        Self {
            detect_timeout,
            http_routes,
        }
    }

    fn policy(&self, addr: SocketAddr) -> pb::OutboundPolicy {
        if self.http_routes.contains(&addr) {
            with_http_route(addr, self.detect_timeout)
        } else {
            fallback(addr, self.detect_timeout)
        }
    }

    /// Validates the request like the policy controller does and returns the
    /// original destination address.
    fn target(
        &self,
        rpc: &str,
        req: tonic::Request<pb::TrafficSpec>,
    ) -> Result<SocketAddr, tonic::Status> {
        let remote = req.remote_addr();
        let pb::TrafficSpec {
            source_workload,
            target,
        } = req.into_inner();
        let result = match target {
            None => Err(tonic::Status::invalid_argument("target is required")),
            Some(pb::traffic_spec::Target::Addr(addr)) => SocketAddr::try_from(addr)
                .map_err(|e| tonic::Status::invalid_argument(format!("invalid target addr: {e}")))
                .and_then(|addr| {
                    if addr.port() == 0 {
                        Err(tonic::Status::invalid_argument("port cannot be zero"))
                    } else {
                        Ok(addr)
                    }
                }),
            // Named (authority) lookups are only made for Service names, which
            // this control plane knows nothing about.
            Some(pb::traffic_spec::Target::Authority(auth)) => {
                Err(tonic::Status::not_found(format!("no such service: {auth}")))
            }
        };
        match &result {
            Ok(addr) if self.http_routes.contains(addr) => log!(
                "OutboundPolicies/{rpc} from {} workload={source_workload:?} target={addr} -> {FALLBACK_NAME}: Detect(timeout={:?}) with HTTPRoute {ROUTE_NAME}, forward to {addr}",
                fmt_remote(remote),
                self.detect_timeout,
            ),
            Ok(addr) => log!(
                "OutboundPolicies/{rpc} from {} workload={source_workload:?} target={addr} -> {FALLBACK_NAME}: Detect(timeout={:?}) forward to {addr}",
                fmt_remote(remote),
                self.detect_timeout,
            ),
            Err(status) => log!(
                "OutboundPolicies/{rpc} from {} workload={source_workload:?} -> {:?}: {}",
                fmt_remote(remote),
                status.code(),
                status.message(),
            ),
        }
        result
    }
}

#[tonic::async_trait]
impl OutboundPolicies for Outbound {
    async fn get(
        &self,
        req: tonic::Request<pb::TrafficSpec>,
    ) -> Result<tonic::Response<pb::OutboundPolicy>, tonic::Status> {
        let addr = self.target("Get", req)?;
        Ok(tonic::Response::new(self.policy(addr)))
    }

    type WatchStream = WatchStream<pb::OutboundPolicy>;

    async fn watch(
        &self,
        req: tonic::Request<pb::TrafficSpec>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let addr = self.target("Watch", req)?;
        Ok(tonic::Response::new(watch_once(self.policy(addr))))
    }
}

fn default_meta(name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Default(name.to_string())),
    })
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    d.try_into()
        .expect("durations used here fit in a protobuf Duration")
}

/// Builds the fallback policy for an uncovered original destination.
pub fn fallback(original_dst: SocketAddr, detect_timeout: Duration) -> pb::OutboundPolicy {
    // One backend, shared by every route: connect straight to the address the
    // application asked for.
    let backend = pb::Backend {
        metadata: default_meta(FALLBACK_NAME),
        queue: Some(pb::Queue {
            capacity: QUEUE_CAPACITY,
            failfast_timeout: Some(proto_duration(QUEUE_FAILFAST_TIMEOUT)),
        }),
        kind: Some(pb::backend::Kind::Forward(destination::WeightedAddr {
            addr: Some(original_dst.into()),
            weight: 1,
            ..Default::default()
        })),
    };

    // Used when detection finds no HTTP (or times out): plain TCP forwarding.
    let opaque = pb::proxy_protocol::Opaque {
        routes: vec![pb::OpaqueRoute {
            metadata: default_meta(FALLBACK_NAME),
            rules: vec![pb::opaque_route::Rule {
                backends: Some(pb::opaque_route::Distribution {
                    kind: Some(pb::opaque_route::distribution::Kind::FirstAvailable(
                        pb::opaque_route::distribution::FirstAvailable {
                            backends: vec![pb::opaque_route::RouteBackend {
                                backend: Some(backend.clone()),
                                filters: vec![],
                            }],
                        },
                    )),
                }),
                filters: vec![],
            }],
        }],
    };

    // One route matching every request (an empty match matches all), for
    // both HTTP versions.
    let http_routes = vec![pb::HttpRoute {
        metadata: default_meta(FALLBACK_NAME),
        hosts: vec![],
        rules: vec![pb::http_route::Rule {
            matches: vec![http_route::HttpRouteMatch::default()],
            backends: Some(pb::http_route::Distribution {
                kind: Some(pb::http_route::distribution::Kind::FirstAvailable(
                    pb::http_route::distribution::FirstAvailable {
                        backends: vec![pb::http_route::RouteBackend {
                            backend: Some(backend),
                            ..Default::default()
                        }],
                    },
                )),
            }),
            ..Default::default()
        }],
    }];

    pb::OutboundPolicy {
        metadata: default_meta(FALLBACK_NAME),
        protocol: Some(pb::ProxyProtocol {
            kind: Some(pb::proxy_protocol::Kind::Detect(
                pb::proxy_protocol::Detect {
                    timeout: Some(proto_duration(detect_timeout)),
                    opaque: Some(opaque),
                    http1: Some(pb::proxy_protocol::Http1 {
                        routes: http_routes.clone(),
                        failure_accrual: None,
                    }),
                    http2: Some(pb::proxy_protocol::Http2 {
                        routes: http_routes,
                        failure_accrual: None,
                    }),
                },
            )),
        }),
    }
}

/// The policy for a target an HTTPRoute attaches to: `Detect`, like the
/// fallback, with HTTP routes from the HTTPRoute [`ROUTE_NAME`].
pub fn with_http_route(original_dst: SocketAddr, detect_timeout: Duration) -> pb::OutboundPolicy {
    let mut policy = fallback(original_dst, detect_timeout);
    let route_meta = Some(Metadata {
        kind: Some(metadata::Kind::Resource(meta::Resource {
            group: "gateway.networking.k8s.io".to_string(),
            kind: "HTTPRoute".to_string(),
            name: ROUTE_NAME.to_string(),
            namespace: "ns1".to_string(),
            section: String::new(),
            port: 0,
        })),
    });
    let add_header = pb::http_route::Filter {
        kind: Some(pb::http_route::filter::Kind::ResponseHeaderModifier(
            http_route::ResponseHeaderModifier {
                add: Some(http_types::Headers {
                    headers: vec![http_types::headers::Header {
                        name: ROUTE_HEADER.to_string(),
                        value: ROUTE_NAME.as_bytes().to_vec(),
                    }],
                }),
                set: None,
                remove: vec![],
            },
        )),
    };
    if let Some(pb::ProxyProtocol {
        kind: Some(pb::proxy_protocol::Kind::Detect(detect)),
    }) = policy.protocol.as_mut()
    {
        let http1 = detect.http1.iter_mut().flat_map(|p| p.routes.iter_mut());
        let http2 = detect.http2.iter_mut().flat_map(|p| p.routes.iter_mut());
        for route in http1.chain(http2) {
            route.metadata = route_meta.clone();
            for rule in &mut route.rules {
                rule.filters = vec![add_header.clone()];
            }
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_detect_forwarding_to_original_dst() {
        let dst: SocketAddr = "10.1.2.3:4222".parse().unwrap();
        let policy = fallback(dst, Duration::from_secs(3));
        let Some(pb::proxy_protocol::Kind::Detect(detect)) = policy.protocol.unwrap().kind else {
            panic!("expected Detect");
        };
        assert_eq!(detect.timeout, Some(proto_duration(Duration::from_secs(3))));

        let forward_addr = |b: &pb::Backend| match &b.kind {
            Some(pb::backend::Kind::Forward(w)) => SocketAddr::try_from(w.addr.unwrap()).unwrap(),
            other => panic!("expected Forward, got {other:?}"),
        };

        let opaque = detect.opaque.unwrap();
        let Some(pb::opaque_route::distribution::Kind::FirstAvailable(fa)) =
            opaque.routes[0].rules[0].backends.clone().unwrap().kind
        else {
            panic!("expected FirstAvailable");
        };
        assert_eq!(forward_addr(fa.backends[0].backend.as_ref().unwrap()), dst);

        for routes in [detect.http1.unwrap().routes, detect.http2.unwrap().routes] {
            assert_eq!(routes.len(), 1);
            let rule = &routes[0].rules[0];
            assert_eq!(rule.matches, vec![http_route::HttpRouteMatch::default()]);
            let Some(pb::http_route::distribution::Kind::FirstAvailable(fa)) =
                rule.backends.clone().unwrap().kind
            else {
                panic!("expected FirstAvailable");
            };
            assert_eq!(forward_addr(fa.backends[0].backend.as_ref().unwrap()), dst);
        }
    }

    #[test]
    fn http_route_target_is_detect_with_resource_routes() {
        let dst: SocketAddr = "192.0.2.2:6379".parse().unwrap();
        let outbound = Outbound::new(Duration::from_secs(3), vec![dst]);
        let other: SocketAddr = "192.0.2.2:3306".parse().unwrap();
        assert_eq!(
            outbound.policy(other),
            fallback(other, Duration::from_secs(3))
        );

        let Some(pb::proxy_protocol::Kind::Detect(detect)) =
            outbound.policy(dst).protocol.unwrap().kind
        else {
            panic!("expected Detect");
        };
        // The opaque route stays the controller's default.
        assert_eq!(
            detect.opaque.unwrap().routes[0].metadata,
            default_meta(FALLBACK_NAME)
        );
        for routes in [detect.http1.unwrap().routes, detect.http2.unwrap().routes] {
            let Some(metadata::Kind::Resource(resource)) = routes[0].metadata.clone().unwrap().kind
            else {
                panic!("expected resource metadata");
            };
            assert_eq!(
                (resource.kind.as_str(), resource.name.as_str()),
                ("HTTPRoute", ROUTE_NAME)
            );
            assert_eq!(routes[0].rules[0].filters.len(), 1);
        }
    }
}

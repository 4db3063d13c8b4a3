//! `io.linkerd.proxy.destination.Destination`: resolves nothing.
//!
//! With `LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS` (and the default
//! `LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES`) not covering the test
//! addresses, the proxy never asks for a profile, and since every outbound
//! policy here forwards to the original destination it never asks `Get` for
//! endpoints either. If it does ask, the answer is `InvalidArgument`: what the
//! real destination controller answers for an IP `Get` and for authorities it
//! cannot resolve, and what the proxy treats as "not discoverable" (no profile,
//! no retry loop) rather than as a control-plane failure.

use crate::{identity::fmt_remote, log, WatchStream};
use linkerd2_proxy_api::destination::{self as pb, destination_server};

pub struct Destination;

fn reject(rpc: &str, req: tonic::Request<pb::GetDestination>) -> tonic::Status {
    let remote = req.remote_addr();
    let pb::GetDestination { scheme, path, .. } = req.into_inner();
    log!(
        "Destination/{rpc} from {} {scheme}://{path} -> InvalidArgument",
        fmt_remote(remote)
    );
    tonic::Status::invalid_argument(format!(
        "linkerd-test-control-plane does not resolve destinations: {path}"
    ))
}

#[tonic::async_trait]
impl destination_server::Destination for Destination {
    type GetStream = WatchStream<pb::Update>;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        Err(reject("Get", req))
    }

    type GetProfileStream = WatchStream<pb::DestinationProfile>;

    async fn get_profile(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Self::GetProfileStream>, tonic::Status> {
        Err(reject("GetProfile", req))
    }
}

//! `linkerd-test-control-plane`: a tiny, Kubernetes-free stand-in for the
//! Linkerd control plane, **for tests only**.
//!
//! It lets an unmodified `linkerd2-proxy` binary start, obtain its identity and
//! become ready on a machine without a cluster, so that end-to-end tests can
//! push real traffic through the real proxy. All gRPC APIs the proxy talks to
//! are served in plaintext on a single `--listen` address (the proxy skips TLS
//! for loopback control-plane addresses):
//!
//! * `io.linkerd.proxy.identity.Identity/Certify` returns a pre-issued
//!   certificate chain read from `--identity-dir` (upstream's test identities,
//!   e.g. `linkerd/app/integration/src/data/foo-ns1`), valid for one hour from
//!   the time of the request. Nothing is signed; the CSR is ignored.
//! * `io.linkerd.proxy.outbound.OutboundPolicies/{Get,Watch}` returns, for every
//!   target, the policy that linkerd2's policy controller returns for an
//!   address that no resource covers: protocol `Detect` (with
//!   `--detect-timeout`) whose opaque, HTTP/1 and HTTP/2 routes all forward to
//!   the original destination address; or, for each `--http-route` target, a
//!   `Detect` whose HTTP routes come from an HTTPRoute. (The sidecar proxy's outbound detection
//!   actually waits its own `LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT`; keep the
//!   two equal.)
//! * `io.linkerd.proxy.inbound.InboundServerPolicies/{GetPort,WatchPort}`
//!   returns the cluster-default `all-unauthenticated` server (protocol
//!   `Detect`, every network, no authentication required). The proxy always
//!   watches its admin port, and any port listed in
//!   `LINKERD2_PROXY_INBOUND_PORTS`.
//! * `io.linkerd.proxy.destination.Destination/{Get,GetProfile}` answer
//!   `InvalidArgument`, which is what the real destination controller answers
//!   for IP lookups it cannot resolve and which the proxy treats as "no
//!   discovery for this address" (no retries). Configure the proxy with
//!   `LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS` excluding the test addresses
//!   so that it does not ask in the first place.
//!
//! Nothing here is hardened or suitable for production use: there is no
//! authentication, no TLS and no state. Every request is logged to stderr;
//! `ready` is printed to stdout once the listener is bound.

#![forbid(unsafe_code)]

mod cli;
mod destination;
mod identity;
mod inbound;
mod log;
mod outbound;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::Args::parse(std::env::args_os().skip(1)) {
        Ok(cli::Parsed::Run(args)) => args,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(cli::Parsed::Version) => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("Run with --help for usage.");
            return ExitCode::from(2);
        }
    };

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: failed to start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: cli::Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use linkerd2_proxy_api::{
        destination::destination_server::DestinationServer,
        identity::identity_server::IdentityServer,
        inbound::inbound_server_policies_server::InboundServerPoliciesServer,
        outbound::outbound_policies_server::OutboundPoliciesServer,
    };
    use std::io::Write;

    // Load everything that can fail before binding, so that `ready` means the
    // control plane will actually answer.
    let identity = identity::Identity::load(&args.identity_dir)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("failed to bind {}: {e}", args.listen))?;
    let local = listener.local_addr()?;

    log!(
        "listening on {local}; identity-dir={}; detect-timeout={:?}",
        args.identity_dir.display(),
        args.detect_timeout
    );
    {
        // A test harness waits for this exact line.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready")?;
        stdout.flush()?;
    }

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        log!("shutting down");
    };

    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(OutboundPoliciesServer::new(outbound::Outbound::new(
            args.detect_timeout,
            args.http_routes.clone(),
        )))
        .add_service(InboundServerPoliciesServer::new(inbound::Inbound::new(
            args.detect_timeout,
        )))
        .add_service(DestinationServer::new(destination::Destination))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;

    Ok(())
}

/// A response stream that yields one item and then stays open until the client
/// goes away, like a controller watch on a resource that never changes.
///
/// Keeping the stream open matters: the proxy treats a completed watch as a
/// reason to reconnect (with backoff), not as "no further updates".
pub(crate) type WatchStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

pub(crate) fn watch_once<T: Send + 'static>(item: T) -> WatchStream<T> {
    use futures::StreamExt;
    Box::pin(
        futures::stream::once(futures::future::ready(Ok(item))).chain(futures::stream::pending()),
    )
}

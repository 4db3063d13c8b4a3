//! `classifier proxy`: a reference outbound proxy, the model for a proxy
//! author adopting the classifier's query contract. It behaves like a mesh
//! sidecar's outbound side behind a linkerd-init style `REDIRECT`:
//!
//! 1. accept, read the original destination (`SO_ORIGINAL_DST`);
//! 2. ask the kernel for the connection's verdict
//!    ([`classifier_client::query`]);
//! 3. opaque: connect to the original destination at once and copy bytes
//!    both ways, without reading from the client first;
//! 4. otherwise: wait up to the detection timeout for the client's first
//!    bytes, detect HTTP/1 or HTTP/2 from them and forward; on timeout
//!    forward as opaque TCP, as Linkerd does.
//!
//! Step 4 is what stalls server-speaks-first protocols (MySQL, SMTP, NATS):
//! their clients send nothing until the server greets them, so without a
//! verdict they wait out the whole timeout.
//!
//! Its own outbound connections must not be redirected back to it: run it
//! as the UID the nat rules `RETURN` (2102 with linkerd-init), which the
//! classifier also leaves unclassified.

mod detect;
mod original_dst;

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{field::Empty, info, info_span, warn, Instrument as _, Span};

pub use detect::{detect, Detected};
pub use original_dst::original_dst;

use classifier_client::Verdict;

pub struct ProxyOptions {
    pub listen: SocketAddr,
    pub detect_timeout: Duration,
}

/// Accepts connections until SIGINT or SIGTERM.
pub async fn run(opts: ProxyOptions) -> Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    info!(listen = %opts.listen, detect_timeout = ?opts.detect_timeout, "proxy listening");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => { warn!("accept: {err}"); continue; }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let span = info_span!("conn", client = %peer, dst = Empty);
        tokio::spawn(
            async move {
                if let Err(err) = handle(client, opts.detect_timeout).await {
                    warn!("{err:#}");
                }
            }
            .instrument(span),
        );
    }
    info!("proxy stopped");
    Ok(())
}

/// One redirected connection, from accept to close.
async fn handle(mut client: TcpStream, detect_timeout: Duration) -> Result<()> {
    let accepted = Instant::now();
    let local = client.local_addr()?;
    let dst =
        original_dst(&client, local).context("no SO_ORIGINAL_DST: not a redirected connection")?;
    anyhow::ensure!(
        dst != local,
        "connection addressed to the proxy itself; refusing to loop"
    );
    Span::current().record("dst", tracing::field::display(dst));
    let mark = socket_mark(&client);

    // The contract: ask the kernel, cross-checked against SO_ORIGINAL_DST.
    // `Ok(None)` means no classifier here; then, and for any verdict but
    // opaque, detect as usual.
    let verdict = classifier_client::query_checked(&client, dst).unwrap_or_else(|err| {
        warn!("classifier query failed ({err}); detecting as usual");
        None
    });
    if let Some(v) = verdict.filter(|v| v.ambiguous) {
        info!(verdict_dst = ?v.original_dst, "no usable verdict (ambiguous client address); detecting as usual");
    }
    let opaque = verdict.filter(Verdict::skip_detection);

    let mut first_bytes = Vec::new();
    if let Some(v) = opaque {
        info!(
            source = v.source.as_str(),
            rule = v.rule_id,
            mark = format_args!("{mark:#x}"),
            "opaque from kernel verdict"
        );
    } else {
        let mut buf = vec![0u8; 8 * 1024];
        match tokio::time::timeout(detect_timeout, client.read(&mut buf)).await {
            Ok(Ok(0)) => {
                info!("client closed before sending anything");
                return Ok(());
            }
            Ok(Ok(n)) => {
                first_bytes.extend_from_slice(&buf[..n]);
                let decision = match detect(&first_bytes) {
                    Detected::Http1 => "detected http1",
                    Detected::Http2 => "detected http2",
                    Detected::Other => "detected no HTTP; forwarding as opaque TCP",
                };
                info!(mark = format_args!("{mark:#x}"), "{decision}");
            }
            Ok(Err(err)) => return Err(err).context("reading the client's first bytes"),
            Err(_) => info!(
                mark = format_args!("{mark:#x}"),
                "protocol detection timed out after {detect_timeout:?}; forwarding as opaque TCP"
            ),
        }
    }
    forward(client, dst, &first_bytes, accepted).await
}

/// Connects to `dst`, sends what detection already read, then copies both
/// ways until each side has closed. Logs the time from accept to the
/// server's first byte.
async fn forward(
    mut client: TcpStream,
    dst: SocketAddr,
    first_bytes: &[u8],
    accepted: Instant,
) -> Result<()> {
    let mut server = TcpStream::connect(dst)
        .await
        .with_context(|| format!("connecting to {dst}"))?;
    server.write_all(first_bytes).await?;

    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let upstream = async {
        let n = tokio::io::copy(&mut client_rx, &mut server_tx).await?;
        server_tx.shutdown().await?;
        Ok::<_, io::Error>(n + first_bytes.len() as u64)
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = server_rx.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if total == 0 {
                let ms = accepted.elapsed().as_secs_f64() * 1e3;
                info!(
                    time_to_first_byte_ms = format_args!("{ms:.1}"),
                    "first byte from server"
                );
            }
            client_tx.write_all(&buf[..n]).await?;
            total += n as u64;
        }
        client_tx.shutdown().await?;
        Ok::<_, io::Error>(total)
    };
    let (sent, received) = tokio::try_join!(upstream, downstream)?;
    info!(sent, received, "closed");
    Ok(())
}

/// The accepted socket's `SO_MARK`: the classifier's mark in mark mode
/// (with `net.ipv4.tcp_fwmark_accept=1`), else 0.
pub fn socket_mark(socket: &impl AsRawFd) -> u32 {
    crate::sys::socket::getsockopt::<u32>(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK)
        .map_or(0, |(mark, _)| mark)
}

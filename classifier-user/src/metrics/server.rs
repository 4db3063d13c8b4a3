//! The HTTP side: hyper 1.x, HTTP/1 only, on a thread of its own.
//!
//! The server runs on its own thread with its own current-thread tokio
//! runtime, started after the agent dropped its capabilities (a thread
//! inherits its creator's capabilities, so this one and the blocking thread
//! a scrape runs on hold only CAP_BPF). So:
//!
//! - a scrape never runs on the agent's loop: reading the maps (about
//!   80 ms for a full 65,536-entry verdict table) happens on a blocking
//!   thread of the server's runtime, at most [`MAX_CONCURRENT_SCRAPES`] at
//!   once;
//! - `/healthz` and `/readyz` are answered on the server's own thread from
//!   atomics, never behind a scrape: liveness still means "the agent loop
//!   ticks" (its heartbeat), not "the server answers".
//!
//! Kept robust against slow or hostile clients, since the port is
//! reachable from the pod network (the DaemonSet's NetworkPolicy narrows
//! that, where the cluster enforces it): a request's headers must arrive
//! within [`HEADER_TIMEOUT`] (idle and slowloris connections are closed
//! then), a connection lives at most [`CONNECTION_LIFETIME`], one peer
//! address holds at most [`MAX_PER_PEER`] connections and all peers
//! together [`MAX_CONNECTIONS`] (more are closed at accept), and only
//! `GET`/`HEAD` of four fixed paths are answered. A pod that opens
//! hundreds of idle connections fills only its own per-peer quota.
//!
//! `/debug/rejected` (the rejected-objects report, as JSON) names tenants'
//! objects and quotes their values, which `/metrics` never does: it is
//! answered to loopback peers only (`kubectl port-forward`, or a process in
//! the agent's network namespace), and 403 to any other.
//!
//! The kubelet's probes share their peer address with every node-local
//! process, so a per-peer quota cannot protect them: eight idle
//! connections from any host process would fail `/healthz` and get the
//! agent restarted in a loop. They have a listener of their own
//! (`--probe-addr`, see [`serve_probes`]) that never refuses a connection:
//! at [`MAX_PROBE_CONNECTIONS`] a new one closes the oldest. A probe sends
//! its request at once and is answered from atomics in microseconds, so
//! whatever a scraper or an attacker holds, the newest connection, the
//! probe's, is served.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{AgentMetrics, Exporter, Probe, CONTENT_TYPE};

/// The whole request head must arrive within this, counted from when the
/// server starts waiting for it (also on an idle keep-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Any connection is closed after this, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Connections served at once, all peers together.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections served at once for one peer IP address (the kubelet needs
/// two, a Prometheus server one or two).
pub const MAX_PER_PEER: usize = 8;
/// Scrapes reading the maps at once; more wait (up to [`SCRAPE_WAIT`]).
pub const MAX_CONCURRENT_SCRAPES: usize = 2;
/// How long a scrape waits for its turn before it is answered 503.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's minimum buffer).
const MAX_HEAD_BYTES: usize = 8192;
/// Connections the probe listener holds at once; a new one beyond it
/// closes the oldest.
pub const MAX_PROBE_CONNECTIONS: usize = 64;
/// A probe's request head must arrive within this (the kubelet sends it
/// at once), and it is answered and closed.
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The metrics port's limits: the constants above, except in tests that
/// need a connection to stay idle longer than [`HEADER_TIMEOUT`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_per_peer: MAX_PER_PEER,
        }
    }
}

/// A bound, not yet serving, metrics listener: bind early (before the
/// agent touches the kernel, so a taken port fails fast) and
/// [`start`](Self::start) once the agent is ready to be scraped.
pub struct MetricsServer {
    listener: Option<(std::net::TcpListener, SocketAddr)>,
    probes: Option<(std::net::TcpListener, SocketAddr)>,
}

fn listen(addr: SocketAddr, flag: &str) -> Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{flag} {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        Self::bind_with_probes(Some(addr), None)
    }

    /// `--metrics-addr` (metrics and probes) and `--probe-addr` (probes
    /// only, never refused), each optional.
    pub fn bind_with_probes(
        metrics: Option<SocketAddr>,
        probes: Option<SocketAddr>,
    ) -> Result<Self> {
        Ok(Self {
            listener: metrics.map(|a| listen(a, "--metrics-addr")).transpose()?,
            probes: probes.map(|a| listen(a, "--probe-addr")).transpose()?,
        })
    }

    /// The metrics address (panics without one; for tests).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.as_ref().expect("a metrics listener").1
    }

    /// The probe listener's address, if there is one.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probes.as_ref().map(|p| p.1)
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on a new thread (its own
    /// current-thread runtime) until the process exits. Call it after the
    /// capabilities are dropped: the thread inherits the caller's.
    pub fn start(
        self,
        exporter: Exporter,
        agent: AgentMetrics,
    ) -> Result<std::thread::JoinHandle<()>> {
        self.start_with_limits(exporter, agent, Limits::default())
    }

    /// [`start`](Self::start) with other limits on the metrics port.
    pub fn start_with_limits(
        self,
        exporter: Exporter,
        agent: AgentMetrics,
        limits: Limits,
    ) -> Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_CONCURRENT_SCRAPES)
            .thread_name("metrics-scrape")
            .build()
            .context("metrics: building the server's runtime")?;
        let metrics_addr = self.listener.as_ref().map(|l| l.1);
        let probe_addr = self.probe_addr();
        let listeners = (self.listener, self.probes);
        let state = Arc::new(State {
            exporter,
            agent,
            scrapes: Semaphore::new(MAX_CONCURRENT_SCRAPES),
            limits,
        });
        let handle = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (metrics, probes) = listeners;
                    let probes = probes.and_then(|(l, addr)| match TcpListener::from_std(l) {
                        Ok(l) => Some(l),
                        Err(err) => {
                            tracing::error!("probes: cannot serve on {addr}: {err}");
                            None
                        }
                    });
                    if let Some(probes) = probes {
                        tokio::spawn(serve_probes(probes, state.clone()));
                    }
                    match metrics.map(|(l, addr)| (TcpListener::from_std(l), addr)) {
                        Some((Ok(l), _)) => accept_loop(l, state).await,
                        Some((Err(err), addr)) => {
                            tracing::error!("metrics: cannot serve on {addr}: {err}")
                        }
                        None => std::future::pending::<()>().await,
                    }
                })
            })
            .context("metrics: starting the server thread")?;
        if let Some(addr) = metrics_addr {
            tracing::info!(addr = %addr, "serving /metrics, /healthz, /readyz and /debug/rejected");
        }
        if let Some(addr) = probe_addr {
            tracing::info!(addr = %addr, "serving /healthz and /readyz for probes");
        }
        Ok(handle)
    }
}

struct State {
    exporter: Exporter,
    agent: AgentMetrics,
    scrapes: Semaphore,
    limits: Limits,
}

/// Live connections, in total and per peer address.
#[derive(Default)]
struct Slots {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Holds a connection's slot until dropped.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    peer: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, peer: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
        let mine = s.per_peer.get(&peer).copied().unwrap_or(0);
        if s.total >= limits.max_connections || mine >= limits.max_per_peer {
            return None;
        }
        s.total += 1;
        s.per_peer.insert(peer, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.per_peer.remove(&self.peer);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // An IPv4 peer on a dual-stack socket counts as its IPv4 address.
        let peer_ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let Some(slot) = Slot::take(&slots, peer_ip, &state.limits) else {
            tracing::debug!(%peer, "metrics: connection limit reached, closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let header_timeout = state.limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    Ok::<_, Infallible>(
                        respond(state, req.method(), req.uri().path(), peer_ip).await,
                    )
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!("metrics: connection: {err}"),
                Err(_) => tracing::debug!("metrics: connection closed after its lifetime"),
            }
        });
    }
}

/// The probe listener: `/healthz` and `/readyz` only, one request per
/// connection. It never refuses a connection: at
/// [`MAX_PROBE_CONNECTIONS`] the oldest is closed to make room, so
/// connections held open (idle, or sending slowly) cannot keep a probe
/// out; each lives at most [`PROBE_HEADER_TIMEOUT`] without a request.
async fn serve_probes(listener: TcpListener, state: Arc<State>) {
    use std::collections::BTreeMap;
    type Live = Arc<Mutex<BTreeMap<u64, tokio::task::AbortHandle>>>;
    /// Removes a finished connection from `live`.
    struct Done(Live, u64);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.1);
        }
    }
    let live: Live = Arc::default();
    for id in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("probes: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        {
            let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
            while l.len() >= MAX_PROBE_CONNECTIONS {
                if let Some((_, oldest)) = l.pop_first() {
                    oldest.abort();
                }
            }
        }
        let _ = stream.set_nodelay(true);
        // The task starts serving once it is registered, so that it cannot
        // finish (and deregister) before it is listed.
        let (registered, wait) = tokio::sync::oneshot::channel::<()>();
        let done = Done(live.clone(), id);
        let state = state.clone();
        let task = tokio::spawn(async move {
            let _done = done;
            if wait.await.is_err() {
                return;
            }
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond_probe(&state, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(PROBE_HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(PROBE_HEADER_TIMEOUT * 2, conn).await;
        });
        live.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task.abort_handle());
        let _ = registered.send(());
    }
}

fn respond_probe(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" => probe(state.agent.liveness()),
        "/readyz" => probe(state.agent.readiness()),
        _ => text(
            StatusCode::NOT_FOUND,
            "the probe port answers /healthz and /readyz; /metrics is on --metrics-addr\n".into(),
        ),
    }
}

async fn respond(
    state: Arc<State>,
    method: &Method,
    path: &str,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => scrape(state).await,
        "/healthz" => probe(state.agent.liveness()),
        "/readyz" => probe(state.agent.readiness()),
        "/debug/rejected" if !peer.is_loopback() => text(
            StatusCode::FORBIDDEN,
            "/debug/rejected names objects: it answers loopback peers only (kubectl port-forward)\n"
                .into(),
        ),
        "/debug/rejected" => debug_rejected(state).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz or /debug/rejected\n".into(),
        ),
    }
}

/// The rejected-objects report as JSON (what `classifier stats --json`
/// shows of it), read on a blocking thread.
async fn debug_rejected(state: Arc<State>) -> Response<Full<Bytes>> {
    let worker = state.clone();
    let report = match tokio::task::spawn_blocking(move || worker.exporter.rejected()).await {
        Ok(Some(report)) => report,
        Ok(None) => return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no rejected-objects report yet: the agent writes one after each policy it applies\n"
                .into(),
        ),
        Err(err) => {
            tracing::error!("metrics: reading the rejected-objects report failed: {err}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "read failed\n".into());
        }
    };
    match serde_json::to_vec(&report) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(err) => {
            tracing::error!("metrics: encoding the rejected-objects report: {err}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            )
        }
    }
}

/// One scrape, on a blocking thread, so that neither the probes nor other
/// connections wait for the map reads.
async fn scrape(state: Arc<State>) -> Response<Full<Bytes>> {
    let permit = match tokio::time::timeout(SCRAPE_WAIT, state.scrapes.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many scrapes at once, try again\n".into(),
            )
        }
    };
    let worker = state.clone();
    let rendered = tokio::task::spawn_blocking(move || worker.exporter.render()).await;
    drop(permit);
    match rendered {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            resp
        }
        Err(err) => {
            tracing::error!("metrics: scrape failed: {err}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n".into())
        }
    }
}

fn probe(result: Probe) -> Response<Full<Bytes>> {
    match result {
        Ok(body) => text(StatusCode::OK, body),
        Err(body) => text(StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::{Duration, Instant},
    };

    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    fn req(method: &str, path: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    fn serve(
        read: impl Fn() -> anyhow::Result<crate::stats::Snapshot> + Send + Sync + 'static,
    ) -> (SocketAddr, AgentMetrics) {
        let agent = AgentMetrics::new(Duration::from_secs(30));
        let exporter = Exporter::with_snapshots(read, agent.clone());
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        server.start(exporter, agent.clone()).unwrap();
        (addr, agent)
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let (addr, agent) = serve(|| Err(anyhow::anyhow!("no maps in a unit test")));

        let r = get(addr, &req("GET", "/healthz"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, &req("GET", "/readyz"));
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        agent.policy_applied(1, 0);
        let r = get(addr, &req("GET", "/readyz"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        let r = get(addr, &req("GET", "/metrics"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("\nclassifier_agent_ready 1\n"), "{r}");

        let r = get(addr, &req("HEAD", "/metrics"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            !r.contains("classifier_agent_ready"),
            "HEAD has no body: {r}"
        );
        let r = get(addr, &req("GET", "/nope"));
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = get(addr, &req("POST", "/metrics"));
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = get(addr, "garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");

        agent.stopping();
        let r = get(addr, &req("GET", "/healthz"));
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    }

    /// `/debug/rejected`: the report as JSON to a loopback peer, 503 before
    /// any report exists, 403 to any other peer (it names objects).
    #[test]
    fn serves_the_rejected_objects_report_to_loopback_peers_only() {
        use crate::datapath::status::{RejectedObject, RejectedReport};
        let report = RejectedReport {
            total: 1,
            by_kind: [("Pod".to_owned(), 1)].into(),
            objects: vec![RejectedObject {
                kind: "Pod".into(),
                namespace: Some("team-c".into()),
                name: "typo".into(),
                origin: "all.yaml#6".into(),
                reason: "no container port named \"mysql\"".into(),
            }],
        };
        let written = Arc::new(Mutex::new(None));
        let agent = AgentMetrics::new(Duration::from_secs(30));
        let reader = written.clone();
        let exporter = Exporter::with_snapshots(|| Err(anyhow::anyhow!("none")), agent.clone())
            .with_rejected(move || reader.lock().unwrap().clone());
        let state = Arc::new(State {
            exporter,
            agent: agent.clone(),
            scrapes: Semaphore::new(MAX_CONCURRENT_SCRAPES),
            limits: Limits::default(),
        });
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let exporter = Exporter::with_snapshots(|| Err(anyhow::anyhow!("none")), agent.clone());
        let reader = written.clone();
        server
            .start(
                exporter.with_rejected(move || reader.lock().unwrap().clone()),
                agent,
            )
            .unwrap();

        let r = get(addr, &req("GET", "/debug/rejected"));
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        *written.lock().unwrap() = Some(report.clone());
        let r = get(addr, &req("GET", "/debug/rejected"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: application/json"), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        let served: RejectedReport = serde_json::from_str(body).unwrap();
        assert_eq!(served, report);

        // The same request from an address that is not loopback.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let resp = runtime.block_on(respond(
            state,
            &Method::GET,
            "/debug/rejected",
            "192.0.2.1".parse().unwrap(),
        ));
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }

    /// A slow scrape (standing in for a full verdict table) neither delays
    /// the probes nor runs on the caller's thread.
    #[test]
    fn probes_do_not_wait_behind_a_slow_scrape() {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let release_rx = Mutex::new(release_rx);
        let (addr, _agent) = serve(move || {
            let _ = started_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            Err(anyhow::anyhow!("released"))
        });
        let scraper = std::thread::spawn(move || get(addr, &req("GET", "/metrics")));
        started_rx.recv().unwrap();
        // The scrape is now blocked inside the map read.
        let t = Instant::now();
        let r = get(addr, &req("GET", "/healthz"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        release_tx.send(()).unwrap();
        let r = scraper.join().unwrap();
        assert!(r.contains("classifier_kernel_maps_readable 0"), "{r}");
    }

    #[test]
    fn one_peer_cannot_take_every_connection() {
        let (addr, _agent) = serve(|| Err(anyhow::anyhow!("none")));
        // 127.0.0.2 fills its quota; 127.0.0.1 (the "kubelet") still gets in.
        let hog: Vec<TcpStream> = (0..MAX_PER_PEER + 20)
            .map(|_| connect_from("127.0.0.2", addr))
            .collect();
        let t = Instant::now();
        let r = get(addr, &req("GET", "/healthz"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // The connections over the quota are closed at once, the others
        // after the header timeout: all of them end.
        for mut s in hog {
            s.set_read_timeout(Some(HEADER_TIMEOUT * 3)).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf);
            assert!(
                matches!(n, Ok(0))
                    || n.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "server closed the idle connection"
            );
        }
    }

    /// Whether the server closed `s` (EOF or reset) within `wait`.
    fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// Limits under which an idle connection stays until the test ends.
    fn patient(max_connections: usize, max_per_peer: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(120),
            max_connections,
            max_per_peer,
        }
    }

    /// The kubelet shares its peer address with every node-local process:
    /// with 100 idle connections held from 127.0.0.1 on the probe
    /// listener (and the metrics port's per-peer quota full from there
    /// too), a probe from 127.0.0.1 is still answered, every time.
    #[test]
    fn probes_are_answered_whatever_the_kubelets_address_holds() {
        let agent = AgentMetrics::new(Duration::from_secs(30));
        let exporter = Exporter::with_snapshots(|| Err(anyhow::anyhow!("none")), agent.clone());
        let server = MetricsServer::bind_with_probes(
            Some("127.0.0.1:0".parse().unwrap()),
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let (metrics, probes) = (server.local_addr(), server.probe_addr().unwrap());
        server
            .start_with_limits(
                exporter,
                agent.clone(),
                patient(MAX_CONNECTIONS, MAX_PER_PEER),
            )
            .unwrap();
        agent.policy_applied(1, 0);
        let mut metrics_hog: Vec<TcpStream> = (0..MAX_PER_PEER)
            .map(|_| connect_from("127.0.0.1", metrics))
            .collect();
        // The metrics port's quota for that address is full: this is what
        // the probes suffered when they shared it.
        let mut refused = connect_from("127.0.0.1", metrics);
        assert!(closed_within(&mut refused, Duration::from_secs(10)));
        let mut hog: Vec<TcpStream> = (0..100)
            .map(|_| connect_from("127.0.0.1", probes))
            .collect();
        for _ in 0..20 {
            let r = get(probes, &req("GET", "/healthz"));
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            let r = get(probes, &req("GET", "/readyz"));
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            // Hold more while probing.
            hog.push(connect_from("127.0.0.1", probes));
        }
        // Only probes are answered there.
        let r = get(probes, &req("GET", "/metrics"));
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // Idle probe connections end (closed for room, or at the header
        // timeout); the metrics hog is still held (its timeout is long).
        for s in hog.iter_mut() {
            assert!(closed_within(s, PROBE_HEADER_TIMEOUT * 10));
        }
        metrics_hog[0].set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert!(
            metrics_hog[0]
                .read(&mut buf)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the metrics port's connections were still held"
        );
    }

    /// The metrics port's global cap: peers each within their own quota
    /// hold at most `max_connections` together; one more is closed at
    /// accept, and a slot frees when a connection ends. (Checked with a
    /// small cap and long header timeout; the default's values are the
    /// constants.)
    #[test]
    fn the_metrics_port_holds_at_most_its_global_cap() {
        const CAP: usize = 24;
        const PER_PEER: usize = 4;
        let agent = AgentMetrics::new(Duration::from_secs(30));
        let exporter = Exporter::with_snapshots(|| Err(anyhow::anyhow!("none")), agent.clone());
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        server
            .start_with_limits(exporter, agent, patient(CAP, PER_PEER))
            .unwrap();
        let mut held = Vec::new();
        for p in 0..CAP / PER_PEER {
            let src = format!("127.0.1.{}", p + 1);
            for _ in 0..PER_PEER {
                held.push(connect_from(&src, addr));
            }
        }
        // Every one was accepted and is served: a request on the last one works.
        let last = held.last_mut().unwrap();
        last.write_all(req("GET", "/healthz").as_bytes()).unwrap();
        let mut out = String::new();
        last.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = last.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // `Connection: close`: that one ended. Wait until its slot is
        // back (a new peer gets in and is served), then the cap is full
        // again and a fresh peer is closed at accept.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = connect_from("127.0.2.1", addr);
            s.write_all(req("GET", "/healthz").as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot never came back");
        }
        held.pop();
        held.push(connect_from("127.0.2.2", addr));
        // Now CAP are held again (the last one's slot is taken by 127.0.2.2
        // once accepted); a fresh peer, within its own quota, is refused.
        let mut over = connect_from("127.0.3.1", addr);
        assert!(closed_within(&mut over, Duration::from_secs(10)));
        // The held ones are all still open.
        for s in &mut held {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 1];
            assert!(s
                .read(&mut buf)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
        }
    }

    /// A TCP connection to `addr` from `src` (any port).
    fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt.block_on(sock.connect(addr)).unwrap();
        let std = stream.into_std().unwrap();
        std.set_nonblocking(false).unwrap();
        std
    }
}

//! The HTTP side: hyper 1.x, HTTP/1 only, on the agent's current-thread
//! tokio runtime. No extra thread is started (the agent drops its
//! capabilities per thread, and keeps exactly one): connections are tasks
//! on the same runtime, and a scrape encodes on it.
//!
//! Kept robust against slow or hostile clients, since the port may be
//! reachable from the pod network: a request's headers must arrive within
//! [`HEADER_TIMEOUT`], a connection lives at most [`CONNECTION_LIFETIME`],
//! at most [`MAX_CONNECTIONS`] are served at once (more are closed at
//! accept), and only `GET`/`HEAD` of three fixed paths are answered.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
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
use tokio::net::TcpListener;

use super::{AgentMetrics, Exporter, Probe, CONTENT_TYPE};

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
pub const MAX_CONNECTIONS: usize = 16;

/// A bound, not yet serving, metrics listener: bind early (before the
/// agent touches the kernel, so a taken port fails fast) and
/// [`start`](Self::start) once the agent is ready to be scraped.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on a task of the current
    /// runtime until the runtime stops.
    pub fn start(self, exporter: Exporter, agent: AgentMetrics) -> tokio::task::JoinHandle<()> {
        tracing::info!(addr = %self.addr, "serving /metrics, /healthz and /readyz");
        let state = Arc::new(State { exporter, agent });
        tokio::spawn(accept_loop(self.listener, state))
    }
}

struct State {
    exporter: Exporter,
    agent: AgentMetrics,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("metrics: too many connections, closing a new one");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = Active(active.clone());
        let state = state.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!("metrics: connection: {err}"),
                Err(_) => tracing::debug!("metrics: connection closed after its lifetime"),
            }
        });
    }
}

/// Counts a live connection until dropped.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            let body = state.exporter.render();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            resp
        }
        "/healthz" => probe(state.agent.liveness()),
        "/readyz" => probe(state.agent.readiness()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    fn req(method: &str, path: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let agent = AgentMetrics::new(Duration::from_secs(30));
            let exporter = Exporter::with_snapshots(
                || Err(anyhow::anyhow!("no maps in a unit test")),
                agent.clone(),
            );
            let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let addr = server.local_addr();
            server.start(exporter, agent.clone());

            let r = get(addr, &req("GET", "/healthz")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            let r = get(addr, &req("GET", "/readyz")).await;
            assert!(r.starts_with("HTTP/1.1 503"), "{r}");
            agent.policy_applied(1, 0);
            let r = get(addr, &req("GET", "/readyz")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");

            let r = get(addr, &req("GET", "/metrics")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
            assert!(r.contains("\nclassifier_agent_ready 1\n"), "{r}");

            let r = get(addr, &req("HEAD", "/metrics")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(
                !r.contains("classifier_agent_ready"),
                "HEAD has no body: {r}"
            );
            let r = get(addr, &req("GET", "/nope")).await;
            assert!(r.starts_with("HTTP/1.1 404"), "{r}");
            let r = get(addr, &req("POST", "/metrics")).await;
            assert!(r.starts_with("HTTP/1.1 405"), "{r}");
            let r = get(addr, "garbage\r\n\r\n").await;
            assert!(r.starts_with("HTTP/1.1 400") || r.is_empty(), "{r}");

            agent.stopping();
            let r = get(addr, &req("GET", "/healthz")).await;
            assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        });
    }
}

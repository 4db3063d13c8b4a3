//! The kubelet's HTTP probes: GET on the pod IP at the manifest's
//! initialDelaySeconds, periodSeconds, timeoutSeconds and failureThreshold;
//! a status from 200 to 399 is a success. Every result is recorded, so the
//! run can fail on any liveness failure and on a readiness failure after
//! the first success.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::{
    api::core::v1::{Container, Probe as ProbeSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinHandle,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Liveness,
    Readiness,
}

#[derive(Default)]
pub struct Record {
    pub first_ready: Option<Instant>,
    /// Failures that fail the run: (kind, what happened).
    pub failures: Vec<String>,
    pub probes: u64,
}

pub struct Prober {
    pub record: Arc<Mutex<Record>>,
    tasks: Vec<JoinHandle<()>>,
}

struct Http {
    addr: SocketAddr,
    path: String,
    period: Duration,
    timeout: Duration,
    initial_delay: Duration,
}

fn http(ip: &str, c: &Container, p: &ProbeSpec) -> Result<Http> {
    let get = p
        .http_get
        .as_ref()
        .context("only httpGet probes are run here")?;
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name))
            .map(|port| port.container_port)
            .with_context(|| {
                format!(
                    "probe port {name:?} is not a named port of container {}",
                    c.name
                )
            })?,
    };
    Ok(Http {
        addr: format!("{ip}:{port}").parse()?,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        period: Duration::from_secs(p.period_seconds.unwrap_or(10) as u64),
        timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(1) as u64),
        initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0) as u64),
    })
}

impl Prober {
    /// Starts the container's liveness and readiness probes.
    pub fn start(ip: &str, c: &Container, label: &str) -> Result<Prober> {
        let record = Arc::new(Mutex::new(Record::default()));
        let mut tasks = Vec::new();
        for (kind, spec) in [
            (Kind::Liveness, &c.liveness_probe),
            (Kind::Readiness, &c.readiness_probe),
        ] {
            let Some(spec) = spec else { continue };
            let probe = http(ip, c, spec)?;
            let record = record.clone();
            let label = format!("{label} {kind:?}");
            tasks.push(tokio::spawn(async move {
                run(kind, probe, record, label).await
            }));
        }
        Ok(Prober { record, tasks })
    }

    /// Waits for the first readiness success.
    pub async fn wait_ready(&self, within: Duration) -> Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = self.record.lock().unwrap().first_ready {
                return Ok(t);
            }
            self.check()?;
            if Instant::now() > deadline {
                bail!("not ready within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if a probe failed in a way that fails the run.
    pub fn check(&self) -> Result<()> {
        let r = self.record.lock().unwrap();
        if !r.failures.is_empty() {
            bail!("probe failures: {}", r.failures.join("; "));
        }
        Ok(())
    }

    /// Stops probing (before the container is stopped, as the kubelet
    /// does when it kills a container) and reports failures.
    pub fn stop(self) -> Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        self.check()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run(kind: Kind, p: Http, record: Arc<Mutex<Record>>, label: String) {
    tokio::time::sleep(p.initial_delay).await;
    let mut next = tokio::time::Instant::now();
    loop {
        let result = tokio::time::timeout(p.timeout, get(p.addr, &p.path)).await;
        let outcome = match result {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP {code}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", p.timeout)),
        };
        {
            let mut r = record.lock().unwrap();
            r.probes += 1;
            match (kind, outcome) {
                (Kind::Readiness, Ok(())) => {
                    r.first_ready.get_or_insert_with(Instant::now);
                }
                (Kind::Liveness, Ok(())) => {}
                (Kind::Liveness, Err(e)) => r
                    .failures
                    .push(format!("{label} GET {}{}: {e}", p.addr, p.path)),
                (Kind::Readiness, Err(e)) if r.first_ready.is_some() => r.failures.push(format!(
                    "{label} GET {}{} after the first success: {e}",
                    p.addr, p.path
                )),
                (Kind::Readiness, Err(_)) => {}
            }
        }
        next += p.period;
        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("not an HTTP answer: {:?}", head.lines().next()))
        })
}

//! `classifier agent --metrics-addr ADDR`: Prometheus `/metrics`, `/healthz`
//! and `/readyz` over plain HTTP/1.
//!
//! ```text
//! AgentMetrics  the agent's own state (policy generation and rules, apply and
//!               sync errors, last apply/sync, readiness, liveness); cloned into
//!               whatever updates it, read at scrape time
//! collect       two prometheus-client collectors: the kernel counters (read
//!               from the pinned maps at every scrape, exactly what
//!               `classifier stats` reads) and AgentMetrics
//! server        hyper 1.x on the agent's current-thread tokio runtime
//! ```
//!
//! Only counters and gauges leave the node: no address or port of any
//! individual connection, and no destination ports either (the top-ports
//! list of `classifier stats` is not exported).

mod collect;
mod server;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

pub use collect::{Exporter, CONTENT_TYPE};
pub use server::MetricsServer;

/// The agent's side of the metrics: a cheap, cloneable handle (an `Arc`
/// around atomics) that the agent loop, the policy code and, later, the
/// Kubernetes sync update, and that `/metrics`, `/healthz` and `/readyz`
/// read.
#[derive(Clone, Debug)]
pub struct AgentMetrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `/healthz` fails when the agent loop has not called
    /// [`AgentMetrics::heartbeat`] for this long.
    liveness_window: Duration,
    policy_generation: AtomicU64,
    policy_rules: AtomicU64,
    apply_errors: AtomicU64,
    /// Policies written in full (a slot switch) and changes written in
    /// place (an incremental update of the live document policy).
    full_applies: AtomicU64,
    incremental_applies: AtomicU64,
    sync_errors: AtomicU64,
    ready: AtomicBool,
    stopping: AtomicBool,
    last_apply: Mutex<Option<SystemTime>>,
    last_sync: Mutex<Option<SystemTime>>,
    last_heartbeat: Mutex<Instant>,
    /// `None` without `--kubernetes`.
    kubernetes_connected: Mutex<Option<bool>>,
    /// Whether the programs are still attached (checked by `/readyz`).
    attached: CheckSlot,
    /// The objects the current policy skipped, by kind.
    rejected_by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

#[derive(Default)]
struct CheckSlot(Mutex<Option<AttachedCheck>>);

impl std::fmt::Debug for CheckSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckSlot")
    }
}

/// Says whether the programs are still attached: `Err(why)` when not.
pub type AttachedCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What `/healthz` and `/readyz` answer: `Ok(text)` is 200, `Err(text)` 503.
pub type Probe = Result<String, String>;

impl AgentMetrics {
    /// `liveness_window`: how long the agent loop may go without a
    /// [`heartbeat`](Self::heartbeat) before `/healthz` fails. Make it
    /// several times the loop's tick.
    pub fn new(liveness_window: Duration) -> Self {
        Self(Arc::new(Inner {
            liveness_window,
            policy_generation: AtomicU64::new(0),
            policy_rules: AtomicU64::new(0),
            apply_errors: AtomicU64::new(0),
            full_applies: AtomicU64::new(0),
            incremental_applies: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_apply: Mutex::new(None),
            last_sync: Mutex::new(None),
            last_heartbeat: Mutex::new(Instant::now()),
            kubernetes_connected: Mutex::new(None),
            attached: CheckSlot::default(),
            rejected_by_kind: Mutex::default(),
        }))
    }

    /// A policy was written to the maps (this agent runs after the programs
    /// are attached or adopted, so this also makes the agent ready).
    pub fn policy_applied(&self, generation: u32, rules: usize) {
        let i = &self.0;
        i.policy_generation
            .store(u64::from(generation), Ordering::Relaxed);
        i.policy_rules.store(rules as u64, Ordering::Relaxed);
        *lock(&i.last_apply) = Some(SystemTime::now());
        i.ready.store(true, Ordering::Release);
    }

    /// How the policy just applied reached the maps: written in place, key
    /// by key (`incremental`), or compiled whole and switched to.
    pub fn policy_written(&self, incremental: bool) {
        let counter = if incremental {
            &self.0.incremental_applies
        } else {
            &self.0.full_applies
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The objects the policy just applied skipped, by kind.
    pub fn set_rejected(&self, by_kind: &std::collections::BTreeMap<String, u64>) {
        *lock(&self.0.rejected_by_kind) = by_kind.clone();
    }

    /// A policy could not be loaded, compiled or written; the previous one
    /// stays active.
    pub fn policy_apply_failed(&self) {
        self.0.apply_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync with the policy's source (the Kubernetes API) succeeded.
    pub fn sync_succeeded(&self) {
        *lock(&self.0.last_sync) = Some(SystemTime::now());
    }

    /// Whether the Kubernetes watch is connected (call it only with
    /// `--kubernetes`: without, no gauge is exported).
    pub fn set_kubernetes_connected(&self, connected: bool) {
        *lock(&self.0.kubernetes_connected) = Some(connected);
    }

    /// A sync with the policy's source failed (it will be retried).
    pub fn sync_failed(&self) {
        self.0.sync_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets readiness explicitly (normally [`policy_applied`](Self::policy_applied) does).
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// From now on `/readyz` also fails when `check` says the programs are
    /// no longer attached.
    pub fn set_attached_check(&self, check: AttachedCheck) {
        *lock(&self.0.attached.0) = Some(check);
    }

    /// The agent loop is alive: call it on every tick.
    pub fn heartbeat(&self) {
        *lock(&self.0.last_heartbeat) = Instant::now();
    }

    /// The agent is shutting down: `/healthz` and `/readyz` fail from now on.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Release);
        self.0.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// `/healthz`: the agent loop runs.
    pub fn liveness(&self) -> Probe {
        if self.0.stopping.load(Ordering::Acquire) {
            return Err("stopping\n".into());
        }
        let age = lock(&self.0.last_heartbeat).elapsed();
        if age > self.0.liveness_window {
            return Err(format!(
                "agent loop stalled: no heartbeat for {:.1} s\n",
                age.as_secs_f64()
            ));
        }
        Ok("ok\n".into())
    }

    /// `/readyz`: programs attached or adopted (and still attached) and a
    /// policy applied by this agent.
    pub fn readiness(&self) -> Probe {
        let check = lock(&self.0.attached.0).clone();
        if let Some(Err(why)) = check.map(|check| check()) {
            return Err(format!("not ready: {why}\n"));
        }
        if self.is_ready() {
            Ok(format!(
                "ready: policy generation {}\n",
                self.0.policy_generation.load(Ordering::Relaxed)
            ))
        } else if self.0.stopping.load(Ordering::Acquire) {
            Err("stopping\n".into())
        } else {
            Err("not ready: no policy applied by this agent yet\n".into())
        }
    }

    fn values(&self) -> AgentValues {
        let i = &self.0;
        AgentValues {
            policy_generation: i.policy_generation.load(Ordering::Relaxed),
            policy_rules: i.policy_rules.load(Ordering::Relaxed),
            apply_errors: i.apply_errors.load(Ordering::Relaxed),
            full_applies: i.full_applies.load(Ordering::Relaxed),
            incremental_applies: i.incremental_applies.load(Ordering::Relaxed),
            sync_errors: i.sync_errors.load(Ordering::Relaxed),
            ready: self.is_ready(),
            last_apply: lock(&i.last_apply).map(unix_seconds),
            last_sync: lock(&i.last_sync).map(unix_seconds),
            kubernetes_connected: *lock(&i.kubernetes_connected),
            rejected_by_kind: lock(&i.rejected_by_kind).clone(),
        }
    }
}

/// A scrape-time copy of [`AgentMetrics`].
struct AgentValues {
    policy_generation: u64,
    policy_rules: u64,
    apply_errors: u64,
    full_applies: u64,
    incremental_applies: u64,
    sync_errors: u64,
    ready: bool,
    /// Unix time, seconds.
    last_apply: Option<f64>,
    last_sync: Option<f64>,
    kubernetes_connected: Option<bool>,
    rejected_by_kind: std::collections::BTreeMap<String, u64>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The values behind these locks are plain times and flags, so a panic while one
/// was held cannot have left it half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_the_first_apply_and_not_while_stopping() {
        let m = AgentMetrics::new(Duration::from_secs(30));
        assert!(m.readiness().is_err());
        assert!(m.liveness().is_ok());
        m.policy_apply_failed();
        assert!(m.readiness().is_err());
        m.policy_applied(3, 2);
        assert_eq!(m.readiness(), Ok("ready: policy generation 3\n".into()));
        m.stopping();
        assert!(m.readiness().is_err());
        assert!(m.liveness().is_err());
    }

    #[test]
    fn liveness_fails_when_the_loop_stalls() {
        let m = AgentMetrics::new(Duration::from_millis(20));
        assert!(m.liveness().is_ok());
        std::thread::sleep(Duration::from_millis(40));
        assert!(m.liveness().unwrap_err().contains("stalled"));
        m.heartbeat();
        assert!(m.liveness().is_ok());
    }
}

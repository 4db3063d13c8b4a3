//! `classifier agent`: install or adopt the kernel side, keep the policy in
//! its maps current, and get out of the way. Stopping the agent leaves the
//! programs attached and the last policy active; `--uninstall` removes them.

mod applier;
mod learning;
mod pod_watch;
mod pods;
mod policy_source;
pub mod preflight;
pub mod privileges;
pub mod seccomp;

use std::{path::PathBuf, time::Duration};

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::datapath::status::{unix_now, StatusMap};
use crate::datapath::{self, cgroup, loader::InstallOptions, Installed, PinDir};
use crate::metrics;
use crate::sources::{
    kubernetes::{self, KubeChanges, KubeUpdate, WatchOptions},
    Options,
};
use applier::Applier;
use classifier_common::{AgentStatus, AGENT_FLAG_KUBERNETES, AGENT_FLAG_KUBERNETES_CONNECTED};
pub use policy_source::{Loaded, PolicySource};

pub struct AgentOptions {
    pub cgroup: Option<PathBuf>,
    pub pins: PinDir,
    pub policy: Option<PathBuf>,
    /// Apply policy files that non-root users can change.
    pub allow_untrusted_policy: bool,
    pub watch_interval: Duration,
    pub verdict_capacity: Option<u32>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve only `/healthz` and `/readyz` on this address (never refused).
    pub probe_addr: Option<std::net::SocketAddr>,
    /// Watch Linkerd's resources through the Kubernetes API.
    pub kubernetes: bool,
    /// Where that watch reads them: the objects, or a central compiler's
    /// slices.
    pub kubernetes_source: kubernetes::Source,
    /// EgressNetworks in this namespace apply to every client.
    pub egress_namespace: String,
    /// Trie entries one namespace's objects may take (see
    /// `classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET`).
    pub namespace_entry_budget: u64,
    /// Processes in no known pod cgroup learn into, and read, the node
    /// scope (else they neither learn nor read).
    pub learn_outside_pods: bool,
}

/// The agent's stages, in order: preflight, install (or adopt), drop
/// privileges, first apply, event loop.
pub async fn run(opts: AgentOptions) -> Result<()> {
    preflight::check()?;
    let agent_metrics =
        metrics::AgentMetrics::new((opts.watch_interval * 10).max(Duration::from_secs(30)));
    // Bound before the kernel is touched, so a taken port fails fast.
    let metrics_server = match (opts.metrics_addr, opts.probe_addr) {
        (None, None) => None,
        (metrics, probes) => Some(metrics::MetricsServer::bind_with_probes(metrics, probes)?),
    };
    let linkerd = Options {
        egress_global_namespace: opts.egress_namespace.clone(),
        namespace_entry_budget: opts.namespace_entry_budget,
    };
    let mut source = PolicySource::new(
        opts.policy.clone(),
        opts.allow_untrusted_policy,
        linkerd.clone(),
    );
    // Parse before touching the kernel: a bad file on first start should not
    // leave half an install behind.
    let first = source.load();

    let (cgroup, installed, _pin_lock) = install(&opts)?;
    let applier = Applier::open(
        &opts.pins,
        cgroup.clone(),
        opts.kubernetes,
        opts.learn_outside_pods,
        linkerd,
    )?;
    let port_counts = datapath::port_counts::PortCounts::open(&opts.pins)?;
    let status = Status::new(
        StatusMap::open(&opts.pins)?,
        opts.pins.clone(),
        opts.kubernetes,
    );
    drop_privileges()?;
    watch_attachment(&opts.pins, &cgroup, &agent_metrics)?;
    // After the drop: the server's threads inherit only CAP_BPF.
    if let Some(server) = metrics_server {
        let exporter = metrics::Exporter::new(opts.pins.clone(), agent_metrics.clone());
        server.start(exporter, agent_metrics.clone())?;
    }
    let mut agent = Agent {
        applier,
        port_counts,
        source,
        status,
        metrics: agent_metrics,
    };
    agent.first_apply(&opts, &installed, first)?;
    agent.event_loop(&opts, &cgroup).await?;
    agent.metrics.stopping();
    tracing::info!(
        pins = %opts.pins.root().display(),
        "stopping; programs stay attached with the last policy (`classifier agent --uninstall` removes them)"
    );
    Ok(())
}

/// Attaches the programs, or adopts those a previous agent left pinned:
/// the cgroup attached to, how, and the pin directory's lock (held for
/// the agent's life).
fn install(opts: &AgentOptions) -> Result<(PathBuf, Installed, datapath::loader::PinLock)> {
    let cgroup = match &opts.cgroup {
        Some(path) => match cgroup::attach_point(path)? {
            cgroup::AttachPoint::AsGiven(path) => path,
            cgroup::AttachPoint::Below(v2) => {
                tracing::info!(
                    given = %path.display(),
                    using = %v2.display(),
                    "--cgroup is not cgroup v2 (the v1 side of a hybrid cgroup layout); \
                     attaching to the cgroup v2 hierarchy mounted below it"
                );
                v2
            }
        },
        None => cgroup::cgroup2_root()?,
    };
    preflight::check_pin_dir(&opts.pins)?;
    let (installed, pin_lock) = datapath::install_or_adopt(&InstallOptions {
        pins: &opts.pins,
        cgroup: &cgroup,
        verdict_capacity: opts.verdict_capacity,
    })
    .map_err(seccomp::annotate)?;
    match installed {
        Installed::Fresh => {
            tracing::info!(cgroup = %cgroup.display(), pins = %opts.pins.root().display(), "attached programs")
        }
        Installed::Adopted => {
            tracing::info!(pins = %opts.pins.root().display(), "adopted programs attached by a previous agent; no detach")
        }
        Installed::Replaced { from } => {
            tracing::info!(
                pins = %opts.pins.root().display(),
                from = format!("{from:016x}"),
                to = format!("{:016x}", datapath::object::build_hash()),
                "adopted a previous agent's maps and links and replaced its programs in place (BPF_LINK_UPDATE); no detach"
            )
        }
    }
    Ok((cgroup, installed, pin_lock))
}

/// Everything that needs more than CAP_BPF is done. A drop that fails
/// stops the agent: it never runs with more than it says.
fn drop_privileges() -> Result<()> {
    let dropped = privileges::keep_only(&[privileges::CAP_BPF])
        .context("dropping capabilities after attaching")?;
    if dropped.bounding_kept.is_empty() {
        tracing::info!("dropped every capability but CAP_BPF");
    } else {
        tracing::info!(
            bounding_set_keeps = %dropped.bounding_kept.join(","),
            "dropped every capability but CAP_BPF from the effective and permitted sets; \
             the bounding set keeps what it cannot drop without CAP_SETPCAP, and no_new_privs \
             is set so no exec can regain it"
        );
    }
    Ok(())
}

/// `/readyz` checks that the links are still attached to `cgroup`.
fn watch_attachment(
    pins: &PinDir,
    cgroup: &std::path::Path,
    agent_metrics: &metrics::AgentMetrics,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let cgroup_id = std::fs::metadata(cgroup)
        .with_context(|| format!("opening cgroup {}", cgroup.display()))?
        .ino();
    let pins = pins.clone();
    agent_metrics.set_attached_check(std::sync::Arc::new(move || {
        datapath::link::all_attached(&pins, cgroup_id)
    }));
    Ok(())
}

/// What the running agent keeps: the map writer, where the policy comes
/// from, and what it reports.
struct Agent {
    applier: Applier,
    /// Keeps the per-port connect counts current (least used ports aged out).
    port_counts: datapath::port_counts::PortCounts,
    source: PolicySource,
    status: Status,
    metrics: metrics::AgentMetrics,
}

/// The Kubernetes watch, its new-pod channel taken apart from it so the
/// event loop can wait on both.
struct KubeWatch {
    updates: tokio::sync::mpsc::Receiver<KubeUpdate>,
    status: Arc<kubernetes::SyncStatus>,
    /// Kept: the watch task's handle.
    _task: tokio::task::JoinHandle<Result<()>>,
}

type NewPods = tokio::sync::mpsc::Receiver<(String, String)>;

impl Agent {
    /// Applies the policy loaded before install, or keeps the adopted one.
    fn first_apply(
        &mut self,
        opts: &AgentOptions,
        installed: &Installed,
        first: Result<Loaded>,
    ) -> Result<()> {
        let active = self.applier.active_generation();
        // A restarted agent that takes its policy from the cluster keeps the
        // adopted one (built from the cluster by its predecessor) until its own
        // first snapshot, rather than falling back to the file or built-in
        // policy in between, or for as long as the API server is away.
        let keep_adopted = opts.kubernetes
            && matches!(installed, Installed::Adopted | Installed::Replaced { .. })
            && active > 0;
        match first {
            Ok(_) if keep_adopted => {
                tracing::info!("keeping the adopted policy (generation {active}) until the first Kubernetes snapshot");
                self.metrics.set_ready(true);
            }
            Ok(loaded) => {
                let (applied, rules) = apply_loaded(&mut self.applier, &mut self.source, loaded)?;
                // Before ready: whoever waits for /readyz finds the report.
                report_rejected(&self.source, &self.metrics, &self.status);
                self.metrics.policy_applied(applied.generation, rules);
                self.metrics.policy_written(applied.incremental);
                self.status.applied();
            }
            Err(err) => {
                self.metrics.policy_apply_failed();
                self.status.failed();
                let active = self.applier.active_generation();
                if active == 0 {
                    return Err(err.context("no policy is active yet, so the agent cannot start"));
                }
                tracing::error!("{err:#}; keeping the active policy (generation {active})");
            }
        }
        Ok(())
    }

    /// Starts the Kubernetes watch (with `--kubernetes`): until its first
    /// complete snapshot the policy above stays in force, and the watcher
    /// keeps the last snapshot if the API goes away.
    async fn start_kubernetes(
        &self,
        opts: &AgentOptions,
    ) -> Result<(Option<KubeWatch>, Option<NewPods>)> {
        if !opts.kubernetes {
            return Ok((None, None));
        }
        let KubeChanges {
            updates,
            status,
            new_pods,
            task,
        } = kubernetes::spawn_changes(
            kubernetes::client().await?,
            WatchOptions {
                source: opts.kubernetes_source.clone(),
                ..WatchOptions::default()
            },
        );
        self.metrics.set_kubernetes_connected(false);
        let watch = KubeWatch {
            updates,
            status,
            _task: task,
        };
        Ok((Some(watch), Some(new_pods)))
    }

    /// Pod cgroups: watched (inotify) so a new pod is registered as its
    /// cgroup appears; a slow rescan behind it catches what a watch misses.
    /// Without a watch, the old poll on every tick.
    fn start_pod_watch(
        &mut self,
        cgroup: &std::path::Path,
        watch_interval: Duration,
    ) -> Option<pod_watch::PodWatcher> {
        let pod_watch = match pod_watch::PodWatcher::new(cgroup) {
            Ok(watcher) => {
                tracing::info!(
                    watches = watcher.watches(),
                    "watching pod cgroups (inotify)"
                );
                Some(watcher)
            }
            Err(err) => {
                tracing::warn!(
                    "cannot watch pod cgroups ({err:#}); polling for them every {watch_interval:?} instead"
                );
                None
            }
        };
        // Pods that appeared between the first policy's scan and the watch.
        if let Err(err) = self.applier.refresh_pods() {
            tracing::warn!("registering pod cgroups failed: {err:#}");
        }
        pod_watch
    }

    /// Until SIGTERM or SIGINT: pod cgroups, new pods, Kubernetes snapshots
    /// and the watch tick (policy file changes, status, heartbeat).
    async fn event_loop(&mut self, opts: &AgentOptions, cgroup: &std::path::Path) -> Result<()> {
        let (mut kube, mut new_pods) = self.start_kubernetes(opts).await?;
        let mut sync_errors_seen = 0;
        let mut pod_watch = self.start_pod_watch(cgroup, opts.watch_interval);
        let mut rescan = tokio::time::interval(POD_RESCAN_INTERVAL.max(opts.watch_interval));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await;

        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(opts.watch_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                changes = next_pod_changes(&mut pod_watch) => {
                    self.pod_changes(changes, &mut pod_watch, opts.watch_interval);
                }
                _ = rescan.tick() => {
                    if let Some(watcher) = &mut pod_watch {
                        if let Err(err) = watcher.rescan() {
                            tracing::warn!("rescanning the pod cgroup watches: {err:#}");
                        }
                        if let Err(err) = self.applier.refresh_pods() {
                            tracing::warn!("registering pod cgroups failed: {err:#}");
                        }
                    }
                }
                pod = next_new_pod(&mut new_pods) => match pod {
                    Some((uid, namespace)) => {
                        if let Err(err) = self.applier.pod_known(&uid, &namespace) {
                            tracing::warn!("registering the cgroup of pod {uid}: {err:#}");
                        }
                    }
                    // The watch ended; `next_snapshot` says so.
                    None => new_pods = None,
                },
                updates = next_updates(&mut kube) => {
                    self.metrics.sync_succeeded();
                    for update in updates? {
                        let loaded = self.source.kubernetes_update(update);
                        apply_reloaded(&mut self.applier, &mut self.source, loaded, &self.metrics, &mut self.status);
                    }
                }
                _ = tick.tick() => {
                    self.tick(kube.as_ref(), &mut sync_errors_seen, pod_watch.is_none());
                }
            }
        }
        Ok(())
    }

    fn pod_changes(
        &mut self,
        changes: Result<Vec<pod_watch::PodChange>>,
        pod_watch: &mut Option<pod_watch::PodWatcher>,
        watch_interval: Duration,
    ) {
        match changes {
            Ok(changes) => {
                if let Some(watcher) = pod_watch {
                    pods_changed(&mut self.applier, watcher, changes);
                }
            }
            Err(err) => {
                tracing::warn!(
                    "the pod cgroup watch failed ({err:#}); polling for pod cgroups every {watch_interval:?} instead"
                );
                *pod_watch = None;
            }
        }
    }

    /// Every watch interval: heartbeat, the watch's health, status, the
    /// pod poll without a watch, and a changed policy file.
    fn tick(&mut self, kube: Option<&KubeWatch>, sync_errors_seen: &mut u64, poll_pods: bool) {
        self.metrics.heartbeat();
        if let Some(sync) = kube {
            let errors = sync.status.errors();
            for _ in *sync_errors_seen..errors {
                self.metrics.sync_failed();
            }
            *sync_errors_seen = errors;
            self.metrics
                .set_kubernetes_connected(sync.status.connected());
            self.status.synced(&sync.status);
        }
        self.status.publish();
        self.applier.tick();
        match self.port_counts.age() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "aged the per-port connect counts"),
            Err(err) => tracing::warn!("ageing the per-port connect counts: {err:#}"),
        }
        if poll_pods {
            if let Err(err) = self.applier.refresh_pods() {
                tracing::warn!("registering pod cgroups failed: {err:#}");
            }
        }
        let current = self.applier.live().map(|live| live.documents());
        let Some(loaded) = self.source.reload_if_changed(current) else {
            return;
        };
        apply_reloaded(
            &mut self.applier,
            &mut self.source,
            loaded,
            &self.metrics,
            &mut self.status,
        );
        if let Some(err) = self.source.take_read_error() {
            self.metrics.policy_apply_failed();
            self.status.failed();
            tracing::error!("{err:#}; that file's documents stay as they were, the other files' changes applied");
        }
    }
}

/// Applies what the source loaded: a whole policy, or changes of the
/// document set in force. Returns what was written and the rule count.
fn apply_loaded(
    applier: &mut Applier,
    source: &mut PolicySource,
    loaded: Loaded,
) -> Result<(datapath::policy_maps::Applied, usize)> {
    if let Loaded::Snapshot(set) = &loaded {
        source.set_documents(set.len());
    }
    let describe = source.describe();
    let applied = match loaded {
        Loaded::Policy(mut policy) => {
            let applied = applier.apply(&mut policy, &describe)?;
            return Ok((applied, policy.rules.len()));
        }
        Loaded::Changes(changes) => applier.apply_changes(changes, &describe),
        Loaded::Snapshot(set) => applier.apply_snapshot(&set, &describe),
    };
    // The live policy's documents and rejections, also after a failed
    // update (its documents are the new ones).
    let live = applier
        .live()
        .expect("a document update leaves a live policy");
    source.set_documents(live.documents().len());
    source.set_live_rejected(live.rejected());
    let rules = live.rule_count() as usize;
    Ok((applied?, rules))
}

/// Applies a reloaded policy (file change or Kubernetes update), or
/// reports why not: the policy in force stays either way.
fn apply_reloaded(
    applier: &mut Applier,
    source: &mut PolicySource,
    loaded: Result<Loaded>,
    agent_metrics: &metrics::AgentMetrics,
    status: &mut Status,
) {
    match loaded.and_then(|loaded| apply_loaded(applier, source, loaded)) {
        Ok((applied, rules)) => {
            if source.take_rejected_changed() {
                report_rejected(source, agent_metrics, status);
            }
            agent_metrics.policy_applied(applied.generation, rules);
            agent_metrics.policy_written(applied.incremental);
            status.applied();
        }
        Err(err) => {
            agent_metrics.policy_apply_failed();
            status.failed();
            let active = applier.active_generation();
            tracing::error!("{err:#}; the previous policy (generation {active}) stays active");
        }
    }
}

/// The objects the policy just applied skipped: counts by kind for
/// `/metrics`, every one for `classifier stats`.
fn report_rejected(source: &PolicySource, agent_metrics: &metrics::AgentMetrics, status: &Status) {
    let report = source.rejected();
    agent_metrics.set_rejected(&report.by_kind);
    if let Err(err) = report.write(&status.pins) {
        tracing::warn!("writing the rejected-objects report for `classifier stats`: {err:#}");
    }
}

/// The agent's status as `classifier stats` shows it (see `StatusMap`).
struct Status {
    map: StatusMap,
    /// Where the rejected-objects report goes (see `RejectedReport`).
    pins: PinDir,
    value: AgentStatus,
}

impl Status {
    fn new(map: StatusMap, pins: PinDir, kubernetes: bool) -> Self {
        let flags = if kubernetes { AGENT_FLAG_KUBERNETES } else { 0 };
        let mut status = Self {
            map,
            pins,
            value: AgentStatus {
                flags,
                pid: std::process::id(),
                ..AgentStatus::default()
            },
        };
        status.publish();
        status
    }

    fn applied(&mut self) {
        self.value.last_apply_unix = unix_now();
        self.publish();
    }

    fn failed(&mut self) {
        self.value.policy_errors += 1;
        self.publish();
    }

    fn synced(&mut self, sync: &kubernetes::SyncStatus) {
        self.value.sync_errors = sync.errors();
        if let Some(age) = sync.last_success_age() {
            self.value.last_sync_unix = unix_now().saturating_sub(age.as_secs());
        }
        self.value.flags = AGENT_FLAG_KUBERNETES
            | if sync.connected() {
                AGENT_FLAG_KUBERNETES_CONNECTED
            } else {
                0
            };
    }

    fn publish(&mut self) {
        self.value.updated_unix = unix_now();
        if let Err(err) = self.map.write(&self.value) {
            tracing::debug!("writing the agent status map: {err:#}");
        }
    }
}

/// How often the pod cgroup tree is scanned in full behind its inotify
/// watch (a safety net: the watch registers new pods within milliseconds).
const POD_RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// The next pod cgroup changes, or never without a watch.
async fn next_pod_changes(
    watcher: &mut Option<pod_watch::PodWatcher>,
) -> Result<Vec<pod_watch::PodChange>> {
    match watcher {
        Some(watcher) => watcher.changes().await,
        None => std::future::pending().await,
    }
}

fn pods_changed(
    applier: &mut Applier,
    watcher: &mut pod_watch::PodWatcher,
    changes: Vec<pod_watch::PodChange>,
) {
    for change in changes {
        let done = match &change {
            pod_watch::PodChange::Appeared(pod) => applier.pod_appeared(pod),
            pod_watch::PodChange::Gone(pod) => {
                applier.pod_gone(pod);
                Ok(())
            }
            pod_watch::PodChange::Rescan => watcher
                .rescan()
                .map(drop)
                .and_then(|()| applier.refresh_pods()),
        };
        if let Err(err) = done {
            tracing::warn!("registering pod cgroups failed: {err:#}");
        }
    }
}

/// The next pod the watch sees for the first time; never with no watch.
async fn next_new_pod(new_pods: &mut Option<NewPods>) -> Option<(String, String)> {
    match new_pods {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The Kubernetes updates that arrived, consecutive changes as one batch
/// (applied together: what came while the last one was applied costs one
/// update, not one each); never without `--kubernetes`.
async fn next_updates(kube: &mut Option<KubeWatch>) -> Result<Vec<KubeUpdate>> {
    let Some(sync) = kube else {
        return std::future::pending().await;
    };
    let first = sync
        .updates
        .recv()
        .await
        .context("the Kubernetes watch stopped")?;
    let mut out = vec![first];
    while let Ok(next) = sync.updates.try_recv() {
        match (out.last_mut(), next) {
            (Some(KubeUpdate::Changes(batch)), KubeUpdate::Changes(more)) => batch.extend(more),
            (_, next) => out.push(next),
        }
    }
    Ok(out)
}

pub fn uninstall(pins: &PinDir) -> Result<()> {
    preflight::require_root("uninstalling")?;
    if datapath::uninstall(pins)? {
        tracing::info!(pins = %pins.root().display(), "detached programs and removed all pins");
    } else {
        tracing::info!(pins = %pins.root().display(), "nothing installed there");
    }
    Ok(())
}

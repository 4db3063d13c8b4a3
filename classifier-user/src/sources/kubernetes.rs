//! Live policy sources: the Linkerd-relevant kinds watched from the
//! Kubernetes API with kube-rs runtime watchers.
//!
//! ```text
//! Namespace, Service, Pod (core/v1)           watcher ─┐
//! EgressNetwork (policy.linkerd.io/v1alpha1)   watcher ─┼─> per-kind stores ─debounce─> watch::Sender<Option<Arc<DocumentSet>>>
//! Server (policy.linkerd.io/v1beta3)           watcher ─┘          │
//!                                                           SyncStatus (errors, last success, connected)
//! ```
//!
//! - Every object is parsed into only the fields the compiler reads
//!   ([`ApiObject`]; the rest of its JSON is skipped, never built) and
//!   becomes a [`Document`] (origin `kubernetes:Kind/ns/name`), so that
//!   bookkeeping fields that change on every write make no new document.
//! - Nothing is published until every kind has been listed once: a policy
//!   compiled from Services without their Namespaces would be wrong. A kind
//!   the API server does not serve (404: the Linkerd CRDs are not installed)
//!   counts as listed and empty, and keeps being retried.
//! - After that, changes are debounced: a snapshot is published once no
//!   event came for `debounce_quiet`, or `debounce_max` after the first
//!   unpublished change, whichever is earlier. A re-list that finds what
//!   was already known publishes nothing.
//! - If the API server goes away, the last snapshot stays (the agent keeps
//!   the last applied policy), the watchers retry with exponential backoff,
//!   each failure is logged and counted in [`SyncStatus`].
//!
//! Commands that want the documents as they are (`suggest`, tests) call
//! [`spawn`] (or [`run`] on its own task) with a client from [`client`] and
//! read snapshots from the returned `watch::Receiver`.
//!
//! The agent calls [`spawn_changes`] instead: the first complete list
//! comes as one snapshot, and from then on every event that changes a
//! document comes at once, as a [`Change`], with no debounce and no
//! snapshot (building one costs a map of every object: 110k entries at
//! 100k pods, for what is usually one changed Pod). A re-list (410 Gone,
//! or the watch restarting) comes as the changes between what was known
//! and what the list found, so the agent applies a re-list as a diff.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use futures::{stream::BoxStream, StreamExt as _};
use kube::{
    api::Api,
    core::{ApiResource, GroupVersionKind, ObjectMeta},
    runtime::{
        watcher::{self, Event},
        WatchStreamExt as _,
    },
    Client,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::document::{DocumentKey, KUBERNETES_ORIGIN};
use super::kinds;
use super::{Document, DocumentSet};
use classifier_policy::live::Change;

/// Re-exported so callers can name `kube::Client` without their own dependency.
pub use kube;

mod object;
pub mod slices;
pub use object::ApiObject;

/// Objects per page of a list.
pub const LIST_PAGE_SIZE: u32 = 500;

/// Tuning of the watch; `Default` is what the agent should use.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Publish once no event came for this long...
    pub debounce_quiet: Duration,
    /// ...or this long after the first unpublished change, whichever is first.
    pub debounce_max: Duration,
    /// How often `GET /version` is asked, to notice that a silent API server
    /// is reachable again (watch streams say nothing while nothing changes).
    /// `None`: only watch events and errors update [`SyncStatus`].
    pub probe_interval: Option<Duration>,
    /// Watch request timeout in seconds (`None`: kube's default, 290 s).
    pub watch_timeout: Option<u32>,
    /// The kinds watched; [`watched_kinds`] by default.
    pub kinds: Vec<ApiResource>,
    /// [`spawn_changes`]: updates waiting for the reader at most
    /// ([`CHANGES_QUEUE`] by default). See [`KubeChanges::updates`].
    pub changes_queue: usize,
    /// Where the objects come from.
    pub source: Source,
}

/// Where the watch reads the cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Each kind watched cluster-wide.
    Objects,
    /// The central compiler's `ClassifierSlice`s in this namespace
    /// ([`slices`]).
    Slices { namespace: String },
}

/// Slices per page of a list: a page of slices of one object each (the
/// default) is a fifth of a page of [`LIST_PAGE_SIZE`] objects; of
/// slices of N objects, 100·N objects.
pub const SLICE_PAGE_SIZE: u32 = 100;

/// Updates [`spawn_changes`] lets wait for the agent at most: a few
/// seconds of a rollout's events at 100k pods, while the agent compiles in
/// full.
pub const CHANGES_QUEUE: usize = 1024;

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce_quiet: Duration::from_millis(500),
            debounce_max: Duration::from_secs(5),
            probe_interval: Some(Duration::from_secs(10)),
            watch_timeout: None,
            kinds: watched_kinds(),
            changes_queue: CHANGES_QUEUE,
            source: Source::Objects,
        }
    }
}

/// The kinds the policy compiler understands ([`kinds::KINDS`]), as the
/// API serves them.
pub fn watched_kinds() -> Vec<ApiResource> {
    kinds::KINDS
        .iter()
        .map(|k| {
            ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(k.group, k.watch_version(), k.kind),
                k.plural,
            )
        })
        .collect()
}

/// Health of the sync, shared with whoever reports it (stats, metrics,
/// readiness). All fields are updated by the watch task only.
#[derive(Debug, Default)]
pub struct SyncStatus {
    /// Failed list/watch calls (each retry that fails counts once).
    pub errors: AtomicU64,
    /// Last time the API server answered: a watch event, a completed list,
    /// or a successful probe.
    pub last_success: Mutex<Option<Instant>>,
    /// Whether the last contact with the API server succeeded.
    pub connected: AtomicBool,
    /// Every kind has been listed once (a first snapshot was published).
    pub synced: AtomicBool,
    /// Snapshots published so far.
    pub snapshots: AtomicU64,
    /// Documents in the last published snapshot.
    pub documents: AtomicU64,
}

impl SyncStatus {
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    pub fn last_success(&self) -> Option<Instant> {
        *self.last_success.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the API server last answered (`None`: never).
    pub fn last_success_age(&self) -> Option<Duration> {
        self.last_success().map(|t| t.elapsed())
    }

    fn success(&self) {
        *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.connected.store(true, Ordering::Relaxed);
    }

    fn failure(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
    }
}

/// A client from the environment: KUBECONFIG (or `~/.kube/config`), else
/// the in-cluster service account.
pub async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster service account or KUBECONFIG)")
}

/// A client for an API server at `url` with no authentication (tests, or
/// `kubectl proxy`).
pub fn client_for_url(url: &str) -> Result<Client> {
    let uri = url
        .parse()
        .with_context(|| format!("bad API server URL {url:?}"))?;
    Client::try_from(kube::Config::new(uri)).context("building the Kubernetes client")
}

/// The namespace this process runs in, in a pod (its service account's),
/// else `classifier-system` (where the manifests install it).
pub fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "classifier-system".to_owned())
}

/// The running watch, as [`spawn`] returns it.
pub struct KubeSync {
    /// `None` until every kind has been listed once, then the latest
    /// snapshot; `changed()` fires once per published snapshot (a reader
    /// that falls behind sees only the latest).
    pub snapshots: watch::Receiver<Option<Arc<DocumentSet>>>,
    pub status: Arc<SyncStatus>,
    /// Pods seen for the first time after the initial list, as (UID,
    /// namespace), at once rather than after the debounce: a new pod's
    /// cgroup is registered under its namespace without waiting for the
    /// recompile its Pod is part of. Lossy (a full channel drops; the next
    /// snapshot has every pod).
    pub new_pods: mpsc::Receiver<(String, String)>,
    /// Ends with `Ok` once every receiver is dropped.
    pub task: JoinHandle<Result<()>>,
}

/// The running watch, as [`spawn_changes`] returns it.
pub struct KubeChanges {
    /// The first complete list, then every change as it comes. At most
    /// [`WatchOptions::changes_queue`] updates wait: a reader busy with a
    /// full compile finds the events of that time waiting, and when the
    /// queue is full the watch waits for the reader instead of reading on
    /// (nothing is dropped: the API server keeps the events, and a watch
    /// that falls too far behind ends in a re-list, delivered as its
    /// difference). What waits is bounded by the queue, not by the burst.
    pub updates: mpsc::Receiver<KubeUpdate>,
    pub status: Arc<SyncStatus>,
    /// As [`KubeSync::new_pods`].
    pub new_pods: mpsc::Receiver<(String, String)>,
    /// Ends with `Ok` once the receiver is dropped.
    pub task: JoinHandle<Result<()>>,
}

/// What [`spawn_changes`] delivers.
#[derive(Debug)]
pub enum KubeUpdate {
    /// Every watched kind listed once: the whole document set.
    Snapshot(Arc<DocumentSet>),
    /// Documents changed since the last update, in the order the API
    /// server reported them.
    Changes(Vec<Change>),
}

/// Where the watch delivers what it knows.
enum Output {
    Snapshots(watch::Sender<Option<Arc<DocumentSet>>>),
    Changes(mpsc::Sender<KubeUpdate>),
}

impl Output {
    async fn closed(&self) {
        match self {
            Output::Snapshots(tx) => tx.closed().await,
            Output::Changes(tx) => tx.closed().await,
        }
    }
}

/// How many new pods may wait in [`KubeSync::new_pods`].
const NEW_PODS_QUEUE: usize = 1024;

/// Start watching on the current tokio runtime.
pub fn spawn(client: Client, opts: WatchOptions) -> KubeSync {
    let (tx, rx) = watch::channel(None);
    let (pods_tx, new_pods) = mpsc::channel(NEW_PODS_QUEUE);
    let status = Arc::new(SyncStatus::default());
    let task = tokio::spawn(run_with_pods(
        client,
        opts,
        status.clone(),
        Output::Snapshots(tx),
        Some(pods_tx),
    ));
    KubeSync {
        snapshots: rx,
        status,
        new_pods,
        task,
    }
}

/// Start watching on the current tokio runtime, delivering changes rather
/// than snapshots (see the module documentation). `opts`' debounce applies
/// to the first list only.
pub fn spawn_changes(client: Client, opts: WatchOptions) -> KubeChanges {
    let (tx, updates) = mpsc::channel(opts.changes_queue.max(1));
    let (pods_tx, new_pods) = mpsc::channel(NEW_PODS_QUEUE);
    let status = Arc::new(SyncStatus::default());
    let task = tokio::spawn(run_with_pods(
        client,
        opts,
        status.clone(),
        Output::Changes(tx),
        Some(pods_tx),
    ));
    KubeChanges {
        updates,
        status,
        new_pods,
        task,
    }
}

/// The documents as the API server has them now: every watched kind listed
/// once (the first snapshot [`spawn`] publishes), for one-shot commands
/// (`classifier suggest --kubernetes`). Fails after `timeout` without a
/// complete list, saying how many requests failed.
pub async fn list_once(client: Client, timeout: Duration) -> Result<DocumentSet> {
    let opts = WatchOptions {
        debounce_quiet: Duration::from_millis(50),
        debounce_max: Duration::from_millis(500),
        probe_interval: None,
        ..WatchOptions::default()
    };
    let mut sync = spawn(client, opts);
    let first = tokio::time::timeout(timeout, async {
        loop {
            if let Some(set) = sync.snapshots.borrow_and_update().clone() {
                return Ok::<_, anyhow::Error>(set);
            }
            sync.snapshots
                .changed()
                .await
                .context("the Kubernetes watch stopped")?;
        }
    })
    .await;
    sync.task.abort();
    match first {
        Ok(set) => Ok(Arc::unwrap_or_clone(set?)),
        Err(_) => bail!(
            "no complete list of {} from the Kubernetes API within {timeout:?} ({} failed requests)",
            kinds::KINDS
                .iter()
                .map(|k| k.plural)
                .collect::<Vec<_>>()
                .join(", "),
            sync.status.errors()
        ),
    }
}

/// Watch until every receiver of `tx` is gone, publishing debounced
/// snapshots into `tx` and health into `status`.
pub async fn run(
    client: Client,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    tx: watch::Sender<Option<Arc<DocumentSet>>>,
) -> Result<()> {
    run_with_pods(client, opts, status, Output::Snapshots(tx), None).await
}

async fn run_with_pods(
    client: Client,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    tx: Output,
    new_pods: Option<mpsc::Sender<(String, String)>>,
) -> Result<()> {
    if opts.kinds.is_empty() {
        bail!("no kinds to watch");
    }
    let record = matches!(tx, Output::Changes(_));
    let mut kinds: Vec<KindState> = opts
        .kinds
        .iter()
        .cloned()
        .map(|ar| KindState::new(ar).recording(record))
        .collect();
    let mut events = match &opts.source {
        Source::Objects => futures::stream::select_all(
            opts.kinds
                .iter()
                .enumerate()
                .map(|(idx, ar)| kind_stream(client.clone(), ar.clone(), &opts, idx)),
        )
        .boxed(),
        Source::Slices { namespace } => {
            slice_stream(client.clone(), namespace, &opts, status.clone())
        }
    };
    let _probe = opts
        .probe_interval
        .map(|every| AbortOnDrop(tokio::spawn(probe(client.clone(), every, status.clone()))));

    // Debounce state: when the first unpublished change and the last event came.
    let mut first_change: Option<tokio::time::Instant> = None;
    let mut last_event = tokio::time::Instant::now();
    let mut published_once = false;

    loop {
        let all_listed = kinds.iter().all(|k| k.listed);
        let deadline = match first_change {
            Some(first) if all_listed => {
                Some((last_event + opts.debounce_quiet).min(first + opts.debounce_max))
            }
            _ => None,
        };
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            item = events.next() => {
                let Some((idx, item)) = item else { bail!("the Kubernetes watch streams ended") };
                last_event = tokio::time::Instant::now();
                let changed = kinds[idx].handle(item, &status);
                match &tx {
                    // After the first list, each change goes out at once.
                    Output::Changes(out) if published_once => {
                        send_changes(&mut kinds, idx, out, &status).await;
                    }
                    _ if changed => {
                        first_change.get_or_insert(last_event);
                    }
                    _ => {}
                }
                for pod in kinds[idx].appeared.drain(..) {
                    if let Some(tx) = &new_pods {
                        // Full: the snapshot brings it a little later.
                        let _ = tx.try_send(pod);
                    }
                }
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                first_change = None;
                publish(&mut kinds, &tx, &status, &mut published_once).await;
            }
        }
    }
}

/// Sends the changes kind `idx` recorded, once the first snapshot is out.
/// Waits while the queue is full (see [`KubeChanges::updates`]).
async fn send_changes(
    kinds: &mut [KindState],
    idx: usize,
    out: &mpsc::Sender<KubeUpdate>,
    status: &SyncStatus,
) {
    let changes = std::mem::take(&mut kinds[idx].changes);
    if !changes.is_empty() {
        let count = kinds.iter().map(|k| k.docs.len()).sum::<usize>();
        status.documents.store(count as u64, Ordering::Relaxed);
        status.snapshots.fetch_add(1, Ordering::Relaxed);
        // An error: the reader is gone, and the loop ends at `closed()`.
        let _ = out.send(KubeUpdate::Changes(changes)).await;
    }
}

/// Publishes a snapshot of every kind's documents (debounced).
async fn publish(
    kinds: &mut [KindState],
    tx: &Output,
    status: &SyncStatus,
    published_once: &mut bool,
) {
    let set = snapshot(kinds);
    let count = kinds.iter().map(|k| k.docs.len()).sum::<usize>();
    status.documents.store(count as u64, Ordering::Relaxed);
    status.snapshots.fetch_add(1, Ordering::Relaxed);
    status.synced.store(true, Ordering::Relaxed);
    if *published_once {
        info!(documents = count, "policy sources changed in Kubernetes");
    } else {
        info!(documents = count, "policy sources listed from Kubernetes");
        *published_once = true;
    }
    match tx {
        Output::Snapshots(tx) => {
            tx.send_replace(Some(Arc::new(set)));
        }
        Output::Changes(tx) => {
            // The snapshot holds what the changes so far did.
            for kind in kinds.iter_mut() {
                kind.changes.clear();
            }
            let _ = tx.send(KubeUpdate::Snapshot(Arc::new(set))).await;
        }
    }
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm
/// that waits for a deadline only when there is one).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) type KindEvent = (usize, Result<Event<ApiObject>, watcher::Error>);

/// Kind `idx`'s watch events, paged and retried with backoff.
pub(crate) fn kind_stream(
    client: Client,
    ar: ApiResource,
    opts: &WatchOptions,
    idx: usize,
) -> BoxStream<'static, KindEvent> {
    let api: Api<ApiObject> = Api::all_with(client, &ar);
    let mut config = watcher::Config::default();
    if let Some(t) = opts.watch_timeout {
        config = config.timeout(t);
    }
    // Pages of LIST_PAGE_SIZE (kube's default too, said here because it
    // matters): a node's start never pulls the whole cluster's pods in one
    // response. Streaming lists (`sendInitialEvents`) would be lighter
    // still, but API servers before 1.32 refuse them.
    config.page_size = Some(LIST_PAGE_SIZE);
    // kube's own backoff: exponential 0.8 s to 30 s with jitter, reset after
    // 120 s of health (client-go's reflector values).
    watcher::watcher(api, config)
        .backoff(watcher::DefaultBackoff::default())
        .map(move |item| (idx, item))
        .boxed()
}

/// The central compiler's slices in `namespace`, as the events of the
/// objects they hold ([`slices::SliceReader`]). The slices' own watch
/// errors are counted and logged here: they say nothing of any one kind.
fn slice_stream(
    client: Client,
    namespace: &str,
    opts: &WatchOptions,
    status: Arc<SyncStatus>,
) -> BoxStream<'static, KindEvent> {
    let api: Api<slices::ClassifierSlice> = Api::namespaced(client, namespace);
    let mut config = watcher::Config::default();
    if let Some(t) = opts.watch_timeout {
        config = config.timeout(t);
    }
    config.page_size = Some(SLICE_PAGE_SIZE);
    let watch = move || {
        watcher::watcher(api.clone(), config.clone())
            .backoff(watcher::DefaultBackoff::default())
            .boxed()
    };
    let state = (
        watch(),
        slices::SliceReader::new(opts.kinds.clone()),
        namespace.to_owned(),
    );
    futures::stream::unfold(state, move |(mut events, mut reader, namespace)| {
        let (status, watch) = (status.clone(), watch.clone());
        async move {
            loop {
                let out = match events.next().await? {
                    Ok(event) => reader.handle(event),
                    Err(e) => {
                        status.failure();
                        warn!(
                            %namespace,
                            errors = status.errors(),
                            "watching the central compiler's {} failed (is it installed?), keeping the last policy and retrying with backoff: {e}",
                            slices::PLURAL
                        );
                        Vec::new()
                    }
                };
                if reader.take_relist() {
                    events = watch();
                }
                if !out.is_empty() {
                    return Some((out, (events, reader, namespace)));
                }
            }
        }
    })
    .flat_map(|out| futures::stream::iter(out.into_iter().map(|(idx, ev)| (idx, Ok(ev)))))
    .boxed()
}

/// Periodically ask the API server for its version: the only way to learn
/// it is back while the watches have nothing to say.
async fn probe(client: Client, every: Duration, status: Arc<SyncStatus>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match client.apiserver_version().await {
            Ok(_) => status.success(),
            Err(e) => {
                debug!("Kubernetes API server probe failed: {e}");
                status.connected.store(false, Ordering::Relaxed);
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An object's key: the one its document has in a [`DocumentSet`], shared
/// with the snapshots and the live policy's set (one string per object).
type Key = DocumentKey;

/// What is known of one kind.
struct KindState {
    ar: ApiResource,
    docs: BTreeMap<Key, Arc<Document>>,
    /// Objects of a (re-)list in progress, swapped in at `InitDone`.
    relist: Option<BTreeMap<Key, Arc<Document>>>,
    /// Listed at least once (or known not to be served).
    listed: bool,
    /// The API server answered 404 for this kind (CRD not installed).
    absent: bool,
    /// Pods (UID, namespace) applied since the last look that were not
    /// known before (after the first list only).
    appeared: Vec<(String, String)>,
    /// Whether `changes` is kept ([`spawn_changes`]).
    record: bool,
    /// Document changes since the last look (after this kind's first list).
    changes: Vec<Change>,
}

impl KindState {
    fn new(ar: ApiResource) -> Self {
        Self {
            ar,
            docs: BTreeMap::new(),
            relist: None,
            listed: false,
            absent: false,
            appeared: Vec::new(),
            record: false,
            changes: Vec::new(),
        }
    }

    fn recording(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Keeps `change` for [`spawn_changes`]'s reader. Not before the first
    /// list, which goes out whole.
    fn record(&mut self, change: Change) {
        if self.record && self.listed {
            self.changes.push(change);
        }
    }

    /// The key of `obj` from its metadata (a deleted object's document is
    /// not made).
    fn key_of(&self, obj: &ApiObject) -> Key {
        DocumentKey::new(
            &self.ar.kind,
            obj.metadata.namespace.as_deref(),
            obj.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The changes from `self.docs` to `listed` (a re-list).
    fn record_relist(&mut self, listed: &BTreeMap<Key, Arc<Document>>) {
        if !(self.record && self.listed) {
            return;
        }
        let mut changes = Vec::new();
        for (key, old) in &self.docs {
            match listed.get(key) {
                None => changes.push(Change::Delete(key.clone())),
                Some(new) if !same_document(old, new) => changes.push(Change::Apply(new.clone())),
                Some(_) => {}
            }
        }
        for (key, new) in listed {
            if !self.docs.contains_key(key) {
                changes.push(Change::Apply(new.clone()));
            }
        }
        self.changes.extend(changes);
    }

    /// Apply one watcher item; true if the documents (or, the first time,
    /// the listed state) changed.
    fn handle(
        &mut self,
        item: Result<Event<ApiObject>, watcher::Error>,
        status: &SyncStatus,
    ) -> bool {
        let event = match item {
            Ok(event) => event,
            Err(e) => return self.failed(&e, status),
        };
        status.success();
        self.absent = false;
        match event {
            Event::Apply(obj) => self.applied(obj),
            Event::Delete(obj) => self.deleted(&obj),
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let Some((key, doc)) = self.document(obj) {
                    self.relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, doc);
                }
                false
            }
            Event::InitDone => self.list_done(),
        }
    }

    /// A watch error; true if the documents (or the listed state) changed,
    /// which only a kind the API server does not serve does: it is empty.
    fn failed(&mut self, e: &watcher::Error, status: &SyncStatus) -> bool {
        if is_not_found(e) {
            if !self.absent {
                info!(
                    kind = %self.ar.kind,
                    "the API server does not serve {}/{} (CRD not installed?); treating it as empty and retrying",
                    self.ar.api_version, self.ar.plural
                );
                self.absent = true;
            }
            self.relist = None;
            let changed = !self.docs.is_empty() || !self.listed;
            self.record_relist(&BTreeMap::new());
            self.docs.clear();
            self.listed = true;
            changed
        } else if is_expired(e) {
            // The watch's resourceVersion is older than the API server's
            // history (routine after a long quiet watch, or etcd
            // compaction): the watcher lists again. Not a failure.
            debug!(kind = %self.ar.kind, "watch expired (410), listing again: {e}");
            false
        } else {
            status.failure();
            warn!(
                kind = %self.ar.kind,
                errors = status.errors(),
                "Kubernetes watch failed, keeping the last policy and retrying with backoff: {e}"
            );
            false
        }
    }

    /// An object added or modified; true if its document changed.
    fn applied(&mut self, obj: ApiObject) -> bool {
        let key = self.key_of(&obj);
        match self.document(obj) {
            Some((key, doc)) => {
                let same = self
                    .docs
                    .get(&key)
                    .is_some_and(|old| same_document(old, &doc));
                if !same {
                    debug!(origin = %doc.origin(), "applied");
                    if self.listed && !self.docs.contains_key(&key) {
                        if let (Some(uid), Some(ns)) = (&doc.uid, &doc.namespace) {
                            self.appeared.push((uid.to_string(), ns.to_string()));
                        }
                    }
                    self.record(Change::Apply(doc.clone()));
                    self.docs.insert(key, doc);
                }
                !same
            }
            // Skipped (logged): an older version must not stay in
            // force in its place.
            None => {
                let removed = self.docs.remove(&key).is_some();
                if removed {
                    self.record(Change::Delete(key));
                }
                removed
            }
        }
    }

    /// An object deleted; true if it was known.
    fn deleted(&mut self, obj: &ApiObject) -> bool {
        let key = self.key_of(obj);
        let removed = self.docs.remove(&key).is_some();
        if removed {
            debug!(
                kind = %self.ar.kind,
                namespace = ?obj.metadata.namespace,
                name = ?obj.metadata.name,
                "deleted"
            );
            self.record(Change::Delete(key));
        }
        removed
    }

    /// A (re-)list finished: its objects replace the known ones. True if
    /// they differ, or this was the first list.
    fn list_done(&mut self) -> bool {
        let listed = self.relist.take().unwrap_or_default();
        let same = listed.len() == self.docs.len()
            && listed
                .iter()
                .zip(&self.docs)
                .all(|((ka, a), (kb, b))| ka == kb && same_document(a, b));
        debug!(kind = %self.ar.kind, objects = listed.len(), "listed");
        let first = !self.listed;
        self.listed = true;
        if !same {
            if !first {
                self.record_relist(&listed);
            }
            self.docs = listed;
        }
        !same || first
    }

    fn document(&self, obj: ApiObject) -> Option<(Key, Arc<Document>)> {
        let ApiObject { metadata, body } = obj;
        match document_of(&self.ar, &metadata, body) {
            Ok(doc) => Some((doc.key(), Arc::new(doc))),
            Err(e) => {
                let namespace = metadata.namespace.as_deref().unwrap_or_default();
                let name = metadata.name.as_deref().unwrap_or_default();
                warn!(kind = %self.ar.kind, %namespace, %name, "skipping object: {e:#}");
                None
            }
        }
    }
}

fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// The API server does not serve the kind (a CRD not installed).
pub(crate) fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Whether two documents of one object say the same to the compiler.
pub(crate) fn same_document(a: &Document, b: &Document) -> bool {
    a.creation_timestamp == b.creation_timestamp && a.uid == b.uid && a.content == b.content
}

fn snapshot(kinds: &[KindState]) -> DocumentSet {
    let mut set = DocumentSet::default();
    for kind in kinds {
        for doc in kind.docs.values() {
            set.insert_shared(doc.clone());
        }
    }
    set
}

/// Labels kept per object at most, and their bytes (keys and values) in
/// all. Kubernetes bounds each label, not how many an object has (only the
/// object's size, 1.5 MiB): a tenant's Pod could otherwise make every node
/// hold megabytes for it. Real pods carry tens of labels.
pub const MAX_LABELS: usize = 128;
pub const MAX_LABEL_BYTES: usize = 32 * 1024;

/// An object over the label limits is skipped (not kept with some labels
/// dropped, which could change which selectors match it).
fn check_labels(labels: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let bytes: usize = labels
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if labels.len() > MAX_LABELS || bytes > MAX_LABEL_BYTES {
        anyhow::bail!(
            "metadata.labels: {} labels of {bytes} bytes, over the limit of {MAX_LABELS} labels or {MAX_LABEL_BYTES} bytes kept per object",
            labels.len()
        );
    }
    Ok(())
}

/// An API object as a [`Document`], the form the policy compiler takes.
///
/// The object holds only what a policy can depend on ([`ApiObject`]:
/// identity, labels, the opaque-ports annotation, deletion, and the
/// fields of the spec and status the compiler reads), and
/// [`Document::from_value`] keeps those typed: a status-only or no-op
/// update gives an equal document, which publishes nothing, and a node
/// holds a few hundred bytes per pod.
pub fn to_document(ar: &ApiResource, obj: ApiObject) -> Result<Document> {
    document_of(ar, &obj.metadata, obj.body)
}

/// [`to_document`] of an object taken apart, so that the watch keeps its
/// metadata to name the object when it is skipped.
fn document_of(
    ar: &ApiResource,
    metadata: &ObjectMeta,
    body: serde_json::Value,
) -> Result<Document> {
    use serde_json::Value;
    metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .context("object has no metadata.name")?;
    let map = body.as_object().context("object is not a map")?;
    if let Some(Value::Object(labels)) = map.get("metadata").and_then(|m| m.get("labels")) {
        check_labels(labels)?;
    }
    // List items come without apiVersion and kind; the watched resource
    // says them. The origin, `kubernetes:Kind/ns/name`, follows from the
    // identity.
    Ok(Document::from_value_of_kind(
        &ar.api_version,
        &ar.kind,
        body,
        KUBERNETES_ORIGIN.to_string(),
    )?)
}

#[cfg(test)]
mod label_limit_tests {
    use super::*;

    fn pod(labels: usize, value_len: usize) -> ApiObject {
        let labels: serde_json::Map<String, serde_json::Value> = (0..labels)
            .map(|i| (format!("l{i}"), "v".repeat(value_len).into()))
            .collect();
        ApiObject::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "t", "uid": "u1", "labels": labels},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }))
        .unwrap()
    }

    fn pod_kind() -> ApiResource {
        watched_kinds()
            .into_iter()
            .find(|k| k.kind == "Pod")
            .unwrap()
    }

    #[test]
    fn pod_labels_are_bounded_per_object() {
        let ar = pod_kind();
        assert!(to_document(&ar, pod(MAX_LABELS, 63)).is_ok());
        let err = to_document(&ar, pod(MAX_LABELS + 1, 1)).unwrap_err();
        assert!(format!("{err:#}").contains("over the limit"), "{err:#}");
        // Few labels, too many bytes (values longer than Kubernetes allows
        // never reach us, but many 63-byte values with long keys do).
        let err = to_document(&ar, pod(100, 400)).unwrap_err();
        assert!(format!("{err:#}").contains("bytes"), "{err:#}");
    }

    #[test]
    fn an_object_updated_past_the_limit_is_dropped_not_kept_stale() {
        let status = SyncStatus::default();
        let mut state = KindState::new(pod_kind());
        assert!(state.handle(Ok(Event::InitDone), &status));
        assert!(state.handle(Ok(Event::Apply(pod(2, 5))), &status));
        assert_eq!(state.docs.len(), 1);
        // The same Pod, now over the limit: its older version goes.
        assert!(state.handle(Ok(Event::Apply(pod(MAX_LABELS + 1, 5))), &status));
        assert!(state.docs.is_empty());
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;

    fn pod(name: &str, ip: &str) -> ApiObject {
        ApiObject::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "t", "uid": format!("u-{name}")},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    }

    fn shown(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Apply(doc) => format!("apply {}", doc.name()),
                Change::Delete(key) => format!("delete {}", key.as_str().replace('\0', "/")),
            })
            .collect()
    }

    #[test]
    fn events_after_the_first_list_are_changes_and_a_relist_is_its_difference() {
        let status = SyncStatus::default();
        let ar = watched_kinds()
            .into_iter()
            .find(|k| k.kind == "Pod")
            .unwrap();
        let mut state = KindState::new(ar).recording(true);
        // The first list goes out whole, as a snapshot: no changes.
        state.handle(Ok(Event::Init), &status);
        state.handle(Ok(Event::InitApply(pod("a", "10.0.0.1"))), &status);
        state.handle(Ok(Event::InitApply(pod("b", "10.0.0.2"))), &status);
        assert!(state.handle(Ok(Event::InitDone), &status));
        assert!(state.changes.is_empty());
        // Then each event that changes a document.
        state.handle(Ok(Event::Apply(pod("a", "10.0.0.9"))), &status);
        state.handle(Ok(Event::Apply(pod("a", "10.0.0.9"))), &status);
        state.handle(Ok(Event::Delete(pod("b", "10.0.0.2"))), &status);
        assert_eq!(shown(&state.changes), ["apply a", "delete Pod/t/b"]);
        state.changes.clear();
        // A re-list: only what differs from what was known.
        state.handle(Ok(Event::Init), &status);
        state.handle(Ok(Event::InitApply(pod("a", "10.0.0.9"))), &status);
        state.handle(Ok(Event::InitApply(pod("c", "10.0.0.3"))), &status);
        assert!(state.handle(Ok(Event::InitDone), &status));
        assert_eq!(shown(&state.changes), ["apply c"]);
    }
}

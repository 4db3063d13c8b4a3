//! The leader's work: watch every kind, keep the [`SliceTable`], write
//! what changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use kube::{
    api::{Api, DeleteParams, ListParams, PostParams},
    core::{ApiResource, Request},
    runtime::watcher::{self, Event},
    Client, Resource as _,
};
use serde_json::Value;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use super::project::project;
use super::table::{object_text, Limits, SliceKind, SliceTable, Write};
use super::CompilerOptions;
use crate::sources::kubernetes::{
    is_not_found, kind_stream, sleep_until_opt,
    slices::{self, ClassifierSlice, KIND, SYNCED},
    watched_kinds, ApiObject, WatchOptions, SLICE_PAGE_SIZE,
};

/// Writes wait at most this long after the first unwritten change.
pub const FLUSH_MAX: Duration = Duration::from_millis(200);

/// Slice writes in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// Slices built and written per round of a flush: what a first
/// publication holds at once besides the table.
const WRITES_PER_ROUND: usize = 256;

/// After a failed write (or a failed list of the slices), the next
/// attempt waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A write that takes longer than this failed (and is made again): a
/// leader stuck on a dead connection must not outlive its lease writing.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Publisher {
    client: Client,
    kinds: Vec<ApiResource>,
    namespace: String,
    flush_quiet: Duration,
    table: SliceTable,
    /// The resourceVersion of each slice there is, as last written or
    /// read: an update of a custom object must carry it.
    versions: HashMap<String, String>,
    marker: bool,
}

impl Publisher {
    pub fn new(client: Client, opts: &CompilerOptions) -> Self {
        let kinds = watched_kinds();
        let slice_kinds = kinds.iter().map(SliceKind::from).collect();
        Publisher {
            client,
            kinds,
            namespace: opts.namespace.clone(),
            flush_quiet: opts.flush_quiet,
            table: SliceTable::new(slice_kinds, &opts.namespace).with_limits(Limits {
                objects: opts.objects_per_slice,
                ..Limits::default()
            }),
            versions: HashMap::new(),
            marker: false,
        }
    }

    /// Runs until the watch streams end (they retry with backoff, so
    /// never, short of a bug).
    pub async fn run(mut self) -> Result<()> {
        while let Err(e) = self.adopt().await {
            warn!("{e:#}; retrying");
            tokio::time::sleep(RETRY_AFTER).await;
        }
        let opts = WatchOptions::default();
        let mut events = futures::stream::select_all(
            self.kinds
                .iter()
                .enumerate()
                .map(|(idx, ar)| kind_stream(self.client.clone(), ar.clone(), &opts, idx)),
        );
        let mut listed = vec![false; self.kinds.len()];
        let started = Instant::now();
        // The first unwritten change, the last event, and no write before.
        let (mut first, mut last) = (None, TokioInstant::now());
        let mut not_before = TokioInstant::now();
        loop {
            let all_listed = listed.iter().all(|l| *l);
            let deadline = first.filter(|_| all_listed).map(|f: TokioInstant| {
                (last + self.flush_quiet).min(f + FLUSH_MAX).max(not_before)
            });
            tokio::select! {
                item = events.next() => {
                    let Some((idx, item)) = item else { bail!("the Kubernetes watch streams ended") };
                    self.handle(idx, item, &mut listed[idx]);
                    last = TokioInstant::now();
                    if self.table.is_dirty() || !self.marker {
                        first.get_or_insert(last);
                    }
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    first = None;
                    let done = self.flush().await && (self.marker || self.write_marker(started).await);
                    if !done {
                        not_before = TokioInstant::now() + RETRY_AFTER;
                        first = Some(not_before);
                    }
                }
            }
        }
    }

    fn slices_api(&self) -> Api<ClassifierSlice> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads the slices an earlier leader wrote.
    async fn adopt(&mut self) -> Result<()> {
        let api = self.slices_api();
        let mut params = ListParams::default().limit(SLICE_PAGE_SIZE);
        let mut objects = 0;
        loop {
            let page = api.list(&params).await.with_context(|| {
                format!(
                    "listing the {KIND}s in namespace {:?} (is the CRD {}.{} installed, and may this service account list them?)",
                    self.namespace,
                    slices::PLURAL,
                    slices::GROUP
                )
            })?;
            for slice in page.items {
                let name = slice.metadata.name.clone().unwrap_or_default();
                self.marker |= name == SYNCED;
                let held: Vec<(String, String)> = slice
                    .spec
                    .objects
                    .into_iter()
                    .map(|o| {
                        (
                            o.metadata.name.clone().unwrap_or_default(),
                            object_text(o.body),
                        )
                    })
                    .collect();
                objects += held.len();
                self.table.adopt(&name, held);
                if let Some(version) = slice.metadata.resource_version {
                    self.versions.insert(name, version);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        info!(
            slices = self.versions.len(),
            objects, "read the slices published before"
        );
        Ok(())
    }

    fn handle(
        &mut self,
        idx: usize,
        item: Result<Event<ApiObject>, watcher::Error>,
        listed: &mut bool,
    ) {
        match item {
            Ok(Event::Init) => self.table.begin_list(idx),
            Ok(Event::InitApply(obj) | Event::Apply(obj)) => self.applied(idx, obj),
            Ok(Event::Delete(obj)) => {
                let (ns, name) = slices::ids(&obj);
                self.table.remove(idx, ns, name);
            }
            Ok(Event::InitDone) => {
                self.table.end_list(idx);
                if !*listed {
                    info!(kind = %self.kinds[idx].kind, objects = self.table.objects(), "listed");
                }
                *listed = true;
            }
            Err(e) if is_not_found(&e) => {
                // Not served (a CRD not installed): empty, as on the nodes.
                self.table.begin_list(idx);
                self.table.end_list(idx);
                *listed = true;
            }
            Err(e) => {
                warn!(kind = %self.kinds[idx].kind, "watch failed, retrying with backoff: {e}")
            }
        }
    }

    /// An object as the nodes will read it, or removed if they would skip it.
    fn applied(&mut self, idx: usize, obj: ApiObject) {
        let (ns, name) = slices::ids(&obj);
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let ar = &self.kinds[idx];
        match project(ar, obj) {
            Ok(text) => self.table.upsert(idx, &ns, &name, text),
            Err(e) => {
                warn!(kind = %ar.kind, namespace = %ns, %name, "left out of the slices: {e:#}");
                self.table.remove(idx, &ns, &name);
            }
        }
    }

    /// Writes what changed, a round at a time (each round's writes done
    /// before the next is taken: see the table's ordering); false if
    /// some write failed (it is made again later).
    async fn flush(&mut self) -> bool {
        let mut ok = true;
        let mut count = 0;
        loop {
            let writes = self.table.take_some_writes(WRITES_PER_ROUND);
            if writes.is_empty() {
                break;
            }
            count += writes.len();
            ok &= self.write_round(writes).await;
        }
        if count > 0 {
            debug!(
                writes = count,
                slices = self.table.slices(),
                "slices written"
            );
        }
        ok
    }

    async fn write_round(&mut self, writes: Vec<Write>) -> bool {
        let path = ClassifierSlice::url_path(&(), Some(&self.namespace));
        let (client, versions) = (&self.client, &self.versions);
        let results: Vec<(Write, Result<Option<String>>)> = futures::stream::iter(writes)
            .map(|w| {
                let version = versions.get(w.name()).cloned();
                let path = path.clone();
                async move {
                    let r = tokio::time::timeout(WRITE_TIMEOUT, write(client, &path, &w, version))
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {WRITE_TIMEOUT:?}")));
                    (w, r)
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut ok = true;
        for (w, r) in results {
            match r {
                Ok(version) => {
                    self.table.written(w.name());
                    match version {
                        Some(v) => self.versions.insert(w.name().to_owned(), v),
                        None => self.versions.remove(w.name()),
                    };
                }
                Err(e) => {
                    warn!(slice = %w.name(), "writing the slice failed, retrying: {e:#}");
                    self.table.retry(w.name());
                    ok = false;
                }
            }
        }
        ok
    }

    /// Writes the marker; true once it is there.
    async fn write_marker(&mut self, started: Instant) -> bool {
        let path = ClassifierSlice::url_path(&(), Some(&self.namespace));
        let w = Write::Put {
            name: SYNCED.to_owned(),
            body: slices::marker(&self.namespace).to_string(),
        };
        match write(&self.client, &path, &w, None).await {
            Ok(_) => {
                self.marker = true;
                info!(
                    slices = self.table.slices(),
                    objects = self.table.objects(),
                    seconds = started.elapsed().as_secs_f64(),
                    "published a complete cluster"
                );
                true
            }
            Err(e) => {
                warn!("writing the {SYNCED:?} marker failed, retrying: {e:#}");
                false
            }
        }
    }
}

/// One write. A Put replaces the slice at `version` (an update of a
/// custom object must name the version it replaces), or creates it if
/// there is none; if the slice is not as known (created, changed or
/// deleted by another writer), its version is read and the write made
/// once more. A Delete deletes (gone already is fine). Ok(the slice's
/// resourceVersion after it, `None` if it is gone).
async fn write(
    client: &Client,
    path: &str,
    w: &Write,
    version: Option<String>,
) -> Result<Option<String>> {
    let req = Request::new(path);
    match w {
        Write::Put { name, body } => {
            match put(client, &req, name, body, version.as_deref()).await {
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    let now = current_version(client, &req, name).await?;
                    Ok(Some(put(client, &req, name, body, now.as_deref()).await?))
                }
                other => Ok(Some(other?)),
            }
        }
        Write::Delete { name } => {
            match client
                .request_text(req.delete(name, &DeleteParams::default())?)
                .await
            {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Replaces slice `name` at `version`, or creates it; its new version.
async fn put(
    client: &Client,
    req: &Request,
    name: &str,
    body: &str,
    version: Option<&str>,
) -> kube::Result<String> {
    let pp = PostParams::default();
    let request = match version {
        Some(v) => req.replace(name, &pp, with_version(body, v).into_bytes()),
        None => req.create(&pp, body.as_bytes().to_vec()),
    }
    .map_err(kube::Error::BuildRequest)?;
    let answer = client.request_text(request).await?;
    let written: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
    Ok(written["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The resourceVersion of slice `name` as the API server has it now.
async fn current_version(client: &Client, req: &Request, name: &str) -> Result<Option<String>> {
    let get = req.get(name, &Default::default())?;
    match client.request_text(get).await {
        Ok(text) => {
            let slice: Value = serde_json::from_str(&text)?;
            Ok(slice["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `body` (a slice as the table writes it) with `metadata.resourceVersion`.
fn with_version(body: &str, version: &str) -> String {
    let version = serde_json::to_string(version).expect("a string's JSON");
    body.replacen(
        "\"metadata\":{",
        &format!("\"metadata\":{{\"resourceVersion\":{version},"),
        1,
    )
}

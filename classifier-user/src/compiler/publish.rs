//! The leader's work: watch every kind, keep the [`SliceTable`], write
//! what changed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use kube::{
    api::{Api, DeleteParams, ListParams, PostParams},
    core::{ApiResource, Request},
    runtime::watcher::{self, Event},
    Client, Resource as _,
};
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

use super::project::project;
use super::table::{object_text, Limits, SliceKind, SliceTable, Write};
use super::CompilerOptions;
use crate::sources::kubernetes::{
    is_not_found, kind_stream,
    slices::{ClassifierSlice, GROUP, KIND, SYNCED, SYNCED_KIND, VERSION},
    watched_kinds, ApiObject, WatchOptions,
};

/// Writes wait at most this long after the first unwritten change.
pub const FLUSH_MAX: Duration = Duration::from_millis(200);

/// Slice writes in flight at once.
const CONCURRENT_WRITES: usize = 8;

/// After a write failed, the next attempt waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Publisher {
    client: Client,
    kinds: Vec<ApiResource>,
    namespace: String,
    flush_quiet: Duration,
    table: SliceTable,
    /// Slices that exist (to create or replace).
    existing: HashSet<String>,
    marker: bool,
}

impl Publisher {
    pub fn new(client: Client, opts: &CompilerOptions) -> Self {
        let kinds = watched_kinds();
        let slice_kinds = kinds
            .iter()
            .map(|ar| SliceKind {
                kind: ar.kind.clone(),
                api_version: ar.api_version.clone(),
                plural: ar.plural.clone(),
            })
            .collect();
        Publisher {
            client,
            kinds,
            namespace: opts.namespace.clone(),
            flush_quiet: opts.flush_quiet,
            table: SliceTable::new(slice_kinds, &opts.namespace).with_limits(Limits {
                objects: opts.objects_per_slice,
                ..Limits::default()
            }),
            existing: HashSet::new(),
            marker: false,
        }
    }

    /// Runs until the watch streams end (they retry with backoff, so
    /// never, short of a bug).
    pub async fn run(mut self) -> Result<()> {
        self.adopt().await?;
        let opts = WatchOptions::default();
        let mut events = futures::stream::select_all(
            self.kinds
                .iter()
                .enumerate()
                .map(|(idx, ar)| kind_stream(self.client.clone(), ar.clone(), &opts, idx)),
        );
        let mut listed = vec![false; self.kinds.len()];
        let started = Instant::now();
        let (mut first, mut last) = (None, tokio::time::Instant::now());
        loop {
            let all_listed = listed.iter().all(|l| *l);
            let deadline = first
                .filter(|_| all_listed)
                .map(|f: tokio::time::Instant| (last + self.flush_quiet).min(f + FLUSH_MAX));
            tokio::select! {
                item = events.next() => {
                    let Some((idx, item)) = item else { bail!("the Kubernetes watch streams ended") };
                    self.handle(idx, item, &mut listed[idx]);
                    last = tokio::time::Instant::now();
                    if self.table.is_dirty() || !self.marker {
                        first.get_or_insert(last);
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                    first = None;
                    if !self.flush().await {
                        first = Some(tokio::time::Instant::now() + RETRY_AFTER);
                    } else if !self.marker {
                        self.write_marker(started).await;
                        if !self.marker {
                            first = Some(tokio::time::Instant::now() + RETRY_AFTER);
                        }
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
        let mut params = ListParams::default().limit(crate::sources::kubernetes::SLICE_PAGE_SIZE);
        let mut objects = 0;
        loop {
            let page = api
                .list(&params)
                .await
                .with_context(|| {
                    format!(
                        "listing the {KIND}s in namespace {:?} (is the CRD {}.{GROUP} installed, and may this service account list them?)",
                        self.namespace,
                        crate::sources::kubernetes::slices::PLURAL
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
                self.existing.insert(name);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        info!(
            slices = self.existing.len(),
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
                let (ns, name) = ids(&obj);
                self.table.remove(idx, &ns, &name);
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
        let (ns, name) = ids(&obj);
        let ar = &self.kinds[idx];
        match project(ar, obj) {
            Ok(text) => self.table.upsert(idx, &ns, &name, text),
            Err(e) => {
                warn!(kind = %ar.kind, namespace = %ns, %name, "left out of the slices: {e:#}");
                self.table.remove(idx, &ns, &name);
            }
        }
    }

    /// Writes what changed; false if some write failed (it is retried).
    async fn flush(&mut self) -> bool {
        let writes = self.table.take_writes();
        if writes.is_empty() {
            return true;
        }
        let count = writes.len();
        let client = self.client.clone();
        let path = ClassifierSlice::url_path(&(), Some(&self.namespace));
        let existing = &self.existing;
        let results: Vec<(Write, Result<bool>)> = futures::stream::iter(writes)
            .map(|w| {
                let (client, path) = (client.clone(), path.clone());
                let exists = existing.contains(w.name());
                async move {
                    let r = write(&client, &path, &w, exists).await;
                    (w, r)
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut ok = true;
        for (w, r) in results {
            match r {
                Ok(exists) => {
                    self.table.written(w.name());
                    if exists {
                        self.existing.insert(w.name().to_owned());
                    } else {
                        self.existing.remove(w.name());
                    }
                }
                Err(e) => {
                    warn!(slice = %w.name(), "writing the slice failed, retrying: {e:#}");
                    self.table.retry(w.name());
                    ok = false;
                }
            }
        }
        debug!(
            writes = count,
            slices = self.table.slices(),
            "slices written"
        );
        ok
    }

    async fn write_marker(&mut self, started: Instant) {
        let body = serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {"name": SYNCED, "namespace": self.namespace},
            "spec": {"apiVersion": format!("{GROUP}/{VERSION}"), "kind": SYNCED_KIND, "objects": []},
        });
        let path = ClassifierSlice::url_path(&(), Some(&self.namespace));
        let w = Write::Put {
            name: SYNCED.to_owned(),
            body: body.to_string(),
        };
        match write(&self.client, &path, &w, false).await {
            Ok(_) => {
                self.marker = true;
                info!(
                    slices = self.table.slices(),
                    objects = self.table.objects(),
                    seconds = started.elapsed().as_secs_f64(),
                    "published a complete cluster"
                );
            }
            Err(e) => warn!("writing the {SYNCED:?} marker failed, retrying: {e:#}"),
        }
    }
}

/// One write: a Put replaces (or creates, if the slice is not there), a
/// Delete deletes (gone already is fine). Ok(whether the slice exists
/// after it).
async fn write(client: &Client, path: &str, w: &Write, exists: bool) -> Result<bool> {
    let req = Request::new(path);
    let pp = PostParams::default();
    match w {
        Write::Put { name, body } => {
            let replace = || req.replace(name, &pp, body.clone().into_bytes());
            let create = || req.create(&pp, body.clone().into_bytes());
            let first = if exists { replace()? } else { create()? };
            match client.request_text(first).await {
                Ok(_) => Ok(true),
                // Created meanwhile, or deleted meanwhile: the other verb.
                Err(kube::Error::Api(s))
                    if (s.code == 409 && !exists) || (s.code == 404 && exists) =>
                {
                    let second = if exists { create()? } else { replace()? };
                    client.request_text(second).await?;
                    Ok(true)
                }
                Err(e) => Err(e.into()),
            }
        }
        Write::Delete { name } => match client
            .request_text(req.delete(name, &DeleteParams::default())?)
            .await
        {
            Ok(_) => Ok(false),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

fn ids(obj: &ApiObject) -> (String, String) {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

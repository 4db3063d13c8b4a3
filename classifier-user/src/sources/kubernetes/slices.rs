//! Policy sources published by the central compiler (`classifier
//! compiler`): `ClassifierSlice` objects in one namespace, each holding up
//! to [`MAX_SLICE_OBJECTS`] objects of one kind and one namespace, pruned
//! to what the policy compiler reads.
//!
//! A node agent watching every Pod of a large cluster costs the API
//! servers each pod's whole JSON, on every node, for every update,
//! status-only ones included. With slices, the compiler watches the
//! cluster once and writes a slice only when what a node reads of one of
//! its objects changed; the nodes watch the slices.
//!
//! On the node, [`SliceReader`] turns slice events back into the events
//! of the objects they hold, for the same per-kind state the direct watch
//! keeps: the node compiles the same documents either way.
//!
//! - Nothing is delivered before the compiler's marker slice ([`SYNCED`])
//!   exists: slices written from a partial list of the cluster would make
//!   a wrong policy. Until then the agent keeps what it had.
//! - A slice that no longer holds an object deletes it: the compiler
//!   never puts an object in a slice while the nodes may still see it in
//!   another (`compiler::table`), so the node keeps no index of which
//!   slice holds what, only each slice's object names.

use std::collections::{HashMap, HashSet};

use kube::core::{ApiResource, NamespaceResourceScope, ObjectMeta, Resource};
use kube::runtime::watcher::Event;
use serde::Deserialize;
use std::borrow::Cow;
use tracing::info;

use super::ApiObject;

/// The slices' API group, version, kind and plural.
pub const GROUP: &str = "classifier.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "ClassifierSlice";
pub const PLURAL: &str = "classifierslices";

/// Objects per slice at most (as EndpointSlices' 100 endpoints): a
/// change rewrites one slice, so this bounds what one change costs every
/// node.
pub const MAX_SLICE_OBJECTS: usize = 100;

/// Objects per slice by default: one. Every node receives a changed
/// slice whole, so a slice of N objects costs each node N objects per
/// change; a slice of one costs one pruned object and the slice's own
/// metadata (see the book's benchmarks, "What each node costs the API
/// server").
pub const DEFAULT_SLICE_OBJECTS: usize = 1;

/// Bytes of objects per slice at most: an object in etcd is at most
/// 1.5 MiB, and a pod may carry 32 KiB of labels.
pub const MAX_SLICE_BYTES: usize = 512 * 1024;

/// The name of the slice the compiler writes once every slice of a
/// complete list of the cluster is written.
pub const SYNCED: &str = "synced";

/// The marker slice's `spec.kind`.
pub const SYNCED_KIND: &str = "Synced";

/// One `ClassifierSlice` as a node reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct ClassifierSlice {
    pub metadata: ObjectMeta,
    pub spec: SliceSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceSpec {
    /// Of the objects it holds.
    pub api_version: String,
    pub kind: String,
    /// Parsed as the watch parses an object ([`ApiObject`]).
    #[serde(default)]
    pub objects: Vec<ApiObject>,
}

impl Resource for ClassifierSlice {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Owned(format!("{GROUP}/{VERSION}"))
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The objects one slice holds: its kind, and their namespaces and names
/// packed in one string (`ns\0name\0...`), a few bytes per object.
struct Held {
    kind: usize,
    names: Box<str>,
}

impl Held {
    fn of(kind: usize, objects: &[ApiObject]) -> Held {
        let mut names = String::new();
        for obj in objects {
            let (ns, name) = ids(obj);
            names.push_str(ns);
            names.push('\0');
            names.push_str(name);
            names.push('\0');
        }
        Held {
            kind,
            names: names.into(),
        }
    }

    /// (namespace, name) of each object.
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.names.split('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
            .filter(|(ns, name)| !(ns.is_empty() && name.is_empty()))
    }
}

fn ids(obj: &ApiObject) -> (&str, &str) {
    let meta = &obj.metadata;
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// What a node knows of the slices, to turn their events into object
/// events (see the module documentation).
pub struct SliceReader {
    kinds: Vec<ApiResource>,
    /// Slice name -> the objects it holds.
    slices: HashMap<Box<str>, Held>,
    /// Slices of a list in progress.
    listing: Option<Vec<ClassifierSlice>>,
    /// Before the marker: the slices seen, whole, delivered when it comes.
    /// After it only their objects' names are kept (a node holds each
    /// object once, as its document).
    pending: HashMap<String, ClassifierSlice>,
    /// The marker slice has been seen: events are delivered.
    synced: bool,
}

/// An event for the per-kind state of kind `.0`.
pub type KindEvent = (usize, Event<ApiObject>);

impl SliceReader {
    /// A reader delivering events for `kinds` (the watch's kinds, by
    /// index); slices of other kinds are ignored.
    pub fn new(kinds: Vec<ApiResource>) -> Self {
        SliceReader {
            kinds,
            slices: HashMap::new(),
            listing: None,
            pending: HashMap::new(),
            synced: false,
        }
    }

    /// Whether the compiler's marker has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The object events one slice event stands for.
    pub fn handle(&mut self, event: Event<ClassifierSlice>) -> Vec<KindEvent> {
        match event {
            Event::Init => {
                self.listing = Some(Vec::new());
                Vec::new()
            }
            Event::InitApply(slice) => {
                self.listing.get_or_insert_with(Vec::new).push(slice);
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.relisted(listed)
            }
            Event::Apply(slice) => self.applied(slice),
            Event::Delete(slice) => self.deleted(&slice),
        }
    }

    fn kind_of(&self, spec: &SliceSpec) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.kind == spec.kind && k.api_version == spec.api_version)
    }

    /// A complete list of the slices: once the marker has been seen,
    /// every kind is listed again from them (each kind's state delivers
    /// the difference).
    fn relisted(&mut self, listed: Vec<ClassifierSlice>) -> Vec<KindEvent> {
        if self.synced || listed.iter().any(is_marker) {
            self.synced = true;
            self.pending.clear();
            return self.full_list(listed);
        }
        info!("waiting for the central compiler's first complete publication (slice {SYNCED:?})");
        self.pending = listed
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        Vec::new()
    }

    /// Every kind listed from `slices`.
    fn full_list(&mut self, slices: Vec<ClassifierSlice>) -> Vec<KindEvent> {
        self.slices.clear();
        let mut objects: Vec<Vec<ApiObject>> = vec![Vec::new(); self.kinds.len()];
        for slice in slices {
            let Some(kind) = self.kind_of(&slice.spec) else {
                continue;
            };
            let name = slice.metadata.name.unwrap_or_default();
            self.slices
                .insert(name.into(), Held::of(kind, &slice.spec.objects));
            objects[kind].extend(slice.spec.objects);
        }
        let mut out = Vec::new();
        for (kind, objs) in objects.into_iter().enumerate() {
            out.push((kind, Event::Init));
            out.extend(objs.into_iter().map(|o| (kind, Event::InitApply(o))));
            out.push((kind, Event::InitDone));
        }
        out
    }

    fn applied(&mut self, slice: ClassifierSlice) -> Vec<KindEvent> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        if !self.synced {
            let marker = is_marker(&slice);
            self.pending.insert(name, slice);
            if !marker {
                return Vec::new();
            }
            // The compiler has written every slice: deliver them all.
            info!("the central compiler has published a complete cluster");
            self.synced = true;
            let all = std::mem::take(&mut self.pending).into_values().collect();
            return self.full_list(all);
        }
        let Some(kind) = self.kind_of(&slice.spec) else {
            return Vec::new();
        };
        let held = Held::of(kind, &slice.spec.objects);
        let mut out = Vec::new();
        if let Some(old) = self.slices.get(name.as_str()) {
            let now: HashSet<(&str, &str)> = held.iter().collect();
            out.extend(
                old.iter()
                    .filter(|id| !now.contains(id))
                    .map(|(ns, name)| deletion(old.kind, ns, name)),
            );
        }
        self.slices.insert(name.into(), held);
        // Unchanged objects make equal documents, which the kind's state
        // drops.
        out.extend(
            slice
                .spec
                .objects
                .into_iter()
                .map(|obj| (kind, Event::Apply(obj))),
        );
        out
    }

    fn deleted(&mut self, slice: &ClassifierSlice) -> Vec<KindEvent> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        if !self.synced {
            self.pending.remove(&name);
            return Vec::new();
        }
        match self.slices.remove(name.as_str()) {
            Some(old) => old
                .iter()
                .map(|(ns, name)| deletion(old.kind, ns, name))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// The deletion event of object `name` in `ns` of kind `kind`.
fn deletion(kind: usize, ns: &str, name: &str) -> KindEvent {
    let metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: (!ns.is_empty()).then(|| ns.to_owned()),
        ..ObjectMeta::default()
    };
    let obj = ApiObject {
        metadata,
        body: serde_json::Value::Null,
    };
    (kind, Event::Delete(obj))
}

fn is_marker(slice: &ClassifierSlice) -> bool {
    slice.metadata.name.as_deref() == Some(SYNCED) && slice.spec.kind == SYNCED_KIND
}

#[cfg(test)]
mod tests;

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
//! - An object belongs to the slice that last said it holds it: while the
//!   compiler moves an object (a name deleted and created again lands in
//!   another slice), the node may see the new slice first, and the old
//!   slice's removal of it then changes nothing.

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

/// Objects per slice at most (as EndpointSlices' default of 100
/// endpoints): a change rewrites one slice, so this bounds what one
/// change costs every node.
pub const MAX_SLICE_OBJECTS: usize = 100;

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

/// An object's identity across slices: (kind index, namespace, name).
type ObjectKey = (usize, String, String);

/// What a node knows of the slices, to turn their events into object
/// events (see the module documentation).
pub struct SliceReader {
    kinds: Vec<ApiResource>,
    /// Slice name -> the objects it holds.
    slices: HashMap<String, Vec<ObjectKey>>,
    /// Object -> the slices holding it, the last one its owner.
    holders: HashMap<ObjectKey, Vec<String>>,
    /// Slices of a list in progress.
    listing: Option<Vec<ClassifierSlice>>,
    /// Before the marker: the slices seen, whole, delivered when it comes.
    /// After it only their objects' keys are kept (a node holds each
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
            holders: HashMap::new(),
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

    fn key(kind: usize, obj: &ApiObject) -> ObjectKey {
        let meta = &obj.metadata;
        (
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
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
        self.holders.clear();
        let mut objects: Vec<Vec<ApiObject>> = vec![Vec::new(); self.kinds.len()];
        for slice in slices {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let Some(kind) = self.kind_of(&slice.spec) else {
                continue;
            };
            let keys = self.hold(&name, kind, &slice.spec.objects);
            self.slices.insert(name, keys);
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

    /// Records that slice `name` holds `objects`; returns their keys.
    fn hold(&mut self, name: &str, kind: usize, objects: &[ApiObject]) -> Vec<ObjectKey> {
        let mut keys = Vec::with_capacity(objects.len());
        for obj in objects {
            let key = Self::key(kind, obj);
            let holders = self.holders.entry(key.clone()).or_default();
            holders.retain(|h| h != name);
            holders.push(name.to_owned());
            keys.push(key);
        }
        keys
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
        let keys = self.hold(&name, kind, &slice.spec.objects);
        let now: HashSet<&ObjectKey> = keys.iter().collect();
        let gone: Vec<ObjectKey> = self
            .slices
            .get(&name)
            .into_iter()
            .flatten()
            .filter(|k| !now.contains(k))
            .cloned()
            .collect();
        let mut out: Vec<KindEvent> = gone
            .into_iter()
            .filter_map(|key| self.release(&name, key))
            .collect();
        self.slices.insert(name, keys);
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
        let keys = self.slices.remove(&name).unwrap_or_default();
        keys.into_iter()
            .filter_map(|key| self.release(&name, key))
            .collect()
    }

    /// Slice `name` no longer holds `key`: a delete if no other slice
    /// holds it. If another does, its copy stays: that slice's own event
    /// delivered it.
    fn release(&mut self, name: &str, key: ObjectKey) -> Option<KindEvent> {
        let holders = self.holders.get_mut(&key)?;
        holders.retain(|h| h != name);
        if !holders.is_empty() {
            return None;
        }
        self.holders.remove(&key);
        let (kind, namespace, name) = key;
        let metadata = ObjectMeta {
            name: Some(name),
            namespace: (!namespace.is_empty()).then_some(namespace),
            ..ObjectMeta::default()
        };
        let obj = ApiObject {
            metadata,
            body: serde_json::Value::Null,
        };
        Some((kind, Event::Delete(obj)))
    }
}

fn is_marker(slice: &ClassifierSlice) -> bool {
    slice.metadata.name.as_deref() == Some(SYNCED) && slice.spec.kind == SYNCED_KIND
}

#[cfg(test)]
mod tests;

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
//! - A list of the slices goes to each kind's state as it comes, page by
//!   page, as a list of that kind (nothing is held for it here), and ends
//!   only if the compiler's marker slice ([`SYNCED`]) was in it: slices
//!   written from a partial list of the cluster would make a wrong
//!   policy. Until then the agent keeps what it had; when the marker
//!   appears, the slices are listed again ([`SliceReader::take_relist`]).
//! - A slice that no longer holds an object deletes it: the compiler
//!   never puts an object in a slice while the nodes may still see it in
//!   another (`compiler::table`), so the node keeps no index of which
//!   slice holds what, only each slice's object names.

use std::collections::HashSet;

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

/// A slice's name, kind and objects, packed in one string
/// (`name\0kind\0ns\0name\0ns\0name...`): at 100k slices of one
/// object, one allocation of ~60 bytes each. Hashed and compared by the
/// slice's name alone, which it lends as its key.
struct Held(Box<str>);

impl Held {
    fn of(slice: &str, kind: usize, objects: &[ApiObject]) -> Held {
        let mut packed = format!("{slice}\0{kind}");
        for obj in objects {
            let (ns, name) = ids(obj);
            packed.push('\0');
            packed.push_str(ns);
            packed.push('\0');
            packed.push_str(name);
        }
        Held(packed.into())
    }

    fn name(&self) -> &str {
        self.0.split('\0').next().unwrap_or_default()
    }

    fn kind(&self) -> usize {
        let kind = self.0.split('\0').nth(1).unwrap_or_default();
        kind.parse().unwrap_or(usize::MAX)
    }

    /// (namespace, name) of each object.
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split('\0').skip(2);
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }
}

impl std::hash::Hash for Held {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Held {}

impl std::borrow::Borrow<str> for Held {
    fn borrow(&self) -> &str {
        self.name()
    }
}

/// An object's namespace ("" for none) and name.
pub(crate) fn ids(obj: &ApiObject) -> (&str, &str) {
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
    slices: HashSet<Held>,
    /// The slices of a list in progress, and whether the marker was one.
    listing: Option<(HashSet<Held>, bool)>,
    /// A list has ended with the marker: events are delivered.
    synced: bool,
    /// The marker appeared after a list without it: list again.
    relist: bool,
}

/// An event for the per-kind state of kind `.0`.
pub type ObjectEvent = (usize, Event<ApiObject>);

impl SliceReader {
    /// A reader delivering events for `kinds` (the watch's kinds, by
    /// index); slices of other kinds are ignored.
    pub fn new(kinds: Vec<ApiResource>) -> Self {
        SliceReader {
            kinds,
            slices: HashSet::new(),
            listing: None,
            synced: false,
            relist: false,
        }
    }

    /// Whether a list with the compiler's marker has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether the watch must list the slices again (once; see the
    /// module documentation).
    pub fn take_relist(&mut self) -> bool {
        std::mem::take(&mut self.relist)
    }

    /// The object events one slice event stands for.
    pub fn handle(&mut self, event: Event<ClassifierSlice>) -> Vec<ObjectEvent> {
        match event {
            Event::Init => {
                self.listing = Some((HashSet::new(), false));
                (0..self.kinds.len()).map(|k| (k, Event::Init)).collect()
            }
            Event::InitApply(slice) => self.listed(slice),
            Event::InitDone => self.list_done(),
            Event::Apply(slice) => self.applied(slice),
            Event::Delete(slice) => self.deleted(&slice),
        }
    }

    fn kind_of(&self, spec: &SliceSpec) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.kind == spec.kind && k.api_version == spec.api_version)
    }

    /// A slice of a list: its objects go to their kind's list at once.
    fn listed(&mut self, slice: ClassifierSlice) -> Vec<ObjectEvent> {
        let kind = self.kind_of(&slice.spec);
        let Some((held, marker)) = self.listing.as_mut() else {
            return Vec::new();
        };
        if is_marker(&slice) {
            *marker = true;
            return Vec::new();
        }
        let Some(kind) = kind else {
            return Vec::new();
        };
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        held.replace(Held::of(name, kind, &slice.spec.objects));
        slice
            .spec
            .objects
            .into_iter()
            .map(|o| (kind, Event::InitApply(o)))
            .collect()
    }

    /// A list ended: each kind's list ends too, if the marker was in it
    /// (or an earlier list had it: the compiler is publishing).
    fn list_done(&mut self) -> Vec<ObjectEvent> {
        let Some((held, marker)) = self.listing.take() else {
            return Vec::new();
        };
        if !(marker || self.synced) {
            info!(
                "waiting for the central compiler's first complete publication (slice {SYNCED:?})"
            );
            return Vec::new();
        }
        self.synced = true;
        self.slices = held;
        (0..self.kinds.len())
            .map(|k| (k, Event::InitDone))
            .collect()
    }

    fn applied(&mut self, slice: ClassifierSlice) -> Vec<ObjectEvent> {
        if !self.synced {
            if is_marker(&slice) {
                info!("the central compiler has published a complete cluster: listing its slices");
                self.relist = true;
            }
            return Vec::new();
        }
        let Some(kind) = self.kind_of(&slice.spec) else {
            return Vec::new();
        };
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        let held = Held::of(name, kind, &slice.spec.objects);
        let mut out = Vec::new();
        if let Some(old) = self.slices.get(name) {
            let now: HashSet<(&str, &str)> = held.iter().collect();
            out.extend(
                old.iter()
                    .filter(|id| !now.contains(id))
                    .map(|(ns, name)| deletion(old.kind(), ns, name)),
            );
        }
        self.slices.replace(held);
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

    fn deleted(&mut self, slice: &ClassifierSlice) -> Vec<ObjectEvent> {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        match self.slices.take(name).filter(|_| self.synced) {
            Some(old) => old
                .iter()
                .map(|(ns, name)| deletion(old.kind(), ns, name))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// The deletion event of object `name` in `ns` of kind `kind`.
fn deletion(kind: usize, ns: &str, name: &str) -> ObjectEvent {
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

/// The marker slice, as the compiler writes it in `namespace`.
pub fn marker(namespace: &str) -> serde_json::Value {
    let api_version = format!("{GROUP}/{VERSION}");
    serde_json::json!({
        "apiVersion": api_version,
        "kind": KIND,
        "metadata": {"name": SYNCED, "namespace": namespace},
        "spec": {"apiVersion": api_version, "kind": SYNCED_KIND, "objects": []},
    })
}

fn is_marker(slice: &ClassifierSlice) -> bool {
    slice.metadata.name.as_deref() == Some(SYNCED) && slice.spec.kind == SYNCED_KIND
}

#[cfg(test)]
mod tests;

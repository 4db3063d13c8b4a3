//! Which slice holds which object, and which slices must be written.
//!
//! Objects of one kind and one namespace share slices of at most
//! [`Limits::objects`] objects (1 by default, at most
//! [`MAX_SLICE_OBJECTS`]) and [`MAX_SLICE_BYTES`] bytes. An object stays
//! in its slice until it is deleted (so a change rewrites the one slice
//! holding it), a new object takes the first slice of its kind and
//! namespace with room, and a slice left empty is deleted. One namespace's
//! objects never share a slice with another's: a tenant's churn rewrites
//! only its own slices.
//!
//! **An object never appears in a slice while the nodes may still see it
//! in another.** A removed object keeps its place (a tombstone) until the
//! write of its slice has succeeded ([`SliceTable::written`]): if it comes
//! back before, it goes back there; after, any slice it goes to is
//! written after its old slice's write was committed, and the API server
//! delivers a collection's events in commit order. So a node can take a
//! slice no longer holding an object as that object's deletion, without
//! an index of which slice holds what.
//!
//! An object is held as the JSON text the nodes read (pruned, without its
//! `resourceVersion`): an update that changes nothing of it, a status-only
//! update of a pod for instance, writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::sources::kubernetes::slices::{
    DEFAULT_SLICE_OBJECTS, MAX_SLICE_BYTES, MAX_SLICE_OBJECTS,
};

/// A kind as slices name it.
#[derive(Clone, Debug)]
pub struct SliceKind {
    pub kind: String,
    pub api_version: String,
    pub plural: String,
}

/// A slice's identity: (kind index, namespace, index among the kind's and
/// namespace's slices).
type SliceId = (usize, Arc<str>, u32);

/// An object's identity: (kind index, namespace, name).
type ObjectId = (usize, Arc<str>, Box<str>);

#[derive(Default)]
struct Slice {
    /// Name -> the object's JSON.
    objects: BTreeMap<Box<str>, Box<str>>,
    bytes: usize,
    /// Objects removed since the slice was last written: their places are
    /// kept for them until it is (see the module documentation).
    tombstones: Vec<Box<str>>,
}

/// How much one slice holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub objects: usize,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            objects: DEFAULT_SLICE_OBJECTS,
            bytes: MAX_SLICE_BYTES,
        }
    }
}

impl Slice {
    /// Whether an object of `bytes` fits (an empty slice takes any one).
    fn has_room(&self, bytes: usize, limits: Limits) -> bool {
        let taken = self.objects.len() + self.tombstones.len();
        taken == 0
            || (taken < limits.objects.clamp(1, MAX_SLICE_OBJECTS)
                && self.bytes + bytes <= limits.bytes)
    }
}

/// An object's JSON as a slice holds it: without its resourceVersion,
/// apiVersion and kind (the slice says those; a list's items lack them,
/// a watch event's have them), so that equal objects are equal texts.
pub fn object_text(mut body: Value) -> String {
    if let Some(map) = body.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
    }
    body.to_string()
}

/// One write the nodes' view needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Create or replace the slice `name` with `body` (a whole
    /// `ClassifierSlice`, JSON).
    Put { name: String, body: String },
    /// Delete the slice `name`.
    Delete { name: String },
}

impl Write {
    pub fn name(&self) -> &str {
        match self {
            Write::Put { name, .. } | Write::Delete { name } => name,
        }
    }
}

/// The compiler's view of every slice (see the module documentation).
pub struct SliceTable {
    kinds: Vec<SliceKind>,
    /// The namespace the slices live in.
    home: String,
    limits: Limits,
    slices: BTreeMap<SliceId, Slice>,
    placed: HashMap<ObjectId, u32>,
    dirty: BTreeSet<SliceId>,
    /// Per kind being listed again: the objects the list has brought.
    relisting: HashMap<usize, HashSet<ObjectId>>,
    /// Namespace strings, shared by every id.
    namespaces: HashSet<Arc<str>>,
}

impl SliceTable {
    pub fn new(kinds: Vec<SliceKind>, home: impl Into<String>) -> Self {
        SliceTable {
            kinds,
            home: home.into(),
            limits: Limits::default(),
            slices: BTreeMap::new(),
            placed: HashMap::new(),
            dirty: BTreeSet::new(),
            relisting: HashMap::new(),
            namespaces: HashSet::new(),
        }
    }

    /// The same table with other limits per slice (before any object).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Objects held.
    pub fn objects(&self) -> usize {
        self.placed.len()
    }

    /// Slices held.
    pub fn slices(&self) -> usize {
        self.slices.len()
    }

    fn namespace(&mut self, ns: &str) -> Arc<str> {
        if let Some(ns) = self.namespaces.get(ns) {
            return ns.clone();
        }
        let ns: Arc<str> = ns.into();
        self.namespaces.insert(ns.clone());
        ns
    }

    /// The object `name` of kind `kind` in `ns` ("" for a cluster-scoped
    /// kind) is `json` now.
    pub fn upsert(&mut self, kind: usize, ns: &str, name: &str, json: String) {
        let ns = self.namespace(ns);
        let id: ObjectId = (kind, ns.clone(), name.into());
        if let Some(seen) = self.relisting.get_mut(&kind) {
            seen.insert(id.clone());
        }
        if let Some(&index) = self.placed.get(&id) {
            let slice_id = (kind, ns, index);
            let slice = self.slices.get_mut(&slice_id).expect("placed in a slice");
            let old = slice.objects.get_mut(name).expect("held by its slice");
            if **old != *json {
                slice.bytes = slice.bytes - old.len() + json.len();
                *old = json.into();
                self.dirty.insert(slice_id);
            }
            return;
        }
        let index = self
            .tombstone_of(&id)
            .unwrap_or_else(|| self.room_for(kind, &ns, json.len()));
        let slice_id = (kind, ns, index);
        let slice = self.slices.entry(slice_id.clone()).or_default();
        slice.tombstones.retain(|t| **t != *name);
        slice.bytes += json.len();
        slice.objects.insert(name.into(), json.into());
        self.placed.insert(id, index);
        self.dirty.insert(slice_id);
    }

    /// The slice that held `id` and has not been written since.
    fn tombstone_of(&self, (kind, ns, name): &ObjectId) -> Option<u32> {
        let from = (*kind, ns.clone(), 0);
        self.slices
            .range(from..)
            .take_while(|((k, n, _), _)| k == kind && n == ns)
            .find(|(_, slice)| slice.tombstones.iter().any(|t| t == name))
            .map(|((_, _, index), _)| *index)
    }

    /// The first slice of `kind` in `ns` with room for `bytes` more, or
    /// the first index none has.
    fn room_for(&self, kind: usize, ns: &Arc<str>, bytes: usize) -> u32 {
        let mut next = 0;
        let from = (kind, ns.clone(), 0);
        for ((k, n, index), slice) in self.slices.range(from..) {
            if *k != kind || n != ns {
                break;
            }
            if slice.has_room(bytes, self.limits) {
                return *index;
            }
            if *index != next {
                return next;
            }
            next = index + 1;
        }
        next
    }

    /// The object is gone.
    pub fn remove(&mut self, kind: usize, ns: &str, name: &str) {
        let ns = self.namespace(ns);
        let id: ObjectId = (kind, ns.clone(), name.into());
        if let Some(index) = self.placed.remove(&id) {
            let slice_id = (kind, ns, index);
            let slice = self.slices.get_mut(&slice_id).expect("placed in a slice");
            if let Some(old) = slice.objects.remove(name) {
                slice.bytes -= old.len();
            }
            slice.tombstones.push(name.into());
            self.dirty.insert(slice_id);
        }
    }

    /// A list of `kind` begins: objects it does not bring are removed
    /// when it ends ([`SliceTable::end_list`]).
    pub fn begin_list(&mut self, kind: usize) {
        self.relisting.insert(kind, HashSet::new());
    }

    /// A list of `kind` ended: what it did not bring is gone.
    pub fn end_list(&mut self, kind: usize) {
        let Some(seen) = self.relisting.remove(&kind) else {
            return;
        };
        let gone: Vec<ObjectId> = self
            .placed
            .keys()
            .filter(|id| id.0 == kind && !seen.contains(*id))
            .cloned()
            .collect();
        for (kind, ns, name) in gone {
            self.remove(kind, &ns, &name);
        }
    }

    /// Takes in a slice written before (by an earlier compiler), so that
    /// only what differs from it is written again. Its objects keep their
    /// slice; a slice over the limits is written again split.
    pub fn adopt(&mut self, name: &str, objects: Vec<(String, String)>) {
        let Some((kind, ns, index)) = self.parse_name(name) else {
            return;
        };
        let ns = self.namespace(&ns);
        let slice_id = (kind, ns.clone(), index);
        let mut slice = Slice::default();
        for (obj_name, json) in objects {
            let id: ObjectId = (kind, ns.clone(), obj_name.as_str().into());
            if self.placed.contains_key(&id) || !slice.has_room(json.len(), self.limits) {
                continue;
            }
            slice.bytes += json.len();
            slice.objects.insert(obj_name.into(), json.into());
            self.placed.insert(id, index);
        }
        self.slices.insert(slice_id, slice);
    }

    /// The writes that bring the slices to what the table holds. The
    /// caller makes them (in any order), then reports each as
    /// [`written`](SliceTable::written) or to [`retry`](SliceTable::retry),
    /// before it takes the next writes.
    pub fn take_writes(&mut self) -> Vec<Write> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut writes = Vec::with_capacity(dirty.len());
        for id in dirty {
            let name = self.slice_name(&id);
            match self.slices.get(&id) {
                Some(slice) if !slice.objects.is_empty() => {
                    let body = self.body(&id, &name, slice);
                    writes.push(Write::Put { name, body });
                }
                _ => writes.push(Write::Delete { name }),
            }
        }
        writes
    }

    /// The write of slice `name` succeeded: the places of what it no
    /// longer holds are free, and an empty slice is gone.
    pub fn written(&mut self, name: &str) {
        let Some(id) = self.slice_id(name) else {
            return;
        };
        if let Some(slice) = self.slices.get_mut(&id) {
            slice.tombstones.clear();
            if slice.objects.is_empty() && !self.dirty.contains(&id) {
                self.slices.remove(&id);
            }
        }
    }

    /// The write of slice `name` failed: it is made again by the next
    /// [`take_writes`](SliceTable::take_writes); its tombstones stay.
    pub fn retry(&mut self, name: &str) {
        if let Some(id) = self.slice_id(name) {
            self.dirty.insert(id);
        }
    }

    fn slice_id(&mut self, name: &str) -> Option<SliceId> {
        let (kind, ns, index) = self.parse_name(name)?;
        Some((kind, self.namespace(&ns), index))
    }

    /// Whether writes are waiting.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// `<plural>.<namespace>.<index>`, or `<plural>.<index>` for a
    /// cluster-scoped kind (names and namespaces are DNS labels or
    /// subdomains, so the name is one too).
    fn slice_name(&self, (kind, ns, index): &SliceId) -> String {
        let plural = &self.kinds[*kind].plural;
        if ns.is_empty() {
            format!("{plural}.{index}")
        } else {
            format!("{plural}.{ns}.{index}")
        }
    }

    /// The inverse of [`SliceTable::slice_name`], for the kinds known.
    fn parse_name(&self, name: &str) -> Option<(usize, String, u32)> {
        let (plural, rest) = name.split_once('.')?;
        let kind = self.kinds.iter().position(|k| k.plural == plural)?;
        let (ns, index) = match rest.rsplit_once('.') {
            Some((ns, index)) => (ns.to_owned(), index),
            None => (String::new(), rest),
        };
        Some((kind, ns, index.parse().ok()?))
    }

    /// The whole `ClassifierSlice`, its objects' texts as they are.
    fn body(&self, (kind, ns, _): &SliceId, name: &str, slice: &Slice) -> String {
        use crate::sources::kubernetes::slices::{GROUP, KIND, VERSION};
        let k = &self.kinds[*kind];
        let head = serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": self.home,
                "labels": {
                    "classifier.dev/kind": k.kind,
                    "classifier.dev/namespace": &**ns,
                },
            },
            "spec": {"apiVersion": k.api_version, "kind": k.kind},
        })
        .to_string();
        let mut body = String::with_capacity(head.len() + slice.bytes + slice.objects.len() + 16);
        body.push_str(&head[..head.len() - 2]); // `}}`: the spec's and the object's
        body.push_str(",\"objects\":[");
        for (i, json) in slice.objects.values().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(json);
        }
        body.push_str("]}}");
        body
    }
}

#[cfg(test)]
mod tests;

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
//! Placing an object costs the same whatever the number of slices: each
//! kind and namespace keeps the indices of its slices with room and of
//! the indices no slice has.
//!
//! An object is held as the JSON text the nodes read (pruned, without its
//! `resourceVersion`): an update that changes nothing of it, a status-only
//! update of a pod for instance, writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kube::core::ApiResource;
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

impl From<&ApiResource> for SliceKind {
    fn from(ar: &ApiResource) -> Self {
        SliceKind {
            kind: ar.kind.clone(),
            api_version: ar.api_version.clone(),
            plural: ar.plural.clone(),
        }
    }
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
    /// Places taken, by objects and tombstones.
    fn taken(&self) -> usize {
        self.objects.len() + self.tombstones.len()
    }

    /// Whether an object of `bytes` fits (an empty slice takes any one).
    fn fits(&self, bytes: usize, limits: Limits) -> bool {
        self.taken() == 0 || self.bytes + bytes <= limits.bytes
    }
}

/// The slices of one kind and namespace.
#[derive(Default)]
struct Group {
    /// Indices of its slices with a place free.
    with_room: BTreeSet<u32>,
    /// Indices below `next` no slice has.
    gaps: BTreeSet<u32>,
    next: u32,
}

impl Group {
    /// The first index no slice has.
    fn new_index(&mut self) -> u32 {
        self.gaps.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// A slice at `index` exists (adopted).
    fn taken(&mut self, index: u32) {
        if index >= self.next {
            self.gaps.extend(self.next..index);
            self.next = index + 1;
        } else {
            self.gaps.remove(&index);
        }
    }
}

/// Slices with a place free that a new object tries before a new slice
/// is made (they may lack the bytes for it).
const ROOM_TRIES: usize = 4;

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
    /// `ClassifierSlice`, JSON, without a resourceVersion).
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
    slices: HashMap<SliceId, Slice>,
    groups: HashMap<(usize, Arc<str>), Group>,
    placed: HashMap<ObjectId, u32>,
    /// Removed objects whose slice is not written yet, and that slice.
    tombstones: HashMap<ObjectId, u32>,
    dirty: BTreeSet<SliceId>,
    /// Slices to write again once another is written (an adopted object
    /// two slices held: see [`SliceTable::adopt`]).
    after: HashMap<SliceId, Vec<SliceId>>,
    /// Per kind being listed again: the objects the list has brought.
    relisting: HashMap<usize, HashSet<ObjectId>>,
    /// Namespace strings, shared by every id; one goes with its last user.
    namespaces: HashSet<Arc<str>>,
}

impl SliceTable {
    pub fn new(kinds: Vec<SliceKind>, home: impl Into<String>) -> Self {
        SliceTable {
            kinds,
            home: home.into(),
            limits: Limits::default(),
            slices: HashMap::new(),
            groups: HashMap::new(),
            placed: HashMap::new(),
            tombstones: HashMap::new(),
            dirty: BTreeSet::new(),
            after: HashMap::new(),
            relisting: HashMap::new(),
            namespaces: HashSet::new(),
        }
    }

    /// The same table with other limits per slice (before any object).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Limits {
            objects: limits.objects.clamp(1, MAX_SLICE_OBJECTS),
            ..limits
        };
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

    /// Distinct namespaces held (for tests: they must go with their
    /// objects).
    pub fn namespaces(&self) -> usize {
        self.namespaces.len()
    }

    fn intern(&mut self, ns: &str) -> Arc<str> {
        if let Some(ns) = self.namespaces.get(ns) {
            return ns.clone();
        }
        let ns: Arc<str> = ns.into();
        self.namespaces.insert(ns.clone());
        ns
    }

    /// Forgets `ns` once nothing but the set and the caller's `ns` hold it.
    fn release(&mut self, ns: Arc<str>) {
        if Arc::strong_count(&ns) <= 2 {
            self.namespaces.remove(&ns);
        }
    }

    /// Whether slice `id` has a place free, kept in its group's index.
    fn refresh(&mut self, id: &SliceId) {
        let room = self
            .slices
            .get(id)
            .is_some_and(|s| s.taken() < self.limits.objects);
        let group = self.groups.entry((id.0, id.1.clone())).or_default();
        if room {
            group.with_room.insert(id.2);
        } else {
            group.with_room.remove(&id.2);
        }
    }

    /// The object `name` of kind `kind` in `ns` ("" for a cluster-scoped
    /// kind) is `json` now.
    pub fn upsert(&mut self, kind: usize, ns: &str, name: &str, json: String) {
        let ns = self.intern(ns);
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
        let index = match self.tombstones.remove(&id) {
            Some(index) => {
                let slice = self.slices.get_mut(&(kind, ns.clone(), index));
                let slice = slice.expect("a tombstone's slice is kept until written");
                slice.tombstones.retain(|t| **t != *name);
                index
            }
            None => self.room_for(kind, &ns, json.len()),
        };
        let slice_id = (kind, ns, index);
        let slice = self.slices.entry(slice_id.clone()).or_default();
        slice.bytes += json.len();
        slice.objects.insert(name.into(), json.into());
        self.placed.insert(id, index);
        self.refresh(&slice_id);
        self.dirty.insert(slice_id);
    }

    /// A slice of `kind` in `ns` with a place and the bytes for `bytes`
    /// more, among the first few with a place, or a new index.
    fn room_for(&mut self, kind: usize, ns: &Arc<str>, bytes: usize) -> u32 {
        let group = self.groups.entry((kind, ns.clone())).or_default();
        let fitting = group.with_room.iter().take(ROOM_TRIES).copied().find(|&i| {
            self.slices
                .get(&(kind, ns.clone(), i))
                .is_some_and(|s| s.fits(bytes, self.limits))
        });
        fitting.unwrap_or_else(|| group.new_index())
    }

    /// The object is gone.
    pub fn remove(&mut self, kind: usize, ns: &str, name: &str) {
        let Some(ns) = self.namespaces.get(ns).cloned() else {
            return;
        };
        let id: ObjectId = (kind, ns.clone(), name.into());
        if let Some(index) = self.placed.remove(&id) {
            let slice_id = (kind, ns, index);
            let slice = self.slices.get_mut(&slice_id).expect("placed in a slice");
            if let Some(old) = slice.objects.remove(name) {
                slice.bytes -= old.len();
            }
            slice.tombstones.push(name.into());
            self.tombstones.insert(id, index);
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
    /// only what differs from it is written again. It is kept as it is,
    /// over the limits or not (objects go as they churn). An object an
    /// earlier slice already holds is written out of this one, and the
    /// earlier one written again after it: nodes take a slice no longer
    /// holding an object as its deletion (so they briefly lack it: an
    /// object in two slices only comes from slices written otherwise).
    pub fn adopt(&mut self, name: &str, objects: Vec<(String, String)>) {
        let Some((kind, ns, index)) = self.parse_name(name) else {
            return;
        };
        let ns = self.intern(&ns);
        let slice_id = (kind, ns.clone(), index);
        let mut slice = Slice::default();
        for (obj_name, json) in objects {
            let id: ObjectId = (kind, ns.clone(), obj_name.as_str().into());
            if let Some(&first) = self.placed.get(&id) {
                let first = (kind, ns.clone(), first);
                self.after.entry(slice_id.clone()).or_default().push(first);
                self.dirty.insert(slice_id.clone());
                continue;
            }
            slice.bytes += json.len();
            slice.objects.insert(obj_name.into(), json.into());
            self.placed.insert(id, index);
        }
        if slice.objects.is_empty() {
            self.dirty.insert(slice_id.clone());
        }
        self.groups.entry((kind, ns)).or_default().taken(index);
        self.slices.insert(slice_id.clone(), slice);
        self.refresh(&slice_id);
    }

    /// The writes that bring the slices to what the table holds. The
    /// caller makes them (in any order), then reports each as
    /// [`written`](SliceTable::written) or to [`retry`](SliceTable::retry),
    /// before it takes the next writes.
    pub fn take_writes(&mut self) -> Vec<Write> {
        self.take_some_writes(usize::MAX)
    }

    /// At most `max` of [`take_writes`](SliceTable::take_writes)'s, so
    /// that a first publication does not build every slice at once.
    pub fn take_some_writes(&mut self, max: usize) -> Vec<Write> {
        let mut writes = Vec::new();
        while writes.len() < max {
            let Some(id) = self.dirty.pop_first() else {
                break;
            };
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
        for again in self.after.remove(&id).unwrap_or_default() {
            self.dirty.insert(again);
        }
        let Some(slice) = self.slices.get_mut(&id) else {
            return;
        };
        for name in std::mem::take(&mut slice.tombstones) {
            self.tombstones.remove(&(id.0, id.1.clone(), name));
        }
        if slice.objects.is_empty() && !self.dirty.contains(&id) {
            self.slices.remove(&id);
            let (kind, ns, index) = id;
            let key = (kind, ns);
            if let Some(group) = self.groups.get_mut(&key) {
                group.with_room.remove(&index);
                group.gaps.insert(index);
                if group.gaps.len() as u32 == group.next {
                    self.groups.remove(&key);
                }
            }
            self.release(key.1);
            return;
        }
        self.refresh(&id);
    }

    /// The write of slice `name` failed: it is made again by the next
    /// [`take_writes`](SliceTable::take_writes); its tombstones stay.
    pub fn retry(&mut self, name: &str) {
        if let Some(id) = self.slice_id(name) {
            self.dirty.insert(id);
        }
    }

    /// Whether writes are waiting.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The id of a slice the table has, by name.
    fn slice_id(&self, name: &str) -> Option<SliceId> {
        let (kind, ns, index) = self.parse_name(name)?;
        let ns = self.namespaces.get(ns.as_str())?.clone();
        Some((kind, ns, index))
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

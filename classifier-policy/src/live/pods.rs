//! Pod UID -> namespace, from every Pod document in force: the agent ties
//! each pod's cgroup to its namespace's scope with it.
//!
//! The map shares the documents' strings (a UID, an interned namespace)
//! rather than copying them: at 100k pods two `String`s per pod in a
//! `BTreeMap` were 16 MiB. It also counts the Pod documents that carry
//! each UID (the API server never gives two the same; a change that makes
//! or ends such a pair is global, see the module documentation).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::sources::document::Document;

/// The namespace of each pod UID in force.
#[derive(Clone, Debug, Default)]
pub struct PodNamespaces {
    by_uid: HashMap<Arc<str>, Pods>,
}

#[derive(Clone, Debug)]
struct Pods {
    /// The namespace of the last Pod document with the UID (in key order
    /// after a full compile, as the compiler records them).
    namespace: Arc<str>,
    /// Pod documents carrying the UID.
    count: u32,
}

/// A Pod without `metadata.namespace` is in this one.
const DEFAULT_NAMESPACE: &str = "default";

fn namespace_of(doc: &Document) -> Arc<str> {
    doc.namespace
        .clone()
        .unwrap_or_else(|| crate::sources::intern::intern(DEFAULT_NAMESPACE))
}

impl PodNamespaces {
    /// The namespace of the pod with this UID.
    pub fn get(&self, uid: &str) -> Option<&str> {
        self.by_uid.get(uid).map(|p| &*p.namespace)
    }

    pub fn contains_key(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    /// The namespace of every UID (a namespace as often as it has UIDs).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.by_uid.values().map(|p| &*p.namespace)
    }

    /// (UID, namespace), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_uid.iter().map(|(u, p)| (&**u, &*p.namespace))
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// As an ordered map of owned strings (what [`crate::model::Policy`]
    /// keeps).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(u, n)| (u.to_owned(), n.to_owned()))
            .collect()
    }

    /// Pod documents carrying `uid`.
    pub(super) fn count(&self, uid: &str) -> u32 {
        self.by_uid.get(uid).map_or(0, |p| p.count)
    }

    /// Counts `doc` (a Pod with a UID), its namespace now the UID's.
    pub(super) fn add(&mut self, doc: &Document) {
        let Some(uid) = &doc.uid else { return };
        let namespace = namespace_of(doc);
        self.by_uid
            .entry(Arc::clone(uid))
            .and_modify(|p| {
                p.count += 1;
                p.namespace = Arc::clone(&namespace);
            })
            .or_insert(Pods {
                namespace,
                count: 1,
            });
    }

    /// No longer counts `doc`; its UID goes with its last document.
    pub(super) fn remove(&mut self, doc: &Document) {
        let Some(uid) = &doc.uid else { return };
        if let Some(p) = self.by_uid.get_mut(&**uid) {
            p.count -= 1;
            if p.count == 0 {
                self.by_uid.remove(&**uid);
            }
        }
    }
}

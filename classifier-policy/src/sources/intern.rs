//! One shared copy of the strings that many documents repeat: kinds, API
//! versions, namespaces, and a pod's labels, named ports and owner, which
//! every pod of one ReplicaSet has the same.
//!
//! At 100k pods those are about half of what the documents hold; shared,
//! they cost one copy per distinct value. The table holds every distinct
//! value some document still uses: a value only the table holds is
//! dropped once the table has doubled since it was last swept, so it
//! stays within twice what is in use (what a tenant's objects put in it
//! leaves with them).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

/// A table is swept when it reaches this many values at the least.
const MIN_SWEEP: usize = 1024;

struct Table {
    values: HashSet<Arc<str>>,
    /// Swept when it holds this many.
    sweep_at: usize,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Mutex::new(Table {
            values: HashSet::new(),
            sweep_at: MIN_SWEEP,
        })
    })
}

/// The shared copy of `text`.
pub fn intern(text: &str) -> Arc<str> {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = t.values.get(text) {
        return Arc::clone(shared);
    }
    if t.values.len() >= t.sweep_at {
        // Only the table holds it: no document uses it any more (a copy
        // is only ever made under the lock, so none can appear meanwhile).
        t.values.retain(|v| Arc::strong_count(v) > 1);
        t.sweep_at = (2 * t.values.len()).max(MIN_SWEEP);
    }
    let shared: Arc<str> = Arc::from(text);
    t.values.insert(Arc::clone(&shared));
    shared
}

/// How many values the table holds now (tests).
#[cfg(test)]
fn held() -> usize {
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_is_one_copy() {
        let a = intern("app=web,tier=front (interning test)");
        let b = intern(&String::from("app=web,tier=front (interning test)"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "app=web,tier=front (interning test)");
        assert!(!Arc::ptr_eq(&a, &intern("app=db (interning test)")));
    }

    #[test]
    fn values_no_document_uses_are_swept() {
        // Many values used once and dropped: the table does not keep
        // them all (other tests may hold a few of their own meanwhile).
        let kept = intern("still used (sweep test)");
        for i in 0..20 * MIN_SWEEP {
            drop(intern(&format!("gone {i} (sweep test)")));
        }
        assert!(held() < 4 * MIN_SWEEP, "{} values held", held());
        assert!(Arc::ptr_eq(&kept, &intern("still used (sweep test)")));
    }
}

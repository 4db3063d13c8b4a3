//! The differential property: after any sequence of changes, the live
//! policy's kernel entries equal a full compile's of the same documents,
//! rule for rule (ids compared through the rule each names).

use std::collections::BTreeMap;

use super::testing::{assert_matches_full, document, random_change, random_document, Rng};
use super::*;

#[test]
fn incremental_state_equals_a_full_compile_after_any_changes() {
    let cases: u64 = std::env::var("LIVE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut incremental = 0;
    for seed in 0..cases {
        let mut rng = Rng::new(seed);
        let mut live = LivePolicy::new(Options::default()).unwrap();
        let mut before = live.compiled();
        // The compiled policy at the last full compile, and the deltas since.
        let (mut base, mut pending) = (before.clone(), Vec::<Delta>::new());
        for step in 0..40 {
            let batch: Vec<Change> = (0..1 + rng.below(3))
                .map(|_| random_change(&mut rng, &live))
                .collect();
            let described: Vec<String> = batch
                .iter()
                .map(|c| match c {
                    Change::Apply(d) => format!("apply {}", d.describe()),
                    Change::Delete(k) => format!("delete {:?}", k.as_str()),
                })
                .collect();
            let out = live.apply(batch).unwrap();
            let context = format!("seed {seed} step {step} ({described:?})");
            assert_matches_full(&live, &context);
            let now = live.compiled();
            if !out.full {
                // The delta is exactly the difference: what the maps get,
                // applied one by one or merged with the ones before it.
                let mut merged = before.clone();
                pending.push(out.delta.clone());
                out.delta.apply_to(&mut before);
                assert_eq!(before, now, "{context}: the delta");
                Delta::apply_all(std::slice::from_ref(&out.delta), &mut merged);
                assert_eq!(merged, now, "{context}: the delta, merged");
                let mut again = base.clone();
                Delta::apply_all(&pending, &mut again);
                assert_eq!(
                    again, now,
                    "{context}: the deltas since the last full compile, merged"
                );
            } else {
                base = now.clone();
                pending.clear();
            }
            before = now;
        }
        incremental += live.incremental_updates();
    }
    // The property must exercise the incremental path, not only fallbacks.
    assert!(
        incremental > cases * 10,
        "only {incremental} incremental updates"
    );
}

#[test]
fn ids_do_not_shift_when_another_object_changes() {
    let pod = |name: &str, ip: &str, ports: &str| {
        document(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: a\n  annotations: {{config.linkerd.io/opaque-ports: \"{ports}\"}}\nstatus:\n  phase: Running\n  podIP: {ip}\n"
        ))
    };
    let mut live = LivePolicy::new(Options::default()).unwrap();
    live.apply([
        Change::Apply(pod("p-2", "10.0.0.2", "3306")),
        Change::Apply(pod("p-3", "10.0.0.3", "3306")),
    ])
    .unwrap();
    let ids = |live: &LivePolicy| -> BTreeMap<String, u32> {
        live.rules()
            .map(|r| (format!("{} {:?}", r.origin, r.protocol), r.id))
            .collect()
    };
    let before = ids(&live);
    // A pod that sorts first arrives, and p-3 changes its ports.
    let out = live
        .apply([
            Change::Apply(pod("p-1", "10.0.0.1", "3306")),
            Change::Apply(pod("p-3", "10.0.0.3", "5432")),
        ])
        .unwrap();
    assert!(!out.full);
    let after = ids(&live);
    for (rule, id) in &before {
        assert_eq!(after.get(rule), Some(id), "{rule}");
    }
    assert_matches_full(&live, "after");
    // Only the changed addresses were re-derived.
    assert_eq!(out.addresses, 2);
}

#[test]
fn global_changes_compile_everything_and_keep_ids() {
    let mut live = LivePolicy::new(Options::default()).unwrap();
    live.apply([Change::Apply(document(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n  annotations: {config.linkerd.io/opaque-ports: \"3306\"}\nstatus:\n  phase: Running\n  podIP: 10.0.0.1\n",
    ))])
    .unwrap();
    let ids: Vec<u32> = live.rules().map(|r| r.id).collect();
    let out = live
        .apply([Change::Apply(document(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  annotations: {config.linkerd.io/opaque-ports: \"5432\"}\n",
        ))])
        .unwrap();
    assert!(out.full);
    assert_eq!(live.full_compiles(), 1);
    let again: Vec<u32> = live.rules().map(|r| r.id).collect();
    assert_eq!(
        ids, again,
        "a full compile keeps the ids of unchanged objects"
    );
    assert_matches_full(&live, "namespace annotated");
}

#[test]
fn a_contested_address_falls_back_and_comes_back() {
    let pod = |name: &str| {
        document(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: a\n  annotations: {{config.linkerd.io/opaque-ports: \"3306\"}}\nstatus:\n  phase: Running\n  podIP: 10.0.0.1\n"
        ))
    };
    let mut live = LivePolicy::new(Options::default()).unwrap();
    assert!(!live.apply([Change::Apply(pod("one"))]).unwrap().full);
    assert!(live.apply([Change::Apply(pod("two"))]).unwrap().full);
    assert_matches_full(&live, "contested");
    assert!(
        live.compiled().v4.is_empty(),
        "a contested address gets no rules"
    );
    let key = pod("two").key();
    assert!(live.apply([Change::Delete(key)]).unwrap().full);
    assert_matches_full(&live, "uncontested");
    assert!(!live.compiled().v4.is_empty());
}

#[test]
fn sync_applies_only_what_differs() {
    let mut rng = Rng::new(7);
    let mut live = LivePolicy::new(Options::default()).unwrap();
    let mut set = DocumentSet::new();
    for _ in 0..30 {
        set.insert_shared(document(&random_document(&mut rng)));
    }
    live.sync(&set).unwrap();
    assert_matches_full(&live, "first sync");
    assert_eq!(live.sync(&set).unwrap(), Outcome::default());
    for _ in 0..5 {
        set.insert_shared(document(&random_document(&mut rng)));
    }
    live.sync(&set).unwrap();
    assert_eq!(live.documents(), &set);
    assert_matches_full(&live, "second sync");
}

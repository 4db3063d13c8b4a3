//! Fuzzes the Kubernetes/Linkerd document compiler: multi-document YAML
//! (Pods, Namespaces, Services, Servers, EgressNetworks and a
//! ClassifierPolicy, in any mix) through the document reader, the lenient
//! compiler (`compile_documents_report`, what the agent runs) and the
//! scoped trie compiler (`compile_with_scopes`).
//!
//! Properties checked on every input that is UTF-8:
//!
//! - reading and compiling never panic (one bad object must not take the
//!   node's policy down);
//! - compiling is deterministic;
//! - the strict compiler agrees with the lenient one: it fails exactly when
//!   some object is rejected, with the first rejected object's error, and
//!   otherwise returns the same policy;
//! - every rejected object names a kind, a name and an origin, and its
//!   reason is not empty;
//! - rule ids are 1..=n, rules have networks and ports;
//! - the scoped compilation of the policy, with an id for every namespace
//!   its rules name, either refuses with `TooManyEntries` or gives sorted
//!   entries, each in a scope that was given (or node-wide, or the global
//!   egress scope).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use classifier_common::{SCOPE_GLOBAL_EGRESS, SCOPE_NODE};
use classifier_policy::compile::{compile_with_scopes, entry_bound};
use classifier_policy::sources::{
    compile_documents, compile_documents_report, DocumentSet, Options,
};
use classifier_policy::CompileError;
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.yaml";

/// A namespace's budget, kept small so that building stays cheap; the
/// compiler must drop and report a namespace over it, not fail.
const BUDGET: u64 = 4096;

/// The scoped compilation is built only below this many entries (a legal
/// port range on a few networks takes a while and finds nothing new).
const MAX_ENTRIES_TO_BUILD: u64 = 20_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut set = DocumentSet::default();
    if set.add_text(text, ORIGIN).is_err() {
        return;
    }
    let opts = Options {
        namespace_entry_budget: BUDGET,
        ..Options::default()
    };
    let compiled = match compile_documents_report(&set, &opts) {
        Ok(c) => c,
        Err(e) => {
            // A whole-set error (a broken ClassifierPolicy, say): the strict
            // compiler says the same.
            let strict =
                compile_documents(&set, &opts).expect_err("strict accepts what lenient refuses");
            assert_eq!(strict.to_string(), e.to_string());
            return;
        }
    };
    let again = compile_documents_report(&set, &opts).expect("compiled on the first try");
    assert_eq!(again.policy, compiled.policy, "not deterministic");
    assert_eq!(
        again.rejected.len(),
        compiled.rejected.len(),
        "not deterministic"
    );

    for r in &compiled.rejected {
        assert!(!r.kind.is_empty() && !r.origin.is_empty(), "{r:?}");
        assert!(!r.error.to_string().is_empty(), "{r:?}");
    }
    match (compile_documents(&set, &opts), compiled.rejected.first()) {
        (Ok(p), None) => assert_eq!(p, compiled.policy),
        (Err(e), Some(first)) => assert_eq!(e.to_string(), first.error.to_string()),
        (Ok(_), Some(first)) => panic!("strict compiler accepted what lenient rejected: {first:?}"),
        (Err(e), None) => panic!("strict compiler refused a clean set: {e}"),
    }

    let policy = &compiled.policy;
    let mut namespaces = BTreeSet::new();
    for (i, r) in policy.rules.iter().enumerate() {
        assert_eq!(r.id as usize, i + 1, "rule {i} has id {}", r.id);
        assert!(!r.networks.is_empty(), "rule {} has no networks", r.id);
        assert!(!r.ports.is_empty(), "rule {} has no ports", r.id);
        if let Some(ns) = &r.scope {
            namespaces.insert(ns.clone());
        }
    }

    let (v4, v6) = entry_bound(&policy.rules);
    if v4 + v6 > MAX_ENTRIES_TO_BUILD {
        return;
    }
    let scope_ids: BTreeMap<String, u16> = namespaces
        .into_iter()
        .enumerate()
        .map(|(i, ns)| (ns, i as u16 + 1))
        .collect();
    let given: BTreeSet<u16> = scope_ids
        .values()
        .copied()
        .chain([SCOPE_NODE, SCOPE_GLOBAL_EGRESS])
        .collect();
    match compile_with_scopes(policy, &scope_ids) {
        Ok(c) => {
            assert_eq!(c.rule_count as usize, policy.rules.len());
            for w in c.v4.windows(2) {
                assert!(
                    w[0].sort_key() < w[1].sort_key(),
                    "v4 entries unsorted or repeated"
                );
            }
            for w in c.v6.windows(2) {
                assert!(
                    w[0].sort_key() < w[1].sort_key(),
                    "v6 entries unsorted or repeated"
                );
            }
            for scope in
                c.v4.iter()
                    .map(|e| e.scope)
                    .chain(c.v6.iter().map(|e| e.scope))
            {
                assert!(
                    given.contains(&scope),
                    "entry in scope {scope}, not one given"
                );
            }
        }
        Err(CompileError::TooManyEntries {
            entries,
            capacity,
            family,
        }) => {
            assert!(
                entries > capacity,
                "{family}: refused {entries} <= {capacity}"
            );
        }
        Err(e) => panic!("scoped compilation failed: {e}"),
    }
});

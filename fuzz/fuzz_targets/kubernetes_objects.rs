//! Fuzzes the conversion of Kubernetes objects, as the API server sends
//! them (JSON), into what the compiler reads (`Document::from_value`):
//! the live watch hands every Pod, Service, Namespace, Server and
//! EgressNetwork of the cluster to it, so no object may crash a node's
//! agent, and the typed object it keeps must be all the compiler needs.
//!
//! The input is a JSON value: an object, or a list of objects (a page of
//! a list). Properties checked:
//!
//! - converting never panics, and converting the same value twice gives
//!   equal documents (the watch compares them to skip no-op updates);
//! - the object parsed from its JSON into only the fields a document is
//!   made of (`Pruned`, as the watch parses it) gives the same document,
//!   or the same error;
//! - a document's identity is its metadata: kind, namespace (`default`
//!   for a namespaced kind without one), name; its derived origin is
//!   `kubernetes:Kind/ns/name`;
//! - a document the compiler reads either read (a typed object of its
//!   kind) or carries a field error naming a field;
//! - the set of them compiles (lenient) without panicking, and each
//!   document that did not read is reported as rejected, by origin.
#![no_main]

use std::collections::BTreeSet;

use classifier_policy::sources::document::{Content, KUBERNETES_ORIGIN};
use classifier_policy::sources::objects::Pruned;
use classifier_policy::sources::{compile_documents_report, kinds, Document, DocumentSet, Options};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut set = DocumentSet::new();
    for item in items.into_iter().take(64) {
        let first = Document::from_value(item.clone(), KUBERNETES_ORIGIN.to_string());
        let again = Document::from_value(item.clone(), KUBERNETES_ORIGIN.to_string());
        // The watch parses only the fields a document is made of
        // (`Pruned`): the same document, or the same error.
        let text = serde_json::to_vec(&item).expect("JSON of a JSON value");
        if let Ok(Pruned(pruned)) = serde_json::from_slice::<Pruned>(&text) {
            let from_pruned = Document::from_value(pruned, KUBERNETES_ORIGIN.to_string());
            let ours = |d: &Result<Option<Document>, _>| {
                matches!(d, Ok(Some(d)) if d.is_classifier_policy())
            };
            // A ClassifierPolicy keeps its whole text; the watch never
            // reads one (its kinds are the compiler's five).
            if !ours(&first) {
                assert_eq!(
                    format!("{from_pruned:?}"),
                    format!("{first:?}"),
                    "the pruned object reads differently"
                );
            }
        }
        let (Ok(first), Ok(again)) = (first, again) else {
            continue;
        };
        assert_eq!(first, again, "converting twice differs");
        let Some(doc) = first else {
            continue;
        };
        let meta = |f: &str| {
            item.get("metadata")
                .and_then(|m| m.get(f))
                .and_then(Value::as_str)
        };
        assert_eq!(Some(&*doc.kind), item.get("kind").and_then(Value::as_str));
        assert_eq!(doc.name(), meta("name").unwrap_or(""));
        let kind = kinds::by_name(&doc.kind);
        match (&doc.namespace, meta("namespace").filter(|n| !n.is_empty())) {
            (Some(ns), Some(given)) => assert_eq!(&**ns, given),
            (Some(ns), None) => {
                assert!(kind.is_some_and(|k| k.namespaced));
                assert_eq!(&**ns, "default");
            }
            (None, given) => {
                assert_eq!(given, None);
                assert!(!kind.is_some_and(|k| k.namespaced));
            }
        }
        let origin = doc.origin();
        assert!(origin.starts_with(KUBERNETES_ORIGIN), "{origin}");
        assert!(origin.ends_with(doc.name()), "{origin}");
        let reads = kind.is_some_and(|k| k.reads_api_version(&doc.api_version));
        match &doc.content {
            Content::Object(_) => assert!(reads),
            Content::Invalid(e) => {
                assert!(reads);
                assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
            }
            Content::ClassifierPolicy { .. } | Content::Other => assert!(!reads),
        }
        set.insert(doc);
    }
    let invalid: BTreeSet<String> = set
        .iter()
        .filter(|d| matches!(d.content, Content::Invalid(_)))
        .map(|d| d.origin().into_owned())
        .collect();
    let Ok(compiled) = compile_documents_report(&set, &Options::default()) else {
        // Only a ClassifierPolicy fails the whole set.
        assert!(set.iter().any(Document::is_classifier_policy));
        return;
    };
    let rejected: BTreeSet<String> = compiled.rejected.iter().map(|r| r.origin.clone()).collect();
    for origin in &invalid {
        assert!(
            rejected.contains(origin),
            "{origin} did not read but was not rejected"
        );
    }
});

use super::*;

fn table() -> SliceTable {
    let kind = |kind: &str, api_version: &str, plural: &str| SliceKind {
        kind: kind.into(),
        api_version: api_version.into(),
        plural: plural.into(),
    };
    SliceTable::new(
        vec![
            kind("Pod", "v1", "pods"),
            kind("Namespace", "v1", "namespaces"),
        ],
        "classifier-system",
    )
    .with_limits(Limits {
        objects: MAX_SLICE_OBJECTS,
        bytes: MAX_SLICE_BYTES,
    })
}

/// The writes, each reported written (as the compiler does once the API
/// server took it).
fn flush(t: &mut SliceTable) -> Vec<Write> {
    let writes = t.take_writes();
    for w in &writes {
        t.written(w.name());
    }
    writes
}

fn pod(name: &str, ip: &str) -> String {
    format!(r#"{{"metadata":{{"name":"{name}"}},"status":{{"podIP":"{ip}"}}}}"#)
}

/// (name, whether a put) of each write.
fn shown(writes: &[Write]) -> Vec<(String, bool)> {
    writes
        .iter()
        .map(|w| (w.name().to_owned(), matches!(w, Write::Put { .. })))
        .collect()
}

fn body(writes: &[Write], name: &str) -> serde_json::Value {
    let Some(Write::Put { body, .. }) = writes.iter().find(|w| w.name() == name) else {
        panic!("no put of {name} in {writes:?}");
    };
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"))
}

#[test]
fn objects_fill_slices_of_their_namespace_and_a_slice_is_a_classifier_slice() {
    let mut t = table();
    for i in 0..MAX_SLICE_OBJECTS + 1 {
        t.upsert(
            0,
            "team-a",
            &format!("p{i:03}"),
            pod(&format!("p{i:03}"), "10.0.0.1"),
        );
    }
    t.upsert(0, "team-b", "p", pod("p", "10.0.1.1"));
    t.upsert(1, "", "team-a", r#"{"metadata":{"name":"team-a"}}"#.into());
    let writes = flush(&mut t);
    assert_eq!(
        shown(&writes),
        [
            ("pods.team-a.0".into(), true),
            ("pods.team-a.1".into(), true),
            ("pods.team-b.0".into(), true),
            ("namespaces.0".into(), true),
        ]
    );
    let first = body(&writes, "pods.team-a.0");
    assert_eq!(first["kind"], "ClassifierSlice");
    assert_eq!(first["apiVersion"], "classifier.dev/v1alpha1");
    assert_eq!(first["metadata"]["namespace"], "classifier-system");
    assert_eq!(
        first["metadata"]["labels"]["classifier.dev/namespace"],
        "team-a"
    );
    assert_eq!(first["spec"]["kind"], "Pod");
    assert_eq!(first["spec"]["apiVersion"], "v1");
    assert_eq!(
        first["spec"]["objects"].as_array().unwrap().len(),
        MAX_SLICE_OBJECTS
    );
    assert_eq!(first["spec"]["objects"][0]["metadata"]["name"], "p000");
    assert_eq!(
        body(&writes, "pods.team-a.1")["spec"]["objects"][0]["metadata"]["name"],
        "p100"
    );
    assert!(flush(&mut t).is_empty(), "everything was written");
}

#[test]
fn an_unchanged_object_writes_nothing_and_a_change_rewrites_only_its_slice() {
    let mut t = table();
    t.upsert(0, "team-a", "a", pod("a", "10.0.0.1"));
    t.upsert(0, "team-b", "b", pod("b", "10.0.1.1"));
    flush(&mut t);
    // A status-only update: the pruned text is the same.
    t.upsert(0, "team-a", "a", pod("a", "10.0.0.1"));
    assert!(!t.is_dirty());
    t.upsert(0, "team-a", "a", pod("a", "10.0.0.2"));
    let writes = flush(&mut t);
    assert_eq!(shown(&writes), [("pods.team-a.0".into(), true)]);
    assert_eq!(
        body(&writes, "pods.team-a.0")["spec"]["objects"][0]["status"]["podIP"],
        "10.0.0.2"
    );
}

#[test]
fn a_deleted_object_leaves_room_and_an_empty_slice_is_deleted() {
    let mut t = table();
    for i in 0..MAX_SLICE_OBJECTS + 1 {
        t.upsert(0, "t", &format!("p{i:03}"), pod("p", "10.0.0.1"));
    }
    flush(&mut t);
    // The second slice's only object goes: the slice goes.
    t.remove(0, "t", "p100");
    assert_eq!(shown(&flush(&mut t)), [("pods.t.1".into(), false)]);
    assert_eq!(t.slices(), 1);
    // A hole in the first slice (once written) is filled before a new
    // slice is made.
    t.remove(0, "t", "p007");
    flush(&mut t);
    t.upsert(0, "t", "new", pod("new", "10.0.0.9"));
    assert_eq!(shown(&flush(&mut t)), [("pods.t.0".into(), true)]);
    assert_eq!((t.slices(), t.objects()), (1, MAX_SLICE_OBJECTS));
}

#[test]
fn a_slice_is_bounded_in_bytes_too() {
    let mut t = table();
    let big = format!(
        r#"{{"metadata":{{"labels":{{"l":"{}"}}}}}}"#,
        "x".repeat(MAX_SLICE_BYTES / 3)
    );
    for i in 0..4 {
        t.upsert(0, "t", &format!("p{i}"), big.clone());
    }
    // Three fit in MAX_SLICE_BYTES only without their JSON around them.
    let writes = flush(&mut t);
    assert_eq!(writes.len(), 2, "{:?}", shown(&writes));
    for w in &writes {
        let Write::Put { body, .. } = w else { panic!() };
        assert!(body.len() < MAX_SLICE_BYTES + 1024, "{} bytes", body.len());
    }
}

#[test]
fn a_list_removes_what_it_did_not_bring_of_its_kind_only() {
    let mut t = table();
    t.upsert(0, "t", "a", pod("a", "10.0.0.1"));
    t.upsert(0, "t", "b", pod("b", "10.0.0.2"));
    t.upsert(1, "", "t", "{}".into());
    flush(&mut t);
    t.begin_list(0);
    t.upsert(0, "t", "a", pod("a", "10.0.0.1"));
    t.end_list(0);
    assert_eq!(t.objects(), 2, "b is gone, the Namespace stays");
    let writes = flush(&mut t);
    assert_eq!(
        body(&writes, "pods.t.0")["spec"]["objects"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn adopted_slices_are_written_again_only_where_the_cluster_differs() {
    let mut earlier = table();
    for i in 0..150 {
        earlier.upsert(0, "t", &format!("p{i:03}"), pod("p", "10.0.0.1"));
    }
    let mut t = table();
    for w in flush(&mut earlier) {
        let Write::Put { name, body } = w else {
            panic!()
        };
        let slice: serde_json::Value = serde_json::from_str(&body).unwrap();
        let objects = slice["spec"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap_or("p").to_owned(),
                    o.to_string(),
                )
            })
            .collect();
        t.adopt(&name, objects);
    }
    t.adopt("synced", Vec::new());
    assert!(!t.is_dirty());
    // The new leader lists the cluster: one object changed, one gone.
    t.begin_list(0);
    for i in 0..150 {
        let ip = if i == 120 { "10.0.0.2" } else { "10.0.0.1" };
        if i != 5 {
            t.upsert(0, "t", &format!("p{i:03}"), pod("p", ip));
        }
    }
    t.end_list(0);
    assert_eq!(
        shown(&flush(&mut t)),
        [("pods.t.0".into(), true), ("pods.t.1".into(), true)]
    );
}

#[test]
fn by_default_a_slice_holds_one_object() {
    let mut t = table().with_limits(Limits::default());
    t.upsert(0, "t", "a", pod("a", "10.0.0.1"));
    t.upsert(0, "t", "b", pod("b", "10.0.0.2"));
    assert_eq!(
        shown(&flush(&mut t)),
        [("pods.t.0".into(), true), ("pods.t.1".into(), true)]
    );
}

#[test]
fn a_removed_object_keeps_its_place_until_its_slice_is_written() {
    let mut t = table().with_limits(Limits::default());
    t.upsert(0, "t", "a", pod("a", "10.0.0.1"));
    flush(&mut t);
    // a is deleted and created again, and b is created, before any write:
    // b must not take a's place (a node would see a leave one slice and
    // join another in two writes made at once, in either order).
    t.remove(0, "t", "a");
    t.upsert(0, "t", "b", pod("b", "10.0.0.2"));
    t.upsert(0, "t", "a", pod("a", "10.0.0.3"));
    let writes = flush(&mut t);
    assert_eq!(
        shown(&writes),
        [("pods.t.0".into(), true), ("pods.t.1".into(), true)]
    );
    assert_eq!(
        body(&writes, "pods.t.0")["spec"]["objects"][0]["metadata"]["name"],
        "a"
    );
    // Deleted, and its slice's deletion not yet written (or failed): the
    // place is still a's.
    t.remove(0, "t", "a");
    let writes = t.take_writes();
    assert_eq!(shown(&writes), [("pods.t.0".into(), false)]);
    t.retry("pods.t.0");
    t.upsert(0, "t", "c", pod("c", "10.0.0.4"));
    assert_eq!(
        shown(&flush(&mut t)),
        [("pods.t.0".into(), false), ("pods.t.2".into(), true)]
    );
    // Written: the place is free again.
    t.upsert(0, "t", "d", pod("d", "10.0.0.5"));
    assert_eq!(shown(&flush(&mut t)), [("pods.t.0".into(), true)]);
}

/// A node's view through every write, in any order within a batch (the
/// compiler makes a batch's writes at once), equals the table's objects
/// after every batch: a node never loses an object the compiler holds,
/// nor keeps one it removed.
#[test]
fn a_node_reading_the_writes_in_any_order_ends_with_the_tables_objects() {
    use crate::sources::kubernetes::slices::{ClassifierSlice, SliceReader};
    use kube::runtime::watcher::Event;
    use std::collections::BTreeSet;

    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for objects in [1, 3] {
        let kinds = crate::sources::kubernetes::watched_kinds();
        let pod_kind = kinds.iter().position(|k| k.kind == "Pod").unwrap();
        let slice_kinds = kinds
            .iter()
            .map(|ar| SliceKind {
                kind: ar.kind.clone(),
                api_version: ar.api_version.clone(),
                plural: ar.plural.clone(),
            })
            .collect();
        let mut t = SliceTable::new(slice_kinds, "classifier-system").with_limits(Limits {
            objects,
            bytes: MAX_SLICE_BYTES,
        });
        let mut reader = SliceReader::new(kinds);
        let marker: ClassifierSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "synced"},
            "spec": {"apiVersion": "classifier.dev/v1alpha1", "kind": "Synced"}}))
        .unwrap();
        reader.handle(Event::Init);
        reader.handle(Event::InitApply(marker));
        reader.handle(Event::InitDone);
        let (mut held, mut node) = (BTreeSet::new(), BTreeSet::new());
        for round in 0..300 {
            for _ in 0..1 + next(4) {
                let name = format!("p{}", next(6));
                let ns = ["a", "b"][next(2) as usize];
                if next(3) == 0 {
                    t.remove(pod_kind, ns, &name);
                    held.remove(&(ns.to_owned(), name));
                } else {
                    let json = format!(
                        r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"status":{{"podIP":"10.0.0.{round}"}}}}"#
                    );
                    t.upsert(pod_kind, ns, &name, json);
                    held.insert((ns.to_owned(), name));
                }
            }
            let mut writes = t.take_writes();
            // Any order within the batch.
            for i in (1..writes.len()).rev() {
                writes.swap(i, next(i as u64 + 1) as usize);
            }
            for w in writes {
                t.written(w.name());
                let event = match &w {
                    Write::Put { body, .. } => Event::Apply(serde_json::from_str(body).unwrap()),
                    Write::Delete { name } => Event::Delete(
                        serde_json::from_value(serde_json::json!({
                            "metadata": {"name": name},
                            "spec": {"apiVersion": "v1", "kind": "Pod"}}))
                        .unwrap(),
                    ),
                };
                for (_, e) in reader.handle(event) {
                    match e {
                        Event::Apply(o) => {
                            node.insert((o.metadata.namespace.unwrap(), o.metadata.name.unwrap()));
                        }
                        Event::Delete(o) => {
                            node.remove(&(o.metadata.namespace.unwrap(), o.metadata.name.unwrap()));
                        }
                        _ => {}
                    }
                }
            }
            assert_eq!(node, held, "{objects} per slice, round {round}");
        }
    }
}

use super::*;
use std::collections::{BTreeMap, BTreeSet};

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
        let name = format!("p{i:03}");
        earlier.upsert(0, "t", &name, pod(&name, "10.0.0.1"));
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
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
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
            let name = format!("p{i:03}");
            t.upsert(0, "t", &name, pod(&name, ip));
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

/// The compiler's table, the API server's slices and a node reading
/// them, driven by a small random generator.
struct Sim {
    t: SliceTable,
    pod_kind: usize,
    reader: crate::sources::kubernetes::slices::SliceReader,
    /// The cluster's objects, what the API server holds of the slices,
    /// and what the node holds.
    held: BTreeMap<(String, String), String>,
    server: BTreeMap<String, String>,
    node: BTreeSet<(String, String)>,
    seed: u64,
}

impl Sim {
    fn new(objects: usize) -> Sim {
        use crate::sources::kubernetes::slices::{marker, SliceReader};
        use kube::runtime::watcher::Event;
        let kinds = crate::sources::kubernetes::watched_kinds();
        let mut reader = SliceReader::new(kinds.clone());
        reader.handle(Event::Init);
        reader.handle(Event::InitApply(
            serde_json::from_value(marker("x")).unwrap(),
        ));
        reader.handle(Event::InitDone);
        Sim {
            t: Sim::table(objects),
            pod_kind: kinds.iter().position(|k| k.kind == "Pod").unwrap(),
            reader,
            held: BTreeMap::new(),
            server: BTreeMap::new(),
            node: BTreeSet::new(),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn table(objects: usize) -> SliceTable {
        let kinds = crate::sources::kubernetes::watched_kinds();
        SliceTable::new(kinds.iter().map(SliceKind::from).collect(), "x").with_limits(Limits {
            objects,
            bytes: MAX_SLICE_BYTES,
        })
    }

    fn next(&mut self, n: u64) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed % n
    }

    /// A few objects created, changed or deleted.
    fn change(&mut self, round: u32) {
        for _ in 0..1 + self.next(4) {
            let name = format!("p{}", self.next(6));
            let ns = ["a", "b"][self.next(2) as usize];
            if self.next(3) == 0 {
                self.t.remove(self.pod_kind, ns, &name);
                self.held.remove(&(ns.to_owned(), name));
            } else {
                let json = format!(
                    r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"status":{{"podIP":"10.0.0.{round}"}}}}"#
                );
                self.t.upsert(self.pod_kind, ns, &name, json.clone());
                self.held.insert((ns.to_owned(), name), json);
            }
        }
    }

    /// A new leader with `objects` per slice: it adopts the slices there
    /// are, then lists the cluster.
    fn new_leader(&mut self, objects: usize) {
        self.t = Sim::table(objects);
        for (name, body) in &self.server {
            let slice: Value = serde_json::from_str(body).unwrap();
            let objects = slice["spec"]["objects"].as_array().unwrap().iter();
            let objects = objects.map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap().to_owned();
                (name, object_text(o.clone()))
            });
            self.t.adopt(name, objects.collect());
        }
        self.t.begin_list(self.pod_kind);
        for ((ns, name), json) in &self.held {
            self.t.upsert(self.pod_kind, ns, name, json.clone());
        }
        self.t.end_list(self.pod_kind);
    }

    /// Batches, each in a random order with a fifth of its writes
    /// failing (made again by the next), until every write went through.
    fn write_all(&mut self) {
        while self.t.is_dirty() {
            let mut writes = self.t.take_writes();
            for i in (1..writes.len()).rev() {
                let j = self.next(i as u64 + 1) as usize;
                writes.swap(i, j);
            }
            for w in writes {
                if self.next(5) == 0 {
                    self.t.retry(w.name());
                } else {
                    self.t.written(w.name());
                    self.deliver(w);
                }
            }
        }
    }

    /// The write's watch event, read by the node.
    fn deliver(&mut self, w: Write) {
        use crate::sources::kubernetes::slices::ClassifierSlice;
        use kube::runtime::watcher::Event;
        let event = match w {
            Write::Put { name, body } => {
                let slice: ClassifierSlice = serde_json::from_str(&body).unwrap();
                self.server.insert(name, body);
                Event::Apply(slice)
            }
            // A slice whose creation failed may be deleted before it was
            // ever written: the API server answers 404, nobody sees it.
            Write::Delete { name } => match self.server.remove(&name) {
                Some(last) => Event::Delete(serde_json::from_str(&last).unwrap()),
                None => return,
            },
        };
        for (_, e) in self.reader.handle(event) {
            match e {
                Event::Apply(o) => {
                    let (ns, name) = crate::sources::kubernetes::slices::ids(&o);
                    self.node.insert((ns.to_owned(), name.to_owned()));
                }
                Event::Delete(o) => {
                    let (ns, name) = crate::sources::kubernetes::slices::ids(&o);
                    self.node.remove(&(ns.to_owned(), name.to_owned()));
                }
                _ => {}
            }
        }
    }
}

/// A node's view through every write, in any order within a batch (the
/// compiler makes a batch's writes at once), some failing and made again
/// later, and across a new leader adopting what the first wrote (with
/// another limit), equals the table's objects once every write of a
/// batch is through: a node never loses an object the compiler holds,
/// nor keeps one it removed. When every object goes, so does everything
/// the table held.
#[test]
fn a_node_reading_the_writes_in_any_order_ends_with_the_tables_objects() {
    for (objects, then) in [(1, 3), (3, 1)] {
        let mut sim = Sim::new(objects);
        for round in 0..300 {
            sim.change(round);
            if round == 150 {
                sim.new_leader(then);
            }
            sim.write_all();
            let cluster: BTreeSet<(String, String)> = sim.held.keys().cloned().collect();
            assert_eq!(
                sim.node, cluster,
                "{objects} then {then} per slice, round {round}"
            );
            assert_eq!(sim.t.objects(), sim.held.len());
        }
        for (ns, name) in std::mem::take(&mut sim.held).into_keys() {
            sim.t.remove(sim.pod_kind, &ns, &name);
        }
        sim.write_all();
        assert!(sim.node.is_empty());
        assert_eq!(
            (sim.t.objects(), sim.t.slices(), sim.t.namespaces()),
            (0, 0, 0)
        );
    }
}

#[test]
fn an_object_two_adopted_slices_hold_is_written_out_of_one_then_the_other_again() {
    let mut t = table();
    t.adopt("pods.t.0", vec![("a".into(), pod("a", "10.0.0.1"))]);
    t.adopt(
        "pods.t.1",
        vec![
            ("a".into(), pod("a", "10.0.0.1")),
            ("b".into(), pod("b", "10.0.0.2")),
        ],
    );
    // The second copy goes first (a node deletes a when it sees that)...
    let writes = t.take_writes();
    assert_eq!(shown(&writes), [("pods.t.1".into(), true)]);
    let objects = &body(&writes, "pods.t.1")["spec"]["objects"];
    assert_eq!(objects.as_array().unwrap().len(), 1, "{objects}");
    assert!(t.take_writes().is_empty(), "the first waits for that write");
    // ...then the slice that keeps it is written again (and a is back).
    t.written("pods.t.1");
    assert_eq!(shown(&flush(&mut t)), [("pods.t.0".into(), true)]);
    assert_eq!(t.objects(), 2);
}

#[test]
fn a_namespace_goes_with_its_last_object() {
    let mut t = table();
    t.upsert(0, "gone", "a", pod("a", "10.0.0.1"));
    t.upsert(0, "stays", "b", pod("b", "10.0.0.2"));
    flush(&mut t);
    assert_eq!(t.namespaces(), 2);
    t.remove(0, "gone", "a");
    // Until its slice's deletion is written, the place is kept.
    let writes = t.take_writes();
    assert_eq!(t.namespaces(), 2);
    for w in writes {
        t.written(w.name());
    }
    assert_eq!((t.namespaces(), t.slices(), t.objects()), (1, 1, 1));
    // Removing what was never there interns nothing.
    t.remove(0, "never", "x");
    assert_eq!(t.namespaces(), 1);
}

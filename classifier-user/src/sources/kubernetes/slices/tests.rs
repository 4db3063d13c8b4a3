use serde_json::json;

use super::*;
use crate::sources::kubernetes::watched_kinds;

fn slice(name: &str, kind: &str, pods: &[(&str, &str)]) -> ClassifierSlice {
    let objects: Vec<_> = pods
        .iter()
        .map(|(name, ip)| json!({"metadata": {"name": name, "namespace": "t"}, "status": {"podIP": ip}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "classifier-system"},
        "spec": {"apiVersion": "v1", "kind": kind, "objects": objects},
    }))
    .unwrap()
}

fn pods(name: &str, pods: &[(&str, &str)]) -> ClassifierSlice {
    slice(name, "Pod", pods)
}

fn marker() -> ClassifierSlice {
    serde_json::from_value(super::marker("classifier-system")).unwrap()
}

fn reader() -> SliceReader {
    SliceReader::new(watched_kinds())
}

fn pod_kind() -> usize {
    watched_kinds()
        .iter()
        .position(|k| k.kind == "Pod")
        .unwrap()
}

/// The events as `kind-event name`, Init/InitDone of kinds other than
/// Pod left out.
fn shown(events: &[ObjectEvent]) -> Vec<String> {
    let pod = pod_kind();
    events
        .iter()
        .filter_map(|(kind, ev)| {
            let name = |o: &ApiObject| o.metadata.name.clone().unwrap_or_default();
            let s = match ev {
                Event::Init if *kind == pod => "init".to_owned(),
                Event::InitDone if *kind == pod => "done".to_owned(),
                Event::Init | Event::InitDone => return None,
                Event::InitApply(o) => format!("list {}", name(o)),
                Event::Apply(o) => format!("apply {}", name(o)),
                Event::Delete(o) => format!("delete {}", name(o)),
            };
            Some(s)
        })
        .collect()
}

#[test]
fn a_list_without_the_marker_ends_no_kind_and_the_marker_asks_for_a_new_list() {
    let mut r = reader();
    r.handle(Event::Init);
    let listed = r.handle(Event::InitApply(pods("pods.t.0", &[("a", "10.0.0.1")])));
    assert_eq!(
        shown(&listed),
        ["list a"],
        "objects go to their kind as they come"
    );
    assert!(
        r.handle(Event::InitDone).is_empty(),
        "no marker: a partial publication"
    );
    assert!(!r.synced());
    assert!(r
        .handle(Event::Apply(pods("pods.t.1", &[("b", "10.0.0.2")])))
        .is_empty());
    assert!(!r.take_relist());
    assert!(r.handle(Event::Apply(marker())).is_empty());
    assert!(r.take_relist(), "the marker came: list again");
    assert!(!r.take_relist(), "once");
    // The new list has the marker: every kind's list ends.
    let mut events = r.handle(Event::Init);
    events.extend(r.handle(Event::InitApply(pods("pods.t.0", &[("a", "10.0.0.1")]))));
    events.extend(r.handle(Event::InitApply(marker())));
    events.extend(r.handle(Event::InitApply(pods("pods.t.1", &[("b", "10.0.0.2")]))));
    events.extend(r.handle(Event::InitDone));
    assert!(r.synced());
    assert_eq!(shown(&events), ["init", "list a", "list b", "done"]);
    let ends = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::InitDone))
        .count();
    assert_eq!(ends, watched_kinds().len(), "every kind's list ends");
}

#[test]
fn a_slice_change_applies_its_objects_and_deletes_what_it_no_longer_holds() {
    let mut r = reader();
    r.handle(Event::Init);
    r.handle(Event::InitApply(marker()));
    r.handle(Event::InitApply(pods(
        "pods.t.0",
        &[("a", "10.0.0.1"), ("b", "10.0.0.2")],
    )));
    assert_eq!(shown(&r.handle(Event::InitDone)), ["done"]);
    let events = r.handle(Event::Apply(pods("pods.t.0", &[("a", "10.0.0.9")])));
    assert_eq!(shown(&events), ["delete b", "apply a"]);
    let events = r.handle(Event::Delete(pods("pods.t.0", &[("a", "10.0.0.9")])));
    assert_eq!(shown(&events), ["delete a"]);
    let (_, Event::Delete(gone)) = &events[0] else {
        panic!()
    };
    assert_eq!(gone.metadata.namespace.as_deref(), Some("t"));
}

#[test]
fn a_slice_emptied_of_an_object_deletes_it_even_if_it_comes_back_elsewhere() {
    // The compiler writes the old slice's removal before the new slice
    // (see compiler::table): the node sees them in that order.
    let mut r = reader();
    r.handle(Event::Init);
    r.handle(Event::InitApply(marker()));
    r.handle(Event::InitApply(pods("pods.t.0", &[("a", "10.0.0.1")])));
    r.handle(Event::InitDone);
    let mut events = r.handle(Event::Apply(pods("pods.t.0", &[])));
    events.extend(r.handle(Event::Apply(pods("pods.t.1", &[("a", "10.0.0.2")]))));
    assert_eq!(shown(&events), ["delete a", "apply a"]);
}

#[test]
fn slices_of_kinds_not_watched_are_ignored() {
    let mut r = reader();
    r.handle(Event::Init);
    r.handle(Event::InitApply(marker()));
    r.handle(Event::InitDone);
    assert!(r.synced());
    assert!(r
        .handle(Event::Apply(slice("gadgets.t.0", "Gadget", &[("g", "")])))
        .is_empty());
}

//! The live Kubernetes sync (`classifier_user::sources::kubernetes`) against
//! a local fake API server that speaks the list and watch wire format
//! (HTTP/1.1, JSON lists with `metadata.resourceVersion`, chunked streams
//! of newline-delimited watch events), serving recorded responses from
//! `tests/fixtures/kube/`. No real API server, no privileges.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use classifier_user::{
    policy::{classify, Protocol},
    sources::{
        compile_documents,
        kubernetes::{self, KubeSync, WatchOptions},
        objects::{Object, ServerPort},
        DocumentSet, Options,
    },
};
use serde_json::{json, Value};
use tests::fake_kube::*;

const QUIET: Duration = Duration::from_millis(150);

fn options() -> WatchOptions {
    WatchOptions {
        debounce_quiet: QUIET,
        debounce_max: Duration::from_millis(600),
        probe_interval: Some(Duration::from_millis(200)),
        ..WatchOptions::default()
    }
}

fn start_sync(fake: &FakeApi, opts: WatchOptions) -> KubeSync {
    let client = kubernetes::client_for_url(&fake.url()).unwrap();
    kubernetes::spawn(client, opts)
}

/// The next published snapshot (waits for `changed()`).
async fn next_snapshot(sync: &mut KubeSync) -> Arc<DocumentSet> {
    tokio::time::timeout(Duration::from_secs(20), sync.snapshots.changed())
        .await
        .expect("a snapshot within 20 s")
        .expect("watch task alive");
    sync.snapshots
        .borrow_and_update()
        .clone()
        .expect("a snapshot, not None")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fake API server serving every recorded kind, the watch on it (with
/// [`options`]), and the watch's first snapshot.
async fn watching_all() -> (Arc<FakeApi>, KubeSync, Arc<DocumentSet>) {
    let fake = FakeApi::start(&ALL.iter().map(|(p, _)| *p).collect::<Vec<_>>()).await;
    let mut sync = start_sync(&fake, options());
    let first = next_snapshot(&mut sync).await;
    (fake, sync, first)
}

/// Waits until the watch has a watch request open for every kind, so that
/// an event pushed now arrives as an event rather than in a list.
async fn wait_for_watches(fake: &FakeApi) {
    wait_for("watches to start", || {
        fake.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
            >= ALL.len()
    })
    .await;
}

fn names(set: &DocumentSet, kind: &str) -> Vec<String> {
    set.iter()
        .filter(|d| &*d.kind == kind)
        .map(|d| match &d.namespace {
            Some(ns) => format!("{ns}/{}", d.name()),
            None => d.name().to_string(),
        })
        .collect()
}

/// What the compiler read of `kind` `ns`/`name` in `set`.
fn object<'a>(set: &'a DocumentSet, kind: &str, ns: Option<&str>, name: &str) -> &'a Object {
    set.get(kind, ns, name)
        .unwrap_or_else(|| panic!("no {kind} {ns:?}/{name}"))
        .object()
        .unwrap_or_else(|| panic!("{kind} {ns:?}/{name} did not read"))
}

/// The `config.linkerd.io/opaque-ports` annotation of a Namespace, Service
/// or Pod in `set`, as written.
fn opaque_ports(set: &DocumentSet, kind: &str, ns: Option<&str>, name: &str) -> Option<String> {
    set.get(kind, ns, name)?;
    let a = match object(set, kind, ns, name) {
        Object::Namespace(n) => &n.opaque,
        Object::Service(s) => &s.opaque,
        Object::Pod(p) => &p.opaque,
        other => panic!("no annotation on {other:?}"),
    };
    a.as_ref().map(|a| a.text.clone())
}

/// shop/web's `config.linkerd.io/opaque-ports` annotation in `set`.
fn web_opaque_ports(set: &DocumentSet) -> Option<String> {
    opaque_ports(set, "Service", Some("shop"), "web")
}

fn web_annotated(value: &str) -> Value {
    let mut event = fixture("watch/service-web-annotated.json");
    event["object"]["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] = json!(value);
    event
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_produces_the_documents() {
    let (fake, sync, set) = watching_all().await;
    assert_listed_names(&set);
    assert_service_and_namespace_read(&set);
    assert_pod_egress_network_and_server_read(&set);
    let st = &sync.status;
    assert!(st.synced());
    assert!(st.connected());
    assert_eq!(st.errors(), 0);
    assert_eq!(st.snapshots(), 1);
    assert!(st.last_success_age().unwrap() < Duration::from_secs(10));

    assert_listed_then_watched(&fake);
}

/// Every recorded object, by kind.
fn assert_listed_names(set: &DocumentSet) {
    assert_eq!(
        names(set, "Namespace"),
        ["default", "linkerd-egress", "shop"]
    );
    assert_eq!(
        names(set, "Service"),
        ["default/kubernetes", "shop/mysql", "shop/nats", "shop/web"]
    );
    assert_eq!(
        names(set, "Pod"),
        ["shop/mysql-0", "shop/web-7f9c8d6b5-x2kq4"]
    );
    assert_eq!(names(set, "EgressNetwork"), ["linkerd-egress/all-egress"]);
    assert_eq!(names(set, "Server"), ["shop/mysql", "shop/web-http"]);
    assert_eq!(set.iter().count(), 12);
}

/// shop/mysql's Service, as the compiler reads it, and a Namespace.
fn assert_service_and_namespace_read(set: &DocumentSet) {
    let mysql = set.get("Service", Some("shop"), "mysql").unwrap();
    assert_eq!(mysql.origin(), "kubernetes:Service/shop/mysql");
    assert_eq!(&*mysql.api_version, "v1");
    // Only the kinds ordered by age keep their creation time: a Server
    // does, a Service does not.
    assert_eq!(mysql.creation_timestamp, None);
    let mysql_server = set.get("Server", Some("shop"), "mysql").unwrap();
    assert_eq!(
        mysql_server.creation_timestamp.as_deref(),
        Some("2025-03-04T16:04:02Z")
    );
    // List items come without kind/apiVersion; the document has them.
    assert_eq!(&*mysql.kind, "Service");
    let Object::Service(svc) = object(set, "Service", Some("shop"), "mysql") else {
        panic!("not a Service")
    };
    assert_eq!(
        svc.ips,
        ["10.96.12.34".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        opaque_ports(set, "Service", Some("shop"), "mysql").as_deref(),
        Some("3306,33060")
    );
    let ns = set.get("Namespace", None, "shop").unwrap();
    assert_eq!(ns.origin(), "kubernetes:Namespace/shop");
}

/// A Pod, an EgressNetwork and a Server, as the compiler reads them.
fn assert_pod_egress_network_and_server_read(set: &DocumentSet) {
    let pod = set.get("Pod", Some("shop"), "mysql-0").unwrap();
    assert_eq!(
        pod.uid.as_deref(),
        Some("3f1e2d3c-4b5a-4697-8877-665544332211")
    );
    let Object::Pod(p) = object(set, "Pod", Some("shop"), "mysql-0") else {
        panic!("not a Pod")
    };
    assert_eq!(p.ips, ["10.244.1.17".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(p.port_names.get("mysql"), Some(3306));
    assert_eq!(p.labels.get("app"), Some("mysql"));
    assert!(!p.inactive);
    let egress = set
        .get("EgressNetwork", Some("linkerd-egress"), "all-egress")
        .unwrap();
    assert_eq!(&*egress.api_version, "policy.linkerd.io/v1alpha1");
    assert_eq!(
        egress.origin(),
        "kubernetes:EgressNetwork/linkerd-egress/all-egress"
    );
    let server = set.get("Server", Some("shop"), "web-http").unwrap();
    assert_eq!(&*server.api_version, "policy.linkerd.io/v1beta3");
    let Object::Server(srv) = object(set, "Server", Some("shop"), "web-http") else {
        panic!("not a Server")
    };
    assert_eq!(srv.protocol, Some(Protocol::Http1));
    assert_eq!(srv.port, ServerPort::Number(8080));
}

/// It listed each kind, in pages, then watched from the list's
/// resourceVersion.
fn assert_listed_then_watched(fake: &FakeApi) {
    let reqs = fake.requests();
    for (path, _) in ALL {
        assert!(
            // Listed in pages (`limit`), so a node's start never loads the
            // whole cluster in one response.
            reqs.iter().any(|r| r.starts_with(&format!("{path}?"))
                && !r.contains("watch=true")
                && r.contains(&format!("limit={}", kubernetes::LIST_PAGE_SIZE))),
            "{reqs:?}"
        );
        assert!(
            reqs.iter().any(|r| r.starts_with(&format!("{path}?"))
                && r.contains("watch=true")
                && r.contains("resourceVersion=48211")),
            "{reqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_and_deleted_events_publish_new_snapshots() {
    let (fake, mut sync, first) = watching_all().await;
    assert_eq!(web_opaque_ports(&first), None);
    wait_for_watches(&fake).await;

    // An annotation added with kubectl annotate.
    let pushed = Instant::now();
    fake.push(SERVICES, vec![fixture("watch/service-web-annotated.json")]);
    let set = next_snapshot(&mut sync).await;
    assert!(
        pushed.elapsed() >= QUIET - Duration::from_millis(20),
        "published before the quiet period"
    );
    assert_eq!(web_opaque_ports(&set).as_deref(), Some("11211"));
    assert_eq!(set.iter().count(), 12);
    // The first snapshot is untouched (snapshots are immutable).
    assert_eq!(web_opaque_ports(&first), None);

    // A deletion.
    fake.push(SERVICES, vec![fixture("watch/service-nats-deleted.json")]);
    let set = next_snapshot(&mut sync).await;
    assert!(set.get("Service", Some("shop"), "nats").is_none());
    assert_eq!(
        names(&set, "Service"),
        ["default/kubernetes", "shop/mysql", "shop/web"]
    );
    assert_eq!(sync.status.snapshots(), 3);
    assert_eq!(sync.status.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_is_one_snapshot() {
    let (fake, mut sync, _) = watching_all().await;
    wait_for_watches(&fake).await;

    let burst: Vec<Value> = (0..50)
        .map(|i| web_annotated(&format!("{}", 10000 + i)))
        .collect();
    fake.push(SERVICES, burst);
    let set = next_snapshot(&mut sync).await;
    assert_eq!(web_opaque_ports(&set).as_deref(), Some("10049"));
    tokio::time::sleep(QUIET * 4).await;
    assert_eq!(
        sync.status.snapshots(),
        2,
        "50 events in a burst gave more than one snapshot"
    );

    // Events that keep coming more often than the quiet period are still
    // published, at the latest `debounce_max` after the first one.
    let before = sync.status.snapshots();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1800) {
        fake.push(SERVICES, vec![web_annotated(&format!("{}", 20000 + i))]);
        i += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        sync.status.snapshots() >= before + 2,
        "a steady stream of events starved the debounce"
    );
    wait_for("the last event", || {
        sync.snapshots
            .borrow()
            .as_ref()
            .and_then(|s| opaque_ports(s, "Service", Some("shop"), "web"))
            == Some(format!("{}", 20000 + i - 1))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_change_nothing_relevant_publish_nothing() {
    let (fake, sync, _) = watching_all().await;
    wait_for_watches(&fake).await;

    // A container restart: only status conditions, containerStatuses and
    // resourceVersion change. Plus a bookmark.
    fake.push(PODS, vec![fixture("watch/pod-mysql-status-only.json")]);
    fake.push(SERVICES, vec![fixture("watch/bookmark.json")]);
    tokio::time::sleep(QUIET * 5).await;
    assert_eq!(sync.status.snapshots(), 1);
    assert!(!sync.snapshots.has_changed().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_errors_keep_the_last_set_and_recover() {
    let (fake, mut sync, first) = watching_all().await;
    wait_for_watches(&fake).await;

    // The API server answers 500 to everything and its watches are cut.
    fake.set_mode(Mode::Error500);
    wait_for("sync errors", || {
        sync.status.errors() >= 3 && !sync.status.connected()
    })
    .await;
    // Meanwhile the cluster changes.
    fake.push(SERVICES, vec![fixture("watch/service-nats-deleted.json")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The last set stays.
    assert_eq!(sync.status.snapshots(), 1);
    assert!(!sync.snapshots.has_changed().unwrap());
    assert!(Arc::ptr_eq(
        sync.snapshots.borrow().as_ref().unwrap(),
        &first
    ));

    // It comes back: the change made while it was away arrives.
    fake.set_mode(Mode::Up);
    let set = next_snapshot(&mut sync).await;
    assert!(set.get("Service", Some("shop"), "nats").is_none());
    assert_eq!(set.iter().count(), 11);
    wait_for("connected again", || sync.status.connected()).await;
    let errors = sync.status.errors();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        sync.status.errors(),
        errors,
        "errors still counted after recovery"
    );
    assert!(sync.status.last_success_age().unwrap() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_gone_and_back_on_the_same_address() {
    let (fake, mut sync, first) = watching_all().await;
    wait_for_watches(&fake).await;

    // Listener closed, watch streams cut mid-stream.
    fake.stop();
    wait_for("sync errors", || {
        sync.status.errors() >= 2 && !sync.status.connected()
    })
    .await;
    let at_outage = sync.status.last_success().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sync.status.last_success(),
        Some(at_outage),
        "success recorded while the server was gone"
    );
    assert!(Arc::ptr_eq(
        sync.snapshots.borrow().as_ref().unwrap(),
        &first
    ));

    fake.restart();
    wait_for("connected again", || sync.status.connected()).await;
    // Watches resume: a new event is seen.
    wait_for("watches to resume", || {
        fake.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
            >= 10
    })
    .await;
    fake.push(SERVICES, vec![fixture("watch/service-web-annotated.json")]);
    let set = next_snapshot(&mut sync).await;
    assert_eq!(web_opaque_ports(&set).as_deref(), Some("11211"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_the_server_does_not_serve_are_empty() {
    // No Linkerd CRDs installed: their paths answer 404.
    let fake = FakeApi::start(&[NAMESPACES, SERVICES, PODS]).await;
    let mut sync = start_sync(&fake, options());
    let set = next_snapshot(&mut sync).await;
    assert_eq!(set.iter().count(), 9);
    assert!(names(&set, "EgressNetwork").is_empty());
    assert!(names(&set, "Server").is_empty());
    assert_eq!(sync.status.errors(), 0, "a missing CRD is not a sync error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_ends_when_the_receiver_is_dropped() {
    let (_fake, sync, _) = watching_all().await;
    let KubeSync {
        snapshots, task, ..
    } = sync;
    drop(snapshots);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("task ends")
        .unwrap()
        .unwrap();
}

fn verdict(set: &DocumentSet, addr: &str, port: u16) -> Protocol {
    let policy =
        compile_documents(set, &Options::default()).expect("the watched documents compile");
    classify(&policy, addr.parse().unwrap(), port).protocol
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compile_to_the_opaque_ports_of_service_cluster_ips() {
    let (fake, mut sync, set) = watching_all().await;

    // shop/mysql: `config.linkerd.io/opaque-ports: 3306,33060` (33060 is
    // not a default opaque port).
    assert_eq!(verdict(&set, "10.96.12.34", 33060), Protocol::Opaque);
    // shop/nats: appProtocol linkerd.io/opaque on 4222.
    assert_eq!(verdict(&set, "10.96.45.6", 4222), Protocol::Opaque);
    // The mysql pod: Server `mysql` (port by name) is opaque.
    assert_eq!(verdict(&set, "10.244.1.17", 3306), Protocol::Opaque);
    // The web pod: Server `web-http` says HTTP/1 on 8080.
    assert_eq!(verdict(&set, "10.244.2.9", 8080), Protocol::Http1);
    let web_80 = verdict(&set, "10.96.80.80", 80);
    assert_ne!(web_80, Protocol::Opaque);

    // `kubectl annotate svc web config.linkerd.io/opaque-ports=80`, live.
    wait_for_watches(&fake).await;
    fake.push(SERVICES, vec![web_annotated("80")]);
    let set = next_snapshot(&mut sync).await;
    assert_eq!(verdict(&set, "10.96.80.80", 80), Protocol::Opaque);

    // The mysql Service is deleted: its cluster IP loses 33060.
    let mut deleted = fixture("services.list.json")["items"][1].clone();
    assert_eq!(deleted["metadata"]["name"], "mysql");
    deleted["kind"] = json!("Service");
    deleted["apiVersion"] = json!("v1");
    fake.push(
        SERVICES,
        vec![json!({"type": "DELETED", "object": deleted})],
    );
    let set = next_snapshot(&mut sync).await;
    assert_ne!(verdict(&set, "10.96.12.34", 33060), Protocol::Opaque);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_watch_expiry_is_relisted_without_a_sync_error() {
    let (fake, sync, _) = watching_all().await;
    wait_for_watches(&fake).await;
    let lists = |fake: &FakeApi| {
        fake.requests()
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count()
    };
    let before = lists(&fake);
    // One Service changes and the history is compacted: every other kind's
    // watch, when it starts again from its last resourceVersion, gets 410
    // Expired, which is routine (the watcher lists again), not a failure.
    fake.push(SERVICES, vec![web_annotated("11211")]);
    wait_for("the change", || {
        sync.snapshots
            .borrow()
            .as_ref()
            .and_then(|s| web_opaque_ports(s))
            .as_deref()
            == Some("11211")
    })
    .await;
    fake.compact();
    fake.end_watches();
    wait_for("the kinds listed again", || {
        lists(&fake) >= before + ALL.len() - 1
    })
    .await;
    wait_for_watches(&fake).await;
    assert_eq!(
        sync.status.errors(),
        0,
        "410 Expired counted as a sync error"
    );
    assert!(sync.status.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_history_is_relisted() {
    let (fake, mut sync, _) = watching_all().await;
    wait_for_watches(&fake).await;

    // Away long enough that the deletion of nats is compacted away: the
    // watch from the old resourceVersion gets 410 and the kinds are listed
    // again; what the new list lacks is gone.
    fake.stop();
    wait_for("sync errors", || sync.status.errors() >= 1).await;
    fake.push(SERVICES, vec![fixture("watch/service-nats-deleted.json")]);
    fake.compact();
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    fake.restart();
    let set = next_snapshot(&mut sync).await;
    assert!(set.get("Service", Some("shop"), "nats").is_none());
    assert_eq!(set.len(), 11);
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .filter(|r| !r.contains("watch=true") && r.starts_with(SERVICES))
            .count()
            >= 2
    );
    assert!(reqs.iter().filter(|r| !r.contains("watch=true")).count() > lists_before);
}

/// The agent's changes queue is bounded: while its reader is busy (a full
/// compile), no more than `changes_queue` updates wait, the watch waits
/// for the reader, and every change still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_changes_queue_holds_the_watch_back_and_loses_nothing() {
    use classifier_user::policy::live::Change;
    use classifier_user::sources::kubernetes::KubeUpdate;

    let fake = FakeApi::start(&ALL.iter().map(|(p, _)| *p).collect::<Vec<_>>()).await;
    let client = kubernetes::client_for_url(&fake.url()).unwrap();
    let mut watch = kubernetes::spawn_changes(
        client,
        WatchOptions {
            changes_queue: 2,
            ..options()
        },
    );
    let first = tokio::time::timeout(Duration::from_secs(20), watch.updates.recv())
        .await
        .expect("the first list within 20 s");
    assert!(matches!(first, Some(KubeUpdate::Snapshot(_))));
    wait_for_watches(&fake).await;

    // A burst while the reader is busy.
    let values: Vec<String> = (0..40).map(|i| format!("{}", 30000 + i)).collect();
    fake.push(
        SERVICES,
        values.iter().map(|v| web_annotated(v)).collect::<Vec<_>>(),
    );
    wait_for("the burst to reach the queue", || !watch.updates.is_empty()).await;
    assert!(
        watch.updates.len() <= 2,
        "{} updates waiting",
        watch.updates.len()
    );

    // Then every change comes, in order.
    let mut seen = Vec::new();
    while seen.last() != values.last() {
        let update = tokio::time::timeout(Duration::from_secs(20), watch.updates.recv())
            .await
            .expect("the next update within 20 s")
            .expect("the watch goes on");
        let KubeUpdate::Changes(changes) = update else {
            panic!("a snapshot after the first list");
        };
        for change in changes {
            let Change::Apply(doc) = change else { continue };
            if let Some(Object::Service(s)) = doc.object() {
                seen.extend(s.opaque.as_ref().map(|a| a.text.clone()));
            }
        }
    }
    assert_eq!(seen, values);
    assert_eq!(watch.status.errors(), 0);
}

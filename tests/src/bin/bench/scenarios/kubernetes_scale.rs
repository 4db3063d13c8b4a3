//! Scenario 6: a cluster's worth of Kubernetes objects (100 namespaces,
//! 10k Services, 50k and 100k Pods) read, compiled and applied; what the
//! agent holds for them; and what one changed pod costs.
//!
//! The objects are JSON as the API server sends them (labels, the
//! annotations linkerd's injector writes, containers, status conditions),
//! read by the agent's own conversion (`kubernetes::to_document`) from
//! their JSON text; making the objects is timed apart from that. Memory
//! is what the allocator holds for each structure (`CountingAlloc`), not
//! resident memory, which also counts what the allocator keeps for reuse.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use classifier_user::{
    datapath::{PinDir, PolicyMaps},
    policy::compile,
    sources::{
        compile_documents, kinds,
        kubernetes::{to_document, ApiObject},
        Document, DocumentSet, Options,
    },
};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use tests::{sys::CountingAlloc, Sandbox};

pub(super) const NAMESPACES: u32 = 100;
pub(super) const SERVICES: u32 = 10_000;

pub(super) fn api_resource(kind: &kinds::KubeKind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group, kind.watch_version(), kind.kind);
    ApiResource::from_gvk_with_plural(&gvk, kind.plural)
}

/// Pod `i` of the cluster, as a list or watch event carries it. Every
/// fifth is annotated `3306` (a database), every hundredth is a finished
/// Job pod; each namespace runs ten Deployments.
pub(super) fn pod(i: u32) -> Value {
    let ns = i % NAMESPACES;
    let app = (i / NAMESPACES) % 10;
    let ip = std::net::Ipv4Addr::from(0x0a80_0000 + i + 1);
    let mut annotations = json!({
        "linkerd.io/created-by": "linkerd/proxy-injector stable-2.14.10",
        "linkerd.io/inject": "enabled",
        "linkerd.io/proxy-version": "stable-2.14.10",
        "linkerd.io/trust-root-sha256": "4c1f0dc1bd4b2c8c1e2f0e7b8a5d7f9e2b6c4a8d0e1f3a5b7c9d1e3f5a7b9c1d"
    });
    if i.is_multiple_of(5) {
        annotations["config.linkerd.io/opaque-ports"] = json!("3306");
    }
    let phase = if i % 100 == 99 {
        "Succeeded"
    } else {
        "Running"
    };
    json!({
        "metadata": {
            "name": format!("app-{app}-7f9c8d6b5-{i:05}"),
            "generateName": format!("app-{app}-7f9c8d6b5-"),
            "namespace": format!("ns-{ns}"),
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {
                "app": format!("app-{app}"),
                "app.kubernetes.io/name": format!("app-{app}"),
                "pod-template-hash": "7f9c8d6b5",
                "linkerd.io/control-plane-ns": "linkerd",
                "linkerd.io/proxy-deployment": format!("app-{app}"),
                "linkerd.io/workload-ns": format!("ns-{ns}")
            },
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{app}-7f9c8d6b5"), "uid": "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968", "controller": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 50),
            "containers": [
                {"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:stable-2.14.10",
                 "ports": [{"name": "linkerd-proxy", "containerPort": 4143}, {"name": "linkerd-admin", "containerPort": 4191}]},
                {"name": "app", "image": format!("registry.example/app-{app}:1.0"),
                 "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]}
            ],
            "initContainers": [{"name": "linkerd-init", "image": "cr.l5d.io/linkerd/proxy-init:v2.2.3"}],
            "restartPolicy": "Always",
            "serviceAccountName": "default"
        },
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T10:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-01T10:00:05Z"}
            ],
            "hostIP": "192.168.49.2",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": "2026-11-01T10:00:00Z",
            "qosClass": "Burstable"
        }
    })
}

/// 100 namespaces (half annotated `5432`), a Server per namespace (its
/// `app-0` pods' `http` port is HTTP/1), 10,000 Services (every other one
/// annotated `3306`, every tenth with an appProtocol opaque port) and
/// `pods` Pods.
///
/// Made one at a time, as a watch stream delivers them: a cluster's worth
/// of JSON made up front and freed at once would leave the allocator
/// consolidating it during the compile that follows, which no agent sees.
pub(super) fn cluster_objects(
    pods: u32,
) -> impl Iterator<Item = (&'static kinds::KubeKind, Value)> {
    let namespaces = (0..NAMESPACES).flat_map(|n| {
        let mut meta = json!({"name": format!("ns-{n}"), "uid": format!("ns-{n}"),
            "labels": {"kubernetes.io/metadata.name": format!("ns-{n}")}});
        if n % 2 == 0 {
            meta["annotations"] = json!({"config.linkerd.io/opaque-ports": "5432"});
        }
        [
            (
                &kinds::NAMESPACE,
                json!({"metadata": meta, "spec": {"finalizers": ["kubernetes"]}}),
            ),
            (&kinds::SERVER, server(n, "HTTP/1")),
        ]
    });
    let services = (0..SERVICES).map(|i| (&kinds::SERVICE, service(i, "3306")));
    namespaces
        .chain(services)
        .chain((0..pods).map(|i| (&kinds::POD, pod(i))))
}

/// Namespace `n`'s Server: its `app-0` pods' `http` port.
pub(super) fn server(n: u32, protocol: &str) -> Value {
    json!({"metadata": {"name": "app-0-http", "namespace": format!("ns-{n}")},
           "spec": {"podSelector": {"matchLabels": {"app": "app-0"}}, "port": "http", "proxyProtocol": protocol}})
}

/// Service `i`: every other one annotated (`opaque`), every tenth with an
/// appProtocol opaque port.
pub(super) fn service(i: u32, opaque: &str) -> Value {
    let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i + 1);
    let mut meta = json!({"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
        "uid": format!("svc-{i}"), "creationTimestamp": "2026-11-01T10:00:00Z", "labels": {"app": format!("svc-{i}")}});
    if i.is_multiple_of(2) {
        meta["annotations"] = json!({"config.linkerd.io/opaque-ports": opaque});
    }
    let mut port = json!({"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080});
    if i.is_multiple_of(10) {
        port["appProtocol"] = json!("linkerd.io/opaque");
    }
    json!({"metadata": meta, "spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
        "ports": [port], "selector": {"app": format!("svc-{i}")}, "type": "ClusterIP"}, "status": {"loadBalancer": {}}})
}

/// The objects as the watcher holds them, read one at a time, and how
/// long that took.
pub(super) struct Read {
    pub(super) set: DocumentSet,
    pub(super) count: usize,
    /// The agent's work: each object's JSON, as the API server sends it,
    /// to its document.
    pub(super) convert: Duration,
    /// Making each object and its JSON: the API server's work here, not
    /// the agent's (not in `convert`).
    pub(super) generate: Duration,
}

/// Reads `objects` as a watch's list delivers them: each one's JSON text
/// converted as the agent converts it.
pub(super) fn read_objects(
    mut objects: impl Iterator<Item = (&'static kinds::KubeKind, Value)>,
) -> Result<Read> {
    let mut read = Read {
        set: DocumentSet::new(),
        count: 0,
        convert: Duration::ZERO,
        generate: Duration::ZERO,
    };
    loop {
        let t = Instant::now();
        let Some((kind, value)) = objects.next() else {
            break;
        };
        let json = serde_json::to_vec(&value)?;
        drop(value);
        let t2 = Instant::now();
        read.generate += t2 - t;
        let doc = convert_object(kind, &json)?;
        read.set.insert(doc);
        read.convert += t2.elapsed();
        read.count += 1;
    }
    Ok(read)
}

/// The agent's conversion of one object's JSON, as a list or a watch
/// event carries it, into its document.
pub(super) fn convert_object(kind: &kinds::KubeKind, json: &[u8]) -> Result<Document> {
    let obj: ApiObject = serde_json::from_slice(json)?;
    to_document(&api_resource(kind), obj)
}

pub(super) fn mib(bytes: usize) -> f64 {
    bytes as f64 / 1048576.0
}

/// One cluster size: read, compile, apply, then one pod changed.
fn one_size(sb: &Sandbox, pods: u32) -> Result<Value> {
    let base = CountingAlloc::held();
    let Read {
        mut set,
        count,
        convert,
        generate,
    } = read_objects(cluster_objects(pods))?;
    let read_ms = convert.as_secs_f64() * 1e3;
    let documents_bytes = CountingAlloc::held().saturating_sub(base);

    let before_policy = CountingAlloc::held();
    let t = Instant::now();
    let policy = compile_documents(&set, &Options::default())?;
    let documents_ms = t.elapsed().as_secs_f64() * 1e3;
    let policy_bytes = CountingAlloc::held().saturating_sub(before_policy);

    let before_compiled = CountingAlloc::held();
    let t = Instant::now();
    let compiled = Arc::new(compile(&policy)?);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let compiled_bytes = CountingAlloc::held().saturating_sub(before_compiled);

    let mut maps = PolicyMaps::open(&PinDir::new(&sb.pins))?;
    let applied = maps.apply(compiled.clone())?;
    // Twice more, so that both slots hold it: the last one is what a
    // re-list that changed nothing costs.
    maps.apply(compiled.clone())?;
    let again = maps.apply(compiled)?;

    // One pod changes: annotated with another opaque port, as a watch
    // event delivers it; the whole path to the maps. What the agent holds
    // at most meanwhile: the documents, the policy in force and the new
    // one, both compiled.
    let mut changed = pod(1);
    changed["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] = json!("3307");
    let changed = serde_json::to_vec(&changed)?;
    CountingAlloc::reset_peak();
    let t = Instant::now();
    set.insert(convert_object(&kinds::POD, &changed)?);
    let policy2 = compile_documents(&set, &Options::default())?;
    let documents2_ms = t.elapsed().as_secs_f64() * 1e3;
    let compiled2 = Arc::new(compile(&policy2)?);
    let one = maps.apply(compiled2)?;
    let one_pod_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak_bytes = CountingAlloc::peak().saturating_sub(base);
    // What the process's resident memory reached: the allocator's slack on
    // top of what it holds (the bench process, sizes in order, so the
    // 100k figure is the 100k run's).
    let peak_rss_kib = crate::system::peak_rss_kib(std::process::id())?;
    drop(policy2);

    eprintln!(
        "bench:   {count} objects ({pods} pods) -> {} rules, {} + {} entries: read {read_ms:.0} ms, documents to policy {documents_ms:.0} ms, compile {compile_ms:.0} ms, apply {:.0} ms; held: documents {:.1} MiB, policy {:.1} MiB, compiled {:.1} MiB, at most {:.1} MiB while recompiling (process peak RSS {:.0} MiB); one pod changed: {one_pod_ms:.0} ms",
        policy.rules.len(),
        applied.v4_entries,
        applied.v6_entries,
        applied.elapsed.as_secs_f64() * 1e3,
        mib(documents_bytes),
        mib(policy_bytes),
        mib(compiled_bytes),
        mib(peak_bytes),
        peak_rss_kib as f64 / 1024.0,
    );
    Ok(json!({
        "objects": count,
        "pods": pods,
        "rules": policy.rules.len(),
        "v4_entries": applied.v4_entries,
        "v6_entries": applied.v6_entries,
        "read_objects_ms": read_ms,
        "generate_objects_ms": generate.as_secs_f64() * 1e3,
        "documents_to_policy_ms": documents_ms,
        "compile_ms": compile_ms,
        "apply_full_ms": applied.elapsed.as_secs_f64() * 1e3,
        "apply_unchanged_ms": again.elapsed.as_secs_f64() * 1e3,
        "documents_mib": mib(documents_bytes),
        "policy_mib": mib(policy_bytes),
        "compiled_mib": mib(compiled_bytes),
        "peak_while_recompiling_mib": mib(peak_bytes),
        "process_peak_rss_mib": peak_rss_kib as f64 / 1024.0,
        "one_pod_documents_to_policy_ms": documents2_ms,
        "one_pod_end_to_end_ms": one_pod_ms,
        "one_pod_apply_ms": one.elapsed.as_secs_f64() * 1e3,
    }))
}

pub(crate) fn kubernetes_scale(sb: &Sandbox) -> Result<Value> {
    // `BENCH_RESYNC_ONLY=1`: the resync at the largest size alone, for a
    // quick look at its time and memory while working on it.
    if std::env::var_os("BENCH_RESYNC_ONLY").is_some() {
        return super::kubernetes_churn::resync_only(sb, 100_000);
    }
    // `BENCH_AGENT_ONLY=1`: the real agent at the largest size alone.
    if std::env::var_os("BENCH_AGENT_ONLY").is_some() {
        return super::kubernetes_agent::agent_at_scale(100_000);
    }
    // `BENCH_SLICES_ONLY=1`: what a node receives, objects or slices.
    if std::env::var_os("BENCH_SLICES_ONLY").is_some() {
        return super::kubernetes_slices::slices(100_000);
    }
    // The file path first (a real agent, a few seconds): one file of a
    // policy directory changed.
    let policy_directory = super::policy_directory::policy_directory()?;
    let pods_50k = one_size(sb, 50_000)?;
    let mut pods_100k = one_size(sb, 100_000)?;
    // The cost of one change, of churn, of a resync, at the largest size:
    // in the same object as `pods`.
    let churn = super::kubernetes_churn::churn(sb, 100_000)?;
    let agent = super::kubernetes_agent::agent_at_scale(100_000)?;
    let central = json!({"central_compiler": super::kubernetes_slices::slices(100_000)?});
    for figures in [churn, agent, central] {
        if let (Some(to), Value::Object(from)) = (pods_100k.as_object_mut(), figures) {
            to.extend(from);
        }
    }
    Ok(json!({
        "pods_50k": pods_50k,
        "pods_100k": pods_100k,
        "policy_directory": policy_directory,
    }))
}

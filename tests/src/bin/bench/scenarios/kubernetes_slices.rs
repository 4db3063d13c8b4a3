//! Scenario 6, continued: what a node receives from the API servers when
//! it watches the cluster's objects itself, next to what it receives when
//! a central compiler publishes them as slices (`classifier compiler`),
//! at 100k pods.
//!
//! Both sides are counted from the same objects and the same churn as the
//! churn figures (`kubernetes_churn`): for the objects, each event's JSON
//! (`{"type":...,"object":...}`, as the API server sends it; a deletion
//! carries the object's last state, counted as the mean pod's); for the
//! slices, each slice write the compiler's own table
//! (`classifier_user::compiler::SliceTable`) makes for that event, whole
//! (a watch event of a slice carries the whole slice; a deleted slice its
//! last state), plus [`SLICE_ENVELOPE`] for what the API server adds to
//! each slice (its metadata and `managedFields`: an estimate, there is no
//! real API server here). Per slice size limit: `slices_N`, at most N
//! objects per slice. `compiler_*`: what the compiler's table holds and
//! what filling it from the cluster's JSON costs.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use classifier_user::{
    compiler::{project, Limits, SliceKind, SliceTable, Write},
    sources::{
        kinds,
        kubernetes::{slices::MAX_SLICE_BYTES, watched_kinds, ApiObject},
    },
};
use serde_json::{json, Value};
use tests::sys::CountingAlloc;

use super::kubernetes_churn::{churn_events, Event};
use super::kubernetes_scale::{api_resource, cluster_objects, mib, pod};

/// Bytes the API server adds to each slice it sends: `metadata.uid`,
/// `resourceVersion`, `generation`, `creationTimestamp` and one
/// `managedFields` entry (manager, operation, time, the fields set).
const SLICE_ENVELOPE: usize = 450;

/// Changes of the churn counted (as many as 60 s at 200 a second).
const CHANGES: u64 = 12_000;

/// The figures the scenario gives, in `pods_100k`.
pub(crate) fn slices(pods: u32) -> Result<Value> {
    let event = |object: &Value| {
        json!({"type": "MODIFIED", "object": object})
            .to_string()
            .len()
    };
    let pod_event_bytes = (0..1000).map(|i| event(&pod(i * 97 % pods))).sum::<usize>() / 1000;
    let pod_ar = api_resource(&kinds::POD);
    let projected = |i: u32| {
        let obj: ApiObject = serde_json::from_value(pod(i * 97 % pods)).expect("a pod");
        project(&pod_ar, obj).map_or(0, |t| t.len())
    };
    let projected_pod_bytes = (0..1000).map(projected).sum::<usize>() / 1000;
    let mut out = json!({
        "pod_event_bytes": pod_event_bytes,
        "projected_pod_bytes": projected_pod_bytes,
        "slice_envelope_bytes": SLICE_ENVELOPE,
        "objects": objects_side(pods, pod_event_bytes, false),
        "objects_production_pods": objects_side(pods, pod_event_bytes, true),
    });
    for per_slice in [1, 2, 5, 10, 25, 100] {
        let limits = Limits {
            objects: per_slice,
            bytes: MAX_SLICE_BYTES,
        };
        out[format!("slices_{per_slice}")] = slices_side(pods, limits)?;
    }
    Ok(out)
}

/// A node watching the objects: a list, and the churn's events. With
/// `production`, every pod also carries what a production API server
/// sends of one and the compiler does not read ([`production_fields`]).
fn objects_side(pods: u32, pod_event_bytes: usize, production: bool) -> Value {
    let extra = if production {
        production_fields(0).to_string().len()
    } else {
        0
    };
    let list: usize = cluster_objects(pods)
        .map(|(k, v)| {
            let pod_extra = if k.kind == "Pod" { extra } else { 0 };
            serde_json::to_vec(&v).map_or(0, |j| j.len()) + pod_extra
        })
        .sum();
    let mut sizes: Vec<usize> = (0..CHANGES)
        .flat_map(|n| churn_events(n, pods))
        .map(|e| match e {
            Event::Apply(kind, json) => {
                let pod_extra = if kind.kind == "Pod" { extra } else { 0 };
                json.len() + pod_extra + r#"{"type":"MODIFIED","object":}"#.len()
            }
            Event::Delete(_) => pod_event_bytes + extra,
        })
        .collect();
    let mut figures = per_change(&mut sizes, list);
    figures["pod_extra_bytes"] = json!(extra);
    figures
}

/// What a production API server sends of a meshed pod besides what the
/// bench's pods hold (`managedFields` of its three writers, the
/// containers' env, volume mounts, probes and resources, its volumes,
/// status conditions and container statuses), as `kubectl get -o json`
/// shows one: none of it read by the compiler, so the same projection.
fn production_fields(i: u32) -> Value {
    let time = "2026-11-01T10:00:00Z";
    let fields = |manager: &str, op: &str, sub: Value| {
        json!({"manager": manager, "operation": op, "apiVersion": "v1", "time": time,
               "fieldsType": "FieldsV1", "fieldsV1": sub})
    };
    let container_status = |name: &str, image: &str| {
        json!({"name": name, "image": image, "imageID": format!("{image}@sha256:{:064x}", i),
               "containerID": format!("containerd://{:064x}", i), "ready": true, "restartCount": 0,
               "started": true, "state": {"running": {"startedAt": time}}, "lastState": {}})
    };
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": time});
    let conditions: Vec<Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(condition)
    .into();
    json!({
        "managedFields": [
            fields("kube-controller-manager", "Update", json!({"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                "f:ownerReferences": {".": {}, "k:{\"uid\":\"8e7d6c5b\"}": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                "f:ports": {}, "f:readinessProbe": {}, "f:resources": {}, "f:terminationMessagePath": {}, "f:volumeMounts": {}}},
                "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                "f:terminationGracePeriodSeconds": {}, "f:volumes": {}}})),
            fields("linkerd-proxy-injector", "Update", json!({"f:metadata": {"f:annotations": {"f:linkerd.io/created-by": {}, "f:linkerd.io/proxy-version": {}, "f:linkerd.io/trust-root-sha256": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"linkerd-proxy\"}": {}}, "f:initContainers": {}}})),
            fields("kubelet", "Update", json!({"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {},
                "f:initContainerStatuses": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}))
        ],
        "env": [
            {"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "LINKERD2_PROXY_LOG", "value": "warn,linkerd=info,hickory=error"},
            {"name": "LINKERD2_PROXY_DESTINATION_SVC_ADDR", "value": "linkerd-dst-headless.linkerd.svc.cluster.local.:8086"},
            {"name": "LINKERD2_PROXY_IDENTITY_DIR", "value": "/var/run/linkerd/identity/end-entity"},
            {"name": "LINKERD2_PROXY_INBOUND_PORTS", "value": "8080,9090"}
        ],
        "volumeMounts": [
            {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
            {"name": "linkerd-identity-end-entity", "mountPath": "/var/run/linkerd/identity/end-entity"},
            {"name": "linkerd-identity-token", "mountPath": "/var/run/secrets/tokens"}
        ],
        "probes": {"readinessProbe": {"httpGet": {"path": "/ready", "port": 4191, "scheme": "HTTP"}, "initialDelaySeconds": 2, "periodSeconds": 10},
                   "livenessProbe": {"httpGet": {"path": "/live", "port": 4191, "scheme": "HTTP"}, "periodSeconds": 10}},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumes": [
            {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
             {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
             {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
            {"name": "linkerd-identity-end-entity", "emptyDir": {"medium": "Memory"}},
            {"name": "linkerd-identity-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "identity.l5d.io", "expirationSeconds": 86400, "path": "linkerd-identity-token"}}]}}
        ],
        "status": {
            "conditions": conditions,
            "hostIP": "192.168.10.21", "hostIPs": [{"ip": "192.168.10.21"}],
            "containerStatuses": [container_status("app", "registry.example/app:1.0"), container_status("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.14.10")],
            "initContainerStatuses": [container_status("linkerd-init", "cr.l5d.io/linkerd/proxy-init:v2.2.3")]
        }
    })
}

fn table(limits: Limits) -> SliceTable {
    let kinds = watched_kinds()
        .into_iter()
        .map(|ar| SliceKind::from(&ar))
        .collect();
    SliceTable::new(kinds, "classifier-system").with_limits(limits)
}

fn kind_index(kind: &kinds::KubeKind) -> usize {
    watched_kinds()
        .iter()
        .position(|k| k.kind == kind.kind)
        .expect("a watched kind")
}

/// The compiler's table takes one object as its watch would.
fn upsert(t: &mut SliceTable, kind: &'static kinds::KubeKind, json: &[u8]) -> Result<()> {
    let obj: ApiObject = serde_json::from_slice(json)?;
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let text = project(&api_resource(kind), obj)?;
    t.upsert(kind_index(kind), &ns, &name, text);
    Ok(())
}

/// Bytes a node receives for the table's writes (each taken as
/// written); remembers each slice's last size (what its deletion event
/// carries).
fn flush(t: &mut SliceTable, last: &mut HashMap<String, usize>) -> usize {
    let writes = t.take_writes();
    for w in &writes {
        t.written(w.name());
    }
    writes
        .into_iter()
        .map(|w| match w {
            Write::Put { name, body } => {
                let bytes = body.len() + SLICE_ENVELOPE + r#"{"type":"MODIFIED","object":}"#.len();
                last.insert(name, bytes);
                bytes
            }
            Write::Delete { name } => last.remove(&name).unwrap_or(0),
        })
        .sum()
}

/// A node reading slices of `limits`: the list, and the churn's writes.
fn slices_side(pods: u32, limits: Limits) -> Result<Value> {
    let base = CountingAlloc::held();
    let started = Instant::now();
    let mut t = table(limits);
    for (kind, value) in cluster_objects(pods) {
        upsert(&mut t, kind, &serde_json::to_vec(&value)?)?;
    }
    let mut last = HashMap::new();
    let list = flush(&mut t, &mut last);
    let fill_s = started.elapsed().as_secs_f64();
    let held = CountingAlloc::held().saturating_sub(base);
    let slices = t.slices();
    let mut sizes = Vec::with_capacity(CHANGES as usize);
    for n in 0..CHANGES {
        for e in churn_events(n, pods) {
            match e {
                Event::Apply(kind, json) => upsert(&mut t, kind, &json)?,
                Event::Delete(key) => {
                    let mut parts = key.as_str().split('\0').skip(1);
                    let (ns, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    t.remove(kind_index(&kinds::POD), ns, name);
                }
            }
            sizes.push(flush(&mut t, &mut last));
        }
    }
    let mut figures = per_change(&mut sizes, list);
    figures["slices"] = json!(slices);
    figures["compiler_fill_s"] = json!(fill_s);
    figures["compiler_held_mib"] = json!(mib(held));
    Ok(figures)
}

/// The list's size, and per change (event) the mean and p99 bytes a node
/// receives, and what 200 changes a second make of them.
fn per_change(sizes: &mut [usize], list: usize) -> Value {
    sizes.sort_unstable();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    let p99 = sizes[(sizes.len() * 99 / 100).min(sizes.len().saturating_sub(1))];
    json!({
        "list_mib": mib(list),
        "change_kib_mean": mean / 1024.0,
        "change_kib_p99": p99 as f64 / 1024.0,
        "node_mib_per_s_at_200": mean * 200.0 / 1048576.0,
    })
}

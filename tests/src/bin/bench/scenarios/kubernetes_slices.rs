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
        "objects": objects_side(pods, pod_event_bytes),
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

/// A node watching the objects: a list, and the churn's events.
fn objects_side(pods: u32, pod_event_bytes: usize) -> Value {
    let list: usize = cluster_objects(pods)
        .map(|(_, v)| serde_json::to_vec(&v).map_or(0, |j| j.len()))
        .sum();
    let mut sizes: Vec<usize> = (0..CHANGES)
        .flat_map(|n| churn_events(n, pods))
        .map(|e| match e {
            Event::Apply(_, json) => json.len() + r#"{"type":"MODIFIED","object":}"#.len(),
            Event::Delete(_) => pod_event_bytes,
        })
        .collect();
    per_change(&mut sizes, list)
}

fn table(limits: Limits) -> SliceTable {
    let kinds = watched_kinds()
        .into_iter()
        .map(|ar| SliceKind {
            kind: ar.kind,
            api_version: ar.api_version,
            plural: ar.plural,
        })
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

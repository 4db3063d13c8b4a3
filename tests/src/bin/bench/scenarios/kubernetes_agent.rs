//! Scenario 6, the real agent: `classifier agent --kubernetes` started
//! against an API server holding the cluster of this scenario at its
//! largest size, until the policy of those objects is in the kernel.
//!
//! The server is the tests' fake (`tests::fake_kube`), answering lists in
//! pages of what the agent asks for (500) as the API server does; it makes
//! each page's JSON on the same two cores while the agent reads it.
//!
//! - `agent_start_s`: from starting the agent to the log line of its first
//!   policy from Kubernetes (every page listed, converted, the policy
//!   compiled and written); `agent_attached_s` until its built-in policy
//!   is in force (programs loaded and attached), `agent_listed_s` until it
//!   logs that every kind is listed; `agent_cpu_s`, the agent process's CPU
//!   time (every thread) over all of it.
//! - `agent_peak_rss_mib`: the agent process's own peak resident memory
//!   (`VmHWM`) over that: what the DaemonSet's memory request must cover.
//!   The in-process figures of `kubernetes_churn` bound it from above
//!   with the bench's own generator included; this is the agent alone,
//!   with its HTTP client, runtime and watch buffers.
//! - `agent_rss_mib`: its `VmRSS` once the policy is in; `agent_map_mib`,
//!   the memory of its pinned maps then (bpftool's `bytes_memlock`), which
//!   the kernel charges to the agent's memory cgroup too.
//! - `agent_rules`: the rules that policy has, as its log line says (the
//!   in-process compile of the same objects gives the scenario's `rules`).
//!
//! `compiler_*`: the real `classifier compiler` against the same API
//! server (which takes its writes): `compiler_publish_s` from its start to
//! its marker (every object listed, projected and written as slices of
//! one object), `compiler_cpu_s`, `compiler_peak_rss_mib` (its VmHWM over
//! that) and `compiler_rss_mib` after, `compiler_writes`.
//!
//! `slices_agent_*`: the same, for an agent reading the objects from a
//! central compiler's slices (`--kubernetes-source slices`): the slices
//! the compiler's own table makes of the same cluster, served in pages of
//! the agent's asking (100 slices), with the compiler's marker.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use classifier_user::sources::{kinds, kubernetes::ApiObject};
use serde_json::{json, Value};
use tests::{fake_kube::FakeApi, Sandbox};

use super::kubernetes_scale::{api_resource, cluster_objects};
use crate::system::{peak_rss_kib, rss_kib};

/// How long the agent may take to its first Kubernetes policy.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The API path, list kind and list apiVersion of `kind`, as the agent's
/// watch asks for it.
fn served_as(kind: &kinds::KubeKind) -> (String, String, String) {
    let ar = api_resource(kind);
    let path = <ApiObject as kube::core::Resource>::url_path(&ar, None);
    (path, format!("{}List", kind.kind), ar.api_version)
}

/// The `rules=N` of the agent's first policy from Kubernetes.
fn rules_applied(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("source=\"kubernetes (") && l.contains("policy applied"))?;
    let rules = line.split_once(" rules=")?.1;
    rules.split_whitespace().next()?.parse().ok()
}

pub(crate) fn agent_at_scale(pods: u32) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fake = rt.block_on(FakeApi::start(&[]));
    let mut by_kind: BTreeMap<&str, (&kinds::KubeKind, Vec<Value>)> = BTreeMap::new();
    for (kind, object) in cluster_objects(pods) {
        by_kind
            .entry(kind.kind)
            .or_insert((kind, Vec::new()))
            .1
            .push(object);
    }
    let objects: usize = by_kind.values().map(|(_, o)| o.len()).sum();
    for (kind, list) in by_kind.into_values() {
        let (path, list_kind, api_version) = served_as(kind);
        fake.serve_objects(&path, &list_kind, &api_version, list);
    }
    let direct = run_agent(&fake, &["--kubernetes"], objects, "agent")?;
    let compiler = run_compiler(&fake, objects)?;
    fake.stop();
    drop(rt);
    let from_slices = agent_from_slices(pods)?;
    Ok(merge(merge(direct, compiler), from_slices))
}

/// The central compiler publishing the cluster `fake` serves.
fn run_compiler(fake: &FakeApi, objects: usize) -> Result<Value> {
    use classifier_user::sources::kubernetes::slices;
    const NS: &str = "classifier-system";
    let slices_path = <slices::ClassifierSlice as kube::core::Resource>::url_path(&(), Some(NS));
    fake.serve_writable(
        &slices_path,
        "ClassifierSliceList",
        "classifier.dev/v1alpha1",
    );
    let leases = "/apis/coordination.k8s.io/v1/namespaces/classifier-system/leases";
    fake.serve_writable(leases, "LeaseList", "coordination.k8s.io/v1");
    let sb = Sandbox::new("bench-compiler-scale")?;
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let t = Instant::now();
    let compiler = tests::CompilerProcess::start("bench", &kubeconfig, NS, 15)?;
    tests::wait_for("the compiler's marker", START_TIMEOUT, || {
        Ok(fake.object(&slices_path, NS, slices::SYNCED))
    })
    .with_context(|| compiler.log())?;
    let publish_s = t.elapsed().as_secs_f64();
    let pid = compiler.pid();
    let cpu_s = crate::system::process_cpu(pid)?.as_secs_f64();
    let (peak_kib, after_kib) = (peak_rss_kib(pid)?, rss_kib(pid)?);
    let writes = fake
        .writes()
        .iter()
        .filter(|w| w.contains("/classifierslices"))
        .count();
    drop(compiler);
    crate::step(&format!(
        "  the central compiler, {objects} objects: published in {publish_s:.2} s ({writes} slice writes; CPU {cpu_s:.2} s), peak RSS {:.0} MiB, then {:.0} MiB",
        peak_kib as f64 / 1024.0,
        after_kib as f64 / 1024.0,
    ));
    Ok(json!({
        "compiler_publish_s": publish_s,
        "compiler_cpu_s": cpu_s,
        "compiler_peak_rss_mib": peak_kib as f64 / 1024.0,
        "compiler_rss_mib": after_kib as f64 / 1024.0,
        "compiler_writes": writes,
    }))
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(to), Value::Object(from)) = (a.as_object_mut(), b) {
        to.extend(from);
    }
    a
}

/// The agent reading the cluster from slices of it.
fn agent_from_slices(pods: u32) -> Result<Value> {
    use classifier_user::compiler::{project, SliceKind, SliceTable, Write};
    use classifier_user::sources::kubernetes::{slices, watched_kinds};
    const NS: &str = "classifier-system";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fake = rt.block_on(FakeApi::start(&[]));
    let watched = watched_kinds();
    let mut table = SliceTable::new(watched.iter().map(SliceKind::from).collect(), NS);
    let mut objects = 0;
    for (kind, object) in cluster_objects(pods) {
        let idx = watched
            .iter()
            .position(|k| k.kind == kind.kind)
            .context("kind")?;
        let obj: ApiObject = serde_json::from_value(object)?;
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        table.upsert(idx, &ns, &name, project(&watched[idx], obj)?);
        objects += 1;
    }
    let mut served = Vec::new();
    for w in table.take_writes() {
        if let Write::Put { body, .. } = w {
            served.push(serde_json::from_str::<Value>(&body)?);
        }
    }
    served.push(slices::marker(NS));
    let path = <slices::ClassifierSlice as kube::core::Resource>::url_path(&(), Some(NS));
    let list_kind = format!("{}List", slices::KIND);
    fake.serve_objects(
        &path,
        &list_kind,
        &format!("{}/{}", slices::GROUP, slices::VERSION),
        served,
    );
    drop(table);
    let args = [
        "--kubernetes",
        "--kubernetes-source",
        "slices",
        "--slices-namespace",
        NS,
    ];
    let figures = run_agent(&fake, &args, objects, "slices_agent")?;
    fake.stop();
    drop(rt);
    Ok(figures)
}

/// Starts the agent with `args` against `fake` until its first policy
/// from Kubernetes; its figures, named `<prefix>_...`.
fn run_agent(fake: &FakeApi, args: &[&str], objects: usize, prefix: &str) -> Result<Value> {
    let mut sb = Sandbox::new("bench-agent-scale")?;
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let kubeconfig = kubeconfig.to_str().context("kubeconfig path")?.to_owned();
    let t = Instant::now();
    sb.start_agent_with_env(args, &[("KUBECONFIG", &kubeconfig)])?;
    let attached_s = t.elapsed().as_secs_f64();
    sb.wait_for_log("policy sources listed from Kubernetes", 1, START_TIMEOUT)?;
    let listed_s = t.elapsed().as_secs_f64();
    sb.wait_for_log("source=\"kubernetes (", 1, START_TIMEOUT)?;
    let start_s = t.elapsed().as_secs_f64();
    let pid = sb.agent_pid().context("agent pid")?;
    let cpu_s = crate::system::process_cpu(pid)?.as_secs_f64();
    let (peak_kib, after_kib) = (peak_rss_kib(pid)?, rss_kib(pid)?);
    let map_bytes = super::footprint::map_memory_bytes(&sb.pins)?;
    let rules = rules_applied(&sb.agent_log());
    sb.stop_agent();

    crate::step(&format!(
        "  the agent ({}), {objects} objects from a paging API server: policy in {start_s:.2} s (its built-in policy in force after {attached_s:.2} s, every object listed after {listed_s:.2} s; {} rules; agent CPU {cpu_s:.2} s), peak RSS {:.0} MiB, then {:.0} MiB; its maps {:.0} MiB",
        args.join(" "),
        rules.map_or("?".to_owned(), |r| r.to_string()),
        peak_kib as f64 / 1024.0,
        after_kib as f64 / 1024.0,
        map_bytes as f64 / 1048576.0,
    ));
    let figures = [
        ("start_s", json!(start_s)),
        ("attached_s", json!(attached_s)),
        ("listed_s", json!(listed_s)),
        ("cpu_s", json!(cpu_s)),
        ("peak_rss_mib", json!(peak_kib as f64 / 1024.0)),
        ("rss_mib", json!(after_kib as f64 / 1024.0)),
        ("map_mib", json!(map_bytes as f64 / 1048576.0)),
        ("rules", json!(rules)),
    ];
    Ok(Value::Object(
        figures
            .into_iter()
            .map(|(name, v)| (format!("{prefix}_{name}"), v))
            .collect(),
    ))
}

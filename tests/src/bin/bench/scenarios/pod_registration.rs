//! 9: how long a new pod's cgroup goes without its namespace's
//! scope. A real agent on its own sandbox, with a policy that knows N Pods
//! (half of them in a namespace with rules of its own); their cgroups are
//! created one at a time in the kubelet's systemd layout, each timed from
//! mkdir to its `CLS_SCOPES` entry (read from the pinned map), then
//! removed, timed to the entry's removal.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use classifier_user::datapath::{scopes::ScopeReader, PinDir};
use serde_json::{json, Value};
use tests::Sandbox;

use crate::{
    args::Plan,
    stats::{summarize, summary_json},
};

fn uid(i: usize) -> String {
    format!("be4c0000-0000-4000-8000-{i:012x}")
}

/// Time from `since` until `done(entry)` holds.
fn until(
    reader: &ScopeReader,
    id: u64,
    since: Instant,
    done: impl Fn(Option<u32>) -> bool,
) -> Result<f64> {
    let deadline = since + Duration::from_secs(10);
    loop {
        if done(reader.get(id)?) {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            bail!("cgroup {id}: no change in CLS_SCOPES within 10 s");
        }
        std::thread::yield_now();
    }
}

pub(crate) fn pod_registration(plan: &Plan) -> Result<Value> {
    let pods = if plan.quick { 50 } else { 200 };
    let mut sb = Sandbox::new("bench-pods")?;
    let qos = sb.cgroup.join("kubepods.slice/kubepods-burstable.slice");
    fs::create_dir_all(&qos)?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    let mut docs = String::from("---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: own\n  namespace: team-a\n  annotations: {config.linkerd.io/opaque-ports: \"4222\"}\nspec:\n  trafficPolicy: Allow\n  networks: [{cidr: 192.0.2.0/24}]\n");
    for i in 0..pods {
        let ns = if i % 2 == 0 { "team-a" } else { "team-b" };
        docs += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: {ns}\n  uid: {}\nstatus:\n  phase: Running\n  podIP: 10.{}.{}.{}\n",
            uid(i),
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    fs::write(dir.join("all.yaml"), docs)?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_log("watching pod cgroups (inotify)", 1, Duration::from_secs(10))?;
    let reader = ScopeReader::open(&PinDir::new(sb.pins.clone()))?;

    let mut registered = Vec::new();
    let mut created = Vec::new();
    for i in 0..pods {
        let pod = qos.join(format!(
            "kubepods-burstable-pod{}.slice",
            uid(i).replace('-', "_")
        ));
        let start = Instant::now();
        fs::create_dir(&pod)?;
        let id = fs::metadata(&pod)?.ino();
        registered.push(until(&reader, id, start, |e| e.is_some())?);
        created.push((pod, id));
    }
    let mut unregistered = Vec::new();
    for (pod, id) in created {
        let start = Instant::now();
        fs::remove_dir(&pod)?;
        unregistered.push(until(&reader, id, start, |e| e.is_none())?);
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "pods": pods,
        "registered_ms": summary_json(summarize(&registered)),
        "registered_max_ms": max(&registered),
        "unregistered_ms": summary_json(summarize(&unregistered)),
        "unregistered_max_ms": max(&unregistered),
    }))
}

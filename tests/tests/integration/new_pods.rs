//! New pods: a pod cgroup created while the agent runs is
//! registered under its namespace as it appears (inotify on the kubepods
//! tree, not the 1 s poll); until it is, a process in it gets no verdict
//! from a policy with namespace-scoped rules, rather than the verdicts of
//! processes outside pods; a removed pod cgroup is unregistered.
//!
//! The agent reads `CLS_SCOPES` from its pins; so does the test, directly
//! (`ScopeReader`), to wait for the registration and time it.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use classifier_common::{SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN};
use classifier_user::datapath::{scopes::ScopeReader, PinDir};
use serde_json::Value;
use tests::{privileged, Sandbox};

/// UIDs of the pods the tests create, `pod(i)`.
fn uid(i: usize) -> String {
    format!("7e57c0de-0000-4000-8000-{i:012x}")
}

fn pod_doc(uid: &str, namespace: &str, name: &str, ip: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {uid}\nstatus:\n  phase: Running\n  podIP: {ip}\n")
}

/// A node-wide rule: 5222 on loopback is opaque for every client whose
/// namespace has no rule of its own for it. team-a's own EgressNetwork
/// covers loopback too, with 4222 opaque: for its pods every other port,
/// 5222 included, is detected (a `detect` rule).
const POLICY: &str = "---\napiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n    - networks: [\"127.0.0.0/8\"]\n      ports: \"5222\"\n      protocol: opaque\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: own\n  namespace: team-a\n  annotations: {config.linkerd.io/opaque-ports: \"4222\"}\nspec:\n  trafficPolicy: Allow\n  networks: [{cidr: 127.0.0.0/8}]\n";

/// The kubelet's systemd layout below the sandbox's cgroup: the pod root
/// and the Burstable QoS class, as a node has them before its pods.
fn qos_class(sb: &Sandbox) -> PathBuf {
    let qos = sb.cgroup.join("kubepods.slice/kubepods-burstable.slice");
    fs::create_dir_all(&qos).expect("kubepods tree");
    qos
}

fn pod_cgroup(qos: &Path, uid: &str) -> PathBuf {
    qos.join(format!(
        "kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ))
}

fn cgroup_id(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

fn scopes(sb: &Sandbox) -> ScopeReader {
    ScopeReader::open(&PinDir::new(sb.pins.clone())).expect("open CLS_SCOPES")
}

/// Waits until `cgroup_id`'s entry satisfies `want`; returns how long it
/// took from `since`, and the entry.
fn wait_for_entry(
    reader: &ScopeReader,
    cgroup_id: u64,
    since: Instant,
    what: &str,
    want: impl Fn(Option<u32>) -> bool,
) -> Result<(Duration, Option<u32>)> {
    let deadline = since + Duration::from_secs(10);
    loop {
        let entry = reader.get(cgroup_id)?;
        if want(entry) {
            return Ok((since.elapsed(), entry));
        }
        if Instant::now() > deadline {
            bail!("cgroup {cgroup_id}: {what} not reached within 10 s (entry {entry:?})");
        }
        std::thread::yield_now();
    }
}

/// The verdict a client in `cgroup` gets for 127.0.0.1:`port`.
fn verdict_from(sb: &Sandbox, cgroup: &Path, port: u16) -> Result<Value> {
    let addr = format!("127.0.0.1:{port}");
    let server = sb.serve(&addr, 1, None)?;
    let out = sb.probe_in_cgroup(&["connect", &addr], cgroup).output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok"),
        "connect from {}: {out:?}",
        cgroup.display()
    );
    Ok(server.results()?.remove(0))
}

fn counter(sb: &Sandbox, name: &str) -> Result<u64> {
    let stats = sb.stats()?;
    stats["counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name} in {stats}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A pod's cgroup and its id.
type PodCgroup = (PathBuf, u64);

/// Pods the first test creates one at a time.
const NEW_PODS: usize = 20;

/// (a) and (c): pods created after the agent started are registered under
/// their namespace as their cgroups appear (the delay from mkdir to the
/// `CLS_SCOPES` entry is printed), in a QoS class that existed and in one
/// created with the pod; removed, they are unregistered.
#[test]
fn a_new_pod_cgroup_is_registered_as_it_appears_and_unregistered_when_removed() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("new-pods")?;
    let qos = qos_class(&sb);
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    let mut docs = POLICY.to_owned();
    for i in 0..NEW_PODS {
        let namespace = if i % 2 == 0 { "team-a" } else { "team-b" };
        docs += &pod_doc(
            &uid(i),
            namespace,
            &format!("p{i}"),
            &format!("10.244.1.{}", i + 1),
        );
    }
    fs::write(dir.join("all.yaml"), docs)?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_log("watching pod cgroups (inotify)", 1, Duration::from_secs(10))?;
    let reader = scopes(&sb);

    // The pod root is marked "namespace unknown" (the kernel's fallback
    // for pods not registered yet).
    let root = sb.cgroup.join("kubepods.slice");
    let (_, entry) = wait_for_entry(
        &reader,
        cgroup_id(&root),
        Instant::now(),
        "pod root marked",
        |e| e.is_some(),
    )?;
    assert_eq!(entry, Some(SCOPE_FLAG_POD_UNKNOWN));

    let (delays, mut created) = create_pods(&reader, &qos)?;
    let (first_in_class, pod) = first_pod_of_a_new_class(&sb, &reader, &dir)?;
    created.push(pod);
    let max = *delays.iter().max().unwrap();
    let med = median(delays.clone());
    println!(
        "new pod cgroup -> registered: median {:.3} ms, max {:.3} ms over {NEW_PODS} pods; first pod of a new QoS class {:.3} ms",
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        first_in_class.as_secs_f64() * 1e3
    );

    // (c) Removed pods are unregistered (containers first, as the kubelet
    // does); the pod root keeps its marker.
    for (pod, id) in &created {
        for entry in fs::read_dir(pod)?.flatten() {
            if entry.file_type()?.is_dir() {
                fs::remove_dir(entry.path())?;
            }
        }
        let start = Instant::now();
        fs::remove_dir(pod)?;
        wait_for_entry(&reader, *id, start, "pod unregistered", |e| e.is_none())?;
    }
    assert_eq!(reader.get(cgroup_id(&root))?, Some(SCOPE_FLAG_POD_UNKNOWN));
    let log = sb.agent_log();
    assert!(log.contains("pod cgroup registered"), "{log}");
    assert!(log.contains("pod cgroup unregistered"), "{log}");
    Ok(())
}

/// Pods appear one at a time in `qos`, each with a container cgroup below
/// it, as the kubelet creates them; each is registered under its
/// namespace (team-a, with rules of its own, for even `i`). Returns the
/// delays from mkdir to registration, and each pod's cgroup and its id.
fn create_pods(reader: &ScopeReader, qos: &Path) -> Result<(Vec<Duration>, Vec<PodCgroup>)> {
    let mut delays = Vec::new();
    let mut created = Vec::new();
    for i in 0..NEW_PODS {
        let pod = pod_cgroup(qos, &uid(i));
        let start = Instant::now();
        fs::create_dir(&pod)?;
        let id = cgroup_id(&pod);
        fs::create_dir(pod.join("cri-containerd-1.scope"))?;
        let (delay, entry) = wait_for_entry(reader, id, start, "pod registered", |e| e.is_some())?;
        let value = entry.unwrap();
        assert_eq!(value & SCOPE_FLAG_POD_UNKNOWN, 0, "pod {i}: {value:#x}");
        if i % 2 == 0 {
            // team-a has rules of its own: its scope, flagged.
            assert_ne!(value & 0xffff, 0, "pod {i}: {value:#x}");
            assert_ne!(value & SCOPE_FLAG_OWN_RULES, 0, "pod {i}: {value:#x}");
        } else {
            // team-b has none (learning is on, so it has a scope id).
            assert_eq!(value & SCOPE_FLAG_OWN_RULES, 0, "pod {i}: {value:#x}");
        }
        delays.push(delay);
        created.push((pod, id));
    }
    Ok((delays, created))
}

/// A pod in a QoS class that appears with it (the first BestEffort pod on
/// a node): the class gets its watch, the pod its entry. Returns the delay
/// to registration, and the pod's cgroup and its id.
fn first_pod_of_a_new_class(
    sb: &Sandbox,
    reader: &ScopeReader,
    policy_dir: &Path,
) -> Result<(Duration, PodCgroup)> {
    let besteffort = sb.cgroup.join("kubepods.slice/kubepods-besteffort.slice");
    let pod = besteffort.join(format!(
        "kubepods-besteffort-pod{}.slice",
        uid(NEW_PODS).replace('-', "_")
    ));
    // Its Pod is known too: add it to the policy first.
    fs::write(
        policy_dir.join("late.yaml"),
        pod_doc(&uid(NEW_PODS), "team-a", "late", "10.244.1.200"),
    )?;
    sb.wait_for_log("policy applied", 2, Duration::from_secs(10))?;
    let start = Instant::now();
    fs::create_dir_all(pod.join("cri-containerd-2.scope"))?;
    let id = cgroup_id(&pod);
    let (delay, _) = wait_for_entry(
        reader,
        id,
        start,
        "pod in a new QoS class registered",
        |e| e.is_some(),
    )?;
    Ok((delay, (pod, id)))
}

/// (b) The window: a process in a pod cgroup whose Pod the agent does not
/// know yet gets no verdict (counted), not the node-wide rule's; once the
/// Pod is known it gets its namespace's verdict. Processes outside pods
/// keep the node-wide one throughout.
#[test]
fn an_unregistered_pod_gets_no_verdict_until_its_pod_is_known() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("new-pods-window")?;
    let qos = qos_class(&sb);
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    // Another pod makes the policy one that knows this node's pods.
    fs::write(
        dir.join("all.yaml"),
        format!(
            "{POLICY}{}",
            pod_doc(&uid(100), "team-b", "other", "10.244.2.1")
        ),
    )?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_log("watching pod cgroups (inotify)", 1, Duration::from_secs(10))?;
    let reader = scopes(&sb);

    // The pod's cgroup appears before its Pod is known (the watch of the
    // API server lags behind the kubelet).
    let pod = pod_cgroup(&qos, &uid(1));
    let container = pod.join("cri-containerd-1.scope");
    fs::create_dir_all(&container)?;
    let id = cgroup_id(&pod);
    sb.wait_for_log("its Pod is not known yet", 1, Duration::from_secs(10))?;
    assert_eq!(reader.get(id)?, None, "registered without its Pod");

    // The node-wide rule holds for node processes...
    let node = verdict_from(&sb, &sb.cgroup.clone(), 5222)?;
    assert_eq!(node["protocol"], "opaque", "node process: {node}");
    assert!(
        node["source"].as_str().unwrap_or("").starts_with("rule:"),
        "node process: {node}"
    );
    // ...but the unregistered pod gets no verdict at all.
    let before = counter(&sb, "pod_unregistered")?;
    let v = verdict_from(&sb, &container, 5222)?;
    assert_eq!(v["protocol"], "unknown", "unregistered pod: {v}");
    assert_eq!(v["source"], "none", "unregistered pod: {v}");
    // Nor a default opaque port's verdict (its namespace may say detect).
    let v = verdict_from(&sb, &container, 3306)?;
    assert_eq!(v["source"], "none", "unregistered pod, 3306: {v}");
    assert_eq!(counter(&sb, "pod_unregistered")?, before + 2);

    // Its Pod arrives: registered under team-a, whose own EgressNetwork
    // decides (5222: detect; 4222: opaque).
    fs::write(
        dir.join("late.yaml"),
        pod_doc(&uid(1), "team-a", "late", "10.244.2.2"),
    )?;
    let start = Instant::now();
    let (delay, entry) = wait_for_entry(
        &reader,
        id,
        start,
        "pod registered once its Pod is known",
        |e| e.is_some(),
    )?;
    println!(
        "Pod known -> pod cgroup registered: {:.1} ms (the policy file is polled every 0.2 s)",
        delay.as_secs_f64() * 1e3
    );
    assert_ne!(entry.unwrap() & SCOPE_FLAG_OWN_RULES, 0, "{entry:?}");
    let v = verdict_from(&sb, &container, 5222)?;
    assert_eq!(v["protocol"], "unknown", "team-a pod, 5222: {v}");
    assert!(
        v["source"].as_str().unwrap_or("").starts_with("rule:") && v["source"] != node["source"],
        "team-a's own EgressNetwork decides 5222 (detect): {v}"
    );
    let v = verdict_from(&sb, &container, 4222)?;
    assert_eq!(v["protocol"], "opaque", "team-a pod, 4222: {v}");
    let after = counter(&sb, "pod_unregistered")?;
    assert_eq!(after, before + 2, "no more unregistered connects");

    // `classifier stats` shows the counter.
    let out = std::process::Command::new(tests::classifier_bin())
        .args(["stats", "--pin-dir"])
        .arg(&sb.pins)
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("pod unregistered")
                && l.trim_end().ends_with(&after.to_string())),
        "{table}"
    );
    Ok(())
}

/// (b) with `--kubernetes`: the Pod arrives through the API watch after
/// its cgroup appeared. Until then the pod gets no verdict; the global
/// EgressNetwork's opaque port, which node processes get, is not its.
/// Once the Pod is watched, its namespace's own EgressNetwork decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kubernetes_a_pod_gets_its_namespace_verdict_once_the_watch_brings_its_pod(
) -> Result<()> {
    use serde_json::json;
    use tests::fake_kube::{FakeApi, ALL, EGRESS, PODS};

    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let mut sb = Sandbox::new("new-pods-kube")?;
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let qos = qos_class(&sb);
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        sb.start_agent_with_env(
            &["--kubernetes"],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        )?;
        sb.wait_for_log("source=\"kubernetes (", 1, Duration::from_secs(20))?;
        Ok(sb)
    })
    .await??;

    // shop gets an EgressNetwork of its own over loopback (4222 opaque), so
    // the policy has namespace-scoped rules; the recorded global one
    // (linkerd-egress/all-egress: 4222 and 5432 opaque, everything outside
    // the cluster networks) still applies to everyone else.
    fake.push(
        EGRESS,
        vec![json!({"type": "ADDED", "object": {
            "apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork",
            "metadata": {"name": "own", "namespace": "shop", "uid": "0e9e55a1-0000-4000-8000-000000000001",
                "creationTimestamp": "2025-03-06T09:00:00Z",
                "annotations": {"config.linkerd.io/opaque-ports": "4222"}},
            "spec": {"trafficPolicy": "Allow", "networks": [{"cidr": "127.0.0.0/8"}]}}})],
    );
    let new_uid = uid(7);
    let pod = pod_cgroup(&qos, &new_uid);
    let container = pod.join("cri-containerd-7.scope");
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        before_the_watch_brings_the_pod(&sb, &container)?;
        Ok(sb)
    })
    .await??;

    // The watch brings the Pod.
    let start = Instant::now();
    fake.push(
        PODS,
        vec![json!({"type": "ADDED", "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "late-0", "namespace": "shop", "uid": new_uid,
                "creationTimestamp": "2025-03-06T09:01:00Z"},
            "spec": {"containers": [{"name": "app", "image": "app"}], "nodeName": "node-a"},
            "status": {"phase": "Pending"}}})],
    );
    tokio::task::spawn_blocking(move || once_the_watch_brought_the_pod(&sb, &pod, start)).await??;
    Ok(())
}

/// The pod's cgroup appears before the watch brings its Pod: no verdict
/// for it (counted), while node processes get the global EgressNetwork's.
fn before_the_watch_brings_the_pod(sb: &Sandbox, container: &Path) -> Result<()> {
    sb.wait_for_log("source=\"kubernetes (", 2, Duration::from_secs(20))?;
    fs::create_dir_all(container)?;
    sb.wait_for_log("its Pod is not known yet", 1, Duration::from_secs(10))?;
    let node = verdict_from(sb, &sb.cgroup.clone(), 5432)?;
    assert_eq!(
        node["protocol"], "opaque",
        "node process, global EgressNetwork: {node}"
    );
    let v = verdict_from(sb, container, 5432)?;
    assert_eq!(v["source"], "none", "unregistered pod: {v}");
    assert_eq!(counter(sb, "pod_unregistered")?, 1);
    Ok(())
}

/// The watch brought the Pod (at `start`): the pod cgroup is registered,
/// and shop's own EgressNetwork decides for it.
fn once_the_watch_brought_the_pod(sb: &Sandbox, pod: &Path, start: Instant) -> Result<()> {
    let reader = scopes(sb);
    let id = cgroup_id(pod);
    let (delay, entry) = wait_for_entry(&reader, id, start, "pod registered once watched", |e| {
        e.is_some()
    })?;
    println!(
        "Pod watched -> pod cgroup registered: {:.1} ms (the watch's new-pod path, before the debounced recompile)",
        delay.as_secs_f64() * 1e3
    );
    assert_ne!(entry.unwrap() & SCOPE_FLAG_OWN_RULES, 0, "{entry:?}");
    let container = pod.join("cri-containerd-7.scope");
    // shop's own EgressNetwork shadows the global one: 5432 detected
    // (by its rule), 4222 opaque.
    let v = verdict_from(sb, &container, 5432)?;
    assert_eq!(v["protocol"], "unknown", "shop pod, 5432: {v}");
    assert!(
        v["source"].as_str().unwrap_or("").starts_with("rule:"),
        "{v}"
    );
    let v = verdict_from(sb, &container, 4222)?;
    assert_eq!(v["protocol"], "opaque", "shop pod, 4222: {v}");
    assert_eq!(counter(sb, "pod_unregistered")?, 1);
    Ok(())
}

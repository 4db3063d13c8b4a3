//! The phases of the node run, in order, and report.json.
//!
//! 1. host prepared, fake API server (HTTPS) on the pod bridge's gateway,
//!    private containerd, images imported;
//! 2. the DaemonSet's pod from `kubectl kustomize deploy/`: init container,
//!    agent, probes until ready (`agent_ready_ms`);
//! 3. MariaDB pod, the Linkerd-shaped app pod; the agent registers the app
//!    pod's cgroup (`pod_registered_ms`); greeting through the proxy
//!    (`greeting_ms_with_agent`);
//! 4. the ConfigMap changes once (kubelet's `..data` swap); the agent
//!    applies it and stays ready;
//! 5. the agent is SIGKILLed and restarted once: it adopts its pins;
//! 6. rollout: the agent pod is deleted (SIGTERM, grace period) and one of
//!    the second tag created, while the app connects in a loop;
//! 7. uninstall the Kubernetes way; no pins, links or bpffs mounts stay;
//!    greeting again (`greeting_ms_without_agent`);
//! 8. everything removed (also on failure: [`Guard`]).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use serde_json::{json, Value};

use super::{
    apps,
    containerd::Containerd,
    cri::Cri,
    host,
    kubelet::{normalize_image, Kubelet, PodDef, RunningPod},
    layout::{Layout, GATEWAY},
    manifest::Rendered,
    probes::Prober,
    Options,
};
use crate::fake_kube::{self, FakeApi};

const API_PORT: u16 = 6443;
const AGENT: &str = "agent";
const POLICY_FILE: &str = "policy.yaml";

/// Removes everything the run made, whatever happened.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        for problem in Layout::new(&self.0).cleanup() {
            eprintln!("node-e2e: cleanup: {problem}");
        }
    }
}

fn step(msg: &str) {
    eprintln!("node-e2e: {msg}");
}

pub async fn run(opts: &Options) -> Result<Value> {
    ensure!(
        crate::sys::is_root(),
        "the node run needs root (containerd, cgroups, mounts)"
    );
    for tool in ["containerd", "ctr", "runc", "kubectl", "bpftool", "ip"] {
        which(tool)?;
    }
    ensure!(
        Path::new(super::containerd::CNI_BIN_DIR)
            .join("bridge")
            .exists(),
        "no CNI bridge plugin in {} (Debian package containernetworking-plugins)",
        super::containerd::CNI_BIN_DIR
    );
    let cgroup2 = host::cgroup2_mount()?;
    let leftovers = Layout::new(&cgroup2).cleanup();
    for l in &leftovers {
        step(&format!("leftover of an earlier run: {l}"));
    }
    let _guard = Guard(cgroup2.clone());
    let layout = Layout::new(&cgroup2);
    host::prepare(&layout)?;

    let (ca, tls) = fake_kube::tls_identity(GATEWAY);
    let api = FakeApi::start_tls(
        &fake_kube::ALL.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        format!("{GATEWAY}:{API_PORT}").parse()?,
        tls,
    )
    .await;
    api.push(
        fake_kube::NAMESPACES,
        vec![json!({"type": "ADDED", "object": apps::namespace_object()})],
    );

    let mut containerd = Containerd::start(&layout, &normalize_image(&opts.pause_image))?;
    for archive in &opts.archives {
        step(&format!("importing {}", archive.display()));
        containerd.import(archive)?;
    }
    let cri = Cri::connect(&layout.socket).await?;
    let runtime = cri.version().await?;
    step(&format!("runtime: {runtime}"));

    let rendered = Rendered::kustomize(&opts.deploy)?;
    let ds = rendered.daemonset()?;
    let ds_namespace = ds
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let sa_files = BTreeMap::from([
        ("token".to_string(), fake_token().into_bytes()),
        ("ca.crt".to_string(), ca.into_bytes()),
        ("namespace".to_string(), ds_namespace.clone().into_bytes()),
    ]);
    let mut kubelet = Kubelet {
        cri: cri.clone(),
        host_paths: BTreeMap::from([
            ("/sys/fs/bpf".to_string(), layout.bpffs.clone()),
            ("/sys/fs/cgroup".to_string(), layout.host_cgroup.clone()),
        ]),
        config_maps: rendered.config_maps()?,
        service_account: Some((sa_files, GATEWAY.to_string(), API_PORT)),
        layout,
    };
    let result = phases(opts, &mut kubelet, &api, &ds, &runtime).await;
    // Orderly teardown through the CRI (CNI DEL releases addresses and
    // removes the veths); the guard removes whatever is left.
    for id in cri.list_sandboxes().await.unwrap_or_default() {
        let _ = cri.stop_sandbox(&id).await;
        let _ = cri.remove_sandbox(&id).await;
    }
    containerd.stop();
    api.stop();
    let report = result?;
    fs::create_dir_all(opts.out.parent().unwrap_or(Path::new(".")))?;
    fs::write(&opts.out, serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

async fn phases(
    opts: &Options,
    kubelet: &mut Kubelet,
    api: &FakeApi,
    ds: &DaemonSet,
    runtime: &str,
) -> Result<Value> {
    let template = ds.spec.template.clone();
    let agent_container = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == AGENT))
        .cloned()
        .context("the DaemonSet has no container named agent")?;
    let agent_image = agent_container
        .image
        .clone()
        .context("agent without image")?;
    let grace = template
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);

    // 2. The agent pod.
    let (mut agent, prober, agent_ready_ms) =
        start_agent_pod(kubelet, ds, &agent_container).await?;

    // 3. Workloads.
    let Workloads {
        client,
        db_ip,
        pod_registered_ms,
        greeting_with,
    } = start_workloads(opts, kubelet, api, &agent, &agent_image).await?;
    let db_ip = db_ip.as_str();

    // 4. ConfigMap change.
    config_map_change(kubelet, &agent, &prober).await?;

    // 5. SIGKILL and restart.
    let prober = kill_and_restart(kubelet, &mut agent, &agent_container, prober).await?;
    let greeting_after_restart = apps::greeting_ms(&kubelet.cri, &client, db_ip).await?;

    // 6. Rollout.
    let (rollout, agent, prober) =
        rollout(opts, kubelet, ds, agent, prober, grace, &client, db_ip).await?;

    // 7. Uninstall.
    let uninstall = uninstall(opts, kubelet, ds, agent, prober, grace).await?;
    let greeting_without = apps::greeting_ms(&kubelet.cri, &client, db_ip).await?;
    step(&format!(
        "greeting without the classifier: {greeting_without} ms"
    ));

    let report = json!({
        "runtime": runtime,
        "agent_ready_ms": agent_ready_ms,
        "pod_registered_ms": pod_registered_ms,
        "greeting_ms_with_agent": greeting_with,
        "greeting_ms_after_restart": greeting_after_restart,
        "greeting_ms_without_agent": greeting_without,
        "detect_timeout_ms": opts.detect_timeout_ms,
        "rollout": rollout,
        "uninstall": uninstall,
        "substituted_host_paths": kubelet.host_paths,
    });
    ensure!(
        greeting_with < 1000,
        "greeting with the agent took {greeting_with} ms (must be under 1000)"
    );
    ensure!(
        greeting_without as f64 >= 0.9 * opts.detect_timeout_ms as f64,
        "greeting without the classifier took {greeting_without} ms: under 0.9 of the proxy's detect timeout \
         ({} ms), so something still classified",
        opts.detect_timeout_ms
    );
    Ok(report)
}

/// Runs the DaemonSet's pod and waits for the agent to be ready; returns
/// the pod, its prober and how long readiness took from creation.
async fn start_agent_pod(
    kubelet: &mut Kubelet,
    ds: &DaemonSet,
    agent_container: &Container,
) -> Result<(RunningPod, Prober, u64)> {
    step("agent pod: sandbox, init containers, agent");
    let agent_def = daemonset_pod(ds, &uid(1), None)?;
    let agent = kubelet.run_pod(&agent_def).await?;
    let created = agent.containers[AGENT].1;
    let prober = Prober::start(&agent.ip, agent_container, "agent")?;
    let ready_at = prober
        .wait_ready(Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("agent: {e:#}\n{}", kubelet.current_log(&agent, AGENT)))?;
    let agent_ready_ms = ready_at.duration_since(created).as_millis() as u64;
    step(&format!(
        "agent ready {agent_ready_ms} ms after its container was created"
    ));
    ensure!(
        !host::bpffs_mounts(&kubelet.layout).is_empty(),
        "the init container's bpffs mount did not reach the host (Bidirectional)"
    );
    Ok((agent, prober, agent_ready_ms))
}

/// The workloads' pods, as the later phases use them.
struct Workloads {
    /// The app pod's client container.
    client: String,
    db_ip: String,
    pod_registered_ms: u64,
    greeting_with: u64,
}

/// Runs MariaDB and the app pod (announced to the agent through the API),
/// waits for the agent to register the app's cgroup, and queries the
/// database through the proxy.
async fn start_workloads(
    opts: &Options,
    kubelet: &mut Kubelet,
    api: &FakeApi,
    agent: &RunningPod,
    agent_image: &str,
) -> Result<Workloads> {
    let db_def = apps::mariadb_pod(&opts.mariadb_image, &uid(2))?;
    let db = kubelet.run_pod(&db_def).await?;
    wait_greeting_from_host(&db.ip).await?;
    step(&format!("mariadb pod at {}", db.ip));
    let app_def = apps::app_pod(
        agent_image,
        &opts.tools_image,
        &opts.mariadb_image,
        &uid(3),
        opts.detect_timeout_ms,
    )?;
    api.push(
        fake_kube::PODS,
        vec![json!({"type": "ADDED", "object": apps::pod_object(&app_def, "")})],
    );
    let log_before = kubelet.current_log(agent, AGENT).lines().count();
    let app_created = Instant::now();
    let app = kubelet.run_pod(&app_def).await?;
    api.push(
        fake_kube::PODS,
        vec![json!({"type": "MODIFIED", "object": apps::pod_object(&app_def, &app.ip)})],
    );
    let registered = wait_log(
        kubelet,
        agent,
        log_before,
        &["pod cgroup registered", &app_def.uid],
        Duration::from_secs(60),
    )
    .await?;
    let pod_registered_ms = registered.duration_since(app_created).as_millis() as u64;
    step(&format!(
        "app pod cgroup registered {pod_registered_ms} ms after its sandbox was created"
    ));
    let client = app.containers["app"].0.clone();
    // The server greets before its users exist (the image initialises its
    // data directory on first start): retry, as a readiness gate would.
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = loop {
        match apps::mariadb_query(&kubelet.cri, &client, &db.ip).await {
            Ok(q) => break q,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    ensure!(
        query == "42",
        "mariadb client through the proxy answered {query:?}"
    );
    let greeting_with = apps::greeting_ms(&kubelet.cri, &client, &db.ip).await?;
    step(&format!("greeting with the agent: {greeting_with} ms"));
    Ok(Workloads {
        client,
        db_ip: db.ip,
        pod_registered_ms,
        greeting_with,
    })
}

/// The DaemonSet's pod: template labels and spec, the node's name suffix;
/// `image` replaces the agent container's image (a DaemonSet update).
fn daemonset_pod(ds: &DaemonSet, uid: &str, image: Option<&str>) -> Result<PodDef> {
    let template = ds.spec.template.clone();
    let mut spec = template.spec.context("DaemonSet template without spec")?;
    if let Some(image) = image {
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.image = Some(image.to_owned());
        }
    }
    Ok(PodDef {
        name: format!(
            "{}-{}",
            ds.metadata.name.clone().unwrap_or_default(),
            &uid[..5]
        ),
        namespace: ds
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        uid: uid.to_owned(),
        labels: template.metadata.and_then(|m| m.labels).unwrap_or_default(),
        spec,
    })
}

async fn config_map_change(
    kubelet: &mut Kubelet,
    agent: &RunningPod,
    prober: &Prober,
) -> Result<()> {
    let volume = agent
        .def
        .spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .context("the agent pod mounts no ConfigMap")?
        .name
        .clone();
    let mut files = kubelet
        .config_maps
        .get(&volume)
        .cloned()
        .unwrap_or_default();
    let policy = String::from_utf8(
        files
            .get(POLICY_FILE)
            .cloned()
            .context("ConfigMap without policy.yaml")?,
    )?;
    ensure!(
        policy.contains("defaultOpaquePorts: \""),
        "the ConfigMap's policy has no defaultOpaquePorts to change"
    );
    let changed = policy.replacen("defaultOpaquePorts: \"", "defaultOpaquePorts: \"4222,", 1);
    files.insert(POLICY_FILE.into(), changed.into_bytes());
    let before = kubelet.current_log(agent, AGENT).lines().count();
    kubelet.update_config_map(agent, &volume, files)?;
    wait_log(
        kubelet,
        agent,
        before,
        &["policy applied"],
        Duration::from_secs(30),
    )
    .await
    .context("the agent did not apply the changed ConfigMap")?;
    prober.check()?;
    step("ConfigMap changed (..data swapped): the agent applied it and stayed ready");
    Ok(())
}

async fn kill_and_restart(
    kubelet: &mut Kubelet,
    agent: &mut RunningPod,
    c: &Container,
    prober: Prober,
) -> Result<Prober> {
    let id = agent.containers[AGENT].0.clone();
    let procs =
        fs::read_to_string(agent.cgroup.join(&id).join("cgroup.procs")).with_context(|| {
            format!(
                "the agent container's cgroup {}",
                agent.cgroup.join(&id).display()
            )
        })?;
    prober.stop()?;
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
    }
    wait_exited(&kubelet.cri, &id, Duration::from_secs(30)).await?;
    let status = kubelet.cri.status(&id).await?;
    ensure!(
        status.exit_code == 137,
        "the SIGKILLed agent exited {} ({})",
        status.exit_code,
        status.reason
    );
    // The kubelet's restart: a new container (attempt 1) in the same sandbox.
    kubelet.cri.remove_container(&id).await?;
    kubelet.start_container(agent, c).await?;
    let prober = Prober::start(&agent.ip, c, "agent (restarted)")?;
    prober.wait_ready(Duration::from_secs(120)).await?;
    let log = kubelet.current_log(agent, AGENT);
    ensure!(
        log.contains("adopted"),
        "the restarted agent did not adopt its pins:\n{log}"
    );
    step("agent SIGKILLed and restarted: it adopted its pins and is ready");
    Ok(prober)
}

/// Link pins: name -> (inode, program id).
fn links(kubelet: &Kubelet) -> Result<BTreeMap<String, (u64, u64)>> {
    let dir = kubelet.layout.bpffs.join("classifier/links");
    let mut out = BTreeMap::new();
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let path = e.path();
        let ino = fs::metadata(&path)?.ino();
        let shown = host::run(
            "bpftool",
            &[
                "--json",
                "link",
                "show",
                "pinned",
                &path.display().to_string(),
            ],
        )?;
        let v: Value = serde_json::from_str(&shown)?;
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (ino, v["prog_id"].as_u64().unwrap_or(0)),
        );
    }
    ensure!(!out.is_empty(), "no link pins in {}", dir.display());
    Ok(out)
}

/// Deletes a pod as the kubelet does: stop probing, StopContainer with the
/// grace period (SIGTERM, SIGKILL after it), then the sandbox.
async fn delete_pod(
    kubelet: &Kubelet,
    pod: RunningPod,
    prober: Option<Prober>,
    grace: i64,
) -> Result<()> {
    if let Some(p) = prober {
        p.stop()?;
    }
    for (name, (id, _)) in &pod.containers {
        let started = Instant::now();
        kubelet.cri.stop_container(id, grace).await?;
        let status = kubelet.cri.status(id).await?;
        if status.state == k8s_cri::v1::ContainerState::ContainerExited as i32 && name == AGENT {
            ensure!(
                status.exit_code == 0 && started.elapsed() < Duration::from_secs(grace as u64),
                "agent on SIGTERM: exit {} after {:?} (grace {grace} s):\n{}",
                status.exit_code,
                started.elapsed(),
                kubelet.current_log(&pod, name)
            );
        }
    }
    kubelet.cri.stop_sandbox(&pod.sandbox).await?;
    kubelet.cri.remove_sandbox(&pod.sandbox).await?;
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "the phase takes over the agent pod and its prober, and needs the client and database it checks"
)]
async fn rollout(
    opts: &Options,
    kubelet: &mut Kubelet,
    ds: &DaemonSet,
    agent: RunningPod,
    prober: Prober,
    grace: i64,
    client: &str,
    db_ip: &str,
) -> Result<(Value, RunningPod, Prober)> {
    step(&format!("rollout to {}", opts.rollout_image));
    let before = links(kubelet)?;
    let cri = kubelet.cri.clone();
    let (client_id, script) = (client.to_owned(), apps::connect_loop_script(db_ip));
    let loop_task = tokio::spawn(async move {
        cri.exec(
            &client_id,
            &["bash", "-c", &script],
            Duration::from_secs(600),
        )
        .await
    });
    // Connects through the old agent's programs, through the switch, and
    // through the new agent's: the loop runs until it has made some under
    // each, however slow the machine.
    wait_for_connects(&kubelet.cri, client, 3, "before the rollout").await?;
    let (new_agent, prober) = replace_agent(opts, kubelet, ds, agent, prober, grace).await?;
    let seen = apps::connect_loop_count(&kubelet.cri, client).await?;
    wait_for_connects(
        &kubelet.cri,
        client,
        seen + 5,
        "after the new agent was ready",
    )
    .await?;
    kubelet
        .cri
        .exec(
            client,
            &["touch", "/tmp/stop-loop"],
            Duration::from_secs(10),
        )
        .await?;
    let (_, out, err) = loop_task.await??;
    let after = links(kubelet)?;
    let (times, fails, max) = connect_loop_results(opts, &out, &err)?;
    links_updated_in_place(&before, &after)?;
    let log = kubelet.current_log(&new_agent, AGENT);
    ensure!(
        log.contains("replaced its programs in place"),
        "the new agent did not replace the programs in place:\n{log}"
    );
    step(&format!(
        "rollout: {} connects, none failed, slowest {max} ms; links updated in place",
        times.len()
    ));
    Ok((
        json!({"connects": times.len(), "failed": fails, "max_greeting_ms": max,
               "links": before.iter().map(|(n, (i, p))| json!({"name": n, "inode": i, "prog_before": p, "prog_after": after[n].1})).collect::<Vec<_>>()}),
        new_agent,
        prober,
    ))
}

/// Waits until the connect loop in `client` has made `n` connections.
async fn wait_for_connects(cri: &Cri, client: &str, n: usize, when: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let made = apps::connect_loop_count(cri, client).await?;
        if made >= n {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the connect loop made {made} connections {when} in 60 s, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the agent's pod and runs the DaemonSet's pod with the rolled-out
/// image, until the new agent is ready.
async fn replace_agent(
    opts: &Options,
    kubelet: &mut Kubelet,
    ds: &DaemonSet,
    agent: RunningPod,
    prober: Prober,
    grace: i64,
) -> Result<(RunningPod, Prober)> {
    delete_pod(kubelet, agent, Some(prober), grace).await?;
    let def = daemonset_pod(ds, &uid(4), Some(&opts.rollout_image))?;
    let new_agent = kubelet.run_pod(&def).await?;
    let c = def
        .spec
        .containers
        .iter()
        .find(|c| c.name == AGENT)
        .cloned()
        .context("agent")?;
    let prober = Prober::start(&new_agent.ip, &c, "agent (rolled out)")?;
    prober.wait_ready(Duration::from_secs(120)).await?;
    Ok((new_agent, prober))
}

/// The connect loop's output: the connect times, the failures and the
/// slowest; none may fail, and none may have waited for detection.
fn connect_loop_results(opts: &Options, out: &str, err: &str) -> Result<(Vec<u64>, usize, u64)> {
    let lines: Vec<&str> = out.lines().collect();
    let fails = lines.iter().filter(|l| l.starts_with("fail")).count();
    let times: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ok ")?.parse().ok())
        .collect();
    let max = times.iter().copied().max().unwrap_or(0);
    ensure!(
        !times.is_empty(),
        "the connect loop made no connection: {err}"
    );
    ensure!(
        fails == 0,
        "{fails} of {} connects failed during the rollout: {err}",
        lines.len()
    );
    ensure!(
        max < opts.detect_timeout_ms / 2,
        "a connect during the rollout took {max} ms: it waited for detection, so its destination lost its verdict"
    );
    Ok((times, fails, max))
}

/// Every link is the same link after the rollout (same inode), running a
/// new program.
fn links_updated_in_place(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> Result<()> {
    for (name, (ino, prog)) in before {
        let (ino2, prog2) = after
            .get(name)
            .with_context(|| format!("link {name} gone after the rollout"))?;
        ensure!(
            ino == ino2,
            "link {name} was re-created (inode {ino} -> {ino2}), not updated in place"
        );
        ensure!(
            prog != prog2,
            "link {name} still runs program {prog}: the new build's programs did not replace it"
        );
    }
    Ok(())
}

/// Deletes the DaemonSet's pod, then runs the uninstall manifests' pod to
/// completion; no pins, links or bpffs mounts may remain.
async fn uninstall(
    opts: &Options,
    kubelet: &mut Kubelet,
    ds: &DaemonSet,
    agent: RunningPod,
    prober: Prober,
    grace: i64,
) -> Result<Value> {
    delete_pod(kubelet, agent, Some(prober), grace).await?;
    let dir = opts
        .uninstall
        .as_ref()
        .context("no uninstall manifests given (--uninstall DIR)")?;
    let rendered = Rendered::kustomize(dir)?;
    let job = rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "Job" || o["kind"] == "DaemonSet")
        .context("the uninstall manifests hold no Job or DaemonSet")?;
    let spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(job["spec"]["template"]["spec"].clone())
            .context("the uninstall pod spec")?;
    let def = PodDef {
        name: "classifier-uninstall".into(),
        namespace: ds.metadata.namespace.clone().unwrap_or_default(),
        uid: uid(5),
        labels: BTreeMap::new(),
        spec,
    };
    // run_pod returns once the init containers exited 0: the uninstall
    // itself (a Job's container, or a DaemonSet's init container followed
    // by a container that only keeps the pod alive).
    let pod = kubelet.run_pod(&def).await?;
    if job["kind"] == "Job" {
        for (name, (id, _)) in &pod.containers {
            wait_exited(&kubelet.cri, id, Duration::from_secs(120)).await?;
            let st = kubelet.cri.status(id).await?;
            ensure!(
                st.exit_code == 0,
                "uninstall container {name} exited {}: {}",
                st.exit_code,
                kubelet.current_log(&pod, name)
            );
        }
    }
    let uninstall_log: Vec<String> = def
        .spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| kubelet.log(&pod, &c.name, 0))
        .collect();
    // maps.debug and progs.debug are the kernel's own (bpf_preload's
    // iterators, in the root of every bpffs), not pins.
    let pins: Vec<String> = host::entries_below(&kubelet.layout.bpffs)
        .into_iter()
        .filter(|p| p != "maps.debug" && p != "progs.debug")
        .collect();
    let mounts = host::bpffs_mounts(&kubelet.layout);
    let links = Command::new("bpftool")
        .args(["--json", "link", "show"])
        .output()?;
    let links: Value = serde_json::from_slice(&links.stdout).unwrap_or(Value::Null);
    let cgroup_id = fs::metadata(&kubelet.layout.host_cgroup)?.ino();
    let ours = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
        .count();
    ensure!(
        pins.is_empty(),
        "pins left after uninstall: {pins:?}\n{}",
        uninstall_log.join("\n")
    );
    // The node's bpffs mount (made by the DaemonSet's mount-bpffs init
    // container when the node had none) is the node's, shared with every
    // other BPF user: uninstall leaves it; anything beyond it would be ours.
    ensure!(
        mounts.len() <= 1,
        "bpffs mounts left after uninstall: {mounts:?}"
    );
    ensure!(
        ours == 0,
        "{ours} links still attached to the test cgroup after uninstall"
    );
    delete_pod(kubelet, pod, None, 5).await?;
    step("uninstalled: no pins and no links left");
    Ok(json!({"pins_left": pins.len(), "links_left": ours, "node_bpffs_mounts": mounts.len()}))
}

async fn wait_exited(cri: &Cri, id: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while cri.status(id).await?.state != k8s_cri::v1::ContainerState::ContainerExited as i32 {
        ensure!(
            Instant::now() < deadline,
            "container {id} did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits for a line after the first `skip` lines of the agent's current
/// log that contains every needle; returns when it was seen.
async fn wait_log(
    kubelet: &Kubelet,
    pod: &RunningPod,
    skip: usize,
    needles: &[&str],
    within: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let log = kubelet.current_log(pod, AGENT);
        let attempt = pod.attempts.get(AGENT).copied().unwrap_or(0);
        let full = fs::read_to_string(
            pod.dir
                .join("logs")
                .join(AGENT)
                .join(format!("{attempt}.log")),
        )
        .unwrap_or(log);
        if full
            .lines()
            .skip(skip)
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "no agent log line with {needles:?} within {within:?}:\n{}",
                kubelet.current_log(pod, AGENT)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_greeting_from_host(ip: &str) -> Result<()> {
    use tokio::io::AsyncReadExt as _;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut s) =
            tokio::net::TcpStream::connect(format!("{ip}:{}", apps::MARIADB_PORT)).await
        {
            let mut buf = [0u8; 4];
            if tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "MariaDB at {ip} did not greet within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JWT-shaped token: the client sends it, the fake API accepts any.
fn fake_token() -> String {
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y2xhc3NpZmllci1zeXN0ZW06Y2xhc3NpZmllciJ9.bm9kZS1lMmU".into()
}

/// Pod UIDs: fixed shape, unique per run and role.
fn uid(role: u32) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
        (t >> 16) as u32,
        t as u16,
        role,
        std::process::id()
    )
}

fn which(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false);
    ensure!(found, "`{tool}` not found in PATH (install Debian's containerd, runc, kubernetes-client, bpftool, iproute2)");
    Ok(())
}

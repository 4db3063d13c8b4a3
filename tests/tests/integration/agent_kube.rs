//! The agent with `--kubernetes`, end to end: a real agent and real
//! connects, against the fake API server (`tests::fake_kube`) serving
//! recorded lists and watch events. A live annotation change reaches the
//! kernel without a restart.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;
use tests::{
    fake_kube::{fixture, FakeApi, ALL, SERVICES},
    privileged, Sandbox,
};

fn wait_for_log(sb: &Sandbox, needle: &str, count: usize) -> Result<()> {
    sb.wait_for_log(needle, count, Duration::from_secs(20))
}

/// Starts the agent with `--kubernetes` on the API server `kubeconfig`
/// names, and waits past its built-in policy for its first policy from the
/// cluster's documents.
fn start_kube_agent(sb: &mut Sandbox, kubeconfig: &Path) -> Result<()> {
    let kubeconfig = kubeconfig.to_str().context("kubeconfig path")?;
    sb.start_agent_with_env(&["--kubernetes"], &[("KUBECONFIG", kubeconfig)])?;
    wait_for_log(sb, "source=\"kubernetes (", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_kubernetes_documents_classify_and_follow_annotation_changes() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let mut sb = Sandbox::new("agent-kube")?;
    // The Services' cluster IPs, reachable inside the test namespace.
    for ip in ["10.96.12.34/32", "10.96.80.80/32"] {
        sb.ip(&["addr", "add", ip, "dev", "lo"])?;
    }
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        start_kube_agent(&mut sb, &kubeconfig)?;

        // shop/mysql's own annotation: 3306,33060.
        let v = sb.verdict("10.96.12.34:33060")?;
        assert_eq!(v["protocol"], "opaque", "annotated Service port: {v}");
        // shop/web inherits its namespace's "4222", which replaces the
        // default opaque ports: memcached's 11211 is detected.
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "unknown", "{v}");
        Ok(sb)
    })
    .await??;

    // `kubectl annotate svc web config.linkerd.io/opaque-ports=11211`, live.
    let mut event = fixture("watch/service-web-annotated.json");
    event["object"]["metadata"]["resourceVersion"] = json!("90001");
    fake.push(SERVICES, vec![event]);

    tokio::task::spawn_blocking(move || -> Result<()> {
        wait_for_log(&sb, "source=\"kubernetes (", 2)?;
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "opaque", "after the live annotation: {v}");
        assert!(v["source"].as_str().unwrap().starts_with("rule:"), "{v}");
        // `classifier stats` shows the sync, from the agent's pinned status.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = sb.stats()?;
            let k = &stats["agent"]["kubernetes"];
            if k["connected"] == true && k["last_sync_age_s"].is_u64() {
                assert_eq!(k["sync_errors"], 0, "{stats}");
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "stats never showed the sync: {stats}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
    .await??;
    Ok(())
}

/// The rule entries connects see now, read from the pinned maps.
pub(super) fn kernel_entries(
    sb: &Sandbox,
) -> Result<Vec<(u32, Vec<u8>, classifier_common::RuleVerdict)>> {
    use classifier_user::datapath::{PinDir, PolicyMaps};
    PolicyMaps::open(&PinDir::new(&sb.pins))?.active_entries()
}

/// The same keys with the same verdicts, up to the rules' numbering (an
/// incremental update keeps rule ids stable, a full compile numbers them
/// afresh): one rule id on one side is one rule id on the other.
pub(super) fn same_up_to_rule_ids(
    a: &[(u32, Vec<u8>, classifier_common::RuleVerdict)],
    b: &[(u32, Vec<u8>, classifier_common::RuleVerdict)],
) -> Result<()> {
    use std::collections::HashMap;
    anyhow::ensure!(a.len() == b.len(), "{} entries, then {}", a.len(), b.len());
    let (mut ab, mut ba) = (HashMap::new(), HashMap::new());
    for ((pa, ka, va), (pb, kb, vb)) in a.iter().zip(b) {
        anyhow::ensure!((pa, ka) == (pb, kb), "key {ka:?}/{pa} against {kb:?}/{pb}");
        anyhow::ensure!(
            (va.kind, va.protocol, va.net_prefix) == (vb.kind, vb.protocol, vb.net_prefix),
            "at {ka:?}/{pa}: {va:?} against {vb:?}"
        );
        let same_rule = *ab.entry(va.rule_id).or_insert(vb.rule_id) == vb.rule_id
            && *ba.entry(vb.rule_id).or_insert(va.rule_id) == va.rule_id;
        anyhow::ensure!(
            same_rule,
            "at {ka:?}/{pa}: rule {} against rule {}",
            va.rule_id,
            vb.rule_id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_event_is_written_in_place_and_equals_a_full_compile() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let mut sb = Sandbox::new("agent-kube-live")?;
    for ip in ["10.96.12.34/32", "10.96.80.80/32"] {
        sb.ip(&["addr", "add", ip, "dev", "lo"])?;
    }
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let first = kubeconfig.clone();
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        // The first list: a full compile, switched to.
        start_kube_agent(&mut sb, &first)?;
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "unknown", "{v}");
        Ok(sb)
    })
    .await??;

    // One Service annotated: a change of that object's entries only.
    let mut event = fixture("watch/service-web-annotated.json");
    event["object"]["metadata"]["resourceVersion"] = json!("90001");
    fake.push(SERVICES, vec![event]);

    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut sb = sb;
        wait_for_log(&sb, "incremental=true", 1)?;
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "opaque", "after the change in place: {v}");
        let in_place = kernel_entries(&sb)?;

        // A new agent compiles the same cluster whole and switches to it.
        sb.stop_agent();
        start_kube_agent(&mut sb, &kubeconfig)?;
        let log = sb.agent_log();
        assert!(log.contains("incremental=false"), "{log}");
        let full = kernel_entries(&sb)?;
        same_up_to_rule_ids(&in_place, &full)?;
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "opaque", "after the full compile: {v}");
        Ok(())
    })
    .await??;
    Ok(())
}

/// Pod `i`, annotated opaque on 4222 (which Linkerd's default opaque
/// ports do not hold, so only the pod's own rule makes it opaque), at
/// 10.201.x.y. Names sort as their numbers do, as the fake lists them.
fn annotated_pod(i: u32) -> serde_json::Value {
    let ip = std::net::Ipv4Addr::from(0x0ac9_0000 + i);
    json!({
        "metadata": {"name": format!("db-{i:05}"), "namespace": "paged", "uid": format!("uid-db-{i}"),
                     "annotations": {"config.linkerd.io/opaque-ports": "4222"}},
        "spec": {"containers": [{"name": "db", "ports": [{"containerPort": 4222}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_listed_in_pages_is_classified_whole() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    use classifier_user::sources::kubernetes::LIST_PAGE_SIZE;
    use tests::fake_kube::PODS;
    // Two and a half pages: the agent must follow the continue tokens to
    // the end, and not apply the cluster before it has every page.
    let pods = LIST_PAGE_SIZE * 5 / 2;
    let fake = FakeApi::start(&[]).await;
    fake.serve_objects(PODS, "PodList", "v1", (0..pods).map(annotated_pod));
    let mut sb = Sandbox::new("agent-kube-paged")?;
    // The first pod, the first of the second page, the last of the last.
    let checked = [0, LIST_PAGE_SIZE, pods - 1];
    for i in checked {
        let ip = std::net::Ipv4Addr::from(0x0ac9_0000 + i);
        sb.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        start_kube_agent(&mut sb, &kubeconfig)?;
        for i in checked {
            let ip = std::net::Ipv4Addr::from(0x0ac9_0000 + i);
            let v = sb.verdict(&format!("{ip}:4222"))?;
            assert_eq!(v["protocol"], "opaque", "pod {i} of {pods}: {v}");
            let source = v["source"].as_str().unwrap_or_default();
            assert!(source.starts_with("rule:"), "pod {i} of {pods}: {v}");
        }
        Ok(sb)
    })
    .await??;
    let lists: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(PODS) && !r.contains("watch=true"))
        .collect();
    let limit = format!("limit={LIST_PAGE_SIZE}");
    assert!(lists.iter().all(|r| r.contains(&limit)), "{lists:?}");
    assert_eq!(
        lists.iter().filter(|r| r.contains("continue=")).count(),
        2,
        "one list request per page after the first: {lists:?}"
    );
    drop(sb);
    Ok(())
}

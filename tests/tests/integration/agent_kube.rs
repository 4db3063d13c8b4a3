//! The agent with `--kubernetes`, end to end: a real agent and real
//! connects, against the fake API server (`tests::fake_kube`) serving
//! recorded lists and watch events. A live annotation change reaches the
//! kernel without a restart.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tests::{
    fake_kube::{fixture, FakeApi, ALL, SERVICES},
    privileged, Sandbox,
};

fn wait_for_log(sb: &Sandbox, needle: &str, count: usize) -> Result<()> {
    sb.wait_for_log(needle, count, Duration::from_secs(20))
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
    let kubeconfig = sb.write_file(
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            fake.url()
        ),
    );
    let sb = tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        sb.start_agent_with_env(
            &["--kubernetes"],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        )?;
        // The built-in policy first, then the cluster's documents.
        wait_for_log(&sb, "source=\"kubernetes (", 1)?;

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

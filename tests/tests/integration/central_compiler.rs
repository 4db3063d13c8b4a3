//! The central compiler (`classifier compiler`) publishing slices, and
//! agents reading them (`--kubernetes-source slices`), against the fake
//! API server, which takes the compiler's writes and serves them to the
//! agents' watches.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tests::{
    fake_kube::{fixture, FakeApi, ALL, PODS, SERVICES},
    privileged, wait_for, CompilerProcess, Sandbox,
};

const NS: &str = "classifier-system";
const SLICES: &str = "/apis/classifier.dev/v1alpha1/namespaces/classifier-system/classifierslices";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/classifier-system/leases";

/// The fixtures' cluster, and the collections the compiler writes.
async fn cluster() -> Arc<FakeApi> {
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    fake.serve_writable(SLICES, "ClassifierSliceList", "classifier.dev/v1alpha1");
    fake.serve_writable(LEASES, "LeaseList", "coordination.k8s.io/v1");
    fake
}

/// A kubeconfig for `fake` in a file of its own, removed when dropped.
struct Kubeconfig(std::path::PathBuf);

impl Kubeconfig {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn kubeconfig(fake: &FakeApi) -> Result<Kubeconfig> {
    let path = std::env::temp_dir().join(format!(
        "classifier-compiler-test-{}-{}.kubeconfig",
        std::process::id(),
        fake.addr.port()
    ));
    std::fs::write(&path, fake.kubeconfig())?;
    Ok(Kubeconfig(path))
}

/// The `synced` marker is written: every slice of a complete list is.
fn wait_published(fake: &FakeApi, compiler: &CompilerProcess) -> Result<()> {
    wait_for(
        "the compiler's synced marker",
        Duration::from_secs(30),
        || Ok(fake.object(SLICES, NS, "synced")),
    )
    .with_context(|| compiler.log())
    .map(drop)
}

/// A compiler replica `identity` with a lease of `lease_secs`, once it
/// has published the cluster of `fake`.
async fn published_by(
    fake: &Arc<FakeApi>,
    config: &Path,
    identity: &str,
    lease_secs: u32,
) -> Result<CompilerProcess> {
    let compiler = CompilerProcess::start(identity, config, NS, lease_secs)?;
    let fake = fake.clone();
    tokio::task::spawn_blocking(move || {
        wait_published(&fake, &compiler)?;
        Ok(compiler)
    })
    .await?
}

fn holder(fake: &FakeApi) -> Option<String> {
    let lease = fake.object(LEASES, NS, "classifier-compiler")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// A pod as a slice of `fake` holds it, and that slice's name.
fn published(fake: &FakeApi, namespace: &str, name: &str) -> Option<(Value, String)> {
    fake.objects(SLICES).into_iter().find_map(|s| {
        let slice = s["metadata"]["name"].as_str()?.to_owned();
        let pod = s["spec"]["objects"].as_array()?.iter().find(|o| {
            s["spec"]["kind"] == "Pod"
                && o["metadata"]["namespace"] == namespace
                && o["metadata"]["name"] == name
        })?;
        Some((pod.clone(), slice))
    })
}

fn published_pod(fake: &FakeApi, namespace: &str, name: &str) -> Option<Value> {
    published(fake, namespace, name).map(|(pod, _)| pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_carry_the_cluster_and_only_changes_a_node_reads() -> Result<()> {
    let fake = cluster().await;
    let config = kubeconfig(&fake)?;
    let compiler = published_by(&fake, config.path(), "a", 5).await?;
    // One object per slice by default: 2 Pods, 4 Services, 3 Namespaces,
    // 2 Servers, 1 EgressNetwork, and the marker.
    let slices = fake.objects(SLICES);
    let names: Vec<&str> = slices
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 13, "{names:?}");
    for name in [
        "pods.shop.0",
        "pods.shop.1",
        "services.default.0",
        "services.shop.2",
        "namespaces.2",
        "egressnetworks.linkerd-egress.0",
        "synced",
    ] {
        assert!(names.contains(&name), "no slice {name}: {names:?}");
    }
    let mysql = published_pod(&fake, "shop", "mysql-0").context("mysql-0 published")?;
    assert_eq!(mysql["status"]["podIPs"][0]["ip"], "10.244.1.17", "{mysql}");
    assert!(
        mysql["metadata"].get("resourceVersion").is_none(),
        "{mysql}"
    );
    assert!(
        mysql["metadata"].get("managedFields").is_none(),
        "pruned: {mysql}"
    );
    assert_eq!(holder(&fake).as_deref(), Some("a"));

    // A status-only update of mysql-0, then a change of web's pod IP: only
    // the second is written (the compiler reads one kind's events in order).
    let (_, web_slice) = published(&fake, "shop", "web-7f9c8d6b5-x2kq4").context("web")?;
    let before = fake.writes().len();
    let mut status_only = fixture("watch/pod-mysql-status-only.json");
    status_only["object"]["metadata"]["resourceVersion"] = json!("90001");
    let mut web = fake
        .object(PODS, "shop", "web-7f9c8d6b5-x2kq4")
        .context("web pod")?;
    web["status"]["podIP"] = json!("10.244.2.10");
    web["status"]["podIPs"] = json!([{"ip": "10.244.2.10"}]);
    fake.push(
        PODS,
        vec![status_only, json!({"type": "MODIFIED", "object": web})],
    );
    let fake2 = fake.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("web's new IP published", Duration::from_secs(20), || {
            let web = published_pod(&fake2, "shop", "web-7f9c8d6b5-x2kq4");
            Ok(web.filter(|w| w["status"]["podIPs"][0]["ip"] == "10.244.2.10"))
        })
        .with_context(|| compiler.log())
    })
    .await??;
    let writes = fake.writes()[before..].to_vec();
    assert_eq!(
        writes,
        [format!("PUT {SLICES}/{web_slice}")],
        "one write, of web's slice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reading_slices_enforces_what_a_node_watching_the_cluster_does() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let fake = cluster().await;
    let mut sb = Sandbox::new("compiler-node")?;
    for ip in ["10.96.12.34/32", "10.96.80.80/32"] {
        sb.ip(&["addr", "add", ip, "dev", "lo"])?;
    }
    let config = sb.write_file("kubeconfig", &fake.kubeconfig());
    let compiler = published_by(&fake, &config, "a", 5).await?;
    let (sb, compiler) = tokio::task::spawn_blocking(move || -> Result<_> {
        let kubeconfig = config.to_str().context("path")?;
        let env = [("KUBECONFIG", kubeconfig)];
        sb.start_agent_with_env(&["--kubernetes", "--kubernetes-source", "slices"], &env)?;
        sb.wait_for_log("source=\"kubernetes (", 1, Duration::from_secs(20))?;
        let v = sb.verdict("10.96.12.34:33060")?;
        assert_eq!(v["protocol"], "opaque", "shop/mysql's own annotation: {v}");
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "unknown", "{v}");
        let from_slices = super::agent_kube::kernel_entries(&sb)?;
        // An agent watching the cluster itself writes the same entries.
        sb.stop_agent();
        sb.start_agent_with_env(&["--kubernetes"], &env)?;
        sb.wait_for_log("source=\"kubernetes (", 1, Duration::from_secs(20))?;
        let direct = super::agent_kube::kernel_entries(&sb)?;
        super::agent_kube::same_up_to_rule_ids(&from_slices, &direct)?;
        sb.stop_agent();
        sb.start_agent_with_env(&["--kubernetes", "--kubernetes-source", "slices"], &env)?;
        sb.wait_for_log("source=\"kubernetes (", 1, Duration::from_secs(20))?;
        Ok((sb, compiler))
    })
    .await??;

    // `kubectl annotate svc web config.linkerd.io/opaque-ports=11211`:
    // through the compiler and a slice, to the node's maps.
    let mut event = fixture("watch/service-web-annotated.json");
    event["object"]["metadata"]["resourceVersion"] = json!("90001");
    fake.push(SERVICES, vec![event]);
    tokio::task::spawn_blocking(move || -> Result<()> {
        sb.wait_for_log("source=\"kubernetes (", 2, Duration::from_secs(20))
            .with_context(|| compiler.log())?;
        let v = sb.verdict("10.96.80.80:11211")?;
        assert_eq!(v["protocol"], "opaque", "after the live annotation: {v}");
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_compiler_takes_over_when_the_leader_dies() -> Result<()> {
    let fake = cluster().await;
    let config = kubeconfig(&fake)?;
    let a = published_by(&fake, config.path(), "a", 3).await?;
    let b = CompilerProcess::start("b", config.path(), NS, 3)?;
    let fake2 = fake.clone();
    let (a, b) = tokio::task::spawn_blocking(move || -> Result<_> {
        wait_for("b seeing a's lease", Duration::from_secs(20), || {
            Ok(b.log().contains("the lease is held").then_some(()))
        })?;
        // a renews it four times (over its 3 s) while b watches: b must
        // not take a lease its holder renews.
        let renewals = || {
            let lease = format!("PUT {LEASES}/classifier-compiler");
            fake2.writes().iter().filter(|w| **w == lease).count()
        };
        let seen = renewals();
        wait_for("four renewals", Duration::from_secs(20), || {
            Ok((renewals() >= seen + 4).then_some(()))
        })?;
        assert_eq!(
            holder(&fake2).as_deref(),
            Some("a"),
            "b must not take a held lease: {}",
            b.log()
        );
        Ok((a, b))
    })
    .await??;
    let writes_of_a = fake.writes().len();
    let (_, web_slice) = published(&fake, "shop", "web-7f9c8d6b5-x2kq4").context("web")?;

    // The leader is killed: it cannot give the lease up; b takes it once
    // it has seen the lease unrenewed for a whole lease.
    let mut a = a;
    a.kill();
    let fake2 = fake.clone();
    let b = tokio::task::spawn_blocking(move || -> Result<CompilerProcess> {
        wait_for("b holding the lease", Duration::from_secs(30), || {
            Ok((holder(&fake2).as_deref() == Some("b")).then_some(()))
        })
        .with_context(|| b.log())?;
        Ok(b)
    })
    .await??;
    // b adopted a's slices: nothing of the cluster changed, so b writes
    // no slice (the lease's renewals only).
    let mut web = fake
        .object(PODS, "shop", "web-7f9c8d6b5-x2kq4")
        .context("web pod")?;
    web["status"]["podIP"] = json!("10.244.2.77");
    fake.push(PODS, vec![json!({"type": "MODIFIED", "object": web})]);
    let fake2 = fake.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("b publishing web's new IP", Duration::from_secs(20), || {
            let web = published_pod(&fake2, "shop", "web-7f9c8d6b5-x2kq4");
            Ok(web.filter(|w| w["status"]["podIP"] == "10.244.2.77"))
        })
        .with_context(|| b.log())
    })
    .await??;
    let slice_writes: Vec<String> = fake.writes()[writes_of_a..]
        .iter()
        .filter(|w| w.contains("/classifierslices"))
        .cloned()
        .collect();
    assert_eq!(
        slice_writes,
        [format!("PUT {SLICES}/{web_slice}")],
        "b rewrote only what changed"
    );
    Ok(())
}

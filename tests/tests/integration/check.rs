//! `classifier check`: on a node with no agent (it says what is missing),
//! with a healthy agent (every check passes), with a rejected policy, and
//! `--kubernetes` with an API server that is not there.

use std::{
    collections::BTreeMap,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;
use tests::{classifier_bin, privileged, Sandbox};

fn check(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> (Output, Vec<Value>) {
    let out = Command::new(classifier_bin())
        .args(["check", "--json", "--pin-dir"])
        .arg(&sb.pins)
        .arg("--cgroup")
        .arg(&sb.cgroup)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    for item in &list {
        let keys: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["check", "detail", "ok"], "{item}");
    }
    (out, list)
}

/// check name -> (ok, detail)
fn by_name(list: &[Value]) -> BTreeMap<String, (bool, String)> {
    list.iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                (
                    c["ok"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

const POLICY: &str = "apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  rules:
    - networks: [\"127.0.0.0/8\"]
      ports: \"4222\"
      protocol: opaque
";

#[test]
fn without_an_agent_check_says_what_is_missing_and_fails() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let sb = Sandbox::new("check-none")?;
    let (out, list) = check(&sb, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{list:?}");
    let checks = by_name(&list);
    for name in [
        "kernel",
        "bpf-features",
        "cgroup-v2",
        "attach-cgroup",
        "bpffs",
        "capabilities",
        "seccomp",
    ] {
        assert!(checks[name].0, "{name}: {:?}", checks[name]);
    }
    let (ok, detail) = &checks["pin-dir"];
    assert!(!ok);
    assert!(
        detail.contains("no classifier is installed") && detail.contains("fix: install the agent"),
        "{detail}"
    );
    assert!(checks["attach-cgroup"]
        .1
        .contains(sb.cgroup.to_str().unwrap()));
    Ok(())
}

#[test]
fn with_a_healthy_agent_every_check_passes_and_a_rejected_policy_fails_one() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("check-agent")?;
    let policy = sb.write_file("policy.yaml", POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let (out, list) = check(&sb, &[], &[]);
    let checks = by_name(&list);
    assert_eq!(out.status.code(), Some(0), "{checks:#?}");
    for name in [
        "pin-dir",
        "pinned-layout",
        "pinned-programs",
        "agent",
        "policy-applied",
        "policy-rejections",
    ] {
        assert!(checks.get(name).is_some_and(|c| c.0), "{name}: {checks:#?}");
    }
    let pid = sb.agent_pid().unwrap().to_string();
    assert!(
        checks["agent"].1.contains(&format!("pid {pid} ")),
        "{checks:#?}"
    );

    // `--version` names the commit and map layout; `stats` shows the
    // running agent's version, and the agent logged it at start.
    let version = Command::new(classifier_bin()).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let (semver, rest) = version
        .strip_prefix("classifier ")
        .and_then(|v| v.split_once(" (commit "))
        .unwrap_or_else(|| panic!("{version}"));
    let (commit, layout) = rest.split_once(", map layout ").unwrap();
    assert_eq!(layout, format!("{})", classifier_common::LAYOUT_VERSION));
    assert!(!commit.is_empty());
    let stats = sb.stats()?;
    assert_eq!(
        stats["agent"]["version"],
        format!("{semver} commit {commit}"),
        "{stats}"
    );
    assert!(
        sb.agent_log().contains("classifier agent starting"),
        "{}",
        sb.agent_log()
    );
    assert!(
        sb.agent_log().contains(&format!("commit=\"{commit}\""))
            || sb.agent_log().contains(&format!("commit={commit}")),
        "{}",
        sb.agent_log()
    );

    // A rejected policy: the agent counts it in its status (written every
    // tick); check reports it with the fix, and fails.
    sb.write_file("policy.yaml", "kind: [");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (out, list) = check(&sb, &[], &[]);
        let checks = by_name(&list);
        let (ok, detail) = &checks["policy-rejections"];
        if !ok {
            assert!(
                detail.contains("1 policies rejected") && detail.contains("fix:"),
                "{detail}"
            );
            assert_eq!(out.status.code(), Some(1));
            break;
        }
        if Instant::now() > deadline {
            bail!("the rejection never showed: {checks:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn check_kubernetes_reports_an_unreachable_api_server() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let sb = Sandbox::new("check-kube")?;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let kubeconfig = sb.write_file(
        "kubeconfig",
        &format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"
        ),
    );
    let (out, list) = check(
        &sb,
        &["--kubernetes"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    let checks = by_name(&list);
    let (ok, detail) = &checks["kubernetes-api"];
    assert!(!ok && detail.contains("fix:"), "{detail}");
    Ok(())
}

/// `--kubernetes` against the fake API server: reachable, RBAC allowed
/// for every kind it serves, and a missing CRD (Server) reported both as
/// an RBAC failure and as a CRD that is not installed, each with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_kubernetes_checks_rbac_per_kind_and_linkerd_crds() -> Result<()> {
    use tests::fake_kube::{FakeApi, ALL, SERVERS};
    if !privileged!() {
        return Ok(());
    }
    let sb = Sandbox::new("check-kube-rbac")?;
    let kubeconfig_for = |url: String, name: &str| {
        sb.write_file(
            name,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: f, cluster: {{server: \"{url}\"}}}}]\nusers: [{{name: f, user: {{}}}}]\ncontexts: [{{name: f, context: {{cluster: f, user: f}}}}]\ncurrent-context: f\n"
            ),
        )
    };
    let all: Vec<&str> = ALL.iter().map(|(p, _)| *p).collect();
    let full = FakeApi::start(&all).await;
    let no_servers: Vec<&str> = all.iter().copied().filter(|p| *p != SERVERS).collect();
    let partial = FakeApi::start(&no_servers).await;
    let full_config = kubeconfig_for(full.url(), "full");
    let partial_config = kubeconfig_for(partial.url(), "partial");

    let sb = tokio::task::spawn_blocking(move || {
        let (_, list) = check(
            &sb,
            &["--kubernetes"],
            &[("KUBECONFIG", full_config.to_str().unwrap())],
        );
        let checks = by_name(&list);
        assert!(checks["kubernetes-api"].0, "{checks:#?}");
        assert!(
            checks["kubernetes-api"].1.contains("v1.33.1"),
            "{checks:#?}"
        );
        let rbac: Vec<&String> = checks.keys().filter(|k| k.starts_with("rbac-")).collect();
        assert_eq!(rbac.len(), 5, "one per watched kind: {rbac:?}");
        for name in rbac {
            assert!(checks[name].0, "{name}: {checks:#?}");
        }
        assert!(checks["linkerd-crds"].0, "{checks:#?}");

        let (out, list) = check(
            &sb,
            &["--kubernetes"],
            &[("KUBECONFIG", partial_config.to_str().unwrap())],
        );
        assert_eq!(out.status.code(), Some(1));
        let checks = by_name(&list);
        let (ok, detail) = &checks["rbac-servers.policy.linkerd.io"];
        assert!(
            !ok && detail.contains("may not list or watch servers") && detail.contains("fix:"),
            "{detail}"
        );
        assert!(checks["rbac-services"].0, "{checks:#?}");
        let (ok, detail) = &checks["linkerd-crds"];
        assert!(
            !ok && detail.contains("servers.policy.linkerd.io")
                && !detail.contains("egressnetworks"),
            "{detail}"
        );
        sb
    })
    .await?;
    drop(sb);
    full.stop();
    partial.stop();
    Ok(())
}

/// With `--kubernetes-source slices`, `check --kubernetes` checks what
/// such an agent needs: to list and watch the slices in their namespace,
/// and a compiler's complete publication (its marker), not the five kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_kubernetes_with_slices_checks_their_rbac_and_the_compilers_marker() -> Result<()> {
    use classifier_user::sources::kubernetes::slices;
    use tests::fake_kube::FakeApi;
    if !privileged!() {
        return Ok(());
    }
    const SLICES: &str =
        "/apis/classifier.dev/v1alpha1/namespaces/classifier-system/classifierslices";
    let sb = Sandbox::new("check-kube-slices")?;
    let fake = FakeApi::start(&[]).await;
    fake.serve_writable(SLICES, "ClassifierSliceList", "classifier.dev/v1alpha1");
    let config = sb.write_file("kubeconfig", &fake.kubeconfig());
    let args = [
        "--kubernetes",
        "--kubernetes-source",
        "slices",
        "--slices-namespace",
        "classifier-system",
    ];
    let fake2 = fake.clone();
    tokio::task::spawn_blocking(move || {
        let env = [("KUBECONFIG", config.to_str().unwrap())];
        // No compiler has published yet.
        let (out, list) = check(&sb, &args, &env);
        assert_eq!(out.status.code(), Some(1));
        let checks = by_name(&list);
        assert!(
            checks["rbac-classifierslices.classifier.dev"].0,
            "{checks:#?}"
        );
        let rbac = checks.keys().filter(|k| k.starts_with("rbac-")).count();
        assert_eq!(rbac, 1, "only the slices are read: {checks:#?}");
        assert!(!checks.contains_key("linkerd-crds"), "{checks:#?}");
        let (ok, detail) = &checks["slices-published"];
        assert!(
            !ok && detail.contains("no \"synced\"") && detail.contains("fix:"),
            "{detail}"
        );
        // Its marker is there.
        fake2.serve_objects(
            SLICES,
            "ClassifierSliceList",
            "classifier.dev/v1alpha1",
            [slices::marker("classifier-system")],
        );
        let (_, list) = check(&sb, &args, &env);
        let checks = by_name(&list);
        assert!(checks["slices-published"].0, "{checks:#?}");
    })
    .await?;
    fake.stop();
    Ok(())
}

/// `check` looks at the attachment, as `/readyz` does, not only at the
/// pins: once the cgroup the programs were attached to is removed, the
/// links stay pinned but classify nothing, and `pinned-programs` fails.
#[test]
fn check_fails_on_links_whose_cgroup_is_gone() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("check-detached")?;
    let policy = sb.write_file("policy.yaml", POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let (_, list) = check(&sb, &[], &[]);
    let checks = by_name(&list);
    assert!(checks["pinned-programs"].0, "{checks:#?}");
    assert!(
        checks["pinned-programs"]
            .1
            .contains(sb.cgroup.to_str().unwrap()),
        "{checks:#?}"
    );
    sb.stop_agent();
    // The cgroup goes (its pod ended); a new one of the same name is not
    // the one the links were attached to.
    std::fs::remove_dir(&sb.cgroup)?;
    std::fs::create_dir(&sb.cgroup)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        let (out, list) = check(&sb, &[], &[]);
        let checks = by_name(&list);
        let (ok, detail) = checks["pinned-programs"].clone();
        if !ok {
            assert_eq!(out.status.code(), Some(1), "{checks:#?}");
            break detail;
        }
        if Instant::now() > deadline {
            bail!("pinned-programs still passes with its cgroup gone: {detail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Detached (once the kernel released the old cgroup), or still on the
    // dying old cgroup: either way not on the one named.
    assert!(
        (detail.contains("is detached") || detail.contains("attached to another cgroup"))
            && detail.contains("fix: restart the agent"),
        "{detail}"
    );
    Ok(())
}

/// A link detached behind the agent's back (`bpftool link detach`, the pin
/// stays) classifies nothing: `check` fails `pinned-programs`, naming the
/// program, as `/readyz` does.
#[test]
fn check_fails_on_a_link_detached_while_its_pin_stays() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("check-link-detach")?;
    let policy = sb.write_file("policy.yaml", POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let (_, list) = check(&sb, &[], &[]);
    assert!(by_name(&list)["pinned-programs"].0, "{list:#?}");
    let link = sb
        .pins
        .join("links")
        .join(classifier_common::programs::SOCKOPS);
    tests::run(
        std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&link),
    )?;
    assert!(link.exists(), "the pin stays");
    let (out, list) = check(&sb, &[], &[]);
    let checks = by_name(&list);
    let (ok, detail) = checks["pinned-programs"].clone();
    assert!(!ok, "{checks:#?}");
    assert_eq!(out.status.code(), Some(1), "{checks:#?}");
    assert!(
        detail.contains(classifier_common::programs::SOCKOPS) && detail.contains("is detached"),
        "{detail}"
    );
    Ok(())
}

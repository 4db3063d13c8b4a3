//! One tenant never breaks the others, on a real kernel and a real agent:
//! a directory of manifests with bad objects among good ones. The good
//! rules classify real connects, the bad objects are reported, the agent
//! is ready; and a namespace with an EgressNetwork of its own never sees
//! the global ones (Linkerd's namespace shadowing), even where its own do
//! not match.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::Value;
use tests::{privileged, Sandbox};

use crate::http::{free_addr, get, wait_for_status};

const TEAM_A_POD: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
const TEAM_B_POD: &str = "11111111-2222-3333-4444-555555555555";

/// The verdict a client in `cgroup` gets for 127.0.0.1:`port`.
fn verdict_from(sb: &Sandbox, cgroup: &Path, port: u16) -> Result<Value> {
    let addr = format!("127.0.0.1:{port}");
    let server = sb.serve(&addr, 1, None)?;
    let out = sb.probe_in_cgroup(&["connect", &addr], cgroup).output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok"),
        "{out:?}"
    );
    Ok(server.results()?.remove(0))
}

fn manifests() -> String {
    let pod = |uid: &str, ns: &str, name: &str, ip: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\nstatus:\n  phase: Running\n  podIP: {ip}\n")
    };
    [
        pod(TEAM_A_POD, "team-a", "a", "10.244.0.1"),
        pod(TEAM_B_POD, "team-b", "b", "10.244.0.2"),
        // Good: the global EgressNetwork says 5222 is opaque on loopback.
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: global\n  namespace: linkerd-egress\n  annotations: {config.linkerd.io/opaque-ports: \"5222\"}\nspec:\n  trafficPolicy: Allow\n  networks: [{cidr: 127.0.0.0/8}]\n".into(),
        // Good: team-a's own EgressNetwork, which does not cover 127.0.0.1.
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: own\n  namespace: team-a\n  annotations: {config.linkerd.io/opaque-ports: \"5222\"}\nspec:\n  trafficPolicy: Allow\n  networks: [{cidr: 192.0.2.0/24}]\n".into(),
        // Bad: a CIDR that does not parse, in another tenant's namespace.
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: broken\n  namespace: team-c\nspec:\n  trafficPolicy: Allow\n  networks: [{cidr: 127.0.0.0/33}]\n".into(),
        // Bad: a named port the pod does not have.
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\n  namespace: team-c\n  annotations: {config.linkerd.io/opaque-ports: \"mysql\"}\nstatus:\n  phase: Running\n  podIP: 10.244.0.3\n".into(),
    ]
    .concat()
}

#[test]
fn bad_objects_are_reported_and_the_rest_classifies_real_connects() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("tenant-isolation")?;
    let team_a = sb
        .cgroup
        .join(format!("kubepods/burstable/pod{TEAM_A_POD}/c1"));
    let team_b = sb
        .cgroup
        .join(format!("kubepods/besteffort/pod{TEAM_B_POD}/c2"));
    fs::create_dir_all(&team_a)?;
    fs::create_dir_all(&team_b)?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    fs::write(dir.join("all.yaml"), manifests())?;
    let metrics = free_addr();
    sb.start_agent(&[
        "--policy",
        dir.to_str().unwrap(),
        "--metrics-addr",
        &metrics,
    ])?;
    wait_for_status(&metrics, "/readyz", 200)?;

    // Both bad objects are reported by name.
    let log = sb.agent_log();
    for needle in ["EgressNetwork team-c/broken", "Pod team-c/typo"] {
        assert!(
            log.contains(needle) && log.contains("skipping an object"),
            "{needle} not reported:\n{log}"
        );
    }
    // The agent writes the report after applying the policy, before
    // /readyz says ready.
    let stats = sb.stats()?;
    assert_stats_list_the_rejected(&sb, &stats)?;
    assert_debug_rejected_serves_the_report(&sb, &metrics, &stats)?;
    assert_metrics_count_the_rejected(&metrics)?;

    // The global EgressNetwork applies to team-b and to node processes.
    for (who, cgroup) in [("team-b pod", team_b.clone()), ("node", sb.cgroup.clone())] {
        let v = verdict_from(&sb, &cgroup, 5222)?;
        assert_eq!(v["protocol"], "opaque", "{who}, 5222: {v}");
    }
    // team-a has an EgressNetwork of its own: the global one is shadowed,
    // even though its own does not match 127.0.0.1.
    let v = verdict_from(&sb, &team_a, 5222)?;
    assert_eq!(v["protocol"], "unknown", "team-a pod, 5222: {v}");

    // Still ready after all that.
    assert_eq!(get(&metrics, "/readyz")?.0, 200);
    Ok(())
}

/// `classifier stats --json` (`stats`) lists both bad objects, with the
/// reason and where each came from; the table says so too.
fn assert_stats_list_the_rejected(sb: &Sandbox, stats: &Value) -> Result<()> {
    assert_eq!(stats["rejected_objects_total"], 2, "{stats:#}");
    assert_eq!(stats["rejected_objects_by_kind"]["Pod"], 1, "{stats:#}");
    assert_eq!(
        stats["rejected_objects_by_kind"]["EgressNetwork"], 1,
        "{stats:#}"
    );
    let listed = stats["rejected_objects"]
        .as_array()
        .context("rejected_objects")?;
    for (kind, name, reason) in [
        ("EgressNetwork", "broken", "127.0.0.0/33"),
        ("Pod", "typo", "mysql"),
    ] {
        let object = listed
            .iter()
            .find(|o| o["kind"] == kind && o["name"] == name)
            .with_context(|| format!("{kind} {name} not in {stats:#}"))?;
        assert_eq!(object["namespace"], "team-c", "{object}");
        assert!(
            object["origin"].as_str().unwrap_or("").contains("all.yaml"),
            "{object}"
        );
        assert!(
            object["reason"].as_str().unwrap_or("").contains(reason),
            "{object}"
        );
    }
    let out = std::process::Command::new(tests::classifier_bin())
        .args(["stats", "--pin-dir"])
        .arg(&sb.pins)
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("rejected objects") && l.contains("EgressNetwork 1, Pod 1")),
        "{table}"
    );
    assert!(table.contains("  Pod team-c/typo ("), "{table}");
    Ok(())
}

/// `/debug/rejected` on the metrics port serves the report the agent
/// wrote (the file under its state directory) as JSON: what `stats` shows.
fn assert_debug_rejected_serves_the_report(
    sb: &Sandbox,
    metrics: &str,
    stats: &Value,
) -> Result<()> {
    let (status, body) = get(metrics, "/debug/rejected")?;
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).context("/debug/rejected is JSON")?;
    let file = classifier_user::datapath::PinDir::new(sb.pins.clone())
        .state_dir()
        .join("rejected.json");
    let written: Value = serde_json::from_slice(&fs::read(&file)?)
        .with_context(|| format!("{} is JSON", file.display()))?;
    assert_eq!(served, written);
    assert_eq!(served["total"], stats["rejected_objects_total"], "{body}");
    assert_eq!(
        served["by_kind"], stats["rejected_objects_by_kind"],
        "{body}"
    );
    assert_eq!(served["objects"], stats["rejected_objects"], "{body}");
    Ok(())
}

/// `/metrics` counts the rejected objects by kind, without names.
fn assert_metrics_count_the_rejected(metrics: &str) -> Result<()> {
    let (status, text) = get(metrics, "/metrics")?;
    assert_eq!(status, 200);
    for line in [
        "# TYPE classifier_agent_rejected_objects gauge",
        "classifier_agent_rejected_objects{kind=\"Pod\"} 1",
        "classifier_agent_rejected_objects{kind=\"EgressNetwork\"} 1",
        "classifier_agent_rejected_objects{kind=\"Server\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(!text.contains("typo") && !text.contains("team-c"), "{text}");
    Ok(())
}

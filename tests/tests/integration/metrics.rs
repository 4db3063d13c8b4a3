//! `classifier agent --metrics-addr`: a real agent's `/metrics`, `/healthz`
//! and `/readyz`, scraped over HTTP. The agent runs in the root network
//! namespace, so the test reaches it on 127.0.0.1.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tests::{privileged, Sandbox};

use crate::http::{free_addr, get, wait_for_status};

/// `promtool check metrics` (Debian's `prometheus`) on `body`: no
/// problems reported, exit 0. Without promtool the check is skipped, but
/// not under CI=true.
fn promtool_check_metrics(body: &str) {
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED promtool check (install Debian's `prometheus`): {err}");
            return;
        }
        Err(err) => panic!("promtool (Debian's `prometheus`) is needed: {err}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{body}"
    );
}

/// The value of a sample, given with its labels if it has any.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn must(body: &str, name: &str) -> f64 {
    sample(body, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// Every token of the body that parses as an IP address.
fn addresses(body: &str) -> Vec<String> {
    body.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|t| t.parse::<IpAddr>().is_ok())
        .map(str::to_owned)
        .collect()
}

const GOOD_POLICY: &str = "apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  rules:
    - networks: [\"127.0.0.0/8\"]
      ports: \"4222\"
      protocol: opaque
";

#[test]
fn metrics_health_and_readiness_of_a_running_agent() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("metrics")?;
    let addr = free_addr();
    let policy = sb.write_file("policy.yaml", GOOD_POLICY);
    sb.start_agent(&[
        "--metrics-addr",
        &addr,
        "--policy",
        policy.to_str().unwrap(),
    ])?;
    // Two classified connects (a rule and a default port), so counters move.
    for target in ["127.0.0.1:4222", "127.0.0.1:3306"] {
        assert_eq!(sb.verdict(target)?["protocol"], "opaque", "{target}");
    }

    assert_eq!(get(&addr, "/healthz")?.0, 200);
    wait_for_status(&addr, "/readyz", 200)?;
    let (status, body) = get(&addr, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    let generation = sb.generation() as f64;
    assert_kernel_metrics(&body, generation);
    assert_agent_metrics(&body, generation)?;
    // Read after the agent dropped every capability but CAP_BPF: opening
    // the root-only pins as uid 0 needs no other.
    assert!(
        sb.agent_log()
            .contains("dropped every capability but CAP_BPF"),
        "{}",
        sb.agent_log()
    );
    assert_counters_only(&body);

    // A bad policy: counted, the previous one stays, still ready.
    sb.write_file("policy.yaml", "kind: [");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = get(&addr, "/metrics")?.1;
        if must(&body, "classifier_agent_policy_apply_errors_total") == 1.0 {
            assert_eq!(
                must(&body, "classifier_agent_policy_generation"),
                generation
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apply error not counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&addr, "/readyz")?.0, 200);
    assert_eq!(get(&addr, "/nothing-here")?.0, 404);
    Ok(())
}

/// The kernel's counters moved with the two classified connects, the
/// policy is the one applied, build info names this binary, and
/// Prometheus' own linter accepts the whole body.
fn assert_kernel_metrics(body: &str, generation: f64) {
    assert!(
        must(body, "classifier_connects_total{family=\"ipv4\"}") >= 2.0,
        "{body}"
    );
    assert!(
        must(body, "classifier_verdicts_total{protocol=\"opaque\"}") >= 2.0,
        "{body}"
    );
    assert!(
        must(
            body,
            "classifier_proxy_queries_total{result=\"classified\"}"
        ) >= 2.0,
        "{body}"
    );
    assert_eq!(
        must(body, "classifier_errors_total{reason=\"inflight\"}"),
        0.0
    );
    // Build info names this binary.
    assert!(
        body.lines()
            .any(|l| l.starts_with("classifier_build_info{version=")
                && l.contains(",layout=\"")
                && l.ends_with("} 1")),
        "{body}"
    );
    // By the book, as Prometheus' own linter reads it.
    promtool_check_metrics(body);
    assert_eq!(must(body, "classifier_policy_generation"), generation);
    assert_eq!(must(body, "classifier_policy_rules"), 1.0);
    assert_eq!(must(body, "classifier_kernel_maps_readable"), 1.0);
}

/// The agent's own state: ready, its policy applied just now, no errors,
/// no Kubernetes watch.
fn assert_agent_metrics(body: &str, generation: f64) -> Result<()> {
    assert_eq!(must(body, "classifier_agent_policy_generation"), generation);
    assert_eq!(must(body, "classifier_agent_policy_rules"), 1.0);
    assert_eq!(must(body, "classifier_agent_ready"), 1.0);
    assert_eq!(
        must(body, "classifier_agent_policy_apply_errors_total"),
        0.0
    );
    assert_eq!(must(body, "classifier_agent_sync_errors_total"), 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let applied = must(body, "classifier_agent_last_apply_timestamp_seconds");
    assert!(
        applied <= now && applied > now - 120.0,
        "{applied} vs {now}"
    );
    assert!(!body.contains("kernel_events"), "{body}");
    assert!(
        !body.contains("kubernetes_connected"),
        "no --kubernetes: {body}"
    );
    Ok(())
}

/// Counters only: no address of any connection (127.0.0.1), and no
/// destination port.
fn assert_counters_only(body: &str) {
    assert_eq!(addresses(body), Vec::<String>::new(), "{body}");
    let tokens: Vec<&str> = body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .collect();
    assert!(
        !tokens.contains(&"4222") && !tokens.contains(&"3306"),
        "{body}"
    );
}

#[test]
fn an_agent_that_could_not_apply_its_policy_is_live_but_not_ready() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("readiness")?;
    let policy = sb.write_file("policy.yaml", GOOD_POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let generation = sb.generation();
    sb.stop_agent();

    // Restart on a broken file: the programs are adopted and the previous
    // policy keeps classifying, but this agent applied nothing.
    sb.write_file("policy.yaml", "spec: {rules: 7}\n");
    let addr = free_addr();
    sb.start_agent(&[
        "--metrics-addr",
        &addr,
        "--policy",
        policy.to_str().unwrap(),
    ])?;
    assert!(
        sb.agent_log().contains("keeping the active policy"),
        "{}",
        sb.agent_log()
    );
    assert_eq!(get(&addr, "/healthz")?.0, 200);
    let (status, body) = get(&addr, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    let metrics = get(&addr, "/metrics")?.1;
    assert_eq!(must(&metrics, "classifier_agent_ready"), 0.0);
    assert_eq!(
        must(&metrics, "classifier_agent_policy_apply_errors_total"),
        1.0
    );
    assert_eq!(
        must(&metrics, "classifier_policy_generation"),
        generation as f64,
        "the kernel still runs the previous policy"
    );
    assert!(
        sample(&metrics, "classifier_agent_last_apply_timestamp_seconds").is_none(),
        "{metrics}"
    );

    // Fixing the file makes it ready.
    sb.write_file("policy.yaml", GOOD_POLICY);
    wait_for_status(&addr, "/readyz", 200)?;

    // Stopping: the port closes with the agent.
    sb.stop_agent();
    assert!(TcpStream::connect(&addr).is_err(), "metrics port closed");
    Ok(())
}

/// A connection to `addr` from the local address `src` (loopback takes any
/// 127/8 source), standing for another pod.
fn connect_from(src: &str, addr: &str) -> Result<TcpStream> {
    let src: std::net::SocketAddrV4 = format!("{src}:0").parse()?;
    let dst: std::net::SocketAddrV4 = addr.parse()?;
    tests::sys::connect_from(src, dst).with_context(|| format!("connecting {src} -> {dst}"))
}

/// Whether the server closed `stream` (EOF or reset), waiting up to `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 before the close is fine; keep reading to EOF.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// `/healthz` with its answer time.
fn timed_healthz(addr: &str) -> Result<(u16, Duration)> {
    let t = Instant::now();
    let (status, _) = get(addr, "/healthz")?;
    Ok((status, t.elapsed()))
}

#[test]
fn probes_answer_within_a_second_while_100_idle_and_slowloris_connections_are_held() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("metrics-dos")?;
    let addr = free_addr();
    let policy = sb.write_file("policy.yaml", GOOD_POLICY);
    sb.start_agent(&[
        "--metrics-addr",
        &addr,
        "--policy",
        policy.to_str().unwrap(),
    ])?;
    wait_for_status(&addr, "/readyz", 200)?;

    // 100 connections held open, none from the prober's 127.0.0.1:
    // 40 idle from 40 peers, 30 idle from one peer (over its quota),
    // 30 slowloris from 30 peers, each dripping a header byte every 100 ms.
    let mut idle = Vec::new();
    for i in 0..40 {
        idle.push(connect_from(&format!("127.0.1.{}", i + 1), &addr)?);
    }
    for _ in 0..30 {
        idle.push(connect_from("127.0.0.2", &addr)?);
    }
    let mut slow = Vec::new();
    for i in 0..30 {
        let mut s = connect_from(&format!("127.0.2.{}", i + 1), &addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;
        slow.push(s);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripper = {
        let stop = stop.clone();
        let mut slow: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut alive = slow.len();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && alive > 0 {
                alive = 0;
                for s in slow.iter_mut() {
                    if s.write_all(b"X").is_ok() {
                        alive += 1;
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            rounds
        })
    };

    // While all 100 are held (the idle ones live up to the 2 s header
    // timeout, the slow ones drip), the probes answer at once, every time,
    // and so do scrapes.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (status, took) = timed_healthz(&addr)?;
        assert_eq!(status, 200);
        worst = worst.max(took);
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        assert_eq!(get(&addr, "/readyz")?.0, 200);
    }
    let t = Instant::now();
    let (status, body) = get(&addr, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "/healthz worst {worst:?} under 100 held connections; a scrape took {:?}",
        t.elapsed()
    );

    // The server, not the test, ends them: every idle and slowloris
    // connection is closed by the header timeout (or at accept for the
    // ones over their peer's quota).
    for (i, s) in idle.iter_mut().chain(slow.iter_mut()).enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(10)),
            "connection {i} still open"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = dripper.join().unwrap();
    assert!(rounds >= 1);
    assert_eq!(timed_healthz(&addr)?.0, 200);
    Ok(())
}

// --- not privileged: the exposition and the monitoring files in deploy/ ----

/// `/metrics` of an agent with every kernel counter non-zero, a policy
/// applied, a Kubernetes sync done and the watch connected.
fn full_exposition() -> String {
    use classifier_user::{
        metrics::{AgentMetrics, Exporter},
        stats::{LearningInfo, PolicyInfo, Snapshot, VerdictTable},
    };
    let counters: Vec<(String, u64)> = classifier_common::counters::NAMES
        .iter()
        .map(|(i, n)| (n.to_string(), u64::from(*i) + 1))
        .collect();
    let snapshot = Snapshot {
        connects_total: 3,
        opaque_total: 1,
        classified_total: 1,
        excluded_total: 1,
        proxy_queries_total: 1,
        errors_total: 1,
        counters,
        verdict_table: VerdictTable {
            entries: 1,
            capacity: 65536,
            lost: 1,
        },
        policy: PolicyInfo {
            generation: 2,
            rules: 1,
            v4_entries: 1,
            v6_entries: 0,
            default_opaque_ports: 8,
            excluded_uids: 1,
            mark: None,
        },
        top_ports: vec![],
        agent: None,
        learning: Some(LearningInfo {
            enabled: true,
            scope: "namespace",
            outside_pods: false,
            min_observations: 1,
            entries: 1,
            capacity: 16384,
            scope_quota: 1024,
            learned_total: 1,
            contradicted_total: 0,
            nothing_learned: false,
        }),
        learned_destinations: vec![],
        rejected: None,
    };
    let agent = AgentMetrics::new(Duration::from_secs(30));
    agent.policy_applied(2, 1);
    agent.sync_succeeded();
    agent.set_kubernetes_connected(true);
    Exporter::with_snapshots(move || Ok(snapshot.clone()), agent).render()
}

#[test]
fn the_exposition_passes_promtool_check_metrics() {
    let body = full_exposition();
    promtool_check_metrics(&body);
    // Timestamps, not ages; one family per kind of event.
    for gone in ["_age_seconds", "kernel_events"] {
        assert!(!body.contains(gone), "{gone} in:\n{body}");
    }
    for family in [
        "classifier_connects_total{family=",
        "classifier_verdicts_total{protocol=",
        "classifier_verdict_sources_total{source=",
        "classifier_errors_total{reason=",
        "classifier_proxy_queries_total{result=",
        "classifier_build_info{version=",
        "classifier_agent_kubernetes_connected 1",
        "classifier_agent_last_apply_timestamp_seconds ",
        "classifier_agent_last_sync_timestamp_seconds ",
    ] {
        assert!(body.contains(family), "no {family} in:\n{body}");
    }
}

fn deploy_file(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `classifier_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("classifier_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics_and_the_rules_pass_promtool() {
    let exported: std::collections::BTreeSet<String> = full_exposition()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let rule_text = deploy_file("monitoring/prometheusrule.yaml");
    let dashboard = deploy_file("monitoring/grafana-dashboard.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    for (file, text) in [
        ("prometheusrule.yaml", &rule_text),
        ("grafana-dashboard.json", &dashboard),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file}");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics /metrics does not export: {unknown:?}"
        );
    }

    // The alerts operate.md names (those that page on a rising count or
    // a failure), and spec.groups is a rule
    // file promtool accepts.
    let rule = classifier_user::policy::file::parse_yaml_value(
        &rule_text,
        "deploy/monitoring/prometheusrule.yaml",
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rule["kind"], "PrometheusRule");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for a in [
        "ClassifierAgentDown",
        "ClassifierPolicyRejected",
        "ClassifierKubernetesSyncFailing",
        "ClassifierKernelErrorsRising",
        "ClassifierVerdictsLost",
    ] {
        assert!(alerts.contains(&a), "{a} in {alerts:?}");
    }
    let dir = std::env::temp_dir().join(format!("classifier-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yaml");
    std::fs::write(
        &file,
        classifier_user::policy::file::to_yaml_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED promtool check rules: {err}")
        }
        Err(err) => panic!("promtool (Debian's `prometheus`) is needed: {err}"),
    }
}

#[test]
fn readyz_fails_once_a_program_is_detached() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("readyz-detached")?;
    let addr = free_addr();
    sb.start_agent(&["--metrics-addr", &addr])?;
    wait_for_status(&addr, "/readyz", 200)?;

    // Something else detaches one of the links (the pin stays).
    let link = sb
        .pins
        .join("links")
        .join(classifier_common::programs::SOCKOPS);
    tests::run(
        std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&link),
    )?;
    let (status, body) = get(&addr, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("publish_sockops"),
        "names the program: {body}"
    );
    assert_eq!(get(&addr, "/healthz")?.0, 200, "still live");
    Ok(())
}

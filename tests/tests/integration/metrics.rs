//! `classifier agent --metrics-addr`: a real agent's `/metrics`, `/healthz`
//! and `/readyz`, scraped over HTTP. The agent runs in the root network
//! namespace, so the test reaches it on 127.0.0.1.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use tests::{privileged, Sandbox};

/// A port nobody listens on right now.
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` over HTTP/1.1: (status, body).
fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of an unlabelled sample.
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

fn wait_for_status(addr: &str, path: &str, status: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = get(addr, path);
        match &last {
            Ok((s, body)) if *s == status => return Ok(body.clone()),
            _ if Instant::now() > deadline => bail!("{path} never answered {status}: {last:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
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
    assert!(must(&body, "classifier_connects_total") >= 2.0, "{body}");
    assert!(must(&body, "classifier_opaque_total") >= 2.0, "{body}");
    assert!(
        must(&body, "classifier_proxy_queries_total") >= 2.0,
        "{body}"
    );
    assert_eq!(must(&body, "classifier_policy_generation"), generation);
    assert_eq!(must(&body, "classifier_policy_rules"), 1.0);
    assert_eq!(
        must(&body, "classifier_agent_policy_generation"),
        generation
    );
    assert_eq!(must(&body, "classifier_agent_policy_rules"), 1.0);
    assert_eq!(must(&body, "classifier_agent_ready"), 1.0);
    assert_eq!(
        must(&body, "classifier_agent_policy_apply_errors_total"),
        0.0
    );
    assert_eq!(must(&body, "classifier_agent_sync_errors_total"), 0.0);
    assert!(must(&body, "classifier_agent_last_apply_age_seconds") >= 0.0);
    assert!(
        body.contains("classifier_kernel_events_total{event=\"connect4\"}"),
        "{body}"
    );
    // Read after the agent dropped every capability but CAP_BPF: opening
    // the root-only pins as uid 0 needs no other.
    assert!(
        sb.agent_log()
            .contains("dropped every capability but CAP_BPF"),
        "{}",
        sb.agent_log()
    );
    assert_eq!(must(&body, "classifier_kernel_maps_readable"), 1.0);
    // Counters only: no address of any connection (127.0.0.1 above), and
    // no destination port.
    assert_eq!(addresses(&body), Vec::<String>::new(), "{body}");
    let tokens: Vec<&str> = body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .collect();
    assert!(
        !tokens.contains(&"4222") && !tokens.contains(&"3306"),
        "{body}"
    );

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
        sample(&metrics, "classifier_agent_last_apply_age_seconds").is_none(),
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

//! `cargo xtask linkerd-proxy e2e`: the real linkerd2-proxy, stock and with
//! our patch series, on real redirected sockets.
//!
//! The end-to-end tests' world (`tests::e2e::World`): a pod network
//! namespace with linkerd-init's nat rules, a MariaDB server in a second
//! namespace, the classifier agent attached to the pod's cgroup. The proxy
//! runs in the pod as UID 2102 with its real `SO_ORIGINAL_DST` code, against
//! the test control plane (integrations/linkerd2-proxy/control-plane) on the
//! pod's loopback, whose outbound policy for every address is Linkerd's
//! fallback: `Detect`.
//!
//! Measures the time from `connect()` to the MariaDB greeting through the
//! stock proxy, the patched proxy, and the patched proxy after the agent is
//! stopped and uninstalled; checks that HTTP/1 through the patched proxy is
//! still detected; writes a JSON report.
//!
//! ```text
//! linkerd-e2e --stock BIN --patched BIN --control-plane BIN
//!             --identity-data DIR --detect-timeout-ms T --runs N --out FILE
//! ```

#![deny(unsafe_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tests::e2e::{Daemon, World, MARIADB};
use tests::{run, PROXY_UID};

struct Args {
    stock: PathBuf,
    patched: PathBuf,
    control_plane: PathBuf,
    identity_data: PathBuf,
    detect_timeout_ms: u64,
    runs: usize,
    out: PathBuf,
}

fn main() {
    if let Err(err) = parse_args().and_then(|args| e2e(&args)) {
        eprintln!("linkerd-e2e: error: {err:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Result<String> {
        let i = args
            .iter()
            .position(|a| a == name)
            .with_context(|| format!("missing {name}"))?;
        args.get(i + 1)
            .cloned()
            .with_context(|| format!("{name} needs a value"))
    };
    Ok(Args {
        stock: value("--stock")?.into(),
        patched: value("--patched")?.into(),
        control_plane: value("--control-plane")?.into(),
        identity_data: value("--identity-data")?.into(),
        detect_timeout_ms: value("--detect-timeout-ms")?
            .parse()
            .context("--detect-timeout-ms")?,
        runs: value("--runs")?.parse().context("--runs")?,
        out: value("--out")?.into(),
    })
}

const ADMIN: &str = "http://127.0.0.1:4191";

#[expect(
    clippy::too_many_lines,
    reason = "a test driver read top to bottom; not split yet"
)]
fn e2e(args: &Args) -> Result<()> {
    if !tests::e2e::prerequisites("linkerd-e2e") {
        bail!("prerequisites missing (see above)");
    }
    let timeout = Duration::from_millis(args.detect_timeout_ms);
    let mut world = World::without_proxy("linkerd-e2e")?;
    let identity = identity_dir(&world, &args.identity_data)?;
    let trust_anchors = fs::read_to_string(args.identity_data.join("ca1.pem"))
        .context("reading the test trust anchors (ca1.pem)")?;

    // The control plane on the pod's loopback (linkerd-init's rules leave
    // `-o lo` alone), as a Linkerd control plane is reached by the proxy.
    let mut cmd = world.sb.probe(&["exec"], None);
    cmd.arg(&args.control_plane)
        .args(["--listen", "127.0.0.1:8090", "--identity-dir"])
        .arg(&identity)
        .arg("--detect-timeout")
        .arg(format!("{}ms", args.detect_timeout_ms))
        .stderr(fs::File::create(world.sb.dir.join("control-plane.log"))?);
    let _control_plane = Daemon::spawn_until_ready("control plane", cmd)?;

    world.sb.start_agent(&[])?;
    eprintln!("linkerd-e2e: agent attached to the pod's cgroup");

    start_linkerd(&mut world, &args.stock, &identity, &trust_anchors, timeout)?;
    let stock = greetings(&world, args.runs, "stock proxy, classifier attached")?;
    let stock_log = world.proxy_log();

    start_linkerd(
        &mut world,
        &args.patched,
        &identity,
        &trust_anchors,
        timeout,
    )?;
    let patched = greetings(&world, args.runs, "patched proxy, classifier attached")?;
    let hinted = hinted_connections(&world)?;
    let skipped = world
        .proxy_lines(&["Skipping protocol detection", "Opaque"])
        .len();

    // HTTP/1 through the patched proxy: port 8080 has no verdict, so the
    // proxy detects it as before and serves it as HTTP.
    let (out, _) = world.curl(&[])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "ok\n",
        "curl through the patched proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detected_http = world
        .wait_for_proxy_lines(&["192.0.2.2:8080", "Detected", "Http(HTTP/1)"], 1)
        .is_ok();
    let hinted_after_http = hinted_connections(&world)?;
    let patched_log = world.proxy_log();

    // The policy the proxies received for MariaDB's address: Linkerd's
    // fallback, Detect (the case the series is for).
    let control_log =
        fs::read_to_string(world.sb.dir.join("control-plane.log")).unwrap_or_default();
    let detect_policy = control_log
        .lines()
        .any(|l| l.contains(&format!("target={MARIADB} ")) && l.contains("Detect("));

    world.sb.uninstall_agent()?;
    eprintln!("linkerd-e2e: agent stopped and uninstalled");
    let without = greetings(&world, args.runs, "patched proxy, no classifier")?;
    let skipped_without = world.proxy_lines(&["Skipping protocol detection"]).len() - skipped;

    let report = json!({
        "detect_timeout_ms": args.detect_timeout_ms,
        "stock_ms": median(&stock),
        "patched_ms": median(&patched),
        "patched_without_classifier_ms": median(&without),
        "runs": {
            "stock_ms": stock,
            "patched_ms": patched,
            "patched_without_classifier_ms": without,
        },
        "patched_hinted_connections": hinted,
        "http1_detected": detected_http,
        "policy_was_detect": detect_policy,
    });
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    let t = args.detect_timeout_ms as f64;
    let mut failures = Vec::new();
    if median(&stock) < 0.9 * t {
        failures.push(format!(
            "the stock proxy did not stall: median {:.1} ms < 0.9 x {t} ms",
            median(&stock)
        ));
    }
    if !detect_policy {
        failures.push(format!(
            "the control plane did not answer Detect for {MARIADB}:\n{control_log}"
        ));
    }
    if stock_log.contains("Skipping protocol detection") {
        failures.push("the stock proxy logged a skipped detection".into());
    }
    if median(&patched) >= 1000.0 {
        failures.push(format!(
            "the patched proxy stalled: median {:.1} ms >= 1000 ms",
            median(&patched)
        ));
    }
    if hinted != args.runs as u64 || skipped != args.runs {
        failures.push(format!(
            "the patched proxy counted {hinted} hinted connections and logged {skipped} \
             skipped detections for {} MariaDB connections",
            args.runs
        ));
    }
    if !detected_http || hinted_after_http != hinted {
        failures.push(format!(
            "HTTP/1 through the patched proxy: detected {detected_http}, hinted \
             connections {hinted} -> {hinted_after_http}"
        ));
    }
    if median(&without) < 0.9 * t || skipped_without != 0 {
        failures.push(format!(
            "without the classifier the patched proxy must behave like the stock one: \
             median {:.1} ms (stock {:.1} ms), {skipped_without} skipped detections",
            median(&without),
            median(&stock)
        ));
    }
    if !failures.is_empty() {
        eprintln!("--- patched proxy log (tail) ---");
        for line in tail(&patched_log, 40) {
            eprintln!("{line}");
        }
        bail!("{}", failures.join("; "));
    }
    eprintln!(
        "linkerd-e2e: ok: greeting after {:.1} ms (stock), {:.1} ms (patched), {:.1} ms \
         (patched, no classifier); detect timeout {} ms",
        median(&stock),
        median(&patched),
        median(&without),
        args.detect_timeout_ms
    );
    Ok(())
}

/// A copy of upstream's test identity (foo-ns1: key, certificate, token)
/// that the proxy's UID can read.
fn identity_dir(world: &World, data: &Path) -> Result<PathBuf> {
    let src = data.join("foo-ns1");
    let dir = world.sb.dir.join("identity");
    fs::create_dir_all(&dir)?;
    for entry in fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{PROXY_UID}:{PROXY_UID}"))
        .arg(&dir))?;
    Ok(dir)
}

/// Starts linkerd2-proxy `bin` as the pod's proxy, as the injector
/// configures it, and waits until its admin server says it is ready.
fn start_linkerd(
    world: &mut World,
    bin: &Path,
    identity: &Path,
    trust_anchors: &str,
    detect_timeout: Duration,
) -> Result<()> {
    let control = "127.0.0.1:8090";
    let mut cmd = world.sb.probe(&["exec"], Some(PROXY_UID));
    cmd.arg(bin)
        .env_clear()
        .env("LINKERD2_PROXY_LOG", "warn,linkerd=debug")
        .env("LINKERD2_PROXY_LOG_FORMAT", "plain")
        .env("LINKERD2_PROXY_IDENTITY_DIR", identity)
        .env(
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            identity.join("token.txt"),
        )
        .env("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", trust_anchors)
        .env(
            "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
            "foo.ns1.serviceaccount.identity.linkerd.cluster.local",
        )
        .env("LINKERD2_PROXY_IDENTITY_SVC_ADDR", control)
        .env("LINKERD2_PROXY_DESTINATION_SVC_ADDR", control)
        .env("LINKERD2_PROXY_POLICY_SVC_ADDR", control)
        .env(
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"ns1","pod":"foo"}"#,
        )
        // The test addresses are outside the cluster's networks, as an
        // external database is: no profile lookup, fallback policy.
        .env(
            "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
            "10.255.255.0/24",
        )
        .env("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "10.255.255.0/24")
        .env(
            "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
            "all-unauthenticated",
        )
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS", "127.0.0.1:4140")
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:4143")
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:4191")
        .env("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "0.0.0.0:4190")
        // The proxy's own outbound detect timeout is what it waits for (the
        // policy's Detect timeout carries the same value).
        .env(
            "LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT",
            format!("{}ms", detect_timeout.as_millis()),
        );
    world.start_proxy("linkerd2-proxy", cmd, "Certified identity")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin(world, "/ready").is_ok_and(|body| body.starts_with("ready")) {
            return Ok(());
        }
        if !world.proxy_alive() || Instant::now() > deadline {
            bail!(
                "linkerd2-proxy {} did not become ready:\n{}",
                bin.display(),
                world.proxy_log()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// GET on the proxy's admin server, from inside the pod.
fn admin(world: &World, path: &str) -> Result<String> {
    let out = world
        .sb
        .probe(&["exec", "curl", "-sS", "--max-time", "5"], None)
        .arg(format!("{ADMIN}{path}"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `outbound_tcp_protocol_hinted_connections_total`, summed over labels.
fn hinted_connections(world: &World) -> Result<u64> {
    let metrics = admin(world, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("outbound_tcp_protocol_hinted_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Time from connect() to the MariaDB greeting, `runs` times, from the pod
/// as an application (redirected to the proxy).
fn greetings(world: &World, runs: usize, what: &str) -> Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let out = run(&mut world.sb.probe(&["greeting", MARIADB], None))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ms.push(v["ms"].as_f64().context("probe greeting output")?);
    }
    eprintln!(
        "linkerd-e2e: {what}: greeting after {:.1} ms (median of {runs}: {:?})",
        median(&ms),
        ms.iter()
            .map(|m| (m * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    Ok(ms)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

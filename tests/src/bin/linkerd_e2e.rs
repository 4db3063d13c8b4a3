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
//! stock proxy, the patched proxy with opaque hints enabled
//! (`LINKERD2_PROXY_OUTBOUND_OPAQUE_HINTS_ENABLED`), and the patched proxy
//! after the agent is stopped and uninstalled; checks that HTTP/1 through
//! the patched proxy is still detected; checks that an HTTP server on a port
//! the classifier calls opaque is still served as HTTP, with its route, when
//! the control plane gives it an HTTPRoute, and that the hint is used for the
//! same destination under the fallback policy; measures the patched proxy's
//! accept rate with hints on and off; writes a JSON report.
//!
//! ```text
//! linkerd-e2e --stock BIN --patched BIN --control-plane BIN
//!             --identity-data DIR --detect-timeout-ms T --runs N --out FILE
//! linkerd-e2e --connect-rate ADDR CONNECTIONS THREADS   (the rate client, run in the pod)
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

/// An HTTP server on a port the classifier's default policy calls opaque
/// (Redis' 6379, one of Linkerd's default opaque ports too).
const HTTP_ON_OPAQUE_PORT: &str = "192.0.2.2:6379";
/// The accept-rate client's destination: a port the classifier has no
/// verdict for, so hints on and off take the same path through the proxy
/// apart from the question asked at accept.
const RATE_TARGET: &str = "192.0.2.2:8080";
const RATE_CONNECTIONS: usize = 1500;
const RATE_THREADS: usize = 4;
const RATE_ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--connect-rate") {
        if let Err(err) = connect_rate(&args[1..]) {
            eprintln!("linkerd-e2e --connect-rate: error: {err:#}");
            std::process::exit(1);
        }
        return;
    }
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

/// What starts the pod's proxy: the identity and detect timeout every
/// proxy of the run shares.
struct Proxies {
    identity: PathBuf,
    trust_anchors: String,
    timeout: Duration,
}

impl Proxies {
    fn start(&self, world: &mut World, bin: &Path, hints: bool) -> Result<()> {
        start_linkerd(
            world,
            bin,
            &self.identity,
            &self.trust_anchors,
            self.timeout,
            hints,
        )
    }
}

/// Everything the run measured and saw, for the report and the checks.
#[derive(Default)]
struct Findings {
    stock: Vec<f64>,
    stock_log: String,
    patched: Vec<f64>,
    /// Connections the patched proxy counted as hinted, and the skipped
    /// detections it logged.
    hinted: u64,
    skipped: usize,
    detected_http: bool,
    hinted_after_http: u64,
    routes_kept: RouteCase,
    routes_configured: u64,
    fallback_case: RouteCase,
    fallback_hinted: u64,
    patched_log: String,
    rate_on: Vec<f64>,
    rate_off: Vec<f64>,
    stalled_with_hints_off: Vec<f64>,
    control_log: String,
    detect_policy: bool,
    without: Vec<f64>,
    skipped_without: usize,
}

fn e2e(args: &Args) -> Result<()> {
    if !tests::e2e::prerequisites("linkerd-e2e") {
        bail!("prerequisites missing (see above)");
    }
    let mut world = World::without_proxy("linkerd-e2e")?;
    let proxies = Proxies {
        identity: identity_dir(&world, &args.identity_data)?,
        trust_anchors: fs::read_to_string(args.identity_data.join("ca1.pem"))
            .context("reading the test trust anchors (ca1.pem)")?,
        timeout: Duration::from_millis(args.detect_timeout_ms),
    };
    let identity = proxies.identity.as_path();
    let control_plane = start_control_plane(&world, args, identity, &[HTTP_ON_OPAQUE_PORT])?;
    let server_netns = format!("{}-srv", world.sb.name);
    let _http_on_opaque_port = Daemon::spawn_until_ready(
        "http server on an opaque port",
        world
            .sb
            .probe_in_netns(&["http-serve", HTTP_ON_OPAQUE_PORT], &server_netns),
    )?;
    world.sb.start_agent(&[])?;
    eprintln!("linkerd-e2e: agent attached to the pod's cgroup");

    let mut f = Findings::default();
    stock_then_patched(&mut world, args, &proxies, &mut f)?;
    // The same destination under the fallback policy: the hint is used.
    drop(control_plane);
    let control_plane = start_control_plane(&world, args, identity, &[])?;
    proxies.start(&mut world, &args.patched, true)?;
    f.fallback_case = route_case(&world, false)?;
    f.fallback_hinted = hint_results(&world, "skipped_detection")?;
    f.patched_log.push_str(&world.proxy_log());
    accept_rates(&mut world, args, &proxies, &mut f)?;
    drop(control_plane);
    let _control_plane = start_control_plane(&world, args, identity, &[HTTP_ON_OPAQUE_PORT])?;
    proxies.start(&mut world, &args.patched, true)?;

    // The policy the proxies received for MariaDB's address: Linkerd's
    // fallback, Detect (the case the series is for).
    f.control_log = fs::read_to_string(world.sb.dir.join("control-plane.log")).unwrap_or_default();
    f.detect_policy = f
        .control_log
        .lines()
        .any(|l| l.contains(&format!("target={MARIADB} ")) && l.contains("Detect("));

    world.sb.uninstall_agent()?;
    eprintln!("linkerd-e2e: agent stopped and uninstalled");
    f.without = greetings(&world, args.runs, "patched proxy, no classifier")?;
    f.skipped_without = world.proxy_lines(&[SKIPPED_LINE]).len();

    let report = report(args, &f);
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let failures = failures(args, &f);
    if !failures.is_empty() {
        eprintln!("--- patched proxy log (tail) ---");
        for line in tail(&f.patched_log, 40) {
            eprintln!("{line}");
        }
        bail!("{}", failures.join("; "));
    }
    eprintln!(
        "linkerd-e2e: ok: greeting after {:.1} ms (stock), {:.1} ms (patched), {:.1} ms \
         (patched, no classifier); detect timeout {} ms",
        median(&f.stock),
        median(&f.patched),
        median(&f.without),
        args.detect_timeout_ms
    );
    Ok(())
}

/// MariaDB greetings through the stock proxy, then the patched one with
/// hints; HTTP/1 through the patched proxy; an HTTP server with an
/// HTTPRoute on a port the classifier calls opaque.
fn stock_then_patched(
    world: &mut World,
    args: &Args,
    proxies: &Proxies,
    f: &mut Findings,
) -> Result<()> {
    proxies.start(world, &args.stock, false)?;
    f.stock = greetings(world, args.runs, "stock proxy, classifier attached")?;
    f.stock_log = world.proxy_log();

    proxies.start(world, &args.patched, true)?;
    f.patched = greetings(world, args.runs, "patched proxy, classifier attached")?;
    f.hinted = hint_results(world, "skipped_detection")?;
    f.skipped = world.proxy_lines(&[SKIPPED_LINE]).len();

    // HTTP/1 through the patched proxy: port 8080 has no verdict, so the
    // proxy detects it as before and serves it as HTTP.
    let (out, _) = world.curl(&[])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "ok\n",
        "curl through the patched proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.detected_http = world
        .wait_for_proxy_lines(&["192.0.2.2:8080", "Detected", "Http(HTTP/1)"], 1)
        .is_ok();
    f.hinted_after_http = hint_results(world, "skipped_detection")?;

    // An HTTP server on a port the classifier calls opaque, whose policy is
    // Detect with an HTTPRoute: still served as HTTP, and the route applies.
    f.routes_kept = route_case(world, true)?;
    f.routes_configured = hint_results(world, "routes_configured")?;
    f.patched_log = world.proxy_log();
    Ok(())
}

/// Accept rate with hints on and off, alternating, same binary; once,
/// greetings with hints off.
fn accept_rates(world: &mut World, args: &Args, proxies: &Proxies, f: &mut Findings) -> Result<()> {
    for round in 0..RATE_ROUNDS {
        proxies.start(world, &args.patched, true)?;
        f.rate_on.push(accept_rate(world)?);
        proxies.start(world, &args.patched, false)?;
        f.rate_off.push(accept_rate(world)?);
        if round == 0 {
            // Opt-in off: the patched proxy does not ask, and waits.
            f.stalled_with_hints_off =
                greetings(world, 1, "patched proxy, hints off, classifier attached")?;
        }
    }
    eprintln!(
        "linkerd-e2e: accept rate (connections/s): hints on {:?}, hints off {:?}",
        f.rate_on, f.rate_off
    );
    Ok(())
}

/// The JSON report of a run.
fn report(args: &Args, f: &Findings) -> serde_json::Value {
    let rate_on_median = median(&f.rate_on);
    let rate_off_median = median(&f.rate_off);
    json!({
        "detect_timeout_ms": args.detect_timeout_ms,
        "stock_ms": median(&f.stock),
        "patched_ms": median(&f.patched),
        "patched_without_classifier_ms": median(&f.without),
        "runs": {
            "stock_ms": f.stock,
            "patched_ms": f.patched,
            "patched_without_classifier_ms": f.without,
        },
        "patched_hinted_connections": f.hinted,
        "http1_detected": f.detected_http,
        "policy_was_detect": f.detect_policy,
        "routes_kept": f.routes_kept.header && f.routes_kept.body_ok && f.routes_configured >= 1,
        "route_case": {
            "destination": HTTP_ON_OPAQUE_PORT,
            "with_http_route": {
                "route_header": f.routes_kept.header,
                "body_ok": f.routes_kept.body_ok,
                "hints_ignored_for_routes": f.routes_configured,
            },
            "fallback": {
                "route_header": f.fallback_case.header,
                "body_ok": f.fallback_case.body_ok,
                "hinted_connections": f.fallback_hinted,
            },
        },
        "patched_hints_off_ms": median(&f.stalled_with_hints_off),
        "accept_rate": {
            "target": RATE_TARGET,
            "connections_per_round": RATE_CONNECTIONS,
            "client_threads": RATE_THREADS,
            "hints_on_per_s": rate_on_median,
            "hints_off_per_s": rate_off_median,
            "on_over_off": rate_on_median / rate_off_median,
            "rounds": {"hints_on_per_s": f.rate_on, "hints_off_per_s": f.rate_off},
        },
    })
}

/// What the run shows that it should not: the stock proxy must stall, the
/// patched one must not, and only where the classifier gave a verdict.
fn failures(args: &Args, f: &Findings) -> Vec<String> {
    let t = args.detect_timeout_ms as f64;
    let mut failures = Vec::new();
    if median(&f.stock) < 0.9 * t {
        failures.push(format!(
            "the stock proxy did not stall: median {:.1} ms < 0.9 x {t} ms",
            median(&f.stock)
        ));
    }
    if !f.detect_policy {
        failures.push(format!(
            "the control plane did not answer Detect for {MARIADB}:\n{}",
            f.control_log
        ));
    }
    if f.stock_log.contains("Skipping protocol detection") {
        failures.push("the stock proxy logged a skipped detection".into());
    }
    if median(&f.patched) >= 1000.0 {
        failures.push(format!(
            "the patched proxy stalled: median {:.1} ms >= 1000 ms",
            median(&f.patched)
        ));
    }
    if f.hinted != args.runs as u64 || f.skipped != args.runs {
        failures.push(format!(
            "the patched proxy counted {} hinted connections and logged {} \
             skipped detections for {} MariaDB connections",
            f.hinted, f.skipped, args.runs
        ));
    }
    failures.extend(route_failures(f));
    if median(&f.stalled_with_hints_off) < 0.9 * t {
        failures.push(format!(
            "with hints off the patched proxy must not use hints: greeting after {:.1} ms",
            median(&f.stalled_with_hints_off)
        ));
    }
    if median(&f.without) < 0.9 * t || f.skipped_without != 0 {
        failures.push(format!(
            "without the classifier the patched proxy must behave like the stock one: \
             median {:.1} ms (stock {:.1} ms), {} skipped detections",
            median(&f.without),
            median(&f.stock),
            f.skipped_without
        ));
    }
    failures
}

/// HTTP through the patched proxy: detected where there is no verdict,
/// routed where the control plane has an HTTPRoute, hinted under the
/// fallback policy.
fn route_failures(f: &Findings) -> Vec<String> {
    let mut failures = Vec::new();
    let (kept, fallback) = (&f.routes_kept, &f.fallback_case);
    if !(kept.header && kept.body_ok) || f.routes_configured < 1 {
        failures.push(format!(
            "{HTTP_ON_OPAQUE_PORT} with an HTTPRoute: route header {}, body ok {}, hints \
             ignored for routes {}",
            kept.header, kept.body_ok, f.routes_configured
        ));
    }
    if fallback.header || !fallback.body_ok || f.fallback_hinted != 1 {
        failures.push(format!(
            "{HTTP_ON_OPAQUE_PORT} under the fallback policy: route header {}, body ok {}, \
             hinted connections {} (expected 1)",
            fallback.header, fallback.body_ok, f.fallback_hinted
        ));
    }
    if !f.detected_http || f.hinted_after_http != f.hinted {
        failures.push(format!(
            "HTTP/1 through the patched proxy: detected {}, hinted \
             connections {} -> {}",
            f.detected_http, f.hinted, f.hinted_after_http
        ));
    }
    failures
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
    opaque_hints: bool,
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
    if opaque_hints {
        // The opt-in; a stock proxy ignores it.
        cmd.env("LINKERD2_PROXY_OUTBOUND_OPAQUE_HINTS_ENABLED", "true");
    }
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

/// The patched proxy's debug line for a connection whose detection an
/// opaque hint replaced.
const SKIPPED_LINE: &str = "Skipping protocol detection: the client's node says";

/// `outbound_tcp_detect_hint_results_total{result=RESULT}`, summed over the
/// other labels.
fn hint_results(world: &World, result: &str) -> Result<u64> {
    let metrics = admin(world, "/metrics")?;
    let label = format!("result=\"{result}\"");
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("outbound_tcp_detect_hint_results_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The control plane on the pod's loopback (linkerd-init's rules leave
/// `-o lo` alone), as a Linkerd control plane is reached by the proxy;
/// `http_routes` get a Detect policy with an HTTPRoute.
fn start_control_plane(
    world: &World,
    args: &Args,
    identity: &Path,
    http_routes: &[&str],
) -> Result<Daemon> {
    let mut cmd = world.sb.probe(&["exec"], None);
    cmd.arg(&args.control_plane)
        .args(["--listen", "127.0.0.1:8090", "--identity-dir"])
        .arg(identity)
        .arg("--detect-timeout")
        .arg(format!("{}ms", args.detect_timeout_ms));
    for addr in http_routes {
        cmd.args(["--http-route", addr]);
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(world.sb.dir.join("control-plane.log"))?;
    cmd.stderr(log);
    Daemon::spawn_until_ready("control plane", cmd)
}

#[derive(Default)]
struct RouteCase {
    /// The response carried the header the HTTPRoute adds.
    header: bool,
    /// The server's own answer came back.
    body_ok: bool,
}

/// `curl -i` to the HTTP server on the opaque port, from the pod.
fn route_case(world: &World, expect_route: bool) -> Result<RouteCase> {
    let out = world
        .sb
        .probe(&["exec", "curl", "-sS", "-i", "--max-time", "20"], None)
        .arg(format!("http://{HTTP_ON_OPAQUE_PORT}/"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let case = RouteCase {
        header: text.contains("l5d-e2e-route: e2e-route"),
        body_ok: out.status.success() && text.ends_with("\r\n\r\nok\n"),
    };
    eprintln!(
        "linkerd-e2e: http://{HTTP_ON_OPAQUE_PORT}/ {}: route header {}, body ok {}",
        if expect_route {
            "with an HTTPRoute"
        } else {
            "under the fallback policy"
        },
        case.header,
        case.body_ok
    );
    Ok(case)
}

/// Connections per second the proxy accepted and served, from the pod.
fn accept_rate(world: &World) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let out = run(world
        .sb
        .probe(&["exec"], None)
        .arg(exe)
        .arg("--connect-rate")
        .arg(RATE_TARGET)
        .arg(RATE_CONNECTIONS.to_string())
        .arg(RATE_THREADS.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["per_s"].as_f64().context("--connect-rate output")
}

/// `--connect-rate ADDR N THREADS`: N connections to ADDR over THREADS
/// threads, each sending one HTTP/1.1 request and reading the response to
/// its end. Prints `{"connections": N, "per_s": RATE}`.
fn connect_rate(args: &[String]) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let [addr, n, threads] = args else {
        bail!("usage: --connect-rate ADDR CONNECTIONS THREADS");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let n: usize = n.parse().context("CONNECTIONS")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let one = || -> Result<()> {
        let mut conn = TcpStream::connect(addr)?;
        conn.write_all(b"GET / HTTP/1.1\r\nhost: rate\r\nconnection: close\r\n\r\n")?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response)?;
        ensure!(
            response.starts_with(b"HTTP/1.1 200"),
            "response {:?}",
            String::from_utf8_lossy(&response)
        );
        Ok(())
    };
    // Warm up the proxy's discovery cache and connection paths.
    for _ in 0..20 {
        one()?;
    }
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        one()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("rate client thread")?;
        }
        Ok(())
    })?;
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    println!("{}", json!({"connections": n, "per_s": per_s}));
    Ok(())
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

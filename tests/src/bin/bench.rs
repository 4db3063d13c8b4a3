//! `cargo xtask bench`: what the classifier costs per connect() and what it
//! saves, measured side by side in one run.
//!
//! Every comparison is interleaved (A B A B ...) and reported as a median
//! with its spread; absolute times are printed but only the ratios matter.
//! Runs as root in its own cgroups, namespaces and pin directories (the
//! test harness's `Sandbox`), and removes them when done.
//!
//! ```text
//! bench [--quick] [--out DIR]      results in DIR/results.json and DIR/results.md
//! ```

#![deny(unsafe_code)]

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use classifier_common::{maps, programs, ConnKey, ConnVerdict};
use classifier_user::{
    datapath::{PinDir, PolicyMaps},
    policy::{compile, Network, Policy, PortSet, Protocol, Rule},
    sources::{compile_documents, Document, DocumentSet, Options},
};
use serde_json::{json, Value};
use tests::{
    classifier_bin,
    e2e::{World, MARIADB},
    run, Sandbox,
};

struct Plan {
    quick: bool,
    /// Connects per timed loop.
    iterations: u64,
    /// Interleaved repeats per comparison.
    repeats: usize,
    rule_counts: Vec<usize>,
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    if !tests::sys::is_root() {
        bail!("benchmarks attach eBPF programs and create cgroups and namespaces: run as root");
    }
    let plan = if quick {
        Plan {
            quick,
            iterations: 5_000,
            repeats: 5,
            rule_counts: vec![0, 1_000, 10_000, 100_000],
        }
    } else {
        Plan {
            quick,
            iterations: 20_000,
            repeats: 15,
            rule_counts: vec![0, 1_000, 10_000, 100_000],
        }
    };
    fs::create_dir_all(&out)?;
    let started = Instant::now();

    let mut results = json!({
        "quick": quick,
        "machine": machine(),
        "iterations_per_loop": plan.iterations,
        "repeats": plan.repeats,
    });

    let mut attached = Sandbox::new("bench-attached")?;
    let bare = Sandbox::new("bench-bare")?;
    attached.start_agent(&[])?;

    step("1/6 connect overhead (attached vs bare cgroup, interleaved)");
    results["connect_overhead"] = connect_overhead(&plan, &attached, &bare)?;
    results["program_run_time"] = program_run_times(&plan, &attached)?;

    step("2/6 policy scale");
    // The bench writes the policy itself from here on, to time each part;
    // the programs stay attached through their pinned links.
    attached.kill_agent();
    results["policy_scale"] = policy_scale(&plan, &attached, &bare)?;
    step("6/6 a cluster's worth of Kubernetes documents (10k Services, 50k Pods)");
    results["kubernetes_scale"] = kubernetes_scale(&attached)?;

    step("3/6 stats with the verdict table full");
    results["stats_at_scale"] = stats_at_scale(&plan, &attached)?;
    drop(attached);
    drop(bare);

    step("4/6 agent footprint");
    results["footprint"] = footprint()?;

    step("5/6 the stall it removes (MariaDB greeting)");
    results["stall"] = stall(&plan)?;

    results["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    let markdown = render_markdown(&results);
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    fs::write(out.join("results.md"), &markdown)?;
    println!("{markdown}");
    eprintln!(
        "bench: wrote {} and {} in {:.0} s",
        out.join("results.json").display(),
        out.join("results.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(what: &str) {
    eprintln!("bench: {what}");
}

fn machine() -> Value {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({ "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel })
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Summary {
    median: f64,
    p25: f64,
    p75: f64,
}

fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p25: at(0.25),
        p75: at(0.75),
    }
}

fn summary_json(s: Summary) -> Value {
    json!({ "median": s.median, "p25": s.p25, "p75": s.p75 })
}

/// Runs `a` and `b` alternately `repeats` times.
fn interleave(
    repeats: usize,
    label: &str,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        eprint!("\rbench:   {label}: repeat {}/{repeats}   ", i + 1);
        // Alternate which goes first, so neither always runs warm.
        if i % 2 == 0 {
            xs.push(a()?);
            ys.push(b()?);
        } else {
            ys.push(b()?);
            xs.push(a()?);
        }
    }
    eprintln!();
    Ok((xs, ys))
}

/// Per-repeat ratios a/b, paired by repeat: robust to machine-wide drift.
fn ratio(a: &[f64], b: &[f64]) -> Summary {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    summarize(&r)
}

// ---------------------------------------------------------------------------
// 1. Connect overhead
// ---------------------------------------------------------------------------

fn connect_loop(sb: &Sandbox, addr: &str, iterations: u64, query: bool) -> Result<f64> {
    let n = iterations.to_string();
    let mut args = vec!["connect-loop", addr, n.as_str()];
    if query {
        args.push("--query");
    }
    let out = run(&mut sb.probe(&args, None))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_iteration"].as_f64().context("probe output")
}

fn connect_overhead(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let mut out = json!({});
    for (name, addr) in [
        ("opaque_port_v4", "127.0.0.1:3306"),
        ("other_port_v4", "127.0.0.1:8080"),
        ("opaque_port_v6", "[::1]:3306"),
    ] {
        let (a, b) = interleave(
            plan.repeats,
            name,
            || connect_loop(attached, addr, plan.iterations, false),
            || connect_loop(bare, addr, plan.iterations, false),
        )?;
        let (sa, sb) = (summarize(&a), summarize(&b));
        out[name] = json!({
            "addr": addr,
            "with_ns": summary_json(sa),
            "without_ns": summary_json(sb),
            "ratio": summary_json(ratio(&a, &b)),
            "added_ns": sa.median - sb.median,
        });
    }
    Ok(out)
}

/// Keeps `kernel.bpf_stats_enabled` on while alive (run_time_ns/run_cnt).
struct BpfStats {
    previous: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let previous = fs::read_to_string(path).context("reading kernel.bpf_stats_enabled")?;
        fs::write(path, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", self.previous.trim());
    }
}

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = run(Command::new("bpftool").arg("-j").args(args))
        .context("bpftool (Debian package bpftool)")?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Per-program run time as the kernel measures it. Stats collection itself
/// slows every program down, so it is on only for these extra loops, never
/// during the timed comparisons.
fn program_run_times(plan: &Plan, sb: &Sandbox) -> Result<Value> {
    let stats = BpfStats::enable()?;
    connect_loop(sb, "127.0.0.1:3306", plan.iterations, true)?;
    connect_loop(sb, "[::1]:3306", plan.iterations, false)?;
    let mut out = json!({});
    for program in programs::ALL {
        let link = sb.pins.join("links").join(program);
        let link_info = bpftool_json(&["link", "show", "pinned", link.to_str().unwrap()])?;
        let id = link_info["prog_id"].as_u64().context("prog_id")?;
        let prog = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        let runs = prog["run_cnt"].as_u64().unwrap_or(0);
        let ns = prog["run_time_ns"].as_u64().unwrap_or(0);
        out[program] = json!({
            "run_cnt": runs,
            "run_time_ns": ns,
            "ns_per_run": if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
        });
    }
    drop(stats);
    Ok(out)
}

// ---------------------------------------------------------------------------
// 2. Policy scale
// ---------------------------------------------------------------------------

/// Deterministic xorshift, so every run measures the same policies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `rules` random rules: half IPv4 (/16 to /32), half IPv6 (/32 to /128),
/// two random ports each, all opaque.
pub fn random_policy(rules: usize, seed: u64) -> Policy {
    let mut rng = Rng(seed | 1);
    let mut policy = Policy::builtin_default();
    for i in 0..rules {
        let cidr: ipnet::IpNet = if i % 2 == 0 {
            let prefix = 16 + (rng.next() % 17) as u8;
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(rng.next() as u32), prefix)
                .unwrap()
                .trunc()
                .into()
        } else {
            let prefix = 32 + (rng.next() % 97) as u8;
            let addr = ((rng.next() as u128) << 64) | rng.next() as u128;
            // Keep clear of ::ffff:0:0/96, which the policy model rejects.
            let addr = addr | (0x2001u128 << 112);
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), prefix)
                .unwrap()
                .trunc()
                .into()
        };
        let mut ports = PortSet::new();
        ports.insert(1024 + (rng.next() % 60_000) as u16);
        ports.insert(1024 + (rng.next() % 60_000) as u16);
        policy.rules.push(Rule::new(
            i as u32 + 1,
            vec![Network::new(cidr)],
            ports,
            Protocol::Opaque,
        ));
    }
    policy
}

fn policy_scale(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let mut maps = PolicyMaps::open(&PinDir::new(&attached.pins))?;
    let mut rows = Vec::new();
    let mut baseline_ratio = None;
    for &rules in &plan.rule_counts {
        let policy = random_policy(rules, 0x5eed + rules as u64);
        let t = Instant::now();
        let compiled = compile(&policy)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        // The first write into a slot of unknown contents is a full write.
        let applied = maps.apply(Arc::new(compiled))?;
        eprintln!("bench:   {rules} rules: {} v4 + {} v6 entries, compile {compile_ms:.1} ms, apply {:.1} ms", applied.v4_entries, applied.v6_entries, applied.elapsed.as_secs_f64() * 1e3);
        let repeats = (plan.repeats / 2).max(3);
        let (a, b) = interleave(
            repeats,
            &format!("{rules} rules"),
            || connect_loop(attached, "127.0.0.1:3306", plan.iterations, false),
            || connect_loop(bare, "127.0.0.1:3306", plan.iterations, false),
        )?;
        let r = ratio(&a, &b);
        let baseline = *baseline_ratio.get_or_insert(r.median);
        rows.push(json!({
            "rules": rules,
            "v4_entries": applied.v4_entries,
            "v6_entries": applied.v6_entries,
            "compile_ms": compile_ms,
            "apply_full_ms": applied.elapsed.as_secs_f64() * 1e3,
            "map_writes": applied.map_writes,
            "with_ns": summary_json(summarize(&a)),
            "without_ns": summary_json(summarize(&b)),
            "ratio": summary_json(r),
            "ratio_vs_0_rules": r.median / baseline,
        }));
    }

    // A one-rule change to the largest policy. Apply it once more so both
    // slots hold it, then change one rule's port.
    let largest = *plan.rule_counts.last().unwrap();
    let mut policy = random_policy(largest, 0x5eed + largest as u64);
    maps.apply(Arc::new(compile(&policy)?))?;
    let mut samples_compile = Vec::new();
    let mut samples_apply = Vec::new();
    let mut writes = 0;
    for i in 0..5u16 {
        let rule = &mut policy.rules[0];
        rule.ports = PortSet::new();
        rule.ports.insert(2000 + i);
        let t = Instant::now();
        let compiled = compile(&policy)?;
        samples_compile.push(t.elapsed().as_secs_f64() * 1e3);
        let applied = maps.apply(Arc::new(compiled))?;
        assert!(applied.incremental);
        samples_apply.push(applied.elapsed.as_secs_f64() * 1e3);
        writes = applied.map_writes;
        // Space the changes past the grace period, as real edits are.
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(json!({
        "rows": rows,
        "one_rule_change": {
            "rules": largest,
            "compile_ms": summary_json(summarize(&samples_compile)),
            "apply_ms": summary_json(summarize(&samples_apply)),
            "map_writes": writes,
        },
    }))
}

// ---------------------------------------------------------------------------
// 6. Kubernetes scale
// ---------------------------------------------------------------------------

/// 100 namespaces (half annotated `5432`), 10,000 Services (every other one
/// annotated `3306`, every tenth with an appProtocol opaque port) and
/// 50,000 running Pods, as the watcher would hand them over.
fn cluster_documents() -> Result<DocumentSet> {
    use serde_yaml::Value as Y;
    let doc = |text: String| -> Result<Y> { Ok(serde_yaml::from_str(&text)?) };
    let mut set = DocumentSet::new();
    let mut add = |body: Y, origin: String| -> Result<()> {
        if let Some(d) = Document::from_value(body, origin)? {
            set.insert(d);
        }
        Ok(())
    };
    for n in 0..100 {
        let annotations = if n % 2 == 0 {
            "  annotations: {config.linkerd.io/opaque-ports: \"5432\"}\n"
        } else {
            ""
        };
        add(
            doc(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n{annotations}"
            ))?,
            format!("bench:ns/{n}"),
        )?;
    }
    for i in 0..10_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i + 1);
        let annotations = if i % 2 == 0 {
            "  annotations: {config.linkerd.io/opaque-ports: \"3306\"}\n"
        } else {
            ""
        };
        let app = if i % 10 == 0 {
            ", appProtocol: linkerd.io/opaque"
        } else {
            ""
        };
        add(
            doc(format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{}\n{annotations}spec:\n  clusterIP: {ip}\n  ports: [{{port: 8080{app}}}]\n",
                i % 100
            ))?,
            format!("bench:svc/{i}"),
        )?;
    }
    for i in 0..50_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0af4_0000 + i + 1);
        add(
            doc(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: ns-{}\n  uid: 00000000-0000-4000-8000-{i:012}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n",
                i % 100
            ))?,
            format!("bench:pod/{i}"),
        )?;
    }
    Ok(set)
}

fn kubernetes_scale(sb: &Sandbox) -> Result<Value> {
    let rss_before = rss_kib(std::process::id())?;
    let set = cluster_documents()?;
    let t = Instant::now();
    let policy = compile_documents(&set, &Options::default())?;
    let documents_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let compiled = Arc::new(compile(&policy)?);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut maps = PolicyMaps::open(&PinDir::new(&sb.pins))?;
    let applied = maps.apply(compiled.clone())?;
    // Twice more, so that both slots hold it: the last one is what a
    // re-list that changed nothing costs.
    maps.apply(compiled.clone())?;
    std::thread::sleep(Duration::from_millis(25));
    let again = maps.apply(compiled)?;
    let rss_after = rss_kib(std::process::id())?;
    eprintln!(
        "bench:   {} documents -> {} rules, {} + {} entries: documents {documents_ms:.0} ms, compile {compile_ms:.0} ms, apply {:.0} ms",
        set.len(),
        policy.rules.len(),
        applied.v4_entries,
        applied.v6_entries,
        applied.elapsed.as_secs_f64() * 1e3
    );
    Ok(json!({
        "documents": set.len(),
        "rules": policy.rules.len(),
        "v4_entries": applied.v4_entries,
        "v6_entries": applied.v6_entries,
        "documents_to_policy_ms": documents_ms,
        "compile_ms": compile_ms,
        "apply_full_ms": applied.elapsed.as_secs_f64() * 1e3,
        "apply_unchanged_ms": again.elapsed.as_secs_f64() * 1e3,
        "memory_kib": rss_after.saturating_sub(rss_before),
    }))
}

// ---------------------------------------------------------------------------
// 3. Stats at scale
// ---------------------------------------------------------------------------

fn stats_at_scale(plan: &Plan, sb: &Sandbox) -> Result<Value> {
    let pins = PinDir::new(&sb.pins);
    let mut verdicts: HashMap<MapData, ConnKey, ConnVerdict> = HashMap::try_from(Map::LruHashMap(
        MapData::from_pin(pins.map(maps::VERDICTS))?,
    ))?;
    let capacity = verdicts.map().info()?.max_entries();
    // Fill the table as a busy node would: one entry per open connection.
    for i in 0..capacity {
        let key = ConnKey {
            netns_cookie: 1,
            addr: [
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xff,
                0xff,
                10,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ],
            port: 40000,
            _pad: [0; 6],
        };
        verdicts.insert(
            key,
            ConnVerdict {
                protocol: 1,
                source: 1,
                ..Default::default()
            },
            0,
        )?;
    }
    let mut samples = Vec::new();
    for _ in 0..if plan.quick { 3 } else { 7 } {
        let t = Instant::now();
        run(Command::new(classifier_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&sb.pins))?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(json!({ "entries": capacity, "stats_json_ms": summary_json(summarize(&samples)) }))
}

// ---------------------------------------------------------------------------
// 4. Footprint
// ---------------------------------------------------------------------------

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

fn map_memory_bytes(pins: &Path) -> Result<u64> {
    let mut total = 0;
    for name in maps::ALL {
        let info = bpftool_json(&[
            "map",
            "show",
            "pinned",
            pins.join("maps").join(name).to_str().unwrap(),
        ])?;
        total += info["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

fn footprint() -> Result<Value> {
    let mut out = json!({});
    for (label, rules) in [("default_policy", 0usize), ("100k_rules", 100_000)] {
        let mut sb = Sandbox::new("bench-footprint")?;
        let mut args: Vec<String> = Vec::new();
        if rules > 0 {
            let path = sb.dir.join("policy.yaml");
            fs::write(&path, policy_yaml(&random_policy(rules, 0xf00d)))?;
            args = vec!["--policy".into(), path.to_str().unwrap().into()];
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.start_agent(&args)?;
        std::thread::sleep(Duration::from_millis(300));
        out[label] = json!({
            "agent_rss_kib": rss_kib(sb.agent_pid().context("agent pid")?)?,
            "map_memory_bytes": map_memory_bytes(&sb.pins)?,
        });
    }
    Ok(out)
}

/// The policy as a ClassifierPolicy file, for the agent's own parser.
fn policy_yaml(policy: &Policy) -> String {
    let mut out = String::from(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n",
    );
    for rule in &policy.rules {
        let _ = writeln!(
            out,
            "    - {{networks: [\"{}\"], ports: \"{}\", protocol: {}}}",
            rule.networks[0].cidr,
            rule.ports,
            rule.protocol.as_str()
        );
    }
    out
}

// ---------------------------------------------------------------------------
// 5. The stall
// ---------------------------------------------------------------------------

fn greeting_ms(world: &World, uid: Option<u32>) -> Result<f64> {
    let out = run(&mut world.sb.probe(&["greeting", MARIADB], uid))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ms"].as_f64().context("probe greeting output")
}

/// Connect to the MariaDB server's greeting: direct (as the proxy's UID,
/// which the nat rules let through), through the reference proxy with the
/// classifier, and through it without (Linkerd's 10 s detection timeout).
fn stall(plan: &Plan) -> Result<Value> {
    if !tests::e2e::prerequisites("bench stall") {
        return Ok(json!({ "status": "skipped: mariadb-server / iptables missing" }));
    }
    let timeout = Duration::from_secs(10);
    let mut world = World::with_detect_timeout("bench-stall", timeout)?;
    let slow_runs = if plan.quick { 1 } else { 3 };
    let mut without = Vec::new();
    for i in 0..slow_runs {
        eprintln!(
            "bench:   through the proxy without the classifier ({}/{slow_runs}, ~10 s each)",
            i + 1
        );
        without.push(greeting_ms(&world, None)?);
    }
    world.sb.start_agent(&[])?;
    let (with, direct) = interleave(
        plan.repeats,
        "with classifier vs direct",
        || greeting_ms(&world, None),
        || greeting_ms(&world, Some(tests::PROXY_UID)),
    )?;
    let (sw, sd) = (summarize(&with), summarize(&direct));
    let row = |path: &str, s: Summary, runs: usize| json!({ "path": path, "ms": summary_json(s), "runs": runs });
    Ok(json!({
        "detect_timeout_s": timeout.as_secs(),
        "rows": [
            row("direct (no proxy)", sd, direct.len()),
            row("through the proxy, with the classifier", sw, with.len()),
            row("through the proxy, without the classifier", summarize(&without), without.len()),
        ],
        "with_minus_direct_ms": sw.median - sd.median,
    }))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn render_markdown(r: &Value) -> String {
    let mut md = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        md,
        "Machine: {} ({} cores), kernel {}. {} connects per loop, {} interleaved repeats{}.\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["kernel"].as_str().unwrap_or(""),
        r["iterations_per_loop"],
        r["repeats"],
        if r["quick"] == true { " (--quick)" } else { "" }
    );

    let _ = writeln!(
        md,
        "### Connect overhead (connect + accept + close on loopback)\n"
    );
    let _ = writeln!(
        md,
        "| destination | with classifier ns | without ns | added ns | ratio (median, p25-p75) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    if let Some(rows) = r["connect_overhead"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} `{}` | {:.0} | {:.0} | {:.0} | {:.3} ({:.3}-{:.3}) |",
                v["addr"].as_str().unwrap_or(""),
                f(&v["with_ns"]["median"]),
                f(&v["without_ns"]["median"]),
                f(&v["added_ns"]),
                f(&v["ratio"]["median"]),
                f(&v["ratio"]["p25"]),
                f(&v["ratio"]["p75"])
            );
        }
    }
    let _ = writeln!(
        md,
        "\nKernel-measured run time per program invocation (`run_time_ns / run_cnt`):\n"
    );
    let _ = writeln!(md, "| program | runs | ns per run |");
    let _ = writeln!(md, "|---|---:|---:|");
    if let Some(rows) = r["program_run_time"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.0} |",
                v["run_cnt"],
                f(&v["ns_per_run"])
            );
        }
    }

    let _ = writeln!(
        md,
        "\n### Policy scale (random v4/v6 networks, 2 ports each)\n"
    );
    let _ = writeln!(md, "| rules | trie entries v4 + v6 | compile ms | apply in full ms | ns/connect with | ratio | ratio vs 0 rules |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    if let Some(rows) = r["policy_scale"]["rows"].as_array() {
        for v in rows {
            let _ = writeln!(
                md,
                "| {} | {} + {} | {:.1} | {:.1} | {:.0} | {:.3} | {:.3} |",
                v["rules"],
                v["v4_entries"],
                v["v6_entries"],
                f(&v["compile_ms"]),
                f(&v["apply_full_ms"]),
                f(&v["with_ns"]["median"]),
                f(&v["ratio"]["median"]),
                f(&v["ratio_vs_0_rules"])
            );
        }
    }
    let c = &r["policy_scale"]["one_rule_change"];
    let _ = writeln!(md, "\nOne-rule change to the {}-rule policy: apply {:.2} ms median ({} map writes), compile {:.1} ms median.",
        c["rules"], f(&c["apply_ms"]["median"]), c["map_writes"], f(&c["compile_ms"]["median"]));

    let k = &r["kubernetes_scale"];
    let _ = writeln!(md, "\n### Kubernetes documents at scale\n\n{} documents (100 Namespaces, 10,000 Services, 50,000 Pods) -> {} rules, {} + {} trie entries: documents to policy {:.0} ms, compile {:.0} ms, apply in full {:.0} ms, apply again unchanged {:.1} ms; memory held for documents, policy and compiled entries {:.0} MiB.",
        k["documents"], k["rules"], k["v4_entries"], k["v6_entries"], f(&k["documents_to_policy_ms"]), f(&k["compile_ms"]), f(&k["apply_full_ms"]), f(&k["apply_unchanged_ms"]), f(&k["memory_kib"]) / 1024.0);

    let s = &r["stats_at_scale"];
    let _ = writeln!(md, "\n### Stats at scale\n\n`classifier stats --json` with {} verdict entries: {:.0} ms median (p25-p75 {:.0}-{:.0}).",
        s["entries"], f(&s["stats_json_ms"]["median"]), f(&s["stats_json_ms"]["p25"]), f(&s["stats_json_ms"]["p75"]));

    let _ = writeln!(
        md,
        "\n### Agent footprint\n\n| policy | agent RSS MiB | map memory MiB |\n|---|---:|---:|"
    );
    if let Some(rows) = r["footprint"].as_object() {
        for (name, v) in rows {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} |",
                f(&v["agent_rss_kib"]) / 1024.0,
                f(&v["map_memory_bytes"]) / 1048576.0
            );
        }
    }
    let _ = writeln!(
        md,
        "\n### The stall it removes\n\n{}",
        stall_markdown(&r["stall"])
    );
    md
}

fn stall_markdown(v: &Value) -> String {
    match v["rows"].as_array() {
        None => format!("{}", v["status"].as_str().unwrap_or("not measured")),
        Some(rows) => {
            let mut md = String::from(
                "| path | time to server greeting ms (median, p25-p75) | runs |\n|---|---:|---:|\n",
            );
            for row in rows {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} ({:.2}-{:.2}) | {} |",
                    row["path"].as_str().unwrap_or(""),
                    f(&row["ms"]["median"]),
                    f(&row["ms"]["p25"]),
                    f(&row["ms"]["p75"]),
                    row["runs"]
                );
            }
            let _ = writeln!(
                md,
                "\nThe classified path adds {:.2} ms (median) over a direct connection.",
                f(&v["with_minus_direct_ms"])
            );
            md
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

//! Fail-open, no-loss and isolation guarantees (see docs/src/guarantees.md).

use std::{
    fs,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    process::{Command, Stdio},
};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use classifier_common::{maps, programs, PinMeta};
use serde_json::Value;
use tests::{classifier_bin, privileged, Sandbox};

const NOBODY: u32 = 65534;

#[test]
fn a_full_share_of_the_verdict_table_never_fails_a_connect_nor_evicts() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("full-table")?;
    // 16 entries: each network namespace may hold 16 / 8 = 2.
    sb.start_agent(&["--verdict-table-size", "16"])?;

    const CONNECTIONS: usize = 64;
    let server = sb.serve_held("127.0.0.1:3306", CONNECTIONS)?;
    let client = sb
        .probe(
            &["connect-held", "127.0.0.1:3306", &CONNECTIONS.to_string()],
            None,
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let seen = server.results()?;
    let out = client.wait_with_output()?;
    let lines = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("ok")).count(),
        CONNECTIONS,
        "every connect succeeded:\n{lines}"
    );

    let verdicts: Vec<&str> = seen
        .iter()
        .map(|v| v["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts[..2],
        ["opaque", "opaque"],
        "the first connections keep their verdicts (nothing evicts them): {verdicts:?}"
    );
    assert!(
        verdicts[2..].iter().all(|v| *v == "unknown"),
        "beyond the namespace's share: no verdict, detection as usual: {verdicts:?}"
    );

    let stats = sb.stats()?;
    assert_eq!(stats["verdict_table"]["capacity"], 16, "{stats}");
    assert_eq!(stats["counters"]["published"], 2, "{stats}");
    assert_eq!(
        stats["counters"]["publish_netns_full"],
        (CONNECTIONS - 2) as u64,
        "{stats}"
    );
    assert_eq!(stats["verdict_table"]["lost"], 0, "{stats}");
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn namespaces_that_come_and_go_leave_no_count_behind_and_a_new_one_keeps_its_share() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("netns-churn")?;
    // 16 entries: each network namespace may hold 16 / 8 = 2.
    sb.start_agent(&["--verdict-table-size", "16"])?;
    let baseline = pinned_entries(&sb, maps::NETNS_VERDICTS)?.len();

    // Short-lived pods: each namespace publishes one verdict and goes away.
    const NAMESPACES: u64 = 300;
    tests::run(&mut sb.probe(
        &[
            "netns-come-and-go",
            "127.0.0.1:3306",
            &NAMESPACES.to_string(),
        ],
        None,
    ))?;
    let stats = sb.stats()?;
    assert_eq!(stats["counters"]["published"], NAMESPACES, "{stats}");
    assert_eq!(stats["counters"]["unpublished"], NAMESPACES, "{stats}");
    // The count of a namespace that holds no verdict any more is gone with
    // it: the table is back where it was, so it never fills with the
    // namespaces a node has ever seen.
    let counts = pinned_entries(&sb, maps::NETNS_VERDICTS)?;
    assert_eq!(counts.len(), baseline, "left behind: {counts:?}");

    // A namespace that comes after them is still held to its share.
    const CONNECTIONS: usize = 8;
    let server = sb.serve_held("127.0.0.1:3306", CONNECTIONS)?;
    let client = sb
        .probe(
            &["connect-held", "127.0.0.1:3306", &CONNECTIONS.to_string()],
            None,
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let seen = server.results()?;
    client.wait_with_output()?;
    let verdicts: Vec<&str> = seen
        .iter()
        .map(|v| v["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["opaque", "opaque"]
            .into_iter()
            .chain(["unknown"; CONNECTIONS - 2])
            .collect::<Vec<_>>(),
        "two verdicts (its share), then detection as usual"
    );
    let stats = sb.stats()?;
    assert_eq!(
        stats["counters"]["publish_netns_full"],
        (CONNECTIONS - 2) as u64,
        "{stats}"
    );
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn new_ports_are_still_counted_after_more_ports_than_the_table_holds() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("port-counts")?;
    sb.start_agent(&["--watch-interval", "0.2"])?;
    sb.wait_for_generation(1)?;
    // One connect to each of more ports than the table holds (closed
    // ports: refused at once).
    let capacity = maps::PORT_COUNTS_CAPACITY as usize;
    tests::run(&mut sb.probe(
        &[
            "connect-ports",
            "127.0.0.1",
            "20000",
            &(capacity + 200).to_string(),
        ],
        None,
    ))?;
    // The agent ages the table (past three quarters full, down to half):
    // it has room again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while pinned_entries(&sb, maps::PORT_COUNTS)?.len() > capacity * 3 / 4 {
        assert!(std::time::Instant::now() < deadline, "never aged");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A port first connected to now is counted, and leads the top ports.
    for _ in 0..3 {
        tests::run(&mut sb.probe(&["connect-ports", "127.0.0.1", "40000", "1"], None))?;
    }
    let stats = sb.stats()?;
    assert_eq!(
        stats["top_ports"][0]["port"], 40000,
        "{}",
        stats["top_ports"]
    );
    assert_eq!(
        stats["top_ports"][0]["connects"], 3,
        "{}",
        stats["top_ports"]
    );
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn a_namespace_flooding_half_open_connects_does_not_evict_anothers_verdicts() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("flood")?;
    // 64 entries, 8 per network namespace.
    sb.start_agent(&["--verdict-table-size", "64"])?;
    // The flooding tenant: another network namespace (same classified
    // cgroup) with a route to a network where nobody answers, so its
    // connects stay half open (SYN_SENT) with their verdicts published.
    let flood_ns = Sandbox::new("flood-ns")?;
    flood_ns.ip(&["link", "add", "fl0", "type", "veth", "peer", "name", "fl1"])?;
    flood_ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "fl0"])?;
    flood_ns.ip(&["link", "set", "fl0", "up"])?;
    flood_ns.ip(&["link", "set", "fl1", "up"])?;

    // This tenant's connections first, held open, not yet queried.
    const MINE: usize = 4;
    let server = sb.serve_held("127.0.0.1:3306", MINE + 1)?;
    let mut mine = sb
        .probe(&["connect-held", "127.0.0.1:3306", &MINE.to_string()], None)
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Then the flood: more half-open connects than the whole table.
    let mut flood = sb
        .probe_in_netns(
            &["connect-pending", "198.51.100.7:3306", "200"],
            &flood_ns.netns,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.as_mut().unwrap()),
        &mut ready,
    )?;
    assert_eq!(ready.trim(), "ready 200", "{ready}");

    // Now this tenant's proxy asks: every verdict is still there.
    let lines = sb.connect(&["127.0.0.1:3306"], None)?;
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    let seen = server.results()?;
    let stats = sb.stats()?;
    drop(flood.stdin.take());
    let _ = flood.wait();
    let _ = mine.wait();
    for v in &seen {
        assert_eq!(v["protocol"], "opaque", "kept its verdict: {v} ({stats})");
    }
    assert_eq!(
        stats["counters"]["publish_netns_full"],
        200 - 8,
        "the flood got its share (8) and no more: {stats}"
    );
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn pins_of_another_layout_are_refused_and_left_attached() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("layout")?;
    sb.start_agent(&[])?;
    sb.kill_agent();

    // Simulate pins written by a build with another map layout.
    let mut meta: Array<MapData, PinMeta> = Array::try_from(Map::Array(MapData::from_pin(
        sb.pins.join("maps").join(maps::META),
    )?))?;
    meta.set(
        0,
        PinMeta {
            layout_version: 99,
            _pad: 0,
            program_build: 0,
        },
        0,
    )?;

    let err = sb
        .start_agent(&[])
        .expect_err("must refuse incompatible pins");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("layout v99") && msg.contains("--uninstall"),
        "clear message: {msg}"
    );
    // Refusing must not leave the node unclassified.
    for program in programs::ALL {
        assert!(
            sb.pins.join("links").join(program).exists(),
            "{program} still pinned"
        );
    }
    assert_eq!(
        sb.verdict("127.0.0.1:3306")?["protocol"],
        "opaque",
        "old programs still classify"
    );
    Ok(())
}

#[test]
fn pins_are_root_only() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("perms")?;
    sb.start_agent(&[])?;

    for dir in [sb.pins.clone(), sb.pins.join("maps"), sb.pins.join("links")] {
        assert_eq!(
            fs::metadata(&dir)?.permissions().mode() & 0o777,
            0o700,
            "{}",
            dir.display()
        );
    }
    for entry in fs::read_dir(sb.pins.join("maps"))? {
        let entry = entry?;
        assert_eq!(
            entry.metadata()?.permissions().mode() & 0o077,
            0,
            "{} readable by others",
            entry.path().display()
        );
    }

    // An unprivileged user can neither read the stats nor open a map.
    let out = Command::new(classifier_bin())
        .args(["stats", "--json", "--pin-dir"])
        .arg(&sb.pins)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs root"), "one clear line: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let map = sb.pins.join("maps").join(maps::POLICY_CONFIG);
    let opened = Command::new("dd")
        .arg(format!("if={}", map.display()))
        .arg("of=/dev/null")
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(Stdio::null())
        .status()?;
    assert!(!opened.success(), "nobody opened {}", map.display());
    Ok(())
}

#[test]
fn a_socket_only_learns_its_own_connections_verdict() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("isolation")?;
    sb.start_agent(&[])?;
    // A second namespace where another process holds the very same
    // client address and port as a classified connection in the first.
    let other = Sandbox::new("isolation-other")?;

    let first = sb.serve("127.0.0.1:3306", 1, None)?;
    let classified = sb
        .probe(&["connect-from", "127.0.0.1:40000", "127.0.0.1:3306"], None)
        .stdout(Stdio::piped())
        .spawn()?;
    let first_seen = first.results()?.remove(0);
    assert_eq!(first_seen["protocol"], "opaque", "{first_seen}");
    classified.wait_with_output()?;

    // Keep a classified connection from 127.0.0.1:40000 open in the first
    // namespace while the second asks about its own identical peer.
    let holder = sb.serve_held("127.0.0.1:3306", 1)?;
    let held = sb
        .probe(&["connect-from", "127.0.0.1:40000", "127.0.0.1:3306"], None)
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(200));

    let prying = Sandbox::spawn_server(
        sb.probe_in_netns(&["serve", "127.0.0.1:3306", "1"], &other.netns),
        1,
    )?;
    let unclassified = other
        .probe_unclassified(&["connect-from", "127.0.0.1:40000", "127.0.0.1:3306"])
        .stdout(Stdio::piped())
        .spawn()?;
    let pried = prying.results()?.remove(0);
    assert_eq!(pried["peer"], "127.0.0.1:40000");
    assert_eq!(
        pried["protocol"], "unknown",
        "must not see the other namespace's verdict: {pried}"
    );
    unclassified.wait_with_output()?;

    assert_eq!(
        holder.results()?.remove(0)["protocol"],
        "opaque",
        "the real owner still sees it"
    );
    held.wait_with_output()?;
    Ok(())
}

#[test]
fn cli_errors_are_one_clear_line() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let sb = Sandbox::new("cli")?;
    // No agent has ever run here.
    let out = Command::new(classifier_bin())
        .args(["stats", "--pin-dir"])
        .arg(&sb.pins)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no classifier is installed") && stderr.contains("classifier agent"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let bad = sb.write_file("bad.yaml", "kind: ClassifierPolicy\napiVersion: classifier.dev/v1alpha1\nspec:\n  rules: [{networks: [\"10.0.0.0/33\"], ports: \"80\", protocol: opaque}]\n");
    let out = Command::new(classifier_bin())
        .args(["explain", "10.0.0.1:80", "--policy"])
        .arg(&bad)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("10.0.0.0/33") && stderr.contains("line 4"),
        "{stderr}"
    );
    Ok(())
}

/// Runs `probe load` in the sandbox until `work` returns, then returns the
/// probe's summary.
fn under_load(
    sb: &mut Sandbox,
    ports: &str,
    min_connects: u64,
    work: impl FnOnce(&mut Sandbox) -> Result<()>,
) -> Result<serde_json::Value> {
    use std::io::BufRead as _;
    let stop = sb.dir.join("stop-load");
    let mut child = sb
        .probe(
            &[
                "load",
                ports,
                "4",
                &min_connects.to_string(),
                stop.to_str().unwrap(),
            ],
            None,
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().transpose()?.as_deref(), Some("ready"));
    let result = work(sb);
    fs::write(&stop, "")?;
    let summary = lines.next().transpose()?.unwrap_or_default();
    child.wait()?;
    result?;
    let summary: serde_json::Value = serde_json::from_str(&summary)?;
    let recorded: u64 = summary["verdicts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(summary["failures"], 0, "every connect succeeded: {summary}");
    assert_eq!(
        recorded,
        summary["connects"].as_u64().unwrap(),
        "every connection was queried: {summary}"
    );
    Ok(summary)
}

/// A load on 3306 (a default opaque port) and 8080 (nothing): every 3306
/// connect classified, or lost only to a shared client port.
fn assert_default_port_load(sb: &Sandbox, summary: &Value) -> Result<()> {
    let verdicts = summary["verdicts"].as_object().unwrap();
    for key in verdicts.keys() {
        let allowed = [
            "3306 opaque default_port 0",
            "3306 opaque default_port 1",
            "3306 unknown none -",
            "8080 unknown none -",
        ];
        assert!(
            allowed.contains(&key.as_str()) || key.contains(" ambiguous "),
            "every 3306 connect classified (or safely ambiguous), nothing else: {key} in {summary}"
        );
    }
    let lost = verdicts
        .get("3306 unknown none -")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert_lost_only_to_shared_ports(sb, summary, lost)
}

/// Verdicts may only go missing through shared client ports: each lost
/// one needs a counted ambiguity, and together with the "ambiguous"
/// answers they stay under 1% of connects.
fn assert_lost_only_to_shared_ports(sb: &Sandbox, summary: &Value, lost: u64) -> Result<()> {
    let stats = sb.stats()?;
    let counter = |name: &str| stats["counters"][name].as_u64().unwrap_or(0);
    let ambiguities = counter("publish_ambiguous");
    let why: Vec<String> = [
        "connect4",
        "no_verdict",
        "verdict_opaque",
        "err_config",
        "excluded",
        "published",
        "unpublished",
        "unpublish_missing",
        "publish_netns_full",
        "publish_table_full",
        "publish_dst_mismatch",
        "err_publish_insert",
        "err_inflight",
        "query_unknown",
        "query_not_connected",
    ]
    .iter()
    .map(|c| format!("{c}={}", counter(c)))
    .collect();
    assert!(
        lost <= ambiguities,
        "{lost} verdicts lost but only {ambiguities} shared-port ambiguities ({}): {summary}",
        why.join(" ")
    );
    let verdicts = summary["verdicts"].as_object().unwrap();
    let ambiguous: u64 = verdicts
        .iter()
        .filter(|(k, _)| k.contains(" ambiguous "))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    let unanswered = lost + ambiguous;
    let connects = summary["connects"].as_u64().unwrap();
    assert!(
        unanswered * 100 < connects,
        "more than 1% without a verdict: {unanswered} of {connects}"
    );
    Ok(())
}

/// Policy A: 4222 opaque (rule 1). Policy B: a filler rule 1, 4222 http1
/// (rule 2), 5222 opaque (rule 3). Rule ids tell which policy a verdict
/// came from; generation parity must agree.
const POLICY_A: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n    - {networks: [\"127.0.0.0/8\"], ports: \"4222\", protocol: opaque}\n";
const POLICY_B: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n    - {networks: [\"192.0.2.0/24\"], ports: \"4222\", protocol: opaque}\n    - {networks: [\"127.0.0.0/8\"], ports: \"4222\", protocol: http1}\n    - {networks: [\"127.0.0.0/8\"], ports: \"5222\", protocol: opaque}\n";

#[test]
fn policy_reloads_under_load_never_fail_a_connect_or_mix_policies() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("reload-load")?;
    let policy = sb.write_file("policy.yaml", POLICY_A);
    sb.start_agent(&[
        "--policy",
        policy.to_str().unwrap(),
        "--watch-interval",
        "0.02",
    ])?;
    let first = sb.generation();
    assert_eq!(first % 2, 1, "policy A has odd generations");

    const RELOADS: u64 = 200;
    let summary = under_load(&mut sb, "3306,4222,5222", 20_000, |sb| {
        for i in 1..=RELOADS {
            sb.write_file("policy.yaml", if i % 2 == 1 { POLICY_B } else { POLICY_A });
            sb.wait_for_generation(first + i)?;
        }
        Ok(())
    })?;
    eprintln!("{summary}");
    assert_eq!(sb.generation(), first + RELOADS);

    // Allowed (port protocol source parity) combinations; anything else is
    // a verdict from neither policy.
    let allowed = [
        "3306 opaque default_port 1",
        "3306 opaque default_port 0",
        "4222 opaque rule:1 1",
        "4222 http1 rule:2 0",
        "5222 unknown none -",
        "5222 opaque rule:3 0",
        // Linux lets two live connections share a local port when their
        // destinations differ; the classifier then answers "ambiguous"
        // (no verdict) instead of guessing.
        "3306 ambiguous none -",
        "4222 ambiguous none -",
        "5222 ambiguous none -",
    ];
    let verdicts = summary["verdicts"].as_object().unwrap();
    let count = |key: &str| verdicts.get(key).and_then(Value::as_u64).unwrap_or(0);
    // A verdict lost to a shared client port shows as plain "unknown" for a
    // port that is classified in both policies; each needs an ambiguity.
    let lost = count("3306 unknown none -") + count("4222 unknown none -");
    for key in verdicts.keys() {
        // "ambiguous": no verdict given (shared port, or a verdict for
        // another destination caught by the cross-check): safe, counted below.
        assert!(
            allowed.contains(&key.as_str())
                || key.ends_with("unknown none -")
                || key.contains(" ambiguous "),
            "verdict from neither policy: {key} in {summary}"
        );
    }
    assert_lost_only_to_shared_ports(&sb, &summary, lost)?;
    assert_verdicts_drain(&sb)?;
    assert!(summary["connects"].as_u64().unwrap() >= 20_000);
    // Both policies were really seen under load.
    assert!(
        verdicts.contains_key("4222 opaque rule:1 1")
            && verdicts.contains_key("4222 http1 rule:2 0"),
        "{summary}"
    );
    Ok(())
}

#[test]
fn agent_killed_under_load_loses_no_connect_and_no_verdict() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("kill-load")?;
    sb.start_agent(&[])?;
    let before = sb.stats()?["connects_total"].as_u64().unwrap();
    let link = sb.pins.join("links").join(programs::CONNECT4);
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&link)?);

    let summary = under_load(&mut sb, "3306,8080", 5_000, |sb| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        sb.kill_agent();
        std::thread::sleep(std::time::Duration::from_millis(300));
        sb.start_agent(&[])?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    })?;
    eprintln!("{summary}");
    assert_default_port_load(&sb, &summary)?;
    assert!(sb.agent_log().contains("adopted"), "{}", sb.agent_log());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&link)?),
        inode,
        "never detached"
    );
    let after = sb.stats()?["connects_total"].as_u64().unwrap();
    assert_eq!(
        after - before,
        summary["connects"].as_u64().unwrap(),
        "counters kept counting across the restart"
    );
    Ok(())
}

fn capability_line(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn agent_keeps_only_cap_bpf_after_attaching_and_still_applies_policy() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("caps")?;
    let policy = sb.write_file("policy.yaml", POLICY_A);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let pid = sb.agent_pid().unwrap();
    const CAP_BPF: u64 = 1 << 39;
    assert_eq!(
        capability_line(pid, "CapEff:"),
        CAP_BPF,
        "effective set is CAP_BPF only"
    );
    assert_eq!(
        capability_line(pid, "CapPrm:"),
        CAP_BPF,
        "permitted set is CAP_BPF only"
    );
    assert_eq!(
        capability_line(pid, "CapBnd:"),
        CAP_BPF,
        "bounding set is CAP_BPF only"
    );

    let generation = sb.generation();
    sb.write_file("policy.yaml", POLICY_B);
    sb.wait_for_generation(generation + 1)?;
    assert_eq!(
        sb.verdict("127.0.0.1:5222")?["protocol"],
        "opaque",
        "reload works without the dropped capabilities"
    );
    Ok(())
}

#[test]
fn pin_directories_others_own_or_can_write_are_refused() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("pin-owner")?;
    // Someone else's directory where the pins would go (on bpffs, as the
    // real one).
    fs::create_dir(&sb.pins)?;
    std::os::unix::fs::chown(&sb.pins, Some(NOBODY), Some(NOBODY))?;
    fs::set_permissions(&sb.pins, fs::Permissions::from_mode(0o700))?;
    let err = sb.start_agent(&[]).expect_err("pin dir owned by nobody");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("refusing pin directory") && msg.contains("owned by uid 65534"),
        "{msg}"
    );

    // Root's, but writable by others.
    std::os::unix::fs::chown(&sb.pins, Some(0), Some(0))?;
    fs::set_permissions(&sb.pins, fs::Permissions::from_mode(0o777))?;
    let err = sb.start_agent(&[]).expect_err("world-writable pin dir");
    assert!(
        format!("{err:#}").contains("writable by group or others (mode 777)"),
        "{err:#}"
    );
    // Nothing was installed, nor the mode "repaired".
    assert!(!sb.pins.join("maps").exists());
    assert_eq!(fs::metadata(&sb.pins)?.permissions().mode() & 0o777, 0o777);

    // Root-only: accepted.
    fs::set_permissions(&sb.pins, fs::Permissions::from_mode(0o700))?;
    sb.start_agent(&[])?;
    assert!(sb.pins.join("maps").is_dir());
    Ok(())
}

#[test]
fn policy_files_others_can_change_are_refused_unless_allowed() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("untrusted")?;
    let policy = sb.write_file("policy.yaml", POLICY_A);
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o666))?;
    let err = sb
        .start_agent(&["--policy", policy.to_str().unwrap()])
        .expect_err("world-writable policy");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("non-root users can change it") && msg.contains("--allow-untrusted-policy"),
        "{msg}"
    );

    fs::set_permissions(&policy, fs::Permissions::from_mode(0o644))?;
    std::os::unix::fs::chown(&policy, Some(NOBODY), Some(NOBODY))?;
    let err = sb
        .start_agent(&["--policy", policy.to_str().unwrap()])
        .expect_err("policy owned by another user");
    assert!(format!("{err:#}").contains("owned by uid 65534"), "{err:#}");

    sb.start_agent(&[
        "--policy",
        policy.to_str().unwrap(),
        "--allow-untrusted-policy",
    ])?;
    assert_eq!(sb.verdict("127.0.0.1:4222")?["source"], "rule:1");
    Ok(())
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("two-agents")?;
    sb.start_agent(&[])?;
    let out = Command::new(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&sb.cgroup)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another classifier agent is already running"),
        "{stderr}"
    );
    // The first one is unharmed.
    assert_eq!(sb.verdict("127.0.0.1:3306")?["protocol"], "opaque");
    Ok(())
}

#[test]
fn a_second_agent_with_other_pins_on_the_same_cgroup_is_refused() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("two-pin-dirs")?;
    sb.start_agent(&[])?;
    let other_pins = sb.pins.with_file_name(format!("{}-second", sb.name));
    let second = |other_pins: &std::path::Path| -> Result<(std::process::Output, Vec<String>)> {
        let mut second = Command::new(classifier_bin())
            .args(["agent", "--cgroup"])
            .arg(&sb.cgroup)
            .arg("--pin-dir")
            .arg(other_pins)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // An agent that started would run until stopped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while second.try_wait()?.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = second.kill();
        let out = second.wait_with_output()?;
        // What the refused start left in its pin directory.
        let left: Vec<String> = match fs::read_dir(other_pins) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec!["(no directory)".into()],
        };
        // Whatever happened, leave no pins behind.
        let _ = Command::new(classifier_bin())
            .args(["agent", "--uninstall", "--pin-dir"])
            .arg(other_pins)
            .output();
        let _ = std::fs::remove_dir_all(other_pins);
        Ok((out, left))
    };
    // A pin directory that exists already (a DaemonSet's hostPath): the
    // refused start leaves it as it found it, empty.
    fs::DirBuilder::new().mode(0o700).create(&other_pins)?;
    let (out, left) = second(&other_pins)?;
    assert!(!out.status.success(), "the second agent started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another classifier is already attached to cgroup"),
        "{stderr}"
    );
    assert!(left.is_empty(), "left in its pin directory: {left:?}");
    // One it had to make itself: no directory left at all.
    let (out, left) = second(&other_pins)?;
    assert!(!out.status.success(), "the second agent started");
    assert_eq!(left, ["(no directory)"], "left behind");
    // Nothing of the second agent was attached, and the first one is
    // unharmed.
    let attached = tests::run(
        Command::new("bpftool")
            .args(["--json", "cgroup", "show"])
            .arg(&sb.cgroup),
    )?;
    let attached: Value = serde_json::from_slice(&attached.stdout)?;
    assert_eq!(
        attached.as_array().map(Vec::len),
        Some(classifier_common::programs::ALL.len()),
        "{attached}"
    );
    assert_eq!(sb.verdict("127.0.0.1:3306")?["protocol"], "opaque");
    Ok(())
}

#[test]
fn a_first_start_that_failed_leaves_no_pins_and_does_not_block_the_next_start() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("half-install")?;
    let missing = sb.cgroup.join("no-such-cgroup");
    let out = Command::new(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&missing)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-cgroup"));
    assert!(
        !sb.pins.exists(),
        "a first start that failed left its pin directory"
    );
    // The next start with a good cgroup must just work, without --uninstall.
    sb.start_agent(&[])?;
    assert_eq!(sb.verdict("127.0.0.1:3306")?["protocol"], "opaque");
    Ok(())
}

#[test]
fn adopting_checks_the_cgroup_the_programs_are_on() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("adopt-cgroup")?;
    sb.start_agent(&[])?;
    sb.kill_agent();

    // Another cgroup than the one the programs are attached to: refused,
    // and the attachment is left where it is.
    let other = sb.cgroup.join("other");
    fs::create_dir(&other)?;
    let out = Command::new(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&other)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attached to another cgroup") && stderr.contains("--uninstall"),
        "{stderr}"
    );
    assert_eq!(
        sb.verdict("127.0.0.1:3306")?["protocol"],
        "opaque",
        "still classifying where it was"
    );

    // The same cgroup: adopted.
    sb.start_agent(&[])?;
    assert!(sb.agent_log().contains("adopted"), "{}", sb.agent_log());
    Ok(())
}

#[test]
fn uninstall_while_an_agent_runs_is_refused_and_changes_nothing() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("uninstall-running")?;
    sb.start_agent(&[])?;

    let out = Command::new(classifier_bin())
        .args(["agent", "--uninstall", "--pin-dir"])
        .arg(&sb.pins)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("already running"),
        "says an agent holds the pins: {stderr}"
    );
    for program in programs::ALL {
        assert!(
            sb.pins.join("links").join(program).exists(),
            "{program} still pinned"
        );
    }
    assert_eq!(sb.verdict("127.0.0.1:3306")?["protocol"], "opaque");

    // Once the agent has stopped, uninstall goes through.
    sb.uninstall_agent()?;
    assert!(!sb.pins.join("links").exists(), "pins removed");
    Ok(())
}

/// The entries of one of the sandbox's pinned maps, from bpftool.
fn pinned_entries(sb: &Sandbox, map: &str) -> Result<Vec<Value>> {
    let path = sb.pins.join("maps").join(map);
    Ok(bpftool(&["map", "dump", "pinned"], &path)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// `bpftool --json ARGS PATH`, parsed.
fn bpftool(args: &[&str], path: &std::path::Path) -> Result<Value> {
    let out = tests::run(Command::new("bpftool").arg("--json").args(args).arg(path))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Once every connection of a load has closed, its verdict is withdrawn
/// and each network namespace's count of verdicts is back to zero: a count
/// that leaked would, connection after connection, use up the namespace's
/// share of the table and leave its later connections without verdicts.
fn assert_verdicts_drain(sb: &Sandbox) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let verdicts = pinned_entries(sb, maps::VERDICTS)?;
        let counts = pinned_entries(sb, maps::NETNS_VERDICTS)?;
        if verdicts.is_empty()
            && counts.iter().all(|e| {
                e["value"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b.as_str() == Some("0x00")))
            })
        {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the load: {} verdicts left, namespace counts {counts:?}",
            verdicts.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The id of the program a pinned link runs, from bpftool.
fn link_prog_id(link: &std::path::Path) -> Result<u64> {
    Ok(bpftool(&["link", "show", "pinned"], link)?["prog_id"]
        .as_u64()
        .unwrap_or(0))
}

#[test]
fn an_agent_of_another_build_replaces_the_programs_in_place_under_load() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("upgrade-load")?;
    sb.start_agent(&[])?;
    sb.kill_agent();
    // Pins as an agent of another build would have left them: same map
    // layout, another program build stamp.
    let mut meta: Array<MapData, PinMeta> = Array::try_from(Map::Array(MapData::from_pin(
        sb.pins.join("maps").join(maps::META),
    )?))?;
    let stamped = meta.get(&0, 0)?;
    meta.set(
        0,
        PinMeta {
            program_build: stamped.program_build ^ 0x5a5a,
            ..stamped
        },
        0,
    )?;
    let links: Vec<_> = programs::ALL
        .iter()
        .map(|p| sb.pins.join("links").join(p))
        .collect();
    let inodes: Vec<u64> = links
        .iter()
        .map(|l| std::os::unix::fs::MetadataExt::ino(&fs::metadata(l).unwrap()))
        .collect();
    let prog_ids: Vec<u64> = links
        .iter()
        .map(|l| link_prog_id(l))
        .collect::<Result<_>>()?;

    let summary = under_load(&mut sb, "3306,8080", 5_000, |sb| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        sb.start_agent(&[])?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    })?;
    eprintln!("{summary}");
    assert!(
        sb.agent_log().contains("replaced its programs in place"),
        "{}",
        sb.agent_log()
    );
    for ((link, inode), old_id) in links.iter().zip(&inodes).zip(&prog_ids) {
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(link)?),
            *inode,
            "same link, never detached: {}",
            link.display()
        );
        assert_ne!(
            link_prog_id(link)?,
            *old_id,
            "the link runs the new program: {}",
            link.display()
        );
    }
    assert_default_port_load(&sb, &summary)?;
    // Stamped with this build now: the next start adopts as is.
    assert_eq!(
        Array::<MapData, PinMeta>::try_from(Map::Array(MapData::from_pin(
            sb.pins.join("maps").join(maps::META),
        )?))?
        .get(&0, 0)?
        .program_build,
        stamped.program_build
    );
    assert_eq!(sb.stats()?["errors_total"], 0);
    Ok(())
}

/// An upgrade swaps the programs before the new agent writes its first
/// settings: for a moment this build's programs read settings an agent of
/// an older build (same layout) wrote, where the one-UID and
/// nothing-learned fields were padding, always zero. They must decide as
/// before: the excluded UID looked up in the hash, learned destinations
/// looked up. Here the agent is gone (its programs stay attached) and the
/// settings are rewritten as such an agent left them.
#[test]
fn programs_of_this_build_decide_as_before_under_an_older_agents_settings() -> Result<()> {
    use classifier_common::{
        LearnConfig, PolicyConfig, CONFIG_FLAG_ONE_EXCLUDED_UID, LEARN_HINT_NOTHING_LEARNED,
    };

    use crate::learning::{talk, talk_server, wait_learned};

    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("older-settings")?;
    sb.start_agent(&["--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;
    // A learned destination, as any agent's kernel side leaves it.
    let server = talk_server(&sb, "127.0.0.1:2228", 1, true)?;
    talk(&sb, "127.0.0.1:2228", true)?;
    server.results()?;
    wait_learned(&sb, |l| !l.is_empty())?;
    sb.kill_agent();

    let open = |name: &str| MapData::from_pin(sb.pins.join("maps").join(name));
    let active: Array<MapData, u32> = Array::try_from(Map::Array(open(maps::ACTIVE_SLOT)?))?;
    let slot = active.get(&0, 0)?;
    let mut configs: Array<MapData, PolicyConfig> =
        Array::try_from(Map::Array(open(maps::POLICY_CONFIG)?))?;
    let mine = configs.get(&slot, 0)?;
    assert_ne!(
        mine.flags & CONFIG_FLAG_ONE_EXCLUDED_UID,
        0,
        "the default policy excludes one UID: {mine:?}"
    );
    configs.set(
        slot,
        PolicyConfig {
            flags: mine.flags & !CONFIG_FLAG_ONE_EXCLUDED_UID,
            excluded_uid: 0,
            ..mine
        },
        0,
    )?;
    let mut learn: Array<MapData, LearnConfig> =
        Array::try_from(Map::Array(open(maps::LEARN_CONFIG)?))?;
    let settings = learn.get(&0, 0)?;
    assert_eq!(
        settings.hints & LEARN_HINT_NOTHING_LEARNED,
        0,
        "{settings:?}"
    );
    learn.set(
        0,
        LearnConfig {
            hints: 0,
            ..settings
        },
        0,
    )?;

    let as_proxy = sb.verdict_via("127.0.0.1:3306", "127.0.0.1:3306", Some(tests::PROXY_UID))?;
    assert_eq!(
        as_proxy["protocol"], "unknown",
        "excluded by the hash: {as_proxy}"
    );
    let as_app = sb.verdict_via("127.0.0.1:3306", "127.0.0.1:3306", Some(1000))?;
    assert_eq!(as_app["protocol"], "opaque", "{as_app}");
    let server = talk_server(&sb, "127.0.0.1:2228", 1, true)?;
    talk(&sb, "127.0.0.1:2228", true)?;
    let learned = &server.results()?[0];
    assert_eq!(learned["source"], "learned", "{learned}");
    Ok(())
}

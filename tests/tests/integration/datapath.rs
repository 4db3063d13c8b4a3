//! The connect-time classifier on a real kernel: real cgroups, bpffs,
//! network namespaces and iptables. Each test runs its own agent on its own
//! cgroup (see `tests::Sandbox`).

use std::{fs, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};
use serde_json::Value;
use tests::{privileged, Sandbox, PROXY_UID};

fn protocol(v: &Value) -> &str {
    v["protocol"]
        .as_str()
        .unwrap_or_else(|| panic!("no protocol in {v}"))
}

/// A policy that adds one rule (4222 opaque toward 127.0.0.0/8) to the defaults.
const NATS_RULE_POLICY: &str = r#"
apiVersion: classifier.dev/v1alpha1
kind: ClassifierPolicy
spec:
  rules:
    - networks: ["127.0.0.0/8", "::1/128"]
      ports: "4222"
      protocol: opaque
"#;

#[test]
fn accepted_sockets_report_opaque_and_unknown_v4_and_v6() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("verdicts")?;
    sb.start_agent(&[])?;

    let opaque_v4 = sb.verdict("127.0.0.1:3306")?;
    assert_eq!(protocol(&opaque_v4), "opaque", "{opaque_v4}");
    assert_eq!(opaque_v4["source"], "default_port");
    assert_eq!(opaque_v4["original_dst"], "127.0.0.1:3306");

    let unknown_v4 = sb.verdict("127.0.0.1:8080")?;
    assert_eq!(protocol(&unknown_v4), "unknown", "{unknown_v4}");
    assert_eq!(
        unknown_v4["classifier"], true,
        "the classifier answers even without a verdict"
    );

    let opaque_v6 = sb.verdict("[::1]:5432")?;
    assert_eq!(protocol(&opaque_v6), "opaque", "{opaque_v6}");
    assert_eq!(opaque_v6["original_dst"], "[::1]:5432");

    let unknown_v6 = sb.verdict("[::1]:8080")?;
    assert_eq!(protocol(&unknown_v6), "unknown", "{unknown_v6}");

    // A dual-stack listener, a v4 client: the v4-mapped peer still matches.
    let server = sb.serve("[::]:6379", 1, None)?;
    sb.connect(&["127.0.0.1:6379"], None)?;
    let mapped = server.results()?.remove(0);
    assert_eq!(protocol(&mapped), "opaque", "{mapped}");
    assert_eq!(mapped["original_dst"], "127.0.0.1:6379");
    Ok(())
}

#[test]
fn proxy_behind_linkerd_style_redirect_sees_the_original_destinations_verdict() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("redirect")?;
    // A route that is not via lo, so the REDIRECT applies (linkerd-init
    // returns for -o lo).
    // (A veth pair: this kernel has no dummy interfaces.)
    sb.ip(&[
        "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
    ])?;
    sb.ip(&["addr", "add", "198.51.100.1/24", "dev", "pod0"])?;
    sb.ip(&["link", "set", "pod0", "up"])?;
    sb.ip(&["link", "set", "pod1", "up"])?;
    for rule in [
        "-N PROXY_INIT_OUTPUT",
        "-A OUTPUT -j PROXY_INIT_OUTPUT",
        "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
        "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
    ] {
        let args: Vec<&str> = ["-t", "nat"].into_iter().chain(rule.split(' ')).collect();
        sb.iptables(&args)?;
    }
    sb.start_agent(&[])?;

    // The "proxy" runs as the proxy UID, like linkerd2-proxy.
    let proxy = sb.serve("0.0.0.0:4140", 2, Some(PROXY_UID))?;
    let lines = sb.connect(&["198.51.100.7:3306", "198.51.100.7:8080"], None)?;
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    let seen = proxy.results()?;

    assert_eq!(
        seen[0]["so_original_dst"], "198.51.100.7:3306",
        "went through the REDIRECT: {}",
        seen[0]
    );
    assert_eq!(protocol(&seen[0]), "opaque", "{}", seen[0]);
    assert_eq!(
        seen[0]["original_dst"], seen[0]["so_original_dst"],
        "reply agrees with SO_ORIGINAL_DST"
    );
    assert_eq!(seen[1]["so_original_dst"], "198.51.100.7:8080");
    assert_eq!(protocol(&seen[1]), "unknown", "{}", seen[1]);
    Ok(())
}

#[test]
fn connects_from_excluded_uids_are_not_classified() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("excluded")?;
    sb.start_agent(&[])?;

    let as_proxy = sb.verdict_via("127.0.0.1:3306", "127.0.0.1:3306", Some(PROXY_UID))?;
    assert_eq!(protocol(&as_proxy), "unknown", "{as_proxy}");
    let as_app = sb.verdict_via("127.0.0.1:3306", "127.0.0.1:3306", Some(1000))?;
    assert_eq!(protocol(&as_app), "opaque", "{as_app}");

    let stats = sb.stats()?;
    assert_eq!(stats["excluded_total"], 1, "{stats}");
    assert_eq!(stats["opaque_total"], 1, "{stats}");
    Ok(())
}

/// Connects check the excluded UIDs three ways, by the policy: no UID (no
/// lookup at all), one (compared in place), several (the hash). Each policy
/// change is followed at once, in every direction.
#[test]
fn excluded_uids_follow_the_policy_from_none_to_one_to_several_and_back() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("excluded-change")?;
    let policy = |uids: &str| {
        format!("apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  excludeUids: {uids}\n")
    };
    let path = sb.write_file("policy.yaml", &policy("[]"));
    sb.start_agent(&["--policy", path.to_str().unwrap()])?;
    let mut generation = sb.generation();
    let steps: [(&str, &[u32]); 4] = [
        ("[]", &[]),
        ("[1000]", &[1000]),
        ("[1000, 2102]", &[1000, 2102]),
        ("[]", &[]),
    ];
    let mut excluded_total = 0;
    for (i, (uids, excluded)) in steps.into_iter().enumerate() {
        if i > 0 {
            sb.write_file("policy.yaml", &policy(uids));
            generation += 1;
            sb.wait_for_generation(generation)?;
        }
        for uid in [1000, 2102, 3000] {
            let v = sb.verdict_via("127.0.0.1:3306", "127.0.0.1:3306", Some(uid))?;
            let want = if excluded.contains(&uid) {
                excluded_total += 1;
                "unknown"
            } else {
                "opaque"
            };
            assert_eq!(protocol(&v), want, "excludeUids {uids}, uid {uid}: {v}");
        }
        let stats = sb.stats()?;
        assert_eq!(stats["excluded_total"], excluded_total, "{stats}");
        assert_eq!(stats["policy"]["excluded_uids"], excluded.len(), "{stats}");
    }
    Ok(())
}

#[test]
fn policy_file_changes_apply_and_bad_files_keep_the_old_policy() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("reload")?;
    let policy = sb.write_file("policy.yaml", NATS_RULE_POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let g1 = sb.generation();

    let nats = sb.verdict("127.0.0.1:4222")?;
    assert_eq!(protocol(&nats), "opaque", "{nats}");
    assert_eq!(nats["source"], "rule:1");

    // Same rule, now forcing detection: new connections follow it.
    sb.write_file(
        "policy.yaml",
        &NATS_RULE_POLICY.replace("protocol: opaque", "protocol: detect"),
    );
    sb.wait_for_generation(g1 + 1)?;
    let nats = sb.verdict("127.0.0.1:4222")?;
    assert_eq!(protocol(&nats), "unknown", "{nats}");
    assert_eq!(
        nats["source"], "rule:1",
        "a detect rule is still a rule verdict"
    );

    // A bad file: reported, and the previous policy stays.
    sb.write_file(
        "policy.yaml",
        &NATS_RULE_POLICY.replace("\"4222\"", "\"0\""),
    );
    sb.wait_for_log("port 0", 1, std::time::Duration::from_secs(10))
        .context("bad file not reported")?;
    let log = sb.agent_log();
    assert!(
        log.contains("policy.yaml") && log.contains("spec.rules[0].ports"),
        "error names file and field:\n{log}"
    );
    assert!(log.contains("previous policy"), "{log}");
    assert_eq!(sb.generation(), g1 + 1, "generation unchanged");
    let nats = sb.verdict("127.0.0.1:4222")?;
    assert_eq!(
        protocol(&nats),
        "unknown",
        "old policy still in force: {nats}"
    );
    let mysql = sb.verdict("127.0.0.1:3306")?;
    assert_eq!(protocol(&mysql), "opaque", "{mysql}");
    Ok(())
}

#[test]
fn stats_json_counts_exactly_the_connects_made() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("stats")?;
    sb.start_agent(&[])?;

    let opaque = sb.serve("127.0.0.1:3306", 5, None)?;
    let plain = sb.serve("127.0.0.1:8080", 3, None)?;
    let mut targets = vec!["127.0.0.1:3306"; 5];
    targets.extend(["127.0.0.1:8080"; 3]);
    let lines = sb.connect(&targets, None)?;
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    assert!(opaque.results()?.iter().all(|v| protocol(v) == "opaque"));
    assert!(plain.results()?.iter().all(|v| protocol(v) == "unknown"));

    let stats = sb.stats()?;
    assert_eq!(stats["connects_total"], 8, "{stats}");
    assert_eq!(stats["opaque_total"], 5, "{stats}");
    assert_eq!(stats["excluded_total"], 0, "{stats}");
    assert_eq!(stats["proxy_queries_total"], 8, "{stats}");
    assert_eq!(stats["errors_total"], 0, "{stats}");
    assert_eq!(stats["counters"]["query_classified"], 5, "{stats}");
    assert_eq!(stats["counters"]["published"], 5, "{stats}");
    assert_eq!(stats["top_ports"][0]["port"], 3306, "{stats}");
    assert_eq!(stats["top_ports"][0]["connects"], 5, "{stats}");
    // The same counters in Prometheus text (the encoder /metrics uses).
    let prom = tests::run(
        std::process::Command::new(tests::classifier_bin())
            .args(["stats", "--prometheus", "--pin-dir"])
            .arg(&sb.pins),
    )?;
    let prom = String::from_utf8_lossy(&prom.stdout);
    let connects: u64 = prom
        .lines()
        .filter(|l| l.starts_with("classifier_connects_total{family="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(connects, 8, "{prom}");
    assert!(
        prom.lines()
            .any(|l| l == "classifier_verdicts_total{protocol=\"opaque\"} 5"),
        "{prom}"
    );
    // What the agent reported through its pinned status map.
    assert_eq!(stats["agent"]["pid"], sb.agent_pid().unwrap(), "{stats}");
    assert_eq!(stats["agent"]["policy_errors"], 0, "{stats}");
    assert!(
        stats["agent"]["last_apply_age_s"].as_u64().unwrap() < 60,
        "{stats}"
    );
    assert!(stats["agent"]["kubernetes"].is_null(), "{stats}");
    Ok(())
}

#[test]
fn agent_restart_keeps_programs_attached_and_adopts_them() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("restart")?;
    sb.start_agent(&[])?;
    assert_eq!(protocol(&sb.verdict("127.0.0.1:3306")?), "opaque");
    let link = sb
        .pins
        .join("links")
        .join(classifier_common::programs::CONNECT4);
    let link_inode = fs::metadata(&link)?.ino();

    sb.kill_agent();
    // No agent: the pinned programs keep classifying.
    let during_gap = sb.verdict("127.0.0.1:3306")?;
    assert_eq!(
        protocol(&during_gap),
        "opaque",
        "classified with no agent running: {during_gap}"
    );

    sb.start_agent(&[])?;
    assert!(sb.agent_log().contains("adopted"), "{}", sb.agent_log());
    assert_eq!(
        fs::metadata(&link)?.ino(),
        link_inode,
        "same link: never detached"
    );
    assert_eq!(protocol(&sb.verdict("127.0.0.1:3306")?), "opaque");

    let stats = sb.stats()?;
    assert_eq!(
        stats["opaque_total"], 3,
        "counters survive the restart: {stats}"
    );
    Ok(())
}

#[test]
fn mark_mode_marks_opaque_sockets_and_the_accepted_socket_sees_it() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("mark")?;
    sb.sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let policy = sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  mark: {value: 0x40000, mask: 0x40000}\n",
    );
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;

    let opaque = sb.verdict("127.0.0.1:3306")?;
    assert_eq!(protocol(&opaque), "opaque", "{opaque}");
    assert_eq!(opaque["marked"], true, "{opaque}");
    let mark = opaque["so_mark"].as_u64().expect("SO_MARK readable");
    assert_eq!(
        mark & 0x40000,
        0x40000,
        "accepted socket carries the mark: {opaque}"
    );

    let plain = sb.verdict("127.0.0.1:8080")?;
    assert_eq!(plain["marked"], false, "{plain}");
    assert_eq!(
        plain["so_mark"], 0,
        "unclassified connections are not marked: {plain}"
    );
    assert_eq!(sb.stats()?["counters"]["mark_set"], 1);
    Ok(())
}

const MARK_POLICY: &str = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  mark: {value: 0x40000, mask: 0x40000}\n";

/// `probe reconnect ...`: the one JSON line it prints.
fn reconnect(sb: &Sandbox, args: &[&str]) -> Result<Value> {
    let mut argv = vec!["reconnect"];
    argv.extend_from_slice(args);
    let out = tests::run(&mut sb.probe(&argv, None))?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("probe reconnect printed {text:?}"))
}

#[test]
fn a_connect_that_failed_before_its_syn_leaves_no_verdict_and_no_mark() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("reconnect-failed")?;
    sb.sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let policy = sb.write_file("policy.yaml", MARK_POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;

    // 3306 is opaque (and marked), but there is no route to it: connect()
    // fails after the classifier ran and before any SYN. The same socket
    // then connects to a port with no verdict.
    let plain = sb.serve("127.0.0.1:8080", 1, None)?;
    let client = reconnect(
        &sb,
        &["127.0.0.1:41001", "203.0.113.9:3306", "127.0.0.1:8080"],
    )?;
    assert!(
        client["first"].as_str().unwrap().starts_with("err"),
        "{client}"
    );
    assert_eq!(client["second"], "ok", "{client}");
    assert_eq!(
        client["so_mark"], 0,
        "the client socket's mark is taken back: {client}"
    );
    let seen = plain.results()?.remove(0);
    assert_eq!(protocol(&seen), "unknown", "{seen}");
    assert_eq!(
        seen["raw_protocol"], "Detect",
        "nothing published for the second connect, not even a verdict for the first destination: {seen}"
    );
    assert_eq!(seen["marked"], false, "{seen}");
    assert_eq!(
        seen["so_mark"], 0,
        "no stale mark reaches the accepted socket: {seen}"
    );

    let stats = sb.stats()?;
    assert_eq!(stats["counters"]["mark_set"], 1, "{stats}");
    assert_eq!(stats["counters"]["mark_cleared"], 1, "{stats}");
    assert_eq!(stats["counters"]["published"], 0, "{stats}");
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn a_connection_dissolved_with_af_unspec_leaves_no_verdict_and_no_mark() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("reconnect-unspec")?;
    sb.sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let policy = sb.write_file("policy.yaml", MARK_POLICY);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;

    let opaque = sb.serve("127.0.0.1:3306", 1, None)?;
    let plain = sb.serve("127.0.0.1:8080", 1, None)?;
    // The same socket, bound to the same port both times (so a verdict left
    // under that address would be found), connects to an opaque port,
    // dissolves the connection with connect(AF_UNSPEC) and connects to a
    // port with no verdict.
    let client = reconnect(
        &sb,
        &[
            "127.0.0.1:41002",
            "127.0.0.1:3306",
            "127.0.0.1:8080",
            "unspec",
        ],
    )?;
    assert_eq!(client["first"], "ok", "{client}");
    assert_eq!(client["second"], "ok", "{client}");
    assert_eq!(client["so_mark"], 0, "{client}");

    let first = opaque.results()?.remove(0);
    assert_eq!(protocol(&first), "opaque", "{first}");
    assert_eq!(first["marked"], true, "{first}");
    assert_eq!(first["peer"], "127.0.0.1:41002");
    let second = plain.results()?.remove(0);
    assert_eq!(
        second["peer"], "127.0.0.1:41002",
        "same client address: {second}"
    );
    assert_eq!(protocol(&second), "unknown", "{second}");
    assert_eq!(second["raw_protocol"], "Detect", "{second}");
    assert_eq!(second["so_mark"], 0, "{second}");

    let stats = sb.stats()?;
    assert_eq!(stats["counters"]["mark_cleared"], 1, "{stats}");
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn only_connected_tcp_sockets_get_answers() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("udp-query")?;
    sb.start_agent(&[])?;

    // A classified connection from 127.0.0.1:41003, held open.
    let server = sb.serve_held("127.0.0.1:3306", 2)?;
    let mut client = sb
        .probe(&["connect-from", "127.0.0.1:41003", "127.0.0.1:3306"], None)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().unwrap()),
        &mut first,
    )?;
    assert!(first.starts_with("ok"), "{first}");

    // A UDP socket in the same namespace whose peer is that client address
    // asks: it is not a connected TCP socket, it learns nothing.
    let out = tests::run(&mut sb.probe(&["udp-query", "127.0.0.1:41003"], None))?;
    let udp: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(udp["answered"], false, "{udp}");

    // The verdict was there all along for the TCP connection.
    let lines = sb.connect(&["127.0.0.1:3306"], None)?;
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{lines:?}");
    let seen = server.results()?;
    assert_eq!(seen[0]["peer"], "127.0.0.1:41003", "{}", seen[0]);
    assert_eq!(protocol(&seen[0]), "opaque", "{}", seen[0]);
    let _ = client.wait();

    let stats = sb.stats()?;
    assert_eq!(stats["counters"]["query_not_connected"], 1, "{stats}");
    Ok(())
}

/// A policy of `extra + 1` rules: 4222 on loopback with `protocol`, then
/// `extra` single-address rules.
fn many_rules_policy(protocol: &str, extra: usize) -> String {
    let mut text = NATS_RULE_POLICY.replace("protocol: opaque", &format!("protocol: {protocol}"));
    for i in 0..extra {
        text.push_str(&format!(
            "    - networks: [\"10.9.{}.{}/32\"]\n      ports: \"80\"\n      protocol: opaque\n",
            i / 256,
            i % 256
        ));
    }
    text
}

/// The `map_writes` of the agent log's last "policy applied" line.
fn last_map_writes(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.contains("policy applied"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("map_writes="))?
        .parse()
        .ok()
}

/// Restarts the agent (killed, so it cleans nothing up) on its policy file
/// rewritten to `text`, waits for that policy as `generation`, and returns
/// the map writes its apply took, with the agent's log.
fn restart_with(sb: &mut Sandbox, text: &str, generation: u64) -> Result<(Option<u64>, String)> {
    sb.kill_agent();
    let policy = sb.write_file("policy.yaml", text);
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    sb.wait_for_generation(generation)?;
    let log = sb.agent_log();
    Ok((last_map_writes(&log), log))
}

/// A restarted agent does not know what the slot it writes first holds:
/// it reads it back and writes only the difference (the slot holds the
/// policy before the last switch, most often nearly the one in force),
/// rather than clearing it and writing every entry again.
#[test]
fn a_restarted_agent_writes_only_what_the_slot_it_finds_lacks() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("resume-slot")?;
    let policy = sb.write_file("policy.yaml", &many_rules_policy("opaque", 300));
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let g1 = sb.generation();
    // One rule changed: the slots now hold the two policies.
    sb.write_file("policy.yaml", &many_rules_policy("detect", 300));
    sb.wait_for_generation(g1 + 1)?;

    // Restarted with the first policy: the slot it writes into holds it.
    let (writes, log) = restart_with(&mut sb, &many_rules_policy("opaque", 300), g1 + 2)?;
    assert_eq!(writes, Some(0), "{log}");
    let nats = sb.verdict("127.0.0.1:4222")?;
    assert_eq!(protocol(&nats), "opaque", "{nats}");

    // And again with a third policy: the slot it writes into holds the
    // second, one rule (an IPv4 and an IPv6 entry) away.
    let (writes, log) = restart_with(&mut sb, &many_rules_policy("http1", 300), g1 + 3)?;
    assert_eq!(writes, Some(2), "{log}");
    let nats = sb.verdict("127.0.0.1:4222")?;
    assert_eq!(protocol(&nats), "http1", "{nats}");
    Ok(())
}

/// A policy larger than one batch of map writes (4,096 entries) reaches the
/// kernel whole, and a change that drops thousands of its rules deletes
/// exactly those, skipping one already gone: every chunk of the batched
/// writes and deletes lands, and a restart reads the slot back, batch by
/// batch, exactly.
#[test]
fn policies_larger_than_a_write_batch_are_written_and_shrunk_entry_for_entry() -> Result<()> {
    use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
    use classifier_common::{maps as names, rule_key_v4, RuleKeyV4, RuleVerdict};
    use classifier_common::{RULE_KEY_FIXED_BITS, SCOPE_NODE};
    use classifier_user::datapath::{PinDir, PolicyMaps};
    use std::net::Ipv4Addr;
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("batch-write")?;
    let policy = sb.write_file("policy.yaml", &many_rules_policy("opaque", 10_000));
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
    let g1 = sb.generation();
    let pins = PinDir::new(&sb.pins);
    let maps = PolicyMaps::open(&pins)?;
    let addr = |i: usize| Ipv4Addr::new(10, 9, (i / 256) as u8, (i % 256) as u8);
    // The first and last entries of each batch.
    for i in [0, 4095, 4096, 8191, 8192, 9999] {
        let v = maps.lookup_v4(80, addr(i))?;
        assert!(v.is_some(), "rule {i}'s entry ({}) is missing", addr(i));
    }
    let opaque = maps.active_entries()?;
    let opaque_slot = maps.active_slot()?;

    // The same rules as HTTP/1, into the other slot: both hold 10,000.
    sb.write_file("policy.yaml", &many_rules_policy("http1", 10_000));
    sb.wait_for_generation(g1 + 1)?;
    let http1 = maps.active_entries()?;
    // Two entries the next change deletes are already gone from the slot
    // it writes into (the agent believes them there).
    let mut v4: LpmTrie<MapData, RuleKeyV4, RuleVerdict> =
        LpmTrie::try_from(Map::LpmTrie(MapData::from_pin(pins.map(names::RULES_V4))?))?;
    for i in [5000, 9999] {
        let data = rule_key_v4(opaque_slot as u8, SCOPE_NODE, 80, addr(i).octets());
        v4.remove(&Key::new(RULE_KEY_FIXED_BITS + 32, data))?;
    }

    // 6,000 rules fewer: two batches of deletes, two keys not there.
    sb.write_file("policy.yaml", &many_rules_policy("opaque", 4_000));
    sb.wait_for_generation(g1 + 2)?;
    // The generation is published at the switch, the log line after it.
    sb.wait_for_log("policy applied", 3, std::time::Duration::from_secs(15))?;
    let log = sb.agent_log();
    assert_eq!(last_map_writes(&log), Some(6_000), "{log}");
    for i in [0, 3999] {
        assert!(maps.lookup_v4(80, addr(i))?.is_some(), "rule {i} is kept");
    }
    for i in [4000, 4096, 5000, 8191, 9999] {
        let v = maps.lookup_v4(80, addr(i))?;
        assert_eq!(v, None, "rule {i} ({}) is gone", addr(i));
    }
    let after = maps.active_entries()?;
    assert_eq!(after.len(), opaque.len() - 6_000);
    assert!(
        after.iter().all(|e| opaque.contains(e)),
        "only entries were dropped"
    );

    // Restarted with the HTTP/1 policy: the slot it writes into holds it,
    // read back a batch at a time, and not one entry differs.
    let (writes, log) = restart_with(&mut sb, &many_rules_policy("http1", 10_000), g1 + 3)?;
    assert_eq!(writes, Some(0), "{log}");
    assert_eq!(maps.active_entries()?, http1);
    Ok(())
}

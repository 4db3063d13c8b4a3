//! Fail-open, no-loss and isolation guarantees (see README "Guarantees").

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use classifier_common::{maps, programs, PinMeta};
use tests::{classifier_bin, privileged, Sandbox};

const NOBODY: u32 = 65534;

#[test]
fn full_verdict_table_evicts_the_oldest_and_never_fails_a_connect() -> Result<()> {
    if !privileged("full_verdict_table_evicts_the_oldest_and_never_fails_a_connect") {
        return Ok(());
    }
    let mut sb = Sandbox::new("full-table")?;
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
        verdicts.last(),
        Some(&"opaque"),
        "the newest connection keeps its verdict: {verdicts:?}"
    );
    assert_eq!(
        verdicts.first(),
        Some(&"unknown"),
        "the oldest was evicted: {verdicts:?}"
    );
    let kept = verdicts.iter().filter(|v| **v == "opaque").count();
    assert!(
        kept <= 16,
        "no more verdicts than table entries: {verdicts:?}"
    );

    let stats = sb.stats()?;
    assert_eq!(stats["verdict_table"]["capacity"], 16, "{stats}");
    assert_eq!(
        stats["counters"]["published"], CONNECTIONS as u64,
        "{stats}"
    );
    assert!(
        stats["verdict_table"]["evicted"].as_u64().unwrap() >= (CONNECTIONS - 16) as u64,
        "{stats}"
    );
    assert_eq!(stats["errors_total"], 0, "{stats}");
    Ok(())
}

#[test]
fn pins_of_another_layout_are_refused_and_left_attached() -> Result<()> {
    if !privileged("pins_of_another_layout_are_refused_and_left_attached") {
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
    if !privileged("pins_are_root_only") {
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
    if !privileged("a_socket_only_learns_its_own_connections_verdict") {
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
    if !privileged("cli_errors_are_one_clear_line") {
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

//! End to end, with real servers, real clients and real iptables: a
//! server-speaks-first client (MariaDB) behind a detecting proxy stalls for
//! the whole detection timeout unless the classifier tells the proxy the
//! connection is opaque. See `tests::e2e` for the topology.
//!
//! Timings are behavioural (stall or no stall), with wide margins.

use std::time::Duration;

use anyhow::Result;
use tests::{
    e2e::{prerequisites, World, BYPASS_RULE, DETECT_TIMEOUT, MARIADB},
    test_name,
};

const TIMED_OUT: &str = "protocol detection timed out after";
const OPAQUE: &str = "opaque from kernel verdict";

/// "Well under the detection timeout".
fn fast() -> Duration {
    DETECT_TIMEOUT / 2
}

fn iptables_nat(world: &World, rule: &str) -> Result<()> {
    let args: Vec<&str> = ["-t", "nat"].into_iter().chain(rule.split(' ')).collect();
    world.sb.iptables(&args)?;
    Ok(())
}

#[test]
fn mariadb_through_the_proxy_stalls_without_the_classifier_and_not_with_it() -> Result<()> {
    let test = test_name!();
    if !prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    let dst = format!("dst={MARIADB}");

    // No classifier: the proxy waits for the client's first bytes, which a
    // MySQL client never sends before the server's greeting.
    let without = world.mariadb_select_1()?;
    eprintln!("{test}: without the classifier: {without:?}");
    assert!(
        without >= DETECT_TIMEOUT,
        "took {without:?}, expected the {DETECT_TIMEOUT:?} detection stall:\n{}",
        world.proxy_log()
    );
    assert!(
        without < DETECT_TIMEOUT + Duration::from_secs(10),
        "{without:?}"
    );
    world.wait_for_proxy_lines(&[TIMED_OUT, "forwarding as opaque TCP", &dst], 1)?;

    // With the agent: the kernel's verdict says opaque, no detection.
    world.sb.start_agent(&[])?;
    let with = world.mariadb_select_1()?;
    eprintln!("{test}: with the classifier: {with:?}");
    assert!(
        with < fast(),
        "took {with:?}, expected no detection stall:\n{}",
        world.proxy_log()
    );
    let lines = world.wait_for_proxy_lines(&[OPAQUE, &dst], 1)?;
    assert!(lines[0].contains("source=\"default_port\""), "{}", lines[0]);
    assert_eq!(
        world.proxy_lines(&[TIMED_OUT]).len(),
        1,
        "{}",
        world.proxy_log()
    );
    world.wait_for_proxy_lines(&["first byte from server", &dst], 2)?;
    assert!(world.proxy_alive());
    Ok(())
}

#[test]
fn mariadb_stalls_when_3306_is_removed_from_the_policy() -> Result<()> {
    let test = test_name!();
    if !prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    let policy = world.sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"\"\n",
    );
    world
        .sb
        .start_agent(&["--policy", policy.to_str().unwrap()])?;

    let elapsed = world.mariadb_select_1()?;
    eprintln!("{test}: 3306 not opaque: {elapsed:?}");
    assert!(
        elapsed >= DETECT_TIMEOUT,
        "took {elapsed:?}, expected the detection stall:\n{}",
        world.proxy_log()
    );
    world.wait_for_proxy_lines(&[TIMED_OUT, &format!("dst={MARIADB}")], 1)?;
    assert!(
        world.proxy_lines(&[OPAQUE]).is_empty(),
        "{}",
        world.proxy_log()
    );
    Ok(())
}

#[test]
fn http_is_still_detected_through_the_proxy() -> Result<()> {
    let test = test_name!();
    if !prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    world.sb.start_agent(&[])?;

    let (out, elapsed) = world.curl(&[])?;
    eprintln!("{test}: HTTP/1 request: {elapsed:?}");
    assert!(out.status.success(), "curl: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(
        elapsed < fast(),
        "a client-first protocol never waits: {elapsed:?}"
    );
    world.wait_for_proxy_lines(&["detected http1", "dst=192.0.2.2:8080"], 1)?;

    // HTTP/2 with prior knowledge: the proxy sees the preface. (The test
    // server only speaks HTTP/1, so curl itself fails; only detection matters.)
    let _ = world.curl(&["--http2-prior-knowledge"])?;
    world.wait_for_proxy_lines(&["detected http2", "dst=192.0.2.2:8080"], 1)?;

    assert!(
        world.proxy_lines(&[OPAQUE]).is_empty(),
        "{}",
        world.proxy_log()
    );
    assert!(
        world.proxy_lines(&[TIMED_OUT]).is_empty(),
        "{}",
        world.proxy_log()
    );
    Ok(())
}

#[test]
fn mark_mode_marks_the_accepted_socket_and_the_bypass_rule_skips_the_proxy() -> Result<()> {
    let test = test_name!();
    if !prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    world.sb.sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let policy = world.sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  mark: {value: 0x40000, mask: 0x40000}\n",
    );
    world
        .sb
        .start_agent(&["--policy", policy.to_str().unwrap()])?;
    let dst = format!("dst={MARIADB}");

    // Through the proxy: its accepted socket carries the classifier's mark.
    let elapsed = world.mariadb_select_1()?;
    assert!(elapsed < fast(), "{elapsed:?}");
    let lines = world.wait_for_proxy_lines(&[OPAQUE, &dst], 1)?;
    assert!(lines[0].contains("mark=0x40000"), "{}", lines[0]);
    world.wait_for_proxy_lines(&["closed", &dst], 1)?;

    // HTTP is not classified, so not marked.
    let (out, _) = world.curl(&[])?;
    assert!(out.status.success(), "curl: {out:?}");
    let lines = world.wait_for_proxy_lines(&["detected http1"], 1)?;
    assert!(lines[0].contains("mark=0x0"), "{}", lines[0]);

    // The bypass recipe for unmodified proxies: marked connections RETURN
    // before the REDIRECT and never reach the proxy.
    iptables_nat(&world, BYPASS_RULE)?;
    let before = world.proxy_lines(&[&dst]).len();
    let elapsed = world.mariadb_select_1()?;
    eprintln!("{test}: bypassing the proxy: {elapsed:?}");
    assert!(elapsed < fast(), "{elapsed:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        world.proxy_lines(&[&dst]).len(),
        before,
        "the proxy saw the bypassed connection:\n{}",
        world.proxy_log()
    );
    // Unclassified traffic still goes through the proxy.
    let (out, _) = world.curl(&[])?;
    assert!(out.status.success(), "curl: {out:?}");
    world.wait_for_proxy_lines(&["detected http1"], 2)?;
    Ok(())
}

//! The oldest kernel we claim, booted under qemu: Debian 12's own kernel
//! (6.1, package linux-image-cloud-amd64; Debian ships no 5.x kernel any
//! more). Every program must pass that kernel's verifier and attach, and a
//! connect from the test cgroup must be classified and counted, as on the
//! host kernel (see `tests::qemu`).
//!
//! Needs root (it may run `apt-get update`), qemu-system-x86_64 and
//! busybox; without them it skips, except under CI=true where it fails.

use std::time::Instant;

use anyhow::{Context as _, Result};
use classifier_common::programs;
use serde_json::Value;
use tests::{
    classifier_bin, privileged,
    qemu::{self, Guest},
    test_name,
};

/// Skips (or under CI=true fails) when qemu is missing.
fn qemu_available(test: &str) -> bool {
    if qemu::qemu_binary().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs qemu-system-x86_64 (Debian package qemu-system-x86), and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs qemu-system-x86_64 (Debian package qemu-system-x86)");
    false
}

fn verdict_line(section: &str) -> Result<Value> {
    let line = section
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no verdict line in:\n{section}"))?;
    serde_json::from_str(line).with_context(|| format!("bad verdict line {line}"))
}

#[test]
fn programs_load_attach_and_classify_on_debian_6_1_kernel() -> Result<()> {
    let test = test_name!();
    if !privileged!() || !qemu_available(test) {
        return Ok(());
    }
    let t0 = Instant::now();
    let kernel = qemu::debian_kernel()?;
    eprintln!(
        "{test}: kernel {} from {} ({:.1} s to fetch or find in {})",
        kernel.release,
        kernel.package,
        t0.elapsed().as_secs_f64(),
        qemu::cache_dir().display()
    );
    let guest = Guest::new()?;
    let initramfs = guest.build_initramfs(&classifier_bin(), &qemu::probe_bin())?;
    let boot = guest.boot(&kernel, &initramfs)?;
    eprintln!(
        "{test}: boot + test took {:.1} s under {}",
        boot.elapsed.as_secs_f64(),
        boot.accel
    );
    let ctx = || format!("serial console:\n{}", boot.serial);

    assert_eq!(boot.section("release").trim(), kernel.release, "{}", ctx());
    let log = boot.section("agent-log");
    assert!(
        log.contains("attached programs") && log.contains("policy applied"),
        "the agent did not load and attach its programs on {}: {}",
        kernel.release,
        ctx()
    );
    assert!(!log.contains(" ERROR "), "{}", ctx());
    let links: Vec<&str> = boot.section("links").split_whitespace().collect();
    for program in programs::ALL {
        assert!(
            links.contains(&program),
            "no pinned link for {program}: {}",
            ctx()
        );
    }
    for case in ["v4", "v6"] {
        assert!(
            boot.section(&format!("{case}-connect")).starts_with("ok "),
            "{case} connect failed: {}",
            ctx()
        );
        let verdict = verdict_line(boot.section(&format!("{case}-serve")))?;
        assert_eq!(verdict["classifier"], true, "{case}: {verdict}");
        assert_eq!(verdict["protocol"], "opaque", "{case}: {verdict}");
        assert_eq!(verdict["source"], "default_port", "{case}: {verdict}");
    }
    let stats: Value = serde_json::from_str(boot.section("stats"))
        .with_context(|| format!("stats is not JSON: {}", ctx()))?;
    assert_eq!(stats["connects_total"], 2, "{stats}");
    assert_eq!(stats["counters"]["connect4"], 1, "{stats}");
    assert_eq!(stats["counters"]["connect6"], 1, "{stats}");
    assert_eq!(stats["opaque_total"], 2, "{stats}");
    assert_eq!(stats["proxy_queries_total"], 2, "{stats}");
    assert_eq!(stats["counters"]["published"], 2, "{stats}");
    assert_eq!(stats["errors_total"], 0, "{stats}");
    assert_eq!(boot.result(), Some("PASS"), "{}", ctx());
    Ok(())
}

//! What the system reports about the agent and the kernel: a process's
//! resident memory and CPU time, and bpftool's JSON.

use std::{fs, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;
use tests::run;

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// A process's peak resident memory (`VmHWM`), KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")
}

/// The process's CPU time, every thread's.
pub(crate) fn process_cpu(pid: u32) -> Result<Duration> {
    let mut ns = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let s = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(ns))
}

pub(crate) fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = run(Command::new("bpftool").arg("-j").args(args))
        .context("bpftool (Debian package bpftool)")?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

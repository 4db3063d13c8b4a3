//! What the system reports about the agent and the kernel: a process's
//! resident memory, and bpftool's JSON.

use std::{fs, process::Command};

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

pub(crate) fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = run(Command::new("bpftool").arg("-j").args(args))
        .context("bpftool (Debian package bpftool)")?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

//! Scenario 6, the file path: a real agent (`--policy DIR`, polled every
//! 50 ms) on a directory of nine files of 1,000 pods each plus one file
//! holding one pod, and that one pod's opaque port changed `CHANGES`
//! times, the file replaced as a ConfigMap volume or an editor replaces
//! it (a new file renamed over the old one).
//!
//! - `visible_*_ms`: from the rename to the kernel's map holding the new
//!   entry (this process looks the pod's address and port up in the
//!   active slot every millisecond).
//! - `cpu_per_change_ms`: the agent process's CPU (every thread's
//!   `schedstat`) over the changes, less what it spends idle polling
//!   (measured over `IDLE` first), per change.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use classifier_common::RULE_MATCH;
use classifier_user::datapath::{PinDir, PolicyMaps};
use serde_json::{json, Value};
use tests::Sandbox;

use super::kubernetes_scale::pod;

const FILES: u32 = 9;
const PER_FILE: u32 = 1_000;
const CHANGES: usize = 20;
const IDLE: Duration = Duration::from_secs(3);
/// The pod of the tenth file.
const SINGLE: u32 = FILES * PER_FILE;

fn document(i: u32, opaque: &str) -> Value {
    let mut v = pod(i);
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] = json!(opaque);
    v
}

/// Writes `docs` to `path` through a rename (a new inode, as a ConfigMap
/// volume's symlink swap gives).
fn replace(path: &Path, docs: impl Iterator<Item = Value>) -> Result<()> {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(&d)?);
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub(crate) fn policy_directory() -> Result<Value> {
    let mut sb = Sandbox::new("bench-policy-dir")?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    for f in 0..FILES {
        let pods = f * PER_FILE..(f + 1) * PER_FILE;
        replace(
            &dir.join(format!("pods-{f}.yaml")),
            pods.map(|i| document(i, "3306")),
        )?;
    }
    let one = dir.join("one.yaml");
    replace(&one, std::iter::once(document(SINGLE, "3306")))?;
    sb.start_agent(&[
        "--policy",
        dir.to_str().unwrap(),
        "--watch-interval",
        "0.05",
    ])?;
    let pid = sb.agent_pid().context("agent pid")?;
    let maps = PolicyMaps::open(&PinDir::new(&sb.pins))?;
    let addr = Ipv4Addr::from(0x0a80_0000 + SINGLE + 1);
    let opaque_3307 = || -> Result<bool> {
        Ok(maps
            .lookup_v4(3307, addr)?
            .is_some_and(|v| v.kind == RULE_MATCH && v.net_prefix == 32))
    };
    if opaque_3307()? {
        bail!("{addr}:3307 is opaque before any change");
    }

    let (cpu, wall) = (crate::system::process_cpu(pid)?, Instant::now());
    std::thread::sleep(IDLE);
    let idle_rate =
        (crate::system::process_cpu(pid)? - cpu).as_secs_f64() / wall.elapsed().as_secs_f64();

    let mut visible = Vec::new();
    let (cpu, wall) = (crate::system::process_cpu(pid)?, Instant::now());
    for k in 0..CHANGES {
        let port = if k % 2 == 0 { "3307" } else { "3306" };
        let started = Instant::now();
        replace(&one, std::iter::once(document(SINGLE, port)))?;
        while opaque_3307()? != (port == "3307") {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("change {k} ({addr} opaque on {port}) not in the kernel after 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        visible.push(started.elapsed().as_secs_f64() * 1e3);
        // Settled before the next: every change is one poll's work.
        std::thread::sleep(Duration::from_millis(300));
    }
    let wall = wall.elapsed().as_secs_f64();
    let busy = (crate::system::process_cpu(pid)? - cpu).as_secs_f64();
    let cpu_per_change_ms = (busy - idle_rate * wall).max(0.0) / CHANGES as f64 * 1e3;
    let log = sb.agent_log();
    let incremental = log.matches("incremental=true").count();
    crate::step(&format!(
        "  policy directory ({} pods in {} files, 50 ms poll): {CHANGES} changes, visible p50 {:.0} ms, p90 {:.0} ms; agent CPU {cpu_per_change_ms:.2} ms per change (idle {:.3} of a core); {incremental} applied in place",
        SINGLE + 1,
        FILES + 1,
        percentile(visible.clone(), 0.5),
        percentile(visible.clone(), 0.9),
        idle_rate
    ));
    Ok(json!({
        "pods": SINGLE + 1,
        "files": FILES + 1,
        "poll_ms": 50,
        "changes": CHANGES,
        "incremental_applies": incremental,
        "cpu_per_change_ms": cpu_per_change_ms,
        "idle_cpu_fraction": idle_rate,
        "visible_p50_ms": percentile(visible.clone(), 0.5),
        "visible_p90_ms": percentile(visible.clone(), 0.9),
        "visible_max_ms": percentile(visible, 1.0),
    }))
}

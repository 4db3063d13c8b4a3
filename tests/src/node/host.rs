//! The host side the node run prepares before containerd starts: the test
//! cgroup2 parent, the stand-in for the host's /sys/fs/bpf (an empty
//! shared mount point, so Bidirectional and HostToContainer propagation
//! work as on a node), and the pod bridge with the gateway address (the
//! fake API server listens there, reachable from every pod).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use super::layout::{Layout, BRIDGE, GATEWAY};

/// The cgroup2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup` on
/// a unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(dash + 1) == Some(&"cgroup2") && fields[3] == "/" {
            return Ok(PathBuf::from(fields[4]));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo: the node run needs cgroup v2 (unified or hybrid)")
}

pub fn prepare(layout: &Layout) -> Result<()> {
    // The kubelet makes its QoS cgroups when it starts, before any pod:
    // kubepods, kubepods/burstable, kubepods/besteffort.
    for qos in ["burstable", "besteffort"] {
        let dir = layout.host_cgroup.join("kubepods").join(qos);
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating the test cgroup {}", dir.display()))?;
    }
    fs::create_dir_all(&layout.bpffs)?;
    fs::create_dir_all(&layout.pods)?;
    // A mount point of its own, shared: what Bidirectional needs on the
    // host side (containerd refuses it on a private mount).
    run("mount", &["--bind", &s(&layout.bpffs), &s(&layout.bpffs)])?;
    run("mount", &["--make-rshared", &s(&layout.bpffs)])?;
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// bpffs mounts at or below the stand-in directory (the init container's).
pub fn bpffs_mounts(layout: &Layout) -> Vec<String> {
    let prefix = s(&layout.bpffs);
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - bpf "))
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

/// Files and directories left below `dir` (pins), relative.
pub fn entries_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(
                e.path()
                    .strip_prefix(base)
                    .unwrap_or(&e.path())
                    .display()
                    .to_string(),
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &e.path(), out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

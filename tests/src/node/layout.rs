//! Every name and path the node run owns, all under one fixed prefix, and
//! the cleanup that removes them: run at start (leftovers of a crashed run)
//! and at the end, from a Drop guard, so a failure or a panic leaves
//! nothing behind.
//!
//! What the run substitutes for the host paths the DaemonSet mounts:
//! - hostPath `/sys/fs/bpf` -> [`Layout::bpffs`], an empty shared mount
//!   point: the init container mounts bpffs there through Bidirectional
//!   propagation, as on a host without one, and the agent sees it through
//!   HostToContainer. The machine's own bpffs and pins stay untouched.
//! - hostPath `/sys/fs/cgroup` -> [`Layout::host_cgroup`], the test's cgroup2
//!   directory below the machine's cgroup2 mount. The kubelet's
//!   `kubepods/<qos>/pod<uid>` tree is made inside it, so the agent attaches
//!   to a cgroup that covers the test's pods and nothing else (a test never
//!   attaches to the machine's root cgroup).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Prefix of every name the run creates.
pub const PREFIX: &str = "cls-node-e2e";
pub const BRIDGE: &str = "cls-node-e2e0";
pub const CNI_NETWORK: &str = "cls-node-e2e";
pub const POD_SUBNET: &str = "10.231.0.0/24";
pub const GATEWAY: &str = "10.231.0.1";

pub struct Layout {
    /// Config, logs, the containerd socket, CNI conf and IPAM state.
    pub run: PathBuf,
    pub socket: PathBuf,
    pub cni_conf: PathBuf,
    /// containerd's root (content store, snapshots).
    pub root: PathBuf,
    /// containerd's state (tasks, network namespaces, runc state).
    pub state: PathBuf,
    /// The kubelet's pods directory: volumes, etc-hosts, termination logs.
    pub pods: PathBuf,
    /// Stands in for the host's /sys/fs/bpf.
    pub bpffs: PathBuf,
    /// The machine's cgroup2 mount.
    pub cgroup2: PathBuf,
    /// Stands in for the host's /sys/fs/cgroup: the test's cgroup2 parent.
    pub host_cgroup: PathBuf,
    /// The CRI cgroup parent of pods: `/<PREFIX>/kubepods` relative to the
    /// cgroup roots (runc puts the same path in every hierarchy).
    pub kubepods: String,
}

impl Layout {
    pub fn new(cgroup2: &Path) -> Layout {
        let run = PathBuf::from(format!("/run/{PREFIX}"));
        Layout {
            socket: run.join("containerd.sock"),
            cni_conf: run.join("cni"),
            state: run.join("state"),
            pods: run.join("pods"),
            bpffs: run.join("bpffs"),
            root: PathBuf::from(format!("/var/lib/{PREFIX}")),
            cgroup2: cgroup2.to_owned(),
            host_cgroup: cgroup2.join(PREFIX),
            kubepods: format!("/{PREFIX}/kubepods"),
            run,
        }
    }

    /// Removes everything a run (this or a crashed earlier one) left:
    /// containerd processes with our socket, shims, mounts under our
    /// directories, network namespaces, the bridge, cgroups in every
    /// hierarchy, CNI caches and the directories. Errors are reported, not
    /// fatal: each item is tried.
    pub fn cleanup(&self) -> Vec<String> {
        let mut problems = Vec::new();
        kill_ours(&self.run, &mut problems);
        kill_pods(&self.cgroup2, &mut problems);
        for dir in [&self.state, &self.root, &self.run] {
            unmount_below(dir, &mut problems);
        }
        if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        }
        remove_cgroups(&self.cgroup2, &mut problems);
        // libcni's result cache (fixed path /var/lib/cni/results).
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{CNI_NETWORK}-"))
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for dir in [&self.root, &self.run] {
            if dir.exists() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    problems.push(format!("removing {}: {e}", dir.display()));
                }
            }
        }
        problems
    }
}

/// Kills processes whose command line names our run directory: our
/// containerd and its shims (`-address /run/cls-node-e2e/...`).
fn kill_ours(run: &Path, problems: &mut Vec<String>) {
    let needle = run.display().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let mut killed = Vec::new();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle)
            && (cmdline.starts_with("containerd") || cmdline.contains("containerd-shim"))
        {
            match crate::sys::kill(pid, libc::SIGKILL) {
                Ok(()) => killed.push(pid),
                Err(e) => problems.push(format!("killing {pid} ({cmdline}): {e}")),
            }
        }
    }
    // A killed process lets go of its mounts when it exits, before it is
    // reaped: wait for that before unmounting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while killed.iter().any(|pid| alive(*pid)) {
        if std::time::Instant::now() > deadline {
            problems.push(format!(
                "processes {killed:?} still alive 10 s after SIGKILL"
            ));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The process exists and has not exited yet (a zombie has).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Unmounts every mount point at or below `dir`, deepest first (container
/// rootfs overlays, network namespace bind mounts, bpffs, shm).
fn unmount_below(dir: &Path, problems: &mut Vec<String>) {
    let prefix = dir.display().to_string();
    for _ in 0..4 {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            // Lazy: a mount still busy for a moment goes once it is free.
            let out = Command::new("umount").args(["-l", &p]).output();
            if let Ok(out) = out {
                let err = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() && !err.contains("not mounted") {
                    problems.push(format!("umount {p}: {}", err.trim()));
                }
            }
        }
    }
}

/// Kills every process still in the test's pods (a crashed run's
/// containers whose shims are gone): their mounts and cgroups could not be
/// removed otherwise.
fn kill_pods(cgroup2: &Path, problems: &mut Vec<String>) {
    let kill = cgroup2.join(PREFIX).join("cgroup.kill");
    if kill.exists() {
        if let Err(e) = fs::write(&kill, "1") {
            problems.push(format!("writing {}: {e}", kill.display()));
            return;
        }
        // The cgroups can be removed once no process is left in them.
        let events = cgroup2.join(PREFIX).join("cgroup.events");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_to_string(&events).is_ok_and(|e| e.contains("populated 1")) {
            if std::time::Instant::now() > deadline {
                problems.push(format!(
                    "{} still populated 10 s after cgroup.kill",
                    events.display()
                ));
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// rmdir's the test's cgroup tree, leaves first, in the cgroup2 mount and
/// in every v1 hierarchy (runc creates the same path in each).
fn remove_cgroups(cgroup2: &Path, problems: &mut Vec<String>) {
    let mut roots = vec![cgroup2.join(PREFIX)];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            roots.push(e.path().join(PREFIX));
        }
    }
    for root in roots {
        if root.is_dir() {
            if let Err(e) = rmdir_tree(&root) {
                problems.push(format!("removing cgroup {}: {e}", root.display()));
            }
        }
    }
}

fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            rmdir_tree(&e.path())?;
        }
    }
    // A cgroup whose last process just exited may still be busy briefly.
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    fs::remove_dir(dir)
}

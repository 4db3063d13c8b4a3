//! What the node offers an agent: kernel, BPF features, cgroup v2, bpffs,
//! capabilities.

use std::{fs, path::Path};

use super::Check;
use crate::{
    agent::{preflight::MIN_KERNEL, privileges, seccomp as filter},
    datapath::{cgroup, pins},
    sys,
};

use cgroup::CGROUP2_SUPER_MAGIC;

pub fn checks(cgroup: Option<&Path>) -> Vec<Check> {
    let mut out = vec![kernel(), bpf_features()];
    out.extend(cgroups(cgroup));
    out.push(bpffs());
    out.push(capabilities());
    out.push(seccomp());
    out
}

fn kernel() -> Check {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let need = format!("{}.{}", MIN_KERNEL.0, MIN_KERNEL.1);
    match crate::agent::preflight::parse_release(release) {
        Some(v) if v >= MIN_KERNEL => Check::pass("kernel", format!("{release} (needs {need} or later)")),
        Some(_) => Check::fail(
            "kernel",
            format!("{release} is older than {need}"),
            format!("run the agent on nodes with Linux {need} or later (bpf_get_netns_cookie in sockops and cgroup/getsockopt)"),
        ),
        None => Check::fail("kernel", format!("cannot parse kernel release {release:?}"), "check /proc/sys/kernel/osrelease"),
    }
}

/// The kernel configuration the programs need, from /proc/config.gz or
/// /boot/config-RELEASE when either is readable; the BTF the loader uses.
fn bpf_features() -> Check {
    const NEEDED: [&str; 4] = [
        "CONFIG_BPF_SYSCALL",
        "CONFIG_CGROUP_BPF",
        "CONFIG_BPF_JIT",
        "CONFIG_CGROUPS",
    ];
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim())).ok();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let Some(config) = config else {
        return Check::pass(
            "bpf-features",
            format!(
                "kernel config not readable here (no /boot/config-{}), not checked; BTF {}",
                release.trim(),
                if btf { "present" } else { "absent" }
            ),
        );
    };
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|k| !config.lines().any(|l| l == format!("{k}=y")))
        .collect();
    if missing.is_empty() {
        Check::pass(
            "bpf-features",
            format!(
                "{} set; BTF {}",
                NEEDED.join(", "),
                if btf { "present" } else { "absent" }
            ),
        )
    } else {
        Check::fail(
            "bpf-features",
            format!("kernel built without {}", missing.join(", ")),
            "use a kernel with BPF syscall, cgroup BPF and the BPF JIT enabled",
        )
    }
}

fn cgroups(wanted: Option<&Path>) -> Vec<Check> {
    let root = match cgroup::cgroup2_root() {
        Ok(root) => root,
        Err(err) => {
            return vec![Check::fail(
                "cgroup-v2",
                format!("{err:#}"),
                "mount cgroup v2 (systemd.unified_cgroup_hierarchy=1, or a hybrid layout's /sys/fs/cgroup/unified)",
            )]
        }
    };
    let mut out = vec![Check::pass(
        "cgroup-v2",
        format!("mounted at {}", root.display()),
    )];
    let mut target = wanted.map_or(root.clone(), Path::to_path_buf);
    if let Ok(cgroup::AttachPoint::Below(v2)) = cgroup::attach_point(&target) {
        out.push(Check::pass(
            "hybrid-cgroups",
            format!(
                "{} is the v1 side of a hybrid layout; an agent given it attaches to {} below it",
                target.display(),
                v2.display()
            ),
        ));
        target = v2;
    }
    out.push(match sys::fs::fs_type(&target) {
        Ok(CGROUP2_SUPER_MAGIC) => Check::pass(
            "attach-cgroup",
            format!("{} is a cgroup v2 directory{}", target.display(), if target == root { " (the root: every pod)" } else { "" }),
        ),
        Ok(_) => Check::fail(
            "attach-cgroup",
            format!("{} is not on cgroup v2", target.display()),
            "pass --cgroup a cgroup v2 directory (in the DaemonSet: the host's /sys/fs/cgroup mounted at /host/sys/fs/cgroup)",
        ),
        Err(err) => Check::fail(
            "attach-cgroup",
            format!("{}: {err}", target.display()),
            "pass --cgroup an existing cgroup v2 directory",
        ),
    });
    out
}

fn bpffs() -> Check {
    let at = Path::new("/sys/fs/bpf");
    if pins::is_bpffs(at) {
        Check::pass("bpffs", "mounted at /sys/fs/bpf")
    } else {
        Check::fail(
            "bpffs",
            "no bpffs at /sys/fs/bpf",
            "`mount -t bpf -o mode=0700 bpf /sys/fs/bpf` (the DaemonSet's init container does this)",
        )
    }
}

/// Whether a process started like this one could install: CAP_BPF,
/// CAP_NET_ADMIN and CAP_PERFMON in its effective set, as root.
fn capabilities() -> Check {
    const NEEDED: [u32; 3] = [privileges::CAP_BPF, 12, 38];
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = privileges::status_mask(&status, "CapEff:").unwrap_or(0);
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|c| eff & (1u64 << **c) == 0)
        .map(|c| privileges::cap_name(*c))
        .collect();
    let root = sys::process::is_root();
    if missing.is_empty() && root {
        Check::pass(
            "capabilities",
            "uid 0 with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
        )
    } else {
        let mut found = Vec::new();
        if !root {
            found.push("not uid 0".to_owned());
        }
        if !missing.is_empty() {
            found.push(format!("missing {}", missing.join(", ")));
        }
        Check::fail(
            "capabilities",
            found.join(", "),
            "run as root with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the DaemonSet's capabilities.add)",
        )
    }
}

/// Whether a seccomp filter (a container runtime's profile) lets bpf()
/// reach the kernel. Run it where the agent runs (`kubectl exec` into the
/// agent's container, or a pod with the same securityContext) to see what
/// that container's profile allows.
fn seccomp() -> Check {
    match filter::inspect() {
        filter::Finding::NoFilter => Check::pass("seccomp", "no seccomp filter on this process"),
        filter::Finding::FilterAllowsBpf => Check::pass(
            "seccomp",
            "a seccomp filter is active (Seccomp: 2) and lets bpf() through to the kernel",
        ),
        found @ filter::Finding::FilterRefusesBpf { .. } => {
            let line = filter::explain(&found).unwrap_or_default();
            let (what, _) = line.split_once(". Fix: ").unwrap_or((&line, ""));
            Check::fail("seccomp", what, filter::FIX)
        }
    }
}

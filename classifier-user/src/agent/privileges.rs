//! Shedding privileges once the programs are attached.
//!
//! Loading and attaching needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the
//! verifier's privileged mode); what follows only writes maps through file descriptors
//! the agent already holds. On kernels before 6.5 with unprivileged BPF
//! disabled (the usual setting) every bpf() call, map writes included,
//! still needs CAP_BPF, so that one capability is kept and every other is
//! dropped from the effective, permitted, inheritable and ambient sets.
//!
//! The bounding set can only be shrunk with CAP_SETPCAP. When the agent
//! has it (root outside a container) it empties the bounding set but for
//! CAP_BPF; when it does not (the DaemonSet grants BPF, NET_ADMIN and
//! PERFMON only) those three stay in the bounding set, which matters only
//! for execve, and the agent sets no_new_privs, so no exec can regain
//! them. Every step either succeeds or the agent stops, and the result is
//! read back from /proc before the agent goes on.

use anyhow::{bail, Context as _, Result};

use crate::sys::caps;

pub const CAP_BPF: u32 = 39;
const CAP_SETPCAP: u32 = 8;

/// Names of the capabilities a report may mention.
const NAMES: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (8, "CAP_SETPCAP"),
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

pub fn cap_name(cap: u32) -> String {
    NAMES
        .iter()
        .find(|(n, _)| *n == cap)
        .map_or_else(|| format!("cap_{cap}"), |(_, name)| name.to_string())
}

/// What [`keep_only`] left.
#[derive(Debug)]
pub struct Dropped {
    /// Capabilities still in the bounding set besides `keep` (no
    /// CAP_SETPCAP to drop them), by name.
    pub bounding_kept: Vec<String>,
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// A `Cap*:` line of /proc/thread-self/status as a bit mask.
pub fn status_mask(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    u64::from_str_radix(line[field.len()..].trim(), 16).ok()
}

/// Keeps only `keep` (capability numbers) on this thread, which must be
/// the agent's only thread: capabilities are per thread. Any failure is an
/// error; on success the thread's sets were read back and are as stated.
pub fn keep_only(keep: &[u32]) -> Result<Dropped> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        bail!("cannot drop capabilities: the agent has {threads} threads, capabilities are per thread");
    }
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .context("reading /proc/thread-self/status")?;
    let effective =
        status_mask(&status, "CapEff:").context("no CapEff in /proc/thread-self/status")?;
    let can_shrink_bounding = effective & (1 << CAP_SETPCAP) != 0;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which is
    // about to go.
    let mut bounding_kept = Vec::new();
    for cap in 0..=last_cap() {
        if keep.contains(&cap) || !caps::in_bounding_set(cap)? {
            continue;
        }
        if can_shrink_bounding {
            caps::drop_from_bounding_set(cap)
                .with_context(|| format!("dropping {} from the bounding set", cap_name(cap)))?;
        } else {
            bounding_kept.push(cap_name(cap));
        }
    }
    caps::set_no_new_privs().context("setting no_new_privs")?;
    caps::clear_ambient().context("clearing the ambient capability set")?;
    caps::set_effective_and_permitted(keep).context("capset")?;

    // Read back what the kernel now says.
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .context("reading /proc/thread-self/status")?;
    let want: u64 = keep.iter().fold(0, |m, c| m | (1 << c));
    for (field, expected) in [
        ("CapEff:", want),
        ("CapPrm:", want),
        ("CapInh:", 0),
        ("CapAmb:", 0),
    ] {
        let got = status_mask(&status, field).unwrap_or(0);
        if got != expected {
            bail!("after dropping capabilities {field} is {got:#x}, expected {expected:#x}");
        }
    }
    if !status
        .lines()
        .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"]))
    {
        bail!("no_new_privs is not set after setting it");
    }
    Ok(Dropped { bounding_kept })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_status_masks() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000008000000000\n";
        assert_eq!(super::status_mask(status, "CapEff:"), Some(1 << 39));
        assert_eq!(super::status_mask(status, "CapInh:"), Some(0));
        assert_eq!(super::status_mask(status, "CapBnd:"), None);
        assert_eq!(super::cap_name(12), "CAP_NET_ADMIN");
    }
}

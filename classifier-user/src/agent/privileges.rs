//! Shedding privileges once the programs are attached.
//!
//! Loading and attaching needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the
//! verifier's privileged mode); what follows only writes maps through file descriptors
//! the agent already holds. On kernels before 6.5 with unprivileged BPF
//! disabled (the usual setting) every bpf() call, map writes included,
//! still needs CAP_BPF, so that one capability is kept and every other is
//! dropped from the effective, permitted, inheritable and bounding sets.

use anyhow::{bail, Result};

use crate::sys::caps;

pub const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 40;

/// Keeps only `keep` (capability numbers) on this thread, which must be
/// the agent's only thread: capabilities are per thread.
pub fn keep_only(keep: &[u32]) -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        bail!("cannot drop capabilities: the agent has {threads} threads, capabilities are per thread");
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which is
    // about to go.
    for cap in 0..=LAST_CAP {
        if !keep.contains(&cap) {
            // EINVAL for a capability this kernel does not know is fine.
            let _ = caps::drop_from_bounding_set(cap);
        }
    }
    if let Err(err) = caps::set_effective_and_permitted(keep) {
        bail!("capset failed: {err}");
    }
    Ok(())
}

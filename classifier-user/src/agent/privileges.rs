//! Shedding privileges once the programs are attached.
//!
//! Loading and attaching needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the
//! verifier's privileged mode); what follows only writes maps through file descriptors
//! the agent already holds. On kernels before 6.5 with unprivileged BPF
//! disabled (the usual setting) every bpf() call, map writes included,
//! still needs CAP_BPF, so that one capability is kept and every other is
//! dropped from the effective, permitted, inheritable and bounding sets.

use anyhow::{bail, Result};

pub const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 40;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

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
            // SAFETY: prctl with integer arguments. EINVAL for a capability
            // this kernel does not know is fine.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    let mut data = [CapData::default(); 2];
    for cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and data are the v3 layout capset expects.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        bail!("capset failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

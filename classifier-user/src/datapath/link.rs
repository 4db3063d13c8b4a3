//! Attaching a program to a cgroup as a pinned bpf link.
//!
//! Done with the two raw syscalls (`sys::bpf`) rather than through aya
//! because aya 0.14 cannot turn a cgroup/getsockopt attachment into a
//! pinnable link, and every program here must be pinned the same way for
//! adoption to work. A cgroup bpf link is always attached in "multi" mode,
//! so ours coexists with other programs on the same cgroup.

use std::{os::fd::BorrowedFd, path::Path};

use anyhow::{Context as _, Result};

use crate::sys::bpf::{self, bpf_attach_type};

pub use bpf_attach_type::{
    BPF_CGROUP_GETSOCKOPT, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_SOCK_OPS,
};

/// Attaches `program` to `cgroup` and pins the link at `pin`. The returned
/// fd may be dropped: the pin keeps the attachment.
pub fn attach_pinned(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: bpf_attach_type,
    pin: &Path,
) -> Result<()> {
    use std::os::fd::AsFd as _;
    let link = bpf::link_create(program, cgroup, attach_type).context("BPF_LINK_CREATE")?;
    bpf::obj_pin(link.as_fd(), pin).with_context(|| format!("pinning link at {}", pin.display()))
}

/// The id of the cgroup a pinned cgroup link is attached to (the cgroup
/// directory's inode on cgroup v2), or 0 once that cgroup is gone.
pub fn pinned_link_cgroup(pin: &Path) -> Result<u64> {
    use std::os::fd::AsFd as _;
    let link =
        bpf::obj_get(pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
    bpf::link_cgroup_id(link.as_fd())
        .with_context(|| format!("reading link info of {}", pin.display()))
}

/// Whether every program's pinned link is still attached to the cgroup
/// whose id is `cgroup_id`; `Err` names the first one that is not.
pub fn all_attached(pins: &super::PinDir, cgroup_id: u64) -> Result<(), String> {
    for program in classifier_common::programs::ALL {
        match pinned_link_cgroup(&pins.link(program)) {
            Ok(id) if id == cgroup_id => {}
            Ok(0) => return Err(format!("{program} is detached")),
            Ok(other) => {
                return Err(format!(
                    "{program} is attached to another cgroup (id {other})"
                ))
            }
            Err(err) => return Err(format!("{program}: {err:#}")),
        }
    }
    Ok(())
}

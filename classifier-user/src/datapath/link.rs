//! Attaching a program to a cgroup as a pinned bpf link.
//!
//! Done with the two raw syscalls rather than through aya because aya 0.14
//! cannot turn a cgroup/getsockopt attachment into a pinnable link, and
//! every program here must be pinned the same way for adoption to work.
//! A cgroup bpf link is always attached in "multi" mode, so ours coexists
//! with other programs on the same cgroup.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// `union bpf_attr` is larger than what we set; the kernel requires the
/// unused tail to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a live, zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Attaches `program` to `cgroup` and pins the link at `pin`. The returned
/// fd may be dropped: the pin keeps the attachment.
pub fn attach_pinned(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
) -> Result<()> {
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    let fd = bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE")?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let path = CString::new(pin.as_os_str().as_encoded_bytes()).context("pin path contains NUL")?;
    let mut attr = Attr([0; 128]);
    attr.0[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning link at {}", pin.display()))?;
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The id of the cgroup a pinned cgroup link is attached to (the cgroup
/// directory's inode on cgroup v2), or 0 once that cgroup is gone.
pub fn pinned_link_cgroup(pin: &Path) -> Result<u64> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).context("pin path contains NUL")?;
    let mut attr = Attr([0; 128]);
    attr.0[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("opening pinned link {}", pin.display()))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    // struct bpf_link_info: type, id, prog_id (u32 each), then a union
    // whose cgroup member starts with `__u64 cgroup_id` at offset 16.
    let mut info = [0u8; 64];
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("reading link info of {}", pin.display()))?;
    Ok(u64::from_ne_bytes(
        info[16..24].try_into().expect("8 bytes"),
    ))
}

//! Capabilities: the bounding set (prctl(2)) and this thread's effective,
//! permitted and inheritable sets (capset(2), version 3 layout).

use std::io;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`: one 32-capability word.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops `cap` from the bounding set (needs CAP_SETPCAP). Fails with
/// EINVAL for a capability number this kernel does not know.
pub fn drop_from_bounding_set(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets this thread's effective and permitted sets to exactly `caps`
/// (capability numbers below 64), and the inheritable set to empty.
pub fn set_effective_and_permitted(caps: &[u32]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for &cap in caps {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        let word = data.get_mut(word).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("capability {cap}"))
        })?;
        word.effective |= bit;
        word.permitted |= bit;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header is a v3 header for this thread (pid 0) and data holds
    // the two words the v3 layout reads; both outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `cap` is in this thread's bounding set (PR_CAPBSET_READ; needs
/// no privilege). `Ok(false)` too for a capability this kernel does not know.
pub fn in_bounding_set(cap: u32) -> io::Result<bool> {
    // SAFETY: PR_CAPBSET_READ takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
    match rc {
        1 => Ok(true),
        0 => Ok(false),
        _ => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// Empties this thread's ambient set (needs no privilege).
pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets no_new_privs (needs no privilege, cannot be undone): no execve by
/// this process or its children can gain capabilities, so what stays in a
/// bounding set that could not be emptied cannot be regained.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

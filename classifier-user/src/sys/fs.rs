//! Filesystems and file locks: statfs(2), mount(2), flock(2).

use std::{ffi::CString, fs::File, io, os::fd::AsRawFd as _, path::Path};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The filesystem type (`f_type`, a magic number such as BPF_FS_MAGIC) of
/// the filesystem `path` is on.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c_path = c_path(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is NUL-terminated and st is a statfs buffer we own;
    // statfs writes at most size_of::<statfs>() bytes into it.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled the struct (which was zeroed
    // beforehand anyway, and is plain integers).
    let st = unsafe { st.assume_init() };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on x86_64 but not on every target"
    )]
    Ok(st.f_type as i64)
}

/// mount(2) of a filesystem with no backing device (`source` is its type's
/// name, as for bpffs, tmpfs or cgroup2), with no flags.
pub fn mount(fstype: &str, target: &Path, options: &str) -> io::Result<()> {
    let target = c_path(target)?;
    let nul = |s: &str| {
        CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
    };
    let fstype = nul(fstype)?;
    let options = nul(options)?;
    // SAFETY: every pointer is to a live NUL-terminated string that
    // outlives the call; no flags.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an exclusive flock(2) on `file` without waiting: `Ok(false)` when
/// another open file description holds it. The lock lasts as long as the
/// file stays open.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor `file` owns and keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

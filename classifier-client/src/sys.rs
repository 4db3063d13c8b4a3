//! The one system call: getsockopt(2) into a byte buffer.

use std::{io, os::fd::RawFd};

/// getsockopt(2) into `buf`; returns how many bytes the kernel wrote.
///
/// A descriptor that is not an open socket fails (EBADF, ENOTSOCK) without
/// touching memory of ours, so a `RawFd` is enough.
pub(crate) fn getsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
    // SAFETY: buf is a live, writable buffer of `len` bytes and len a live
    // socklen_t; the kernel writes at most `len` bytes and updates len.
    #[expect(unsafe_code, reason = "getsockopt(2) writes into our buffer")]
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &raw mut len) };
    if rc == 0 {
        Ok((len as usize).min(buf.len()))
    } else {
        Err(io::Error::last_os_error())
    }
}

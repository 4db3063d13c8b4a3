//! Socket options: getsockopt(2) into a plain-data value, and the socket
//! address layouts the kernel answers some options with.
//!
//! A file descriptor is taken as a `RawFd`: getsockopt on a descriptor
//! that is not an open socket fails (EBADF, ENOTSOCK) and touches no
//! memory of ours, so no ownership needs proving.

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::RawFd,
};

use bytemuck::{Pod, Zeroable};

/// getsockopt(2) into `buf`; returns the number of bytes the kernel wrote.
pub fn getsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
    // SAFETY: buf is a live, writable buffer of `len` bytes and len is a
    // live socklen_t; the kernel writes at most `len` bytes and updates len.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &raw mut len) };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// getsockopt(2) into a `T` (any bit pattern is a valid `T`), and how many
/// of its bytes the kernel wrote (the rest stay zero).
pub fn getsockopt<T: Pod>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = T::zeroed();
    let len = getsockopt_bytes(fd, level, name, bytemuck::bytes_of_mut(&mut value))?;
    Ok((value, len))
}

/// `struct sockaddr_in` (netinet/in.h), as plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SockAddrIn {
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    /// Network byte order.
    pub addr: [u8; 4],
    pub zero: [u8; 8],
}

impl From<SockAddrIn> for SocketAddrV4 {
    fn from(sa: SockAddrIn) -> Self {
        SocketAddrV4::new(Ipv4Addr::from(sa.addr), u16::from_be(sa.port))
    }
}

/// `struct sockaddr_in6` (netinet/in.h), as plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SockAddrIn6 {
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    pub flowinfo: u32,
    pub addr: [u8; 16],
    pub scope_id: u32,
}

impl From<SockAddrIn6> for SocketAddrV6 {
    fn from(sa: SockAddrIn6) -> Self {
        SocketAddrV6::new(
            Ipv6Addr::from(sa.addr),
            u16::from_be(sa.port),
            sa.flowinfo,
            sa.scope_id,
        )
    }
}

const _: () = assert!(mem::size_of::<SockAddrIn>() == mem::size_of::<libc::sockaddr_in>());
const _: () = assert!(mem::size_of::<SockAddrIn6>() == mem::size_of::<libc::sockaddr_in6>());

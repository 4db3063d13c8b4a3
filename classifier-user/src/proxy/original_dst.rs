//! Where a REDIRECTed connection was going: netfilter's `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6), read on the accepted socket.

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

/// `SO_ORIGINAL_DST` at `SOL_IP` and `IP6T_SO_ORIGINAL_DST` at `SOL_IPV6`
/// share the number 80 (linux/netfilter_ipv4.h, netfilter_ipv6/ip6_tables.h).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of an accepted, REDIRECTed connection. Fails
/// (ENOENT) on a connection that did not go through a NAT rule.
pub fn original_dst(socket: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = socket.as_raw_fd();
    match local {
        // A v4 client on a dual-stack listener is tracked as IPv4.
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => {
            // SAFETY: sockaddr_in6 is plain data, sized by getsockopt_into.
            let sa: libc::sockaddr_in6 = unsafe { getsockopt_into(fd, libc::SOL_IPV6)? };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            )))
        }
        _ => {
            // SAFETY: sockaddr_in is plain data, sized by getsockopt_into.
            let sa: libc::sockaddr_in = unsafe { getsockopt_into(fd, libc::SOL_IP)? };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )))
        }
    }
}

/// # Safety
/// `T` must be valid for any bit pattern (a C struct of integers).
unsafe fn getsockopt_into<T>(fd: libc::c_int, level: libc::c_int) -> io::Result<T> {
    let mut value: T = mem::zeroed();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    let rc = libc::getsockopt(
        fd,
        level,
        SO_ORIGINAL_DST,
        (&raw mut value).cast(),
        &mut len,
    );
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

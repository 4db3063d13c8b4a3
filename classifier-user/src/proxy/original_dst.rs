//! Where a REDIRECTed connection was going: netfilter's `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6), read on the accepted socket.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

use crate::sys::socket::{getsockopt, SockAddrIn, SockAddrIn6};

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
            let (sa, _) = getsockopt::<SockAddrIn6>(fd, libc::SOL_IPV6, SO_ORIGINAL_DST)?;
            Ok(SocketAddr::V6(SocketAddrV6::from(sa)))
        }
        _ => {
            let (sa, _) = getsockopt::<SockAddrIn>(fd, libc::SOL_IP, SO_ORIGINAL_DST)?;
            Ok(SocketAddr::V4(SocketAddrV4::from(sa)))
        }
    }
}

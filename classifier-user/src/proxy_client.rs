//! The proxy side of the contract: ask the kernel, on an accepted socket,
//! what the classifier decided for the connection behind it.
//!
//! ```no_run
//! # fn handle(stream: std::net::TcpStream) -> std::io::Result<()> {
//! use classifier_user::proxy_client::{query, Protocol};
//! match query(&stream)? {
//!     Some(v) if v.protocol == Protocol::Opaque => { /* forward at once, no detection */ }
//!     _ => { /* no classifier, or no verdict: detect as usual */ }
//! }
//! # Ok(()) }
//! ```
//!
//! It needs no privilege and no bpffs: the answer comes from the
//! classifier's `cgroup/getsockopt` program. The layout is documented in
//! docs/src/proxy/contract.md and pinned by `classifier_common`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use classifier_common::{
    QueryReply, QUERY_LEVEL, QUERY_OPTNAME, REPLY_FLAG_AMBIGUOUS, REPLY_FLAG_DST_IPV4,
    REPLY_FLAG_MARKED, REPLY_LEN, REPLY_VERSION,
};

/// The protocol byte of the reply (`Detect`: no verdict, run protocol
/// detection as usual); the same type the policy and the kernel use.
pub use classifier_common::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    None,
    DefaultPort,
    Rule(u32),
    /// A destination the classifier learned to be server-first (byte 2 = 3).
    Learned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub protocol: Protocol,
    pub source: Source,
    /// The classifier also set SO_MARK on the client's socket.
    pub marked: bool,
    /// Another live connection shares the client's address and port, so
    /// the classifier gave no verdict (protocol is `Detect`).
    pub ambiguous: bool,
    /// Policy generation the verdict was taken under (0 without a verdict).
    pub generation: u32,
    /// The destination the client asked for; compare with SO_ORIGINAL_DST.
    /// `None` without a verdict.
    pub original_dst: Option<SocketAddr>,
}

impl Verdict {
    pub fn skip_detection(&self) -> bool {
        self.protocol == Protocol::Opaque
    }
}

/// `Ok(None)`: no classifier is loaded for this socket (the kernel does not
/// know the option level). `Ok(Some(v))`: the classifier answered; without
/// a verdict `v.protocol` is `Detect`.
pub fn query(socket: &impl AsRawFd) -> io::Result<Option<Verdict>> {
    let (buf, len) = match crate::sys::socket::getsockopt::<[u8; REPLY_LEN]>(
        socket.as_raw_fd(),
        QUERY_LEVEL,
        QUERY_OPTNAME,
    ) {
        Ok(reply) => reply,
        Err(err) => {
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT) => Ok(None),
                _ => Err(err),
            }
        }
    };
    parse(&buf[..len]).map(Some)
}

/// `query`, cross-checked against the destination the proxy knows the
/// client asked for (`SO_ORIGINAL_DST` behind a REDIRECT, else the accepted
/// socket's local address). A verdict for another destination (the NAT
/// remapped a clashing source port onto another connection's) is turned
/// into `Detect`: detection as usual rather than a wrong answer.
pub fn query_checked(
    socket: &impl AsRawFd,
    original_dst: SocketAddr,
) -> io::Result<Option<Verdict>> {
    Ok(query(socket)?.map(|verdict| checked(verdict, original_dst)))
}

/// The check `query_checked` makes, on a verdict already read: a verdict
/// for another destination than `original_dst` becomes `Detect`.
pub fn checked(verdict: Verdict, original_dst: SocketAddr) -> Verdict {
    // Address and port only: an IPv6 SocketAddr also carries flow info and
    // a scope id, which SO_ORIGINAL_DST may fill and the reply does not.
    let canonical = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => (
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            a.port(),
        ),
        IpAddr::V4(v4) => (IpAddr::V4(v4), a.port()),
    };
    match verdict.original_dst {
        Some(dst) if canonical(dst) != canonical(original_dst) => Verdict {
            protocol: Protocol::Detect,
            source: Source::None,
            marked: false,
            ambiguous: true,
            generation: verdict.generation,
            original_dst: Some(dst),
        },
        _ => verdict,
    }
}

/// Decodes a reply (exposed for tests and for proxies that make the call
/// themselves).
pub fn parse(bytes: &[u8]) -> io::Result<Verdict> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("classifier reply: {why}"),
        )
    };
    if bytes.len() < classifier_common::REPLY_MIN_LEN {
        return Err(bad("too short"));
    }
    if bytes[0] != REPLY_VERSION {
        return Err(bad(&format!("unknown layout version {}", bytes[0])));
    }
    let mut full = [0u8; REPLY_LEN];
    full[..bytes.len().min(REPLY_LEN)].copy_from_slice(&bytes[..bytes.len().min(REPLY_LEN)]);
    let r: QueryReply = bytemuck::pod_read_unaligned(&full);
    let protocol = Protocol::from_wire(r.protocol);
    let source = match classifier_common::Source::try_from(r.source) {
        Ok(classifier_common::Source::DefaultPort) => Source::DefaultPort,
        Ok(classifier_common::Source::Rule) => Source::Rule(r.rule_id),
        Ok(classifier_common::Source::Learned) => Source::Learned,
        Ok(classifier_common::Source::None) | Err(_) => Source::None,
    };
    let original_dst = (bytes.len() >= REPLY_LEN && source != Source::None).then(|| {
        let v6 = Ipv6Addr::from(r.dst_addr);
        let ip = if r.flags & REPLY_FLAG_DST_IPV4 != 0 {
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
        } else {
            IpAddr::V6(v6)
        };
        SocketAddr::new(ip, u16::from_be(r.dst_port_be))
    });
    Ok(Verdict {
        protocol,
        source,
        marked: r.flags & REPLY_FLAG_MARKED != 0,
        ambiguous: r.flags & REPLY_FLAG_AMBIGUOUS != 0,
        generation: r.generation,
        original_dst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_reply() {
        let reply = QueryReply {
            version: 1,
            protocol: Protocol::Opaque.wire(),
            source: classifier_common::SOURCE_RULE,
            flags: REPLY_FLAG_DST_IPV4,
            rule_id: 7,
            generation: 3,
            dst_port_be: 3306u16.to_be(),
            _reserved: 0,
            dst_addr: Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped().octets(),
        };
        let v = parse(bytemuck::bytes_of(&reply)).unwrap();
        assert_eq!(v.protocol, Protocol::Opaque);
        assert_eq!(v.source, Source::Rule(7));
        assert_eq!(v.generation, 3);
        assert_eq!(v.original_dst, Some("203.0.113.9:3306".parse().unwrap()));
        assert!(v.skip_detection());
    }

    #[test]
    fn learned_source_is_byte_3() {
        let reply = QueryReply {
            version: 1,
            protocol: Protocol::Opaque.wire(),
            source: classifier_common::SOURCE_LEARNED,
            flags: REPLY_FLAG_DST_IPV4,
            rule_id: 0,
            generation: 3,
            dst_port_be: 2222u16.to_be(),
            _reserved: 0,
            dst_addr: Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().octets(),
        };
        let bytes = bytemuck::bytes_of(&reply);
        assert_eq!(bytes[2], 3);
        let v = parse(bytes).unwrap();
        assert_eq!(v.source, Source::Learned);
        assert!(v.skip_detection());
        assert_eq!(v.original_dst, Some("10.0.0.9:2222".parse().unwrap()));
    }

    #[test]
    fn short_reply_has_no_destination_and_bad_version_is_an_error() {
        let v = parse(&[
            1,
            Protocol::Http2.wire(),
            classifier_common::SOURCE_DEFAULT_PORT,
            0,
            0,
            0,
            0,
            0,
        ])
        .unwrap();
        assert_eq!(v.protocol, Protocol::Http2);
        assert_eq!(v.original_dst, None);
        assert!(parse(&[2, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse(&[1, 0, 0]).is_err());
    }
}

//! Ask the traffic classifier what protocol the connection behind an
//! accepted socket speaks, so a proxy can skip protocol detection.
//!
//! This crate is the proxy's side of the query contract and its
//! specification. It needs no privilege, no bpffs and no agent to talk to:
//! the answer comes from the classifier's `cgroup/getsockopt` program, which
//! answers one socket option on the socket the caller already holds. It
//! depends on `std`, `libc` and the wire types of `classifier-common` only,
//! so a proxy can link it without pulling in aya, kube, tokio or hyper.
//!
//! ```no_run
//! use std::net::TcpListener;
//!
//! use classifier_client::{query_checked, Protocol};
//!
//! # fn main() -> std::io::Result<()> {
//! let listener = TcpListener::bind("127.0.0.1:4143")?;
//! let (stream, _peer) = listener.accept()?;
//! // Behind an iptables REDIRECT this is SO_ORIGINAL_DST; without one, the
//! // accepted socket's local address.
//! let original_dst = stream.local_addr()?;
//! match query_checked(&stream, original_dst)? {
//!     Some(v) if v.protocol == Protocol::Opaque => { /* forward at once */ }
//!     Some(v) if v.ambiguous => { /* no verdict could be given: detect */ }
//!     Some(_) => { /* a verdict other than opaque, or none: detect */ }
//!     None => { /* no classifier on this node: detect as usual */ }
//! }
//! # Ok(()) }
//! ```
//!
//! # The call
//!
//! `getsockopt(fd, 0xC1A5, 1, buf, &len)` on an accepted TCP socket
//! ([`QUERY_LEVEL`], [`QUERY_OPTNAME`]), with `len` at least
//! [`REPLY_MIN_LEN`] (8) and best [`REPLY_LEN`] (32).
//!
//! - With no classifier loaded, the kernel does not know level `0xC1A5` and
//!   the call fails with `ENOPROTOOPT` (or `EOPNOTSUPP`): [`query`] returns
//!   `Ok(None)`.
//! - On a socket that is not a connected TCP socket (UDP, listening, closed),
//!   or with a buffer shorter than 8 bytes, the classifier does not answer
//!   and the kernel's own error is returned: also `Ok(None)` here.
//! - Otherwise the call succeeds and `len` is 32, or 8 when the buffer held
//!   fewer than 32 bytes (the first 8 bytes of the reply only).
//!
//! The key is the accepted socket's peer address and the network namespace
//! it lives in: the caller learns about the connection it holds and nothing
//! else.
//!
//! # The reply
//!
//! | Bytes  | Field        | Meaning |
//! |--------|--------------|---------|
//! | 0      | version      | [`REPLY_VERSION`] (1); any other value: a layout this crate does not know (an error). |
//! | 1      | protocol     | [`Protocol`]: 0 detect (no verdict), 1 opaque, 2 http1, 3 http2; unknown values read as detect. |
//! | 2      | source       | [`Source`]: 0 none, 1 default opaque port, 2 policy rule, 3 learned server-first destination; unknown values read as none. |
//! | 3      | flags        | bit 0 destination is IPv4, bit 1 the client's socket was also marked (`SO_MARK`), bit 2 ambiguous. |
//! | 4..8   | rule id      | `u32`, native byte order: the deciding rule, 0 unless the source is a rule. |
//! | 8..12  | generation   | `u32`, native byte order: the policy generation the verdict was taken under, 0 without a verdict. |
//! | 12..14 | port         | the destination port the client connected to, network byte order. |
//! | 14..16 | reserved     | zero. |
//! | 16..32 | address      | the destination address; IPv4 as `::ffff:a.b.c.d` with flag bit 0 set. |
//!
//! A reply with source 0 carries no verdict: run detection as usual.
//! Ambiguous (flag bit 2) means another live connection shares the client's
//! address and port, so the classifier cannot tell which one the caller
//! holds and gives no verdict.
//!
//! # Checking the destination
//!
//! Behind a REDIRECT the proxy sees the client's address as the peer. Should
//! a NAT have remapped a clashing source port onto another connection's,
//! the reply would be for another destination. [`query_checked`] compares
//! bytes 12..32 with the destination the proxy knows (`SO_ORIGINAL_DST`) and
//! turns a mismatch into "no verdict" (and `ambiguous`): detection as usual
//! rather than a wrong answer. A proxy that makes the call itself does the
//! same with [`parse`] and [`checked`].
//!
//! # Compatibility
//!
//! Bytes 0..8 are the short reply and never move; a later layout with more
//! fields bumps byte 0. The byte values are pinned by the layout tests of
//! `classifier-common`, which the kernel programs share.
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

pub use classifier_common::{
    Protocol, Source, QUERY_LEVEL, QUERY_OPTNAME, REPLY_LEN, REPLY_MIN_LEN, REPLY_VERSION,
};
use classifier_common::{REPLY_FLAG_AMBIGUOUS, REPLY_FLAG_DST_IPV4, REPLY_FLAG_MARKED};

mod sys;

/// The classifier's answer for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What the connection speaks; [`Protocol::Detect`] without a verdict.
    pub protocol: Protocol,
    /// Where the verdict came from; [`Source::None`] without a verdict.
    pub source: Source,
    /// The deciding rule's id when `source` is [`Source::Rule`], else 0.
    pub rule_id: u32,
    /// The classifier also set `SO_MARK` on the client's socket.
    pub marked: bool,
    /// Another live connection shares the client's address and port (or,
    /// after [`checked`], the verdict was for another destination), so no
    /// verdict is given: `protocol` is `Detect`.
    pub ambiguous: bool,
    /// Policy generation the verdict was taken under (0 without a verdict).
    pub generation: u32,
    /// The destination the client asked for; compare with `SO_ORIGINAL_DST`.
    /// `None` without a verdict or in a short (8-byte) reply.
    pub original_dst: Option<SocketAddr>,
}

impl Verdict {
    /// Forward the bytes at once: the connection is opaque.
    pub fn skip_detection(&self) -> bool {
        self.protocol == Protocol::Opaque
    }
}

/// Asks the classifier about the connection behind `socket` (an accepted
/// TCP socket).
///
/// `Ok(None)`: no classifier answered (none is loaded, or the socket is not
/// a connected TCP socket). `Ok(Some(v))`: the classifier answered; without
/// a verdict `v.protocol` is `Detect`. `Err`: any other getsockopt error, or
/// a reply in a layout this crate does not know.
pub fn query(socket: &impl AsRawFd) -> io::Result<Option<Verdict>> {
    let mut buf = [0u8; REPLY_LEN];
    match sys::getsockopt(socket.as_raw_fd(), QUERY_LEVEL, QUERY_OPTNAME, &mut buf) {
        Ok(len) => parse(&buf[..len.min(REPLY_LEN)]).map(Some),
        Err(err) => match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT) => Ok(None),
            _ => Err(err),
        },
    }
}

/// [`query`], cross-checked against the destination the proxy knows the
/// client asked for (`SO_ORIGINAL_DST` behind a REDIRECT, else the accepted
/// socket's local address); see [`checked`].
pub fn query_checked(
    socket: &impl AsRawFd,
    original_dst: SocketAddr,
) -> io::Result<Option<Verdict>> {
    Ok(query(socket)?.map(|verdict| checked(verdict, original_dst)))
}

/// The check [`query_checked`] makes, on a verdict already read: a verdict
/// for another destination than `original_dst` becomes no verdict
/// (`Detect`, source none, `ambiguous`). Addresses compare IPv4-mapped
/// IPv6 equal to IPv4, and ignore an IPv6 flow label and scope id.
pub fn checked(verdict: Verdict, original_dst: SocketAddr) -> Verdict {
    let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
    match verdict.original_dst {
        Some(dst) if canonical(dst) != canonical(original_dst) => Verdict {
            protocol: Protocol::Detect,
            source: Source::None,
            rule_id: 0,
            marked: false,
            ambiguous: true,
            generation: verdict.generation,
            original_dst: Some(dst),
        },
        _ => verdict,
    }
}

/// Decodes a reply of [`REPLY_MIN_LEN`] to [`REPLY_LEN`] bytes (for proxies
/// that make the getsockopt call themselves, and for tests).
pub fn parse(bytes: &[u8]) -> io::Result<Verdict> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("classifier reply: {why}"),
        )
    };
    if bytes.len() < REPLY_MIN_LEN {
        return Err(bad(format!(
            "{} bytes, shorter than the {REPLY_MIN_LEN} of the shortest reply",
            bytes.len()
        )));
    }
    if bytes[0] != REPLY_VERSION {
        return Err(bad(format!(
            "unknown layout version {} (this client reads {REPLY_VERSION})",
            bytes[0]
        )));
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let flags = bytes[3];
    let source = Source::from_wire(bytes[2]);
    let original_dst = (bytes.len() >= REPLY_LEN && source != Source::None).then(|| {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&bytes[16..32]);
        let v6 = Ipv6Addr::from(addr);
        let ip = if flags & REPLY_FLAG_DST_IPV4 == 0 {
            IpAddr::V6(v6)
        } else {
            v6.to_canonical()
        };
        SocketAddr::new(ip, u16::from_be_bytes([bytes[12], bytes[13]]))
    });
    Ok(Verdict {
        protocol: Protocol::from_wire(bytes[1]),
        source,
        rule_id: if source == Source::Rule { u32_at(4) } else { 0 },
        marked: flags & REPLY_FLAG_MARKED != 0,
        ambiguous: flags & REPLY_FLAG_AMBIGUOUS != 0,
        // A short reply stops before the generation.
        generation: if bytes.len() >= 12 { u32_at(8) } else { 0 },
        original_dst,
    })
}

#[cfg(test)]
mod tests;

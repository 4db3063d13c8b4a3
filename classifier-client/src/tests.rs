use std::net::{Ipv4Addr, SocketAddr};

use super::*;

/// A full reply as the kernel writes it.
fn reply(protocol: Protocol, source: Source, flags: u8, rule_id: u32, dst: SocketAddr) -> [u8; 32] {
    let mut b = [0u8; REPLY_LEN];
    b[0] = REPLY_VERSION;
    b[1] = protocol.wire();
    b[2] = source.wire();
    b[3] = flags;
    b[4..8].copy_from_slice(&rule_id.to_ne_bytes());
    b[8..12].copy_from_slice(&3u32.to_ne_bytes());
    b[12..14].copy_from_slice(&dst.port().to_be_bytes());
    b[16..32].copy_from_slice(&match dst.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    });
    b
}

#[test]
fn parses_a_full_reply() {
    let dst: SocketAddr = "203.0.113.9:3306".parse().unwrap();
    let v = parse(&reply(
        Protocol::Opaque,
        Source::Rule,
        REPLY_FLAG_DST_IPV4,
        7,
        dst,
    ))
    .unwrap();
    assert_eq!(v.protocol, Protocol::Opaque);
    assert_eq!((v.source, v.rule_id), (Source::Rule, 7));
    assert_eq!(v.generation, 3);
    assert_eq!(v.original_dst, Some(dst));
    assert!(v.skip_detection() && !v.marked && !v.ambiguous);
}

#[test]
fn learned_source_is_byte_3() {
    let dst: SocketAddr = "10.0.0.9:2222".parse().unwrap();
    let bytes = reply(
        Protocol::Opaque,
        Source::Learned,
        REPLY_FLAG_DST_IPV4,
        0,
        dst,
    );
    assert_eq!(bytes[2], 3);
    let v = parse(&bytes).unwrap();
    assert_eq!(v.source, Source::Learned);
    assert_eq!(v.original_dst, Some(dst));
}

#[test]
fn ipv6_destination_and_flags() {
    let dst: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let flags = REPLY_FLAG_MARKED;
    let v = parse(&reply(Protocol::Http2, Source::DefaultPort, flags, 0, dst)).unwrap();
    assert_eq!(v.original_dst, Some(dst));
    assert!(v.marked);
    assert_eq!(v.rule_id, 0);
}

#[test]
fn short_reply_has_no_destination_and_bad_version_is_an_error() {
    let v = parse(&[
        1,
        Protocol::Http2.wire(),
        Source::DefaultPort.wire(),
        0,
        0,
        0,
        0,
        0,
    ])
    .unwrap();
    assert_eq!(v.protocol, Protocol::Http2);
    assert_eq!(v.original_dst, None);
    let err = parse(&[2, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
    assert!(
        err.to_string().contains("unknown layout version 2"),
        "{err}"
    );
    assert!(parse(&[1, 0, 0]).is_err());
}

#[test]
fn unknown_protocol_and_source_bytes_read_as_no_verdict() {
    let v = parse(&[1, 9, 9, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!((v.protocol, v.source), (Protocol::Detect, Source::None));
}

#[test]
fn a_verdict_for_another_destination_becomes_none() {
    let dst: SocketAddr = "203.0.113.9:3306".parse().unwrap();
    let v = parse(&reply(
        Protocol::Opaque,
        Source::Rule,
        REPLY_FLAG_DST_IPV4,
        7,
        dst,
    ))
    .unwrap();
    // The same destination, as a dual-stack socket reports it: kept.
    let mapped = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped()),
        3306,
    );
    assert_eq!(checked(v, mapped), v);
    let other = checked(v, "203.0.113.9:3307".parse().unwrap());
    assert_eq!(
        (other.protocol, other.source, other.rule_id),
        (Protocol::Detect, Source::None, 0)
    );
    assert!(other.ambiguous && !other.skip_detection());
}

#[test]
fn no_classifier_is_none() {
    // A socket on a machine (or cgroup) without the classifier's program:
    // the kernel does not know the option level.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    // A test runner may sit in a cgroup where the classifier is loaded; then
    // the answer is a reply, never an error.
    assert!(query(&server).is_ok());
    drop(client);
}

//! `cgroup/getsockopt`: answer `getsockopt(fd, QUERY_LEVEL, QUERY_OPTNAME)`
//! on a proxy's accepted socket with the verdict published for its peer.
//! Any other option passes through untouched.
//!
//! The socket's own peer address is the only key, so a caller learns about
//! the connection it holds and nothing else; and only a connected TCP
//! socket is answered: a UDP socket, or a TCP socket that is not (or no
//! longer) connected, gets the kernel's own error, as if no classifier
//! were loaded.

use core::ptr::{read_volatile, write_unaligned, write_volatile};

use aya_ebpf::{
    bindings::bpf_sockopt, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext, EbpfContext,
};
use classifier_common::{
    counters as c, ConnKey, QueryReply, PROTO_UNKNOWN, QUERY_LEVEL, QUERY_OPTNAME, REPLY_LEN,
    REPLY_MIN_LEN, REPLY_VERSION, SOURCE_NONE,
};

use crate::{
    addr::{v4_mapped, v6_bytes},
    maps::{count, CLS_VERDICTS},
};

/// Let the call return to the caller (0 would turn it into EPERM).
const PASS: i32 = 1;
const AF_INET: u32 = 2;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
// `BPF_TCP_ESTABLISHED` and `BPF_TCP_CLOSE_WAIT` (the client already sent
// its FIN): the states of a connected socket the proxy may query.
use aya_ebpf::bindings::{
    BPF_TCP_CLOSE_WAIT as TCP_CLOSE_WAIT, BPF_TCP_ESTABLISHED as TCP_ESTABLISHED,
};

#[cgroup_sockopt(getsockopt)]
pub fn answer_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: level and optname are readable in getsockopt programs.
    let (level, optname) = unsafe { (read_volatile(&(*so).level), read_volatile(&(*so).optname)) };
    if level != QUERY_LEVEL || optname != QUERY_OPTNAME {
        // Someone else's option. Kernels before 6.5 turn a buffer over a
        // page into EFAULT unless the program sets optlen to 0 ("use the
        // kernel's own answer"); on later kernels this is a no-op.
        // SAFETY: optlen is readable and writable in getsockopt programs.
        unsafe {
            if read_volatile(&(*so).optlen) > PAGE_SIZE {
                write_volatile(&mut (*so).optlen, 0);
            }
        }
        return PASS;
    }
    answer(&ctx, so);
    PASS
}

const PAGE_SIZE: i32 = 4096;

#[inline(always)]
#[expect(
    clippy::too_many_lines,
    reason = "the body of the getsockopt program: the verifier checks it as one piece, the optval bounds check in the same scope as the write it guards"
)]
fn answer(ctx: &SockoptContext, so: *mut bpf_sockopt) {
    // SAFETY: sk, optval and optval_end are valid context fields.
    let (sk, optval, end) = unsafe {
        (
            read_volatile(&(*so).__bindgen_anon_1.sk),
            read_volatile(&(*so).__bindgen_anon_2.optval) as *mut u8,
            read_volatile(&(*so).__bindgen_anon_3.optval_end) as *mut u8,
        )
    };
    if sk.is_null() {
        return;
    }
    // One volatile load per field, straight off the socket pointer (the
    // verifier rejects loads through an offset copy of it).
    // SAFETY: sk is a non-null bpf_sock of the calling socket.
    let (type_, protocol, state) = unsafe {
        (
            read_volatile(&(*sk).type_),
            read_volatile(&(*sk).protocol),
            read_volatile(&(*sk).state),
        )
    };
    if type_ != SOCK_STREAM
        || protocol != IPPROTO_TCP
        || (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
    {
        count(c::QUERY_NOT_CONNECTED);
        return;
    }
    // SAFETY: as above.
    let (family, peer_port_be, ip4, ip6) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).dst_port),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
        )
    };
    let addr = if family == AF_INET {
        v4_mapped(ip4)
    } else {
        v6_bytes(ip6)
    };
    let key = ConnKey {
        // SAFETY: the helper accepts a sockopt context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        port: u16::from_be(peer_port_be),
        _pad: [0; 6],
    };

    let mut reply = QueryReply {
        version: REPLY_VERSION,
        ..QueryReply::default()
    };
    match CLS_VERDICTS.get_ptr(key) {
        Some(v) => {
            // SAFETY: live map value, copied out at once.
            let v = unsafe { *v };
            reply.protocol = v.protocol;
            reply.source = v.source;
            reply.flags = v.flags;
            reply.rule_id = v.rule_id;
            reply.generation = v.generation;
            reply.dst_port_be = v.dst_port_be;
            reply.dst_addr = v.dst_addr;
            // An ambiguity marker carries protocol 0 and source 0 already.
        }
        None => {
            reply.protocol = PROTO_UNKNOWN;
            reply.source = SOURCE_NONE;
        }
    }

    let written = if optval as usize + REPLY_LEN <= end as usize {
        // SAFETY: bounds checked against optval_end just above.
        unsafe { write_unaligned(optval as *mut QueryReply, reply) };
        REPLY_LEN
    } else if optval as usize + REPLY_MIN_LEN <= end as usize {
        let head: [u8; REPLY_MIN_LEN] = {
            let id = reply.rule_id.to_ne_bytes();
            [
                reply.version,
                reply.protocol,
                reply.source,
                reply.flags,
                id[0],
                id[1],
                id[2],
                id[3],
            ]
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe { write_unaligned(optval as *mut [u8; REPLY_MIN_LEN], head) };
        REPLY_MIN_LEN
    } else {
        // Too short for any reply: leave the kernel's own error in place.
        count(c::QUERY_BAD_BUFFER);
        return;
    };
    count(if reply.source == SOURCE_NONE {
        c::QUERY_UNKNOWN
    } else {
        c::QUERY_CLASSIFIED
    });

    // Two volatile stores, which LLVM may not merge: a merged 8-byte store to
    // optlen and retval is rejected by the verifier.
    // SAFETY: optlen and retval are writable in getsockopt programs.
    unsafe {
        write_volatile(&mut (*so).optlen, written as i32);
        write_volatile(&mut (*so).retval, 0);
    }
}

//! `sockops`: move a socket's connect-time verdict to the published table
//! once its local port is chosen (`TCP_CONNECT_CB`, just before the SYN),
//! keyed by (network namespace, local address, local port): that is the
//! peer a proxy sees on the socket it accepted through a REDIRECT. The entry
//! is withdrawn when the connection closes.
//!
//! A verdict is published only if it was taken for the destination the
//! socket is connecting to (the socket's remote address), so a verdict can
//! never describe another connect of the same socket.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext,
};
use classifier_common::{
    counters as c, inflight_slot, ConnKey, ConnVerdict, INFLIGHT_LEARN_WATCH, INFLIGHT_VERDICT,
    REPLY_FLAG_AMBIGUOUS, SOURCE_LEARNED,
};

use crate::{
    addr::{v4_mapped, v6_bytes},
    maps::{
        compare_exchange, count, netns_verdicts, netns_verdicts_add, netns_verdicts_sub,
        verdicts_per_netns, BPF_NOEXIST, CLS_INFLIGHT, CLS_VERDICTS,
    },
};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn publish_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => publish(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => start_watch(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => withdraw(&ctx),
        // Learning: only sockets `learn::watch` switched on.
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => crate::learn::on_header_option(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn publish(ctx: &SockOpsContext) {
    // SAFETY: the helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(inflight) = CLS_INFLIGHT.get_ptr_mut(inflight_slot(cookie)) else {
        count(c::ERR_INFLIGHT);
        return;
    };
    // The slot is this socket's only if it carries its cookie. Its connect
    // wrote it on this thread, so a plain read sees it; the common case,
    // an unclassified connect, stops here.
    // SAFETY: a live array value; owner_cookie and inflight_kind are read
    // whole.
    if unsafe {
        read_volatile(&(*inflight).owner_cookie) != cookie
            || read_volatile(&(*inflight).inflight_kind) != INFLIGHT_VERDICT
    } {
        // No verdict: the common case. A learning watch record stays for
        // `start_watch`.
        return;
    }
    // SAFETY: a live array value, copied out.
    let mut verdict = unsafe { *inflight };
    // Used once, and ours only if it still carries our cookie after the
    // copy: a connect of another socket whose cookie selects the same slot
    // clears the cookie (a fully ordered exchange) before it writes the
    // fields, so if the copy saw any of its fields, this fails.
    // SAFETY: owner_cookie is an aligned u64 of a live array value.
    if !compare_exchange(unsafe { &raw mut (*inflight).owner_cookie }, cookie, 0) {
        return;
    }
    verdict.owner_cookie = cookie;
    if !is_remote(ctx, &verdict) {
        count(c::PUBLISH_DST_MISMATCH);
        return;
    }
    let learn_scope = verdict.learn_scope;
    verdict.learn_scope = 0;
    publish_verdict(ctx, &verdict);
    if verdict.source == SOURCE_LEARNED {
        // Watched for contradiction whether or not it could be published:
        // a learned verdict the table had no room for is still one the
        // client-first evidence must be able to remove.
        verdict.learn_scope = learn_scope;
        crate::learn::watch(ctx, cookie, &verdict);
    }
}

/// `ACTIVE_ESTABLISHED_CB`: a connection without a verdict that learning
/// wants watched (a watch record in its in-flight slot) is established:
/// start the watch now. A connect refused or never answered never gets
/// here, so it costs no entry in the watch table.
#[inline(always)]
fn start_watch(ctx: &SockOpsContext) {
    // SAFETY: the helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(inflight) = CLS_INFLIGHT.get_ptr_mut(inflight_slot(cookie)) else {
        return;
    };
    // SAFETY: as in `publish`.
    if unsafe {
        read_volatile(&(*inflight).owner_cookie) != cookie
            || read_volatile(&(*inflight).inflight_kind) != INFLIGHT_LEARN_WATCH
    } {
        return;
    }
    // SAFETY: a live array value, copied out.
    let record = unsafe { *inflight };
    // SAFETY: owner_cookie is an aligned u64 of a live array value.
    if !compare_exchange(unsafe { &raw mut (*inflight).owner_cookie }, cookie, 0) {
        return;
    }
    if !is_remote(ctx, &record) {
        return;
    }
    crate::learn::watch(ctx, cookie, &record);
}

/// Enters `verdict` in the published table under the socket's local
/// address, within its namespace's share.
#[inline(always)]
fn publish_verdict(ctx: &SockOpsContext, verdict: &ConnVerdict) {
    let key = local_key(ctx);
    let share = verdicts_per_netns();
    let within_share = share == 0 || netns_verdicts(key.netns_cookie) < share;
    if within_share && CLS_VERDICTS.insert(key, *verdict, BPF_NOEXIST).is_ok() {
        if !netns_verdicts_add(key.netns_cookie) {
            // Not counted (the namespace table is full): an uncounted
            // entry would escape the share, so it goes again.
            let _ = CLS_VERDICTS.remove(key);
            count(c::PUBLISH_TABLE_FULL);
            return;
        }
        count(c::PUBLISHED);
    } else {
        if CLS_VERDICTS.get_ptr(key).is_none() {
            // A new entry was not allowed (the namespace's share is used
            // up) or did not fit (the table is full): no verdict, the
            // proxy detects as usual. Nobody else's entry is touched.
            count(if within_share {
                c::PUBLISH_TABLE_FULL
            } else {
                c::PUBLISH_NETNS_FULL
            });
            return;
        }
        // (Whatever the share: the entry there must not answer for this
        // connection too.)
        // Another live connection has the same local address and port (to
        // another destination). A proxy could not tell the two apart, so
        // neither gets a verdict: detection as usual beats a wrong answer.
        let marker = ConnVerdict {
            flags: REPLY_FLAG_AMBIGUOUS,
            ..ConnVerdict::default()
        };
        if CLS_VERDICTS.insert(key, marker, 0).is_err() {
            count(c::ERR_PUBLISH_INSERT);
            return;
        }
        count(c::PUBLISHED);
        count(c::PUBLISH_AMBIGUOUS);
    }
    // Ask for state changes on this socket only, to see it close.
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .is_err()
    {
        count(c::ERR_CB_FLAGS);
    }
}

#[inline(always)]
fn withdraw(ctx: &SockOpsContext) {
    let key = local_key(ctx);
    // SAFETY: the helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let ours = match CLS_VERDICTS.get_ptr(key) {
        // SAFETY: live map value, read at once.
        Some(v) => unsafe { (*v).owner_cookie == cookie || (*v).flags & REPLY_FLAG_AMBIGUOUS != 0 },
        None => false,
    };
    // An entry of another connection (ours was never published, and the
    // port then reused) is left alone.
    if ours && CLS_VERDICTS.remove(key).is_ok() {
        count(c::UNPUBLISHED);
        netns_verdicts_sub(key.netns_cookie);
    } else {
        count(c::UNPUBLISH_MISSING);
    }
}

/// Whether `verdict` was taken for the socket's remote address and port.
#[inline(always)]
fn is_remote(ctx: &SockOpsContext, verdict: &ConnVerdict) -> bool {
    let ops = ctx.ops;
    // SAFETY: these fields are readable in sockops programs.
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
            read_volatile(&(*ops).remote_port),
        )
    };
    let addr = if family == AF_INET {
        v4_mapped(ip4)
    } else {
        v6_bytes(ip6)
    };
    // remote_port holds the port as stored in the socket (network byte
    // order) in its upper 16 bits on little-endian machines, the lower 16
    // on big-endian ones.
    #[cfg(target_endian = "little")]
    let port_be = (port >> 16) as u16;
    #[cfg(target_endian = "big")]
    let port_be = port as u16;
    port_be == verdict.dst_port_be && same_addr(&addr, &verdict.dst_addr)
}

/// Byte-wise, unrolled: a slice comparison may become a `bcmp` call, which
/// eBPF does not have.
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < 16 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

#[inline(always)]
fn local_key(ctx: &SockOpsContext) -> ConnKey {
    let ops = ctx.ops;
    // Each field is read with its own volatile load straight off the context
    // pointer: the verifier rejects a load through a context pointer that
    // the compiler has offset and kept in a register.
    // SAFETY: these fields are readable in sockops programs.
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
        )
    };
    ConnKey {
        // SAFETY: the helper accepts a sock_ops context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr: if family == AF_INET {
            v4_mapped(ip4)
        } else {
            v6_bytes(ip6)
        },
        // local_port is in host byte order in bpf_sock_ops.
        port: port as u16,
        _pad: [0; 6],
    }
}

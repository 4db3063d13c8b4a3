//! `cgroup/connect4` and `cgroup/connect6`: classify the destination of a
//! TCP connect() and remember the verdict under the socket's cookie until
//! `publish` can key it by the 4-tuple.
//!
//! Cost per connect, whatever the policy size: one array read (active slot),
//! one for the slot's config, one hash lookup (excluded UIDs), one LPM trie
//! lookup, one bitmap word, one hash update (pending) and the port counter.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use classifier_common::{
    counters as c, excluded_uid_key, ConnVerdict, PolicyConfig, CONFIG_FLAG_MARK,
    DEFAULT_PORT_WORDS, PROTO_HTTP1, PROTO_HTTP2, PROTO_OPAQUE, REPLY_FLAG_DST_IPV4,
    REPLY_FLAG_MARKED, RULE_KEY_FIXED_BITS, RULE_MATCH, SOURCE_DEFAULT_PORT, SOURCE_RULE,
};

use crate::{
    addr::{is_v4_mapped, v4_mapped, v6_bytes},
    maps::{
        count, CLS_ACTIVE_SLOT, CLS_DEFAULT_PORTS, CLS_EXCLUDED_UIDS, CLS_PENDING,
        CLS_POLICY_CONFIG, CLS_PORT_COUNTS, CLS_RULES_V4, CLS_RULES_V6,
    },
};

/// Return value that lets the connect() proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

#[cgroup_sock_addr(connect4)]
pub fn classify_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if !is_tcp(sa) {
        count(c::NOT_TCP);
        return ALLOW;
    }
    count(c::CONNECT4);
    // SAFETY: ctx fields are readable in connect4 programs.
    let (ip, port) = unsafe {
        (
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
        )
    };
    classify(&ctx, v4_mapped(ip), true, port_from_ctx(port));
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn classify_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if !is_tcp(sa) {
        count(c::NOT_TCP);
        return ALLOW;
    }
    // SAFETY: as above; user_ip6 is read one 32-bit word at a time, the
    // access width every kernel accepts.
    let (words, port) = unsafe {
        (
            [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ],
            read_volatile(&(*sa).user_port),
        )
    };
    let dst = v6_bytes(words);
    let mapped = is_v4_mapped(&dst);
    count(if mapped {
        c::CONNECT6_V4MAPPED
    } else {
        c::CONNECT6
    });
    classify(&ctx, dst, mapped, port_from_ctx(port));
    ALLOW
}

#[inline(always)]
fn is_tcp(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: type and protocol are readable in sock_addr programs.
    unsafe {
        read_volatile(&(*sa).type_) == SOCK_STREAM && read_volatile(&(*sa).protocol) == IPPROTO_TCP
    }
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
fn port_from_ctx(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

#[inline(always)]
fn classify(ctx: &SockAddrContext, dst: [u8; 16], is_v4: bool, port: u16) {
    let Some(slot) = CLS_ACTIVE_SLOT.get(0) else {
        count(c::ERR_CONFIG);
        return;
    };
    // Read the slot once: every lookup below uses this copy, so a policy
    // switch in the middle of this connect cannot mix two policies.
    let slot = *slot & 1;
    let Some(config) = CLS_POLICY_CONFIG.get(slot) else {
        count(c::ERR_CONFIG);
        return;
    };
    // No policy applied yet (generation 0): nothing to classify against.
    if config.generation == 0 {
        count(c::NO_VERDICT);
        return;
    }

    let uid = bpf_get_current_uid_gid() as u32;
    if CLS_EXCLUDED_UIDS
        .get_ptr(excluded_uid_key(slot, uid))
        .is_some()
    {
        count(c::EXCLUDED);
        return;
    }
    count_port(port);

    let (protocol, source, rule_id) = match lookup_rule(slot as u8, &dst, is_v4, port) {
        Some((protocol, rule_id)) => (protocol, SOURCE_RULE, rule_id),
        None if is_default_opaque(slot, port) => (PROTO_OPAQUE, SOURCE_DEFAULT_PORT, 0),
        None => {
            count(c::NO_VERDICT);
            return;
        }
    };
    count(match protocol {
        PROTO_OPAQUE => c::VERDICT_OPAQUE,
        PROTO_HTTP1 => c::VERDICT_HTTP1,
        PROTO_HTTP2 => c::VERDICT_HTTP2,
        _ => c::VERDICT_DETECT,
    });
    count(if source == SOURCE_RULE {
        c::SOURCE_RULE
    } else {
        c::SOURCE_DEFAULT_PORT
    });

    let mut flags = if is_v4 { REPLY_FLAG_DST_IPV4 } else { 0 };
    if protocol == PROTO_OPAQUE && config.flags & CONFIG_FLAG_MARK != 0 && set_mark(ctx, config) {
        flags |= REPLY_FLAG_MARKED;
    }

    let verdict = ConnVerdict {
        protocol,
        source,
        flags,
        _pad: 0,
        rule_id,
        generation: config.generation,
        dst_port_be: port.to_be(),
        _pad2: 0,
        dst_addr: dst,
        // Set when published, where the cookie is needed anyway.
        owner_cookie: 0,
    };
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CLS_PENDING.insert(cookie, verdict, 0).is_err() {
        count(c::ERR_PENDING_INSERT);
    }
}

/// The rule verdict for (dst, port) in `slot`: `Some((protocol, rule id))`
/// when a rule decides (`PROTO_UNKNOWN` for a `detect` override), `None` to
/// fall through to the default ports.
#[inline(always)]
fn lookup_rule(slot: u8, dst: &[u8; 16], is_v4: bool, port: u16) -> Option<(u8, u32)> {
    let p = port.to_be_bytes();
    let hit = if is_v4 {
        let key = Key::new(
            RULE_KEY_FIXED_BITS + 32,
            [slot, p[0], p[1], dst[12], dst[13], dst[14], dst[15]],
        );
        CLS_RULES_V4.get(&key).copied()
    } else {
        let mut data = [0u8; 19];
        data[0] = slot;
        data[1] = p[0];
        data[2] = p[1];
        data[3..].copy_from_slice(dst);
        CLS_RULES_V6
            .get(&Key::new(RULE_KEY_FIXED_BITS + 128, data))
            .copied()
    };
    match hit {
        Some(v) if v.kind == RULE_MATCH => Some((v.protocol, v.rule_id)),
        _ => None,
    }
}

#[inline(always)]
fn is_default_opaque(slot: u32, port: u16) -> bool {
    let index = slot * DEFAULT_PORT_WORDS + u32::from(port / 64);
    match CLS_DEFAULT_PORTS.get(index) {
        Some(word) => word & (1u64 << (port % 64)) != 0,
        None => false,
    }
}

#[inline(always)]
fn count_port(port: u16) {
    let key = u32::from(port);
    match CLS_PORT_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of a live per-CPU map value.
        Some(value) => unsafe { *value += 1 },
        None => {
            // First connect to this port on this CPU (or the table is full).
            if CLS_PORT_COUNTS.insert(key, 1, 0).is_err() {
                count(c::ERR_PORT_COUNT);
            }
        }
    }
}

/// Sets `SO_MARK` bits `value` under `mask`, keeping the socket's other mark
/// bits. Returns whether the mark was set.
#[inline(always)]
fn set_mark(ctx: &SockAddrContext, config: &PolicyConfig) -> bool {
    let mut mark: u32 = 0;
    // SAFETY: both helpers are allowed in sock_addr programs; the buffers
    // are live u32s of the size passed.
    unsafe {
        if bpf_getsockopt(ctx.as_ptr(), SOL_SOCKET, SO_MARK, (&raw mut mark).cast(), 4) != 0 {
            mark = 0;
        }
        mark = (mark & !config.mark_mask) | (config.mark_value & config.mark_mask);
        if bpf_setsockopt(ctx.as_ptr(), SOL_SOCKET, SO_MARK, (&raw mut mark).cast(), 4) != 0 {
            count(c::ERR_MARK);
            return false;
        }
    }
    count(c::MARK_SET);
    true
}

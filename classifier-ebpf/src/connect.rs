//! `cgroup/connect4` and `cgroup/connect6`: classify the destination of a
//! TCP connect() and leave the verdict in the socket's in-flight slot
//! (`CLS_INFLIGHT`, selected by its cookie) until `publish` can key it by
//! the 4-tuple, just before the SYN in the same connect() call.
//!
//! Every connect first forgets what an earlier connect of the same socket
//! decided (a connect that failed before its SYN, or one undone with
//! `connect(AF_UNSPEC)`): its in-flight verdict, and, in mark mode, the
//! classifier's `SO_MARK` bits unless this connect is marked again.
//!
//! Cost per connect, whatever the policy size: one array read (in-flight
//! slot), one (active slot), one for the slot's config, one hash lookup
//! (excluded UIDs, only when the policy excludes two or more; one is
//! compared in place), one to four LPM
//! trie lookups (exact and wildcard port, in two universes: the client's
//! scope and the node-wide rules, or the node-wide rules and the global
//! EgressNetworks; only those the policy needs), up to `MAX_CGROUP_LEVEL`
//! scope lookups, at most once per connect (`scope`) and only for scoped
//! policies or learning (a connect from a pod the agent has not registered
//! yet stops there, without a verdict), one bitmap word, the port counter,
//! and for a connect without a verdict learning's lookup (only while
//! something is learned); in mark mode one SO_MARK read.

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
    counters as c, excluded_uid_key, inflight_slot, rule_key_v4, rule_key_v6, ConnVerdict,
    PolicyConfig, Protocol, RuleVerdict, Source, CONFIG_FLAG_ANY_PORT, CONFIG_FLAG_GLOBAL_EGRESS,
    CONFIG_FLAG_MARK, CONFIG_FLAG_ONE_EXCLUDED_UID, CONFIG_FLAG_SCOPED, DEFAULT_PORT_WORDS,
    INFLIGHT_LEARN_WATCH, INFLIGHT_VERDICT, PORT_ANY, REPLY_FLAG_DST_IPV4, REPLY_FLAG_MARKED,
    RULE_KEY_FIXED_BITS, RULE_MATCH, SCOPE_GLOBAL_EGRESS, SCOPE_NODE,
};

use crate::{
    addr::{is_v4_mapped, v4_mapped, v6_bytes},
    maps::{
        compare_exchange, count, exchange, CLS_ACTIVE_SLOT, CLS_DEFAULT_PORTS, CLS_EXCLUDED_UIDS,
        CLS_INFLIGHT, CLS_POLICY_CONFIG, CLS_PORT_COUNTS, CLS_RULES_V4, CLS_RULES_V6,
    },
    scope::ClientScope,
};

/// Return value that lets the connect() proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const SOL_SOCKET: i32 = aya_ebpf::bindings::SOL_SOCKET as i32;
const SO_MARK: i32 = aya_ebpf::bindings::SO_MARK as i32;

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
#[expect(
    clippy::too_many_lines,
    reason = "the body of the connect4/6 programs: the verifier checks it as one piece, and its map pointers stay in one scope"
)]
fn classify(ctx: &SockAddrContext, dst: [u8; 16], is_v4: bool, port: u16) {
    // SAFETY: the helper accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(inflight) = CLS_INFLIGHT.get_ptr_mut(inflight_slot(cookie)) else {
        count(c::ERR_INFLIGHT);
        return;
    };
    // An earlier connect of this socket that never reached its SYN left
    // its verdict here: it does not describe this connect.
    // SAFETY: a live array value; owner_cookie is read whole.
    if unsafe { read_volatile(&(*inflight).owner_cookie) } == cookie {
        // SAFETY: owner_cookie is an aligned u64 of a live array value.
        compare_exchange(unsafe { &raw mut (*inflight).owner_cookie }, cookie, 0);
    }
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

    // A policy that excludes no UID skips the hash lookup, and one that
    // excludes a single UID (the default: the proxy's) compares it in
    // place. The count, the flag and the UID are the slot's own, written
    // before the switch to it (UIDs never change in place), so they
    // describe the slot read above.
    if config.excluded_uid_count != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        let excluded = if config.flags & CONFIG_FLAG_ONE_EXCLUDED_UID != 0 {
            uid == config.excluded_uid
        } else {
            CLS_EXCLUDED_UIDS
                .get_ptr(excluded_uid_key(slot, uid))
                .is_some()
        };
        if excluded {
            count(c::EXCLUDED);
            return;
        }
    }
    count_port(port);
    let marking = config.flags & CONFIG_FLAG_MARK != 0;

    let mut scope = ClientScope::new();
    // A pod the agent has not registered yet: its namespace, hence which
    // rules are its, is unknown. In a policy with namespace-scoped rules
    // it gets no verdict at all (the proxy detects, as without the
    // classifier) rather than the verdicts of processes outside pods,
    // which its namespace's own rules may contradict.
    if config.flags & CONFIG_FLAG_SCOPED != 0 && scope.pod_unknown() {
        count(c::POD_UNREGISTERED);
        count(c::NO_VERDICT);
        if marking {
            clear_mark(ctx, config);
        }
        return;
    }
    let rule = lookup_rule(slot as u8, config, &dst, is_v4, port, &mut scope);
    let mut learn_scope = 0;
    let (protocol, source, rule_id) = if rule.kind == RULE_MATCH {
        (
            Protocol::from_wire(rule.protocol),
            Source::Rule,
            rule.rule_id,
        )
    } else if is_default_opaque(slot, port) {
        (Protocol::Opaque, Source::DefaultPort, 0)
    } else {
        // Learning, below rules and default ports.
        let learn = crate::learn::at_connect(&dst, port, &mut scope);
        if learn.learned {
            // A learned server-first destination (watched too, from
            // `publish`).
            learn_scope = learn.scope;
            (Protocol::Opaque, Source::Learned, 0)
        } else {
            count(c::NO_VERDICT);
            if marking {
                clear_mark(ctx, config);
            }
            if learn.watch {
                // Left in the slot for `publish` to start watching once
                // the connection is established.
                let watch = ConnVerdict {
                    inflight_kind: INFLIGHT_LEARN_WATCH,
                    dst_port_be: port.to_be(),
                    learn_scope: learn.scope,
                    dst_addr: dst,
                    ..ConnVerdict::default()
                };
                fill_slot(inflight, &watch, cookie);
            }
            return;
        }
    };
    count(match protocol {
        Protocol::Opaque => c::VERDICT_OPAQUE,
        Protocol::Http1 => c::VERDICT_HTTP1,
        Protocol::Http2 => c::VERDICT_HTTP2,
        Protocol::Detect => c::VERDICT_DETECT,
    });
    count(match source {
        Source::Rule => c::SOURCE_RULE,
        Source::Learned => c::SOURCE_LEARNED,
        _ => c::SOURCE_DEFAULT_PORT,
    });

    let mut flags = if is_v4 { REPLY_FLAG_DST_IPV4 } else { 0 };
    if marking {
        if protocol == Protocol::Opaque {
            if set_mark(ctx, config) {
                flags |= REPLY_FLAG_MARKED;
            }
        } else {
            clear_mark(ctx, config);
        }
    }

    let verdict = ConnVerdict {
        protocol: protocol.wire(),
        source: source as u8,
        flags,
        inflight_kind: INFLIGHT_VERDICT,
        rule_id,
        generation: config.generation,
        dst_port_be: port.to_be(),
        learn_scope,
        dst_addr: dst,
        owner_cookie: 0,
    };
    fill_slot(inflight, &verdict, cookie);
}

/// Writes `record` into the socket's in-flight slot and signs it with the
/// socket's cookie.
#[inline(always)]
fn fill_slot(inflight: *mut ConnVerdict, record: &ConnVerdict, cookie: u64) {
    // Claim the slot (0 first, so a reader never takes the fields being
    // written for its own), write the verdict, then sign it with the
    // cookie. A slot another in-flight socket held is taken over: that
    // socket finds another cookie and publishes nothing (detection as
    // usual, never a wrong verdict). Both exchanges are fully ordered
    // (BPF_XCHG), so on weakly ordered CPUs (arm64) too the fields are
    // written after the slot is cleared and before it is signed; the
    // reader's side is in `publish`.
    // SAFETY: a live array value; owner_cookie is an aligned u64 of it.
    unsafe {
        let owner = &raw mut (*inflight).owner_cookie;
        exchange(owner, 0);
        *inflight = *record;
        exchange(owner, cookie);
    }
}

/// In mark mode the mark bits under the policy's mask are the
/// classifier's (docs/src/proxy/mark-mode.md): a connect that is not marked clears
/// any the socket still carries from an earlier connect.
#[inline(always)]
fn clear_mark(ctx: &SockAddrContext, config: &PolicyConfig) {
    let mut mark: u32 = 0;
    // SAFETY: both helpers are allowed in sock_addr programs; the buffer is
    // a live u32 of the size passed.
    unsafe {
        if bpf_getsockopt(ctx.as_ptr(), SOL_SOCKET, SO_MARK, (&raw mut mark).cast(), 4) != 0 {
            count(c::ERR_MARK);
            return;
        }
        if mark & config.mark_mask == 0 {
            return;
        }
        mark &= !config.mark_mask;
        if bpf_setsockopt(ctx.as_ptr(), SOL_SOCKET, SO_MARK, (&raw mut mark).cast(), 4) != 0 {
            count(c::ERR_MARK);
            return;
        }
    }
    count(c::MARK_CLEARED);
}

/// The rule verdict for (dst, port): the client's namespace scope first (a
/// match there decides, as Linkerd's namespace-local EgressNetworks do),
/// then the node-wide rules, then (for clients without a scope) the global
/// EgressNetworks. A `RULE_MATCH` verdict when a rule decides
/// (`PROTO_UNKNOWN` for a `detect` override), else `RULE_NONE`: fall
/// through to the default ports.
///
/// Verdicts are passed as plain values with `kind` RULE_NONE for "no
/// match", not as `Option`s: LLVM leaves the unused fields of a `None`
/// undefined, and the verifier rejects reading such a register.
#[inline(always)]
fn lookup_rule(
    slot: u8,
    config: &PolicyConfig,
    dst: &[u8; 16],
    is_v4: bool,
    port: u16,
    client: &mut ClientScope,
) -> RuleVerdict {
    // Port 0 is the wildcard's key: a connect to it (meaningless, but
    // possible) must not read wildcard entries as its own. No rule lists
    // port 0, so it has no rule verdict.
    if port == PORT_ANY {
        return RuleVerdict::default();
    }
    let any_port = config.flags & CONFIG_FLAG_ANY_PORT != 0;
    let mut own_rules = false;
    if config.flags & CONFIG_FLAG_SCOPED != 0 {
        let scope = client.id();
        own_rules = client.has_own_rules();
        if scope != SCOPE_NODE {
            let hit = lookup_in_scope(slot, scope, dst, is_v4, port, any_port);
            if hit.kind == RULE_MATCH {
                return hit;
            }
        }
    }
    let hit = lookup_in_scope(slot, SCOPE_NODE, dst, is_v4, port, any_port);
    // Linkerd's global EgressNetworks, unless the client's namespace has
    // its own (flagged in its scope entry): those shadow them even where
    // none matches (linkerd2 policy-controller/k8s/index/src/outbound/index/
    // egress_network.rs, `resolve_egress_network`).
    if hit.kind == RULE_MATCH || own_rules || config.flags & CONFIG_FLAG_GLOBAL_EGRESS == 0 {
        return hit;
    }
    lookup_in_scope(slot, SCOPE_GLOBAL_EGRESS, dst, is_v4, port, any_port)
}

/// One universe of rules: the exact port and, when the policy has any, the
/// wildcard port; the more specific network wins, the exact port on a tie.
#[inline(always)]
fn lookup_in_scope(
    slot: u8,
    scope: u16,
    dst: &[u8; 16],
    is_v4: bool,
    port: u16,
    any_port: bool,
) -> RuleVerdict {
    let exact = trie_get(slot, scope, dst, is_v4, port);
    if !any_port {
        return exact;
    }
    let wildcard = trie_get(slot, scope, dst, is_v4, PORT_ANY);
    if wildcard.kind != RULE_MATCH {
        return exact;
    }
    if exact.kind != RULE_MATCH || wildcard.net_prefix > exact.net_prefix {
        return wildcard;
    }
    exact
}

/// The trie entry for (slot, scope, port, dst), or a `RULE_NONE` verdict.
#[inline(always)]
fn trie_get(slot: u8, scope: u16, dst: &[u8; 16], is_v4: bool, port: u16) -> RuleVerdict {
    // The key packing is classifier-common's, shared with the compiler.
    let hit = if is_v4 {
        let addr = [dst[12], dst[13], dst[14], dst[15]];
        let key = Key::new(
            RULE_KEY_FIXED_BITS + 32,
            rule_key_v4(slot, scope, port, addr),
        );
        CLS_RULES_V4.get(&key)
    } else {
        let key = Key::new(
            RULE_KEY_FIXED_BITS + 128,
            rule_key_v6(slot, scope, port, dst),
        );
        CLS_RULES_V6.get(&key)
    };
    match hit {
        Some(v) => *v,
        None => RuleVerdict::default(),
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
                count(c::PORT_COUNTS_FULL);
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

//! Learning server-first destinations.
//!
//! For a connection the policy gives no verdict, who sends the first
//! payload tells the protocol's direction: on the client socket, a first
//! outgoing data segment that leaves after bytes have arrived means the
//! server spoke first (SSH, SMTP, MySQL, FTP, IMAP...); HTTP, TLS and gRPC
//! clients always speak first.
//!
//! * `at_connect` (from `connect::classify`, only when no rule and no
//!   default port decided): looks the destination up in `CLS_LEARNED` for
//!   the client's scope; the connect leaves a watch record (or the learned
//!   verdict) in the socket's in-flight slot.
//! * `watch` (from `publish`: at `ACTIVE_ESTABLISHED_CB` for a watch
//!   record, at `TCP_CONNECT_CB` for a learned verdict): remembers the
//!   socket in `CLS_LEARN_PENDING` and switches on the header-option
//!   callback for that socket alone.
//! * `on_header_option` (`HDR_OPT_LEN_CB`, once per outgoing segment while
//!   the callback is on): at the first segment that carries payload or
//!   acknowledges received bytes, switches the callback off again and
//!   records the observation: bytes received before the client sent any
//!   means server-first (adds to or creates the entry); otherwise
//!   client-first (removes a learned one).
//!
//! So a classified connection pays nothing, an unclassified one a lookup
//! (none while nothing is learned on the node: the agent's
//! `LEARN_HINT_NOTHING_LEARNED`) and an in-flight record at connect, and, once established, a hash insert
//! and a callback or two until its first data segment, nothing after it.
//! A refused connect pays no insert: a flood of connects to closed ports
//! cannot push other connections' watches out of the LRU.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    // TCP states (include/net/tcp_states.h) in which the peer's FIN was
    // received.
    bindings::{
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, BPF_TCP_CLOSE_WAIT as TCP_CLOSE_WAIT,
        BPF_TCP_CLOSING as TCP_CLOSING, BPF_TCP_LAST_ACK as TCP_LAST_ACK,
        BPF_TCP_TIME_WAIT as TCP_TIME_WAIT,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    programs::SockOpsContext,
    EbpfContext,
};
use classifier_common::{
    counters as c, ConnVerdict, LearnConfig, LearnWatch, LearnedEntry, LearnedKey,
    LEARN_FLAG_ENABLED, LEARN_FLAG_NODE_SCOPE, LEARN_FLAG_OUTSIDE_PODS, LEARN_HINT_NOTHING_LEARNED,
    PORT_ANY, SCOPE_NODE,
};

use crate::{
    maps::{
        count, BPF_NOEXIST, CLS_LEARNED, CLS_LEARN_CONFIG, CLS_LEARN_PENDING, CLS_LEARN_SCOPES,
    },
    scope::ClientScope,
};

const TCP_FIN: u32 = 0x01;
const TCP_RST: u32 = 0x04;

/// What learning says at connect about a destination without a rule or
/// default-port verdict.
pub struct AtConnect {
    /// A learned server-first destination for this client.
    pub learned: bool,
    /// Learning is on for this client: watch the connection.
    pub watch: bool,
    /// The client's learning scope.
    pub scope: u16,
}

/// At connect, for a destination without a rule or default-port verdict:
/// whether it is a learned server-first destination for this client, and
/// whether to watch the connection. Nothing is written here: the caller
/// leaves a record in the socket's in-flight slot, and `publish` starts the
/// watch (`watch`) once the connection is established, so a connect that
/// is refused, or never answered, costs no watch-table entry.
#[inline(always)]
pub fn at_connect(dst: &[u8; 16], port: u16, client: &mut ClientScope) -> AtConnect {
    let mut out = AtConnect {
        learned: false,
        watch: false,
        scope: SCOPE_NODE,
    };
    let Some(config) = CLS_LEARN_CONFIG.get(0) else {
        return out;
    };
    if config.flags & LEARN_FLAG_ENABLED == 0 || port == PORT_ANY {
        return out;
    }
    if config.flags & LEARN_FLAG_NODE_SCOPE == 0 {
        // A pod not registered yet would learn into, and read, the node
        // scope: another tenant's. Neither until its namespace is known.
        if client.pod_unknown() {
            count(c::POD_UNREGISTERED);
            return out;
        }
        out.scope = client.id();
        // A process in no known pod cgroup shares the node scope with
        // every other such process (without pod knowledge, every
        // container on the node): one could plant or erase entries for
        // all. Only when the operator says they are one tenant.
        if out.scope == SCOPE_NODE && config.flags & LEARN_FLAG_OUTSIDE_PODS == 0 {
            return out;
        }
    }
    out.watch = true;
    // Nothing learned on the node (the agent saw the table empty, and the
    // kernel has added nothing since: `server_first` clears the hint):
    // nothing to look up.
    if config.hints & LEARN_HINT_NOTHING_LEARNED != 0 {
        return out;
    }
    let key = LearnedKey {
        scope: u32::from(out.scope),
        port,
        _pad: 0,
        addr: *dst,
    };
    out.learned = match CLS_LEARNED.get_ptr(&key) {
        // SAFETY: live map value, read at once.
        Some(entry) => (unsafe { (*entry).observations }) >= config.min_observations,
        None => false,
    };
    out
}

/// Starts watching a connection of the client's `scope` to `record`'s
/// destination: remembers it under the socket cookie (`CLS_LEARN_PENDING`)
/// and switches the header-option callback on for this socket alone. From
/// `publish`: at `TCP_CONNECT_CB` for a learned verdict, at
/// `ACTIVE_ESTABLISHED_CB` for a connection without a verdict.
#[inline(always)]
pub fn watch(ctx: &SockOpsContext, cookie: u64, record: &ConnVerdict) {
    let key = LearnedKey {
        scope: u32::from(record.learn_scope),
        port: u16::from_be(record.dst_port_be),
        _pad: 0,
        addr: record.dst_addr,
    };
    if CLS_LEARN_PENDING
        .insert(&cookie, &LearnWatch { key }, 0)
        .is_err()
    {
        count(c::ERR_LEARN);
        return;
    }
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32)
        .is_err()
    {
        count(c::ERR_CB_FLAGS);
        let _ = CLS_LEARN_PENDING.remove(&cookie);
        return;
    }
    count(c::LEARN_WATCHED);
}

/// `HDR_OPT_LEN_CB`: an outgoing segment of a watched socket.
#[inline(always)]
pub fn on_header_option(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: readable sockops context fields (0 when there is no skb).
    let (skb_len, bytes_received, tcp_flags, state) = unsafe {
        (
            read_volatile(&(*ops).skb_len),
            read_volatile(&(*ops).bytes_received),
            read_volatile(&(*ops).skb_tcp_flags),
            read_volatile(&(*ops).state),
        )
    };
    // The peer's FIN counts one in bytes_received: it is not speech.
    let fin_in = u64::from(matches!(
        state,
        TCP_TIME_WAIT | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING
    ));
    let server_spoke = bytes_received > fin_in;
    if skb_len == 0 && !server_spoke {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 || fin_in != 0 {
            // Closed before anyone spoke: nothing to learn; stop watching
            // and free the entry now rather than leave it to the LRU.
            if ctx
                .set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32)
                .is_err()
            {
                count(c::ERR_CB_FLAGS);
            }
            // SAFETY: the helper accepts a sock_ops context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = CLS_LEARN_PENDING.remove(&cookie);
        }
        // SYN, handshake ACK: nobody has spoken yet.
        return;
    }
    // Either the client's first data segment, or (bytes_received > 0) an
    // ACK of the server's first bytes before the client sent any: the
    // answer is known either way, and this socket is done with callbacks
    // (a server that streams to a silent client costs one callback, not
    // one per ACK).
    if ctx
        .set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32)
        .is_err()
    {
        count(c::ERR_CB_FLAGS);
    }
    // SAFETY: the helper accepts a sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(watch) = CLS_LEARN_PENDING.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: live map value, copied out at once.
    let key = unsafe { (*watch).key };
    let _ = CLS_LEARN_PENDING.remove(&cookie);
    if server_spoke {
        server_first(&key);
    } else {
        client_first(&key);
    }
}

#[inline(always)]
fn server_first(key: &LearnedKey) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let config = CLS_LEARN_CONFIG.get_ptr_mut(0);
    if let Some(entry) = CLS_LEARNED.get_ptr_mut(key) {
        // SAFETY: live map value. Two CPUs may race on one entry; a lost
        // increment or a last-seen off by microseconds is harmless.
        unsafe {
            (*entry).observations = (*entry).observations.saturating_add(1);
            (*entry).last_seen_ns = now;
        }
        // The hint is clear: an entry was there when the agent last
        // looked, or the agent, which looks again after each write that
        // sets it, clears it itself.
        count(c::LEARN_SERVER_FIRST);
        return;
    }
    // A new entry: only while its scope is under its quota, so one scope
    // cannot fill the table and push the others' entries out.
    // SAFETY: a live array value.
    let quota = config.map_or(0, |config| unsafe { (*config).scope_quota });
    let held = match CLS_LEARN_SCOPES.get_ptr_mut(&key.scope) {
        Some(n) => n,
        None => {
            if CLS_LEARN_SCOPES
                .insert(&key.scope, &0, BPF_NOEXIST)
                .is_err()
                && CLS_LEARN_SCOPES.get_ptr(&key.scope).is_none()
            {
                count(c::ERR_LEARN);
                return;
            }
            match CLS_LEARN_SCOPES.get_ptr_mut(&key.scope) {
                Some(n) => n,
                None => {
                    count(c::ERR_LEARN);
                    return;
                }
            }
        }
    };
    // SAFETY: live map value. Not atomic: two CPUs inserting for the same
    // scope at once may both pass; the agent recounts every tick.
    if unsafe { *held } >= quota {
        count(c::LEARN_SCOPE_FULL);
        return;
    }
    let entry = LearnedEntry {
        first_seen_ns: now,
        last_seen_ns: now,
        observations: 1,
        _pad: 0,
    };
    if CLS_LEARNED.insert(key, &entry, BPF_NOEXIST).is_err() {
        count(c::ERR_LEARN);
        return;
    }
    // After the insert, so that an agent that sets the hint again after
    // this finds the entry when it looks the table over once more.
    clear_nothing_learned(config);
    // SAFETY: as above.
    unsafe { *held += 1 };
    count(c::LEARN_SERVER_FIRST);
}

/// Clears the agent's "nothing learned" hint: the table holds an entry now,
/// and the next connect must look it up. A plain 32-bit store of `hints`
/// alone: it leaves the other settings as they are, and if it races with
/// the agent's write of the settings, the agent, which looks the table over
/// again after each write that sets the hint, clears it itself.
#[inline(always)]
fn clear_nothing_learned(config: Option<*mut LearnConfig>) {
    let Some(config) = config else {
        return;
    };
    // SAFETY: a live array value.
    unsafe {
        let hints = &raw mut (*config).hints;
        let seen = read_volatile(hints);
        if seen & LEARN_HINT_NOTHING_LEARNED != 0 {
            write_volatile(hints, seen & !LEARN_HINT_NOTHING_LEARNED);
        }
    }
}

#[inline(always)]
fn client_first(key: &LearnedKey) {
    if CLS_LEARNED.remove(key).is_ok() {
        if let Some(held) = CLS_LEARN_SCOPES.get_ptr_mut(&key.scope) {
            // SAFETY: live map value.
            unsafe { *held = (*held).saturating_sub(1) };
        }
        count(c::LEARN_CONTRADICTED);
    } else {
        count(c::LEARN_CLIENT_FIRST);
    }
}

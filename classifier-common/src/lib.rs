//! Types and constants shared by the kernel programs (`classifier-ebpf`) and
//! userspace (`classifier-user`).
//!
//! Everything that crosses the kernel/user boundary lives here, `#[repr(C)]`
//! with explicit padding, so both sides agree byte for byte. The tests at the
//! bottom pin sizes and offsets: changing one of them is a layout change and
//! must bump [`LAYOUT_VERSION`], because a restarted agent adopts maps pinned
//! by an older one.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

use core::fmt;

/// Version of the pinned map layout. An agent refuses to adopt pins written
/// with another version (see the agent's adoption logic).
pub const LAYOUT_VERSION: u32 = 7;

// ---------------------------------------------------------------------------
// The proxy query contract: getsockopt(fd, QUERY_LEVEL, QUERY_OPTNAME, buf, len)
// ---------------------------------------------------------------------------

/// Socket option level answered by the `cgroup/getsockopt` program. The kernel
/// does not know it, so with no classifier loaded the call fails.
pub const QUERY_LEVEL: i32 = 0xC1A5;
/// Option name for "what is the verdict for this accepted connection".
pub const QUERY_OPTNAME: i32 = 1;
/// Value of byte 0 of the reply.
pub const REPLY_VERSION: u8 = 1;
/// A reply is never shorter than this; a smaller buffer gets the kernel's
/// own error (EOPNOTSUPP or ENOPROTOOPT), as if no classifier were loaded.
pub const REPLY_MIN_LEN: usize = 8;
/// The full reply; buffers of at least `REPLY_MIN_LEN` but less than this get
/// the first `REPLY_MIN_LEN` bytes only.
pub const REPLY_LEN: usize = 32;

/// Protocols on the wire (reply byte 1) and in verdicts; see [`Protocol`].
pub const PROTO_UNKNOWN: u8 = Protocol::Detect as u8;
pub const PROTO_OPAQUE: u8 = Protocol::Opaque as u8;
pub const PROTO_HTTP1: u8 = Protocol::Http1 as u8;
pub const PROTO_HTTP2: u8 = Protocol::Http2 as u8;

/// What a connection speaks: the protocol byte of verdicts, rule-trie
/// values and the proxy's reply, and a policy rule's `protocol`.
///
/// Declared in the order the policy file lists the names (its parse errors
/// list them in this order); the values are the wire's.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Protocol {
    /// Skip detection and forward bytes as they come.
    Opaque = 1,
    Http1 = 2,
    Http2 = 3,
    /// No verdict, or a rule that says so: let the proxy detect the
    /// protocol (`PROTO_UNKNOWN` on the wire). As a rule's protocol it is
    /// an override: it beats the default opaque ports.
    Detect = 0,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Opaque,
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Detect,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Opaque => "opaque",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Detect => "detect",
        }
    }

    /// The byte the kernel stores and the proxy reads.
    #[inline(always)]
    pub const fn wire(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Protocol::wire`]; unknown values read as `Detect`,
    /// which is what a proxy does with them.
    #[inline(always)]
    pub fn from_wire(v: u8) -> Protocol {
        Protocol::try_from(v).unwrap_or(Protocol::Detect)
    }
}

impl TryFrom<u8> for Protocol {
    /// The byte, which is no protocol.
    type Error = u8;
    #[inline(always)]
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Protocol::Detect),
            1 => Ok(Protocol::Opaque),
            2 => Ok(Protocol::Http1),
            3 => Ok(Protocol::Http2),
            other => Err(other),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "alloc")]
impl core::str::FromStr for Protocol {
    type Err = alloc::string::String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                alloc::format!("unknown protocol {s:?} (expected opaque, http1, http2 or detect)")
            })
    }
}

/// Where a verdict came from (reply byte 2); see [`Source`].
pub const SOURCE_NONE: u8 = Source::None as u8;
pub const SOURCE_DEFAULT_PORT: u8 = Source::DefaultPort as u8;
pub const SOURCE_RULE: u8 = Source::Rule as u8;
pub const SOURCE_LEARNED: u8 = Source::Learned as u8;

/// Where a verdict came from: the source byte of verdicts and replies.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// No verdict.
    None = 0,
    /// A default opaque port.
    DefaultPort = 1,
    /// A policy rule (its id is alongside).
    Rule = 2,
    /// A destination the classifier learned to be server-first:
    /// opaque, with no rule or default port behind it.
    Learned = 3,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::None,
        Source::DefaultPort,
        Source::Rule,
        Source::Learned,
    ];

    /// The byte the kernel stores and the proxy reads.
    #[inline(always)]
    pub const fn wire(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Source::wire`]; unknown values read as `None` (no
    /// verdict), which is what a proxy does with them.
    #[inline(always)]
    pub fn from_wire(v: u8) -> Source {
        Source::try_from(v).unwrap_or(Source::None)
    }

    /// The name `stats`, metrics and `explain` use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::DefaultPort => "default_port",
            Source::Rule => "rule",
            Source::Learned => "learned",
        }
    }
}

impl TryFrom<u8> for Source {
    /// The byte, which is no source.
    type Error = u8;
    #[inline(always)]
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Source::None),
            1 => Ok(Source::DefaultPort),
            2 => Ok(Source::Rule),
            3 => Ok(Source::Learned),
            other => Err(other),
        }
    }
}

/// Reply byte 3 flags.
/// The original destination is IPv4 (stored v4-mapped in bytes 16..32).
pub const REPLY_FLAG_DST_IPV4: u8 = 1 << 0;
/// The classifier also set `SO_MARK` on the client's socket.
pub const REPLY_FLAG_MARKED: u8 = 1 << 1;
/// Two live connections share this client address and port (Linux shares
/// ephemeral ports between connections to different destinations), so the
/// classifier cannot tell which one the caller holds: no verdict is given.
pub const REPLY_FLAG_AMBIGUOUS: u8 = 1 << 2;

/// The reply written into the caller's buffer. Field order is the byte order
/// of the documented layout (docs/src/proxy/contract.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct QueryReply {
    /// Byte 0: [`REPLY_VERSION`].
    pub version: u8,
    /// Byte 1: one of the `PROTO_*` values.
    pub protocol: u8,
    /// Byte 2: one of the `SOURCE_*` values.
    pub source: u8,
    /// Byte 3: `REPLY_FLAG_*` bits.
    pub flags: u8,
    /// Bytes 4..8: id of the policy rule that decided (native byte order),
    /// 0 when the source is not a rule.
    pub rule_id: u32,
    /// Bytes 8..12: policy generation the verdict was taken under (native).
    pub generation: u32,
    /// Bytes 12..14: original destination port, network byte order.
    pub dst_port_be: u16,
    /// Bytes 14..16: zero.
    pub _reserved: u16,
    /// Bytes 16..32: original destination address; IPv4 as `::ffff:a.b.c.d`.
    pub dst_addr: [u8; 16],
}

// ---------------------------------------------------------------------------
// Per-connection state
// ---------------------------------------------------------------------------

/// A verdict taken at connect time and remembered for the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnVerdict {
    pub protocol: u8,
    pub source: u8,
    /// `REPLY_FLAG_*` bits.
    pub flags: u8,
    /// In `CLS_INFLIGHT` only: `INFLIGHT_VERDICT` (0) or
    /// `INFLIGHT_LEARN_WATCH`. 0 in published entries.
    pub inflight_kind: u8,
    pub rule_id: u32,
    pub generation: u32,
    /// Original destination port, network byte order.
    pub dst_port_be: u16,
    /// In `CLS_INFLIGHT` only: the client's learning scope, for a watch
    /// record and for a learned verdict. 0 in published entries.
    pub learn_scope: u16,
    /// Original destination, IPv4 v4-mapped.
    pub dst_addr: [u8; 16],
    /// Cookie of the client socket that owns the entry, so only its own
    /// close withdraws it; 0 in an ambiguity marker.
    pub owner_cookie: u64,
}

/// An in-flight record that is a verdict, to publish at `TCP_CONNECT_CB`.
pub const INFLIGHT_VERDICT: u8 = 0;
/// An in-flight record of a connect without a verdict that learning wants
/// to watch: kept in the slot until the connection is established (a
/// refused connect never costs a watch-table entry).
pub const INFLIGHT_LEARN_WATCH: u8 = 1;

/// Slot of a socket in `CLS_INFLIGHT` (the verdict between connect() and
/// the SYN): the low bits of its cookie. A slot belongs to the socket whose
/// cookie is in `ConnVerdict::owner_cookie`.
#[inline(always)]
pub const fn inflight_slot(cookie: u64) -> u32 {
    (cookie as u32) & (maps::INFLIGHT_CAPACITY - 1)
}

/// Key of the published-verdict table: the client socket's own local
/// address, which is what the proxy sees as the peer of the socket it
/// accepted through a REDIRECT, plus the network namespace both live in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnKey {
    pub netns_cookie: u64,
    /// IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

// ---------------------------------------------------------------------------
// Policy maps
// ---------------------------------------------------------------------------
//
// The policy is double buffered: every policy map key carries a slot (0 or
// 1). The agent writes a new policy into the inactive slot, then flips
// `ACTIVE_SLOT`; a connect reads the slot once and does every lookup in it,
// so it sees either the whole old policy or the whole new one.

/// Number of policy slots (double buffering).
pub const POLICY_SLOTS: u32 = 2;

/// LPM key data for rules: `[slot][scope (BE u16)][port (BE u16)][address]`.
/// The trie matches slot, scope and port exactly (their 40 bits are always
/// part of the prefix) and the address by longest prefix.
///
/// `scope` is 0 for node-wide rules, else the id of the namespace whose
/// clients the rule applies to (see `CLS_SCOPES`). `port` 0 is the
/// wildcard: rules that apply to every port, looked up alongside the exact
/// port; the more specific network wins, the exact port on a tie.
pub const RULE_KEY_FIXED_BITS: u32 = 40;
pub type RuleKeyV4 = [u8; 9];
pub type RuleKeyV6 = [u8; 21];
/// The key data of an IPv4 rule: `[slot][scope BE][port BE][addr]`. The
/// kernel looks connects up with it and the compiler writes entries with
/// it, so both sides pack keys alike.
#[inline(always)]
pub fn rule_key_v4(slot: u8, scope: u16, port: u16, addr: [u8; 4]) -> RuleKeyV4 {
    let (s, p) = (scope.to_be_bytes(), port.to_be_bytes());
    [
        slot, s[0], s[1], p[0], p[1], addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The key data of an IPv6 rule, as [`rule_key_v4`].
#[inline(always)]
pub fn rule_key_v6(slot: u8, scope: u16, port: u16, addr: &[u8; 16]) -> RuleKeyV6 {
    let (s, p) = (scope.to_be_bytes(), port.to_be_bytes());
    let mut k = [0u8; 21];
    k[0] = slot;
    k[1] = s[0];
    k[2] = s[1];
    k[3] = p[0];
    k[4] = p[1];
    k[5..].copy_from_slice(addr);
    k
}

/// The wildcard port in rule keys.
pub const PORT_ANY: u16 = 0;
/// Rules that apply to every client.
pub const SCOPE_NODE: u16 = 0;
/// The rules of Linkerd's global EgressNetworks (namespace
/// `linkerd-egress`): looked up after the node-wide ones, and only for
/// clients without a registered scope. A client whose namespace has
/// EgressNetworks of its own (hence a scope) never sees them, as
/// `resolve_egress_network` in linkerd2's
/// `policy-controller/k8s/index/src/outbound/index/egress_network.rs`
/// does. Never given to a namespace.
pub const SCOPE_GLOBAL_EGRESS: u16 = u16::MAX;
/// In `CLS_SCOPES` values (the scope id is the low 16 bits): the
/// namespace has rules of its own (its EgressNetworks), which shadow the
/// global ones. Namespaces also get a scope for learning alone, so having
/// a scope does not say this.
pub const SCOPE_FLAG_OWN_RULES: u32 = 1 << 16;
/// In `CLS_SCOPES` values: "pods below, namespace unknown". The agent
/// gives it to the kubelet's pod roots (`kubepods`, `kubepods.slice`) when
/// it knows the node's pods. The scope walk takes any other registered
/// ancestor before it, so it only holds for a process in a pod cgroup the
/// agent has not registered (yet): in a policy with namespace-scoped rules
/// such a connect gets no verdict at all (counted in `pod_unregistered`),
/// rather than the verdicts of processes outside pods, which may not be
/// its namespace's. Its scope id bits are `SCOPE_NODE`.
pub const SCOPE_FLAG_POD_UNKNOWN: u32 = 1 << 17;
/// How deep in the cgroup hierarchy a pod's cgroup may sit (the kubelet's
/// layouts put it at level 2 to 4 below the root).
pub const MAX_CGROUP_LEVEL: u32 = 8;

/// Value of a rule trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RuleVerdict {
    /// Rule id (1-based index in the policy); 0 with `RULE_NONE`.
    pub rule_id: u32,
    /// `PROTO_*`; `PROTO_UNKNOWN` with `RULE_MATCH` is a `detect` override.
    pub protocol: u8,
    /// `RULE_MATCH` or `RULE_NONE`.
    pub kind: u8,
    /// Prefix length of the deciding rule's network (not of the entry's
    /// key): compares an exact-port hit with a wildcard-port hit.
    pub net_prefix: u8,
    pub _pad: u8,
}

/// The entry is a rule's verdict.
pub const RULE_MATCH: u8 = 1;
/// The entry carves an `except` hole with no less specific rule behind it:
/// fall through to the default opaque ports.
pub const RULE_NONE: u8 = 0;

/// The default opaque ports of one slot are a 65536-bit bitmap, stored as
/// `DEFAULT_PORT_WORDS` u64 words at index `slot * DEFAULT_PORT_WORDS + port / 64`.
pub const DEFAULT_PORT_WORDS: u32 = 65536 / 64;

/// Per-slot settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyConfig {
    /// Increases with every applied policy.
    pub generation: u32,
    /// `CONFIG_FLAG_*`.
    pub flags: u32,
    pub mark_value: u32,
    pub mark_mask: u32,
    /// Informational, for `stats`.
    pub rule_count: u32,
    pub v4_entries: u32,
    pub v6_entries: u32,
    pub default_port_count: u32,
    /// The number of UIDs in the slot's `CLS_EXCLUDED_UIDS` entries: 0
    /// lets connects skip the lookup.
    pub excluded_uid_count: u32,
    /// The one excluded UID when `CONFIG_FLAG_ONE_EXCLUDED_UID` is set
    /// (compared in place of the hash lookup; the hash holds it too, for
    /// programs that predate the flag). Padding, always 0, in earlier agents.
    pub excluded_uid: u32,
}

/// Set `SO_MARK` on classified sockets.
pub const CONFIG_FLAG_MARK: u32 = 1 << 0;
/// The policy has namespace-scoped rules: find the client's scope.
pub const CONFIG_FLAG_SCOPED: u32 = 1 << 1;
/// The policy has wildcard-port rules: do the `PORT_ANY` lookups.
pub const CONFIG_FLAG_ANY_PORT: u32 = 1 << 2;
/// The policy has rules in [`SCOPE_GLOBAL_EGRESS`]: look them up last for
/// clients without a scope.
pub const CONFIG_FLAG_GLOBAL_EGRESS: u32 = 1 << 3;
/// The policy excludes exactly one UID, `PolicyConfig::excluded_uid` (the
/// default policy: Linkerd's proxy). Programs that predate the flag ignore
/// it and look the UID up in `CLS_EXCLUDED_UIDS`, which still holds it.
pub const CONFIG_FLAG_ONE_EXCLUDED_UID: u32 = 1 << 4;

/// What the agent last did, for `classifier stats` (which reads pins, not
/// the agent). Written by the agent every watch tick.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AgentStatus {
    /// Seconds since the epoch of the last status write (agent alive).
    pub updated_unix: u64,
    pub last_apply_unix: u64,
    /// Policies rejected (parse, compile or apply errors) since start.
    pub policy_errors: u64,
    pub last_sync_unix: u64,
    pub sync_errors: u64,
    /// `AGENT_FLAG_*`.
    pub flags: u32,
    pub pid: u32,
}

pub const AGENT_FLAG_KUBERNETES: u32 = 1 << 0;
pub const AGENT_FLAG_KUBERNETES_CONNECTED: u32 = 1 << 1;

/// A namespace name as a fixed-size map key (Kubernetes names are at most
/// 63 bytes), NUL padded.
pub type NamespaceName = [u8; 64];

/// The `CLS_SCOPE_IDS` key of `namespace`: its bytes, NUL padded; `None`
/// unless it is 1 to 63 bytes long.
pub fn namespace_key(namespace: &str) -> Option<NamespaceName> {
    let bytes = namespace.as_bytes();
    if bytes.is_empty() || bytes.len() >= 64 {
        return None;
    }
    let mut key = [0u8; 64];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// The name bytes of a `CLS_SCOPE_IDS` key (up to the first NUL): the
/// inverse of [`namespace_key`].
pub fn namespace_of_key(key: &NamespaceName) -> &[u8] {
    let len = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    &key[..len]
}

/// Key of the excluded-UID set: `(slot << 32) | uid`.
#[inline(always)]
pub const fn excluded_uid_key(slot: u32, uid: u32) -> u64 {
    ((slot as u64) << 32) | uid as u64
}

/// Written once by the agent that first loads the programs; checked by any
/// agent that wants to adopt the pins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PinMeta {
    pub layout_version: u32,
    pub _pad: u32,
    /// Build stamp of the programs attached through the pinned links (a
    /// hash of the eBPF object; 0: not stamped). An agent whose embedded
    /// programs differ replaces them in place.
    pub program_build: u64,
}

/// `PinMeta` as layout versions 1 and 2 wrote it (8 bytes), so that a newer
/// agent can still read the version of older pins and refuse them by name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PinMetaV1 {
    pub layout_version: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------------------
// Learning server-first destinations
// ---------------------------------------------------------------------------

/// Key of the learned table: who may use the entry (scope) and the
/// destination as the client's connect() named it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LearnedKey {
    /// `SCOPE_NODE` (0) for node-wide learning and clients outside pods,
    /// else the client namespace's scope id (as in `CLS_SCOPES`).
    pub scope: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    /// IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
}

/// Value of the learned table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LearnedEntry {
    /// `bpf_ktime_get_boot_ns` (CLOCK_BOOTTIME) of the first observation.
    pub first_seen_ns: u64,
    /// Same clock, last server-first observation.
    pub last_seen_ns: u64,
    /// Server-first observations since the entry was made.
    pub observations: u32,
    pub _pad: u32,
}

/// A socket being watched: what to record when its first data segment
/// leaves. Keyed by socket cookie in `CLS_LEARN_PENDING`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LearnWatch {
    pub key: LearnedKey,
}

/// The learning settings (one entry; the agent writes it after each policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LearnConfig {
    /// `LEARN_FLAG_*`; 0 (the value before any agent wrote it) is off.
    pub flags: u32,
    /// An entry gives verdicts once it has this many observations.
    pub min_observations: u32,
    /// Entries one scope may hold (fair share of `LEARNED_CAPACITY`).
    pub scope_quota: u32,
    /// `LEARN_HINT_*`: what the agent saw of the learned table. Written by
    /// the agent with the rest; the kernel only ever clears a bit, with a
    /// 32-bit store of this field alone. Agents before the hints wrote 0
    /// here (the field was padding): no hint, every lookup made.
    pub hints: u32,
}

/// The learned table held no entry when the agent last looked, and the
/// kernel has added none since: connects without a verdict skip the lookup
/// of `CLS_LEARNED` (they are still watched). The kernel clears it right
/// after it adds an entry; the agent sets it only after seeing the table
/// empty, and looks again right after setting it (see the agent's
/// `LearnedTable::write_hinted`).
pub const LEARN_HINT_NOTHING_LEARNED: u32 = 1 << 0;

/// Learning is on: unclassified sockets are watched, the table consulted.
pub const LEARN_FLAG_ENABLED: u32 = 1 << 0;
/// `scope: node`: every client learns into and reads `SCOPE_NODE`.
pub const LEARN_FLAG_NODE_SCOPE: u32 = 1 << 1;
/// Under `scope: namespace`, processes in no known pod cgroup learn into
/// and read `SCOPE_NODE` (the agent's `--learn-outside-pods`). Without it
/// they neither learn nor read: every such process would share one table,
/// so any of them could plant or erase entries for all the others.
pub const LEARN_FLAG_OUTSIDE_PODS: u32 = 1 << 2;

// ---------------------------------------------------------------------------
// Map names and sizes (names are also the pin file names)
// ---------------------------------------------------------------------------

pub mod maps {
    pub const ACTIVE_SLOT: &str = "CLS_ACTIVE_SLOT";
    pub const POLICY_CONFIG: &str = "CLS_POLICY_CONFIG";
    pub const RULES_V4: &str = "CLS_RULES_V4";
    pub const RULES_V6: &str = "CLS_RULES_V6";
    pub const DEFAULT_PORTS: &str = "CLS_DEFAULT_PORTS";
    pub const EXCLUDED_UIDS: &str = "CLS_EXCLUDED_UIDS";
    pub const VERDICTS: &str = "CLS_VERDICTS";
    pub const COUNTERS: &str = "CLS_COUNTERS";
    pub const PORT_COUNTS: &str = "CLS_PORT_COUNTS";
    pub const META: &str = "CLS_META";
    /// cgroup id of a pod's cgroup -> scope id (u16 in a u32) of its
    /// namespace and `SCOPE_FLAG_*` bits; also the kubelet's pod roots ->
    /// `SCOPE_FLAG_POD_UNKNOWN`.
    pub const SCOPES: &str = "CLS_SCOPES";
    /// Namespace name -> scope id; kept so a restarted agent reuses the ids.
    pub const SCOPE_IDS: &str = "CLS_SCOPE_IDS";
    pub const AGENT_STATUS: &str = "CLS_AGENT_STATUS";
    /// The verdict of each socket between connect() and its SYN, in the
    /// slot its cookie selects (an array: no insert, no eviction, no delete).
    pub const INFLIGHT: &str = "CLS_INFLIGHT";
    /// Network namespace cookie -> number of its entries in `VERDICTS`
    /// (each namespace may hold at most its share).
    pub const NETNS_VERDICTS: &str = "CLS_NETNS_VERDICTS";

    /// Learning: the learned server-first destinations.
    pub const LEARNED: &str = "CLS_LEARNED";
    /// Learning: socket cookie -> destination being watched for who speaks first.
    pub const LEARN_PENDING: &str = "CLS_LEARN_PENDING";
    /// Learning: the settings (one entry, written by the agent).
    pub const LEARN_CONFIG: &str = "CLS_LEARN_CONFIG";
    /// Learning: scope -> number of its entries in `LEARNED` (fair share).
    pub const LEARN_SCOPES: &str = "CLS_LEARN_SCOPES";

    /// Every map, for pinning, adoption and uninstall.
    pub const ALL: [&str; 19] = [
        ACTIVE_SLOT,
        POLICY_CONFIG,
        RULES_V4,
        RULES_V6,
        DEFAULT_PORTS,
        EXCLUDED_UIDS,
        VERDICTS,
        COUNTERS,
        PORT_COUNTS,
        META,
        SCOPES,
        SCOPE_IDS,
        AGENT_STATUS,
        INFLIGHT,
        NETNS_VERDICTS,
        LEARNED,
        LEARN_PENDING,
        LEARN_CONFIG,
        LEARN_SCOPES,
    ];

    /// Trie capacity, shared by both slots: during a switch the old and new
    /// policy are both present, so a policy may use at most half.
    pub const RULES_V4_CAPACITY: u32 = 1 << 19;
    pub const RULES_V6_CAPACITY: u32 = 1 << 19;
    pub const EXCLUDED_UIDS_CAPACITY: u32 = 2048;
    /// Slots of `CLS_INFLIGHT` (a power of two). Only sockets between
    /// connect() and the SYN (microseconds, within one connect() call)
    /// use one; two of them clash only if their cookies share the low bits.
    pub const INFLIGHT_CAPACITY: u32 = 16384;
    /// Published verdicts of open, classified connections (a hash, no
    /// eviction: one namespace cannot push out another's verdicts).
    pub const VERDICTS_CAPACITY: u32 = 65536;
    /// Each network namespace may hold at most this fraction of the verdict
    /// table (the programs' `VERDICTS_PER_NETNS`, set at load).
    pub const VERDICTS_NETNS_SHARE_DIVISOR: u32 = 8;
    /// Network namespaces with published verdicts at once.
    pub const NETNS_VERDICTS_CAPACITY: u32 = 16384;
    /// Distinct destination ports counted for "top ports".
    pub const PORT_COUNTS_CAPACITY: u32 = 4096;
    /// Pods per node the scope map can hold.
    pub const SCOPES_CAPACITY: u32 = 16384;
    /// Namespaces with scoped rules (their own EgressNetworks).
    pub const SCOPE_IDS_CAPACITY: u32 = 16384;
    /// Learned destinations, all scopes together (fixed at load: an LRU
    /// hash preallocates; 16384 entries of 48 bytes of key and value).
    pub const LEARNED_CAPACITY: u32 = 16384;
    /// Unclassified sockets between connect() and their first data
    /// segment (LRU: a connection that never sends is forgotten).
    pub const LEARN_PENDING_CAPACITY: u32 = 16384;
    /// Scopes with learned entries.
    pub const LEARN_SCOPES_CAPACITY: u32 = 16384;
}

/// Program names as they appear in the object file.
pub mod programs {
    pub const CONNECT4: &str = "classify_connect4";
    pub const CONNECT6: &str = "classify_connect6";
    pub const SOCKOPS: &str = "publish_sockops";
    pub const GETSOCKOPT: &str = "answer_getsockopt";
    pub const ALL: [&str; 4] = [CONNECT4, CONNECT6, SOCKOPS, GETSOCKOPT];
}

// ---------------------------------------------------------------------------
// Counters: one per-CPU u64 per index
// ---------------------------------------------------------------------------

pub mod counters {
    macro_rules! counters {
        ($($(#[$doc:meta])* $name:ident = $idx:expr, $label:expr;)*) => {
            $($(#[$doc])* pub const $name: u32 = $idx;)*
            /// (index, stable name) of every counter, for stats and metrics.
            pub const NAMES: &[(u32, &str)] = &[$(($idx, $label)),*];
        };
    }
    counters! {
        /// connect() on an AF_INET TCP socket.
        CONNECT4 = 0, "connect4";
        /// connect() on an AF_INET6 TCP socket to an IPv6 destination.
        CONNECT6 = 1, "connect6";
        /// connect() on an AF_INET6 socket to a v4-mapped destination.
        CONNECT6_V4MAPPED = 2, "connect6_v4mapped";
        /// connect() on a non-TCP socket: ignored.
        NOT_TCP = 3, "not_tcp";
        /// Socket of an excluded UID: not classified.
        EXCLUDED = 4, "excluded";
        VERDICT_OPAQUE = 5, "verdict_opaque";
        VERDICT_HTTP1 = 6, "verdict_http1";
        VERDICT_HTTP2 = 7, "verdict_http2";
        /// A `detect` rule forced detection.
        VERDICT_DETECT = 8, "verdict_detect";
        /// No rule and not a default opaque port.
        NO_VERDICT = 9, "no_verdict";
        SOURCE_DEFAULT_PORT = 10, "source_default_port";
        SOURCE_RULE = 11, "source_rule";
        MARK_SET = 12, "mark_set";
        /// Verdict published for the proxy at TCP connect.
        PUBLISHED = 13, "published";
        /// Published verdict removed when its connection closed.
        UNPUBLISHED = 14, "unpublished";
        /// A connection closed whose verdict was already gone (evicted).
        UNPUBLISH_MISSING = 15, "unpublish_missing";
        QUERY_CLASSIFIED = 16, "query_classified";
        QUERY_UNKNOWN = 17, "query_unknown";
        /// Query with a buffer shorter than REPLY_MIN_LEN.
        QUERY_BAD_BUFFER = 18, "query_bad_buffer";
        /// The socket's in-flight slot could not be read.
        ERR_INFLIGHT = 19, "err_inflight";
        ERR_PUBLISH_INSERT = 20, "err_publish_insert";
        ERR_MARK = 21, "err_mark";
        /// The active slot or its config could not be read.
        ERR_CONFIG = 22, "err_config";
        ERR_CB_FLAGS = 23, "err_cb_flags";
        /// A destination port not counted: the "top ports" table is full.
        PORT_COUNTS_FULL = 24, "port_counts_full";
        /// A verdict could not be published because another live connection
        /// holds the same client address and port; both now answer
        /// "ambiguous" (no verdict) rather than risk a wrong one.
        PUBLISH_AMBIGUOUS = 25, "publish_ambiguous";
        /// The socket's verdict was taken for another destination than the
        /// one it is connecting to: not published.
        PUBLISH_DST_MISMATCH = 26, "publish_dst_mismatch";
        /// A query on a socket that is not a connected TCP socket: not
        /// answered (the caller sees the kernel's own error).
        QUERY_NOT_CONNECTED = 27, "query_not_connected";
        /// The classifier's SO_MARK bits (set at an earlier connect of the
        /// same socket) were cleared at a connect that is not marked.
        MARK_CLEARED = 28, "mark_cleared";
        /// Not published: the client's network namespace holds its whole
        /// share of the verdict table (detection as usual).
        PUBLISH_NETNS_FULL = 29, "publish_netns_full";
        /// Not published: the verdict table is full.
        PUBLISH_TABLE_FULL = 30, "publish_table_full";
        // Learning.
        /// Verdict from the learned table (opaque).
        SOURCE_LEARNED = 31, "source_learned";
        /// Unclassified connection watched for who speaks first.
        LEARN_WATCHED = 32, "learn_watched";
        /// Server-first observation recorded (new entry or one more).
        LEARN_SERVER_FIRST = 33, "learn_server_first";
        /// Client-first observation (nothing recorded).
        LEARN_CLIENT_FIRST = 34, "learn_client_first";
        /// Client-first observation of a learned destination: removed.
        LEARN_CONTRADICTED = 35, "learn_contradicted";
        /// Server-first observation not recorded: its scope is at its quota.
        LEARN_SCOPE_FULL = 36, "learn_scope_full";
        /// A watch could not be recorded or the learned table not written.
        ERR_LEARN = 37, "err_learn";
        /// A connect from a pod cgroup the agent has not registered yet
        /// (below a pod root marked `SCOPE_FLAG_POD_UNKNOWN`): no verdict,
        /// in a policy with namespace-scoped rules, and no learning under
        /// namespace-scoped learning. Counted in `no_verdict` too when it
        /// left the connect without a verdict.
        POD_UNREGISTERED = 38, "pod_unregistered";
    }
    pub const COUNT: u32 = 39;
    /// Counters that are internal failures (the connect was allowed anyway).
    pub const ERRORS: [u32; 6] = [
        ERR_INFLIGHT,
        ERR_PUBLISH_INSERT,
        ERR_MARK,
        ERR_CONFIG,
        ERR_CB_FLAGS,
        ERR_LEARN,
    ];
}

/// The share of a verdict table of `capacity` entries each network
/// namespace may hold.
pub const fn verdicts_per_netns(capacity: u32) -> u32 {
    let share = capacity / maps::VERDICTS_NETNS_SHARE_DIVISOR;
    if share == 0 {
        1
    } else {
        share
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, and have no implicit padding (checked by the layout tests).
    unsafe impl aya::Pod for QueryReply {}
    unsafe impl aya::Pod for ConnVerdict {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for RuleVerdict {}
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for PinMeta {}
    unsafe impl aya::Pod for PinMetaV1 {}
    unsafe impl aya::Pod for AgentStatus {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for LearnedEntry {}
    unsafe impl aya::Pod for LearnWatch {}
    unsafe impl aya::Pod for LearnConfig {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn reply_layout_is_the_documented_contract() {
        assert_eq!(size_of::<QueryReply>(), REPLY_LEN);
        assert_eq!(offset_of!(QueryReply, version), 0);
        assert_eq!(offset_of!(QueryReply, protocol), 1);
        assert_eq!(offset_of!(QueryReply, source), 2);
        assert_eq!(offset_of!(QueryReply, flags), 3);
        assert_eq!(offset_of!(QueryReply, rule_id), 4);
        assert_eq!(offset_of!(QueryReply, generation), 8);
        assert_eq!(offset_of!(QueryReply, dst_port_be), 12);
        assert_eq!(offset_of!(QueryReply, dst_addr), 16);
        // The short reply carries version, protocol, source, flags, rule id.
        assert_eq!(offset_of!(QueryReply, generation), REPLY_MIN_LEN);
    }

    #[test]
    fn map_value_layouts_are_pinned() {
        assert_eq!(size_of::<ConnVerdict>(), 40);
        assert_eq!(offset_of!(ConnVerdict, owner_cookie), 32);
        assert_eq!(offset_of!(ConnVerdict, rule_id), 4);
        assert_eq!(offset_of!(ConnVerdict, dst_addr), 16);
        // Were padding (zero) in layout 7: zero still means a verdict, so
        // pins of that layout need no migration.
        assert_eq!(offset_of!(ConnVerdict, inflight_kind), 3);
        assert_eq!(offset_of!(ConnVerdict, learn_scope), 14);
        assert_eq!(INFLIGHT_VERDICT, 0);
        assert_eq!(size_of::<ConnKey>(), 32);
        assert_eq!(offset_of!(ConnKey, addr), 8);
        assert_eq!(offset_of!(ConnKey, port), 24);
        assert_eq!(size_of::<RuleVerdict>(), 8);
        assert_eq!(size_of::<PolicyConfig>(), 40);
        // Was padding (zero) in layout 7's first agents, with the flag
        // clear: their configs still read as "look the UID up".
        assert_eq!(offset_of!(PolicyConfig, excluded_uid), 36);
        assert_eq!(size_of::<PinMeta>(), 16);
        assert_eq!(offset_of!(PinMeta, program_build), 8);
        assert_eq!(size_of::<PinMetaV1>(), 8);
        assert_eq!(size_of::<AgentStatus>(), 48);
        assert_eq!(size_of::<RuleKeyV4>(), 9);
        assert_eq!(size_of::<RuleKeyV6>(), 21);
        assert_eq!(offset_of!(RuleVerdict, net_prefix), 6);
    }

    #[test]
    fn counter_names_are_complete_and_unique() {
        assert_eq!(counters::NAMES.len() as u32, counters::COUNT);
        for (i, (idx, _)) in counters::NAMES.iter().enumerate() {
            assert_eq!(*idx, i as u32, "counter indices must be dense and ordered");
        }
        for (i, (_, a)) in counters::NAMES.iter().enumerate() {
            for (_, b) in &counters::NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn protocol_and_source_bytes_are_the_wire_values() {
        assert_eq!(
            [PROTO_UNKNOWN, PROTO_OPAQUE, PROTO_HTTP1, PROTO_HTTP2],
            [0, 1, 2, 3]
        );
        assert_eq!(
            [
                SOURCE_NONE,
                SOURCE_DEFAULT_PORT,
                SOURCE_RULE,
                SOURCE_LEARNED
            ],
            [0, 1, 2, 3]
        );
        assert_eq!(size_of::<Protocol>(), 1);
        assert_eq!(size_of::<Source>(), 1);
        for v in 0..=255u8 {
            match Protocol::try_from(v) {
                Ok(p) => assert_eq!(p.wire(), v),
                Err(e) => assert!(v > 3 && e == v),
            }
            match Source::try_from(v) {
                Ok(s) => assert_eq!(s as u8, v),
                Err(e) => assert!(v > 3 && e == v),
            }
        }
        assert_eq!(Protocol::from_wire(9), Protocol::Detect);
    }

    #[test]
    fn rule_keys_are_slot_scope_port_address() {
        assert_eq!(
            rule_key_v4(1, 0x0203, 3306, [10, 0, 0, 1]),
            [1, 2, 3, 0x0c, 0xea, 10, 0, 0, 1]
        );
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 7;
        let k = rule_key_v6(0, SCOPE_NODE, PORT_ANY, &v6);
        assert_eq!(k[..5], [0, 0, 0, 0, 0]);
        assert_eq!(k[5..], v6);
        assert_eq!(RULE_KEY_FIXED_BITS, 5 * 8);
    }

    #[test]
    fn learning_layouts_are_pinned() {
        assert_eq!(size_of::<LearnedKey>(), 24);
        assert_eq!(offset_of!(LearnedKey, port), 4);
        assert_eq!(offset_of!(LearnedKey, addr), 8);
        assert_eq!(size_of::<LearnedEntry>(), 24);
        assert_eq!(offset_of!(LearnedEntry, last_seen_ns), 8);
        assert_eq!(offset_of!(LearnedEntry, observations), 16);
        assert_eq!(size_of::<LearnWatch>(), 24);
        assert_eq!(size_of::<LearnConfig>(), 16);
        assert_eq!(offset_of!(LearnConfig, scope_quota), 8);
        assert_eq!(offset_of!(LearnConfig, hints), 12);
        assert_eq!(Source::try_from(3), Ok(Source::Learned));
        assert_eq!(Source::Learned.as_str(), "learned");
    }

    #[test]
    fn scope_entry_flags_stay_clear_of_the_scope_id() {
        // The low 16 bits of a `CLS_SCOPES` value are the scope id.
        for flag in [SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN] {
            assert_eq!(flag & 0xffff, 0);
        }
        assert_ne!(SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN);
        assert_eq!(SCOPE_FLAG_POD_UNKNOWN as u16, SCOPE_NODE);
        assert_eq!(LAYOUT_VERSION, 7, "CLS_SCOPES values gained a flag");
    }

    #[test]
    fn namespace_keys_round_trip_and_refuse_bad_lengths() {
        let key = namespace_key("payments").unwrap();
        assert_eq!(&key[..9], b"payments\0");
        assert_eq!(namespace_of_key(&key), b"payments");
        let longest = "a".repeat(63);
        assert_eq!(
            namespace_of_key(&namespace_key(&longest).unwrap()),
            longest.as_bytes()
        );
        assert_eq!(namespace_key(""), None);
        assert_eq!(namespace_key(&"a".repeat(64)), None);
    }

    #[test]
    fn each_namespace_gets_an_eighth_of_the_verdict_table() {
        assert_eq!(verdicts_per_netns(maps::VERDICTS_CAPACITY), 8192);
        assert_eq!(verdicts_per_netns(64), 8);
        assert_eq!(verdicts_per_netns(4), 1);
    }

    #[test]
    fn inflight_slots_cover_the_array() {
        assert!(maps::INFLIGHT_CAPACITY.is_power_of_two());
        assert_eq!(inflight_slot(0), 0);
        assert_eq!(inflight_slot(u64::MAX), maps::INFLIGHT_CAPACITY - 1);
        assert_eq!(inflight_slot(maps::INFLIGHT_CAPACITY as u64 + 5), 5);
    }

    #[test]
    fn excluded_uid_key_separates_slots() {
        assert_eq!(excluded_uid_key(0, 2102), 2102);
        assert_eq!(excluded_uid_key(1, 2102), (1u64 << 32) | 2102);
    }
}

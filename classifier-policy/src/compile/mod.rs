//! Compiling a [`Policy`] into the contents of the kernel's policy maps.
//!
//! The trie keys are `[slot][scope][port][address]`. Each scope is its own
//! universe: the entries of scope `s` are computed from the rules of scope
//! `s` only (node-wide rules are scope [`SCOPE_NODE`]). Port [`PORT_ANY`]
//! holds the entries of wildcard-port rules (every port, `ports: "*"`).
//!
//! What the kernel does per connect, for each universe in turn (the client's
//! scope first, if it has one, then the node's):
//!
//! 1. look up `(scope, port, addr)` (hit E) and `(scope, PORT_ANY, addr)`
//!    (hit W);
//! 2. among the hits whose kind is `RULE_MATCH`, keep the one with the larger
//!    `net_prefix`, E on a tie; if there is one, it decides;
//!
//! and when no universe decides, the default-port bitmap. The compiler makes
//! that give exactly the answer of
//! [`explain::classify_from`](super::explain::classify_from).
//!
//! Why it works. Within a universe:
//!
//! - Wildcard entries (port 0) are keyed by every network and `except` of
//!   the wildcard rules, and the value at key K is the best wildcard rule
//!   "at the level of K" (a network containing K with no `except`
//!   containing K; most specific, then lowest id). For an address whose
//!   longest key is K, a wildcard network or hole contains the address iff
//!   it contains K (each of them is a key, so none is longer than K), so W
//!   is the best wildcard rule for the address.
//! - Exact-port entries at port p are keyed by every network and `except` of
//!   the explicit rules listing p, plus the `except`s of wildcard rules that
//!   lie inside such a network; their value is the best among *all* rules of
//!   the universe at that level (wildcard rules contain every port). With Ke
//!   the longest such key containing the address, every explicit network
//!   matching the address contains Ke, and so does every hole containing
//!   the address (a wildcard hole that does not contain Ke would be inside
//!   an explicit network, so a longer key). So E is the best among explicit
//!   rules and the wildcard rules whose network contains Ke; a wildcard
//!   network that contains the address but not Ke is longer than Ke, and
//!   W has the best of those.
//! - Hence the better of E and W by `net_prefix` (the deciding rule's own
//!   network length, not the key's) is the answer; on equal prefixes the
//!   networks are the same CIDR, E considered W's rule too, and E also
//!   prefers explicit ports, as the reference does.
//!
//! Entries come out sorted by `(scope, port, address, prefix)`, per family:
//! equal policies give equal output, and the datapath diffs two compiled
//! policies with one merge walk over that order.

use std::collections::{BTreeMap, HashMap};

use classifier_common::{
    maps, RuleKeyV4, RuleKeyV6, RuleVerdict, PORT_ANY, RULE_KEY_FIXED_BITS, RULE_MATCH, RULE_NONE,
    SCOPE_NODE,
};
use ipnet::IpNet;

use super::model::{Mark, Policy};
use super::ports::{PortSet, PORT_WORDS};

/// One trie entry for address family with `N`-byte addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrieEntry<const N: usize> {
    /// [`SCOPE_NODE`] for node-wide rules, else the namespace's scope id.
    pub scope: u16,
    /// [`PORT_ANY`] (0) for the entries of wildcard-port rules.
    pub port: u16,
    pub addr: [u8; N],
    /// Address bits matched (not counting the slot, scope and port).
    pub prefix: u8,
    pub verdict: RuleVerdict,
}

impl<const N: usize> TrieEntry<N> {
    /// The order entries are sorted in: `(scope, port, addr, prefix)`.
    pub fn sort_key(&self) -> (u16, u16, [u8; N], u8) {
        (self.scope, self.port, self.addr, self.prefix)
    }
}

/// Everything one policy slot needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Sorted by [`TrieEntry::sort_key`].
    pub v4: Vec<TrieEntry<4>>,
    /// Sorted by [`TrieEntry::sort_key`].
    pub v6: Vec<TrieEntry<16>>,
    /// Bit `p % 64` of word `p / 64` is set when port `p` is a default
    /// opaque port.
    pub default_ports: Box<[u64; PORT_WORDS]>,
    pub excluded_uids: Vec<u32>,
    pub mark: Option<Mark>,
    pub rule_count: u32,
    /// Some rule is namespace-scoped: the kernel must find the client's
    /// scope (`CONFIG_FLAG_SCOPED`).
    pub scoped: bool,
    /// Some entry is at [`PORT_ANY`]: the kernel must do the wildcard-port
    /// lookups (`CONFIG_FLAG_ANY_PORT`).
    pub any_port: bool,
    /// The scope id of every namespace that has rules (a subset of the ids
    /// given to [`compile_with_scopes`]).
    pub scope_ids: BTreeMap<String, u16>,
}

impl CompiledPolicy {
    /// A policy with nothing in it: the starting point of a full write.
    pub fn empty() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
            default_ports: Box::new([0; PORT_WORDS]),
            excluded_uids: Vec::new(),
            mark: None,
            rule_count: 0,
            scoped: false,
            any_port: false,
            scope_ids: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// `entries` is the exact number of trie entries the policy needs, except
    /// for absurdly large policies, where it is the count before merging keys
    /// shared by several rules (computing it exactly would take gigabytes).
    #[error(
        "the policy needs {entries} {family} trie entries but at most {capacity} fit \
         (every port of a rule times every network and except of it is one entry; \
         port ranges multiply entries, so narrow the ranges or split the networks less)"
    )]
    TooManyEntries {
        family: &'static str,
        entries: u64,
        capacity: u64,
    },
    #[error("rule id 0 is reserved (ids are 1-based positions)")]
    RuleIdZero,
    #[error("rule {rule_id} ({origin}) is scoped to namespace {scope:?}, which has no scope id")]
    UnknownScope {
        rule_id: u32,
        origin: String,
        scope: String,
    },
    #[error("namespace {scope:?} has scope id 0, which is reserved for node-wide rules")]
    ScopeIdZero { scope: String },
    #[error("the policy has rules for {count} namespaces, at most 65535 are supported")]
    TooManyScopes { count: usize },
}

fn rule_key<const K: usize>(slot: u8, scope: u16, port: u16, addr: &[u8]) -> [u8; K] {
    let mut k = [0u8; K];
    k[0] = slot;
    k[1..3].copy_from_slice(&scope.to_be_bytes());
    k[3..5].copy_from_slice(&port.to_be_bytes());
    k[5..].copy_from_slice(addr);
    k
}

/// LPM key and prefix length for an IPv4 entry in `slot`:
/// `[slot][scope BE][port BE][addr]`.
pub fn key_v4(slot: u8, e: &TrieEntry<4>) -> (u32, RuleKeyV4) {
    (
        RULE_KEY_FIXED_BITS + e.prefix as u32,
        rule_key(slot, e.scope, e.port, &e.addr),
    )
}

/// LPM key and prefix length for an IPv6 entry in `slot`.
pub fn key_v6(slot: u8, e: &TrieEntry<16>) -> (u32, RuleKeyV6) {
    (
        RULE_KEY_FIXED_BITS + e.prefix as u32,
        rule_key(slot, e.scope, e.port, &e.addr),
    )
}

/// Per-policy limits: both slots share each trie during a switch.
pub const MAX_V4_ENTRIES: u64 = maps::RULES_V4_CAPACITY as u64 / 2;
pub const MAX_V6_ENTRIES: u64 = maps::RULES_V6_CAPACITY as u64 / 2;

/// Which prefix lengths (0..=128) occur among the indexed networks of one
/// family, so the walk up from a hole only probes lengths that can hit.
#[derive(Default)]
struct PrefixLens([u64; 3]);

impl PrefixLens {
    fn insert(&mut self, len: u8) {
        self.0[len as usize / 64] |= 1 << (len % 64);
    }
    fn contains(&self, len: u8) -> bool {
        self.0[len as usize / 64] & (1 << (len % 64)) != 0
    }
}

/// A network of a rule, as stored in the index.
#[derive(Clone, Copy)]
struct NetRef {
    rule: u32,
    net: u32,
}

/// Compiles `policy`, giving the namespaces that have rules the scope ids
/// 1, 2, ... in name order. The agent, which must keep ids stable across
/// policy changes, uses [`compile_with_scopes`].
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, CompileError> {
    let names = policy.scopes();
    if names.len() > u16::MAX as usize {
        return Err(CompileError::TooManyScopes { count: names.len() });
    }
    let ids: BTreeMap<String, u16> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), (i + 1) as u16))
        .collect();
    compile_with_scopes(policy, &ids)
}

/// Compiles `policy` into one slot's map contents, with the scope id of
/// each namespace taken from `scope_ids` (every scoped rule's namespace
/// must have one, and no namespace may have [`SCOPE_NODE`]). Trie entries
/// come out sorted by [`TrieEntry::sort_key`].
pub fn compile_with_scopes(
    policy: &Policy,
    scope_ids: &BTreeMap<String, u16>,
) -> Result<CompiledPolicy, CompileError> {
    if policy.rules.iter().any(|r| r.id == 0) {
        return Err(CompileError::RuleIdZero);
    }
    let mut used_scopes = BTreeMap::new();
    let mut rule_scope: Vec<u16> = Vec::with_capacity(policy.rules.len());
    for r in &policy.rules {
        let id = match &r.scope {
            None => SCOPE_NODE,
            Some(ns) => match scope_ids.get(ns) {
                Some(0) => return Err(CompileError::ScopeIdZero { scope: ns.clone() }),
                Some(&id) => {
                    used_scopes.insert(ns.clone(), id);
                    id
                }
                None => {
                    return Err(CompileError::UnknownScope {
                        rule_id: r.id,
                        origin: r.origin.clone(),
                        scope: ns.clone(),
                    })
                }
            },
        };
        rule_scope.push(id);
    }
    // Wildcard-port rules are stored once, at PORT_ANY.
    let rule_ports = |ri: usize| -> Option<&PortSet> {
        let r = &policy.rules[ri];
        (!r.is_wildcard_port()).then_some(&r.ports)
    };

    // Refuse before allocating anything proportional to the entry count:
    // "1-65535" on a few hundred networks is an easy mistake to make.
    let (mut raw4, mut raw6) = (0u64, 0u64);
    for (ri, r) in policy.rules.iter().enumerate() {
        let ports = rule_ports(ri).map_or(1, |p| p.len() as u64);
        for n in &r.networks {
            let keys = 1 + n.except.len() as u64;
            match n.cidr {
                IpNet::V4(_) => raw4 += ports * keys,
                IpNet::V6(_) => raw6 += ports * keys,
            }
        }
    }
    for (family, raw, cap) in [
        ("IPv4", raw4, MAX_V4_ENTRIES),
        ("IPv6", raw6, MAX_V6_ENTRIES),
    ] {
        if raw > 4 * cap {
            return Err(CompileError::TooManyEntries {
                family,
                entries: raw,
                capacity: cap,
            });
        }
    }

    // Index every (scope, port, network cidr) -> the rule networks with that
    // cidr, in rule-id order so the first qualifying one is the tie winner.
    // Wildcard rules are indexed at PORT_ANY.
    type Key = (u16, u16, IpNet);
    let mut flat: Vec<(Key, NetRef)> = Vec::new();
    // Holes become keys too.
    let mut except_keys: Vec<Key> = Vec::new();
    // Holes of wildcard rules, per scope, to add at the explicit ports of
    // the explicit networks around them.
    let mut wildcard_holes: Vec<(u16, IpNet)> = Vec::new();
    let mut order: Vec<usize> = (0..policy.rules.len()).collect();
    order.sort_by_key(|&i| policy.rules[i].id);
    for &ri in &order {
        let r = &policy.rules[ri];
        let scope = rule_scope[ri];
        let mut add = |port: u16| {
            for (ni, n) in r.networks.iter().enumerate() {
                flat.push((
                    (scope, port, n.cidr),
                    NetRef {
                        rule: ri as u32,
                        net: ni as u32,
                    },
                ));
                except_keys.extend(n.except.iter().map(|e| (scope, port, *e)));
            }
        };
        match rule_ports(ri) {
            Some(ports) => ports.iter().for_each(&mut add),
            None => {
                add(PORT_ANY);
                for n in &r.networks {
                    wildcard_holes.extend(n.except.iter().map(|e| (scope, *e)));
                }
            }
        }
    }
    // Stable sort keeps rule-id order within one key.
    flat.sort_by_key(|&(k, _)| k);
    let mut index: HashMap<Key, (u32, u32)> = HashMap::with_capacity(flat.len());
    let (mut lens4, mut lens6) = (PrefixLens::default(), PrefixLens::default());
    let mut i = 0;
    while i < flat.len() {
        let key = flat[i].0;
        let start = i;
        while i < flat.len() && flat[i].0 == key {
            i += 1;
        }
        index.insert(key, (start as u32, (i - start) as u32));
        match key.2 {
            IpNet::V4(n) => lens4.insert(n.prefix_len()),
            IpNet::V6(n) => lens6.insert(n.prefix_len()),
        }
    }
    let lens_of = |cidr: &IpNet| {
        if cidr.addr().is_ipv4() {
            &lens4
        } else {
            &lens6
        }
    };
    // Every indexed prefix length of `cidr` (itself included), longest
    // first, as networks.
    let supernets = |cidr: IpNet| {
        let lens = lens_of(&cidr);
        (0..=cidr.prefix_len())
            .rev()
            .filter(move |&l| lens.contains(l))
            .map(move |l| {
                IpNet::new(cidr.addr(), l)
                    .expect("shorter prefix is valid")
                    .trunc()
            })
    };

    // A wildcard rule's hole inside an explicit network (of its scope) is a
    // key at every port of the explicit rules with that network.
    if !wildcard_holes.is_empty() {
        let mut explicit_ports: HashMap<(u16, IpNet), PortSet> = HashMap::new();
        for &((scope, port, cidr), _) in &flat {
            if port != PORT_ANY {
                explicit_ports
                    .entry((scope, cidr))
                    .or_default()
                    .insert(port);
            }
        }
        wildcard_holes.sort_unstable();
        wildcard_holes.dedup();
        for &(scope, hole) in &wildcard_holes {
            let mut ports = PortSet::new();
            for sup in supernets(hole) {
                if let Some(p) = explicit_ports.get(&(scope, sup)) {
                    ports.union_with(p);
                }
            }
            except_keys.extend(ports.iter().map(|port| (scope, port, hole)));
        }
    }

    // The reference answer for addresses whose longest key is (scope, port,
    // cidr): the most specific network containing cidr with no hole
    // containing it; explicit ports before wildcard on equal networks; then
    // the lowest rule id. At PORT_ANY only wildcard rules count.
    let best_at = |scope: u16, port: u16, cidr: IpNet| -> RuleVerdict {
        for sup in supernets(cidr) {
            let lists = [
                index.get(&(scope, port, sup)),
                if port == PORT_ANY {
                    None
                } else {
                    index.get(&(scope, PORT_ANY, sup))
                },
            ];
            for &(start, count) in lists.into_iter().flatten() {
                for &(_, NetRef { rule, net }) in &flat[start as usize..(start + count) as usize] {
                    let r = &policy.rules[rule as usize];
                    let n = &r.networks[net as usize];
                    if n.except.iter().any(|e| e.contains(&cidr)) {
                        continue;
                    }
                    return RuleVerdict {
                        rule_id: r.id,
                        protocol: r.protocol.wire(),
                        kind: RULE_MATCH,
                        net_prefix: sup.prefix_len(),
                        _pad: 0,
                    };
                }
            }
        }
        RuleVerdict {
            rule_id: 0,
            protocol: classifier_common::PROTO_UNKNOWN,
            kind: RULE_NONE,
            net_prefix: 0,
            _pad: 0,
        }
    };

    // `flat` is sorted, so its distinct keys come out sorted; merging in the
    // (few) hole keys needs only one more sort.
    let mut keys: Vec<Key> = flat.iter().map(|&(k, _)| k).collect();
    keys.dedup();
    if !except_keys.is_empty() {
        keys.extend(except_keys);
        keys.sort_unstable();
        keys.dedup();
    }

    // Capacity counts every scope together: they share the trie.
    let n4 = keys
        .iter()
        .filter(|(_, _, c)| matches!(c, IpNet::V4(_)))
        .count() as u64;
    let n6 = keys.len() as u64 - n4;
    for (family, n, cap) in [("IPv4", n4, MAX_V4_ENTRIES), ("IPv6", n6, MAX_V6_ENTRIES)] {
        if n > cap {
            return Err(CompileError::TooManyEntries {
                family,
                entries: n,
                capacity: cap,
            });
        }
    }

    // `keys` is sorted by (scope, port, cidr), and IpNet orders by (address,
    // prefix) within a family: each family's entries come out in
    // `TrieEntry::sort_key` order.
    let mut v4 = Vec::with_capacity(n4 as usize);
    let mut v6 = Vec::with_capacity(n6 as usize);
    let mut any_port = false;
    for (scope, port, cidr) in keys {
        any_port |= port == PORT_ANY;
        let verdict = best_at(scope, port, cidr);
        match cidr {
            IpNet::V4(c) => v4.push(TrieEntry {
                scope,
                port,
                addr: c.addr().octets(),
                prefix: c.prefix_len(),
                verdict,
            }),
            IpNet::V6(c) => v6.push(TrieEntry {
                scope,
                port,
                addr: c.addr().octets(),
                prefix: c.prefix_len(),
                verdict,
            }),
        }
    }
    debug_assert!(v4.is_sorted_by_key(TrieEntry::sort_key));
    debug_assert!(v6.is_sorted_by_key(TrieEntry::sort_key));

    Ok(CompiledPolicy {
        v4,
        v6,
        default_ports: policy.default_opaque_ports.to_bitmap(),
        excluded_uids: policy.exclude_uids.clone(),
        mark: policy.mark,
        rule_count: policy.rules.len() as u32,
        scoped: !used_scopes.is_empty(),
        any_port,
        scope_ids: used_scopes,
    })
}

/// A model of the kernel's lookups over compiled entries, for tests here
/// and in `sources`.
#[cfg(test)]
pub(crate) mod kernel_model {
    use super::*;
    use crate::policy::explain::canonical_addr;
    use crate::policy::model::Protocol;
    use classifier_common::PROTO_OPAQUE;
    use std::net::IpAddr;

    /// Longest-prefix lookup of one (scope, port) in one family's entries,
    /// through the real key encoding, as the kernel's trie does it.
    pub(crate) fn lpm(
        c: &CompiledPolicy,
        scope: u16,
        port: u16,
        addr: IpAddr,
    ) -> Option<RuleVerdict> {
        fn covers(key: &[u8], prefix: u32, probe: &[u8]) -> bool {
            let full = prefix as usize / 8;
            if key[..full] != probe[..full] {
                return false;
            }
            let rest = prefix % 8;
            rest == 0 || (key[full] ^ probe[full]) & (0xffu8 << (8 - rest)) == 0
        }
        let slot = (port % 2) as u8; // exercise both slot values
        match addr {
            IpAddr::V4(a) => {
                let probe: RuleKeyV4 = rule_key(slot, scope, port, &a.octets());
                c.v4.iter()
                    .filter_map(|e| {
                        let (len, k) = key_v4(slot, e);
                        (len >= RULE_KEY_FIXED_BITS && covers(&k, len, &probe))
                            .then_some((len, e.verdict))
                    })
                    .max_by_key(|(len, _)| *len)
            }
            IpAddr::V6(a) => {
                let probe: RuleKeyV6 = rule_key(slot, scope, port, &a.octets());
                c.v6.iter()
                    .filter_map(|e| {
                        let (len, k) = key_v6(slot, e);
                        (len >= RULE_KEY_FIXED_BITS && covers(&k, len, &probe))
                            .then_some((len, e.verdict))
                    })
                    .max_by_key(|(len, _)| *len)
            }
        }
        .map(|(_, v)| v)
    }

    /// What the kernel does: per universe (the client's scope, then the
    /// node's), the exact-port and PORT_ANY lookups, the RULE_MATCH with the
    /// larger net_prefix (exact on a tie) decides; else the default bitmap.
    /// Returns (protocol wire value, source, rule id).
    pub(crate) fn kernel_lookup(
        c: &CompiledPolicy,
        client_scope: Option<u16>,
        addr: IpAddr,
        port: u16,
    ) -> (u8, &'static str, u32) {
        let addr = canonical_addr(addr);
        if port == PORT_ANY {
            // As the kernel: port 0 is the wildcard's key, not a port.
            return (Protocol::Detect.wire(), "none", 0);
        }
        let universes = client_scope.into_iter().chain([SCOPE_NODE]);
        for scope in universes {
            let exact = lpm(c, scope, port, addr).filter(|v| v.kind == RULE_MATCH);
            let any = if c.any_port {
                lpm(c, scope, PORT_ANY, addr).filter(|v| v.kind == RULE_MATCH)
            } else {
                None
            };
            let hit = match (exact, any) {
                (Some(e), Some(w)) => Some(if w.net_prefix > e.net_prefix { w } else { e }),
                (e, w) => e.or(w),
            };
            if let Some(v) = hit {
                return (v.protocol, "rule", v.rule_id);
            }
        }
        if c.default_ports[port as usize / 64] & (1 << (port % 64)) != 0 {
            (PROTO_OPAQUE, "default_port", 0)
        } else {
            (Protocol::Detect.wire(), "none", 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_model::kernel_lookup;
    use super::*;
    use crate::policy::explain::{classify_from, DecisionSource};
    use crate::policy::model::{Network, Protocol, Rule};
    use crate::policy::ports::PortSet;
    use classifier_common::PROTO_OPAQUE;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// xorshift64*: deterministic, good enough to shake out precedence bugs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A random sub-network of `parent` that is `extra` bits longer (capped).
    fn sub_net(rng: &mut Rng, parent: IpNet, extra: u8) -> IpNet {
        let len = (parent.prefix_len() + extra).min(parent.max_prefix_len());
        let addr = random_addr_in(rng, parent);
        IpNet::new(addr, len).unwrap().trunc()
    }

    fn random_addr_in(rng: &mut Rng, net: IpNet) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host = (rng.next() as u32) & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let r = (rng.next() as u128) << 64 | rng.next() as u128;
                let host = r & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// Networks drawn from a few small "neighbourhoods" so that rules nest
    /// and overlap often instead of almost never.
    fn random_net(rng: &mut Rng, v6: bool) -> IpNet {
        let base: IpNet = if v6 {
            ["2001:db8::/32", "fd00::/8", "::/0"][rng.below(3) as usize]
                .parse()
                .unwrap()
        } else {
            ["10.0.0.0/8", "192.168.0.0/16", "0.0.0.0/0"][rng.below(3) as usize]
                .parse()
                .unwrap()
        };
        let extra = rng.below(if v6 { 40 } else { 20 }) as u8;
        sub_net(rng, base, extra)
    }

    const SCOPES: [&str; 3] = ["team-a", "team-b", "team-c"];

    fn random_policy(rng: &mut Rng) -> Policy {
        let ports_pool = [25u16, 80, 443, 3306, 4222, 5432, 8080];
        let mut rules = Vec::new();
        for id in 1..=(1 + rng.below(12) as u32) {
            let mut ports = PortSet::new();
            for _ in 0..1 + rng.below(3) {
                ports.insert(ports_pool[rng.below(ports_pool.len() as u64) as usize]);
            }
            let mut networks = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let cidr = if !rules.is_empty() && rng.chance(30) {
                    // Nest inside an earlier rule's network.
                    let r: &Rule = &rules[rng.below(rules.len() as u64) as usize];
                    let parent = r.networks[rng.below(r.networks.len() as u64) as usize].cidr;
                    let extra = 1 + rng.below(8) as u8;
                    sub_net(rng, parent, extra)
                } else {
                    let v6 = rng.chance(40);
                    random_net(rng, v6)
                };
                let mut except = Vec::new();
                if cidr.prefix_len() < cidr.max_prefix_len() {
                    for _ in 0..rng.below(3) {
                        let room = (cidr.max_prefix_len() - cidr.prefix_len()).min(12) as u64;
                        let extra = 1 + rng.below(room) as u8;
                        except.push(sub_net(rng, cidr, extra));
                    }
                }
                networks.push(Network { cidr, except });
            }
            if rng.chance(20) {
                ports = PortSet::all();
            }
            let protocol = Protocol::ALL[rng.below(4) as usize];
            let scope = if rng.chance(35) {
                Some(SCOPES[rng.below(SCOPES.len() as u64) as usize].to_string())
            } else {
                None
            };
            rules.push(Rule {
                id,
                networks,
                ports,
                protocol,
                scope,
                origin: format!("rule {id}"),
            });
        }
        let mut default_opaque_ports = PortSet::new();
        for p in ports_pool {
            if rng.chance(40) {
                default_opaque_ports.insert(p);
            }
        }
        Policy {
            default_opaque_ports,
            exclude_uids: vec![2102],
            rules,
            mark: None,
            pod_namespaces: Default::default(),
        }
    }

    #[test]
    fn compiled_lookup_agrees_with_classify_on_random_policies() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut probes_checked = 0;
        let mut rule_hits = 0;
        let (mut scoped_hits, mut wildcard_hits) = (0, 0);
        for round in 0..600 {
            let policy = random_policy(&mut rng);
            let compiled = compile(&policy).unwrap();
            let mut probes: Vec<IpAddr> = Vec::new();
            for r in &policy.rules {
                for n in &r.networks {
                    probes.push(random_addr_in(&mut rng, n.cidr));
                    probes.push(n.cidr.network());
                    probes.push(n.cidr.broadcast());
                    for e in &n.except {
                        probes.push(random_addr_in(&mut rng, *e));
                        probes.push(e.network());
                    }
                }
            }
            for _ in 0..20 {
                let v6 = rng.chance(40);
                let net = random_net(&mut rng, v6);
                probes.push(random_addr_in(&mut rng, net));
            }
            // Dual-stack sockets connect to IPv4 through mapped addresses.
            let mapped: Vec<IpAddr> = probes
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                    _ => None,
                })
                .collect();
            probes.extend(mapped);
            for addr in probes {
                // A random client namespace: one with rules, one without
                // (no scope id: node-wide only), or the node itself.
                let ns = match rng.below(5) {
                    0 => None,
                    1 => Some("no-rules-here"),
                    i => Some(SCOPES[(i - 2) as usize]),
                };
                let client_scope = ns.and_then(|n| compiled.scope_ids.get(n).copied());
                for port in [25u16, 80, 443, 3306, 4222, 5432, 8080, 9999] {
                    let want = classify_from(&policy, ns, addr, port);
                    let got = kernel_lookup(&compiled, client_scope, addr, port);
                    let want_t = (
                        want.protocol.wire(),
                        want.source.as_str(),
                        want.source.rule_id(),
                    );
                    assert_eq!(
                        got, want_t,
                        "round {round}: {addr} port {port} from {ns:?}\npolicy: {policy:#?}"
                    );
                    probes_checked += 1;
                    if matches!(want.source, DecisionSource::Rule { .. }) {
                        rule_hits += 1;
                        if want.scope.is_some() {
                            scoped_hits += 1;
                        }
                        if policy
                            .rule(want.source.rule_id())
                            .unwrap()
                            .is_wildcard_port()
                        {
                            wildcard_hits += 1;
                        }
                    }
                }
            }
        }
        // Make sure the generator actually exercises rules, not just defaults.
        assert!(
            rule_hits * 10 > probes_checked,
            "{rule_hits} of {probes_checked}"
        );
        assert!(
            scoped_hits * 20 > rule_hits && wildcard_hits * 20 > rule_hits,
            "{scoped_hits} scoped and {wildcard_hits} wildcard of {rule_hits}"
        );
    }

    fn rule(id: u32, nets: &[&str], ports: &str, protocol: Protocol) -> Rule {
        Rule {
            id,
            networks: nets
                .iter()
                .map(|n| Network::new(n.parse().unwrap()))
                .collect(),
            ports: ports.parse().unwrap(),
            protocol,
            scope: None,
            origin: String::new(),
        }
    }

    #[test]
    fn entries_and_keys() {
        let mut p = Policy::builtin_default();
        p.rules.push(Rule {
            id: 1,
            networks: vec![Network {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            }],
            ports: "4222".parse().unwrap(),
            protocol: Protocol::Opaque,
            scope: None,
            origin: String::new(),
        });
        p.rules
            .push(rule(2, &["2001:db8::/32"], "80-81", Protocol::Detect));
        let c = compile(&p).unwrap();
        assert_eq!(c.rule_count, 2);
        assert_eq!(c.v4.len(), 2);
        assert_eq!(c.v6.len(), 2);
        let net = c.v4.iter().find(|e| e.prefix == 8).unwrap();
        assert_eq!(
            net.verdict,
            RuleVerdict {
                rule_id: 1,
                protocol: PROTO_OPAQUE,
                kind: RULE_MATCH,
                net_prefix: 8,
                _pad: 0
            }
        );
        assert_eq!(key_v4(1, net), (48, [1, 0, 0, 0x10, 0x7e, 10, 0, 0, 0]));
        let hole = c.v4.iter().find(|e| e.prefix == 16).unwrap();
        assert_eq!(hole.verdict.kind, RULE_NONE);
        assert_eq!(hole.verdict.net_prefix, 0);
        assert_eq!(key_v4(0, hole), (56, [0, 0, 0, 0x10, 0x7e, 10, 1, 0, 0]));
        let (len, k) = key_v6(1, &c.v6[0]);
        assert_eq!(len, 40 + 32);
        assert_eq!(&k[..9], &[1, 0, 0, 0, 80, 0x20, 0x01, 0x0d, 0xb8]);
        assert!(!c.scoped && !c.any_port && c.scope_ids.is_empty());
        assert_eq!(c.v6[0].verdict.protocol, classifier_common::PROTO_UNKNOWN);
        assert_eq!(c.v6[0].verdict.kind, RULE_MATCH);
    }

    #[test]
    fn same_key_from_two_rules_goes_to_lowest_id() {
        let mut p = Policy::builtin_default();
        p.rules
            .push(rule(1, &["192.0.2.0/24"], "25", Protocol::Http1));
        p.rules
            .push(rule(2, &["192.0.2.0/24"], "25-26", Protocol::Opaque));
        let c = compile(&p).unwrap();
        assert_eq!(c.v4.len(), 2);
        assert_eq!(c.v4[0].port, 25);
        assert_eq!(c.v4[0].verdict.rule_id, 1);
        assert_eq!(c.v4[1].verdict.rule_id, 2);
    }

    #[test]
    fn default_bitmap() {
        let c = compile(&Policy::builtin_default()).unwrap();
        let set: Vec<u16> = (0..=65535u32)
            .filter(|&p| c.default_ports[p as usize / 64] & (1 << (p % 64)) != 0)
            .map(|p| p as u16)
            .collect();
        assert_eq!(set, vec![25, 587, 3306, 4444, 5432, 6379, 9300, 11211]);
        assert_eq!(c.default_ports[3306 / 64], 1 << (3306 % 64));
        assert_eq!(c.excluded_uids, vec![2102]);
        assert!(c.v4.is_empty() && c.v6.is_empty() && c.mark.is_none());
    }

    #[test]
    fn capacity_errors_say_how_many_and_the_limit() {
        let mut p = Policy::builtin_default();
        // 5 networks x 65534 ports (all but one: not a wildcard rule): over the limit, but not absurdly.
        p.rules.push(rule(
            1,
            &[
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.4.0.0/16",
            ],
            "2-65535",
            Protocol::Opaque,
        ));
        let e = compile(&p).unwrap_err();
        assert_eq!(
            e,
            CompileError::TooManyEntries {
                family: "IPv4",
                entries: 5 * 65534,
                capacity: MAX_V4_ENTRIES
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("327670") && msg.contains("262144") && msg.contains("port ranges"),
            "{msg}"
        );

        let mut p = Policy::builtin_default();
        let nets: Vec<String> = (0..100).map(|i| format!("2001:db8:{i:x}::/48")).collect();
        let nets: Vec<&str> = nets.iter().map(|s| s.as_str()).collect();
        p.rules.push(rule(1, &nets, "2-65535", Protocol::Opaque));
        let e = compile(&p).unwrap_err();
        assert!(
            matches!(
                e,
                CompileError::TooManyEntries {
                    family: "IPv6",
                    entries: 6_553_400,
                    ..
                }
            ),
            "{e:?}"
        );

        // Exactly at the limit is fine: 4 networks x 65534 ports (all but one: not a wildcard rule) < 262144.
        let mut p = Policy::builtin_default();
        p.rules.push(rule(
            1,
            &["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"],
            "2-65535",
            Protocol::Opaque,
        ));
        assert_eq!(compile(&p).unwrap().v4.len(), 4 * 65534);
    }

    #[test]
    fn hundred_thousand_rules_compile_quickly() {
        let mut rng = Rng(42);
        let mut p = Policy::builtin_default();
        for id in 1..=100_000u32 {
            let v6 = rng.chance(30);
            let cidr = random_net(&mut rng, v6);
            let except = if cidr.prefix_len() + 4 <= cidr.max_prefix_len() && rng.chance(20) {
                vec![sub_net(&mut rng, cidr, 4)]
            } else {
                vec![]
            };
            let ports: PortSet = (0..2).map(|_| 1 + rng.below(2000) as u16).collect();
            p.rules.push(Rule::new(
                id,
                vec![Network { cidr, except }],
                ports,
                Protocol::Opaque,
            ));
        }
        let start = std::time::Instant::now();
        let c = compile(&p).unwrap();
        let took = start.elapsed();
        assert!(c.v4.len() + c.v6.len() > 150_000);
        // Generous: debug builds are ~10x slower than release.
        assert!(took.as_secs_f64() < 10.0, "{took:?}");
        eprintln!(
            "compiled 100k rules into {} entries in {took:?}",
            c.v4.len() + c.v6.len()
        );
    }

    #[test]
    fn scopes_wildcards_and_keys() {
        let mut p = Policy::builtin_default();
        p.rules.push(rule(
            1,
            &["203.0.113.0/24"],
            "*".replace('*', "1-65535").as_str(),
            Protocol::Detect,
        ));
        p.rules
            .push(rule(2, &["203.0.113.0/24"], "4222", Protocol::Opaque));
        p.rules.push(
            rule(3, &["0.0.0.0/0"], "5432", Protocol::Http1).with_scope(Some("team-b".into())),
        );
        p.rules.push(
            rule(4, &["2001:db8::/32"], "1-65535", Protocol::Opaque)
                .with_scope(Some("team-a".into())),
        );
        let c = compile(&p).unwrap();
        assert!(c.scoped && c.any_port);
        assert_eq!(
            c.scope_ids,
            BTreeMap::from([("team-a".to_string(), 1), ("team-b".to_string(), 2)])
        );
        // Node: wildcard at port 0, explicit at 4222; then team-b's rule.
        let got: Vec<(u16, u16, u8, u32)> =
            c.v4.iter()
                .map(|e| (e.scope, e.port, e.prefix, e.verdict.rule_id))
                .collect();
        assert_eq!(got, vec![(0, 0, 24, 1), (0, 4222, 24, 2), (2, 5432, 0, 3)]);
        let (len, k) = key_v4(1, &c.v4[2]);
        assert_eq!((len, k), (40, [1, 0, 2, 0x15, 0x38, 0, 0, 0, 0]));
        let (len, k) = key_v6(0, &c.v6[0]);
        assert_eq!(len, 40 + 32);
        assert_eq!(&k[..9], &[0, 0, 1, 0, 0, 0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(c.v6[0].verdict.net_prefix, 32);

        // Explicit ids are honoured; unknown or zero ids are errors.
        let ids = BTreeMap::from([("team-a".to_string(), 7), ("team-b".to_string(), 300)]);
        let c = compile_with_scopes(&p, &ids).unwrap();
        assert_eq!(c.v4[2].scope, 300);
        assert_eq!(c.v6[0].scope, 7);
        let e = compile_with_scopes(&p, &BTreeMap::from([("team-a".to_string(), 7)])).unwrap_err();
        assert!(
            matches!(e, CompileError::UnknownScope { rule_id: 3, ref scope, .. } if scope == "team-b"),
            "{e:?}"
        );
        let e = compile_with_scopes(
            &p,
            &BTreeMap::from([("team-a".to_string(), 0), ("team-b".to_string(), 1)]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            CompileError::ScopeIdZero {
                scope: "team-a".into()
            }
        );
    }

    #[test]
    fn wildcard_holes_become_keys_at_explicit_ports() {
        // Wildcard 10/8 except 10.1/16; explicit 0/0 on 80. For 10.1.2.3:80
        // the exact lookup must not answer rule 1 from the 0/0 key.
        let mut p = Policy::builtin_default();
        p.rules.push(Rule {
            networks: vec![Network {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            }],
            ..rule(1, &["10.0.0.0/8"], "1-65535", Protocol::Opaque)
        });
        p.rules.push(rule(2, &["0.0.0.0/0"], "80", Protocol::Http1));
        let c = compile(&p).unwrap();
        let hole80 =
            c.v4.iter()
                .find(|e| e.port == 80 && e.prefix == 16)
                .unwrap();
        assert_eq!((hole80.verdict.rule_id, hole80.verdict.net_prefix), (2, 0));
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            kernel_lookup(&c, None, a, 80),
            (classifier_common::PROTO_HTTP1, "rule", 2)
        );
        let a: IpAddr = "10.2.2.3".parse().unwrap();
        assert_eq!(kernel_lookup(&c, None, a, 80), (PROTO_OPAQUE, "rule", 1));
    }

    #[test]
    fn wildcard_rules_cost_one_entry_per_key() {
        let mut p = Policy::builtin_default();
        let nets: Vec<String> = (0..1000)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let nets: Vec<&str> = nets.iter().map(|s| s.as_str()).collect();
        p.rules.push(rule(1, &nets, "1-65535", Protocol::Opaque));
        let c = compile(&p).unwrap();
        assert_eq!(c.v4.len(), 1000);
        assert!(c.v4.iter().all(|e| e.port == PORT_ANY));
    }
}

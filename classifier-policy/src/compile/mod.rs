//! Compiling a [`Policy`] into the contents of the kernel's policy maps.
//!
//! The trie keys are `[slot][scope][port][address]`. Each scope is its own
//! universe: the entries of scope `s` are computed from the rules of scope
//! `s` only (node-wide rules are scope [`SCOPE_NODE`]). Port [`PORT_ANY`]
//! holds the entries of wildcard-port rules (every port, `ports: "*"`).
//!
//! The rules of Linkerd's global EgressNetworks ([`Rule::global_egress`])
//! are their own universe, [`SCOPE_GLOBAL_EGRESS`].
//!
//! What the kernel does per connect, for each universe in turn (the client's
//! scope first, if it has one, then the node's, then, for a client without
//! a scope, the global EgressNetworks'):
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

use std::collections::BTreeMap;

use classifier_common::{
    maps, rule_key_v4, rule_key_v6, RuleKeyV4, RuleKeyV6, RuleVerdict, PORT_ANY,
    RULE_KEY_FIXED_BITS, SCOPE_GLOBAL_EGRESS, SCOPE_NODE,
};
use ipnet::IpNet;

use crate::model::{Mark, Policy, Rule};
use crate::ports::{PortSet, PORT_WORDS};
use index::Index;

mod index;
#[cfg(any(test, feature = "testing"))]
pub mod kernel_model;

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
    /// Some rule is a global EgressNetwork's: the kernel must look up
    /// [`SCOPE_GLOBAL_EGRESS`] for clients without a scope
    /// (`CONFIG_FLAG_GLOBAL_EGRESS`).
    pub global_egress: bool,
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
            global_egress: false,
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
    #[error(
        "namespace {scope:?} has scope id {id}, which is reserved for the global EgressNetworks"
    )]
    ScopeIdReserved { scope: String, id: u16 },
    #[error("the policy has rules for {count} namespaces, at most 65535 are supported")]
    TooManyScopes { count: usize },
}

/// LPM key and prefix length for an IPv4 entry in `slot`:
/// `[slot][scope BE][port BE][addr]`.
pub fn key_v4(slot: u8, e: &TrieEntry<4>) -> (u32, RuleKeyV4) {
    (
        RULE_KEY_FIXED_BITS + e.prefix as u32,
        rule_key_v4(slot, e.scope, e.port, e.addr),
    )
}

/// LPM key and prefix length for an IPv6 entry in `slot`.
pub fn key_v6(slot: u8, e: &TrieEntry<16>) -> (u32, RuleKeyV6) {
    (
        RULE_KEY_FIXED_BITS + e.prefix as u32,
        rule_key_v6(slot, e.scope, e.port, &e.addr),
    )
}

/// Per-policy limits: both slots share each trie during a switch.
pub const MAX_V4_ENTRIES: u64 = maps::RULES_V4_CAPACITY as u64 / 2;
pub const MAX_V6_ENTRIES: u64 = maps::RULES_V6_CAPACITY as u64 / 2;

/// Compiles `policy`, giving the namespaces that have rules the scope ids
/// 1, 2, ... in name order. The agent, which must keep ids stable across
/// policy changes, uses [`compile_with_scopes`].
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, CompileError> {
    let names = policy.scopes();
    if names.len() >= SCOPE_GLOBAL_EGRESS as usize {
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
    let (rule_scope, used_scopes) = resolve_scopes(policy, scope_ids)?;
    // Refuse before allocating anything proportional to the entry count:
    // "1-65535" on a few hundred networks is an easy mistake to make.
    check_raw_entries(policy)?;

    let index = Index::build(policy, &rule_scope);
    let keys = index.keys();
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
        let verdict = index.best_at(scope, port, cidr);
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
        global_egress: policy
            .rules
            .iter()
            .any(|r| r.scope.is_none() && r.global_egress),
        scope_ids: used_scopes,
    })
}

/// Each rule's scope id (by position in `policy.rules`), and the scopes
/// that have rules with their ids.
fn resolve_scopes(
    policy: &Policy,
    scope_ids: &BTreeMap<String, u16>,
) -> Result<(Vec<u16>, BTreeMap<String, u16>), CompileError> {
    let mut used_scopes = BTreeMap::new();
    let mut rule_scope: Vec<u16> = Vec::with_capacity(policy.rules.len());
    for r in &policy.rules {
        let id = match &r.scope {
            None if r.global_egress => SCOPE_GLOBAL_EGRESS,
            None => SCOPE_NODE,
            Some(ns) => match scope_ids.get(ns) {
                Some(0) => return Err(CompileError::ScopeIdZero { scope: ns.clone() }),
                Some(&SCOPE_GLOBAL_EGRESS) => {
                    return Err(CompileError::ScopeIdReserved {
                        scope: ns.clone(),
                        id: SCOPE_GLOBAL_EGRESS,
                    })
                }
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
    Ok((rule_scope, used_scopes))
}

/// The ports a rule is indexed at: its own, or `None` for a wildcard-port
/// rule, which is stored once, at [`PORT_ANY`].
fn explicit_ports(r: &Rule) -> Option<&PortSet> {
    (!r.is_wildcard_port()).then_some(&r.ports)
}

/// An upper bound on the trie keys `rules` make, per family (IPv4, IPv6),
/// computed without allocating anything proportional to it: every port of
/// an explicit rule times its networks and excepts, one key per network
/// and except of a wildcard-port rule, and the keys the holes of
/// wildcard-port rules punch at the explicit ports of the explicit
/// networks (of the same universe) around them. That last term is what
/// makes two EgressNetworks with all ports and a few hundred excepts ask
/// for millions of keys, so it is counted before anything is built.
///
/// The universe of a rule is (scope, global egress); `rules` may be a
/// whole policy or one namespace's rules.
pub fn entry_bound<'r>(rules: impl IntoIterator<Item = &'r Rule> + Clone) -> (u64, u64) {
    use std::collections::HashMap;
    type Universe<'a> = (Option<&'a str>, bool);
    let universe = |r: &'r Rule| -> Universe<'r> {
        (r.scope.as_deref(), r.scope.is_none() && r.global_egress)
    };
    let (mut n4, mut n6) = (0u64, 0u64);
    let mut add = |net: &IpNet, n: u64| match net {
        IpNet::V4(_) => n4 = n4.saturating_add(n),
        IpNet::V6(_) => n6 = n6.saturating_add(n),
    };
    // Explicit networks by (universe, cidr) -> the rules with it, and the
    // prefix lengths present per family, to walk up from each hole.
    let mut any_holes = false;
    for r in rules.clone() {
        let ports = explicit_ports(r).map_or(1, |p| p.len() as u64);
        for n in &r.networks {
            add(&n.cidr, ports.saturating_mul(1 + n.except.len() as u64));
            any_holes |= explicit_ports(r).is_none() && !n.except.is_empty();
        }
    }
    if !any_holes {
        // The common case (no wildcard-port rule with an `except`), without
        // building the map below.
        return (n4, n6);
    }
    let mut explicit: HashMap<(Universe<'r>, IpNet), Vec<&'r Rule>> = HashMap::new();
    let mut lens = [[false; 129]; 2];
    for r in rules
        .clone()
        .into_iter()
        .filter(|r| explicit_ports(r).is_some())
    {
        for n in &r.networks {
            explicit.entry((universe(r), n.cidr)).or_default().push(r);
            lens[usize::from(n.cidr.addr().is_ipv6())][n.cidr.prefix_len() as usize] = true;
        }
    }
    if explicit.is_empty() {
        return (n4, n6);
    }
    let mut ports = PortSet::new();
    for r in rules.into_iter().filter(|r| explicit_ports(r).is_none()) {
        for hole in r.networks.iter().flat_map(|n| &n.except) {
            ports = PortSet::new();
            let family = usize::from(hole.addr().is_ipv6());
            for len in (0..=hole.prefix_len()).filter(|&l| lens[family][l as usize]) {
                let sup = IpNet::new(hole.addr(), len)
                    .expect("shorter prefix is valid")
                    .trunc();
                for e in explicit.get(&(universe(r), sup)).into_iter().flatten() {
                    ports.union_with(&e.ports);
                }
            }
            add(hole, ports.len() as u64);
        }
    }
    drop(ports);
    (n4, n6)
}

/// Refuses a policy whose keys, counted by [`entry_bound`] before anything
/// is built, are far over the capacity: whatever the policy says, the
/// compiler then never holds more than a few times the capacity in keys.
fn check_raw_entries(policy: &Policy) -> Result<(), CompileError> {
    let (raw4, raw6) = entry_bound(&policy.rules);
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
    Ok(())
}

#[cfg(test)]
mod tests;

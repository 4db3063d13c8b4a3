//! Compiling a [`Policy`] into the contents of the kernel's policy maps.
//!
//! The kernel does one longest-prefix lookup per connect, keyed
//! `[slot][port][address]`, and falls back to the default-port bitmap when
//! it finds nothing or a `RULE_NONE` entry. A policy has rules with several
//! networks, holes (`except`) and precedence between overlapping rules; the
//! compiler flattens all that so the single lookup gives the answer of
//! [`explain::classify`](super::explain::classify).
//!
//! Why one lookup is enough: the keys are every network and every hole, per
//! port. For an address whose longest matching key is K, a network contains
//! the address iff it contains K (any network containing the address is a
//! key, so it is no longer than K), and likewise for holes. So the value
//! stored at K is just the reference answer "at the level of K"
//! ([`best_at`]), and that is what every address under K gets.

use std::collections::HashMap;

use classifier_common::{
    maps, RuleKeyV4, RuleKeyV6, RuleVerdict, RULE_KEY_FIXED_BITS, RULE_MATCH, RULE_NONE,
};
use ipnet::IpNet;

use super::model::{Mark, Policy};
use super::ports::PORT_WORDS;

/// One trie entry for address family with `N`-byte addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrieEntry<const N: usize> {
    pub port: u16,
    pub addr: [u8; N],
    /// Address bits matched (not counting the slot and port).
    pub prefix: u8,
    pub verdict: RuleVerdict,
}

/// Everything one policy slot needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub v4: Vec<TrieEntry<4>>,
    pub v6: Vec<TrieEntry<16>>,
    /// Bit `p % 64` of word `p / 64` is set when port `p` is a default
    /// opaque port.
    pub default_ports: Box<[u64; PORT_WORDS]>,
    pub excluded_uids: Vec<u32>,
    pub mark: Option<Mark>,
    pub rule_count: u32,
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
}

/// LPM key and prefix length for an IPv4 entry in `slot`.
pub fn key_v4(slot: u8, e: &TrieEntry<4>) -> (u32, RuleKeyV4) {
    let mut k = [0u8; 7];
    k[0] = slot;
    k[1..3].copy_from_slice(&e.port.to_be_bytes());
    k[3..].copy_from_slice(&e.addr);
    (RULE_KEY_FIXED_BITS + e.prefix as u32, k)
}

/// LPM key and prefix length for an IPv6 entry in `slot`.
pub fn key_v6(slot: u8, e: &TrieEntry<16>) -> (u32, RuleKeyV6) {
    let mut k = [0u8; 19];
    k[0] = slot;
    k[1..3].copy_from_slice(&e.port.to_be_bytes());
    k[3..].copy_from_slice(&e.addr);
    (RULE_KEY_FIXED_BITS + e.prefix as u32, k)
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

/// Compiles `policy` into one slot's map contents. Trie entries come out
/// sorted by (port, address, prefix), so equal policies give equal output.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, CompileError> {
    if policy.rules.iter().any(|r| r.id == 0) {
        return Err(CompileError::RuleIdZero);
    }

    // Refuse before allocating anything proportional to the entry count:
    // "1-65535" on a few hundred networks is an easy mistake to make.
    let (mut raw4, mut raw6) = (0u64, 0u64);
    for r in &policy.rules {
        let ports = r.ports.len() as u64;
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

    // Index every (port, network cidr) -> the rule networks with that cidr,
    // in rule-id order so the first qualifying one is the tie winner.
    let mut flat: Vec<(u16, IpNet, NetRef)> = Vec::new();
    // Holes become keys too.
    let mut except_keys: Vec<(u16, IpNet)> = Vec::new();
    let mut order: Vec<usize> = (0..policy.rules.len()).collect();
    order.sort_by_key(|&i| policy.rules[i].id);
    for &ri in &order {
        let r = &policy.rules[ri];
        for port in r.ports.iter() {
            for (ni, n) in r.networks.iter().enumerate() {
                flat.push((
                    port,
                    n.cidr,
                    NetRef {
                        rule: ri as u32,
                        net: ni as u32,
                    },
                ));
                except_keys.extend(n.except.iter().map(|e| (port, *e)));
            }
        }
    }
    // Stable sort keeps rule-id order within one (port, cidr).
    flat.sort_by_key(|&(port, cidr, _)| (port, cidr));
    let mut index: HashMap<(u16, IpNet), (u32, u32)> = HashMap::with_capacity(flat.len());
    let (mut lens4, mut lens6) = (PrefixLens::default(), PrefixLens::default());
    let mut i = 0;
    while i < flat.len() {
        let key = (flat[i].0, flat[i].1);
        let start = i;
        while i < flat.len() && (flat[i].0, flat[i].1) == key {
            i += 1;
        }
        index.insert(key, (start as u32, (i - start) as u32));
        match key.1 {
            IpNet::V4(n) => lens4.insert(n.prefix_len()),
            IpNet::V6(n) => lens6.insert(n.prefix_len()),
        }
    }

    // The reference answer for addresses whose longest key is (port, cidr):
    // the most specific network containing cidr with no hole containing it,
    // lowest rule id among equals.
    let best_at = |port: u16, cidr: IpNet| -> RuleVerdict {
        let lens = if cidr.addr().is_ipv4() {
            &lens4
        } else {
            &lens6
        };
        for len in (0..=cidr.prefix_len()).rev().filter(|&l| lens.contains(l)) {
            let sup = IpNet::new(cidr.addr(), len)
                .expect("shorter prefix is valid")
                .trunc();
            let Some(&(start, count)) = index.get(&(port, sup)) else {
                continue;
            };
            for &(_, _, NetRef { rule, net }) in &flat[start as usize..(start + count) as usize] {
                let r = &policy.rules[rule as usize];
                let n = &r.networks[net as usize];
                if n.except.iter().any(|e| e.contains(&cidr)) {
                    continue;
                }
                return RuleVerdict {
                    rule_id: r.id,
                    protocol: r.protocol.wire(),
                    kind: RULE_MATCH,
                    _pad: [0; 2],
                };
            }
        }
        RuleVerdict {
            rule_id: 0,
            protocol: classifier_common::PROTO_UNKNOWN,
            kind: RULE_NONE,
            _pad: [0; 2],
        }
    };

    // `flat` is sorted, so its distinct keys come out sorted; merging in the
    // (few) hole keys needs only one more sort.
    let mut keys: Vec<(u16, IpNet)> = flat.iter().map(|&(p, c, _)| (p, c)).collect();
    keys.dedup();
    if !except_keys.is_empty() {
        keys.extend(except_keys);
        keys.sort_unstable();
        keys.dedup();
    }

    let n4 = keys
        .iter()
        .filter(|(_, c)| matches!(c, IpNet::V4(_)))
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

    let mut v4 = Vec::with_capacity(n4 as usize);
    let mut v6 = Vec::with_capacity(n6 as usize);
    for (port, cidr) in keys {
        let verdict = best_at(port, cidr);
        match cidr {
            IpNet::V4(c) => v4.push(TrieEntry {
                port,
                addr: c.addr().octets(),
                prefix: c.prefix_len(),
                verdict,
            }),
            IpNet::V6(c) => v6.push(TrieEntry {
                port,
                addr: c.addr().octets(),
                prefix: c.prefix_len(),
                verdict,
            }),
        }
    }

    Ok(CompiledPolicy {
        v4,
        v6,
        default_ports: policy.default_opaque_ports.to_bitmap(),
        excluded_uids: policy.exclude_uids.clone(),
        mark: policy.mark,
        rule_count: policy.rules.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::explain::{canonical_addr, classify, DecisionSource};
    use crate::policy::model::{Network, Protocol, Rule};
    use crate::policy::ports::PortSet;
    use classifier_common::PROTO_OPAQUE;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// What the kernel does: longest prefix among entries for this port, then
    /// the default bitmap. Returns (protocol wire value, source, rule id).
    fn kernel_lookup(c: &CompiledPolicy, addr: IpAddr, port: u16) -> (u8, &'static str, u32) {
        fn covers(key: &[u8], prefix: u8, addr: &[u8]) -> bool {
            let full = prefix as usize / 8;
            if key[..full] != addr[..full] {
                return false;
            }
            let rest = prefix % 8;
            rest == 0 || (key[full] ^ addr[full]) & (0xffu8 << (8 - rest)) == 0
        }
        // Go through the real key encoding, as the kernel sees it.
        let hit = match canonical_addr(addr) {
            IpAddr::V4(a) => {
                c.v4.iter()
                    .filter_map(|e| {
                        let (len, k) = key_v4(1, e);
                        let mut probe = [0u8; 7];
                        probe[0] = 1;
                        probe[1..3].copy_from_slice(&port.to_be_bytes());
                        probe[3..].copy_from_slice(&a.octets());
                        (len >= RULE_KEY_FIXED_BITS && covers(&k, len as u8, &probe))
                            .then_some((len, e.verdict))
                    })
                    .max_by_key(|(len, _)| *len)
            }
            IpAddr::V6(a) => {
                c.v6.iter()
                    .filter_map(|e| {
                        let (len, k) = key_v6(0, e);
                        let mut probe = [0u8; 19];
                        probe[1..3].copy_from_slice(&port.to_be_bytes());
                        probe[3..].copy_from_slice(&a.octets());
                        covers(&k, len as u8, &probe).then_some((len, e.verdict))
                    })
                    .max_by_key(|(len, _)| *len)
            }
        };
        match hit {
            Some((_, v)) if v.kind == RULE_MATCH => (v.protocol, "rule", v.rule_id),
            _ if c.default_ports[port as usize / 64] & (1 << (port % 64)) != 0 => {
                (PROTO_OPAQUE, "default_port", 0)
            }
            _ => (Protocol::Detect.wire(), "none", 0),
        }
    }

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
            let protocol = Protocol::ALL[rng.below(4) as usize];
            rules.push(Rule {
                id,
                networks,
                ports,
                protocol,
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
        }
    }

    #[test]
    fn compiled_lookup_agrees_with_classify_on_random_policies() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut probes_checked = 0;
        let mut rule_hits = 0;
        for round in 0..400 {
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
                for port in [25u16, 80, 443, 3306, 4222, 5432, 8080, 9999] {
                    let want = classify(&policy, addr, port);
                    let got = kernel_lookup(&compiled, addr, port);
                    let want_t = (
                        want.protocol.wire(),
                        want.source.as_str(),
                        want.source.rule_id(),
                    );
                    assert_eq!(
                        got, want_t,
                        "round {round}: {addr} port {port}\npolicy: {policy:#?}"
                    );
                    probes_checked += 1;
                    if matches!(want.source, DecisionSource::Rule { .. }) {
                        rule_hits += 1;
                    }
                }
            }
        }
        // Make sure the generator actually exercises rules, not just defaults.
        assert!(
            rule_hits * 10 > probes_checked,
            "{rule_hits} of {probes_checked}"
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
                _pad: [0; 2]
            }
        );
        assert_eq!(key_v4(1, net), (32, [1, 0x10, 0x7e, 10, 0, 0, 0]));
        let hole = c.v4.iter().find(|e| e.prefix == 16).unwrap();
        assert_eq!(hole.verdict.kind, RULE_NONE);
        assert_eq!(key_v4(0, hole), (40, [0, 0x10, 0x7e, 10, 1, 0, 0]));
        let (len, k) = key_v6(1, &c.v6[0]);
        assert_eq!(len, 24 + 32);
        assert_eq!(&k[..7], &[1, 0, 80, 0x20, 0x01, 0x0d, 0xb8]);
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
        // 5 networks x 65535 ports: over the limit, but not absurdly.
        p.rules.push(rule(
            1,
            &[
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.4.0.0/16",
            ],
            "1-65535",
            Protocol::Opaque,
        ));
        let e = compile(&p).unwrap_err();
        assert_eq!(
            e,
            CompileError::TooManyEntries {
                family: "IPv4",
                entries: 5 * 65535,
                capacity: MAX_V4_ENTRIES
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("327675") && msg.contains("262144") && msg.contains("port ranges"),
            "{msg}"
        );

        let mut p = Policy::builtin_default();
        let nets: Vec<String> = (0..100).map(|i| format!("2001:db8:{i:x}::/48")).collect();
        let nets: Vec<&str> = nets.iter().map(|s| s.as_str()).collect();
        p.rules.push(rule(1, &nets, "1-65535", Protocol::Opaque));
        let e = compile(&p).unwrap_err();
        assert!(
            matches!(
                e,
                CompileError::TooManyEntries {
                    family: "IPv6",
                    entries: 6_553_500,
                    ..
                }
            ),
            "{e:?}"
        );

        // Exactly at the limit is fine: 4 networks x 65535 ports < 262144.
        let mut p = Policy::builtin_default();
        p.rules.push(rule(
            1,
            &["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"],
            "1-65535",
            Protocol::Opaque,
        ));
        assert_eq!(compile(&p).unwrap().v4.len(), 4 * 65535);
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
            p.rules.push(Rule {
                id,
                networks: vec![Network { cidr, except }],
                ports,
                protocol: Protocol::Opaque,
            });
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
}

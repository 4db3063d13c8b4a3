//! Fuzzes the policy file parser, and what a parsed policy feeds: the
//! compiler (kernel map contents) and the reference classifier (`explain`).
//!
//! Properties checked on every input that is UTF-8:
//!
//! - `parse_policy` and `file::parse_yaml_value` never panic; an error
//!   starts with the origin;
//! - parsing is deterministic and does not depend on the origin;
//! - a parsed policy satisfies everything the loader promises downstream:
//!   rule ids are 1..=n in order, rules have networks and ports, CIDRs have
//!   no host bits and are not IPv4-mapped, every `except` is strictly
//!   inside its network and of its family, port sets hold no port 0 and
//!   round-trip through their canonical form, UIDs are distinct and within
//!   the limit, a mark has a non-zero mask covering its value, no two rules
//!   are duplicates;
//! - `compile` never panics, and either refuses with a consistent
//!   `TooManyEntries` or returns sorted, well-formed, node-wide trie
//!   entries whose verdicts agree with the rules they name;
//! - `classify`, `reason` and `to_json` never panic on addresses and ports
//!   derived from the input, every decision is self-consistent, and the
//!   compiled trie, looked up the way the kernel does (exact port, then the
//!   wildcard port, by `net_prefix`), gives the same verdict as `classify`.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use classifier_common::{RuleVerdict, PORT_ANY, RULE_MATCH, RULE_NONE, SCOPE_NODE};
use classifier_policy::compile::kernel_model::KernelModel;
use classifier_policy::compile::{MAX_V4_ENTRIES, MAX_V6_ENTRIES};
use classifier_policy::file::{parse_yaml_value, MAX_EXCLUDED_UIDS};
use classifier_policy::{
    classify, compile, parse_policy, CompileError, CompiledPolicy, Network, Policy, PortSet,
    Protocol, RuleMatch, Source,
};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.yaml";

/// Policies whose trie would need more raw entries than this are still
/// compiled when `compile` refuses them up front (cheap), but not when it
/// would have to build them: a 1-30000 range on a few networks is legal and
/// takes ~0.1 s, which would slow the fuzzer to a crawl without finding
/// anything new.
const MAX_RAW_ENTRIES_TO_BUILD: u64 = 20_000;

/// Caps on the probes per input, to keep each run in the microseconds.
const MAX_ADDRS: usize = 16;
const MAX_PORTS: usize = 8;

fn check_ports(what: &str, set: &PortSet) {
    assert!(!set.contains(0), "{what}: {set:?} contains port 0");
    let text = set.to_string();
    let again: PortSet = text
        .parse()
        .unwrap_or_else(|e| panic!("{what}: canonical {text:?} does not parse: {e}"));
    assert_eq!(&again, set, "{what}: {text:?} does not round-trip");
}

fn is_v4_mapped(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => "::ffff:0:0/96"
            .parse::<ipnet::Ipv6Net>()
            .unwrap()
            .contains(n),
        IpNet::V4(_) => false,
    }
}

fn check_network(what: &str, n: &Network) {
    assert_eq!(n.cidr, n.cidr.trunc(), "{what}: {} has host bits", n.cidr);
    assert!(!is_v4_mapped(&n.cidr), "{what}: {} is IPv4-mapped", n.cidr);
    for e in &n.except {
        assert_eq!(*e, e.trunc(), "{what}: except {e} has host bits");
        assert!(!is_v4_mapped(e), "{what}: except {e} is IPv4-mapped");
        assert_eq!(
            e.addr().is_ipv4(),
            n.cidr.addr().is_ipv4(),
            "{what}: except {e} is not the family of {}",
            n.cidr
        );
        assert!(
            e.prefix_len() > n.cidr.prefix_len() && n.cidr.contains(e),
            "{what}: except {e} is not strictly inside {}",
            n.cidr
        );
    }
}

/// Everything the loader promises about a policy it returns.
fn check_policy(p: &Policy) {
    check_ports("defaultOpaquePorts", &p.default_opaque_ports);

    assert!(
        p.exclude_uids.len() <= MAX_EXCLUDED_UIDS,
        "{} UIDs",
        p.exclude_uids.len()
    );
    let uids: HashSet<u32> = p.exclude_uids.iter().copied().collect();
    assert_eq!(
        uids.len(),
        p.exclude_uids.len(),
        "repeated UID in {:?}",
        p.exclude_uids
    );

    if let Some(m) = p.mark {
        assert_ne!(m.mask, 0, "mark {m:?} has mask 0");
        assert_eq!(m.value & !m.mask, 0, "mark {m:?} has bits outside its mask");
    }

    let mut seen = HashSet::new();
    for (i, r) in p.rules.iter().enumerate() {
        let what = format!("spec.rules[{i}]");
        assert_eq!(r.id as usize, i + 1, "{what} has id {}", r.id);
        assert!(!r.networks.is_empty(), "{what} has no networks");
        assert!(!r.ports.is_empty(), "{what} has no ports");
        check_ports(&what, &r.ports);
        for n in &r.networks {
            check_network(&what, n);
        }
        // Duplicates (order-insensitive on networks and holes) are refused.
        let mut canon = r.networks.clone();
        for n in &mut canon {
            n.except.sort();
            n.except.dedup();
        }
        canon.sort();
        canon.dedup();
        assert!(
            seen.insert((canon, r.ports.clone(), r.protocol)),
            "{what} duplicates an earlier rule"
        );
        let found = p.rule(r.id).expect("rule(id) finds every rule");
        assert_eq!(found.id, r.id);
    }
    assert!(p.rule(0).is_none());
    assert!(p.rule(p.rules.len() as u32 + 1).is_none());
}

/// Raw entry counts per family, as `compile` estimates them before building
/// (to decide whether building is cheap enough; nothing is asserted on it).
/// A wildcard-port rule (every port) is stored once, at `PORT_ANY`.
fn raw_entries(p: &Policy) -> (u64, u64) {
    let (mut v4, mut v6) = (0u64, 0u64);
    for r in &p.rules {
        let ports = if r.is_wildcard_port() {
            1
        } else {
            r.ports.len() as u64
        };
        for n in &r.networks {
            let keys = 1 + n.except.len() as u64;
            match n.cidr {
                IpNet::V4(_) => v4 += ports * keys,
                IpNet::V6(_) => v6 += ports * keys,
            }
        }
    }
    (v4, v6)
}

/// A trie entry's value, checked against the rule it names.
fn check_verdict(p: &Policy, port: u16, v: &RuleVerdict) {
    match v.kind {
        RULE_MATCH => {
            let r = p.rule(v.rule_id).unwrap_or_else(|| {
                panic!("trie entry names rule {} of {}", v.rule_id, p.rules.len())
            });
            assert_eq!(v.protocol, r.protocol.wire(), "protocol of rule {}", r.id);
            if port == PORT_ANY {
                assert!(
                    r.is_wildcard_port(),
                    "wildcard-port entry for rule {} with ports {}",
                    r.id,
                    r.ports
                );
            } else {
                // Exact-port entries also carry wildcard rules' verdicts.
                assert!(
                    r.ports.contains(port),
                    "rule {} entry for port {port} outside its ports {}",
                    r.id,
                    r.ports
                );
            }
            assert!(
                r.networks
                    .iter()
                    .any(|n| n.cidr.prefix_len() == v.net_prefix),
                "rule {} entry with net_prefix {}, not the length of any of its networks",
                r.id,
                v.net_prefix
            );
        }
        RULE_NONE => assert_eq!(v.rule_id, 0, "RULE_NONE entry with rule id {}", v.rule_id),
        k => panic!("trie entry of kind {k}"),
    }
}

/// Checks the compiled entries of a file policy: node-wide (a
/// ClassifierPolicy file has node-wide rules only), sorted, well-formed,
/// with verdicts that agree with the rules they name. Lookups then go
/// through `classifier_policy::compile::kernel_model`, the same model of the
/// kernel's trie the compiler's own tests use.
fn check_compiled(p: &Policy, c: &CompiledPolicy) {
    assert!(!c.scoped, "a file policy compiled as scoped");
    assert!(c.scope_ids.is_empty(), "scope ids {:?}", c.scope_ids);
    let wildcard = p.rules.iter().any(|r| r.is_wildcard_port());
    let at_any = c.v4.iter().any(|e| e.port == PORT_ANY) || c.v6.iter().any(|e| e.port == PORT_ANY);
    assert_eq!(c.any_port, at_any, "any_port flag vs entries at PORT_ANY");
    assert_eq!(
        at_any, wildcard,
        "entries at PORT_ANY iff a wildcard-port rule"
    );
    for w in c.v4.windows(2) {
        assert!(
            w[0].sort_key() < w[1].sort_key(),
            "v4 entries unsorted or repeated"
        );
    }
    for w in c.v6.windows(2) {
        assert!(
            w[0].sort_key() < w[1].sort_key(),
            "v6 entries unsorted or repeated"
        );
    }
    for e in &c.v4 {
        assert_eq!(e.scope, SCOPE_NODE, "v4 entry in scope {}", e.scope);
        assert!(e.prefix <= 32);
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(e.addr)), e.prefix).unwrap();
        assert_eq!(net, net.trunc(), "v4 entry {net} has host bits");
        check_verdict(p, e.port, &e.verdict);
    }
    for e in &c.v6 {
        assert_eq!(e.scope, SCOPE_NODE, "v6 entry in scope {}", e.scope);
        assert!(e.prefix <= 128);
        let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(e.addr)), e.prefix).unwrap();
        assert_eq!(net, net.trunc(), "v6 entry {net} has host bits");
        check_verdict(p, e.port, &e.verdict);
    }
}

fn last_addr(net: &IpNet) -> IpAddr {
    net.broadcast()
}

fn next_addr(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v).wrapping_add(1))),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v).wrapping_add(1))),
    }
}

fn prev_addr(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v).wrapping_sub(1))),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v).wrapping_sub(1))),
    }
}

/// Destinations worth asking about: the edges of every network and hole,
/// just outside them, IPv4 ones also in their IPv4-mapped IPv6 form, and
/// two addresses made of the input's own bytes.
fn probe_addrs(p: &Policy, data: &[u8]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let take = |a: IpAddr, out: &mut Vec<IpAddr>| {
        if out.len() < MAX_ADDRS && !out.contains(&a) {
            out.push(a);
        }
    };
    let mut b4 = [0u8; 4];
    let mut b16 = [0u8; 16];
    for (i, b) in data.iter().rev().enumerate().take(16) {
        b16[i] = *b;
        if i < 4 {
            b4[i] = *b;
        }
    }
    take(IpAddr::V4(Ipv4Addr::from(b4)), &mut out);
    take(IpAddr::V6(Ipv6Addr::from(b16)), &mut out);
    for r in &p.rules {
        for n in &r.networks {
            let nets = std::iter::once(&n.cidr).chain(&n.except);
            for net in nets {
                let first = net.network();
                let last = last_addr(net);
                take(first, &mut out);
                take(last, &mut out);
                take(prev_addr(first), &mut out);
                take(next_addr(last), &mut out);
                if let IpAddr::V4(v4) = first {
                    take(IpAddr::V6(v4.to_ipv6_mapped()), &mut out);
                }
            }
        }
    }
    out
}

fn probe_ports(p: &Policy, data: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let take = |port: u16, out: &mut Vec<u16>| {
        if out.len() < MAX_PORTS && !out.contains(&port) {
            out.push(port);
        }
    };
    for r in &p.rules {
        if let (Some(&(s, _)), Some(&(_, e))) = (r.ports.ranges().first(), r.ports.ranges().last())
        {
            take(s, &mut out);
            take(e, &mut out);
            take(e.wrapping_add(1), &mut out);
        }
    }
    if let Some(&(s, _)) = p.default_opaque_ports.ranges().first() {
        take(s, &mut out);
    }
    let h = data.iter().fold(0u16, |h, &b| h.rotate_left(5) ^ b as u16);
    take(h, &mut out);
    take(0, &mut out);
    take(65535, &mut out);
    out
}

fn check_decision(p: &Policy, addr: IpAddr, port: u16) -> (u8, u32) {
    let d = classify(p, addr, port);
    assert_eq!(d.addr, addr.to_canonical());
    assert_eq!(d.port, port);
    match (d.source, d.rule) {
        (Source::Rule, Some(RuleMatch { id, network })) => {
            let r = p
                .rule(id)
                .unwrap_or_else(|| panic!("decision names rule {id}"));
            assert_eq!(d.protocol, r.protocol);
            assert!(
                r.ports.contains(port),
                "rule {id} decided port {port} outside its ports"
            );
            assert!(
                r.networks
                    .iter()
                    .any(|n| n.cidr == network && n.matches(d.addr)),
                "rule {id} decided {} through {network}, which does not match it",
                d.addr
            );
        }
        (Source::DefaultPort, None) => {
            assert_eq!(d.protocol, Protocol::Opaque);
            assert!(p.default_opaque_ports.contains(port));
        }
        (Source::None, None) => {
            assert_eq!(d.protocol, Protocol::Detect);
            assert!(!p.default_opaque_ports.contains(port));
        }
        other => panic!("decision source and rule disagree: {other:?}"),
    }
    assert!(!d.reason(p).is_empty());
    let json = d.to_json();
    assert_eq!(json["protocol"], d.protocol.as_str());
    (d.protocol.wire(), d.rule_id())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The manifest reader, under the same YAML rules: never panics, and an
    // error names the origin and a line.
    if let Err(e) = parse_yaml_value(text, ORIGIN, 0) {
        let msg = e.to_string();
        assert!(
            msg.starts_with("fuzz.yaml: "),
            "error without origin: {msg:?}"
        );
    }
    let policy = match parse_policy(text, ORIGIN) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("fuzz.yaml: "),
                "error without origin: {msg:?}"
            );
            let _ = format!("{e:?}");
            // Errors are deterministic too (same message for the same text).
            let again = parse_policy(text, ORIGIN).expect_err("parsed on the second try");
            assert_eq!(again.to_string(), msg);
            return;
        }
    };
    assert_eq!(
        parse_policy(text, "elsewhere.yaml").as_ref().ok(),
        Some(&policy),
        "same text, different result"
    );
    check_policy(&policy);

    let (raw4, raw6) = raw_entries(&policy);
    let refused_up_front = raw4 > 4 * MAX_V4_ENTRIES || raw6 > 4 * MAX_V6_ENTRIES;
    let compiled = if raw4 + raw6 <= MAX_RAW_ENTRIES_TO_BUILD || refused_up_front {
        match compile(&policy) {
            Ok(c) => {
                assert_eq!(c.rule_count as usize, policy.rules.len());
                assert_eq!(c.excluded_uids, policy.exclude_uids);
                assert_eq!(c.mark, policy.mark);
                assert_eq!(c.default_ports, policy.default_opaque_ports.to_bitmap());
                assert!(
                    c.v4.len() as u64 <= MAX_V4_ENTRIES,
                    "{} v4 entries",
                    c.v4.len()
                );
                assert!(
                    c.v6.len() as u64 <= MAX_V6_ENTRIES,
                    "{} v6 entries",
                    c.v6.len()
                );
                Some(c)
            }
            Err(CompileError::TooManyEntries {
                entries,
                capacity,
                family,
            }) => {
                assert!(
                    entries > capacity,
                    "{family}: refused {entries} <= {capacity}"
                );
                None
            }
            // Anything else (rule id 0, scope errors) cannot happen to a
            // policy the parser accepted.
            Err(e) => panic!("parsed policy does not compile: {e}"),
        }
    } else {
        None
    };
    let kernel = compiled.as_ref().map(|c| {
        check_compiled(&policy, c);
        KernelModel::new(c)
    });

    let addrs = probe_addrs(&policy, data);
    let ports = probe_ports(&policy, data);
    for &addr in &addrs {
        for &port in &ports {
            let want = check_decision(&policy, addr, port);
            if let Some(k) = &kernel {
                let (protocol, _, rule_id) = k.lookup(None, addr, port);
                let got = (protocol, rule_id);
                assert_eq!(
                    got, want,
                    "{addr} port {port}: compiled trie says (proto {}, rule {}), explain says (proto {}, rule {})",
                    got.0, got.1, want.0, want.1
                );
            }
        }
    }
});

use super::kernel_model::{kernel_lookup, KernelModel};
use super::*;
use crate::explain::classify_from;
use crate::model::{Network, Protocol, Rule};
use crate::ports::PortSet;
use crate::Source;
use classifier_common::{PROTO_OPAQUE, RULE_MATCH, RULE_NONE};
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
        let global_egress = scope.is_none() && rng.chance(30);
        rules.push(Rule {
            id,
            networks,
            ports,
            protocol,
            scope,
            global_egress,
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
        learning: Default::default(),
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
        let kernel = KernelModel::new(&compiled);
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
                let (protocol, source, rule_id) = kernel.lookup(client_scope, addr, port);
                let got = (protocol, source.as_str(), rule_id);
                let want_t = (want.protocol.wire(), want.source.as_str(), want.rule_id());
                assert_eq!(
                    got, want_t,
                    "round {round}: {addr} port {port} from {ns:?}\npolicy: {policy:#?}"
                );
                probes_checked += 1;
                if want.source == Source::Rule {
                    rule_hits += 1;
                    if want.scope.is_some() {
                        scoped_hits += 1;
                    }
                    if policy.rule(want.rule_id()).unwrap().is_wildcard_port() {
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
        global_egress: false,
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
        global_egress: false,
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
    p.rules
        .push(rule(3, &["0.0.0.0/0"], "5432", Protocol::Http1).with_scope(Some("team-b".into())));
    p.rules.push(
        rule(4, &["2001:db8::/32"], "1-65535", Protocol::Opaque).with_scope(Some("team-a".into())),
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

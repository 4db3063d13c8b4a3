//! The compiler's index of a policy: every (scope, port, network) key with
//! the rule networks at it, and the reference answer at each key.

use std::collections::HashMap;

use classifier_common::{RuleVerdict, PORT_ANY, RULE_MATCH, RULE_NONE};
use ipnet::IpNet;

use super::explicit_ports;
use crate::model::Policy;
use crate::ports::PortSet;

/// (scope, port, network): one trie key before encoding.
pub(super) type Key = (u16, u16, IpNet);

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

pub(super) struct Index<'p> {
    policy: &'p Policy,
    /// Every (scope, port, network cidr) with the rule network that has
    /// it, sorted by key and in rule-id order within one key, so the first
    /// qualifying one is the tie winner. Wildcard rules are at PORT_ANY.
    flat: Vec<(Key, NetRef)>,
    /// Key -> (start, count) in `flat`.
    index: HashMap<Key, (u32, u32)>,
    /// Holes: keys too.
    except_keys: Vec<Key>,
    lens4: PrefixLens,
    lens6: PrefixLens,
}

impl<'p> Index<'p> {
    /// Indexes `policy`, whose rule `i` is in scope `rule_scope[i]`.
    pub(super) fn build(policy: &'p Policy, rule_scope: &[u16]) -> Index<'p> {
        let mut flat: Vec<(Key, NetRef)> = Vec::new();
        let mut except_keys: Vec<Key> = Vec::new();
        // Holes of wildcard rules, per scope, to add at the explicit ports
        // of the explicit networks around them.
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
            match explicit_ports(r) {
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
        let mut this = Index {
            policy,
            flat,
            index,
            except_keys,
            lens4,
            lens6,
        };
        this.add_wildcard_holes(wildcard_holes);
        this
    }

    /// A wildcard rule's hole inside an explicit network (of its scope) is
    /// a key at every port of the explicit rules with that network.
    fn add_wildcard_holes(&mut self, mut wildcard_holes: Vec<(u16, IpNet)>) {
        if wildcard_holes.is_empty() {
            return;
        }
        let mut explicit_ports: HashMap<(u16, IpNet), PortSet> = HashMap::new();
        for &((scope, port, cidr), _) in &self.flat {
            if port != PORT_ANY {
                explicit_ports
                    .entry((scope, cidr))
                    .or_default()
                    .insert(port);
            }
        }
        wildcard_holes.sort_unstable();
        wildcard_holes.dedup();
        let mut keys = Vec::new();
        for &(scope, hole) in &wildcard_holes {
            let mut ports = PortSet::new();
            for sup in self.supernets(hole) {
                if let Some(p) = explicit_ports.get(&(scope, sup)) {
                    ports.union_with(p);
                }
            }
            keys.extend(ports.iter().map(|port| (scope, port, hole)));
        }
        self.except_keys.extend(keys);
    }

    /// Every indexed prefix length of `cidr` (itself included), longest
    /// first, as networks.
    fn supernets(&self, cidr: IpNet) -> impl Iterator<Item = IpNet> + '_ {
        let lens = if cidr.addr().is_ipv4() {
            &self.lens4
        } else {
            &self.lens6
        };
        (0..=cidr.prefix_len())
            .rev()
            .filter(move |&l| lens.contains(l))
            .map(move |l| {
                IpNet::new(cidr.addr(), l)
                    .expect("shorter prefix is valid")
                    .trunc()
            })
    }

    /// Every key, sorted and distinct. `flat` is sorted, so its distinct
    /// keys come out sorted; merging in the (few) hole keys needs only one
    /// more sort.
    pub(super) fn keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.flat.iter().map(|&(k, _)| k).collect();
        keys.dedup();
        if !self.except_keys.is_empty() {
            keys.extend(self.except_keys.iter().copied());
            keys.sort_unstable();
            keys.dedup();
        }
        keys
    }

    /// The reference answer for addresses whose longest key is (scope,
    /// port, cidr): the most specific network containing cidr with no hole
    /// containing it; explicit ports before wildcard on equal networks;
    /// then the lowest rule id. At PORT_ANY only wildcard rules count.
    pub(super) fn best_at(&self, scope: u16, port: u16, cidr: IpNet) -> RuleVerdict {
        for sup in self.supernets(cidr) {
            let lists = [
                self.index.get(&(scope, port, sup)),
                if port == PORT_ANY {
                    None
                } else {
                    self.index.get(&(scope, PORT_ANY, sup))
                },
            ];
            for &(start, count) in lists.into_iter().flatten() {
                for &(_, NetRef { rule, net }) in
                    &self.flat[start as usize..(start + count) as usize]
                {
                    let r = &self.policy.rules[rule as usize];
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
    }
}

//! The background of a live policy: the rules of the objects whose change
//! always means a full compile (the ClassifierPolicy, EgressNetworks), as
//! compiled trie entries, and the longest-prefix lookup into them that
//! gives their answer at a pod's or a Service's address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use classifier_common::{RuleVerdict, PORT_ANY, RULE_MATCH, SCOPE_NODE};
use ipnet::IpNet;

use crate::compile::{compile_with_scopes, CompileError, CompiledPolicy};
use crate::model::Policy;

/// One node-wide background entry: its verdict (stable rule id) and the
/// position of its rule in the background policy (its precedence).
#[derive(Clone, Copy)]
pub(super) struct BgEntry {
    pub(super) verdict: RuleVerdict,
    /// 1-based position in [`Background::policy`]; 0 for a no-match entry.
    pub(super) position: u32,
}

/// What the background says at one (port, address): the winning rule's
/// verdict, its position and whether it is a wildcard-port rule.
#[derive(Clone, Copy)]
pub(super) struct BgAnswer {
    pub(super) verdict: RuleVerdict,
    pub(super) position: u32,
    pub(super) wildcard: bool,
}

pub(super) struct Background {
    /// The settings and the background rules, ids their positions (the
    /// compiler breaks ties by id).
    pub(super) policy: Policy,
    /// How many of them are the ClassifierPolicy's (they come first, and
    /// win ties against every object's rule; EgressNetworks' lose them).
    pub(super) operator_rules: u32,
    /// Compiled, verdicts carrying stable rule ids.
    pub(super) compiled: CompiledPolicy,
    /// Node-wide entries by (port, network), for the lookup.
    node: HashMap<(u16, IpNet), BgEntry>,
    /// Which prefix lengths occur among them, per family (v4, v6).
    lens: [Vec<u8>; 2],
    /// Node-wide entries at a full-length prefix, by address: their keys
    /// are an object's keys too.
    pub(super) at_host: HashMap<IpAddr, Vec<(u16, RuleVerdict)>>,
}

impl Background {
    /// Compiles `policy` (ids its positions) and relabels its verdicts
    /// with `stable_id[position - 1]`.
    pub(super) fn build(
        policy: Policy,
        operator_rules: u32,
        scope_ids: &BTreeMap<String, u16>,
        stable_id: &[u32],
    ) -> Result<Background, CompileError> {
        let mut compiled = compile_with_scopes(&policy, scope_ids)?;
        let mut node = HashMap::new();
        let mut lens: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut at_host: HashMap<IpAddr, Vec<(u16, RuleVerdict)>> = HashMap::new();
        let relabel = |v: &mut RuleVerdict| -> u32 {
            if v.kind != RULE_MATCH {
                return 0;
            }
            let position = v.rule_id;
            v.rule_id = stable_id[position as usize - 1];
            position
        };
        // The same for both families (their entry types differ only in the
        // address's width): a node-wide entry is indexed by (port, network),
        // its prefix length counted, and a host entry kept per address.
        macro_rules! index_family {
            ($entries:expr, $family:expr, $host_len:expr) => {
                for e in &mut $entries {
                    let position = relabel(&mut e.verdict);
                    if e.scope != SCOPE_NODE {
                        continue;
                    }
                    let net = IpNet::new(IpAddr::from(e.addr), e.prefix).expect("compiled prefix");
                    node.insert(
                        (e.port, net),
                        BgEntry {
                            verdict: e.verdict,
                            position,
                        },
                    );
                    lens[$family].push(e.prefix);
                    if e.prefix == $host_len {
                        at_host
                            .entry(net.addr())
                            .or_default()
                            .push((e.port, e.verdict));
                    }
                }
            };
        }
        index_family!(compiled.v4, 0, 32);
        index_family!(compiled.v6, 1, 128);
        for l in &mut lens {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        Ok(Background {
            policy,
            operator_rules,
            compiled,
            node,
            lens,
            at_host,
        })
    }

    /// The longest node-wide entry at `port` containing `addr`.
    fn longest(&self, port: u16, addr: IpAddr) -> Option<BgEntry> {
        let lens = &self.lens[usize::from(addr.is_ipv6())];
        lens.iter().find_map(|&len| {
            let net = IpNet::new(addr, len).expect("valid length").trunc();
            self.node.get(&(port, net)).copied()
        })
    }

    /// The background's answer for a connect to `addr` at `port` (or, at
    /// [`PORT_ANY`], among wildcard-port rules only), as the kernel
    /// combines the exact-port and wildcard lookups: the larger network
    /// prefix wins, the exact-port hit on a tie.
    pub(super) fn answer(&self, port: u16, addr: IpAddr) -> Option<BgAnswer> {
        let exact = (port != PORT_ANY)
            .then(|| self.longest(port, addr))
            .flatten()
            .filter(|e| e.verdict.kind == RULE_MATCH);
        let wild = self
            .longest(PORT_ANY, addr)
            .filter(|e| e.verdict.kind == RULE_MATCH);
        let best = match (exact, wild) {
            (Some(e), Some(w)) if w.verdict.net_prefix > e.verdict.net_prefix => w,
            (Some(e), _) => e,
            (None, Some(w)) => w,
            (None, None) => return None,
        };
        let rule = &self.policy.rules[best.position as usize - 1];
        Some(BgAnswer {
            verdict: best.verdict,
            position: best.position,
            wildcard: rule.is_wildcard_port(),
        })
    }
}

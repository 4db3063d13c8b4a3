//! A model of the kernel's rule lookup over compiled entries (what the
//! connect program does with the tries, the slot and the default-port
//! bitmap), for the compiler's tests here and for the fuzz targets
//! (feature `testing`). It goes through the real key encoding
//! ([`key_v4`], [`key_v6`] and `classifier_common::rule_key_v4`/`_v6`) and finds
//! the longest prefix by trying each prefix length present, longest first,
//! as an LPM trie answers.

use std::collections::HashMap;
use std::net::IpAddr;

use classifier_common::{
    rule_key_v4, rule_key_v6, RuleVerdict, PORT_ANY, RULE_KEY_FIXED_BITS, RULE_MATCH,
    SCOPE_GLOBAL_EGRESS, SCOPE_NODE,
};

use super::{key_v4, key_v6, CompiledPolicy};
use crate::model::Protocol;

/// One family's trie: (key bit length, key with the bits past it cleared)
/// -> verdict, and the bit lengths present, longest first.
#[derive(Default)]
struct Trie {
    entries: HashMap<(u32, Vec<u8>), RuleVerdict>,
    lens: Vec<u32>,
}

/// `key` with every bit from `bits` on cleared.
fn masked(key: &[u8], bits: u32) -> Vec<u8> {
    let mut k = key.to_vec();
    let full = bits as usize / 8;
    if full < k.len() {
        let rest = bits % 8;
        k[full] &= if rest == 0 { 0 } else { 0xffu8 << (8 - rest) };
        k[full + 1..].fill(0);
    }
    k
}

impl Trie {
    fn insert(&mut self, bits: u32, key: &[u8], verdict: RuleVerdict) {
        assert!(
            bits >= RULE_KEY_FIXED_BITS,
            "key shorter than slot, scope and port"
        );
        self.entries.insert((bits, masked(key, bits)), verdict);
        if !self.lens.contains(&bits) {
            self.lens.push(bits);
        }
    }

    fn finish(&mut self) {
        self.lens.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn lpm(&self, probe: &[u8]) -> Option<RuleVerdict> {
        self.lens
            .iter()
            .find_map(|&bits| self.entries.get(&(bits, masked(probe, bits))))
            .copied()
    }
}

/// Where a modelled verdict came from: the `SOURCE_*` wire values.
pub type Source = classifier_common::Source;

/// The kernel's view of one compiled policy, written to both slots (a
/// lookup of port `p` reads slot `p % 2`, so both slot values are
/// exercised).
pub struct KernelModel<'c> {
    compiled: &'c CompiledPolicy,
    v4: Trie,
    v6: Trie,
}

impl<'c> KernelModel<'c> {
    pub fn new(compiled: &'c CompiledPolicy) -> KernelModel<'c> {
        let (mut v4, mut v6) = (Trie::default(), Trie::default());
        for slot in [0, 1] {
            for e in &compiled.v4 {
                let (bits, key) = key_v4(slot, e);
                v4.insert(bits, &key, e.verdict);
            }
            for e in &compiled.v6 {
                let (bits, key) = key_v6(slot, e);
                v6.insert(bits, &key, e.verdict);
            }
        }
        v4.finish();
        v6.finish();
        KernelModel { compiled, v4, v6 }
    }

    /// Longest-prefix lookup of one (scope, port) in the address's family.
    pub fn lpm(&self, scope: u16, port: u16, addr: IpAddr) -> Option<RuleVerdict> {
        let slot = (port % 2) as u8;
        match addr {
            IpAddr::V4(a) => self.v4.lpm(&rule_key_v4(slot, scope, port, a.octets())),
            IpAddr::V6(a) => self.v6.lpm(&rule_key_v6(slot, scope, port, &a.octets())),
        }
    }

    /// What the kernel does: per universe (the client's scope, then the
    /// node's, then for a client without a scope the global
    /// EgressNetworks'), the exact-port and PORT_ANY lookups, the RULE_MATCH with
    /// the larger net_prefix (exact on a tie) decides; else the default
    /// bitmap. Returns (protocol wire value, source, rule id).
    pub fn lookup(&self, client_scope: Option<u16>, addr: IpAddr, port: u16) -> (u8, Source, u32) {
        let addr = addr.to_canonical();
        if port == PORT_ANY {
            // As the kernel: port 0 is the wildcard's key, not a port.
            return (Protocol::Detect.wire(), Source::None, 0);
        }
        // A client with a scope (its namespace has EgressNetworks of its
        // own) never sees the global EgressNetworks.
        let global =
            (client_scope.is_none() && self.compiled.global_egress).then_some(SCOPE_GLOBAL_EGRESS);
        let universes = client_scope.into_iter().chain([SCOPE_NODE]).chain(global);
        for scope in universes {
            let exact = self.lpm(scope, port, addr).filter(|v| v.kind == RULE_MATCH);
            let any = if self.compiled.any_port {
                self.lpm(scope, PORT_ANY, addr)
                    .filter(|v| v.kind == RULE_MATCH)
            } else {
                None
            };
            let hit = match (exact, any) {
                (Some(e), Some(w)) => Some(if w.net_prefix > e.net_prefix { w } else { e }),
                (e, w) => e.or(w),
            };
            if let Some(v) = hit {
                return (v.protocol, Source::Rule, v.rule_id);
            }
        }
        if self.compiled.default_ports[port as usize / 64] & (1 << (port % 64)) != 0 {
            (Protocol::Opaque.wire(), Source::DefaultPort, 0)
        } else {
            (Protocol::Detect.wire(), Source::None, 0)
        }
    }
}

/// [`KernelModel::lookup`] for a single lookup, with the source as the
/// name `stats` and `explain` use (`rule`, `default_port`, `none`).
pub fn kernel_lookup(
    c: &CompiledPolicy,
    client_scope: Option<u16>,
    addr: IpAddr,
    port: u16,
) -> (u8, &'static str, u32) {
    let (protocol, source, rule_id) = KernelModel::new(c).lookup(client_scope, addr, port);
    (protocol, source.as_str(), rule_id)
}

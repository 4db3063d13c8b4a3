//! A compiled policy kept up to date one object at a time: a change to one
//! Pod, Service or Server costs in proportion to that object, not to the
//! cluster.
//!
//! The policy is held in two layers:
//!
//! - the **background**: the ClassifierPolicy's rules and the
//!   EgressNetworks', compiled whole ([`base`]); and
//! - one **fragment per object** for Pods, Services and Servers: the rules
//!   the document compiler gives that object alone (it is run on the
//!   object and what the object's rules depend on: its Namespace, and for
//!   a Server the pods it selects). Every rule of a fragment is on host
//!   networks (a /32 or /128 per address, no holes), node-wide.
//!
//! A host rule only decides the trie keys at its own addresses, so a
//! change re-derives the entries at the addresses of the object's rules
//! before and after, and nothing else. The value at such a key is the
//! first, in the compiler's order (explicit ports before wildcard, then
//! precedence), among the host rules at that address and the background's
//! own answer there if that is also a full-length network; otherwise the
//! best host rule; otherwise the background's answer. That is what
//! [`crate::compile`] computes at that key for the whole policy.
//!
//! Rule ids do not shift: a fragment's rules keep their ids when the
//! object changes (rule `i` of the fragment keeps the id rule `i` had), a
//! new rule takes an id freed earlier or the next unused one, and a full
//! compile gives every rule it can match to a previous one (same object
//! or same origin, same position) the id it had. Precedence among rules
//! is not their id but what the full compiler's numbering stands for:
//! operator rules, Servers (oldest first), Services, Pods, EgressNetworks.
//!
//! **Global rules fall back to a full compile** of the same documents:
//! any change to a Namespace, an EgressNetwork or the ClassifierPolicy; a
//! pod whose addresses another live pod claims (before or after the
//! change: contested addresses get no rules at all); a namespace whose
//! rules go over its entry budget, or a policy over the tables' capacity
//! (the give-way); every change while some namespace is over budget; and
//! a batch that changes a large part of the documents (a first list).
//! [`LivePolicy::full_compiles`] counts them.
//!
//! The differential property (tests, and the `live_documents` fuzz
//! target): after any sequence of changes, [`LivePolicy::compiled`] equals
//! a full compile of the same documents, rule for rule, up to the rule
//! ids' numbering.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::compile::{entry_bound, CompileError, CompiledPolicy, TrieEntry};
use crate::compile::{MAX_V4_ENTRIES, MAX_V6_ENTRIES};
use crate::model::{Network, Policy, PolicyError, Protocol, Rule};
use crate::ports::PortSet;
use crate::sources::document::{Document, DocumentKey, DocumentSet};
use crate::sources::kinds::{self, KubeKind};
use crate::sources::linkerd::{compile_documents_with, rule_origin, Options, Rejected};
use crate::sources::objects::Object;
use classifier_common::{RuleVerdict, PORT_ANY, PROTO_UNKNOWN, RULE_MATCH, RULE_NONE, SCOPE_NODE};
use ipnet::IpNet;
use smallvec::SmallVec;

mod base;
mod pods;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use base::Background;
pub use pods::PodNamespaces;

/// One change of the document set.
#[derive(Clone, Debug)]
pub enum Change {
    /// Added or replaced (same kind, namespace and name).
    Apply(Arc<Document>),
    /// Removed.
    Delete(DocumentKey),
}

/// Why a live policy could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// What one [`LivePolicy::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// It compiled the whole policy (see the module documentation): the
    /// maps need [`LivePolicy::compiled`], not `delta`.
    pub full: bool,
    /// Addresses whose entries it re-derived (incremental only).
    pub addresses: usize,
    /// The entries that changed (incremental only); nothing else did.
    pub delta: Delta,
}

/// Trie entries removed and added or changed by one incremental update.
/// Every one of them is node-wide, at a full-length prefix (one address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub v4_removed: Vec<TrieEntry<4>>,
    pub v4_upserted: Vec<TrieEntry<4>>,
    pub v6_removed: Vec<TrieEntry<16>>,
    pub v6_upserted: Vec<TrieEntry<16>>,
    /// The policy's rule count after it.
    pub rule_count: u32,
    /// Whether some entry is at [`PORT_ANY`] after it.
    pub any_port: bool,
    /// Entries per family after it.
    pub v4_entries: usize,
    pub v6_entries: usize,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.v4_removed.is_empty()
            && self.v4_upserted.is_empty()
            && self.v6_removed.is_empty()
            && self.v6_upserted.is_empty()
    }

    /// Number of entries it removes or writes.
    pub fn len(&self) -> usize {
        self.v4_removed.len()
            + self.v4_upserted.len()
            + self.v6_removed.len()
            + self.v6_upserted.len()
    }

    /// Brings `policy` through `deltas` in order, in one merge per family
    /// (linear in the policy, whatever the number of deltas).
    pub fn apply_all(deltas: &[Delta], policy: &mut CompiledPolicy) {
        fn merge<const N: usize>(
            v: &mut Vec<TrieEntry<N>>,
            changes: impl Iterator<Item = (TrieEntry<N>, bool)>,
        ) {
            // Last change per key wins: `Some` to write, `None` to remove.
            let mut last: BTreeMap<(u16, u16, [u8; N], u8), Option<TrieEntry<N>>> = BTreeMap::new();
            for (e, removed) in changes {
                last.insert(e.sort_key(), (!removed).then_some(e));
            }
            if last.is_empty() {
                return;
            }
            let old = std::mem::take(v);
            let mut out = Vec::with_capacity(old.len() + last.len());
            let mut changes = last.into_iter().peekable();
            for e in old {
                while let Some((k, _)) = changes.peek() {
                    if *k >= e.sort_key() {
                        break;
                    }
                    out.extend(changes.next().and_then(|(_, c)| c));
                }
                match changes.peek() {
                    Some((k, _)) if *k == e.sort_key() => {
                        out.extend(changes.next().and_then(|(_, c)| c));
                    }
                    _ => out.push(e),
                }
            }
            out.extend(changes.filter_map(|(_, c)| c));
            *v = out;
        }
        let Some(lastd) = deltas.last() else {
            return;
        };
        merge(
            &mut policy.v4,
            deltas.iter().flat_map(|d| {
                d.v4_removed
                    .iter()
                    .map(|e| (*e, true))
                    .chain(d.v4_upserted.iter().map(|e| (*e, false)))
            }),
        );
        merge(
            &mut policy.v6,
            deltas.iter().flat_map(|d| {
                d.v6_removed
                    .iter()
                    .map(|e| (*e, true))
                    .chain(d.v6_upserted.iter().map(|e| (*e, false)))
            }),
        );
        policy.rule_count = lastd.rule_count;
        policy.any_port = lastd.any_port;
    }

    /// Brings `policy` (the compiled policy before the update) to the one
    /// after it; its entries stay sorted.
    pub fn apply_to(&self, policy: &mut CompiledPolicy) {
        fn patch<const N: usize>(
            v: &mut Vec<TrieEntry<N>>,
            removed: &[TrieEntry<N>],
            upserted: &[TrieEntry<N>],
        ) {
            for e in removed {
                if let Ok(i) = v.binary_search_by_key(&e.sort_key(), TrieEntry::sort_key) {
                    v.remove(i);
                }
            }
            for e in upserted {
                match v.binary_search_by_key(&e.sort_key(), TrieEntry::sort_key) {
                    Ok(i) => v[i] = *e,
                    Err(i) => v.insert(i, *e),
                }
            }
        }
        patch(&mut policy.v4, &self.v4_removed, &self.v4_upserted);
        patch(&mut policy.v6, &self.v6_removed, &self.v6_upserted);
        policy.rule_count = self.rule_count;
        policy.any_port = self.any_port;
    }
}

/// A rule of an object's fragment, held compactly: every network of such
/// a rule is one address's full-length prefix without holes, node-wide
/// (see the module documentation), so its addresses, ports and protocol
/// are the whole rule. Its origin is `Kind ns/name (origin)` of `doc`,
/// made again when the rule is shown ([`HostRule::full`]).
struct HostRule {
    id: u32,
    /// Its position in its object's fragment.
    position: u16,
    protocol: Protocol,
    addrs: SmallVec<[IpAddr; 1]>,
    ports: PortSet,
    /// The object it comes from (for precedence and its origin).
    doc: Arc<Document>,
}

impl HostRule {
    /// Rule `position` of `doc`'s fragment, as the compiler gave it.
    fn new(rule: Rule, doc: Arc<Document>, position: u16) -> HostRule {
        // The compiler gives an object's rules only on its addresses (a
        // pod's, a Service's cluster IPs, a Server's pods'), node-wide;
        // held otherwise they would be a wrong rule, which is worse than a
        // stopped agent.
        assert!(
            rule.scope.is_none()
                && !rule.global_egress
                && rule
                    .networks
                    .iter()
                    .all(|n| n.except.is_empty() && n.cidr.prefix_len() == n.cidr.max_prefix_len()),
            "an object's rule is not on host networks: {rule:?}"
        );
        #[cfg(debug_assertions)]
        let expected = bound_of(&[&rule]);
        let h = HostRule {
            id: rule.id,
            position,
            protocol: rule.protocol,
            addrs: rule.networks.iter().map(|n| n.cidr.addr()).collect(),
            ports: rule.ports,
            doc,
        };
        #[cfg(debug_assertions)]
        debug_assert_eq!(h.bound(), expected);
        h
    }

    fn is_wildcard_port(&self) -> bool {
        self.ports.is_all()
    }

    /// The trie entries it can make, per family: [`entry_bound`] of the
    /// rule, which for a rule on host networks is each port (one for all
    /// ports) at each address.
    fn bound(&self) -> (u64, u64) {
        let ports = if self.is_wildcard_port() {
            1
        } else {
            self.ports.len() as u64
        };
        let v6 = self.addrs.iter().filter(|a| a.is_ipv6()).count() as u64;
        ((self.addrs.len() as u64 - v6) * ports, v6 * ports)
    }

    /// The rule as the compiler gave it, origin included.
    fn full(&self) -> Rule {
        Rule {
            id: self.id,
            networks: self
                .addrs
                .iter()
                .map(|a| Network::new(IpNet::from(*a)))
                .collect(),
            ports: self.ports.clone(),
            protocol: self.protocol,
            scope: None,
            global_egress: false,
            origin: rule_origin(&self.doc),
        }
    }
}

/// An object of the live set: its key (the set's own, whose clone shares
/// its string) and its document.
type SetEntry = (DocumentKey, Arc<Document>);

/// The entries at one address, (port, verdict): a handful.
type Entries = SmallVec<[(u16, RuleVerdict); 4]>;

/// Trie key before encoding: (scope, port, address, prefix).
type Key<const N: usize> = (u16, u16, [u8; N], u8);

pub struct LivePolicy {
    opts: Options,
    /// Namespace -> scope id for the background's scoped rules; `None`:
    /// ids 1.. in name order, as [`crate::compile::compile`] gives.
    scope_ids: Option<BTreeMap<String, u16>>,
    set: DocumentSet,
    base: Background,
    /// The stable id of each background rule, by position.
    base_ids: Vec<u32>,
    /// Host rules in `rules`.
    host_count: u32,
    /// Host rules (slab), the free slots, and each object's slots.
    rules: Vec<Option<HostRule>>,
    free_slots: Vec<u32>,
    fragments: HashMap<DocumentKey, SmallVec<[u32; 2]>>,
    /// Rule id -> host rule slot.
    by_id: HashMap<u32, u32>,
    /// What is kept per address: rules, written ports, claims.
    at: HashMap<IpAddr, AtAddr>,
    v4: BTreeMap<Key<4>, RuleVerdict>,
    v6: BTreeMap<Key<16>, RuleVerdict>,
    ids: IdAlloc,
    /// Per namespace: entries its objects' rules need (bound), host
    /// fragments and background separately.
    ns_host_bound: HashMap<Arc<str>, u64>,
    ns_bg_bound: HashMap<Arc<str>, u64>,
    /// Per family, all rules together.
    host_total: (u64, u64),
    bg_total: (u64, u64),
    /// The last full compile dropped a namespace (over budget, or given
    /// way): every change is a full compile until it no longer does.
    degraded: bool,
    /// The background has node-wide wildcard-port rules with holes, whose
    /// entry bound is not additive with the objects'.
    bg_node_holes: bool,
    rejected: BTreeMap<DocumentKey, Vec<Rejected>>,
    /// Pod UID -> namespace, with the Pod documents per UID: a UID two
    /// pods carry (which the API server never gives) makes their changes
    /// global.
    pods: PodNamespaces,
    full_compiles: u64,
    incremental: u64,
    /// Entries changed by the update being applied.
    delta: Delta,
    /// Entries at the wildcard port, for `any_port`.
    any_port_entries: usize,
}

/// What the live policy keeps per address (one map rather than three: at
/// 100k pods each was 5-10 MiB, and a vector per entry one allocation
/// more).
#[derive(Default)]
struct AtAddr {
    /// Host rule slots with a network at it.
    slots: SmallVec<[u32; 2]>,
    /// Ports of the keys at it this layer wrote.
    written: SmallVec<[u16; 4]>,
    /// Live, resolved pods claiming it: with two it is contested.
    claims: u32,
}

impl AtAddr {
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.written.is_empty() && self.claims == 0
    }

    fn contested(&self) -> bool {
        self.claims >= 2
    }
}

/// Stable rule ids: freed ids are reused before new ones.
#[derive(Default)]
struct IdAlloc {
    next: u32,
    free: Vec<u32>,
}

impl IdAlloc {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        })
    }
    fn give(&mut self, id: u32) {
        self.free.push(id);
    }
}

fn host_kind(kind: &str) -> bool {
    kind == kinds::POD.kind || kind == kinds::SERVICE.kind || kind == kinds::SERVER.kind
}

/// The kind the compiler reads `doc` as, if any.
fn read_kind(doc: &Document) -> Option<&'static KubeKind> {
    kinds::by_name(&doc.kind).filter(|k| k.reads_api_version(&doc.api_version))
}

/// Precedence tier of an object's rules (the operator's are 0, the
/// EgressNetworks' 4).
fn tier(doc: &Document) -> u8 {
    match &*doc.kind {
        "Server" => 1,
        "Service" => 2,
        _ => 3,
    }
}

/// The compiler's order among rules of host objects.
fn precedence(a: &HostRule, b: &HostRule) -> std::cmp::Ordering {
    let (da, db) = (&a.doc, &b.doc);
    tier(da).cmp(&tier(db)).then_with(|| {
        if tier(da) == 1 {
            crate::sources::linkerd::age_order(da, db)
        } else {
            (&da.namespace, &da.name()).cmp(&(&db.namespace, &db.name()))
        }
        .then(a.position.cmp(&b.position))
    })
}

/// The key of the object a rule comes from, read off its origin
/// (`Kind ns/name (origin)`), if it is a host kind.
fn host_key_of(origin: &str) -> Option<DocumentKey> {
    let (kind, rest) = origin.split_once(' ')?;
    if !host_kind(kind) {
        return None;
    }
    let (ns_name, _) = rest.split_once(" (")?;
    let (ns, name) = ns_name.split_once('/')?;
    Some(DocumentKey::new(kind, Some(ns), name))
}

/// Whether a rejection is the entry budget's (the whole namespace dropped).
fn is_budget_rejection(r: &Rejected) -> bool {
    matches!(&r.error, PolicyError::Invalid { field, .. } if field == "metadata.namespace")
}

/// A full compile's rejections per document, and whether one of them was
/// over a budget (the compile dropped a namespace).
fn by_document(all: Vec<Rejected>) -> (BTreeMap<DocumentKey, Vec<Rejected>>, bool) {
    let mut rejected: BTreeMap<DocumentKey, Vec<Rejected>> = BTreeMap::new();
    let mut degraded = false;
    for r in all {
        degraded |= is_budget_rejection(&r);
        let key = DocumentKey::new(&r.kind, r.namespace.as_deref(), &r.name);
        rejected.entry(key).or_default().push(r);
    }
    (rejected, degraded)
}

fn bound_of(rules: &[&Rule]) -> (u64, u64) {
    entry_bound(rules.iter().copied())
}

impl LivePolicy {
    /// An empty live policy (no documents: the built-in policy).
    pub fn new(opts: Options) -> Result<LivePolicy, LiveError> {
        let mut live = LivePolicy {
            opts,
            scope_ids: None,
            set: DocumentSet::new(),
            base: Background::build(Policy::builtin_default(), 0, &BTreeMap::new(), &[])?,
            base_ids: Vec::new(),
            host_count: 0,
            rules: Vec::new(),
            free_slots: Vec::new(),
            fragments: HashMap::new(),
            by_id: HashMap::new(),
            at: HashMap::new(),
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
            ids: IdAlloc::default(),
            ns_host_bound: HashMap::new(),
            ns_bg_bound: HashMap::new(),
            host_total: (0, 0),
            bg_total: (0, 0),
            degraded: false,
            bg_node_holes: false,
            rejected: BTreeMap::new(),
            pods: PodNamespaces::default(),
            full_compiles: 0,
            incremental: 0,
            delta: Delta::default(),
            any_port_entries: 0,
        };
        live.rebuild()?;
        live.full_compiles = 0;
        Ok(live)
    }

    /// Uses these scope ids for namespace-scoped rules (every namespace
    /// with scoped rules must have one) from the next full compile on.
    pub fn set_scope_ids(&mut self, ids: BTreeMap<String, u16>) {
        self.scope_ids = Some(ids);
    }

    /// Sets the scope ids (as [`LivePolicy::set_scope_ids`]) and compiles
    /// again if the policy in force used other ids for its scoped rules:
    /// the caller allocates ids for the namespaces a full compile found
    /// ([`Policy::scopes`] of [`LivePolicy::settings`]), then calls this
    /// before the maps are written. Returns whether it compiled again.
    pub fn rescope(&mut self, ids: BTreeMap<String, u16>) -> Result<bool, LiveError> {
        let same = self
            .base
            .compiled
            .scope_ids
            .iter()
            .all(|(ns, id)| ids.get(ns) == Some(id));
        self.scope_ids = Some(ids);
        if same {
            return Ok(false);
        }
        self.rebuild()?;
        Ok(true)
    }

    /// The documents in force.
    pub fn documents(&self) -> &DocumentSet {
        &self.set
    }

    /// Pod UID -> namespace, from every Pod document.
    pub fn pod_namespaces(&self) -> &PodNamespaces {
        &self.pods
    }

    /// The objects the compiler skipped, and why.
    pub fn rejected(&self) -> impl Iterator<Item = &Rejected> {
        self.rejected.values().flatten()
    }

    /// Rules in force: the background's and the objects'.
    pub fn rule_count(&self) -> u32 {
        self.base.compiled.rule_count + self.host_count
    }

    /// Full compiles so far (the first one not counted).
    pub fn full_compiles(&self) -> u64 {
        self.full_compiles
    }

    /// Changes applied without one.
    pub fn incremental_updates(&self) -> u64 {
        self.incremental
    }

    /// The rules in force, background first, then the objects', each with
    /// its (stable) id.
    pub fn rules(&self) -> impl Iterator<Item = Rule> + '_ {
        let bg = self.base.policy.rules.iter().map(|r| {
            let mut r = r.clone();
            r.id = self.base_stable_id(r.id);
            r
        });
        bg.chain(self.rules.iter().flatten().map(HostRule::full))
    }

    /// The rule with this id, if any.
    pub fn rule(&self, id: u32) -> Option<Rule> {
        if let Some(&slot) = self.by_id.get(&id) {
            return self.rules[slot as usize].as_ref().map(HostRule::full);
        }
        self.base
            .policy
            .rules
            .iter()
            .find(|r| self.base_stable_id(r.id) == id)
            .map(|r| Rule { id, ..r.clone() })
    }

    fn base_stable_id(&self, position: u32) -> u32 {
        self.base_ids[position as usize - 1]
    }
}

/// What a full compile found, before it is installed.
struct Split {
    bg_rules: Vec<Rule>,
    bg_ids: Vec<u32>,
    operator_rules: u32,
    /// (object, rule with its stable id), in the compiler's order.
    host: Vec<(DocumentKey, HostRule)>,
    ids: IdAlloc,
}

impl LivePolicy {
    /// Compiles the whole document set again and installs the result.
    fn rebuild(&mut self) -> Result<(), LiveError> {
        let compiled = compile_documents_with(&self.set, &self.opts, false)?;
        let mut policy = compiled.policy;
        let (rejected, degraded) = by_document(compiled.rejected);
        let split = self.split(std::mem::take(&mut policy.rules));
        let Split {
            bg_rules,
            bg_ids,
            operator_rules,
            host,
            ids,
        } = split;
        let bg_policy = Policy {
            rules: bg_rules,
            ..policy
        };
        let scope_ids = match &self.scope_ids {
            Some(ids) => with_provisional_ids(ids, &bg_policy),
            None => bg_policy
                .scopes()
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), (i + 1) as u16))
                .collect(),
        };
        let base = Background::build(bg_policy, operator_rules, &scope_ids, &bg_ids)?;

        // Install.
        self.base = base;
        self.base_ids = bg_ids;
        self.ids = ids;
        self.rejected = rejected;
        self.degraded = degraded;
        self.install_host(host);
        self.background_bounds();
        self.count_claims();
        self.load_base_entries();
        let addrs: Vec<IpAddr> = self
            .at
            .iter()
            .filter(|(_, at)| !at.slots.is_empty())
            .map(|(a, _)| *a)
            .collect();
        for a in addrs {
            // A full compile's outcome is the whole policy: no delta.
            self.refresh(a, false);
        }
        self.delta = Delta::default();
        Ok(())
    }

    /// Installs a full compile's object fragments as host rules, replacing
    /// the ones there were, with their per-namespace and per-family bounds.
    fn install_host(&mut self, host: Vec<(DocumentKey, HostRule)>) {
        // The old structures go before the new ones are allocated, each at
        // the size it needs (not grown by doubling, nor kept at the size
        // of a larger policy before).
        self.rules = Vec::new();
        self.rules.reserve_exact(host.len());
        self.free_slots = Vec::new();
        self.fragments = HashMap::new();
        // An object's rules come one after the other.
        let objects = host.windows(2).filter(|w| w[0].0 != w[1].0).count() + 1;
        self.fragments.reserve(objects.min(host.len()));
        self.by_id = HashMap::new();
        self.by_id.reserve(host.len());
        self.at = HashMap::new();
        self.host_count = 0;
        self.ns_host_bound.clear();
        self.host_total = (0, 0);
        for (key, h) in host {
            let slot = self.rules.len() as u32;
            self.fragments.entry(key).or_default().push(slot);
            self.rules.push(None);
            let ns = h.doc.namespace.clone();
            let bound = self.index(slot, h);
            if let Some(ns) = ns {
                *self.ns_host_bound.entry(ns).or_default() += bound;
            }
        }
    }

    /// Puts `h` in `slot` and indexes it: by id, at its addresses, in the
    /// totals. Returns its entry bound, both families together.
    fn index(&mut self, slot: u32, h: HostRule) -> u64 {
        self.by_id.insert(h.id, slot);
        for &a in &h.addrs {
            self.at.entry(a).or_default().slots.push(slot);
        }
        let (b4, b6) = h.bound();
        self.host_total.0 += b4;
        self.host_total.1 += b6;
        self.host_count += 1;
        self.rules[slot as usize] = Some(h);
        b4 + b6
    }

    /// Loads the background's entries as the entries in force.
    fn load_base_entries(&mut self) {
        self.v4 = self
            .base
            .compiled
            .v4
            .iter()
            .map(|e| (e.sort_key(), e.verdict))
            .collect();
        self.v6 = self
            .base
            .compiled
            .v6
            .iter()
            .map(|e| (e.sort_key(), e.verdict))
            .collect();
        self.any_port_entries = self.v4.keys().filter(|k| k.1 == PORT_ANY).count()
            + self.v6.keys().filter(|k| k.1 == PORT_ANY).count();
    }

    /// Per rule of a full compile: its position among its origin's rules
    /// (in its object's fragment, for an object's rule), and the object of
    /// the set it comes from, for the rules of Pods, Services and Servers.
    fn place(&self, rules: &[Rule]) -> Vec<(usize, Option<SetEntry>)> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        // An object's rules come one after the other: its key is found
        // once (the set's own, whose clone shares its string).
        let mut last: Option<(&str, Option<SetEntry>)> = None;
        let mut placed = Vec::with_capacity(rules.len());
        for r in rules {
            let position = seen.entry(r.origin.as_str()).or_default();
            let pos = *position;
            *position += 1;
            let object = match &last {
                Some((origin, object)) if *origin == r.origin => object.clone(),
                _ => {
                    let object = host_key_of(&r.origin).and_then(|k| {
                        self.set
                            .docs
                            .get_key_value(&k)
                            .map(|(k, d)| (k.clone(), d.clone()))
                    });
                    last = Some((r.origin.as_str(), object.clone()));
                    object
                }
            };
            placed.push((pos, object));
        }
        placed
    }

    /// Splits a full compile's rules into the background and the objects'
    /// fragments, and gives each the id it had before where it can.
    fn split(&self, rules: Vec<Rule>) -> Split {
        // Previous ids: of objects' rules by (object, position), of the
        // background's by (origin, position among that origin's rules).
        let mut old_bg: HashMap<&str, Vec<u32>> = HashMap::new();
        for r in &self.base.policy.rules {
            old_bg
                .entry(r.origin.as_str())
                .or_default()
                .push(self.base_ids[r.id as usize - 1]);
        }
        let placed = self.place(&rules);
        let mut ids = vec![0u32; rules.len()];
        let mut used: HashSet<u32> = HashSet::with_capacity(rules.len());
        for (i, (r, (pos, object))) in rules.iter().zip(&placed).enumerate() {
            let old = match object {
                Some((k, _)) => self
                    .fragments
                    .get(k)
                    .and_then(|slots| slots.get(*pos))
                    .and_then(|&s| self.rules[s as usize].as_ref())
                    .map(|h| h.id),
                None => old_bg
                    .get(r.origin.as_str())
                    .and_then(|v| v.get(*pos))
                    .copied(),
            };
            if let Some(id) = old.filter(|id| used.insert(*id)) {
                ids[i] = id;
            }
        }
        let next = used.iter().copied().max().unwrap_or(0).max(self.ids.next);
        let mut alloc = IdAlloc {
            next,
            free: (1..=next).rev().filter(|id| !used.contains(id)).collect(),
        };
        // Lowest ids first, so that a first compile numbers as the
        // document compiler does.
        alloc.free.reverse();
        alloc.free.sort_unstable_by(|a, b| b.cmp(a));
        // Sized exactly: at 100k pods a vector of the rules grown by
        // doubling would hold up to twice their size at the resync's peak.
        let host_rules = placed.iter().filter(|(_, o)| o.is_some()).count();
        let mut split = Split {
            bg_rules: Vec::with_capacity(rules.len() - host_rules),
            bg_ids: Vec::with_capacity(rules.len() - host_rules),
            operator_rules: 0,
            host: Vec::with_capacity(host_rules),
            ids: IdAlloc::default(),
        };
        for ((mut r, (position, object)), mut id) in rules.into_iter().zip(placed).zip(ids) {
            if id == 0 {
                id = alloc.take();
            }
            match object {
                Some((k, doc)) => {
                    r.id = id;
                    // Its origin and networks are freed now, before the
                    // live policy's structures are built.
                    split.host.push((k, HostRule::new(r, doc, position as u16)));
                }
                None => {
                    if !r.origin.starts_with("EgressNetwork ") {
                        split.operator_rules += 1;
                    }
                    r.id = split.bg_rules.len() as u32 + 1;
                    split.bg_rules.push(r);
                    split.bg_ids.push(id);
                }
            }
        }
        split.ids = alloc;
        split
    }

    /// The background's entry bounds, per namespace and in all.
    fn background_bounds(&mut self) {
        let mut by_ns: HashMap<&str, Vec<&Rule>> = HashMap::new();
        for r in &self.base.policy.rules {
            if let Some(rest) = r.origin.strip_prefix("EgressNetwork ") {
                if let Some((ns, _)) = rest.split_once('/') {
                    by_ns.entry(ns).or_default().push(r);
                }
            }
        }
        self.ns_bg_bound = by_ns
            .into_iter()
            .map(|(ns, rules)| {
                let (a, b) = bound_of(&rules);
                (ns.into(), a + b)
            })
            .collect();
        self.bg_total = entry_bound(&self.base.policy.rules);
        self.bg_node_holes = self.base.policy.rules.iter().any(|r| {
            r.scope.is_none()
                && !r.global_egress
                && r.is_wildcard_port()
                && r.networks.iter().any(|n| !n.except.is_empty())
        });
    }

    /// Whether the pod `doc` is live and resolved (its IPs count as claims).
    fn live_ips<'d>(&self, doc: Option<&'d Document>, rejected: bool) -> &'d [IpAddr] {
        match doc.and_then(Document::object) {
            Some(Object::Pod(p)) if !p.inactive && !rejected => &p.ips,
            _ => &[],
        }
    }

    /// Counts the live pods' claims into `at`, which `install_host` has
    /// just filled with the rules' slots alone.
    fn count_claims(&mut self) {
        let mut pods = PodNamespaces::default();
        for doc in self.set.of_kind(kinds::POD.kind) {
            if read_kind(doc).is_none() {
                continue;
            }
            pods.add(doc);
            let rejected = !self.rejected.is_empty() && self.resolve_rejected(&doc.key());
            for ip in self.live_ips(Some(doc), rejected) {
                self.at.entry(*ip).or_default().claims += 1;
            }
        }
        self.pods = pods;
    }

    /// Whether the object was rejected for itself (not for its namespace's
    /// budget).
    fn resolve_rejected(&self, key: &DocumentKey) -> bool {
        self.rejected
            .get(key)
            .is_some_and(|rs| rs.iter().any(|r| !is_budget_rejection(r)))
    }
}

/// The change of one batch being applied, before the entries follow.
#[derive(Default)]
struct Pending {
    full: bool,
    addrs: HashSet<IpAddr>,
    servers: BTreeSet<DocumentKey>,
    namespaces: BTreeSet<Arc<str>>,
}

impl LivePolicy {
    /// Applies `changes` in order: incrementally where every change is an
    /// object's own (see the module documentation), else by a full
    /// compile. On an error the documents are the new ones, and the
    /// policy is the last one that compiled.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<Outcome, LiveError> {
        let changes = changes
            .into_iter()
            .map(|change| match change {
                Change::Apply(doc) => (doc.key(), Some(doc)),
                Change::Delete(key) => (key, None),
            })
            .collect();
        self.apply_keyed(changes)
    }

    /// [`LivePolicy::apply`] of documents (`None`: deleted) with their
    /// keys, which the set keeps (a key from another set shares its
    /// string).
    fn apply_keyed(
        &mut self,
        changes: Vec<(DocumentKey, Option<Arc<Document>>)>,
    ) -> Result<Outcome, LiveError> {
        // A batch that changes a large part of the documents (a first list,
        // a re-list after a long absence) is cheaper compiled whole.
        let large = changes.len() > 256 && changes.len() * 4 > self.set.len();
        let mut p = Pending {
            full: self.degraded || self.bg_node_holes || large,
            ..Pending::default()
        };
        for (key, new) in changes {
            let old = match &new {
                Some(doc) => self.set.docs.insert(key.clone(), doc.clone()),
                None => self.set.docs.remove(&key),
            };
            if p.full {
                continue;
            }
            self.one_change(&key, old.as_ref(), new.as_ref(), &mut p)?;
        }
        if !p.full {
            for server in std::mem::take(&mut p.servers) {
                self.server_changed(&server, &mut p)?;
                if p.full {
                    break;
                }
            }
        }
        if !p.full && !self.within_budgets(&p.namespaces) {
            p.full = true;
        }
        if p.full {
            self.rebuild()?;
            self.full_compiles += 1;
            return Ok(Outcome {
                full: true,
                ..Outcome::default()
            });
        }
        let addresses = p.addrs.len();
        self.delta = Delta::default();
        for a in p.addrs {
            self.refresh(a, true);
        }
        self.incremental += 1;
        let mut delta = std::mem::take(&mut self.delta);
        delta.rule_count = self.base.compiled.rule_count + self.host_count;
        delta.any_port = self.any_port_entries > 0;
        delta.v4_entries = self.v4.len();
        delta.v6_entries = self.v6.len();
        Ok(Outcome {
            full: false,
            addresses,
            delta,
        })
    }

    /// Brings the documents to `snapshot` (a watch's re-list, or a policy
    /// directory read again): only what differs is applied. Documents
    /// shared with the previous snapshot (the same `Arc`) are not compared.
    pub fn sync(&mut self, snapshot: &DocumentSet) -> Result<Outcome, LiveError> {
        let mut changes = Vec::new();
        let mut old = self.set.docs.iter().peekable();
        let mut new = snapshot.docs.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (Some((ko, dold)), Some((kn, dnew))) => match ko.cmp(kn) {
                    std::cmp::Ordering::Less => {
                        changes.push(((*ko).clone(), None));
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.push(((*kn).clone(), Some((*dnew).clone())));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(dold, dnew) && dold != dnew {
                            changes.push(((*kn).clone(), Some((*dnew).clone())));
                        }
                        old.next();
                        new.next();
                    }
                },
                (Some((ko, _)), None) => {
                    changes.push(((*ko).clone(), None));
                    old.next();
                }
                (None, Some((kn, dnew))) => {
                    changes.push(((*kn).clone(), Some((*dnew).clone())));
                    new.next();
                }
                (None, None) => break,
            }
        }
        if changes.is_empty() {
            return Ok(Outcome::default());
        }
        self.apply_keyed(changes)
    }

    fn one_change(
        &mut self,
        key: &DocumentKey,
        old: Option<&Arc<Document>>,
        new: Option<&Arc<Document>>,
        p: &mut Pending,
    ) -> Result<(), LiveError> {
        let docs = || old.into_iter().chain(new);
        if docs().any(|d| d.is_classifier_policy()) {
            p.full = true;
            return Ok(());
        }
        let kinds: Vec<&'static KubeKind> = docs().filter_map(|d| read_kind(d)).collect();
        let Some(kind) = kinds.first() else {
            return Ok(()); // Not read by the compiler, before or after.
        };
        if kinds.iter().any(|k| !host_kind(k.kind)) {
            p.full = true;
            return Ok(());
        }
        if let Some(ns) = docs().find_map(|d| d.namespace.clone()) {
            p.namespaces.insert(ns);
        }
        // A document of a read kind at an API version it is not read at:
        // as if absent.
        let old = old.filter(|d| read_kind(d).is_some());
        let new = new.filter(|d| read_kind(d).is_some());
        match kind.kind {
            "Pod" => self.pod_changed(key, old, new, p),
            "Service" => {
                let (rules, rejected) = match new {
                    Some(doc) => self.alone(doc, Vec::new())?,
                    None => (Vec::new(), Vec::new()),
                };
                if rejected.iter().any(is_budget_rejection) {
                    p.full = true;
                    return Ok(());
                }
                self.replace(key, new, rules, rejected, p);
                Ok(())
            }
            _ => {
                p.servers.insert(key.clone());
                Ok(())
            }
        }
    }

    fn pod_changed(
        &mut self,
        key: &DocumentKey,
        old: Option<&Arc<Document>>,
        new: Option<&Arc<Document>>,
        p: &mut Pending,
    ) -> Result<(), LiveError> {
        let (rules, rejected) = match new {
            Some(doc) => self.alone(doc, Vec::new())?,
            None => (Vec::new(), Vec::new()),
        };
        if rejected.iter().any(is_budget_rejection) {
            p.full = true;
            return Ok(());
        }
        // Claims: a change that makes or unmakes a contested address, or
        // touches one, is global.
        let old_ips = self.live_ips(old.map(|d| &**d), self.resolve_rejected(key));
        let new_ips = self.live_ips(new.map(|d| &**d), !rejected.is_empty());
        if self.move_claims(old_ips, new_ips) || self.move_uid(old, new) {
            p.full = true;
            return Ok(());
        }
        self.servers_selecting(old, new, p);
        self.replace(key, new, rules, rejected, p);
        Ok(())
    }

    /// Moves the pod's claims from its old addresses to its new ones; true
    /// (the change is global) when an address it touches is contested,
    /// before (claims left as they were) or after.
    fn move_claims(&mut self, old_ips: &[IpAddr], new_ips: &[IpAddr]) -> bool {
        let contested = |at: &HashMap<IpAddr, AtAddr>| {
            old_ips
                .iter()
                .chain(new_ips)
                .any(|ip| at.get(ip).is_some_and(AtAddr::contested))
        };
        if contested(&self.at) {
            return true;
        }
        for ip in old_ips {
            if let Some(at) = self.at.get_mut(ip) {
                at.claims = at.claims.saturating_sub(1);
                if at.is_empty() {
                    self.at.remove(ip);
                }
            }
        }
        for ip in new_ips {
            self.at.entry(*ip).or_default().claims += 1;
        }
        contested(&self.at)
    }

    /// Moves the UID -> namespace entry from the old pod to the new one;
    /// true (the change is global) when another pod carries one of these
    /// UIDs after the change, so the map's entry is not this pod's alone.
    fn move_uid(&mut self, old: Option<&Arc<Document>>, new: Option<&Arc<Document>>) -> bool {
        let (old_uid, new_uid) = (
            old.and_then(|d| d.uid.clone()),
            new.and_then(|d| d.uid.clone()),
        );
        if let Some(old) = old {
            self.pods.remove(old);
        }
        if let Some(new) = new {
            self.pods.add(new);
        }
        // Not counting this pod's own (new) entry.
        let count = |u: &str| self.pods.count(u);
        let shared_new = new_uid.as_deref().is_some_and(|u| count(u) > 1);
        let shared_old = old_uid
            .as_deref()
            .is_some_and(|u| count(u) > u32::from(new_uid.as_deref() == Some(u)));
        shared_new || shared_old
    }

    /// Marks for recompiling the Servers that select the pod, before or
    /// after the change.
    fn servers_selecting(
        &self,
        old: Option<&Arc<Document>>,
        new: Option<&Arc<Document>>,
        p: &mut Pending,
    ) {
        let ns = new
            .or(old)
            .and_then(|d| d.namespace.clone())
            .unwrap_or_default();
        let labels = |d: Option<&Arc<Document>>| match d.and_then(|d| d.object()) {
            Some(Object::Pod(pod)) => Some(pod.labels.clone()),
            _ => None,
        };
        let (before, after) = (labels(old), labels(new));
        for server in self.in_namespace(kinds::SERVER.kind, &ns) {
            if let Some(Object::Server(s)) = server.object() {
                if let Some(sel) = &s.selector {
                    if [&before, &after]
                        .into_iter()
                        .flatten()
                        .any(|l| sel.matches(l))
                    {
                        p.servers.insert(server.key());
                    }
                }
            }
        }
    }

    fn server_changed(&mut self, key: &DocumentKey, p: &mut Pending) -> Result<(), LiveError> {
        let doc = self.set.docs.get(key).cloned();
        let (rules, rejected) = match &doc {
            Some(doc) => {
                let mut pods = Vec::new();
                if let Some(Object::Server(s)) = doc.object() {
                    if let Some(sel) = &s.selector {
                        let ns = doc.namespace.as_deref().unwrap_or("default");
                        for pod_doc in self.in_namespace(kinds::POD.kind, ns) {
                            let Some(Object::Pod(pod)) = pod_doc.object() else {
                                continue;
                            };
                            if !sel.matches(&pod.labels) {
                                continue;
                            }
                            if pod
                                .ips
                                .iter()
                                .any(|ip| self.at.get(ip).is_some_and(AtAddr::contested))
                            {
                                p.full = true;
                                return Ok(());
                            }
                            pods.push(pod_doc.clone());
                        }
                    }
                }
                self.alone(doc, pods)?
            }
            None => (Vec::new(), Vec::new()),
        };
        if rejected.iter().any(is_budget_rejection) {
            p.full = true;
            return Ok(());
        }
        self.replace(key, doc.as_ref(), rules, rejected, p);
        Ok(())
    }

    /// The documents of `kind` in namespace `ns`.
    fn in_namespace<'a>(&'a self, kind: &'a str, ns: &'a str) -> Vec<&'a Arc<Document>> {
        self.set
            .docs
            .range(DocumentKey::new(kind, Some(ns), "")..)
            .map(|(_, d)| d)
            .take_while(|d| &*d.kind == kind && d.namespace.as_deref() == Some(ns))
            .filter(|d| read_kind(d).is_some())
            .collect()
    }

    /// The rules of `doc` alone, compiled with its Namespace and `with`
    /// (the pods a Server selects), and what was rejected of it.
    fn alone(
        &self,
        doc: &Arc<Document>,
        with: Vec<Arc<Document>>,
    ) -> Result<(Vec<Rule>, Vec<Rejected>), LiveError> {
        let mut set = DocumentSet::new();
        if let Some(ns) = &doc.namespace {
            let ns_key = DocumentKey::new(kinds::NAMESPACE.kind, None, ns);
            if let Some(ns_doc) = self.set.docs.get(&ns_key) {
                set.insert_shared(ns_doc.clone());
            }
        }
        for d in with {
            set.insert_shared(d);
        }
        set.insert_shared(doc.clone());
        let key = doc.key();
        let compiled = compile_documents_with(&set, &self.opts, false)?;
        let rules = compiled
            .policy
            .rules
            .into_iter()
            .filter(|r| host_key_of(&r.origin).as_ref() == Some(&key))
            .collect();
        let rejected = compiled
            .rejected
            .into_iter()
            .filter(|r| DocumentKey::new(&r.kind, r.namespace.as_deref(), &r.name) == key)
            .collect();
        Ok((rules, rejected))
    }

    /// Replaces the fragment of `key` with `rules` (ids kept by position).
    fn replace(
        &mut self,
        key: &DocumentKey,
        doc: Option<&Arc<Document>>,
        rules: Vec<Rule>,
        rejected: Vec<Rejected>,
        p: &mut Pending,
    ) {
        let old_slots = self.fragments.remove(key).unwrap_or_default();
        let mut old_ids = Vec::with_capacity(old_slots.len());
        let mut ns_delta: i64 = 0;
        for slot in old_slots {
            let Some(h) = self.rules[slot as usize].take() else {
                continue;
            };
            self.free_slots.push(slot);
            self.by_id.remove(&h.id);
            for &a in &h.addrs {
                p.addrs.insert(a);
                if let Some(at) = self.at.get_mut(&a) {
                    at.slots.retain(|s| *s != slot);
                    if at.is_empty() {
                        self.at.remove(&a);
                    }
                }
            }
            let (b4, b6) = h.bound();
            self.host_total.0 -= b4;
            self.host_total.1 -= b6;
            ns_delta -= (b4 + b6) as i64;
            self.host_count -= 1;
            old_ids.push(h.id);
        }
        let mut slots = SmallVec::with_capacity(rules.len());
        if let Some(doc) = doc {
            for (i, mut rule) in rules.into_iter().enumerate() {
                rule.id = match old_ids.get(i) {
                    Some(&id) => id,
                    None => self.ids.take(),
                };
                let h = HostRule::new(rule, doc.clone(), i as u16);
                p.addrs.extend(h.addrs.iter().copied());
                let slot = self.alloc_slot();
                ns_delta += self.index(slot, h) as i64;
                slots.push(slot);
            }
        }
        for &id in old_ids.iter().skip(slots.len()) {
            self.ids.give(id);
        }
        if !slots.is_empty() {
            // The set's own key: a clone shares its string.
            let key = self.set.docs.get_key_value(key).map_or(key, |(k, _)| k);
            self.fragments.insert(key.clone(), slots);
        }
        if let Some(ns) = doc.and_then(|d| d.namespace.clone()) {
            let b = self.ns_host_bound.entry(ns).or_default();
            *b = (*b as i64 + ns_delta) as u64;
        } else if ns_delta != 0 {
            // Removed: the namespace is in the key.
            if let Some(ns) = key_namespace(key) {
                let b = self.ns_host_bound.entry(ns.into()).or_default();
                *b = (*b as i64 + ns_delta) as u64;
            }
        }
        if rejected.is_empty() {
            self.rejected.remove(key);
        } else {
            self.rejected.insert(key.clone(), rejected);
        }
    }

    /// Whether every namespace `touched` stays within its budget and the
    /// policy within the tables (then the full compile would drop nothing,
    /// as the last one did not).
    fn within_budgets(&self, touched: &BTreeSet<Arc<str>>) -> bool {
        let budget = self.opts.namespace_entry_budget;
        let ns_ok = touched.iter().all(|ns| {
            let host = self.ns_host_bound.get(ns).copied().unwrap_or(0);
            let bg = self.ns_bg_bound.get(ns).copied().unwrap_or(0);
            host + bg <= budget
        });
        ns_ok
            && self.host_total.0 + self.bg_total.0 <= MAX_V4_ENTRIES
            && self.host_total.1 + self.bg_total.1 <= MAX_V6_ENTRIES
    }

    /// A free slot of the rule slab, or a new one.
    fn alloc_slot(&mut self) -> u32 {
        if let Some(s) = self.free_slots.pop() {
            return s;
        }
        if self.rules.len() == self.rules.capacity() {
            // By an eighth, not by doubling: at 100k pods a doubled slab
            // would hold 10 MiB unused.
            self.rules.reserve_exact(self.rules.len() / 8 + 16);
        }
        self.rules.push(None);
        self.rules.len() as u32 - 1
    }

    /// Re-derives the node-wide entries at `addr`'s full-length prefix;
    /// with `record`, records what changed in `self.delta` (a full compile
    /// does not: its outcome is the whole policy).
    fn refresh(&mut self, addr: IpAddr, record: bool) {
        let prefix: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let bg: &[(u16, RuleVerdict)] = self.base.at_host.get(&addr).map_or(&[], Vec::as_slice);
        let bg: Entries = bg.iter().copied().collect();
        // What is there now: the ports this layer wrote, or the background's.
        let mut before = Entries::new();
        let (old_ports, slots) = match self.at.get_mut(&addr) {
            Some(at) => (std::mem::take(&mut at.written), at.slots.clone()),
            None => Default::default(),
        };
        for port in old_ports.iter().copied().chain(bg.iter().map(|&(p, _)| p)) {
            if let Some(v) = self.remove_entry(port, addr, prefix) {
                before.push((port, v));
            }
        }
        // Ports in order, each once: the background's and the rules'.
        let mut ports: SmallVec<[u16; 4]> = bg.iter().map(|&(p, _)| p).collect();
        for &slot in &slots {
            let h = self.rules[slot as usize].as_ref().expect("indexed slot");
            if h.is_wildcard_port() {
                ports.push(PORT_ANY);
            } else {
                ports.extend(h.ports.iter());
            }
        }
        ports.sort_unstable();
        ports.dedup();
        let after: Entries = if slots.is_empty() {
            let mut bg = bg;
            bg.sort_unstable_by_key(|&(port, _)| port);
            bg
        } else {
            let after = ports
                .iter()
                .map(|&port| (port, self.value(port, addr, prefix, &slots)))
                .collect();
            if let Some(at) = self.at.get_mut(&addr) {
                at.written = ports;
            }
            after
        };
        if self.at.get(&addr).is_some_and(AtAddr::is_empty) {
            self.at.remove(&addr);
        }
        for &(port, v) in &after {
            self.put_entry(port, addr, prefix, v);
        }
        if !record {
            return;
        }
        before.sort_unstable_by_key(|&(port, _)| port);
        let find = |entries: &Entries, port: u16| {
            entries.iter().find(|(p, _)| *p == port).map(|&(_, v)| v)
        };
        for &(port, v) in &before {
            if find(&after, port).is_none() {
                self.record(addr, prefix, (port, v), true);
            }
        }
        for &(port, v) in &after {
            if find(&before, port) != Some(v) {
                self.record(addr, prefix, (port, v), false);
            }
        }
    }

    fn record(
        &mut self,
        addr: IpAddr,
        prefix: u8,
        (port, verdict): (u16, RuleVerdict),
        removed: bool,
    ) {
        match addr {
            IpAddr::V4(a) => {
                let e = TrieEntry {
                    scope: SCOPE_NODE,
                    port,
                    addr: a.octets(),
                    prefix,
                    verdict,
                };
                if removed {
                    self.delta.v4_removed.push(e)
                } else {
                    self.delta.v4_upserted.push(e)
                }
            }
            IpAddr::V6(a) => {
                let e = TrieEntry {
                    scope: SCOPE_NODE,
                    port,
                    addr: a.octets(),
                    prefix,
                    verdict,
                };
                if removed {
                    self.delta.v6_removed.push(e)
                } else {
                    self.delta.v6_upserted.push(e)
                }
            }
        }
    }

    /// The entry at (node scope, `port`, `addr`/full) for the whole policy.
    fn value(&self, port: u16, addr: IpAddr, prefix: u8, slots: &[u32]) -> RuleVerdict {
        let hosts = || {
            slots
                .iter()
                .map(|&s| self.rules[s as usize].as_ref().expect("indexed slot"))
        };
        let best = |wildcard: bool| {
            hosts()
                .filter(|h| {
                    if wildcard {
                        h.is_wildcard_port()
                    } else {
                        !h.is_wildcard_port() && h.ports.contains(port)
                    }
                })
                .min_by(|a, b| precedence(a, b))
        };
        let host = if port == PORT_ANY {
            best(true).map(|h| (h, true))
        } else {
            best(false)
                .map(|h| (h, false))
                .or_else(|| best(true).map(|h| (h, true)))
        };
        let bg = self.base.answer(port, addr);
        let host_verdict = |h: &HostRule| RuleVerdict {
            rule_id: h.id,
            protocol: h.protocol.wire(),
            kind: RULE_MATCH,
            net_prefix: prefix,
            _pad: 0,
        };
        match (host, bg) {
            (Some((h, h_wild)), Some(b)) if b.verdict.net_prefix == prefix => {
                let b_tier = if b.position <= self.base.operator_rules {
                    0
                } else {
                    4
                };
                if (b.wildcard, b_tier) < (h_wild, tier(&h.doc)) {
                    b.verdict
                } else {
                    host_verdict(h)
                }
            }
            (Some((h, _)), _) => host_verdict(h),
            (None, Some(b)) => b.verdict,
            (None, None) => RuleVerdict {
                rule_id: 0,
                protocol: PROTO_UNKNOWN,
                kind: RULE_NONE,
                net_prefix: 0,
                _pad: 0,
            },
        }
    }

    fn put_entry(&mut self, port: u16, addr: IpAddr, prefix: u8, v: RuleVerdict) {
        let old = match addr {
            IpAddr::V4(a) => self.v4.insert((SCOPE_NODE, port, a.octets(), prefix), v),
            IpAddr::V6(a) => self.v6.insert((SCOPE_NODE, port, a.octets(), prefix), v),
        };
        if old.is_none() && port == PORT_ANY {
            self.any_port_entries += 1;
        }
    }

    fn remove_entry(&mut self, port: u16, addr: IpAddr, prefix: u8) -> Option<RuleVerdict> {
        let old = match addr {
            IpAddr::V4(a) => self.v4.remove(&(SCOPE_NODE, port, a.octets(), prefix)),
            IpAddr::V6(a) => self.v6.remove(&(SCOPE_NODE, port, a.octets(), prefix)),
        };
        if old.is_some() && port == PORT_ANY {
            self.any_port_entries -= 1;
        }
        old
    }

    /// The kernel maps' contents for the policy in force, entries sorted
    /// as [`crate::compile`] sorts them.
    pub fn compiled(&self) -> CompiledPolicy {
        let (v4, v6) = (trie_entries(&self.v4), trie_entries(&self.v6));
        let any_port = self.any_port_entries > 0;
        let b = &self.base.compiled;
        CompiledPolicy {
            v4,
            v6,
            default_ports: b.default_ports.clone(),
            excluded_uids: b.excluded_uids.clone(),
            mark: b.mark,
            rule_count: b.rule_count + self.host_count,
            scoped: b.scoped,
            any_port,
            global_egress: b.global_egress,
            scope_ids: b.scope_ids.clone(),
        }
    }

    /// The policy's settings (default ports, excluded UIDs, mark,
    /// learning), without rules.
    pub fn settings(&self) -> &Policy {
        &self.base.policy
    }
}

/// A live trie's entries, in key order (the order [`crate::compile`] sorts
/// them in).
fn trie_entries<const N: usize>(map: &BTreeMap<Key<N>, RuleVerdict>) -> Vec<TrieEntry<N>> {
    map.iter()
        .map(|(&(scope, port, addr, prefix), &verdict)| TrieEntry {
            scope,
            port,
            addr,
            prefix,
            verdict,
        })
        .collect()
}

/// `ids`, with a provisional id (from the top of the id space down, below
/// the reserved global one) for
/// every namespace of `policy`'s scoped rules it lacks: a full compile
/// that finds a new scoped namespace still compiles, and the caller gives
/// the namespace its real id through [`LivePolicy::rescope`] before the
/// result reaches the kernel.
fn with_provisional_ids(ids: &BTreeMap<String, u16>, policy: &Policy) -> BTreeMap<String, u16> {
    let mut out = ids.clone();
    // Below the id reserved for the global EgressNetworks, which the
    // compiler refuses as a namespace's.
    let mut next = classifier_common::SCOPE_GLOBAL_EGRESS - 1;
    for ns in policy.scopes() {
        if !out.contains_key(ns) {
            out.insert(ns.to_owned(), next);
            next -= 1;
        }
    }
    out
}

/// The namespace part of a document key, for a namespaced kind.
fn key_namespace(key: &DocumentKey) -> Option<&str> {
    let mut parts = key.as_str().split('\0');
    parts.next()?;
    parts.next().filter(|ns| !ns.is_empty())
}

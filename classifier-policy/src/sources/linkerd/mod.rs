//! The policy compiler for Linkerd's own resources: a [`DocumentSet`] in,
//! a [`Policy`] out, with the verdicts Linkerd's semantics give.
//!
//! | document | rules |
//! |---|---|
//! | `ClassifierPolicy` (at most one) | defaults, excluded UIDs, mark, `clusterNetworks`; its own rules first (ids 1..) |
//! | `Server` | per selected pod: its IPs, `port` (number or named container port), `proxyProtocol` |
//! | `Service` | cluster IPs: opaque-ports annotation (own, else namespace's), each port's `appProtocol` |
//! | `Pod` | pod IPs: opaque-ports annotation (own, else namespace's); UID -> namespace |
//! | `Namespace` | only its annotation, inherited by Services and Pods |
//! | `EgressNetwork` | its networks: annotation (else default) opaque, every other port detect |
//!
//! Linkerd's semantics and how the rules reproduce them:
//!
//! - **An opaque-ports annotation replaces the default list** for what it is
//!   on (that is what Linkerd's proxy injector does), so an annotated Service
//!   or Pod gets an opaque rule for the annotated ports and a wildcard-port
//!   `detect` rule for the rest. A Service's `appProtocol: linkerd.io/opaque`
//!   ports are opaque in any case; without an annotation the other ports keep
//!   the default opaque ports.
//! - **An EgressNetwork that matches decides the whole port space**
//!   (Linkerd's egress fallback is detection, whatever the default ports):
//!   an opaque rule for its ports and a wildcard-port `detect` rule.
//!   EgressNetworks in the global namespace (`linkerd-egress` unless
//!   configured) are node-wide rules; the others apply only to clients in
//!   their own namespace (scoped rules), which come first. Among the matching
//!   ones of a universe the smallest CIDR wins (rule semantics), then the
//!   oldest (`creationTimestamp`; none counts as newest), then by name:
//!   their rules get ids in that order. Where two EgressNetworks have the
//!   same CIDR, the winner also gets explicit `detect` rules for the loser's
//!   opaque ports, because an explicit-port rule would otherwise beat the
//!   winner's wildcard rule.
//! - **Server** `proxyProtocol`: `opaque` -> opaque, `HTTP/1` -> http1,
//!   `HTTP/2` and `gRPC` -> http2. `unknown` -> no rule (Linkerd detects).
//!   `TLS` -> no rule: Linkerd skips detection and forwards the bytes as
//!   TLS without terminating, but a TLS client speaks first (ClientHello),
//!   so detection never stalls and there is nothing to say in the kernel.
//!   A port the pod's (or its namespace's) opaque-ports annotation lists
//!   gets no Server rule: the annotation wins, as in Linkerd. Among Servers
//!   selecting the same pod port the oldest wins (then by name).
//! - Pods that are going away (`deletionTimestamp`, phase `Succeeded` or
//!   `Failed`; their IPs get reused), pods without an IP and `hostNetwork`
//!   pods (their IP is the node's, and Linkerd does not mesh them) get no
//!   rules; an IP two live pods claim gets no pod rules (logged).
//! - EgressNetworks of the global namespace are node-wide rules of their own
//!   tier ([`Rule::global_egress`]): a namespace with EgressNetworks of its
//!   own never sees them.
//!
//! docs/src/policy/linkerd.md lists the linkerd2 source each
//! rule follows, and every deliberate difference.
//!
//! Everything else in the set is skipped with a debug log. Malformed
//! documents of the kinds above are errors naming the document (origin,
//! kind, namespace/name), the field and the value.
//!
//! Rule ids are deterministic: ClassifierPolicy rules, then Servers, then
//! Services, then Pods (each in (namespace, name) order), then
//! EgressNetworks in precedence order.
//!
//! The documents come read ([`super::objects`]: typed, checked, only the
//! fields used); this module is the compiler, one kind at a time, and
//! [`egress`] the EgressNetwork precedence.

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::document::{Content, Document, DocumentSet};
use super::kinds::{self, KubeKind};
use super::objects::{
    host_networks, EgressNetwork, FieldError, Namespace, Object, Pod, PortsAnnotation, Server,
    ServerPort, Service,
};
use crate::model::{default_cluster_networks, Network, Policy, PolicyError, Protocol, Rule};
use crate::ports::PortSet;

mod egress;
pub mod suggest;

pub use super::objects::{app_protocol_of, OPAQUE_PORTS_ANNOTATION};
/// A Service port with this `appProtocol` is opaque.
pub const OPAQUE_APP_PROTOCOL: &str = "linkerd.io/opaque";

/// The error for `doc`'s `field`.
pub(super) fn invalid(
    doc: &Document,
    field: impl Into<String>,
    message: impl Into<String>,
) -> PolicyError {
    PolicyError::Invalid {
        origin: format!("{} ({})", doc.origin(), doc.describe()),
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn field_error(doc: &Document, e: FieldError) -> PolicyError {
    invalid(doc, e.field, e.message)
}
/// Linkerd's default global egress namespace.
pub const DEFAULT_EGRESS_NAMESPACE: &str = "linkerd-egress";

/// Trie entries one namespace's rules may take, by default (65,536): a
/// quarter of what one policy may hold per address family
/// ([`crate::compile::MAX_V4_ENTRIES`]), so that no one namespace can take
/// the tables from the others, while a namespace of several thousand
/// annotated pods (two to ten entries each) still fits.
pub const DEFAULT_NAMESPACE_ENTRY_BUDGET: u64 = crate::compile::MAX_V4_ENTRIES / 4;

/// Compiler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// EgressNetworks in this namespace apply to every client.
    pub egress_global_namespace: String,
    /// At most this many trie entries (IPv4 and IPv6 together, counted by
    /// [`crate::compile::entry_bound`]) for the rules of one namespace's
    /// objects; a namespace over it has all its rules dropped and reported.
    pub namespace_entry_budget: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            egress_global_namespace: DEFAULT_EGRESS_NAMESPACE.to_string(),
            namespace_entry_budget: DEFAULT_NAMESPACE_ENTRY_BUDGET,
        }
    }
}

/// An object the compiler skipped, and why; the rest of the policy applies
/// without it.
#[derive(Debug)]
pub struct Rejected {
    /// `file#N` or `kubernetes:Kind/ns/name`.
    pub origin: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Names the document, the field and the value.
    pub error: PolicyError,
}

impl Rejected {
    fn of(doc: &Document, error: PolicyError) -> Rejected {
        // Not logged here: the compiler runs at every recompile, and an
        // unchanged object would be logged again each time. The agent logs
        // each rejection once per change of it (`RejectionLog`), the CLI
        // lists them.
        Rejected {
            origin: doc.origin().into_owned(),
            kind: doc.kind.to_string(),
            namespace: doc.namespace.as_deref().map(str::to_string),
            name: doc.name().to_string(),
            error,
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}

/// A compiled policy and the objects left out of it.
#[derive(Debug)]
pub struct Compiled {
    pub policy: Policy,
    /// In the order the compiler met them.
    pub rejected: Vec<Rejected>,
}

/// Compiles `set` into a policy; see the module documentation. Strict: the
/// first object [`compile_documents_report`] would skip is the error.
pub fn compile_documents(set: &DocumentSet, opts: &Options) -> Result<Policy, PolicyError> {
    let compiled = compile_documents_report(set, opts)?;
    match compiled.rejected.into_iter().next() {
        Some(r) => Err(r.error),
        None => Ok(compiled.policy),
    }
}

/// Compiles `set` into a policy, skipping (and returning, and logging) the
/// objects that are malformed or whose namespace is over its entry budget:
/// one tenant's mistake never takes the others' policy with it. Only the
/// ClassifierPolicy (the operator's, not a tenant's) is an error.
pub fn compile_documents_report(
    set: &DocumentSet,
    opts: &Options,
) -> Result<Compiled, PolicyError> {
    compile_documents_with(set, opts, true)
}

/// [`compile_documents_report`], with [`Policy::pod_namespaces`] left
/// empty unless `pod_namespaces` (the live policy keeps its own, sharing
/// the documents' strings: at 100k pods the map is 16 MiB).
pub(crate) fn compile_documents_with(
    set: &DocumentSet,
    opts: &Options,
    pod_namespaces: bool,
) -> Result<Compiled, PolicyError> {
    let mut c = Compiler::default();
    let (mut policy, cluster_networks) = classifier_policy(set)?;
    c.next_id = policy.rules.len() as u32 + 1;
    c.rules = std::mem::take(&mut policy.rules);
    // Room for the objects' rules before they are made. Grown by doubling,
    // the list was copied at 2^17 rules (13.6 MiB at 100k pods) into a
    // block twice that size while still held: the resync's peak. Room
    // reserved and never written costs address space, not memory (the
    // allocator maps a large block untouched), and `shrink_to_fit` below
    // gives the rest back.
    c.rules.reserve(rule_room(set));
    c.owners = Vec::with_capacity(c.rules.capacity());
    c.owners.resize(c.rules.len(), None);
    let defaults = policy.default_opaque_ports.clone();
    if tracing::enabled!(tracing::Level::DEBUG) {
        log_unread(set);
    }

    // Namespace annotations, inherited by Services and Pods (port names in
    // them resolve per pod, or per Service).
    let mut ns_ports: BTreeMap<&str, &PortsAnnotation> = BTreeMap::new();
    for (doc, ns) in c.read::<Namespace>(set, &kinds::NAMESPACE) {
        if let Some(ports) = &ns.opaque {
            ns_ports.insert(doc.name(), ports);
        }
    }
    let pods = c.pods(
        set,
        &ns_ports,
        pod_namespaces.then_some(&mut policy.pod_namespaces),
    );

    // Servers, oldest first so that they win ties on the same pod port.
    let mut servers: Vec<(&Document, &Server)> = c.read(set, &kinds::SERVER).collect();
    servers.sort_by(|a, b| age_order(a.0, b.0));
    for (doc, server) in servers {
        c.set_owner(doc.namespace.as_deref());
        c.server(doc, server, &pods);
    }

    let services: Vec<(&Document, &Service)> = c.read(set, &kinds::SERVICE).collect();
    for (doc, service) in services {
        c.set_owner(doc.namespace.as_deref());
        if let Err(e) = c.service(doc, service, &ns_ports) {
            c.rejected.push(Rejected::of(doc, field_error(doc, e)));
        }
    }

    for pod in &pods {
        c.set_owner(Some(pod.namespace));
        c.pod(pod);
    }

    c.egress_networks(set, opts, &defaults, &cluster_networks);
    c.enforce_budget(set, opts.namespace_entry_budget);

    policy.rules = c.rules;
    // Grown by doubling: up to half of it unused, which its holders keep
    // while they build from it (the live policy's fragments).
    policy.rules.shrink_to_fit();
    Ok(Compiled {
        policy,
        rejected: c.rejected,
    })
}

/// Rules to make room for: two per Pod, Service and Server, which most
/// objects stay under (one for their opaque ports, one for another
/// protocol); more grow the list as usual.
fn rule_room(set: &DocumentSet) -> usize {
    [&kinds::POD, &kinds::SERVICE, &kinds::SERVER]
        .iter()
        .map(|kind| set.of_kind(kind.kind).count())
        .sum::<usize>()
        .saturating_mul(2)
}

/// The ClassifierPolicy's settings and its own rules (ids 1.. as in a
/// file, origins naming the document), or the built-in default when there
/// is none; a second one is an error.
fn classifier_policy(set: &DocumentSet) -> Result<(Policy, Vec<IpNet>), PolicyError> {
    let mut ours = set.iter().filter(|d| d.is_classifier_policy());
    let Some(doc) = ours.next() else {
        return Ok((Policy::builtin_default(), default_cluster_networks()));
    };
    if let Some(other) = ours.next() {
        return Err(invalid(
            other,
            "kind",
            format!(
                "at most one ClassifierPolicy is allowed; another one is at {}",
                doc.origin()
            ),
        ));
    }
    let parsed = doc.parse_classifier_policy()?;
    let mut policy = parsed.policy;
    for r in &mut policy.rules {
        r.origin = format!("{} ({}) {}", doc.describe(), doc.origin(), r.origin);
    }
    Ok((policy, parsed.cluster_networks))
}

/// Logs (at debug) each document of a kind or API version the compiler
/// does not read.
fn log_unread(set: &DocumentSet) {
    for doc in set.iter() {
        let known = match kinds::by_name(&doc.kind) {
            Some(k) => k.reads_api_version(&doc.api_version),
            None => doc.is_classifier_policy(),
        };
        if !known {
            tracing::debug!(origin = %doc.origin(), kind = %doc.kind, api_version = %doc.api_version, "skipping a document the policy compiler does not read");
        }
    }
}

/// An IP that two live pods claim belongs to neither: no pod rule (Server
/// or annotation) is written for it. linkerd2's destination service
/// refuses such an address too (`getPodByPodIP` in
/// `controller/api/destination/watcher/workload_watcher.go`: "found
/// conflicting ... IP on the pod network").
pub(super) fn drop_contested_ips(pods: &mut [PodInfo]) {
    // (IP, pod) sorted by IP: one allocation for the whole cluster, and a
    // contested IP is a run of two or more.
    let mut claims: Vec<(IpAddr, usize)> = pods
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.pod.inactive)
        .flat_map(|(i, p)| p.ips.iter().map(move |ip| (*ip, i)))
        .collect();
    claims.sort_unstable();
    for run in claims.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
        let ip = run[0].0;
        // A bounded line: any number of pods (a tenant's) may claim one IP.
        const NAMED: usize = 5;
        let mut names: Vec<String> = run
            .iter()
            .take(NAMED)
            .map(|&(_, i)| pods[i].doc.describe())
            .collect();
        if run.len() > NAMED {
            names.push(format!("and {} more", run.len() - NAMED));
        }
        tracing::warn!(%ip, pods = %names.join(", "), "live pods claim the same IP; none of them gets a rule for it");
        for &(_, i) in run {
            pods[i].ips.to_mut().retain(|a| *a != ip);
        }
    }
}

/// The documents of `kind` in `set` at an API version the compiler reads.
pub(super) fn read<'a>(
    set: &'a DocumentSet,
    kind: &'a KubeKind,
) -> impl Iterator<Item = &'a Document> + 'a {
    set.of_kind(kind.kind)
        .filter(|d| kind.reads_api_version(&d.api_version))
}

/// The typed object of each kind.
pub(super) trait Kind: Sized {
    fn of(o: &Object) -> Option<&Self>;
}

macro_rules! kind {
    ($t:ident) => {
        impl Kind for $t {
            fn of(o: &Object) -> Option<&Self> {
                match o {
                    Object::$t(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
kind!(Namespace);
kind!(Pod);
kind!(Service);
kind!(Server);
kind!(EgressNetwork);

/// What the compiler needs of a Pod, its namespace's annotation resolved.
pub(super) struct PodInfo<'a> {
    pub(super) doc: &'a Document,
    pub(super) pod: &'a Pod,
    pub(super) namespace: &'a str,
    /// Its IPs, less those another live pod claims too.
    pub(super) ips: std::borrow::Cow<'a, [IpAddr]>,
    /// Its opaque-ports annotation, else its namespace's, with port names
    /// resolved against its container ports; `None` when neither has one.
    pub(super) opaque: Option<PortSet>,
}

impl<'a> PodInfo<'a> {
    pub(super) fn resolve(
        doc: &'a Document,
        pod: &'a Pod,
        ns_ports: Option<&PortsAnnotation>,
    ) -> Result<Self, FieldError> {
        const WHAT: &str = "container port of the pod";
        let opaque = if pod.inactive {
            None
        } else {
            match (&pod.opaque, ns_ports) {
                (Some(a), _) => Some(a.resolve(&pod.port_names, WHAT, true)?),
                (None, Some(a)) => Some(a.resolve(&pod.port_names, WHAT, false)?),
                (None, None) => None,
            }
        };
        Ok(PodInfo {
            doc,
            pod,
            namespace: doc.namespace.as_deref().unwrap_or("default"),
            ips: std::borrow::Cow::Borrowed(&pod.ips),
            opaque,
        })
    }
}

/// Oldest first (a missing timestamp counts as newest), then by name.
pub(crate) fn age_order(a: &Document, b: &Document) -> std::cmp::Ordering {
    // Borrowed: sorting compares each pair, and clones would allocate.
    fn key(d: &Document) -> (bool, Option<&str>, Option<&str>, &str) {
        (
            d.creation_timestamp.is_none(),
            d.creation_timestamp.as_deref(),
            d.namespace.as_deref(),
            d.name(),
        )
    }
    key(a).cmp(&key(b))
}

#[derive(Default)]
struct Compiler {
    rules: Vec<Rule>,
    /// The namespace of the object each rule comes from (`None`: the
    /// ClassifierPolicy's), for the entry budget: an index in
    /// `namespaces`.
    owners: Vec<Option<u32>>,
    /// The namespace of the object being compiled.
    owner: Option<u32>,
    /// The namespaces of `owners`, and their indices.
    namespaces: Vec<String>,
    namespace_index: std::collections::HashMap<String, u32>,
    next_id: u32,
    rejected: Vec<Rejected>,
}

/// The entries each namespace is guaranteed when the tables overflow:
/// (IPv4, IPv6) room left after the operator's node-wide rules, divided
/// evenly among the `namespaces` with rules. If every namespace needs at
/// most its share, they fit together, so only a namespace over its share
/// can be dropped for room. And every namespace over it gives way at once,
/// not the largest first: with "largest first" a tenant could get another
/// namespace's rules dropped by filling the table with namespaces each
/// just smaller than it, and keep its own.
pub fn fair_share(caps: (u64, u64), operator: (u64, u64), namespaces: usize) -> (u64, u64) {
    let n = namespaces.max(1) as u64;
    (
        caps.0.saturating_sub(operator.0) / n,
        caps.1.saturating_sub(operator.1) / n,
    )
}

/// (IPv4, IPv6) entries the tables hold.
const TABLE_CAPS: (u64, u64) = (
    crate::compile::MAX_V4_ENTRIES,
    crate::compile::MAX_V6_ENTRIES,
);

fn fits_tables((n4, n6): (u64, u64)) -> bool {
    n4 <= TABLE_CAPS.0 && n6 <= TABLE_CAPS.1
}

/// (IPv4, IPv6) entries a namespace's rules need, and its index.
type NamespaceSize = ((u64, u64), u32);

/// `Kind ns/name (origin)`, a rule's origin.
pub(crate) fn rule_origin(doc: &Document) -> String {
    // One allocation: this runs for every object with rules.
    use std::fmt::Write as _;
    let mut s = String::with_capacity(2 * (doc.kind.len() + doc.name().len() + 16) + 16);
    let _ = match &doc.namespace {
        Some(ns) => write!(s, "{} {ns}/{} ({})", doc.kind, doc.name(), doc.origin()),
        None => write!(s, "{} ({})", doc.describe(), doc.origin()),
    };
    s
}

impl Compiler {
    /// The objects of `kind` in `set` that read; the others are rejected
    /// (reported) here.
    pub(super) fn read<'a, K: Kind + 'a>(
        &mut self,
        set: &'a DocumentSet,
        kind: &'a KubeKind,
    ) -> impl Iterator<Item = (&'a Document, &'a K)> + 'a {
        let out: Vec<_> = read(set, kind)
            .filter_map(|doc| Some((doc, self.read_one::<K>(doc)?)))
            .collect();
        out.into_iter()
    }

    /// What the compiler read of `doc` if it is a `K`; a document that did
    /// not read is rejected (reported) here.
    fn read_one<'a, K: Kind + 'a>(&mut self, doc: &'a Document) -> Option<&'a K> {
        match &doc.content {
            Content::Object(o) => K::of(o),
            Content::Invalid(e) => {
                self.rejected
                    .push(Rejected::of(doc, field_error(doc, (**e).clone())));
                None
            }
            _ => None,
        }
    }

    pub(super) fn push(
        &mut self,
        networks: Vec<Network>,
        ports: PortSet,
        protocol: Protocol,
        scope: Option<String>,
        origin: String,
    ) {
        self.push_rule(networks, ports, protocol, scope, false, origin);
    }

    pub(super) fn push_rule(
        &mut self,
        networks: Vec<Network>,
        ports: PortSet,
        protocol: Protocol,
        scope: Option<String>,
        global_egress: bool,
        origin: String,
    ) {
        if networks.is_empty() || ports.is_empty() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.owners.push(self.owner);
        self.rules.push(Rule {
            id,
            networks,
            ports,
            protocol,
            scope,
            global_egress,
            origin,
        });
    }

    /// Drops the rules of every namespace whose objects need more trie
    /// entries than `budget`. Then, if the rest needs more than the tables
    /// hold, every namespace over its fair share gives way, all of them
    /// together (see [`fair_share`]); should the rest still not fit (the
    /// bounds of rules in one universe are not exactly additive), the
    /// largest namespaces left give way one by one. Reports each of their
    /// objects that had rules (the counts are taken before any trie is
    /// built), and renumbers the remaining rules 1.. in order.
    fn enforce_budget(&mut self, set: &DocumentSet, budget: u64) {
        let (mut over, mut sizes) = self.namespaces_over_budget(budget);
        self.over_fair_share(&mut over, &sizes);
        sizes.retain(|(_, ns)| !over.contains_key(ns));
        self.largest_give_way(&mut over, sizes);
        if over.is_empty() {
            return;
        }
        self.report_dropped(set, &over);
        let owners = std::mem::take(&mut self.owners);
        let rules = std::mem::take(&mut self.rules);
        // At most as many as before, without growing by doubling.
        self.rules.reserve_exact(rules.len());
        self.owners.reserve_exact(rules.len());
        for (mut r, owner) in rules.into_iter().zip(owners) {
            if owner.is_some_and(|o| over.contains_key(&o)) {
                continue;
            }
            r.id = self.rules.len() as u32 + 1;
            self.rules.push(r);
            self.owners.push(owner);
        }
    }

    /// The namespaces whose rules need more trie entries than `budget`
    /// (namespace index -> why their rules are dropped), and the (IPv4,
    /// IPv6) entries each of the others with rules needs.
    fn namespaces_over_budget(&self, budget: u64) -> (BTreeMap<u32, String>, Vec<NamespaceSize>) {
        let mut by_ns: Vec<Vec<usize>> = vec![Vec::new(); self.namespaces.len()];
        for (i, owner) in self.owners.iter().enumerate() {
            if let Some(ns) = owner {
                by_ns[*ns as usize].push(i);
            }
        }
        let mut over: BTreeMap<u32, String> = BTreeMap::new();
        let mut sizes: Vec<NamespaceSize> = Vec::new();
        for (ns, idx) in by_ns.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let (n4, n6) = crate::compile::entry_bound(idx.iter().map(|&i| &self.rules[i]));
            let n = n4.saturating_add(n6);
            if n > budget {
                over.insert(
                    ns as u32,
                    format!(
                        "namespace {:?} needs at least {n} trie entries, over its budget of {budget}; all of its rules are dropped",
                        self.namespaces[ns]
                    ),
                );
            } else {
                sizes.push(((n4, n6), ns as u32));
            }
        }
        (over, sizes)
    }

    /// (IPv4, IPv6) entries the rules need, those of the namespaces in
    /// `over` left out.
    fn entries_without(&self, over: &BTreeMap<u32, String>) -> (u64, u64) {
        crate::compile::entry_bound(
            self.rules
                .iter()
                .zip(&self.owners)
                .filter(|(_, o)| !o.is_some_and(|o| over.contains_key(&o)))
                .map(|(r, _)| r),
        )
    }

    /// Then the table as a whole: namespaces each within their budget may
    /// still need more than it holds together, and a policy that does not
    /// fit would be refused whole, every tenant's change with it. Every
    /// namespace over its fair share joins `over`; the operator's own rules
    /// never give way.
    fn over_fair_share(&self, over: &mut BTreeMap<u32, String>, sizes: &[NamespaceSize]) {
        let (n4, n6) = self.entries_without(over);
        if fits_tables((n4, n6)) {
            return;
        }
        let operator = crate::compile::entry_bound(
            self.rules
                .iter()
                .zip(&self.owners)
                .filter(|(_, o)| o.is_none())
                .map(|(r, _)| r),
        );
        let share = fair_share(TABLE_CAPS, operator, sizes.len());
        for &((s4, s6), ns) in sizes {
            if s4 > share.0 || s6 > share.1 {
                over.insert(
                    ns,
                    format!(
                        "the policy needs at least {n4} IPv4 and {n6} IPv6 trie entries, more than the tables hold ({} and {}); namespace {:?} needs {s4} and {s6}, over its fair share of {} and {} (the tables' room after the node-wide rules, divided among the {} namespaces with rules), so all of its rules are dropped, as those of every namespace over its share",
                        TABLE_CAPS.0,
                        TABLE_CAPS.1,
                        self.namespaces[ns as usize],
                        share.0,
                        share.1,
                        sizes.len(),
                    ),
                );
            }
        }
    }

    /// Should the rest still not fit (the bounds of rules in one universe
    /// are not exactly additive), the largest of the namespaces left in
    /// `sizes` join `over` one by one until it does.
    fn largest_give_way(&self, over: &mut BTreeMap<u32, String>, mut sizes: Vec<NamespaceSize>) {
        sizes.sort_by(|a, b| {
            (b.0 .0 + b.0 .1)
                .cmp(&(a.0 .0 + a.0 .1))
                .then_with(|| self.namespaces[b.1 as usize].cmp(&self.namespaces[a.1 as usize]))
        });
        let mut largest = sizes.into_iter();
        loop {
            let (n4, n6) = self.entries_without(over);
            if fits_tables((n4, n6)) {
                break;
            }
            let Some(((s4, s6), ns)) = largest.next() else {
                break; // The operator's rules alone do not fit: compile says so.
            };
            over.insert(
                ns,
                format!(
                    "the policy needs at least {n4} IPv4 and {n6} IPv6 trie entries, more than the tables hold ({} and {}); namespace {:?}, the largest left ({s4} and {s6} entries, within its fair share), has all of its rules dropped",
                    TABLE_CAPS.0,
                    TABLE_CAPS.1,
                    self.namespaces[ns as usize]
                ),
            );
        }
    }

    /// Reports each object of the namespaces in `over` that had rules, by
    /// origin, once.
    fn report_dropped(&mut self, set: &DocumentSet, over: &BTreeMap<u32, String>) {
        let docs: std::collections::HashMap<String, &Document> = set
            .iter()
            .filter(|d| {
                d.namespace
                    .as_deref()
                    .and_then(|n| self.namespace_index.get(n))
                    .is_some_and(|i| over.contains_key(i))
            })
            .map(|d| (rule_origin(d), d))
            .collect();
        let mut reported = std::collections::BTreeSet::new();
        for (r, owner) in self.rules.iter().zip(&self.owners) {
            let Some(why) = owner.and_then(|o| over.get(&o)) else {
                continue;
            };
            let Some(&doc) = docs.get(&r.origin) else {
                continue;
            };
            if reported.insert(doc.origin().into_owned()) {
                let e = invalid(doc, "metadata.namespace", why.clone());
                self.rejected.push(Rejected::of(doc, e));
            }
        }
    }

    /// Pods, resolved once (Servers select them and get their own rules),
    /// sorted by namespace, IPs that two live pods claim dropped; records
    /// each pod UID's namespace in `pod_namespaces`.
    fn pods<'a>(
        &mut self,
        set: &'a DocumentSet,
        ns_ports: &BTreeMap<&str, &PortsAnnotation>,
        mut pod_namespaces: Option<&mut BTreeMap<String, String>>,
    ) -> Vec<PodInfo<'a>> {
        let mut pods: Vec<PodInfo> = Vec::with_capacity(set.of_kind(kinds::POD.kind).count());
        for doc in read(set, &kinds::POD) {
            let ns = doc.namespace.as_deref().unwrap_or("default");
            if let (Some(uid), Some(pod_namespaces)) = (&doc.uid, pod_namespaces.as_deref_mut()) {
                // Kept for a pod that is going away too (its processes may
                // still connect, and the UID is its own), and for a pod whose
                // rules are rejected (its cgroup is still in its namespace).
                pod_namespaces.insert(uid.to_string(), ns.to_string());
            }
            let Some(pod) = self.read_one::<Pod>(doc) else {
                continue;
            };
            match PodInfo::resolve(doc, pod, ns_ports.get(ns).copied()) {
                Ok(pod) => pods.push(pod),
                Err(e) => self.rejected.push(Rejected::of(doc, field_error(doc, e))),
            }
        }
        drop_contested_ips(&mut pods);
        debug_assert!(pods.windows(2).all(|w| w[0].namespace <= w[1].namespace));
        pods
    }

    /// Makes the objects of namespace `ns` (`None`: the operator's) the
    /// owner of the rules pushed from now on.
    pub(super) fn set_owner(&mut self, ns: Option<&str>) {
        self.owner = ns.map(|ns| match self.namespace_index.get(ns) {
            Some(&i) => i,
            None => {
                let i = self.namespaces.len() as u32;
                self.namespaces.push(ns.to_string());
                self.namespace_index.insert(ns.to_string(), i);
                i
            }
        });
    }

    /// Rules for an annotated destination: the annotated ports opaque, all
    /// others detect (the annotation replaces the default list).
    fn annotated(&mut self, networks: Vec<Network>, ports: PortSet, origin: String) {
        self.push(
            networks.clone(),
            ports,
            Protocol::Opaque,
            None,
            origin.clone(),
        );
        self.push(networks, PortSet::all(), Protocol::Detect, None, origin);
    }

    fn server(&mut self, doc: &Document, server: &Server, pods: &[PodInfo]) {
        let Some(selector) = &server.selector else {
            tracing::debug!(origin = %doc.origin(), "skipping a Server for external workloads");
            return;
        };
        let Some(protocol) = server.protocol else {
            return;
        };
        let ns = doc.namespace.as_deref().unwrap_or("default");
        // One rule per resolved port number, on the IPs of the pods with it.
        let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
        // `pods` is in (namespace, name) order, as the set iterates.
        let first = pods.partition_point(|p| p.namespace < ns);
        let end = first + pods[first..].partition_point(|p| p.namespace == ns);
        for pod in pods[first..end]
            .iter()
            .filter(|p| !p.pod.inactive && selector.matches(&p.pod.labels))
        {
            let number = match &server.port {
                ServerPort::Number(n) => *n,
                ServerPort::Name(name) => match pod.pod.port_names.get(name) {
                    Some(n) => n,
                    None => {
                        tracing::debug!(server = %doc.describe(), pod = %pod.doc.describe(), port = %name, "pod has no container port of that name");
                        continue;
                    }
                },
            };
            // The pod's (or its namespace's) opaque-ports annotation wins
            // over a Server: Linkerd's destination service marks the port
            // opaque from the annotation (`GetAnnotatedOpaquePorts`,
            // controller/api/destination/watcher/workload_watcher.go)
            // whatever Server selects it. A Server's HTTP hint is our
            // extension and only applies where no annotation says opaque.
            if pod.opaque.as_ref().is_some_and(|o| o.contains(number)) {
                continue;
            }
            by_port.entry(number).or_default().extend(pod.ips.iter());
        }
        for (number, ips) in by_port {
            self.push(
                host_networks(&ips),
                std::iter::once(number).collect(),
                protocol,
                None,
                rule_origin(doc),
            );
        }
    }

    fn service(
        &mut self,
        doc: &Document,
        service: &Service,
        ns_ports: &BTreeMap<&str, &PortsAnnotation>,
    ) -> Result<(), FieldError> {
        let ns = doc.namespace.as_deref().unwrap_or("default");
        const WHAT: &str = "port of the Service";
        let annotation = match (&service.opaque, ns_ports.get(ns)) {
            (Some(a), _) => Some(a.resolve(&service.port_names, WHAT, true)?),
            (None, Some(a)) => Some(a.resolve(&service.port_names, WHAT, false)?),
            (None, None) => None,
        };
        if service.ips.is_empty() {
            return Ok(());
        }
        let networks = host_networks(&service.ips);
        // A port's appProtocol wins over the opaque-ports annotation (and
        // the default ports) on that port, as linkerd2's outbound index
        // does ("`appProtocol` set on service port, ignoring opaque port
        // setting", policy-controller/k8s/index/src/outbound/index.rs).
        let origin = rule_origin(doc);
        for protocol in [Protocol::Opaque, Protocol::Http1, Protocol::Http2] {
            let ports: PortSet = service
                .app
                .iter()
                .filter(|(_, p)| **p == protocol)
                .map(|(n, _)| *n)
                .collect();
            if !ports.is_empty() {
                self.push(networks.clone(), ports, protocol, None, origin.clone());
            }
        }
        if let Some(ports) = annotation {
            let ports: PortSet = ports
                .iter()
                .filter(|p| !service.app.contains_key(p))
                .collect();
            self.annotated(networks, ports, origin);
        }
        Ok(())
    }

    fn pod(&mut self, pod: &PodInfo) {
        let Some(ports) = &pod.opaque else {
            return;
        };
        if pod.pod.inactive || pod.ips.is_empty() {
            return;
        }
        self.annotated(host_networks(&pod.ips), ports.clone(), rule_origin(pod.doc));
    }
}

#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod suggest_tests;
#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
mod tests;

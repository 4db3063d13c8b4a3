//! Where Linkerd's own configuration fixes a learned server-first
//! destination (`classifier suggest --format linkerd`): for an address a
//! Service or a Pod of the documents holds, the
//! `config.linkerd.io/opaque-ports` annotation to set on that object.
//!
//! The value must be the object's opaque ports as they are now plus the
//! learned ports, because an annotation replaces what the object had:
//! Linkerd's default opaque ports when it had no annotation (adding just
//! `3307` would make the default `3306` stop being opaque), or its
//! namespace's annotation, which it inherits until it has its own. So:
//!
//! | the object's opaque ports now | the value |
//! |---|---|
//! | its own annotation | that text as written, then the learned ports |
//! | its namespace's annotation | those ports (names resolved for this object), then the learned ports |
//! | no annotation | the default opaque ports (the ClassifierPolicy's `defaultOpaquePorts`, else Linkerd's), then the learned ports |
//!
//! A Service port's `appProtocol` wins over any annotation on that port:
//! an opaque one needs nothing, an HTTP one cannot be fixed by the
//! annotation (the output says which `appProtocol` to change instead).
//!
//! Addresses no live Service or Pod holds are left to the caller (the
//! EgressNetwork form), with whether they lie in the cluster's networks,
//! where Linkerd does not apply EgressNetworks.
//!
//! The contract, checked by the tests here and by the privileged
//! round-trip test: applying the patches to the documents makes every
//! learned destination opaque under [`super::compile_documents_report`]
//! and [`crate::explain`], and changes no other destination's protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::{drop_contested_ips, read, PodInfo};
use crate::model::{default_cluster_networks, Policy, PolicyError, Protocol};
use crate::ports::PortSet;
use crate::sources::document::{Document, DocumentSet};
use crate::sources::kinds;
use crate::sources::objects::{Object, PortsAnnotation, Service};

/// Where an object's opaque ports come from before the patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CurrentPorts {
    /// Its own annotation, as written.
    Own(String),
    /// Its namespace's annotation (named, as written there).
    Namespace { namespace: String, text: String },
    /// No annotation: the default opaque ports.
    Defaults,
}

/// The annotation to set on one Service or Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaquePortsPatch {
    /// `v1`.
    pub api_version: String,
    /// `Service` or `Pod`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The document it comes from (`file#N` or `kubernetes:Kind/ns/name`).
    pub origin: String,
    /// The object's addresses the learned ports were seen on.
    pub addresses: Vec<IpAddr>,
    /// The learned ports the patch makes opaque.
    pub learned: PortSet,
    /// Where its opaque ports come from now.
    pub current: CurrentPorts,
    /// Its opaque ports now (names resolved).
    pub current_ports: PortSet,
    /// The value of `config.linkerd.io/opaque-ports` to set.
    pub value: String,
    /// A Pod's first owner (`ReplicaSet web-5d9f`): the patch lasts only
    /// as long as the pod, the owner's pod template is where it belongs.
    pub owner: Option<String>,
}

impl OpaquePortsPatch {
    /// `Service shop/mysql`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A learned destination a Service or Pod holds that needs no patch, or
/// that an annotation cannot fix, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpatched {
    pub destination: SocketAddr,
    pub reason: String,
}

/// A learned destination that no live Service or Pod of the documents holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unheld {
    pub destination: SocketAddr,
    /// Inside the cluster's networks (the ClassifierPolicy's
    /// `clusterNetworks`, else Linkerd's defaults): an EgressNetwork does
    /// not reach it in Linkerd, the object that owns it needs the
    /// annotation.
    pub in_cluster_networks: bool,
}

/// What [`opaque_ports_patches`] found for a set of learned destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fixes {
    /// One per object, in (kind, namespace, name) order.
    pub patches: Vec<OpaquePortsPatch>,
    pub unpatched: Vec<Unpatched>,
    /// In address and port order.
    pub unheld: Vec<Unheld>,
    /// The cluster's default opaque ports (the ClassifierPolicy's
    /// `defaultOpaquePorts`, else Linkerd's), which an EgressNetwork
    /// without an annotation has: an EgressNetwork for the unheld
    /// destinations keeps them in its annotation.
    pub defaults: PortSet,
}

/// The opaque-ports patches that fix `learned` (deduplicated), with the
/// semantics of [`super::compile_documents_report`]: objects it would
/// reject hold nothing (except that a Service or Pod whose annotation it
/// rejects is reported in [`Fixes::unpatched`], since no patch can be
/// computed for it). Fails only on what fails the compiler: a malformed
/// ClassifierPolicy.
pub fn opaque_ports_patches(
    set: &DocumentSet,
    learned: &[SocketAddr],
) -> Result<Fixes, PolicyError> {
    let mut ours = set.iter().filter(|d| d.is_classifier_policy());
    let (defaults, cluster_networks) = match ours.next() {
        Some(doc) => {
            let parsed = doc.parse_classifier_policy()?;
            (parsed.policy.default_opaque_ports, parsed.cluster_networks)
        }
        None => (
            Policy::builtin_default().default_opaque_ports,
            default_cluster_networks(),
        ),
    };
    let wanted: BTreeSet<SocketAddr> = learned.iter().copied().collect();
    let mut by_addr: BTreeMap<IpAddr, PortSet> = BTreeMap::new();
    for d in &wanted {
        by_addr.entry(d.ip()).or_default().insert(d.port());
    }
    let mut ns_ports: BTreeMap<&str, &PortsAnnotation> = BTreeMap::new();
    for doc in read(set, &kinds::NAMESPACE) {
        if let Some(Object::Namespace(n)) = doc.object() {
            if let Some(ports) = &n.opaque {
                ns_ports.insert(doc.name(), ports);
            }
        }
    }
    let mut s = Suggester {
        by_addr,
        ns_ports,
        held: BTreeSet::new(),
        fixes: Fixes {
            defaults,
            ..Fixes::default()
        },
    };
    for doc in read(set, &kinds::SERVICE) {
        // A Service that does not read holds nothing we could patch.
        if let Some(Object::Service(info)) = doc.object() {
            s.service(doc, info);
        }
    }
    let pods = s.resolve_pods(set);
    for pod in pods.iter().filter(|p| !p.pod.inactive) {
        s.pod(pod);
    }

    let Suggester {
        held, mut fixes, ..
    } = s;
    for d in wanted.iter().filter(|d| !held.contains(&d.ip())) {
        let ip = d.ip();
        fixes.unheld.push(Unheld {
            destination: *d,
            in_cluster_networks: cluster_networks.iter().any(|n: &IpNet| n.contains(&ip)),
        });
    }
    fixes
        .patches
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    fixes.unpatched.sort_by_key(|u| u.destination);
    Ok(fixes)
}

/// The walk of [`opaque_ports_patches`]: Services first, then Pods, each
/// address going to the first object that holds it.
struct Suggester<'a> {
    /// The learned ports of each learned address.
    by_addr: BTreeMap<IpAddr, PortSet>,
    /// Namespace annotations, which Services and Pods inherit.
    ns_ports: BTreeMap<&'a str, &'a PortsAnnotation>,
    /// The learned addresses an object already holds.
    held: BTreeSet<IpAddr>,
    fixes: Fixes,
}

impl<'a> Suggester<'a> {
    /// The learned addresses among `ips` that no object holds yet, now held.
    fn hold(&mut self, ips: &[IpAddr]) -> Vec<IpAddr> {
        let addresses: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| self.by_addr.contains_key(ip) && !self.held.contains(ip))
            .collect();
        self.held.extend(&addresses);
        addresses
    }

    fn service(&mut self, doc: &Document, info: &Service) {
        let addresses = self.hold(&info.ips);
        if addresses.is_empty() {
            return;
        }
        let ns = doc.namespace.as_deref().unwrap_or("default");
        const WHAT: &str = "port of the Service";
        let current = match (&info.opaque, self.ns_ports.get(ns)) {
            (Some(a), _) => a
                .resolve(&info.port_names, WHAT, true)
                .map(|p| (CurrentPorts::Own(a.text.clone()), p)),
            (None, Some(a)) => a
                .resolve(&info.port_names, WHAT, false)
                .map(|p| (namespace_ports(ns, a), p)),
            (None, None) => Ok((CurrentPorts::Defaults, self.fixes.defaults.clone())),
        }
        .map_err(|e| super::field_error(doc, e));
        let mut learned = PortSet::new();
        for &ip in &addresses {
            for port in self.by_addr[&ip].iter() {
                match service_port_unpatched(doc, info, port, &current) {
                    Some(reason) => self.fixes.unpatched.push(Unpatched {
                        destination: SocketAddr::new(ip, port),
                        reason,
                    }),
                    None => {
                        learned.insert(port);
                    }
                }
            }
        }
        if let (Ok((current, now)), false) = (current, learned.is_empty()) {
            self.fixes
                .patches
                .push(patch(doc, addresses, learned, current, now, None));
        }
    }

    /// The Pods that read, their namespace's annotation resolved; the
    /// learned addresses of a Pod whose annotation does not resolve are
    /// held by it, unpatched.
    fn resolve_pods(&mut self, set: &'a DocumentSet) -> Vec<PodInfo<'a>> {
        let mut pods: Vec<PodInfo> = Vec::new();
        for doc in read(set, &kinds::POD) {
            let ns = doc.namespace.as_deref().unwrap_or("default");
            // A Pod that does not read holds nothing we could patch.
            let Some(Object::Pod(pod)) = doc.object() else {
                continue;
            };
            match PodInfo::resolve(doc, pod, self.ns_ports.get(ns).copied()) {
                Ok(pod) => pods.push(pod),
                Err(e) => {
                    let e = super::field_error(doc, e);
                    for ip in self.hold(&pod.ips) {
                        for port in self.by_addr[&ip].iter() {
                            self.fixes.unpatched.push(Unpatched {
                                destination: SocketAddr::new(ip, port),
                                reason: format!(
                                    "{} is left out of the policy ({e}): fix it first",
                                    doc.describe()
                                ),
                            });
                        }
                    }
                }
            }
        }
        drop_contested_ips(&mut pods);
        pods
    }

    fn pod(&mut self, pod: &PodInfo) {
        let addresses = self.hold(&pod.ips);
        if addresses.is_empty() {
            return;
        }
        let doc = pod.doc;
        let current = match &pod.pod.opaque {
            Some(a) => CurrentPorts::Own(a.text.clone()),
            None => match self.ns_ports.get(pod.namespace) {
                Some(a) => namespace_ports(pod.namespace, a),
                None => CurrentPorts::Defaults,
            },
        };
        let now = pod
            .opaque
            .clone()
            .unwrap_or_else(|| self.fixes.defaults.clone());
        let mut learned = PortSet::new();
        for &ip in &addresses {
            for port in self.by_addr[&ip].iter() {
                if now.contains(port) {
                    self.fixes.unpatched.push(Unpatched {
                        destination: SocketAddr::new(ip, port),
                        reason: format!("already opaque: {} lists port {port}", doc.describe()),
                    });
                } else {
                    learned.insert(port);
                }
            }
        }
        if !learned.is_empty() {
            let owner = pod.pod.owner.as_deref().map(str::to_string);
            self.fixes
                .patches
                .push(patch(doc, addresses, learned, current, now, owner));
        }
    }
}

/// Why learned `port` of a Service needs no patch or cannot get one (its
/// `appProtocol`, its annotation already listing it, the Service being
/// rejected); `None`: the patch adds it.
fn service_port_unpatched(
    doc: &Document,
    info: &Service,
    port: u16,
    current: &Result<(CurrentPorts, PortSet), PolicyError>,
) -> Option<String> {
    match (info.app.get(&port), current) {
        (Some(Protocol::Opaque), _) => Some(format!(
            "already opaque: port {port} of {} has an opaque appProtocol",
            doc.describe()
        )),
        (Some(p), _) => Some(format!(
            "port {port} of {} has an appProtocol that says {}, which wins over any opaque-ports annotation: set its appProtocol to linkerd.io/opaque",
            doc.describe(),
            p.as_str()
        )),
        (None, Ok((_, now))) if now.contains(port) => Some(format!(
            "already opaque: {} lists port {port}",
            doc.describe()
        )),
        (None, Ok(_)) => None,
        (None, Err(e)) => Some(format!(
            "{} is left out of the policy ({e}): fix it first",
            doc.describe()
        )),
    }
}

fn namespace_ports(ns: &str, a: &PortsAnnotation) -> CurrentPorts {
    CurrentPorts::Namespace {
        namespace: ns.to_string(),
        text: a.text.clone(),
    }
}

fn patch(
    doc: &Document,
    addresses: Vec<IpAddr>,
    learned: PortSet,
    current: CurrentPorts,
    current_ports: PortSet,
    owner: Option<String>,
) -> OpaquePortsPatch {
    let value = match &current {
        // Its own text, names and all, as its author wrote it.
        CurrentPorts::Own(text) => {
            let kept = text.trim().trim_end_matches(',').trim();
            if kept.is_empty() {
                learned.to_string()
            } else {
                format!("{kept},{learned}")
            }
        }
        // Numbers: a namespace's names may not all resolve on this object,
        // and its own annotation must resolve every name it has.
        CurrentPorts::Namespace { .. } | CurrentPorts::Defaults => {
            current_ports.union(&learned).to_string()
        }
    };
    OpaquePortsPatch {
        api_version: doc.api_version.to_string(),
        kind: doc.kind.to_string(),
        namespace: doc.namespace.as_deref().unwrap_or("default").to_string(),
        name: doc.name().to_string(),
        origin: doc.origin().into_owned(),
        addresses,
        learned,
        current,
        current_ports,
        value,
        owner,
    }
}

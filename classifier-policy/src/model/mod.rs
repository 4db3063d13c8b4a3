//! The validated policy, independent of how it was written down.
//!
//! Everything downstream (`explain`, `compile`) trusts these values: the file
//! loader is the one place that checks them.
//!
//! This is the bottom layer of the crate: it imports nothing from the file
//! format, the document sources, `explain` or `compile` (only [`PortSet`]
//! from [`crate::ports`]). [`PolicyError`] and the CIDR helpers live here
//! so that every reader of policy text shares them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ports::PortSet;

mod cidr;
mod error;
mod learning;

pub use crate::text::{clip, QUOTED_TEXT_LIMIT};
pub use cidr::{
    check_except, default_cluster_networks, parse_cidr, LINKERD_DEFAULT_CLUSTER_NETWORKS,
};
pub use error::PolicyError;
pub use learning::{format_ttl, parse_ttl, Learning, LearningScope};

/// Linkerd's `proxy.opaquePorts` default; destinations on these ports are
/// opaque unless a rule says otherwise.
pub const LINKERD_DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// The UID linkerd2-proxy runs as. Its own connections must not be
/// classified: they are the proxy forwarding, not the application.
pub const LINKERD_PROXY_UID: u32 = 2102;

/// What the proxy should assume a connection speaks: the wire's own type,
/// so a rule's protocol is the byte the kernel stores.
pub use classifier_common::Protocol;

/// A destination network with holes, like Linkerd's EgressNetwork entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    pub cidr: IpNet,
    /// Sub-networks of `cidr` (same family) the network does not cover.
    pub except: Vec<IpNet>,
}

impl Network {
    pub fn new(cidr: IpNet) -> Self {
        Network {
            cidr,
            except: Vec::new(),
        }
    }

    /// Whether `addr` is in the network and in none of its holes. `addr`
    /// must already be unmapped (`IpAddr::to_canonical`).
    pub fn matches(&self, addr: IpAddr) -> bool {
        self.cidr.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let holes: Vec<String> = self.except.iter().map(|e| e.to_string()).collect();
            write!(f, " except {}", holes.join(","))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based and unique in the policy; this is what the proxy and `stats`
    /// see. For a ClassifierPolicy file it is the rule's position; the
    /// document compiler numbers its rules deterministically.
    pub id: u32,
    pub networks: Vec<Network>,
    /// All ports (`PortSet::is_all`) makes this a wildcard-port rule, which
    /// loses to an explicit-port rule with an equally specific network.
    pub ports: PortSet,
    pub protocol: Protocol,
    /// `None`: applies to every client (node-wide). `Some(ns)`: applies only
    /// to clients in Kubernetes namespace `ns`, and beats every node-wide
    /// rule for them.
    pub scope: Option<String>,
    /// A node-wide rule (`scope` is `None`) of Linkerd's global
    /// EgressNetworks: consulted only after every other node-wide rule, and
    /// never for a client whose namespace has scoped rules of its own (its
    /// own EgressNetworks shadow the global ones even where none of them
    /// matches: `resolve_egress_network` in linkerd2's
    /// `policy-controller/k8s/index/src/outbound/index/egress_network.rs`).
    pub global_egress: bool,
    /// Where the rule comes from, for humans: `spec.rules[0]`, or
    /// `EgressNetwork team-a/nats-egress (egress.yaml#2)`.
    pub origin: String,
}

impl Rule {
    /// A node-wide rule with an empty origin; set the other fields with
    /// struct update syntax or the builder methods.
    pub fn new(id: u32, networks: Vec<Network>, ports: PortSet, protocol: Protocol) -> Rule {
        Rule {
            id,
            networks,
            ports,
            protocol,
            scope: None,
            global_egress: false,
            origin: String::new(),
        }
    }

    pub fn with_scope(mut self, scope: Option<String>) -> Rule {
        self.scope = scope;
        self
    }

    /// Marks a node-wide rule as one of the global EgressNetworks'.
    pub fn with_global_egress(mut self, global_egress: bool) -> Rule {
        self.global_egress = global_egress;
        self
    }

    pub fn with_origin(mut self, origin: impl Into<String>) -> Rule {
        self.origin = origin.into();
        self
    }

    /// Whether this rule applies to every port (see [`PortSet::is_all`]).
    pub fn is_wildcard_port(&self) -> bool {
        self.ports.is_all()
    }
}

/// `SO_MARK` bits set on classified sockets: `(mark & !mask) | value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Opaque when no rule matches the destination.
    pub default_opaque_ports: PortSet,
    /// Sockets of these UIDs are never classified.
    pub exclude_uids: Vec<u32>,
    pub rules: Vec<Rule>,
    pub mark: Option<Mark>,
    /// Pod UID -> namespace, from Pod documents: the agent maps a pod's
    /// cgroup to the scope of its namespace with it.
    pub pod_namespaces: BTreeMap<String, String>,
    /// `spec.learning`: learning server-first destinations.
    pub learning: Learning,
}

impl Policy {
    /// What Linkerd itself does for a meshed pod: its default opaque ports,
    /// and the proxy's own traffic left alone.
    pub fn builtin_default() -> Policy {
        Policy {
            default_opaque_ports: LINKERD_DEFAULT_OPAQUE_PORTS
                .parse()
                .expect("the built-in port list parses"),
            exclude_uids: vec![LINKERD_PROXY_UID],
            rules: Vec::new(),
            mark: None,
            pod_namespaces: BTreeMap::new(),
            learning: Learning::default(),
        }
    }

    /// Whether namespace `ns` has scoped rules: its clients then never see
    /// the global EgressNetworks' rules.
    pub fn has_rules_scoped_to(&self, ns: &str) -> bool {
        self.rules.iter().any(|r| r.scope.as_deref() == Some(ns))
    }

    /// Whether any rule is namespace-scoped.
    pub fn has_scoped_rules(&self) -> bool {
        self.rules.iter().any(|r| r.scope.is_some())
    }

    /// The distinct scopes (namespaces) of the rules, sorted.
    pub fn scopes(&self) -> std::collections::BTreeSet<&str> {
        self.rules
            .iter()
            .filter_map(|r| r.scope.as_deref())
            .collect()
    }

    /// The rule with this id, if any.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        // Ids are positions, so try the direct index before searching.
        match self.rules.get((id as usize).wrapping_sub(1)) {
            Some(r) if r.id == id => Some(r),
            _ => self.rules.iter().find(|r| r.id == id),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::builtin_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_wire_values() {
        assert_eq!(Protocol::Opaque.wire(), classifier_common::PROTO_OPAQUE);
        assert_eq!(Protocol::Http1.wire(), classifier_common::PROTO_HTTP1);
        assert_eq!(Protocol::Http2.wire(), classifier_common::PROTO_HTTP2);
        assert_eq!(Protocol::Detect.wire(), classifier_common::PROTO_UNKNOWN);
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_wire(p.wire()), p);
            assert_eq!(p.as_str().parse::<Protocol>().unwrap(), p);
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
    }

    #[test]
    fn builtin_default_is_linkerds() {
        let p = Policy::builtin_default();
        assert_eq!(
            p.default_opaque_ports.to_string(),
            LINKERD_DEFAULT_OPAQUE_PORTS
        );
        assert_eq!(p.exclude_uids, vec![2102]);
        assert!(p.rules.is_empty() && p.mark.is_none());
    }

    #[test]
    fn network_holes() {
        let n = Network {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(n.matches("10.2.0.1".parse().unwrap()));
        assert!(!n.matches("10.1.0.1".parse().unwrap()));
        assert!(!n.matches("11.0.0.1".parse().unwrap()));
        assert_eq!(n.to_string(), "10.0.0.0/8 except 10.1.0.0/16");
    }
}

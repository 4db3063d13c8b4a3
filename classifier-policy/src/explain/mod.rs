//! The reference semantics of a policy: which protocol a destination gets,
//! and why.
//!
//! This is deliberately the slow, obvious reading of the rules. The kernel
//! never runs it; `classifier explain` does, and the compiler's tests check
//! that the compiled maps give exactly the same answers.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use classifier_common::Source;

use crate::model::{Policy, Protocol, Rule};

/// The rule that decided a [`Decision`], and which of its networks matched
/// (the most specific one that holds the destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub id: u32,
    pub network: IpNet,
}

/// The verdict for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub protocol: Protocol,
    /// [`Source::Rule`], [`Source::DefaultPort`] or [`Source::None`], the
    /// kernel's vocabulary (explain reads the policy alone, so never
    /// [`Source::Learned`]).
    pub source: Source,
    /// The deciding rule: `Some` exactly when `source` is [`Source::Rule`].
    pub rule: Option<RuleMatch>,
    /// The destination as classified (IPv4-mapped addresses unmapped); kept
    /// so that [`Decision::reason`] can talk about it.
    pub addr: IpAddr,
    pub port: u16,
    /// The deciding rule's origin (which document, which field); `None`
    /// unless a rule decided.
    pub origin: Option<String>,
    /// The deciding rule's scope: `None` for a node-wide rule (or no rule),
    /// `Some(namespace)` for a namespace-scoped one.
    pub scope: Option<String>,
}

/// The protocol for a connection to `addr:port` under `policy`, from a
/// client outside any namespace (the node itself): node-wide rules only.
/// Same as [`classify_from`] with no namespace.
pub fn classify(policy: &Policy, addr: IpAddr, port: u16) -> Decision {
    classify_from(policy, None, addr, port)
}

/// The best rule of one universe (the rules of one scope) for `addr:port`:
/// among rules that list `port` and have a network containing `addr` (and
/// no `except` of that network containing it), the one whose matching
/// network is most specific wins; on an equally specific network a rule
/// with explicit ports beats a wildcard-port rule; then the lowest id.
fn best_in_scope<'p>(
    policy: &'p Policy,
    scope: Option<&str>,
    global_egress: bool,
    addr: IpAddr,
    port: u16,
) -> Option<(&'p Rule, IpNet)> {
    // (prefix, explicit ports, Reverse(id)) ordering, as a "better" test.
    let mut best: Option<(u8, bool, u32, &Rule, IpNet)> = None;
    for rule in policy.rules.iter().filter(|r| {
        r.scope.as_deref() == scope && r.global_egress == global_egress && r.ports.contains(port)
    }) {
        let explicit = !rule.is_wildcard_port();
        for net in rule.networks.iter().filter(|n| n.matches(addr)) {
            let prefix = net.cidr.prefix_len();
            let better = match best {
                None => true,
                Some((bp, bexp, bid, _, _)) => {
                    (prefix, explicit) > (bp, bexp)
                        || ((prefix, explicit) == (bp, bexp) && rule.id < bid)
                }
            };
            if better {
                best = Some((prefix, explicit, rule.id, rule, net.cidr));
            }
        }
    }
    best.map(|(_, _, _, r, n)| (r, n))
}

/// The protocol for a connection to `addr:port` from a client in Kubernetes
/// namespace `client_namespace` (`None`: a process outside any pod).
///
/// 1. Rules scoped to the client's namespace are looked at first (see
///    [`best_in_scope`] for the choice among them); if one matches, it
///    decides, whatever its protocol (a `detect` rule too).
/// 2. Otherwise the node-wide rules, chosen the same way.
/// 3. Otherwise, unless the client's namespace has scoped rules (its own
///    EgressNetworks, which shadow the global ones even where none of them
///    matches, as linkerd2's `resolve_egress_network` in
///    `policy-controller/k8s/index/src/outbound/index/egress_network.rs`
///    does), the global EgressNetworks' rules ([`Rule::global_egress`]).
/// 4. Otherwise a default opaque port is opaque.
/// 5. Otherwise there is no verdict (detect).
///
/// A matching rule beats the default opaque ports whatever its protocol, so
/// a `detect` rule can turn detection back on for a default opaque port.
pub fn classify_from(
    policy: &Policy,
    client_namespace: Option<&str>,
    addr: IpAddr,
    port: u16,
) -> Decision {
    // An IPv4-mapped destination (`::ffff:a.b.c.d`) is an IPv4 connection
    // from a dual-stack socket: classified as the IPv4 address, as the
    // kernel side does.
    let addr = addr.to_canonical();
    let shadowed = client_namespace.is_some_and(|ns| policy.has_rules_scoped_to(ns));
    let best = client_namespace
        .and_then(|ns| best_in_scope(policy, Some(ns), false, addr, port))
        .or_else(|| best_in_scope(policy, None, false, addr, port))
        .or_else(|| {
            (!shadowed)
                .then(|| best_in_scope(policy, None, true, addr, port))
                .flatten()
        });
    let (protocol, source, rule, origin, scope) = match best {
        Some((rule, network)) => (
            rule.protocol,
            Source::Rule,
            Some(RuleMatch {
                id: rule.id,
                network,
            }),
            Some(rule.origin.clone()),
            rule.scope.clone(),
        ),
        None if policy.default_opaque_ports.contains(port) => {
            (Protocol::Opaque, Source::DefaultPort, None, None, None)
        }
        None => (Protocol::Detect, Source::None, None, None, None),
    };
    Decision {
        protocol,
        source,
        rule,
        addr,
        port,
        origin,
        scope,
    }
}

impl Decision {
    /// The deciding rule's id, 0 when no rule decided (as in the kernel's
    /// reply).
    pub fn rule_id(&self) -> u32 {
        self.rule.map_or(0, |r| r.id)
    }

    /// One line for humans saying why the verdict is what it is.
    pub fn reason(&self, policy: &Policy) -> String {
        match self.rule {
            Some(RuleMatch { id, network }) => {
                let ports = policy
                    .rule(id)
                    .map(|r| r.ports.to_string())
                    .unwrap_or_else(|| "?".into());
                let ports = if ports == "1-65535" {
                    "*".to_string()
                } else {
                    ports
                };
                let mut s = format!("rule {id} (network {network}, ports {ports})");
                if let Some(scope) = &self.scope {
                    s.push_str(&format!(" for clients in namespace {scope}"));
                }
                if self.protocol == Protocol::Detect
                    && policy.default_opaque_ports.contains(self.port)
                {
                    s.push_str(&format!(
                        " forces detection although {} is a default opaque port",
                        self.port
                    ));
                }
                s
            }
            None if self.source == Source::DefaultPort => {
                format!("port {} is in the default opaque ports", self.port)
            }
            None => format!(
                "no rule matches and {} is not a default opaque port",
                self.port
            ),
        }
    }

    /// The `--json` form: exactly `protocol`, `source`, `rule_id`,
    /// `network`, `origin`, `scope` (the last four null unless a rule
    /// decided; `scope` null for a node-wide rule).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a Decision always serializes")
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            protocol: Protocol,
            source: &'static str,
            rule_id: Option<u32>,
            network: Option<String>,
            origin: Option<&'a str>,
            scope: Option<&'a str>,
        }
        let (rule_id, network) = match self.rule {
            Some(RuleMatch { id, network }) => (Some(id), Some(network.to_string())),
            None => (None, None),
        };
        Flat {
            protocol: self.protocol,
            source: self.source.as_str(),
            rule_id,
            network,
            origin: self.origin.as_deref(),
            scope: self.scope.as_deref(),
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests;

//! The reference semantics of a policy: which protocol a destination gets,
//! and why.
//!
//! This is deliberately the slow, obvious reading of the rules. The kernel
//! never runs it; `classifier explain` does, and the compiler's tests check
//! that the compiled maps give exactly the same answers.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::model::{Policy, Protocol, Rule};

/// Where a [`Decision`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionSource {
    /// No rule matched and the port is not a default opaque port.
    None,
    /// No rule matched; the port is a default opaque port.
    DefaultPort,
    /// Rule `id` matched through its network `network`.
    Rule { id: u32, network: IpNet },
}

impl DecisionSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            DecisionSource::None => "none",
            DecisionSource::DefaultPort => "default_port",
            DecisionSource::Rule { .. } => "rule",
        }
    }

    /// The rule id, 0 when no rule decided (as in the kernel's reply).
    pub fn rule_id(&self) -> u32 {
        match self {
            DecisionSource::Rule { id, .. } => *id,
            _ => 0,
        }
    }
}

/// The verdict for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub protocol: Protocol,
    pub source: DecisionSource,
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

/// IPv4-mapped IPv6 destinations (`::ffff:a.b.c.d`) are IPv4 connections made
/// from a dual-stack socket; they are classified as the IPv4 address, the
/// same as the kernel side does.
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
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
    addr: IpAddr,
    port: u16,
) -> Option<(&'p Rule, IpNet)> {
    // (prefix, explicit ports, Reverse(id)) ordering, as a "better" test.
    let mut best: Option<(u8, bool, u32, &Rule, IpNet)> = None;
    for rule in policy
        .rules
        .iter()
        .filter(|r| r.scope.as_deref() == scope && r.ports.contains(port))
    {
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
/// 3. Otherwise a default opaque port is opaque.
/// 4. Otherwise there is no verdict (detect).
///
/// A matching rule beats the default opaque ports whatever its protocol, so
/// a `detect` rule can turn detection back on for a default opaque port.
pub fn classify_from(
    policy: &Policy,
    client_namespace: Option<&str>,
    addr: IpAddr,
    port: u16,
) -> Decision {
    let addr = canonical_addr(addr);
    let best = client_namespace
        .and_then(|ns| best_in_scope(policy, Some(ns), addr, port))
        .or_else(|| best_in_scope(policy, None, addr, port));
    let (protocol, source, origin, scope) = match best {
        Some((rule, network)) => (
            rule.protocol,
            DecisionSource::Rule {
                id: rule.id,
                network,
            },
            Some(rule.origin.clone()),
            rule.scope.clone(),
        ),
        None if policy.default_opaque_ports.contains(port) => {
            (Protocol::Opaque, DecisionSource::DefaultPort, None, None)
        }
        None => (Protocol::Detect, DecisionSource::None, None, None),
    };
    Decision {
        protocol,
        source,
        addr,
        port,
        origin,
        scope,
    }
}

impl Decision {
    /// One line for humans saying why the verdict is what it is.
    pub fn reason(&self, policy: &Policy) -> String {
        match self.source {
            DecisionSource::Rule { id, network } => {
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
            DecisionSource::DefaultPort => {
                format!("port {} is in the default opaque ports", self.port)
            }
            DecisionSource::None => format!(
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
        let (rule_id, network) = match self.source {
            DecisionSource::Rule { id, network } => (Some(id), Some(network.to_string())),
            _ => (None, None),
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
mod tests {
    use super::*;
    use crate::model::Network;
    use serde_json::json;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rule(id: u32, nets: &[(&str, &[&str])], ports: &str, protocol: Protocol) -> Rule {
        Rule {
            id,
            networks: nets
                .iter()
                .map(|(c, ex)| Network {
                    cidr: net(c),
                    except: ex.iter().map(|e| net(e)).collect(),
                })
                .collect(),
            ports: ports.parse().unwrap(),
            protocol,
            scope: None,
            origin: format!("spec.rules[{}]", id - 1),
        }
    }

    fn policy(rules: Vec<Rule>) -> Policy {
        Policy {
            rules,
            ..Policy::builtin_default()
        }
    }

    fn at(p: &Policy, addr: &str, port: u16) -> Decision {
        classify(p, addr.parse().unwrap(), port)
    }

    fn src(id: u32, n: &str) -> DecisionSource {
        DecisionSource::Rule {
            id,
            network: net(n),
        }
    }

    #[test]
    fn more_specific_network_wins() {
        let p = policy(vec![
            rule(1, &[("10.0.0.0/8", &[])], "80", Protocol::Http1),
            rule(2, &[("10.1.0.0/16", &[])], "80", Protocol::Opaque),
        ]);
        let d = at(&p, "10.1.2.3", 80);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, src(2, "10.1.0.0/16"))
        );
        let d = at(&p, "10.2.2.3", 80);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Http1, src(1, "10.0.0.0/8"))
        );
        // The port must match too.
        let d = at(&p, "10.1.2.3", 81);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Detect, DecisionSource::None)
        );
    }

    #[test]
    fn except_falls_back_to_less_specific_rule_or_defaults() {
        let p = policy(vec![
            rule(1, &[("0.0.0.0/0", &[])], "3306", Protocol::Http2),
            rule(
                2,
                &[("10.0.0.0/8", &["10.1.0.0/16"])],
                "3306,4222",
                Protocol::Opaque,
            ),
        ]);
        let d = at(&p, "10.1.0.1", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Http2, src(1, "0.0.0.0/0"))
        );
        let d = at(&p, "10.2.0.1", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, src(2, "10.0.0.0/8"))
        );
        // Nothing behind the hole on 4222: not a default port either.
        let d = at(&p, "10.1.0.1", 4222);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Detect, DecisionSource::None)
        );
        // A hole on a default opaque port falls back to the defaults.
        let p = policy(vec![rule(
            1,
            &[("10.0.0.0/8", &["10.1.0.0/16"])],
            "5432",
            Protocol::Http1,
        )]);
        let d = at(&p, "10.1.9.9", 5432);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, DecisionSource::DefaultPort)
        );
        assert_eq!(d.reason(&p), "port 5432 is in the default opaque ports");
    }

    #[test]
    fn detect_rule_overrides_default_opaque_port() {
        let p = policy(vec![rule(
            1,
            &[("192.0.2.0/24", &[])],
            "3306",
            Protocol::Detect,
        )]);
        let d = at(&p, "192.0.2.10", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Detect, src(1, "192.0.2.0/24"))
        );
        assert!(
            d.reason(&p).contains("forces detection"),
            "{}",
            d.reason(&p)
        );
        let d = at(&p, "192.0.3.10", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, DecisionSource::DefaultPort)
        );
    }

    #[test]
    fn tie_goes_to_lowest_id() {
        let p = policy(vec![
            rule(1, &[("198.51.100.0/24", &[])], "8000-8100", Protocol::Http2),
            rule(2, &[("198.51.100.0/24", &[])], "8080", Protocol::Opaque),
            rule(3, &[("198.51.100.0/25", &[])], "9000", Protocol::Opaque),
        ]);
        let d = at(&p, "198.51.100.1", 8080);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Http2, src(1, "198.51.100.0/24"))
        );
        let d = at(&p, "198.51.100.1", 8101);
        assert_eq!(d.source, DecisionSource::None);
    }

    #[test]
    fn best_network_of_a_rule_is_reported() {
        let p = policy(vec![rule(
            1,
            &[("10.0.0.0/8", &[]), ("10.9.0.0/16", &[])],
            "25",
            Protocol::Opaque,
        )]);
        assert_eq!(at(&p, "10.9.1.1", 25).source, src(1, "10.9.0.0/16"));
        assert_eq!(at(&p, "10.8.1.1", 25).source, src(1, "10.0.0.0/8"));
    }

    #[test]
    fn v4_mapped_is_classified_as_v4() {
        let p = policy(vec![
            rule(1, &[("203.0.113.0/24", &[])], "4222", Protocol::Opaque),
            rule(2, &[("::/0", &[])], "4222", Protocol::Http1),
        ]);
        let d = at(&p, "::ffff:203.0.113.9", 4222);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, src(1, "203.0.113.0/24"))
        );
        assert_eq!(d.addr, "203.0.113.9".parse::<IpAddr>().unwrap());
        let d = at(&p, "2001:db8::1", 4222);
        assert_eq!((d.protocol, d.source), (Protocol::Http1, src(2, "::/0")));
        // ::/0 does not swallow IPv4 destinations.
        assert_eq!(
            at(&p, "::ffff:198.51.100.1", 4222).source,
            DecisionSource::None
        );
    }

    #[test]
    fn reasons_and_json() {
        let p = policy(vec![rule(
            1,
            &[("203.0.113.0/24", &[])],
            "4222,8000-8100",
            Protocol::Opaque,
        )]);
        let d = at(&p, "203.0.113.5", 4222);
        assert_eq!(
            d.reason(&p),
            "rule 1 (network 203.0.113.0/24, ports 4222,8000-8100)"
        );
        assert_eq!(
            d.to_json(),
            json!({"protocol": "opaque", "source": "rule", "rule_id": 1, "network": "203.0.113.0/24", "origin": "spec.rules[0]", "scope": null})
        );
        let d = at(&p, "203.0.113.5", 3306);
        assert_eq!(d.reason(&p), "port 3306 is in the default opaque ports");
        assert_eq!(
            d.to_json(),
            json!({"protocol": "opaque", "source": "default_port", "rule_id": null, "network": null, "origin": null, "scope": null})
        );
        let d = at(&p, "203.0.113.5", 9090);
        assert_eq!(
            d.reason(&p),
            "no rule matches and 9090 is not a default opaque port"
        );
        assert_eq!(
            d.to_json(),
            json!({"protocol": "detect", "source": "none", "rule_id": null, "network": null, "origin": null, "scope": null})
        );
    }

    fn scoped(mut r: Rule, ns: &str) -> Rule {
        r.scope = Some(ns.to_string());
        r
    }

    fn from(p: &Policy, ns: Option<&str>, addr: &str, port: u16) -> Decision {
        classify_from(p, ns, addr.parse().unwrap(), port)
    }

    #[test]
    fn clients_namespace_rules_come_first_then_node_wide() {
        let p = policy(vec![
            // Node-wide, very specific.
            rule(1, &[("203.0.113.9/32", &[])], "4222", Protocol::Http1),
            // team-a's own, less specific: still first for team-a clients.
            scoped(
                rule(2, &[("203.0.113.0/24", &[])], "4222", Protocol::Opaque),
                "team-a",
            ),
            // A scoped detect rule decides too (over a default opaque port).
            scoped(
                rule(3, &[("0.0.0.0/0", &[])], "3306", Protocol::Detect),
                "team-a",
            ),
        ]);
        let d = from(&p, Some("team-a"), "203.0.113.9", 4222);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, src(2, "203.0.113.0/24"))
        );
        assert_eq!(d.scope.as_deref(), Some("team-a"));
        assert_eq!(d.origin.as_deref(), Some("spec.rules[1]"));
        assert!(
            d.reason(&p).contains("for clients in namespace team-a"),
            "{}",
            d.reason(&p)
        );
        // Other namespaces and the node get the node-wide rule.
        for ns in [None, Some("team-b")] {
            let d = from(&p, ns, "203.0.113.9", 4222);
            assert_eq!(
                (d.protocol, d.source),
                (Protocol::Http1, src(1, "203.0.113.9/32"))
            );
            assert_eq!(d.scope, None);
        }
        // Nothing in team-a's universe for this address: node-wide decides.
        let d = from(&p, Some("team-a"), "198.51.100.1", 4222);
        assert_eq!(d.source, DecisionSource::None);
        let d = from(&p, Some("team-a"), "198.51.100.1", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Detect, src(3, "0.0.0.0/0"))
        );
        let d = from(&p, Some("team-b"), "198.51.100.1", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Opaque, DecisionSource::DefaultPort)
        );
        // classify is the node's view.
        assert_eq!(
            at(&p, "203.0.113.9", 4222),
            from(&p, None, "203.0.113.9", 4222)
        );
    }

    #[test]
    fn explicit_ports_beat_wildcard_on_equal_network_only() {
        let p = policy(vec![
            rule(1, &[("192.0.2.0/24", &[])], "1-65535", Protocol::Detect),
            rule(2, &[("192.0.2.0/24", &[])], "5432", Protocol::Opaque),
            rule(
                3,
                &[("192.0.2.0/25", &[])],
                "*".replace('*', "1-65535").as_str(),
                Protocol::Http2,
            ),
            rule(4, &[("192.0.0.0/16", &[])], "8080", Protocol::Opaque),
        ]);
        // Same /24: explicit rule 2 beats wildcard rule 1 despite the id.
        assert_eq!(
            from(&p, None, "192.0.2.200", 5432).source,
            src(2, "192.0.2.0/24")
        );
        // Other ports: the wildcard rule, even on a default opaque port.
        let d = from(&p, None, "192.0.2.200", 3306);
        assert_eq!(
            (d.protocol, d.source),
            (Protocol::Detect, src(1, "192.0.2.0/24"))
        );
        // A more specific wildcard network beats a less specific explicit one.
        assert_eq!(
            from(&p, None, "192.0.2.1", 5432).source,
            src(3, "192.0.2.0/25")
        );
        assert_eq!(
            from(&p, None, "192.0.2.1", 8080).source,
            src(3, "192.0.2.0/25")
        );
        assert_eq!(
            from(&p, None, "192.0.9.1", 8080).source,
            src(4, "192.0.0.0/16")
        );
        assert!(from(&p, None, "192.0.2.1", 1)
            .reason(&p)
            .contains("ports *"));
    }
}

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
        global_egress: false,
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

/// Where a decision came from, the rule included.
type Why = (Source, Option<RuleMatch>);
const NONE: Why = (Source::None, None);
const DEFAULT_PORT: Why = (Source::DefaultPort, None);

fn src(id: u32, n: &str) -> Why {
    (
        Source::Rule,
        Some(RuleMatch {
            id,
            network: net(n),
        }),
    )
}

fn why(d: &Decision) -> Why {
    (d.source, d.rule)
}

#[test]
fn more_specific_network_wins() {
    let p = policy(vec![
        rule(1, &[("10.0.0.0/8", &[])], "80", Protocol::Http1),
        rule(2, &[("10.1.0.0/16", &[])], "80", Protocol::Opaque),
    ]);
    let d = at(&p, "10.1.2.3", 80);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Opaque, src(2, "10.1.0.0/16"))
    );
    let d = at(&p, "10.2.2.3", 80);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Http1, src(1, "10.0.0.0/8"))
    );
    // The port must match too.
    let d = at(&p, "10.1.2.3", 81);
    assert_eq!((d.protocol, why(&d)), (Protocol::Detect, NONE));
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
        (d.protocol, why(&d)),
        (Protocol::Http2, src(1, "0.0.0.0/0"))
    );
    let d = at(&p, "10.2.0.1", 3306);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Opaque, src(2, "10.0.0.0/8"))
    );
    // Nothing behind the hole on 4222: not a default port either.
    let d = at(&p, "10.1.0.1", 4222);
    assert_eq!((d.protocol, why(&d)), (Protocol::Detect, NONE));
    // A hole on a default opaque port falls back to the defaults.
    let p = policy(vec![rule(
        1,
        &[("10.0.0.0/8", &["10.1.0.0/16"])],
        "5432",
        Protocol::Http1,
    )]);
    let d = at(&p, "10.1.9.9", 5432);
    assert_eq!((d.protocol, why(&d)), (Protocol::Opaque, DEFAULT_PORT));
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
        (d.protocol, why(&d)),
        (Protocol::Detect, src(1, "192.0.2.0/24"))
    );
    assert!(
        d.reason(&p).contains("forces detection"),
        "{}",
        d.reason(&p)
    );
    let d = at(&p, "192.0.3.10", 3306);
    assert_eq!((d.protocol, why(&d)), (Protocol::Opaque, DEFAULT_PORT));
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
        (d.protocol, why(&d)),
        (Protocol::Http2, src(1, "198.51.100.0/24"))
    );
    let d = at(&p, "198.51.100.1", 8101);
    assert_eq!(why(&d), NONE);
}

#[test]
fn best_network_of_a_rule_is_reported() {
    let p = policy(vec![rule(
        1,
        &[("10.0.0.0/8", &[]), ("10.9.0.0/16", &[])],
        "25",
        Protocol::Opaque,
    )]);
    assert_eq!(why(&at(&p, "10.9.1.1", 25)), src(1, "10.9.0.0/16"));
    assert_eq!(why(&at(&p, "10.8.1.1", 25)), src(1, "10.0.0.0/8"));
}

#[test]
fn v4_mapped_is_classified_as_v4() {
    let p = policy(vec![
        rule(1, &[("203.0.113.0/24", &[])], "4222", Protocol::Opaque),
        rule(2, &[("::/0", &[])], "4222", Protocol::Http1),
    ]);
    let d = at(&p, "::ffff:203.0.113.9", 4222);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Opaque, src(1, "203.0.113.0/24"))
    );
    assert_eq!(d.addr, "203.0.113.9".parse::<IpAddr>().unwrap());
    let d = at(&p, "2001:db8::1", 4222);
    assert_eq!((d.protocol, why(&d)), (Protocol::Http1, src(2, "::/0")));
    // ::/0 does not swallow IPv4 destinations.
    assert_eq!(why(&at(&p, "::ffff:198.51.100.1", 4222)), NONE);
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
        (d.protocol, why(&d)),
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
            (d.protocol, why(&d)),
            (Protocol::Http1, src(1, "203.0.113.9/32"))
        );
        assert_eq!(d.scope, None);
    }
    // Nothing in team-a's universe for this address: node-wide decides.
    let d = from(&p, Some("team-a"), "198.51.100.1", 4222);
    assert_eq!(why(&d), NONE);
    let d = from(&p, Some("team-a"), "198.51.100.1", 3306);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Detect, src(3, "0.0.0.0/0"))
    );
    let d = from(&p, Some("team-b"), "198.51.100.1", 3306);
    assert_eq!((d.protocol, why(&d)), (Protocol::Opaque, DEFAULT_PORT));
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
        why(&from(&p, None, "192.0.2.200", 5432)),
        src(2, "192.0.2.0/24")
    );
    // Other ports: the wildcard rule, even on a default opaque port.
    let d = from(&p, None, "192.0.2.200", 3306);
    assert_eq!(
        (d.protocol, why(&d)),
        (Protocol::Detect, src(1, "192.0.2.0/24"))
    );
    // A more specific wildcard network beats a less specific explicit one.
    assert_eq!(
        why(&from(&p, None, "192.0.2.1", 5432)),
        src(3, "192.0.2.0/25")
    );
    assert_eq!(
        why(&from(&p, None, "192.0.2.1", 8080)),
        src(3, "192.0.2.0/25")
    );
    assert_eq!(
        why(&from(&p, None, "192.0.9.1", 8080)),
        src(4, "192.0.0.0/16")
    );
    assert!(from(&p, None, "192.0.2.1", 1)
        .reason(&p)
        .contains("ports *"));
}

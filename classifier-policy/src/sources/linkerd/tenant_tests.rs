//! One tenant never breaks the others: bad objects are skipped and
//! reported, a namespace over its entry budget loses its own rules only,
//! and the entry count is bounded before anything is allocated.

use super::*;
use crate::compile::{compile, entry_bound};

fn set_of(text: &str) -> DocumentSet {
    let mut set = DocumentSet::new();
    set.add_text(text, "x.yaml").unwrap();
    set
}

const GOOD_AND_BAD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: good
  annotations: {config.linkerd.io/opaque-ports: "4000"}
status: {phase: Running, podIP: 10.244.1.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: typo
  namespace: bad
  annotations: {config.linkerd.io/opaque-ports: "mysql"}
status: {phase: Running, podIP: 10.244.1.2}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: broken, namespace: bad}
spec:
  trafficPolicy: Allow
  networks: [{cidr: 203.0.113.0/33}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata:
  name: nats
  namespace: linkerd-egress
  annotations: {config.linkerd.io/opaque-ports: "4222"}
spec: {trafficPolicy: Allow, networks: [{cidr: 192.0.2.0/24}]}
"#;

#[test]
fn a_bad_object_is_skipped_and_reported_and_the_rest_applies() {
    let set = set_of(GOOD_AND_BAD);
    let c = compile_documents_report(&set, &Options::default()).unwrap();
    let found: Vec<(String, String, Option<String>, String)> = c
        .rejected
        .iter()
        .map(|r| {
            (
                r.origin.clone(),
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "x.yaml#2".into(),
                "Pod".into(),
                Some("bad".into()),
                "typo".into()
            ),
            (
                "x.yaml#3".into(),
                "EgressNetwork".into(),
                Some("bad".into()),
                "broken".into()
            ),
        ]
    );
    assert!(
        c.rejected[0].to_string().contains("\"mysql\""),
        "{}",
        c.rejected[0]
    );
    assert!(
        c.rejected[1].to_string().contains("spec.networks[0].cidr"),
        "{}",
        c.rejected[1]
    );
    let p = &c.policy;
    let at = |dst: &str| {
        let sa: std::net::SocketAddr = dst.parse().unwrap();
        crate::classify(p, sa.ip(), sa.port()).protocol
    };
    assert_eq!(at("10.244.1.1:4000"), Protocol::Opaque);
    assert_eq!(at("192.0.2.7:4222"), Protocol::Opaque);
    // The rejected pod keeps the defaults.
    assert_eq!(at("10.244.1.2:3306"), Protocol::Opaque);
    // Strict compilation still fails on the first one, as before.
    let e = compile_documents(&set, &Options::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("x.yaml#2 (Pod bad/typo): "),
        "{e}"
    );
}

/// Two EgressNetworks in one namespace: one with (almost) every port as
/// opaque on 0.0.0.0/0, one with the default ports and `holes` excepts.
/// Each hole of the second's wildcard rule is a key at every one of the
/// first's 65,534 ports: millions of keys for a few hundred excepts.
fn hole_bomb(ns: &str, holes: usize) -> String {
    let except: Vec<String> = (0..holes)
        .map(|i| format!("\"100.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    format!(
        r#"---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata:
  name: wide
  namespace: {ns}
  creationTimestamp: "2024-01-01T00:00:00Z"
  annotations: {{config.linkerd.io/opaque-ports: "1-65534"}}
spec: {{trafficPolicy: Allow, networks: [{{cidr: 0.0.0.0/0}}]}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata:
  name: holes
  namespace: {ns}
  creationTimestamp: "2024-01-02T00:00:00Z"
spec:
  trafficPolicy: Allow
  networks: [{{cidr: 0.0.0.0/0, except: [{}]}}]
"#,
        except.join(", ")
    )
}

#[test]
fn wildcard_holes_are_counted_before_anything_is_allocated() {
    let text = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: fine\n  annotations: {{config.linkerd.io/opaque-ports: \"4000\"}}\nstatus: {{phase: Running, podIP: 10.244.7.7}}\n",
        hole_bomb("greedy", 300)
    );
    let set = set_of(&text);
    // Without a per-namespace budget, the tables' capacity still holds:
    // the greedy namespace is dropped from the count alone (its ~20 million
    // keys are never built).
    let unbounded = Options {
        namespace_entry_budget: u64::MAX,
        ..Options::default()
    };
    let c = compile_documents_report(&set, &unbounded).unwrap();
    let names: Vec<&str> = c.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["wide", "holes"]);
    assert!(
        c.rejected[0]
            .to_string()
            .contains("more than the tables hold"),
        "{}",
        c.rejected[0]
    );
    compile(&c.policy).unwrap();
    // With the default budget, the greedy namespace loses its rules and is
    // reported; the other namespace's rules compile.
    let c = compile_documents_report(&set, &Options::default()).unwrap();
    let names: Vec<&str> = c.rejected.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["wide", "holes"]);
    assert!(
        c.rejected[0]
            .to_string()
            .contains("over its budget of 65536"),
        "{}",
        c.rejected[0]
    );
    assert!(c.policy.rules.iter().all(|r| !r.origin.contains("greedy")));
    for (i, r) in c.policy.rules.iter().enumerate() {
        assert_eq!(r.id, i as u32 + 1);
    }
    let compiled = compile(&c.policy).unwrap();
    assert!(compiled.v4.len() < 10, "{}", compiled.v4.len());
}

/// One EgressNetwork needing `ports` IPv4 entries in namespace `ns`.
fn ns_doc(ns: &str, ports: u32, last_octet: u8) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: big\n  namespace: {ns}\n  annotations: {{config.linkerd.io/opaque-ports: \"1-{ports}\"}}\nspec: {{trafficPolicy: Allow, networks: [{{cidr: 198.51.100.{last_octet}/32}}]}}\n---\n"
    )
}

const SMALL_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: small\n  annotations: {config.linkerd.io/opaque-ports: \"4000\"}\nstatus: {phase: Running, podIP: 10.244.7.7}\n";

fn dropped_namespaces(c: &Compiled) -> Vec<String> {
    let mut out: Vec<String> = c
        .rejected
        .iter()
        .map(|r| r.namespace.clone().unwrap_or_default())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn kept(c: &Compiled, ns: &str) -> bool {
    c.policy
        .rules
        .iter()
        .any(|r| r.scope.as_deref() == Some(ns))
}

/// The gaming scenario: a victim namespace of 40,000 entries, and a tenant
/// that adds six namespaces of 39,999 each, so that together they overflow
/// the IPv4 table (262,144). Under "the largest gives way" the victim
/// alone would lose its rules and the tenant keep all of its own. Under
/// the fair share (262,144 / 8 namespaces = 32,768 each) every namespace
/// over it gives way: the tenant gains nothing, and a namespace within its
/// share (`small`, `bystander`) keeps its rules whatever the others do.
#[test]
fn a_tenant_cannot_get_another_namespace_dropped_by_namespaces_just_smaller_than_it() {
    let mut text = ns_doc("victim", 40_000, 1);
    for i in 0..6 {
        text.push_str(&ns_doc(&format!("tenant-{i}"), 39_999, 10 + i));
    }
    text.push_str(&ns_doc("bystander", 20_000, 30));
    text.push_str(SMALL_POD);
    let set = set_of(&text);
    let c = compile_documents_report(&set, &Options::default()).unwrap();
    let dropped = dropped_namespaces(&c);
    let mut expected: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    expected.push("victim".into());
    expected.sort();
    assert_eq!(dropped, expected);
    for r in &c.rejected {
        let why = r.to_string();
        assert!(why.contains("over its fair share of 29127"), "{why}");
    }
    assert!(kept(&c, "bystander"));
    assert!(!kept(&c, "victim"));
    assert_eq!(
        crate::classify(&c.policy, "10.244.7.7".parse().unwrap(), 4000).protocol,
        Protocol::Opaque
    );
    assert_eq!(fair_share((262_144, 262_144), (0, 0), 9), (29_127, 29_127));
    compile(&c.policy).unwrap();
}

#[test]
fn namespaces_within_budget_that_overflow_the_table_together_lose_those_over_their_fair_share() {
    // Five namespaces of ~60,000 entries each: every one within its budget
    // (65,536), together over the IPv4 table (262,144). Without a cap the
    // whole policy would be refused, every tenant's change with it. Six
    // namespaces have rules: a share is 43,690 entries; all five are over
    // it and give way, the small one keeps its rules.
    let mut text = String::new();
    for (i, (ns, ports)) in [
        ("a", 60_000),
        ("b", 60_000),
        ("c", 61_000),
        ("d", 60_000),
        ("e", 60_000),
    ]
    .into_iter()
    .enumerate()
    {
        text.push_str(&ns_doc(ns, ports, i as u8 + 1));
    }
    text.push_str(SMALL_POD);
    let set = set_of(&text);
    let c = compile_documents_report(&set, &Options::default()).unwrap();
    assert_eq!(dropped_namespaces(&c), ["a", "b", "c", "d", "e"]);
    let why = c.rejected[0].to_string();
    assert!(
        why.contains("more than the tables hold") && why.contains("fair share of 43690"),
        "{why}"
    );
    for ns in ["a", "b", "c", "d", "e"] {
        assert!(!kept(&c, ns), "{ns}");
    }
    let (n4, _) = entry_bound(&c.policy.rules);
    assert!(n4 <= crate::compile::MAX_V4_ENTRIES, "{n4}");
    // What is left compiles, and the small namespace's pod is classified.
    let compiled = compile(&c.policy).unwrap();
    assert!(compiled.v4.len() as u64 <= crate::compile::MAX_V4_ENTRIES);
    assert_eq!(
        crate::classify(&c.policy, "10.244.7.7".parse().unwrap(), 4000).protocol,
        Protocol::Opaque
    );
}

//! The compiler against ordinary Linkerd manifests
//! (`classifier-policy/tests/fixtures/linkerd/`), and its errors.

use std::path::{Path, PathBuf};

use super::*;
use crate::{classify_from, compile, load_policy_path, Decision, Source};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linkerd")
}

fn fixture_policy() -> Policy {
    load_policy_path(&fixtures()).unwrap()
}

fn from(p: &Policy, ns: Option<&str>, dst: &str) -> Decision {
    let sa: std::net::SocketAddr = dst.parse().unwrap();
    classify_from(p, ns, sa.ip(), sa.port())
}

/// (protocol, origin of the deciding rule's document, its scope).
#[track_caller]
fn check(p: &Policy, ns: Option<&str>, dst: &str, protocol: Protocol, decided_by: Option<&str>) {
    let d = from(p, ns, dst);
    assert_eq!(d.protocol, protocol, "{dst} from {ns:?}: {d:?}");
    match decided_by {
        Some(who) => {
            let origin = d.origin.as_deref().unwrap_or("");
            assert!(
                origin.starts_with(who),
                "{dst} from {ns:?} decided by {origin:?}, expected {who:?}"
            );
        }
        None => assert!(
            d.source != Source::Rule,
            "{dst} from {ns:?}: expected no rule, got {d:?}"
        ),
    }
}

#[test]
fn egress_networks_decide_the_whole_port_space() {
    let p = fixture_policy();
    let all = "EgressNetwork linkerd-egress/all-egress (";
    // Outside the cluster networks: the global EgressNetwork, for any client.
    for ns in [None, Some("shop"), Some("team-b")] {
        check(&p, ns, "93.184.216.34:4222", Protocol::Opaque, Some(all));
        check(&p, ns, "93.184.216.34:25", Protocol::Opaque, Some(all));
        // Linkerd's egress fallback is detect, default opaque port or not.
        check(&p, ns, "93.184.216.34:3306", Protocol::Detect, Some(all));
        check(&p, ns, "93.184.216.34:443", Protocol::Detect, Some(all));
        check(&p, ns, "[2001:db8::1]:4222", Protocol::Opaque, Some(all));
    }
    let d = from(&p, None, "93.184.216.34:4222");
    assert_eq!(d.scope, None);
    assert!(
        d.origin.as_deref().unwrap().contains("egress.yaml#1"),
        "{d:?}"
    );
    // Inside the cluster networks: not egress; the default ports.
    check(&p, None, "10.1.2.3:3306", Protocol::Opaque, None);
    check(&p, None, "10.1.2.3:4222", Protocol::Detect, None);
    check(&p, None, "[fd00::1]:5432", Protocol::Opaque, None);
}

#[test]
fn namespaced_egress_network_comes_first_for_its_clients() {
    let p = fixture_policy();
    let nats = "EgressNetwork team-a/nats-egress (";
    let all = "EgressNetwork linkerd-egress/all-egress (";
    check(
        &p,
        Some("team-a"),
        "203.0.113.9:4222",
        Protocol::Opaque,
        Some(nats),
    );
    // Its annotation has no 25: detect, though all-egress would say opaque.
    check(
        &p,
        Some("team-a"),
        "203.0.113.9:25",
        Protocol::Detect,
        Some(nats),
    );
    let d = from(&p, Some("team-a"), "203.0.113.9:4222");
    assert_eq!(d.scope.as_deref(), Some("team-a"));
    assert_eq!(d.to_json()["scope"], "team-a");
    assert!(d.to_json()["origin"]
        .as_str()
        .unwrap()
        .contains("egress.yaml#2"));
    // Namespace shadowing (linkerd2 `resolve_egress_network`): team-a has
    // an EgressNetwork of its own, so the global ones are not consulted for
    // its clients, even where none of its own matches (its except, or
    // anywhere else outside the cluster). What is left is ours: the
    // default opaque ports (which Linkerd's egress fallback ignores).
    check(
        &p,
        Some("team-a"),
        "203.0.113.200:25",
        Protocol::Opaque,
        None,
    );
    check(
        &p,
        Some("team-a"),
        "203.0.113.200:4222",
        Protocol::Detect,
        None,
    );
    check(
        &p,
        Some("team-a"),
        "93.184.216.34:4222",
        Protocol::Detect,
        None,
    );
    check(
        &p,
        Some("team-a"),
        "93.184.216.34:3306",
        Protocol::Opaque,
        None,
    );
    // Node-wide rules that are not global EgressNetworks still apply.
    check(
        &p,
        Some("team-a"),
        "198.51.100.7:9000",
        Protocol::Http1,
        Some("ClassifierPolicy"),
    );
    // Without an EgressNetwork of its own, a namespace gets the global one.
    check(
        &p,
        Some("shop"),
        "93.184.216.34:4222",
        Protocol::Opaque,
        Some(all),
    );
    // Other namespaces and the node never see it.
    check(
        &p,
        Some("shop"),
        "203.0.113.9:25",
        Protocol::Opaque,
        Some(all),
    );
    check(&p, None, "203.0.113.9:3306", Protocol::Detect, Some(all));
}

#[test]
fn smallest_cidr_wins_and_default_ports_apply_without_annotation() {
    let p = fixture_policy();
    let partner = "EgressNetwork linkerd-egress/partner (";
    check(
        &p,
        None,
        "198.51.100.9:5432",
        Protocol::Opaque,
        Some(partner),
    );
    check(&p, None, "198.51.100.9:25", Protocol::Opaque, Some(partner));
    check(
        &p,
        None,
        "198.51.100.9:4222",
        Protocol::Detect,
        Some(partner),
    );
    // The ClassifierPolicy's own /32 rule is more specific still.
    check(
        &p,
        None,
        "198.51.100.7:9000",
        Protocol::Http1,
        Some("ClassifierPolicy classifier ("),
    );
    let d = from(&p, None, "198.51.100.7:9000");
    assert_eq!(d.rule_id(), 1);
    assert!(d.origin.unwrap().ends_with("spec.rules[0]"));
}

#[test]
fn services_get_their_or_their_namespaces_annotation_and_app_protocol() {
    let p = fixture_policy();
    let mysql = "Service shop/mysql (";
    check(&p, None, "10.96.0.10:3306", Protocol::Opaque, Some(mysql));
    check(&p, None, "10.96.0.10:4222", Protocol::Opaque, Some(mysql));
    // An annotation replaces the default list.
    check(&p, None, "10.96.0.10:5432", Protocol::Detect, Some(mysql));
    let nats = "Service team-a/nats (";
    check(&p, None, "10.96.1.5:4222", Protocol::Opaque, Some(nats));
    check(
        &p,
        None,
        "[fd00:10:96::15]:4222",
        Protocol::Opaque,
        Some(nats),
    );
    check(
        &p,
        Some("team-a"),
        "10.96.1.5:3306",
        Protocol::Detect,
        Some(nats),
    );
    let db = "Service team-a/db (";
    check(&p, None, "10.96.1.6:7000", Protocol::Opaque, Some(db));
    // No annotation anywhere: the defaults still apply to its other ports.
    check(&p, None, "10.96.1.6:5432", Protocol::Opaque, None);
    check(&p, None, "10.96.1.6:80", Protocol::Detect, None);
    assert_eq!(from(&p, None, "10.96.1.6:5432").source, Source::DefaultPort);
}

#[test]
fn pods_and_servers() {
    let p = fixture_policy();
    let cases: &[(&str, Protocol, Option<&str>)] = &[
        // api-1: Servers by name (grpc -> 9090) and number, its own annotation.
        (
            "10.244.2.20:9090",
            Protocol::Http2,
            Some("Server team-a/api-grpc ("),
        ),
        (
            "10.244.2.20:8080",
            Protocol::Http1,
            Some("Server team-a/api-http ("),
        ),
        (
            "10.244.2.20:5000",
            Protocol::Opaque,
            Some("Pod team-a/api-1 ("),
        ),
        (
            "10.244.2.20:3306",
            Protocol::Detect,
            Some("Pod team-a/api-1 ("),
        ),
        // api-2: the named port is 9091 there; NotIn canary leaves out 8080.
        (
            "10.244.2.21:9091",
            Protocol::Http2,
            Some("Server team-a/api-grpc ("),
        ),
        ("10.244.2.21:9090", Protocol::Detect, None),
        ("10.244.2.21:8080", Protocol::Detect, None),
        // worker-1: Exists app, DoesNotExist track; named port amqp.
        (
            "10.244.2.30:5672",
            Protocol::Opaque,
            Some("Server team-a/worker-amqp ("),
        ),
        // web-1: HTTP/2 Server beats the inherited annotation on every IP.
        (
            "10.244.1.10:9990",
            Protocol::Http2,
            Some("Server shop/web-admin ("),
        ),
        (
            "10.244.1.10:3306",
            Protocol::Opaque,
            Some("Pod shop/web-1 ("),
        ),
        (
            "[fd00:244::10]:4222",
            Protocol::Opaque,
            Some("Pod shop/web-1 ("),
        ),
        // `unknown` and `TLS` Servers add nothing: the annotation's detect.
        (
            "10.244.1.10:8080",
            Protocol::Detect,
            Some("Pod shop/web-1 ("),
        ),
        (
            "10.244.1.10:8443",
            Protocol::Detect,
            Some("Pod shop/web-1 ("),
        ),
        // A finished pod gets nothing.
        ("10.244.2.99:9090", Protocol::Detect, None),
    ];
    for &(dst, protocol, decided_by) in cases {
        check(&p, None, dst, protocol, decided_by);
    }

    assert_eq!(
        p.pod_namespaces
            .get("5f1c1c1e-0000-4000-8000-000000000001")
            .map(String::as_str),
        Some("shop")
    );
    assert_eq!(p.pod_namespaces.len(), 5);
    assert!(p.pod_namespaces.values().filter(|n| *n == "team-a").count() == 4);
}

#[test]
fn fixtures_compile_deterministically_and_agree_with_the_kernel_flags() {
    let p = fixture_policy();
    let again = fixture_policy();
    assert_eq!(p, again);
    // Ids are 1.. in order; every rule names its document.
    for (i, r) in p.rules.iter().enumerate() {
        assert_eq!(r.id, i as u32 + 1);
        assert!(r.origin.contains(".yaml#"), "{r:?}");
    }
    assert_eq!(p.exclude_uids, vec![2102]);
    let c = compile(&p).unwrap();
    let kernel = crate::compile::kernel_model::KernelModel::new(&c);
    assert!(c.scoped && c.any_port);
    assert_eq!(c.scope_ids.keys().collect::<Vec<_>>(), vec!["team-a"]);

    // The compiled maps, looked up the way the kernel does, give the same
    // verdicts as the reference semantics, for every client namespace.
    let addrs = [
        "93.184.216.34",
        "2001:db8::1",
        "203.0.113.9",
        "203.0.113.200",
        "198.51.100.9",
        "198.51.100.7",
        "10.1.2.3",
        "fd00::1",
        "10.96.0.10",
        "10.96.1.5",
        "fd00:10:96::15",
        "10.96.1.6",
        "10.244.2.20",
        "10.244.2.21",
        "10.244.2.30",
        "10.244.1.10",
        "fd00:244::10",
        "10.244.2.99",
        "::ffff:203.0.113.9",
    ];
    let ports = [
        25u16, 80, 443, 3306, 4222, 5000, 5432, 5672, 7000, 8080, 8443, 9000, 9090, 9091, 9990,
    ];
    for ns in [None, Some("team-a"), Some("shop")] {
        let scope = ns.and_then(|n| c.scope_ids.get(n).copied());
        for a in addrs {
            let addr: std::net::IpAddr = a.parse().unwrap();
            for port in ports {
                let want = classify_from(&p, ns, addr, port);
                let (protocol, source, rule_id) = kernel.lookup(scope, addr, port);
                let got = (protocol, source.as_str(), rule_id);
                assert_eq!(
                    got,
                    (want.protocol.wire(), want.source.as_str(), want.rule_id()),
                    "{a}:{port} from {ns:?}"
                );
            }
        }
    }
}

fn set_of(text: &str) -> DocumentSet {
    let mut set = DocumentSet::new();
    set.add_text(text, "x.yaml").unwrap();
    set
}

fn compile_text(text: &str) -> Result<Policy, PolicyError> {
    compile_documents(&set_of(text), &Options::default())
}

fn egress(name: &str, ns: &str, created: Option<&str>, ports: &str, cidr: &str) -> String {
    let created = created.map_or(String::new(), |c| format!("\n  creationTimestamp: \"{c}\""));
    format!(
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: {name}\n  namespace: {ns}{created}\n  annotations: {{config.linkerd.io/opaque-ports: \"{ports}\"}}\nspec:\n  trafficPolicy: Allow\n  networks: [{{cidr: \"{cidr}\"}}]\n"
    )
}

#[test]
fn equal_cidrs_go_to_the_oldest_then_by_name() {
    // b-old is older: it decides every port of 192.0.2.0/24, including
    // a-new's opaque 3306.
    let text = egress(
        "a-new",
        "linkerd-egress",
        Some("2024-05-01T00:00:00Z"),
        "3306",
        "192.0.2.0/24",
    ) + &egress(
        "b-old",
        "linkerd-egress",
        Some("2023-05-01T00:00:00Z"),
        "4222",
        "192.0.2.0/24",
    );
    let p = compile_text(&text).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:3306",
        Protocol::Detect,
        Some("EgressNetwork linkerd-egress/b-old"),
    );
    check(
        &p,
        None,
        "192.0.2.1:4222",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/b-old"),
    );
    check(
        &p,
        None,
        "192.0.2.1:80",
        Protocol::Detect,
        Some("EgressNetwork linkerd-egress/b-old"),
    );
    // No timestamps: by name; a timestamp beats none.
    let text = egress("zed", "linkerd-egress", None, "3306", "192.0.2.0/24")
        + &egress("alpha", "linkerd-egress", None, "4222", "192.0.2.0/24");
    let p = compile_text(&text).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:3306",
        Protocol::Detect,
        Some("EgressNetwork linkerd-egress/alpha"),
    );
    let text = egress(
        "zed",
        "linkerd-egress",
        Some("2030-01-01T00:00:00Z"),
        "3306",
        "192.0.2.0/24",
    ) + &egress("alpha", "linkerd-egress", None, "4222", "192.0.2.0/24");
    let p = compile_text(&text).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:3306",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/zed"),
    );
}

#[test]
fn all_ports_opaque_on_the_older_one_still_wins_over_an_explicit_port() {
    let text = egress(
        "old",
        "linkerd-egress",
        Some("2020-01-01T00:00:00Z"),
        "1-65535",
        "192.0.2.0/24",
    ) + &egress(
        "new",
        "linkerd-egress",
        Some("2021-01-01T00:00:00Z"),
        "4222",
        "192.0.2.0/24",
    );
    let p = compile_text(&text).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:4222",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/old"),
    );
}

#[test]
fn smaller_cidr_beats_older_and_namespace_beats_global_even_when_wider() {
    let text = egress(
        "old",
        "linkerd-egress",
        Some("2020-01-01T00:00:00Z"),
        "4222",
        "192.0.2.0/24",
    ) + &egress(
        "narrow",
        "linkerd-egress",
        Some("2021-01-01T00:00:00Z"),
        "3306",
        "192.0.2.0/25",
    ) + &egress("mine", "team-a", None, "25", "192.0.0.0/16");
    let p = compile_text(&text).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:3306",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/narrow"),
    );
    check(
        &p,
        None,
        "192.0.2.200:3306",
        Protocol::Detect,
        Some("EgressNetwork linkerd-egress/old"),
    );
    check(
        &p,
        Some("team-a"),
        "192.0.2.1:3306",
        Protocol::Detect,
        Some("EgressNetwork team-a/mine"),
    );
    check(
        &p,
        Some("team-a"),
        "192.0.2.1:25",
        Protocol::Opaque,
        Some("EgressNetwork team-a/mine"),
    );
    // A configured global namespace.
    let opts = Options {
        egress_global_namespace: "team-a".into(),
        ..Options::default()
    };
    let p = compile_documents(&set_of(&text), &opts).unwrap();
    assert!(p.rules.iter().all(|r| r.scope.as_deref() != Some("team-a")));
    assert!(p
        .rules
        .iter()
        .any(|r| r.scope.as_deref() == Some("linkerd-egress")));
}

#[test]
fn cluster_networks_setting_shapes_egress_without_networks() {
    let text = "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  clusterNetworks: [\"10.0.0.0/16\", \"fd00::/16\"]\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {name: all, namespace: linkerd-egress}\nspec: {trafficPolicy: Allow}\n";
    let p = compile_text(text).unwrap();
    let who = Some("EgressNetwork linkerd-egress/all");
    check(&p, None, "10.1.0.1:25", Protocol::Opaque, who);
    check(&p, None, "10.0.0.1:25", Protocol::Opaque, None);
    check(&p, None, "192.168.0.1:80", Protocol::Detect, who);
    check(&p, None, "[fd00:1::1]:80", Protocol::Detect, None);
    // Nothing but EgressNetworks: the built-in settings.
    let p = compile_text(&egress("e", "linkerd-egress", None, "", "192.0.2.0/24")).unwrap();
    assert_eq!(p.exclude_uids, vec![2102]);
    check(
        &p,
        None,
        "192.0.2.1:3306",
        Protocol::Detect,
        Some("EgressNetwork linkerd-egress/e"),
    );
}

#[test]
fn single_policy_files_load_as_before_and_manifest_files_compile() {
    let dir = std::env::temp_dir().join(format!("classifier-linkerd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.yaml");
    std::fs::write(&f, "apiVersion: classifier.dev/v1alpha1\nkind: Policy\n").unwrap();
    let e = load_policy_path(&f).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "kind: unsupported kind \"Policy\", expected \"ClassifierPolicy\" at line 2 column 7"
        ),
        "{e}"
    );
    std::fs::write(&f, "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules: [{networks: [\"10.0.0.0/8\"], ports: \"*\", protocol: opaque}]\n").unwrap();
    let p = load_policy_path(&f).unwrap();
    assert_eq!(p, crate::load_policy_file(&f).unwrap());
    assert!(p.rules[0].ports.is_all() && p.rules[0].origin == "spec.rules[0]");
    std::fs::write(
        &f,
        egress("e", "linkerd-egress", None, "4222", "192.0.2.0/24"),
    )
    .unwrap();
    let p = load_policy_path(&f).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:4222",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/e"),
    );
    // A ClassifierPolicy error inside a manifest file: the file's lines.
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"x\"\n",
    )
    .unwrap();
    let e = load_policy_path(&f).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}#2: spec.defaultOpaquePorts: ", f.display())),
        "{e}"
    );
    assert!(e.contains("line 8"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[track_caller]
fn assert_err(text: &str, parts: &[&str]) {
    let e = compile_text(text).map(|_| ()).unwrap_err().to_string();
    for part in parts {
        assert!(e.contains(part), "expected {part:?} in {e:?}");
    }
}

const SERVER_HEAD: &str =
    "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s, namespace: team-a}\n";

#[test]
fn malformed_egress_networks_name_origin_field_and_value() {
    assert_err(
        &egress("bad", "team-a", None, "4222", "203.0.113.0/33"),
        &[
            "x.yaml#1 (EgressNetwork team-a/bad): spec.networks[0].cidr: ",
            "\"203.0.113.0/33\"",
        ],
    );
    assert_err(
        &egress("bad", "team-a", None, "4222", "203.0.113.1/24"),
        &["spec.networks[0].cidr", "host bits", "203.0.113.0/24"],
    );
    assert_err(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {name: e, namespace: ns}\nspec:\n  networks: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]\n",
        &["EgressNetwork ns/e", "spec.networks[0].except[0]", "11.0.0.0/16", "not strictly inside"],
    );
    assert_err(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {name: e, namespace: ns}\nspec: {networks: \"10.0.0.0/8\"}\n",
        &["spec.networks", "expected a list, got \"10.0.0.0/8\""],
    );
    assert_err(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {name: e, namespace: ns}\nspec: {trafficPolicy: Maybe}\n",
        &["spec.trafficPolicy", "\"Maybe\""],
    );
    assert_err(
        &egress("e", "ns", None, "70000", "192.0.2.0/24"),
        &[
            "metadata.annotations.config.linkerd.io/opaque-ports",
            "70000",
        ],
    );
}

#[test]
fn malformed_namespaces_services_and_pods_name_origin_field_and_value() {
    assert_err(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n  annotations: {config.linkerd.io/opaque-ports: \"25,,26\"}\n",
        &["x.yaml#1 (Namespace n): metadata.annotations.config.linkerd.io/opaque-ports", "25,,26"],
    );
    assert_err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIP: 10.96.0.300}\n",
        &["Service a/s", "spec.clusterIP", "\"10.96.0.300\" is not an IP address"],
    );
    assert_err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec:\n  clusterIP: 10.96.0.3\n  ports: [{port: 0, appProtocol: linkerd.io/opaque}]\n",
        &["spec.ports[0].port", "got 0"],
    );
    assert_err(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nstatus: {podIP: nope}\n",
        &["Pod a/p", "status.podIP", "\"nope\""],
    );
    assert_err(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n  annotations: {config.linkerd.io/opaque-ports: \"mysql\"}\nstatus: {podIP: 10.0.0.1}\n",
        &["Pod a/p", "opaque-ports", "mysql"],
    );
    assert_err(
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: a}\nspec: {clusterIP: 10.96.0.3}\n",
        &["Service a/", "metadata.name", "missing"],
    );
}

#[test]
fn malformed_servers_name_origin_field_and_value() {
    assert_err(
        &format!("{SERVER_HEAD}spec: {{podSelector: {{}}, port: 80, proxyProtocol: HTTP/3}}\n"),
        &[
            "x.yaml#1 (Server team-a/s): spec.proxyProtocol: ",
            "\"HTTP/3\"",
        ],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec: {{podSelector: {{}}, port: 0, proxyProtocol: opaque}}\n"),
        &["spec.port", "port 0"],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec: {{podSelector: {{}}, port: [80], proxyProtocol: opaque}}\n"),
        &["spec.port", "a list"],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec: {{port: 80, proxyProtocol: opaque}}\n"),
        &["spec.podSelector", "missing"],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec:\n  port: 80\n  podSelector:\n    matchExpressions: [{{key: app, operator: Matches, values: [a]}}]\n"),
        &["spec.podSelector.matchExpressions[0].operator", "\"Matches\""],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec:\n  port: 80\n  podSelector:\n    matchExpressions: [{{key: app, operator: In}}]\n"),
        &["spec.podSelector.matchExpressions[0].values", "at least one value"],
    );
    assert_err(
        &format!("{SERVER_HEAD}spec:\n  port: 80\n  podSelector:\n    matchLabels: [app]\n"),
        &["spec.podSelector.matchLabels", "expected a map"],
    );
}

#[test]
fn malformed_classifier_policies_name_origin_field_and_value() {
    assert_err(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nmetadata: {name: a}\n---\napiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nmetadata: {name: b}\n",
        &["x.yaml#2", "at most one ClassifierPolicy", "x.yaml#1"],
    );
    assert_err(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  clusterNetworks: \"10.0.0.0/8,,fd00::/8\"\n",
        &["x.yaml#1: spec.clusterNetworks", "empty item"],
    );
}

#[test]
fn documents_can_be_inserted_and_removed_one_by_one() {
    let mut set = set_of(&egress("e", "linkerd-egress", None, "4222", "192.0.2.0/24"));
    let p = compile_documents(&set, &Options::default()).unwrap();
    check(
        &p,
        None,
        "192.0.2.1:4222",
        Protocol::Opaque,
        Some("EgressNetwork linkerd-egress/e"),
    );
    let doc = set
        .remove("EgressNetwork", Some("linkerd-egress"), "e")
        .unwrap();
    let p = compile_documents(&set, &Options::default()).unwrap();
    assert!(p.rules.is_empty());
    assert!(set.insert_shared(doc).is_none());
    assert_eq!(
        compile_documents(&set, &Options::default())
            .unwrap()
            .rules
            .len(),
        2
    );
}

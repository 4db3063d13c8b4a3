//! One test per Linkerd semantic rule the compiler reproduces, each with
//! its own small fixture and the linkerd2 source it follows; every case is
//! also checked against the kernel model of the compiled maps.

use super::*;
use crate::compile::kernel_model::KernelModel;
use crate::{classify_from, compile, Source};

fn compile_text(text: &str) -> Result<Policy, PolicyError> {
    let mut set = DocumentSet::new();
    set.add_text(text, "x.yaml").unwrap();
    compile_documents(&set, &Options::default())
}

/// (protocol, rule origin prefix or None for no rule), from `ns`; checks
/// the kernel model agrees.
#[track_caller]
fn check(p: &Policy, ns: Option<&str>, dst: &str, protocol: Protocol, by: Option<&str>) {
    let sa: std::net::SocketAddr = dst.parse().unwrap();
    let d = classify_from(p, ns, sa.ip(), sa.port());
    assert_eq!(d.protocol, protocol, "{dst} from {ns:?}: {d:?}");
    match by {
        Some(who) => assert!(
            d.origin.as_deref().unwrap_or("").starts_with(who),
            "{dst} from {ns:?} decided by {:?}, expected {who:?}",
            d.origin
        ),
        None => assert!(
            d.source != Source::Rule,
            "{dst} from {ns:?}: expected no rule, got {d:?}"
        ),
    }
    let c = compile(p).unwrap();
    let scope = ns.and_then(|n| c.scope_ids.get(n).copied());
    let got = KernelModel::new(&c).lookup(scope, sa.ip(), sa.port());
    assert_eq!(
        (got.0, got.2),
        (d.protocol.wire(), d.rule_id()),
        "kernel model for {dst} from {ns:?}"
    );
}

// --- 1. Namespace shadowing of EgressNetworks ---------------------------
// linkerd2 policy-controller/k8s/index/src/outbound/index/egress_network.rs
// (`resolve_egress_network`).

const SHADOWING: &str = r#"
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata:
  name: everything
  namespace: linkerd-egress
  annotations: {config.linkerd.io/opaque-ports: "4222,443"}
spec: {trafficPolicy: Allow}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata:
  name: partner
  namespace: team-a
  annotations: {config.linkerd.io/opaque-ports: "5672"}
spec:
  trafficPolicy: Allow
  networks: [{cidr: 192.0.2.0/24}]
"#;

#[test]
fn own_egress_networks_shadow_the_global_ones_even_without_a_match() {
    let p = compile_text(SHADOWING).unwrap();
    let global = "EgressNetwork linkerd-egress/everything (";
    let own = "EgressNetwork team-a/partner (";
    // team-a's own network decides for its clients.
    check(
        &p,
        Some("team-a"),
        "192.0.2.1:5672",
        Protocol::Opaque,
        Some(own),
    );
    check(
        &p,
        Some("team-a"),
        "192.0.2.1:4222",
        Protocol::Detect,
        Some(own),
    );
    // Outside it: not the global one (no match at all; defaults apply).
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
        "93.184.216.34:443",
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
    // Namespaces without EgressNetworks, and the node, see the global one.
    for ns in [None, Some("team-b")] {
        check(&p, ns, "93.184.216.34:4222", Protocol::Opaque, Some(global));
        check(&p, ns, "192.0.2.1:4222", Protocol::Opaque, Some(global));
        check(&p, ns, "93.184.216.34:3306", Protocol::Detect, Some(global));
    }
    let c = compile(&p).unwrap();
    assert!(c.global_egress && c.scoped);
    assert!(p
        .rules
        .iter()
        .filter(|r| r.scope.is_none())
        .all(|r| r.global_egress));
}

// --- 2. appProtocol on Service ports -------------------------------------
// linkerd2 policy-controller/core/src/outbound.rs (`AppProtocol::from_str`)
// and policy-controller/grpc/src/outbound.rs (Unknown served as opaque).

#[test]
fn app_protocol_is_case_insensitive_and_unknown_values_are_opaque() {
    let p = compile_text(
        r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec:
  clusterIP: 10.96.0.7
  ports:
    - {port: 80, appProtocol: HTTP}
    - {port: 81, appProtocol: http}
    - {port: 82, appProtocol: Kubernetes.io/H2C}
    - {port: 83, appProtocol: linkerd.io/tcp}
    - {port: 84, appProtocol: LINKERD.IO/OPAQUE}
    - {port: 85, appProtocol: mysql}
    - {port: 3306, appProtocol: http}
    - {port: 86}
"#,
    )
    .unwrap();
    let svc = Some("Service a/s (");
    check(&p, None, "10.96.0.7:80", Protocol::Http1, svc);
    check(&p, None, "10.96.0.7:81", Protocol::Http1, svc);
    check(&p, None, "10.96.0.7:82", Protocol::Http2, svc);
    check(&p, None, "10.96.0.7:83", Protocol::Opaque, svc);
    check(&p, None, "10.96.0.7:84", Protocol::Opaque, svc);
    check(&p, None, "10.96.0.7:85", Protocol::Opaque, svc);
    // appProtocol beats the default opaque ports on its port.
    check(&p, None, "10.96.0.7:3306", Protocol::Http1, svc);
    check(&p, None, "10.96.0.7:86", Protocol::Detect, None);
    check(&p, None, "10.96.0.7:5432", Protocol::Opaque, None);
    for (v, want) in [
        ("http", Protocol::Http1),
        ("HTTP", Protocol::Http1),
        ("kubernetes.io/h2c", Protocol::Http2),
        ("linkerd.io/tcp", Protocol::Opaque),
        ("linkerd.io/opaque", Protocol::Opaque),
        ("grpc", Protocol::Opaque),
        ("", Protocol::Opaque),
    ] {
        assert_eq!(app_protocol_of(v), want, "{v:?}");
    }
}

#[test]
fn app_protocol_beats_the_service_annotation_on_its_port() {
    // policy-controller/k8s/index/src/outbound/index.rs: "`appProtocol`
    // set on service port, ignoring opaque port setting".
    let p = compile_text(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: s
  namespace: a
  annotations: {config.linkerd.io/opaque-ports: "8080,9000"}
spec:
  clusterIP: 10.96.0.8
  ports: [{port: 8080, appProtocol: http}, {port: 9000}]
"#,
    )
    .unwrap();
    check(
        &p,
        None,
        "10.96.0.8:8080",
        Protocol::Http1,
        Some("Service a/s"),
    );
    check(
        &p,
        None,
        "10.96.0.8:9000",
        Protocol::Opaque,
        Some("Service a/s"),
    );
    check(
        &p,
        None,
        "10.96.0.8:3306",
        Protocol::Detect,
        Some("Service a/s"),
    );
}

// --- 3. Annotation over Server -------------------------------------------
// linkerd2 controller/api/destination/watcher/workload_watcher.go
// (`GetAnnotatedOpaquePorts`: the annotation decides the port's opacity).

const POD_AND_SERVER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: inherit
  annotations: {config.linkerd.io/opaque-ports: "7000"}
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: a
  labels: {app: db}
  annotations: {config.linkerd.io/opaque-ports: "5000"}
status: {phase: Running, podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: inherit, labels: {app: web}}
status: {phase: Running, podIP: 10.244.0.6}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: db-http, namespace: a}
spec: {podSelector: {matchLabels: {app: db}}, port: 5000, proxyProtocol: HTTP/1}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: db-h2, namespace: a}
spec: {podSelector: {matchLabels: {app: db}}, port: 6000, proxyProtocol: HTTP/2}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: inherit}
spec: {podSelector: {matchLabels: {app: web}}, port: 7000, proxyProtocol: HTTP/1}
"#;

#[test]
fn a_pods_or_namespaces_annotation_wins_over_a_server() {
    let p = compile_text(POD_AND_SERVER).unwrap();
    // The pod's own annotation says 5000 is opaque: the Server's HTTP/1
    // does not apply.
    check(
        &p,
        None,
        "10.244.0.5:5000",
        Protocol::Opaque,
        Some("Pod a/db ("),
    );
    // Where no annotation says opaque, the Server's hint is ours to give.
    check(
        &p,
        None,
        "10.244.0.5:6000",
        Protocol::Http2,
        Some("Server a/db-h2"),
    );
    // The namespace's annotation, inherited, wins the same way.
    check(
        &p,
        None,
        "10.244.0.6:7000",
        Protocol::Opaque,
        Some("Pod inherit/web"),
    );
}

// --- 4. Pods going away --------------------------------------------------
// linkerd2 controller/api/destination/watcher/k8s.go (`podNotTerminating`)
// and workload_watcher.go (`getPodByPodIP`: conflicting pod IPs).

#[test]
fn pods_going_away_contribute_nothing() {
    let pod = |name: &str, ns: &str, extra: &str, status: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {name}-uid\n  annotations: {{config.linkerd.io/opaque-ports: \"4000\"}}\n{extra}status: {status}\n"
        )
    };
    let text = [
        // Terminating, and its IP already reused by a pod of another tenant
        // that has no annotation: the new pod gets the defaults, not the
        // old pod's annotation.
        pod(
            "old",
            "tenant-a",
            "  deletionTimestamp: \"2024-05-01T00:00:00Z\"\n",
            "{phase: Running, podIP: 10.244.9.1}",
        ),
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: new, namespace: tenant-b}\nstatus: {phase: Running, podIP: 10.244.9.1}\n".into(),
        pod("done", "a", "", "{phase: Succeeded, podIP: 10.244.9.2}"),
        pod("failed", "a", "", "{phase: Failed, podIP: 10.244.9.3}"),
        pod("pending", "a", "", "{phase: Pending}"),
        // Two live pods claiming one IP: neither gets a rule for it.
        pod("twin-1", "a", "", "{phase: Running, podIP: 10.244.9.4}"),
        pod("twin-2", "b", "", "{phase: Running, podIP: 10.244.9.4}"),
        pod("alive", "a", "", "{phase: Running, podIP: 10.244.9.5}"),
    ]
    .concat();
    let p = compile_text(&text).unwrap();
    for ip in ["10.244.9.1", "10.244.9.2", "10.244.9.3", "10.244.9.4"] {
        check(&p, None, &format!("{ip}:4000"), Protocol::Detect, None);
        check(&p, None, &format!("{ip}:3306"), Protocol::Opaque, None);
    }
    check(
        &p,
        None,
        "10.244.9.5:4000",
        Protocol::Opaque,
        Some("Pod a/alive"),
    );
    check(
        &p,
        None,
        "10.244.9.5:3306",
        Protocol::Detect,
        Some("Pod a/alive"),
    );
    // A terminating pod's processes may still connect: its UID keeps its
    // namespace.
    assert_eq!(
        p.pod_namespaces.get("old-uid").map(String::as_str),
        Some("tenant-a")
    );
}

// --- 5. Named ports in opaque-ports annotations ---------------------------
// linkerd2 pkg/util/parsing.go (`ParseContainerOpaquePorts`,
// `GetNamedPorts`: init containers too, names first).

#[test]
fn named_ports_resolve_against_the_pods_container_ports() {
    let p = compile_text(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: n
  annotations: {config.linkerd.io/opaque-ports: "nats,25"}
---
apiVersion: v1
kind: Pod
metadata:
  name: own
  namespace: a
  annotations: {config.linkerd.io/opaque-ports: "mysql, 4000-4001, sidecar,"}
spec:
  initContainers: [{name: i, ports: [{name: sidecar, containerPort: 7777}]}]
  containers: [{name: c, ports: [{name: mysql, containerPort: 3307}]}]
status: {phase: Running, podIP: 10.244.3.1}
---
apiVersion: v1
kind: Pod
metadata: {name: inherits, namespace: n}
spec:
  containers: [{name: c, ports: [{name: nats, containerPort: 4222}]}]
status: {phase: Running, podIP: 10.244.3.2}
---
apiVersion: v1
kind: Pod
metadata: {name: lacks, namespace: n}
status: {phase: Running, podIP: 10.244.3.3}
"#,
    )
    .unwrap();
    for port in [3307, 4000, 4001, 7777] {
        check(
            &p,
            None,
            &format!("10.244.3.1:{port}"),
            Protocol::Opaque,
            Some("Pod a/own"),
        );
    }
    check(
        &p,
        None,
        "10.244.3.1:3306",
        Protocol::Detect,
        Some("Pod a/own"),
    );
    // The namespace's names resolve per pod; a pod without the name keeps
    // the rest of the list (Linkerd skips the item it cannot resolve).
    check(
        &p,
        None,
        "10.244.3.2:4222",
        Protocol::Opaque,
        Some("Pod n/inherits"),
    );
    check(
        &p,
        None,
        "10.244.3.2:25",
        Protocol::Opaque,
        Some("Pod n/inherits"),
    );
    check(
        &p,
        None,
        "10.244.3.3:25",
        Protocol::Opaque,
        Some("Pod n/lacks"),
    );
    check(
        &p,
        None,
        "10.244.3.3:4222",
        Protocol::Detect,
        Some("Pod n/lacks"),
    );
}

#[test]
fn an_unknown_name_in_a_pods_own_annotation_names_the_pod() {
    let e = compile_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\n  annotations: {config.linkerd.io/opaque-ports: \"mysql\"}\nstatus: {podIP: 10.0.0.1}\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "x.yaml#1 (Pod a/p): metadata.annotations.config.linkerd.io/opaque-ports: port name \"mysql\" is not the name of any container port of the pod (in \"mysql\")"
    );
}

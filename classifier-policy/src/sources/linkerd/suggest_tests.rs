//! `suggest::opaque_ports_patches`: the value each object gets, and the
//! round trip: the documents with the patches applied make every learned
//! destination opaque and change no other verdict.

use std::net::SocketAddr;

use super::suggest::{opaque_ports_patches, CurrentPorts, Fixes};
use super::*;
use crate::classify_from;
use crate::sources::objects::{Pod, PortsAnnotation};

const DOCS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {config.linkerd.io/opaque-ports: "5432,mysql,redis"}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: orders-db, namespace: web}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: db, port: 3307}
    - {name: metrics, port: 9000, appProtocol: linkerd.io/opaque}
    - {name: api, port: 8080, appProtocol: http}
---
apiVersion: v1
kind: Service
metadata:
  name: annotated
  namespace: web
  annotations: {config.linkerd.io/opaque-ports: "db-alt,4444,"}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: db-alt, port: 2200}]
---
apiVersion: v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: mysql, port: 3306}]
---
apiVersion: v1
kind: Pod
metadata:
  name: cache-0
  namespace: web
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cache-7f, uid: x}]
spec:
  containers: [{name: c, image: c}]
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: shop}
spec:
  containers: [{name: c, image: c, ports: [{name: mysql, containerPort: 3306}]}]
status: {podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata:
  name: own
  namespace: web
  annotations: {config.linkerd.io/opaque-ports: "11211"}
spec:
  containers: [{name: c, image: c}]
status: {podIP: 10.244.1.7}
"#;

fn set_of(text: &str) -> DocumentSet {
    let mut set = DocumentSet::new();
    set.add_text(text, "docs.yaml").unwrap();
    set
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The documents with each patch's annotation set on its object.
fn apply(set: &DocumentSet, fixes: &Fixes) -> DocumentSet {
    let mut out = set.clone();
    for p in &fixes.patches {
        let mut doc = out
            .get(&p.kind, Some(&p.namespace), &p.name)
            .unwrap_or_else(|| panic!("no {} in the documents", p.describe()))
            .clone();
        let annotation = Some(Box::new(
            PortsAnnotation::parse(p.value.clone(), true).expect("the patch's value parses"),
        ));
        let object = match doc.object().expect("a patched object reads") {
            Object::Service(s) => Object::Service(Service {
                opaque: annotation,
                ..s.clone()
            }),
            Object::Pod(pod) => Object::Pod(Pod {
                opaque: annotation,
                ..pod.clone()
            }),
            other => panic!("a patch for {other:?}"),
        };
        doc.content = Content::Object(object);
        out.insert(doc);
    }
    out
}

/// Compiles `set` with nothing rejected.
fn policy(set: &DocumentSet) -> Policy {
    let c = compile_documents_report(set, &Options::default()).unwrap();
    assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    c.policy
}

/// Every destination of `addresses` x `ports`, from a node process and
/// from each namespace: the patched policy answers opaque for `fixed` and
/// what the original answers everywhere else.
fn assert_round_trip(
    before: &Policy,
    after: &Policy,
    fixed: &[SocketAddr],
    addresses: &[&str],
    ports: &[u16],
) {
    for ns in [None, Some("web"), Some("shop"), Some("other")] {
        for a in addresses {
            for &port in ports {
                let ip = a.parse().unwrap();
                let was = classify_from(before, ns, ip, port);
                let now = classify_from(after, ns, ip, port);
                if fixed.contains(&SocketAddr::new(ip, port)) {
                    assert_eq!(
                        now.protocol,
                        Protocol::Opaque,
                        "{a}:{port} from {ns:?}: {now:?}"
                    );
                } else {
                    assert_eq!(
                        now.protocol, was.protocol,
                        "{a}:{port} from {ns:?} changed: {was:?} -> {now:?}"
                    );
                }
            }
        }
    }
}

const ADDRESSES: [&str; 8] = [
    "10.96.0.10",
    "10.96.0.11",
    "10.96.0.12",
    "10.244.1.5",
    "10.244.1.6",
    "10.244.1.7",
    "10.0.0.99",
    "203.0.113.5",
];
const PORTS: [u16; 19] = [
    25, 80, 587, 2200, 2300, 2301, 2302, 2303, 2304, 2305, 2306, 3306, 3307, 4444, 5432, 6379,
    8080, 9000, 11211,
];

/// Learned destinations on each kind of object of [`DOCS`], and on
/// addresses none of them holds.
fn learned_on_docs() -> Vec<SocketAddr> {
    addrs(&[
        "10.96.0.10:3307",
        "10.96.0.10:9000",
        "10.96.0.10:8080",
        "10.96.0.11:2300",
        "10.96.0.12:2301",
        "10.244.1.5:2302",
        "10.244.1.5:2302",
        "10.244.1.6:2303",
        "10.244.1.7:2304",
        "10.244.1.7:11211",
        "10.0.0.99:2305",
        "203.0.113.5:2306",
    ])
}

#[test]
fn each_object_gets_its_current_opaque_ports_plus_the_learned_ones() {
    let set = set_of(DOCS);
    let fixes = opaque_ports_patches(&set, &learned_on_docs()).unwrap();
    let got: Vec<(String, &str, Option<&str>)> = fixes
        .patches
        .iter()
        .map(|p| (p.describe(), p.value.as_str(), p.owner.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            // Inherits "5432,mysql,redis": resolved for the pod (it has no
            // redis port), as numbers.
            ("Pod shop/worker".to_string(), "2303,3306,5432", None),
            // No annotation: Linkerd's defaults are kept.
            (
                "Pod web/cache-0".to_string(),
                "25,587,2302,3306,4444,5432,6379,9300,11211",
                Some("ReplicaSet cache-7f")
            ),
            // Its own text, as written.
            ("Pod web/own".to_string(), "11211,2304", None),
            ("Service shop/inventory".to_string(), "2301,3306,5432", None),
            (
                "Service web/annotated".to_string(),
                "db-alt,4444,2300",
                None
            ),
            (
                "Service web/orders-db".to_string(),
                "25,587,3306-3307,4444,5432,6379,9300,11211",
                None
            ),
        ]
    );
    let orders = &fixes.patches[5];
    assert_eq!(orders.current, CurrentPorts::Defaults);
    assert_eq!(orders.learned.to_string(), "3307");
    assert_eq!(
        fixes.patches[0].current,
        CurrentPorts::Namespace {
            namespace: "shop".into(),
            text: "5432,mysql,redis".into()
        }
    );
    assert_eq!(fixes.patches[2].current, CurrentPorts::Own("11211".into()));

    let before = policy(&set);
    let after = policy(&apply(&set, &fixes));
    let fixed: Vec<SocketAddr> = fixes
        .patches
        .iter()
        .flat_map(|p| {
            p.addresses
                .iter()
                .flat_map(|&a| p.learned.iter().map(move |port| SocketAddr::new(a, port)))
        })
        .collect();
    assert_eq!(fixed.len(), 6, "{fixed:?}");
    assert_round_trip(&before, &after, &fixed, &ADDRESSES, &PORTS);
}

/// What no annotation fixes: a port whose appProtocol decides it, a port
/// already opaque, and addresses no object holds.
#[test]
fn what_no_patch_fixes_is_unpatched_or_unheld() {
    let set = set_of(DOCS);
    let fixes = opaque_ports_patches(&set, &learned_on_docs()).unwrap();

    let unpatched: Vec<(String, bool)> = fixes
        .unpatched
        .iter()
        .map(|u| {
            (
                u.destination.to_string(),
                u.reason.starts_with("already opaque"),
            )
        })
        .collect();
    assert_eq!(
        unpatched,
        [
            ("10.96.0.10:8080".to_string(), false),
            ("10.96.0.10:9000".to_string(), true),
            ("10.244.1.7:11211".to_string(), true),
        ]
    );
    assert!(
        fixes.unpatched[0]
            .reason
            .contains("appProtocol to linkerd.io/opaque"),
        "{}",
        fixes.unpatched[0].reason
    );
    let unheld: Vec<(String, bool)> = fixes
        .unheld
        .iter()
        .map(|u| (u.destination.to_string(), u.in_cluster_networks))
        .collect();
    assert_eq!(
        unheld,
        [
            ("10.0.0.99:2305".to_string(), true),
            ("203.0.113.5:2306".to_string(), false),
        ]
    );
}

/// The annotation replaces the object's defaults: a ClassifierPolicy's
/// `defaultOpaquePorts` are what it keeps.
#[test]
fn the_cluster_defaults_come_from_the_classifier_policy() {
    let text = format!(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"3306,4000-4010\"\n---\n{DOCS}"
    );
    let set = set_of(&text);
    let learned = addrs(&["10.96.0.10:3307", "10.244.1.5:2302"]);
    let fixes = opaque_ports_patches(&set, &learned).unwrap();
    let values: Vec<&str> = fixes.patches.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(values, ["2302,3306,4000-4010", "3306-3307,4000-4010"]);
    assert_round_trip(
        &policy(&set),
        &policy(&apply(&set, &fixes)),
        &learned,
        &ADDRESSES,
        &[2302, 3306, 3307, 4000, 4005, 4010, 4011, 5432],
    );
}

/// Addresses that are no live object's: a pod going away, a headless
/// Service, an IP two live pods claim. They are left to the EgressNetwork
/// form, in or out of the cluster's networks.
#[test]
fn addresses_no_live_object_holds_are_unheld() {
    let set = set_of(
        r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: web}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: web}
status: {podIP: 10.244.2.1, phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web}
status: {podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web}
status: {podIP: 10.244.2.2}
"#,
    );
    let learned = addrs(&["10.244.2.1:2400", "10.244.2.2:2400", "192.0.2.7:2400"]);
    let fixes = opaque_ports_patches(&set, &learned).unwrap();
    assert!(fixes.patches.is_empty(), "{:?}", fixes.patches);
    assert!(fixes.unpatched.is_empty(), "{:?}", fixes.unpatched);
    let unheld: Vec<(String, bool)> = fixes
        .unheld
        .iter()
        .map(|u| (u.destination.to_string(), u.in_cluster_networks))
        .collect();
    assert_eq!(
        unheld,
        [
            ("10.244.2.1:2400".to_string(), true),
            ("10.244.2.2:2400".to_string(), true),
            ("192.0.2.7:2400".to_string(), false),
        ]
    );
}

/// A Service the compiler rejects (an annotation naming a port it does not
/// have) gets no patch: the reason says which object and what is wrong.
#[test]
fn an_object_the_compiler_rejects_is_reported_not_patched() {
    let set = set_of(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: broken
  namespace: web
  annotations: {config.linkerd.io/opaque-ports: "nosuchport"}
spec: {clusterIP: 10.96.0.30}
"#,
    );
    let fixes = opaque_ports_patches(&set, &addrs(&["10.96.0.30:2500"])).unwrap();
    assert!(fixes.patches.is_empty());
    assert_eq!(fixes.unpatched.len(), 1);
    let reason = &fixes.unpatched[0].reason;
    assert!(
        reason.contains("Service web/broken") && reason.contains("nosuchport"),
        "{reason}"
    );
}

/// A malformed ClassifierPolicy is an error, as for the compiler.
#[test]
fn a_bad_classifier_policy_is_an_error() {
    let set = set_of(
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"soon\"\n",
    );
    let err = opaque_ports_patches(&set, &addrs(&["10.96.0.30:2500"])).unwrap_err();
    assert!(err.to_string().contains("defaultOpaquePorts"), "{err}");
}

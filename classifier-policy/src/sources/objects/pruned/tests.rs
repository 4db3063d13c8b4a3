use serde_json::{json, Value};

use super::Pruned;
use crate::sources::document::{Document, KUBERNETES_ORIGIN};

/// The document of `whole`, and of `whole` pruned (from its JSON text, as
/// the watch reads it, and from the parsed value).
fn both(whole: &Value) -> (String, String, String) {
    let doc = |v: Value| {
        format!(
            "{:?}",
            Document::from_value(v, KUBERNETES_ORIGIN.to_string())
        )
    };
    let text = serde_json::to_string(whole).unwrap();
    let from_text: Pruned = serde_json::from_str(&text).unwrap();
    let from_value: Pruned = serde_json::from_value(whole.clone()).unwrap();
    (doc(whole.clone()), doc(from_text.0), doc(from_value.0))
}

fn assert_same(whole: &Value) {
    let (full, text, value) = both(whole);
    assert_eq!(full, text, "pruned from text differs for {whole}");
    assert_eq!(full, value, "pruned from a value differs for {whole}");
}

/// A pod as the API server sends one: far more than the compiler reads.
fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7f9c8d6b5-x2x9z",
            "namespace": "shop",
            "uid": "00000000-0000-4000-8000-000000000001",
            "resourceVersion": "100001",
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7f9c8d6b5"},
            "annotations": {
                "config.linkerd.io/opaque-ports": "3306,admin",
                "linkerd.io/created-by": "linkerd/proxy-injector stable-2.14.10"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7f9c8d6b5", "uid": "u", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {"f:phase": {}}}}]
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {"name": "linkerd-proxy", "image": "proxy", "env": [{"name": "A", "value": "b"}],
                 "ports": [{"name": "linkerd-admin", "containerPort": 4191}]},
                {"name": "app", "image": "web:1", "ports": [{"name": "admin", "containerPort": 9000}, {"containerPort": 8080}]}
            ],
            "initContainers": [{"name": "linkerd-init", "image": "init"}],
            "volumes": [{"name": "v", "emptyDir": {}}]
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "podIPs": [{"ip": "10.0.0.1"}],
            "containerStatuses": [{"name": "app", "ready": true}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

#[test]
fn what_is_kept_is_what_the_document_is_made_of() {
    let whole = pod();
    assert_same(&whole);
    let pruned: Pruned = serde_json::from_value(whole).unwrap();
    let v = &pruned.0;
    // Gone: what no reader reads.
    assert!(v["metadata"].get("managedFields").is_none());
    assert_eq!(
        v["metadata"]["annotations"],
        json!({"config.linkerd.io/opaque-ports": "3306,admin"})
    );
    assert_eq!(
        v["metadata"]["ownerReferences"],
        json!([{"kind": "ReplicaSet", "name": "web-7f9c8d6b5"}])
    );
    assert!(v["spec"].get("volumes").is_none() && v["spec"].get("nodeName").is_none());
    assert_eq!(
        v["spec"]["containers"][0],
        json!({"ports": [{"name": "linkerd-admin", "containerPort": 4191}]})
    );
    assert!(v["status"].get("containerStatuses").is_none());
    // Kept: identity and what the watch follows.
    assert_eq!(v["metadata"]["resourceVersion"], "100001");
    assert_eq!(v["status"]["podIPs"], json!([{"ip": "10.0.0.1"}]));
}

#[test]
fn every_kind_reads_the_same_pruned() {
    for whole in [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "annotations": {"config.linkerd.io/opaque-ports": "5432"}},
               "spec": {"finalizers": ["kubernetes"]}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "db", "namespace": "shop", "annotations": {"config.linkerd.io/opaque-ports": "mysql"}},
               "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"], "type": "ClusterIP",
                        "ports": [{"name": "mysql", "port": 3306, "targetPort": 3306}, {"name": "h", "port": 80, "appProtocol": "http"}],
                        "selector": {"app": "db"}},
               "status": {"loadBalancer": {}}}),
        json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
               "metadata": {"name": "web-http", "namespace": "shop", "creationTimestamp": "2026-11-01T10:00:00Z"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
                        "port": "http", "proxyProtocol": "HTTP/2", "accessPolicy": "deny"}}),
        json!({"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork",
               "metadata": {"name": "internet", "namespace": "linkerd-egress"},
               "spec": {"trafficPolicy": "Allow", "networks": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a"}, "data": {"k": "v"}}),
    ] {
        assert_same(&whole);
    }
}

/// A field of an unexpected shape is kept whole: the reader reports the
/// same error, naming the same field and value.
#[test]
fn malformed_fields_give_the_same_errors() {
    let cases: &[(&str, Value)] = &[
        ("/metadata", json!("not a map")),
        ("/metadata/name", json!(5)),
        ("/metadata/labels", json!(["a"])),
        ("/metadata/labels", json!({"a": {"b": 1}})),
        ("/metadata/annotations", json!("x")),
        (
            "/metadata/annotations",
            json!({"config.linkerd.io/opaque-ports": 5}),
        ),
        ("/metadata/ownerReferences", json!({"kind": "x"})),
        (
            "/metadata/ownerReferences",
            json!([5, {"kind": 1, "name": "n"}]),
        ),
        ("/metadata/uid", json!(7)),
        ("/spec", json!([1, 2])),
        ("/spec/containers", json!({"ports": []})),
        ("/spec/containers", json!([7])),
        ("/spec/containers/1/ports", json!({"name": "a"})),
        ("/spec/containers/1/ports/0/containerPort", json!("9000")),
        ("/spec/hostNetwork", json!(true)),
        ("/status", json!(null)),
        ("/status/podIPs", json!("10.0.0.1")),
        ("/status/podIPs/0", json!({"ip": 4})),
        ("/status/podIP", json!("not an ip")),
        ("/status/phase", json!(["Running"])),
        ("/metadata/deletionTimestamp", json!("2026-11-02T00:00:00Z")),
    ];
    for (path, value) in cases {
        let mut whole = pod();
        let (parent, key) = path.rsplit_once('/').unwrap();
        match whole.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.insert(key.to_string(), value.clone());
            }
            Some(Value::Array(items)) => items[key.parse::<usize>().unwrap()] = value.clone(),
            _ => panic!("{path}"),
        }
        let (full, text, from_value) = both(&whole);
        assert_eq!(full, text, "{path} = {value}");
        assert_eq!(full, from_value, "{path} = {value}");
    }
}

#[test]
fn a_body_that_is_not_a_map_is_kept_whole() {
    for v in [json!([1, {"a": 2}]), json!("text"), json!(null), json!(1.5)] {
        let p: Pruned = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(p.0, v);
        let p: Pruned = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(p.0, v);
    }
}

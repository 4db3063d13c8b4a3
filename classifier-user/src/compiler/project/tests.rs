use serde_json::json;

use super::*;
use crate::sources::kubernetes::watched_kinds;

fn pod_kind() -> ApiResource {
    watched_kinds()
        .into_iter()
        .find(|k| k.kind == "Pod")
        .unwrap()
}

fn meshed_pod() -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
            "creationTimestamp": "2026-11-01T10:00:00Z", "labels": {"app": "web"},
            "annotations": {"config.linkerd.io/opaque-ports": "http,3306"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7f"}, {"kind": "Other", "name": "x"}]},
        "spec": {"containers": [
            {"ports": [{"name": "linkerd-proxy", "containerPort": 4143, "protocol": "TCP"}, {"containerPort": 9999}]},
            {"ports": [{"containerPort": 8081}]},
            {"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
    })
}

fn document_of(text: &str) -> crate::sources::Document {
    let obj = ApiObject::from_value(serde_json::from_str(text).unwrap()).unwrap();
    to_document(&pod_kind(), obj).unwrap()
}

#[test]
fn a_pod_loses_what_its_document_does_not_hold() {
    let obj = ApiObject::from_value(meshed_pod()).unwrap();
    let full = object_text(obj.body.clone());
    let text = project(&pod_kind(), obj.clone()).unwrap();
    assert!(
        text.len() < full.len(),
        "{} of {} bytes: {text}",
        text.len(),
        full.len()
    );
    let lean: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        lean["spec"]["containers"].as_array().unwrap().len(),
        2,
        "{lean}"
    );
    assert_eq!(
        lean["spec"]["containers"][0]["ports"],
        json!([{"name": "linkerd-proxy", "containerPort": 4143}])
    );
    assert!(lean["status"].get("podIP").is_none(), "{lean}");
    assert_eq!(
        lean["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(lean["metadata"].get("resourceVersion").is_none());
    // It reads back as the same document: the same rules on every node.
    let doc = to_document(&pod_kind(), obj).unwrap();
    assert!(same_document(&document_of(&text), &doc));
}

#[test]
fn an_inactive_pod_goes_out_as_its_identity_and_what_makes_it_inactive() {
    let mut body = meshed_pod();
    body["status"]["phase"] = json!("Succeeded");
    let obj = ApiObject::from_value(body).unwrap();
    let text = project(&pod_kind(), obj.clone()).unwrap();
    let lean: Value = serde_json::from_str(&text).unwrap();
    assert!(lean["metadata"].get("labels").is_none(), "{lean}");
    assert!(
        lean.get("spec")
            .is_none_or(|s| s.get("containers").is_none()),
        "{lean}"
    );
    assert_eq!(lean["status"]["phase"], "Succeeded");
    assert_eq!(
        lean["metadata"]["uid"], "u1",
        "its namespace is still known by UID"
    );
    let doc = to_document(&pod_kind(), obj).unwrap();
    assert!(same_document(&document_of(&text), &doc));
}

#[test]
fn a_pod_whose_projection_would_read_otherwise_goes_out_as_pruned() {
    // A podIP that podIPs lacks stays: it is one of the pod's addresses.
    let mut body = meshed_pod();
    body["status"]["podIP"] = json!("10.0.0.2");
    let text = project(&pod_kind(), ApiObject::from_value(body).unwrap()).unwrap();
    let lean: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(lean["status"]["podIP"], "10.0.0.2");
}

#[test]
fn an_object_a_node_would_skip_is_an_error() {
    let mut body = meshed_pod();
    let labels: serde_json::Map<String, Value> =
        (0..200).map(|i| (format!("l{i}"), json!("v"))).collect();
    body["metadata"]["labels"] = Value::Object(labels);
    assert!(project(&pod_kind(), ApiObject::from_value(body).unwrap()).is_err());
}

//! An object as a slice carries it: what the nodes' compiler reads of it
//! and nothing more, checked to read back as the same document.
//!
//! The watch already keeps only the fields the compiler reads
//! ([`ApiObject`]); a Pod can lose more without its document changing:
//! its unnamed container ports (only names are looked up), `status.podIP`
//! when `status.podIPs` holds it, owners after the first, and everything
//! but what makes it inactive when it is (an inactive pod has no rules).
//! Every projection is read back and compared with the object's own
//! document; if they differ (an object this pruning did not foresee), the
//! object goes out as the watch pruned it.

use anyhow::Result;
use kube::core::ApiResource;
use serde_json::{Map, Value};

use super::table::object_text;
use crate::sources::kubernetes::{same_document, to_document, ApiObject};

/// `obj`'s text for a slice; an error if a node would skip the object
/// (its document cannot be made).
pub fn project(ar: &ApiResource, obj: ApiObject) -> Result<String> {
    let doc = to_document(ar, obj.clone())?;
    if ar.kind != "Pod" {
        return Ok(object_text(obj.body));
    }
    let inactive = matches!(
        doc.object(),
        Some(crate::sources::objects::Object::Pod(p)) if p.inactive
    );
    let mut lean = obj.clone();
    compact_pod(&mut lean.body, inactive);
    match to_document(ar, lean.clone()) {
        Ok(back) if same_document(&back, &doc) => Ok(object_text(lean.body)),
        _ => Ok(object_text(obj.body)),
    }
}

fn compact_pod(body: &mut Value, inactive: bool) {
    let Some(pod) = body.as_object_mut() else {
        return;
    };
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        if inactive {
            for field in ["labels", "annotations", "ownerReferences"] {
                meta.remove(field);
            }
        } else if let Some(Value::Array(owners)) = meta.get_mut("ownerReferences") {
            owners.truncate(1);
        }
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        for list in ["initContainers", "containers"] {
            if inactive {
                spec.remove(list);
            } else if let Some(Value::Array(containers)) = spec.get_mut(list) {
                containers.retain_mut(named_ports_only);
                if containers.is_empty() {
                    spec.remove(list);
                }
            }
        }
    }
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        let listed = |ip: &Value| {
            status
                .get("podIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| ips.iter().any(|e| e.get("ip") == Some(ip)))
        };
        if status.get("podIP").is_some_and(listed) {
            status.remove("podIP");
        }
    }
}

/// Keeps a container's named ports (name and number); false if none.
fn named_ports_only(container: &mut Value) -> bool {
    let Some(Value::Array(ports)) = container.get("ports") else {
        return false;
    };
    let named: Vec<Value> = ports
        .iter()
        .filter(|p| p.get("name").is_some())
        .map(|p| {
            let mut kept = Map::new();
            for field in ["name", "containerPort"] {
                if let Some(v) = p.get(field) {
                    kept.insert(field.to_owned(), v.clone());
                }
            }
            Value::Object(kept)
        })
        .collect();
    if named.is_empty() {
        return false;
    }
    *container = serde_json::json!({ "ports": named });
    true
}

#[cfg(test)]
mod tests;

//! An API object as the watch reads it: only the fields a document is made
//! of, the rest skipped while its JSON is parsed.
//!
//! kube's `DynamicObject` parses a whole object (its metadata typed,
//! `managedFields` included, the rest as a `serde_json::Value` tree,
//! buffered once more for `#[serde(flatten)]`), which the agent then
//! picked a few fields from. [`ApiObject`] parses straight into
//! [`Pruned`]: at 100k pods that is most of what a restart or a re-list
//! costs the node.

use std::borrow::Cow;

use kube::core::{ApiResource, DynamicResourceScope, ObjectMeta, Resource};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use classifier_policy::sources::objects::Pruned;

/// One object of a list or a watch event, as the watcher delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiObject {
    /// What the watch follows: name, namespace, UID and resourceVersion
    /// (the rest of `ObjectMeta` is left empty).
    pub metadata: ObjectMeta,
    /// The fields the compiler reads ([`Pruned`]), metadata included.
    pub body: Value,
}

impl ApiObject {
    /// The object `body` (a JSON value of an object), pruned as if it had
    /// come from the API server.
    pub fn from_value(body: Value) -> serde_json::Result<ApiObject> {
        serde_json::from_value(body)
    }
}

impl<'de> Deserialize<'de> for ApiObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Pruned(body) = Pruned::deserialize(d)?;
        if !body.is_object() {
            return Err(serde::de::Error::custom("an API object that is not a map"));
        }
        let meta = |field: &str| {
            body.get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let metadata = ObjectMeta {
            name: meta("name"),
            namespace: meta("namespace"),
            uid: meta("uid"),
            resource_version: meta("resourceVersion"),
            ..ObjectMeta::default()
        };
        Ok(ApiObject { metadata, body })
    }
}

/// As kube's `DynamicObject`: the kind is known at run time.
impl Resource for ApiObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

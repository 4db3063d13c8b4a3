//! An API object's JSON read into only the fields a [`Document`] is made
//! of, the rest skipped as it is parsed.
//!
//! A Pod as the API server sends it is kilobytes (`managedFields`, env,
//! volumes, probes, `containerStatuses`), of which the compiler reads a
//! few hundred bytes. Parsing the whole object into a tree and then
//! picking fields from it costs an allocation per string and per map of
//! the object; [`Pruned`] walks the text once and builds a
//! [`serde_json::Value`] of the fields in [`OBJECT`] only, every other
//! field skipped without being built (serde's `IgnoredAny`).
//!
//! What is kept is exactly what [`Document::from_value`] and
//! [`Object::read`](super::Object::read) read, whatever its type: a field
//! whose value is not of the shape the tree expects (a list where a map
//! should be, a number where a list should be) is kept whole, so the
//! reader sees the same value there and reports the same error. The
//! property (tests, and the `kubernetes_objects` fuzz target): the
//! document of the pruned object equals the document of the whole one.
//!
//! [`Document`]: crate::sources::Document
//! [`Document::from_value`]: crate::sources::Document::from_value

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::annotation::OPAQUE_PORTS_ANNOTATION;

/// Which parts of a value are kept.
pub enum Node {
    /// The whole value.
    Keep,
    /// Of a map, only these keys, each pruned by its node; anything else
    /// whole.
    Fields(&'static [(&'static str, Node)]),
    /// Of a list, every item pruned by the node; anything else whole.
    Each(&'static Node),
}

use Node::{Each, Fields, Keep};

/// A container: only its ports (named ports are read from them).
const CONTAINER: Node = Fields(&[("ports", Keep)]);

/// What is read of an object of any kind the compiler reads (Namespace,
/// Pod, Service, Server, EgressNetwork): one tree for all of them, since a
/// field of one kind is absent from the others.
pub const OBJECT: Node = Fields(&[
    ("apiVersion", Keep),
    ("kind", Keep),
    (
        "metadata",
        Fields(&[
            ("name", Keep),
            ("namespace", Keep),
            ("uid", Keep),
            // Not read by the compiler; the watch follows it.
            ("resourceVersion", Keep),
            ("creationTimestamp", Keep),
            ("deletionTimestamp", Keep),
            ("labels", Keep),
            ("annotations", Fields(&[(OPAQUE_PORTS_ANNOTATION, Keep)])),
            (
                "ownerReferences",
                Each(&Fields(&[("kind", Keep), ("name", Keep)])),
            ),
        ]),
    ),
    (
        "spec",
        Fields(&[
            // Pod
            ("containers", Each(&CONTAINER)),
            ("initContainers", Each(&CONTAINER)),
            ("hostNetwork", Keep),
            // Service
            ("clusterIP", Keep),
            ("clusterIPs", Keep),
            ("ports", Keep),
            // Server
            ("podSelector", Keep),
            ("externalWorkloadSelector", Keep),
            ("proxyProtocol", Keep),
            ("port", Keep),
            // EgressNetwork
            ("trafficPolicy", Keep),
            ("networks", Keep),
        ]),
    ),
    (
        "status",
        Fields(&[("phase", Keep), ("podIP", Keep), ("podIPs", Keep)]),
    ),
]);

/// An API object with only the fields in [`OBJECT`] (see the module
/// documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Pruned(pub Value);

impl<'de> Deserialize<'de> for Pruned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Prune(&OBJECT).deserialize(d).map(Pruned)
    }
}

/// Deserializes a value pruned by a node.
struct Prune<'n>(&'n Node);

impl<'de> DeserializeSeed<'de> for Prune<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep => Value::deserialize(d),
            node => d.deserialize_any(PruneVisitor(node)),
        }
    }
}

/// The index in `fields` of a map key, read without keeping it when it
/// is not one of them.
struct FieldIndex(&'static [(&'static str, Node)]);

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldIndex {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| *name == key))
    }
}

struct PruneVisitor<'n>(&'n Node);

impl<'de> Visitor<'de> for PruneVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Prune(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = match self.0 {
            Each(item) => *item,
            _ => &Keep,
        };
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(Prune(item))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let Fields(fields) = self.0 else {
            // Not the map the tree expects here: kept whole.
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                out.insert(k, v);
            }
            return Ok(Value::Object(out));
        };
        while let Some(index) = map.next_key_seed(FieldIndex(fields))? {
            match index {
                Some(i) => {
                    let (name, node) = &fields[i];
                    let v = map.next_value_seed(Prune(node))?;
                    out.insert((*name).to_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests;

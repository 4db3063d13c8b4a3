//! A small string map in one allocation, for what every pod carries
//! (labels, named container ports).
//!
//! A `BTreeMap<String, String>` of six labels takes about a kilobyte (a
//! node sized for eleven entries, and one allocation per string); the same
//! map packed here takes its text and one header. With 50,000 pods that is
//! the difference between tens and hundreds of MiB. Lookups scan the
//! entries, which is as fast as a tree for the handful a pod has.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Entries `key\0value\0`, sorted by key, each key once. Neither keys nor
/// values may contain NUL (Kubernetes allows neither in a label or a port
/// name; [`PackedMap::new`] refuses them). Equal maps share one copy
/// (the pods of one workload have the same labels and named ports).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedMap(Arc<str>);

impl PackedMap {
    /// The map of `entries`, or the first key or value with a NUL.
    pub fn new(entries: &BTreeMap<String, String>) -> Result<Self, String> {
        Self::from_entries(
            entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        )
    }

    /// The map of `entries`, sorted here; of equal keys the last one
    /// stays (as a map's insert would leave it). Refuses a NUL as
    /// [`PackedMap::new`] does.
    pub fn from_entries<V: AsRef<str>>(mut entries: Vec<(&str, V)>) -> Result<Self, String> {
        // Stable: equal keys keep their order, and the last one is kept.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut text = String::with_capacity(
            entries
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().len() + 2)
                .sum::<usize>(),
        );
        for (i, (k, v)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *k) {
                continue;
            }
            let v = v.as_ref();
            if let Some(bad) = [*k, v].into_iter().find(|s| s.contains('\0')) {
                return Err(bad.to_owned());
            }
            text.push_str(k);
            text.push('\0');
            text.push_str(v);
            text.push('\0');
        }
        Ok(PackedMap(crate::sources::intern::intern(&text)))
    }

    /// (key, value) in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split('\0');
        std::iter::from_fn(move || {
            let k = parts
                .next()
                .filter(|k| !k.is_empty() || parts.clone().next().is_some())?;
            let v = parts.next()?;
            Some((k, v))
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

impl fmt::Debug for PackedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Named ports: name -> number, packed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PortNames(PackedMap);

impl PortNames {
    pub fn new(ports: &BTreeMap<String, u16>) -> Result<Self, String> {
        Self::from_entries(ports.iter().map(|(k, v)| (k.as_str(), *v)).collect())
    }

    /// As [`PackedMap::from_entries`].
    pub fn from_entries(entries: Vec<(&str, u16)>) -> Result<Self, String> {
        let text: Vec<(&str, String)> = entries
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        PackedMap::from_entries(text).map(PortNames)
    }

    pub fn get(&self, name: &str) -> Option<u16> {
        self.0.get(name).and_then(|v| v.parse().ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u16)> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
    }
}

impl fmt::Debug for PortNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lookups_find_every_entry_and_nothing_else() {
        let m = PackedMap::new(&map(&[("app", "web"), ("tier", ""), ("", "empty-key")])).unwrap();
        assert_eq!(m.get("app"), Some("web"));
        assert_eq!(m.get("tier"), Some(""));
        assert_eq!(m.get(""), Some("empty-key"));
        assert_eq!(m.get("ap"), None);
        assert_eq!(m.get("web"), None);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("", "empty-key"), ("app", "web"), ("tier", "")]
        );
        let empty = PackedMap::new(&BTreeMap::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.get(""), None);
    }

    #[test]
    fn from_entries_is_new_of_the_same_map() {
        let entries = vec![("tier", "b"), ("app", "web"), ("tier", "c"), ("", "e")];
        let mut map = BTreeMap::new();
        for (k, v) in &entries {
            map.insert(k.to_string(), v.to_string());
        }
        assert_eq!(
            PackedMap::from_entries(entries).unwrap(),
            PackedMap::new(&map).unwrap()
        );
        assert_eq!(
            PackedMap::from_entries(vec![("a", "x\0y")]),
            Err("x\0y".to_string())
        );
        let ports = PortNames::from_entries(vec![("http", 80), ("admin", 9), ("http", 8080)]);
        assert_eq!(
            ports.unwrap().iter().collect::<Vec<_>>(),
            [("admin", 9), ("http", 8080)]
        );
    }

    #[test]
    fn a_nul_is_refused_and_named() {
        assert_eq!(
            PackedMap::new(&map(&[("a", "b\0c")])),
            Err("b\0c".to_string())
        );
    }

    #[test]
    fn port_names_round_trip() {
        let ports: BTreeMap<String, u16> =
            [("http".to_string(), 8080), ("admin".to_string(), 4191)].into();
        let p = PortNames::new(&ports).unwrap();
        assert_eq!(p.get("http"), Some(8080));
        assert_eq!(p.get("admin"), Some(4191));
        assert_eq!(p.get("metrics"), None);
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            [("admin", 4191), ("http", 8080)]
        );
    }
}

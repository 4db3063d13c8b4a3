//! Which namespace a connecting process belongs to, for namespace-scoped
//! rules.
//!
//! Two pinned maps: `CLS_SCOPE_IDS` (namespace name -> scope id) and
//! `CLS_SCOPES` (cgroup id of a pod's cgroup -> scope id). The kernel walks
//! the connecting process's cgroup ancestors and takes the first registered
//! one, except that a pod root's "namespace unknown" marker
//! (`SCOPE_FLAG_POD_UNKNOWN`) gives way to any registered cgroup below it.
//! Ids only ever get added, and they are pinned, so a restarted agent
//! gives every namespace the id the running programs already use.

use std::collections::{BTreeMap, HashMap as StdHashMap};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map};
use classifier_common::{maps, NamespaceName};

use super::{pins::PinDir, policy_maps::open};

pub struct ScopeMaps {
    ids: HashMap<aya::maps::MapData, NamespaceName, u32>,
    cgroups: HashMap<aya::maps::MapData, u64, u32>,
    /// Mirror of `ids`.
    known: BTreeMap<String, u16>,
    /// Mirror of `cgroups`, for diffing.
    registered: StdHashMap<u64, u32>,
}

fn key(namespace: &str) -> Result<NamespaceName> {
    classifier_common::namespace_key(namespace)
        .with_context(|| format!("namespace name {namespace:?} is not 1 to 63 bytes long"))
}

impl ScopeMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let ids: HashMap<_, NamespaceName, u32> =
            HashMap::try_from(Map::HashMap(open(pins, maps::SCOPE_IDS)?))?;
        let cgroups: HashMap<_, u64, u32> =
            HashMap::try_from(Map::HashMap(open(pins, maps::SCOPES)?))?;
        let mut known = BTreeMap::new();
        for entry in ids.iter() {
            let (name, id) = entry.context("reading scope ids")?;
            let name = classifier_common::namespace_of_key(&name);
            known.insert(String::from_utf8_lossy(name).into_owned(), id as u16);
        }
        let registered = cgroups.iter().filter_map(|e| e.ok()).collect();
        Ok(Self {
            ids,
            cgroups,
            known,
            registered,
        })
    }

    /// The id of each namespace, allocating (and pinning) new ones.
    pub fn ids_for<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, u16>> {
        let mut out = BTreeMap::new();
        for namespace in namespaces {
            let id = match self.known.get(namespace) {
                Some(id) => *id,
                None => {
                    let next = self.known.values().max().copied().unwrap_or(0) as u32 + 1;
                    if self.known.len() >= maps::SCOPE_IDS_CAPACITY as usize
                        // The last id is the global EgressNetworks'.
                        || next >= u32::from(classifier_common::SCOPE_GLOBAL_EGRESS)
                    {
                        bail!(
                            "more than {} namespaces with namespace-scoped rules (their own EgressNetworks)",
                            maps::SCOPE_IDS_CAPACITY
                        );
                    }
                    self.ids
                        .insert(key(namespace)?, next, 0)
                        .context("writing a scope id")?;
                    self.known.insert(namespace.to_owned(), next as u16);
                    next as u16
                }
            };
            out.insert(namespace.to_owned(), id);
        }
        Ok(out)
    }

    /// Registers (or re-points) every cgroup in `wanted` (cgroup id ->
    /// `CLS_SCOPES` value: scope id and `SCOPE_FLAG_*` bits); returns how
    /// many changed.
    pub fn register(&mut self, wanted: &StdHashMap<u64, u32>) -> Result<usize> {
        let mut changed = 0;
        for (id, value) in wanted {
            if self.register_one(*id, *value)? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Registers one cgroup; whether its entry changed.
    pub fn register_one(&mut self, id: u64, value: u32) -> Result<bool> {
        if self.registered.get(&id) == Some(&value) {
            return Ok(false);
        }
        self.cgroups
            .insert(id, value, 0)
            .context("registering a pod cgroup")?;
        self.registered.insert(id, value);
        Ok(true)
    }

    /// Unregisters one cgroup; whether it was registered.
    pub fn unregister_one(&mut self, id: u64) -> bool {
        if self.registered.remove(&id).is_none() {
            return false;
        }
        let _ = self.cgroups.remove(&id);
        true
    }

    /// Unregisters every cgroup not in `wanted`; returns how many.
    pub fn unregister_others(&mut self, wanted: &StdHashMap<u64, u32>) -> Result<usize> {
        let stale: Vec<u64> = self
            .registered
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in &stale {
            let _ = self.cgroups.remove(id);
            self.registered.remove(id);
        }
        Ok(stale.len())
    }
}

/// The `CLS_SCOPES` entry of one cgroup, read from the pinned map (for
/// tests and tools; the agent keeps its own mirror).
pub struct ScopeReader {
    cgroups: HashMap<aya::maps::MapData, u64, u32>,
}

impl ScopeReader {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            cgroups: HashMap::try_from(Map::HashMap(open(pins, maps::SCOPES)?))?,
        })
    }

    /// The entry of `cgroup_id`, if it is registered.
    pub fn get(&self, cgroup_id: u64) -> Result<Option<u32>> {
        match self.cgroups.get(&cgroup_id, 0) {
            Ok(value) => Ok(Some(value)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("reading CLS_SCOPES"),
        }
    }
}

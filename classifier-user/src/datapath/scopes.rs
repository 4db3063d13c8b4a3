//! Which namespace a connecting process belongs to, for namespace-scoped
//! rules.
//!
//! Two pinned maps: `CLS_SCOPE_IDS` (namespace name -> scope id) and
//! `CLS_SCOPES` (cgroup id of a pod's cgroup -> scope id). The kernel walks
//! the connecting process's cgroup ancestors and takes the first registered
//! one. Ids only ever get added, and they are pinned, so a restarted agent
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
    let mut out = [0u8; 64];
    let bytes = namespace.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        bail!("namespace name {namespace:?} is not 1 to 63 bytes long");
    }
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
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
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            known.insert(
                String::from_utf8_lossy(&name[..len]).into_owned(),
                id as u16,
            );
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

    /// Registers (or re-points) every cgroup in `wanted`; returns how many
    /// changed.
    /// Scopes in `own_rules` (namespaces with rules of their own) are
    /// flagged `SCOPE_FLAG_OWN_RULES`.
    pub fn register(
        &mut self,
        wanted: &StdHashMap<u64, u16>,
        own_rules: &std::collections::HashSet<u16>,
    ) -> Result<usize> {
        let mut changed = 0;
        for (id, scope) in wanted {
            let mut value = u32::from(*scope);
            if own_rules.contains(scope) {
                value |= classifier_common::SCOPE_FLAG_OWN_RULES;
            }
            if self.registered.get(id) != Some(&value) {
                self.cgroups
                    .insert(*id, value, 0)
                    .context("registering a pod cgroup")?;
                self.registered.insert(*id, value);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Unregisters every cgroup not in `wanted`; returns how many.
    pub fn unregister_others(&mut self, wanted: &StdHashMap<u64, u16>) -> Result<usize> {
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

//! Which namespace a connecting process belongs to, for namespace-scoped
//! rules.
//!
//! Two pinned maps: `CLS_SCOPE_IDS` (namespace name -> scope id) and
//! `CLS_SCOPES` (cgroup id of a pod's cgroup -> scope id). The kernel walks
//! the connecting process's cgroup ancestors and takes the first registered
//! one, except that a pod root's "namespace unknown" marker
//! (`SCOPE_FLAG_POD_UNKNOWN`) gives way to any registered cgroup below it.
//! Ids are pinned, so a restarted agent gives every namespace the id the
//! running programs already use. A namespace the applied policy no longer
//! needs gives its id back ([`ScopeMaps::release_others`]), so the table
//! holds the namespaces that exist, not every name ever seen. A freed id is
//! quarantined for two policy switches before it is handed out again: by
//! then neither policy slot holds rule keys of the old namespace and the
//! grace period of the switch that dropped them has passed, so a pod
//! registered under the reused id can never meet the old namespace's rules.
//! Its learned entries, counts and watches are purged by the caller (they
//! live in the learning maps) when it is freed and again before reuse.

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map};
use classifier_common::{
    maps, LearnConfig, NamespaceName, LEARN_FLAG_NODE_SCOPE, LEARN_FLAG_OUTSIDE_PODS, SCOPE_NODE,
};

use super::{pins::PinDir, policy_maps::open};

pub struct ScopeMaps {
    ids: HashMap<aya::maps::MapData, NamespaceName, u32>,
    cgroups: HashMap<aya::maps::MapData, u64, u32>,
    /// Mirror of `ids`.
    known: BTreeMap<String, u16>,
    /// Mirror of `cgroups`, for diffing.
    registered: StdHashMap<u64, u32>,
    /// Freed ids, with the count of successful switches when they were
    /// freed; reusable once [`QUARANTINE_SWITCHES`] more have happened.
    quarantined: BTreeMap<u16, u64>,
    /// Freed ids out of quarantine, handed out lowest first.
    free: BTreeSet<u16>,
    /// The next id never handed out (above every known and freed one).
    next_fresh: u32,
    /// Successful policy switches seen by [`ScopeMaps::release_others`].
    switches: u64,
}

/// Policy switches a freed id waits before reuse: one for the slot that
/// still holds the old namespace's rules to be rewritten, one for the
/// grace period of that switch to end.
pub const QUARANTINE_SWITCHES: u64 = 2;

/// The highest id a namespace can get (the last one is the global
/// EgressNetworks').
const MAX_ID: u32 = classifier_common::SCOPE_GLOBAL_EGRESS as u32 - 1;

/// The `CLS_SCOPE_IDS` key of `namespace` (its bytes, NUL padded).
pub fn namespace_key(namespace: &str) -> Result<NamespaceName> {
    classifier_common::namespace_key(namespace)
        .with_context(|| format!("namespace name {namespace:?} is not 1 to 63 bytes long"))
}

/// The namespace a `CLS_SCOPE_IDS` key names: the inverse of
/// [`namespace_key`].
pub fn namespace_name(key: &NamespaceName) -> String {
    String::from_utf8_lossy(classifier_common::namespace_of_key(key)).into_owned()
}

/// Scope id -> namespace name, from the pinned `CLS_SCOPE_IDS` (empty when
/// it cannot be read).
pub fn scope_names(pins: &PinDir) -> BTreeMap<u32, String> {
    let Ok(data) = open(pins, maps::SCOPE_IDS) else {
        return BTreeMap::new();
    };
    let Ok(ids) = HashMap::<_, NamespaceName, u32>::try_from(Map::HashMap(data)) else {
        return BTreeMap::new();
    };
    ids.iter()
        .filter_map(|e| e.ok())
        .map(|(name, id)| (id, namespace_name(&name)))
        .collect()
}

/// The scope id of a namespace, from the pins (`None`: never registered).
pub fn scope_of_namespace(pins: &PinDir, namespace: &str) -> Option<u32> {
    scope_names(pins)
        .into_iter()
        .find(|(_, n)| n == namespace)
        .map(|(id, _)| id)
}

/// The scope a learned lookup for a client of `client_scope` uses under
/// the learning settings `config`: the node's under node-scoped learning,
/// else the client's own; `None` when the client reads no learned entry at
/// all (in no known pod, under `scope: namespace`, without
/// `--learn-outside-pods`). The kernel's choice at connect
/// (`classifier-ebpf/src/learn.rs`, `at_connect`).
pub fn learned_scope(config: &LearnConfig, client_scope: u32) -> Option<u32> {
    if config.flags & LEARN_FLAG_NODE_SCOPE != 0 {
        Some(u32::from(SCOPE_NODE))
    } else if client_scope == u32::from(SCOPE_NODE) && config.flags & LEARN_FLAG_OUTSIDE_PODS == 0 {
        None
    } else {
        Some(client_scope)
    }
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
            known.insert(namespace_name(&name), id as u16);
        }
        let registered = cgroups.iter().filter_map(|e| e.ok()).collect();
        // Gaps below the highest id were freed by an earlier agent, maybe
        // at its last switch: quarantine them as if freed now.
        let used: BTreeSet<u16> = known.values().copied().collect();
        let next_fresh = used.last().map_or(1, |max| u32::from(*max) + 1);
        let quarantined = (1..next_fresh)
            .map(|id| id as u16)
            .filter(|id| !used.contains(id))
            .map(|id| (id, 0))
            .collect();
        Ok(Self {
            ids,
            cgroups,
            known,
            registered,
            quarantined,
            free: BTreeSet::new(),
            next_fresh,
            switches: 0,
        })
    }

    /// Namespaces holding an id.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// How many more namespaces `allocate` can give an id now.
    fn allocatable(&self) -> usize {
        let room = (maps::SCOPE_IDS_CAPACITY as usize).saturating_sub(self.known.len());
        let ids = self.free.len() + (MAX_ID + 1).saturating_sub(self.next_fresh) as usize;
        room.min(ids)
    }

    /// The id a new namespace gets, and whether it was used before (then
    /// the caller must purge what the old namespace left under it).
    fn allocate(&mut self) -> Option<(u16, bool)> {
        if self.known.len() >= maps::SCOPE_IDS_CAPACITY as usize {
            return None;
        }
        if let Some(id) = self.free.pop_first() {
            return Some((id, true));
        }
        if self.next_fresh > MAX_ID {
            return None;
        }
        let id = self.next_fresh as u16;
        self.next_fresh += 1;
        Some((id, false))
    }

    /// The id of each namespace, allocating (and pinning) new ones. Also
    /// returns the ids handed out that an earlier namespace used: the
    /// caller purges their learned state before any pod is registered
    /// under them.
    pub fn ids_for<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Result<(BTreeMap<String, u16>, BTreeSet<u16>)> {
        let namespaces: Vec<&str> = namespaces.into_iter().collect();
        // All or nothing: a policy refused for want of ids takes none, so
        // the node's table stays as the policy in force left it.
        let new = namespaces
            .iter()
            .filter(|ns| !self.known.contains_key(**ns))
            .collect::<BTreeSet<_>>()
            .len();
        if new > self.allocatable() {
            bail!(
                "more than {} namespaces need a scope id at once (each namespace with pods under namespace-scoped learning, or with its own EgressNetworks); {} freed ids are still quarantined",
                maps::SCOPE_IDS_CAPACITY.min(MAX_ID),
                self.quarantined.len()
            );
        }
        let mut out = BTreeMap::new();
        let mut reused = BTreeSet::new();
        for namespace in namespaces {
            let id = match self.known.get(namespace) {
                Some(id) => *id,
                None => {
                    let key = namespace_key(namespace)?;
                    let Some((id, was_used)) = self.allocate() else {
                        bail!(
                            "more than {} namespaces need a scope id at once (each namespace with pods under namespace-scoped learning, or with its own EgressNetworks); {} freed ids are still quarantined",
                            maps::SCOPE_IDS_CAPACITY.min(MAX_ID),
                            self.quarantined.len()
                        );
                    };
                    if let Err(err) = self.ids.insert(key, u32::from(id), 0) {
                        // Not handed out: give it back.
                        if was_used {
                            self.free.insert(id);
                        } else {
                            self.quarantined.insert(id, self.switches);
                        }
                        return Err(err).context("writing a scope id");
                    }
                    if was_used {
                        reused.insert(id);
                    }
                    self.known.insert(namespace.to_owned(), id);
                    id
                }
            };
            out.insert(namespace.to_owned(), id);
        }
        Ok((out, reused))
    }

    /// After a successful switch to a policy that needs the namespaces in
    /// `wanted`: frees every other namespace's id (quarantined, see the
    /// module docs) and returns the freed ids, whose learned state the
    /// caller purges.
    pub fn release_others(&mut self, wanted: &BTreeMap<String, u16>) -> BTreeSet<u16> {
        self.switches += 1;
        let switches = self.switches;
        let released: Vec<u16> = self
            .quarantined
            .iter()
            .filter(|(_, at)| switches >= *at + QUARANTINE_SWITCHES)
            .map(|(id, _)| *id)
            .collect();
        for id in released {
            self.quarantined.remove(&id);
            self.free.insert(id);
        }
        let gone: Vec<(String, u16)> = self
            .known
            .iter()
            .filter(|(ns, _)| !wanted.contains_key(*ns))
            .map(|(ns, id)| (ns.clone(), *id))
            .collect();
        let mut freed = BTreeSet::new();
        for (namespace, id) in gone {
            if let Ok(key) = namespace_key(&namespace) {
                if let Err(err) = super::policy_maps::absent_ok(self.ids.remove(&key)) {
                    // Still pinned: keep it, try again next switch.
                    tracing::warn!(namespace, id, "freeing a scope id failed: {err}");
                    continue;
                }
            }
            self.known.remove(&namespace);
            self.quarantined.insert(id, switches);
            freed.insert(id);
        }
        freed
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

//! The learned server-first destinations as userspace sees them:
//! the pinned `CLS_LEARNED` table, its settings (`CLS_LEARN_CONFIG`) and
//! per-scope entry counts (`CLS_LEARN_SCOPES`).
//!
//! The kernel adds entries (server-first observations) and removes them
//! (client-first contradictions); the agent writes the settings, expires
//! entries older than the ttl and recounts each scope's entries (the
//! kernel's counts are approximate under concurrent inserts). `stats`,
//! `learned`, `explain` and `suggest` only read.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use classifier_common::{
    maps, LearnConfig, LearnWatch, LearnedEntry, LearnedKey, LEARN_FLAG_ENABLED,
    LEARN_FLAG_NODE_SCOPE, LEARN_FLAG_OUTSIDE_PODS, LEARN_HINT_NOTHING_LEARNED,
};
use serde::Serialize;

pub mod cli;
pub mod suggest;

use crate::{
    datapath::{
        policy_maps::{absent_ok, open},
        PinDir,
    },
    policy::{Learning, LearningScope},
};

/// Scopes that may all hold their quota before the LRU can evict one
/// scope's entry for another's.
pub const SCOPES_AT_QUOTA: u32 = 16;

/// Free entries each CPU may hold back in a kernel LRU hash map
/// (`LOCAL_FREE_TARGET` in kernel/bpf/bpf_lru_list.c; kernels from 6.16
/// hold back at most half the table divided among the CPUs, fewer).
pub const LRU_LOCAL_FREE_PER_CPU: u32 = 128;

/// Smallest quota, whatever the node: below it learning is of little use.
pub const MIN_SCOPE_QUOTA: u32 = 64;

/// Entries one scope may hold in a learned table of `capacity` entries on
/// a node with `possible_cpus` CPUs.
///
/// A kernel LRU hash map does not wait until it is full to evict: each CPU
/// keeps up to `LRU_LOCAL_FREE_PER_CPU` free entries of its own, and a CPU
/// that finds none left, on its own list or the shared one, evicts the
/// least recently used entry, whoever's it is. So eviction can begin once
/// the table holds `capacity - 128 x possible CPUs` entries. The quota
/// divides that by `SCOPES_AT_QUOTA`: 16 scopes can all be at their quota
/// without one evicting another's entry. (16384 entries: 1008 on 2 CPUs,
/// 512 on 64; from 120 CPUs on the floor of 64 applies and the number of
/// scopes shrinks: `(capacity - 128 x CPUs) / 64`.)
pub fn scope_quota(capacity: u32, possible_cpus: u32) -> u32 {
    let usable = capacity.saturating_sub(LRU_LOCAL_FREE_PER_CPU.saturating_mul(possible_cpus));
    (usable / SCOPES_AT_QUOTA).max(MIN_SCOPE_QUOTA)
}

/// One learned destination, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LearnedDestination {
    /// Scope id (0: node scope, else a namespace's).
    pub scope_id: u32,
    /// The namespace of that scope, when known; `None` for the node scope.
    pub namespace: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub observations: u32,
    /// Seconds since the epoch.
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
    /// Whether it gives verdicts (observations >= minObservations).
    pub active: bool,
}

impl LearnedDestination {
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// `"node"` or `"namespace <name>"` (or `"scope <id>"`).
    pub fn scope_label(&self) -> String {
        match (&self.namespace, self.scope_id) {
            (_, 0) => "node".to_owned(),
            (Some(ns), _) => format!("namespace {ns}"),
            (None, id) => format!("scope {id}"),
        }
    }
}

/// The key's address as an `IpAddr` (v4-mapped back to IPv4).
pub fn key_address(addr: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(addr)).to_canonical()
}

/// The 16-byte form the kernel keys by.
pub fn address_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Nanoseconds of CLOCK_BOOTTIME now (the kernel's `bpf_ktime_get_boot_ns`),
/// from /proc/uptime (10 ms resolution: enough for seconds and ttls).
pub fn boot_ns_now() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/uptime").context("reading /proc/uptime")?;
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("parsing /proc/uptime")?;
    Ok((secs * 1e9) as u64)
}

fn unix_of(boot_ns: u64, boot_now: u64, unix_now: Duration) -> u64 {
    let age = Duration::from_nanos(boot_now.saturating_sub(boot_ns));
    unix_now.saturating_sub(age).as_secs()
}

/// The learning maps, opened from the pins.
pub struct LearnedTable {
    table: HashMap<MapData, LearnedKey, LearnedEntry>,
    /// The pinned table's capacity (fixed when it was created).
    capacity: u32,
    config: Array<MapData, LearnConfig>,
    scopes: HashMap<MapData, u32, u32>,
    /// Watched sockets (cookie -> the key a server-first reply would add).
    pending: HashMap<MapData, u64, LearnWatch>,
}

impl LearnedTable {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let table = open(pins, maps::LEARNED)?;
        let capacity = table.info()?.max_entries();
        Ok(Self {
            table: HashMap::try_from(Map::LruHashMap(table))?,
            capacity,
            config: Array::try_from(Map::Array(open(pins, maps::LEARN_CONFIG)?))?,
            scopes: HashMap::try_from(Map::HashMap(open(pins, maps::LEARN_SCOPES)?))?,
            pending: HashMap::try_from(Map::LruHashMap(open(pins, maps::LEARN_PENDING)?))?,
        })
    }

    pub fn config(&self) -> Result<LearnConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Writes the settings the kernel reads at every unclassified connect.
    /// `outside_pods`: processes in no known pod cgroup learn into the
    /// node scope (`--learn-outside-pods`; `scope: node` shares one table
    /// among all clients anyway).
    pub fn write_config(&mut self, learning: &Learning, outside_pods: bool) -> Result<()> {
        let mut flags = 0;
        if learning.enabled {
            flags |= LEARN_FLAG_ENABLED;
        }
        if learning.scope == LearningScope::Node {
            flags |= LEARN_FLAG_NODE_SCOPE;
        }
        if outside_pods {
            flags |= LEARN_FLAG_OUTSIDE_PODS;
        }
        let config = LearnConfig {
            flags,
            min_observations: learning.min_observations,
            scope_quota: self.scope_quota()?,
            hints: 0,
        };
        let empty = self.is_empty();
        self.write_hinted(config, empty).map(drop)
    }

    /// Sets or clears the "nothing learned" hint to match what the table
    /// holds now (the agent's expiry or a purge may have emptied it; the
    /// kernel clears the hint itself when it learns). Returns whether the
    /// hint is set.
    pub fn refresh_hint(&mut self) -> Result<bool> {
        let config = self.config()?;
        let hinted = config.hints & LEARN_HINT_NOTHING_LEARNED != 0;
        let empty = self.is_empty();
        if hinted == empty {
            return Ok(hinted);
        }
        self.write_hinted(config, empty)
    }

    /// Writes `config` with `LEARN_HINT_NOTHING_LEARNED` set if the table
    /// is `empty` (as the caller just saw it). Connects skip the table while the hint is set, so it must
    /// never hide an entry for long: the kernel clears it right after each
    /// insert, and an insert between the look here and the write (which
    /// would set it again over the kernel's clear) is caught by a second
    /// look right after the write. The window in which a connect can miss a
    /// learned entry is that of two map syscalls, and only for the first
    /// entry the node learns. Returns whether the hint is set.
    fn write_hinted(&mut self, mut config: LearnConfig, empty: bool) -> Result<bool> {
        config.hints &= !LEARN_HINT_NOTHING_LEARNED;
        if empty {
            config.hints |= LEARN_HINT_NOTHING_LEARNED;
        }
        self.config
            .set(0, config, 0)
            .context("writing the learning settings")?;
        if empty && !self.is_empty() {
            config.hints &= !LEARN_HINT_NOTHING_LEARNED;
            self.config
                .set(0, config, 0)
                .context("writing the learning settings")?;
            return Ok(false);
        }
        Ok(empty)
    }

    /// Whether the learned table holds no entry. An error reading it counts
    /// as "not empty": no hint, every lookup made.
    fn is_empty(&self) -> bool {
        self.table.keys().next().is_none()
    }

    /// This node's quota (see [`scope_quota`]).
    fn scope_quota(&self) -> Result<u32> {
        let capacity = self.capacity;
        let cpus =
            aya::util::nr_cpus().map_err(|(path, err)| anyhow::anyhow!("reading {path}: {err}"))?;
        Ok(scope_quota(capacity, cpus as u32))
    }

    /// Every entry, raw.
    pub fn raw_entries(&self) -> Vec<(LearnedKey, LearnedEntry)> {
        self.table.iter().filter_map(|e| e.ok()).collect()
    }

    /// Every entry, decoded; `namespaces` names scope ids.
    pub fn entries(&self, namespaces: &BTreeMap<u32, String>) -> Result<Vec<LearnedDestination>> {
        let min = self.config().map(|c| c.min_observations).unwrap_or(1);
        let boot_now = boot_ns_now()?;
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut out: Vec<LearnedDestination> = self
            .raw_entries()
            .into_iter()
            .map(|(k, v)| LearnedDestination {
                scope_id: k.scope,
                namespace: namespaces.get(&k.scope).cloned(),
                address: key_address(k.addr),
                port: k.port,
                observations: v.observations,
                first_seen_unix: unix_of(v.first_seen_ns, boot_now, unix_now),
                last_seen_unix: unix_of(v.last_seen_ns, boot_now, unix_now),
                active: v.observations >= min,
            })
            .collect();
        out.sort_by_key(|e| (e.scope_id, e.address, e.port));
        Ok(out)
    }

    /// The entry for a client of `scope_id` connecting to `dst`, if learned.
    pub fn lookup(&self, scope_id: u32, dst: SocketAddr) -> Option<LearnedEntry> {
        let key = LearnedKey {
            scope: scope_id,
            port: dst.port(),
            _pad: 0,
            addr: address_key(dst.ip()),
        };
        self.table.get(&key, 0).ok()
    }

    /// Removes everything learned under the scope ids in `ids`: entries,
    /// their counts, and watches of sockets that would add entries later.
    /// For ids the agent frees, and again before it reuses one, so a new
    /// namespace never inherits an old one's destinations or quota use.
    /// Returns how many entries and watches were removed.
    pub fn purge_scopes(&mut self, ids: &std::collections::BTreeSet<u16>) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let wanted = |scope: u32| u16::try_from(scope).is_ok_and(|id| ids.contains(&id));
        let mut removed = 0;
        let entries: Vec<LearnedKey> = self
            .table
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| wanted(k.scope))
            .collect();
        for key in entries {
            // Gone already (expired, evicted): as wanted.
            let existed = self.table.remove(&key).is_ok();
            if existed {
                removed += 1;
            } else {
                absent_ok(self.table.remove(&key))
                    .context("removing a learned entry of a freed scope")?;
            }
        }
        let watches: Vec<u64> = self
            .pending
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, w)| wanted(w.key.scope))
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in watches {
            let existed = self.pending.remove(&cookie).is_ok();
            if existed {
                removed += 1;
            } else {
                absent_ok(self.pending.remove(&cookie))
                    .context("removing a watch of a freed scope")?;
            }
        }
        for id in ids {
            absent_ok(self.scopes.remove(&u32::from(*id)))
                .context("removing a freed scope's entry count")?;
        }
        Ok(removed)
    }

    /// Removes entries not seen for `ttl`, then rewrites each scope's entry
    /// count from what is left. Returns how many were removed.
    pub fn expire(&mut self, ttl: Duration) -> Result<usize> {
        let now = boot_ns_now()?;
        let ttl_ns = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut removed = 0;
        let mut counts: StdHashMap<u32, u32> = StdHashMap::new();
        for (key, entry) in self.raw_entries() {
            if now.saturating_sub(entry.last_seen_ns) >= ttl_ns {
                if self.table.remove(&key).is_ok() {
                    removed += 1;
                }
            } else {
                *counts.entry(key.scope).or_default() += 1;
            }
        }
        let stale: Vec<u32> = self
            .scopes
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !counts.contains_key(k))
            .collect();
        for scope in stale {
            let _ = self.scopes.remove(&scope);
        }
        for (scope, n) in counts {
            if self.scopes.get(&scope, 0).ok() != Some(n) {
                let _ = self.scopes.insert(scope, n, 0);
            }
        }
        Ok(removed)
    }
}

/// The scope ids' names and the learned scope choice live with the scope
/// maps, one codec for the agent that writes them and the commands that
/// read them.
pub use crate::datapath::scopes::{learned_scope as lookup_scope, scope_names, scope_of_namespace};

#[cfg(test)]
mod tests;

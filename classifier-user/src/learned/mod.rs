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
    maps, LearnConfig, LearnedEntry, LearnedKey, LEARN_FLAG_ENABLED, LEARN_FLAG_NODE_SCOPE,
    SCOPE_NODE,
};
use serde::Serialize;

pub mod cli;
pub mod suggest;

use crate::{
    datapath::{policy_maps::open, PinDir},
    policy::{Learning, LearningScope},
};

/// Entries one scope may hold: a sixteenth of the table, so at least 16
/// scopes fill their share before the LRU could evict across scopes (a
/// namespace that talks to more than 1024 distinct server-first
/// destinations is not the case learning is for).
pub const SCOPE_QUOTA: u32 = maps::LEARNED_CAPACITY / 16;

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
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
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
    config: Array<MapData, LearnConfig>,
    scopes: HashMap<MapData, u32, u32>,
}

impl LearnedTable {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            table: HashMap::try_from(Map::LruHashMap(open(pins, maps::LEARNED)?))?,
            config: Array::try_from(Map::Array(open(pins, maps::LEARN_CONFIG)?))?,
            scopes: HashMap::try_from(Map::HashMap(open(pins, maps::LEARN_SCOPES)?))?,
        })
    }

    pub fn config(&self) -> Result<LearnConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Writes the settings the kernel reads at every unclassified connect.
    pub fn write_config(&mut self, learning: &Learning) -> Result<()> {
        let mut flags = 0;
        if learning.enabled {
            flags |= LEARN_FLAG_ENABLED;
        }
        if learning.scope == LearningScope::Node {
            flags |= LEARN_FLAG_NODE_SCOPE;
        }
        self.config
            .set(
                0,
                LearnConfig {
                    flags,
                    min_observations: learning.min_observations,
                    scope_quota: SCOPE_QUOTA,
                    _pad: 0,
                },
                0,
            )
            .context("writing the learning settings")
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
        out.sort_by(|a, b| (a.scope_id, a.address, a.port).cmp(&(b.scope_id, b.address, b.port)));
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

/// Scope id -> namespace name, from the pinned `CLS_SCOPE_IDS`.
pub fn scope_names(pins: &PinDir) -> BTreeMap<u32, String> {
    let Ok(data) = open(pins, maps::SCOPE_IDS) else {
        return BTreeMap::new();
    };
    let Ok(ids) = HashMap::<_, classifier_common::NamespaceName, u32>::try_from(Map::HashMap(data))
    else {
        return BTreeMap::new();
    };
    ids.iter()
        .filter_map(|e| e.ok())
        .map(|(name, id)| {
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            (id, String::from_utf8_lossy(&name[..len]).into_owned())
        })
        .collect()
}

/// The scope id of a namespace, from the pins (`None`: never registered).
pub fn scope_of_namespace(pins: &PinDir, namespace: &str) -> Option<u32> {
    scope_names(pins)
        .into_iter()
        .find(|(_, n)| n == namespace)
        .map(|(id, _)| id)
}

/// The scope a learned lookup for a client uses under `config`.
pub fn lookup_scope(config: &LearnConfig, client_scope: u32) -> u32 {
    if config.flags & LEARN_FLAG_NODE_SCOPE != 0 {
        u32::from(SCOPE_NODE)
    } else {
        client_scope
    }
}

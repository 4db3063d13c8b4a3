//! Reading a consistent-enough snapshot of the counters and tables. Per-CPU
//! counters are summed; nothing here takes a lock the datapath waits on.

use std::io;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use classifier_common::{counters, maps, ConnKey, ConnVerdict, PolicyConfig};
use serde::Serialize;

use crate::datapath::{pins::PinDir, PolicyMaps};

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub connects_total: u64,
    pub opaque_total: u64,
    pub classified_total: u64,
    pub excluded_total: u64,
    pub proxy_queries_total: u64,
    pub errors_total: u64,
    /// Every kernel counter by its stable name.
    pub counters: Vec<(String, u64)>,
    pub verdict_table: VerdictTable,
    pub policy: PolicyInfo,
    /// Most connected-to destination ports, busiest first (at most 10).
    pub top_ports: Vec<PortCount>,
    /// What the agent last reported; `None` if no agent ever ran here.
    pub agent: Option<AgentInfo>,
    /// Learning; `None` if the learning maps cannot be read.
    pub learning: Option<LearningInfo>,
    /// The learned destinations themselves (`learned_destinations` in JSON).
    pub learned_destinations: Vec<crate::learned::LearnedDestination>,
    /// The objects the agent's current policy skipped; `None`
    /// if no agent reported any here.
    pub rejected: Option<crate::datapath::status::RejectedReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LearningInfo {
    pub enabled: bool,
    pub scope: &'static str,
    /// Processes in no known pod cgroup learn into the node scope
    /// (`--learn-outside-pods`; always, under `scope: node`).
    pub outside_pods: bool,
    pub min_observations: u32,
    pub entries: usize,
    pub capacity: u32,
    pub scope_quota: u32,
    /// Server-first observations recorded (new entries and repeats).
    pub learned_total: u64,
    /// Learned entries removed by a client-first observation.
    pub contradicted_total: u64,
    /// Connects skip the learned table: the agent saw it empty and the
    /// kernel has learned nothing since (`LEARN_HINT_NOTHING_LEARNED`).
    pub nothing_learned: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    pub pid: u32,
    /// `VERSION commit COMMIT` of the agent's executable, when its pid is a
    /// `classifier` process in this pid namespace (`None` otherwise, e.g.
    /// read from the host while the agent runs in a container).
    pub version: Option<String>,
    /// Seconds since the agent last wrote its status (it does every tick;
    /// a large value means it is not running).
    pub status_age_s: u64,
    pub last_apply_age_s: Option<u64>,
    pub policy_errors: u64,
    pub kubernetes: Option<KubernetesInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KubernetesInfo {
    pub connected: bool,
    pub sync_errors: u64,
    pub last_sync_age_s: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerdictTable {
    pub entries: u64,
    pub capacity: u64,
    /// Published verdicts that left the table before their connection
    /// closed: published - withdrawn - ambiguous - still present.
    pub lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyInfo {
    pub generation: u32,
    pub rules: u32,
    pub v4_entries: u32,
    pub v6_entries: u32,
    pub default_opaque_ports: u32,
    pub excluded_uids: u32,
    pub mark: Option<(u32, u32)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortCount {
    pub port: u16,
    pub connects: u64,
}

impl Snapshot {
    /// The counter `index` (one of `classifier_common::counters`'
    /// constants, so a misspelt name cannot silently read 0).
    pub fn counter(&self, index: u32) -> u64 {
        let Some((_, name)) = counters::NAMES.iter().find(|(i, _)| *i == index) else {
            return 0;
        };
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// Turns "no such file" and "permission denied" into the one line a user
/// needs.
fn open_map(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).map_err(|err| {
        let io_kind = match &err {
            MapError::SyscallError(e) => Some(e.io_error.kind()),
            _ => None,
        };
        match io_kind {
            Some(io::ErrorKind::NotFound) => anyhow!(
                "no classifier is installed at {} (missing {}); start one with `classifier agent`",
                pins.root().display(),
                path.display()
            ),
            Some(io::ErrorKind::PermissionDenied) => anyhow!(
                "permission denied opening {}: reading the classifier's maps needs root",
                path.display()
            ),
            _ => anyhow!(err).context(format!("opening {}", path.display())),
        }
    })
}

pub fn read_snapshot(pins: &PinDir) -> Result<Snapshot> {
    check_installed(pins)?;
    let values = read_counters(pins)?;
    let get = |i: u32| values[i as usize];
    let verdict_table = verdict_table(pins, &get)?;
    let top_ports = top_ports(pins)?;
    // Opened through the policy writer's own code so both agree on slots.
    let config: PolicyConfig = PolicyMaps::open(pins)?.active_config()?;
    let learning = learning_snapshot(pins);
    Ok(Snapshot {
        connects_total: get(counters::CONNECT4)
            + get(counters::CONNECT6)
            + get(counters::CONNECT6_V4MAPPED),
        opaque_total: get(counters::VERDICT_OPAQUE),
        classified_total: get(counters::VERDICT_OPAQUE)
            + get(counters::VERDICT_HTTP1)
            + get(counters::VERDICT_HTTP2)
            + get(counters::VERDICT_DETECT),
        excluded_total: get(counters::EXCLUDED),
        proxy_queries_total: get(counters::QUERY_CLASSIFIED) + get(counters::QUERY_UNKNOWN),
        errors_total: counters::ERRORS.iter().map(|i| get(*i)).sum(),
        counters: counters::NAMES
            .iter()
            .map(|(i, name)| (name.to_string(), get(*i)))
            .collect(),
        verdict_table,
        policy: policy_info(&config),
        top_ports,
        agent: agent_info(pins),
        learning: learning.as_ref().map(|(config, entries)| LearningInfo {
            enabled: config.flags & classifier_common::LEARN_FLAG_ENABLED != 0,
            scope: if config.flags & classifier_common::LEARN_FLAG_NODE_SCOPE != 0 {
                "node"
            } else {
                "namespace"
            },
            outside_pods: config.flags
                & (classifier_common::LEARN_FLAG_OUTSIDE_PODS
                    | classifier_common::LEARN_FLAG_NODE_SCOPE)
                != 0,
            min_observations: config.min_observations,
            entries: entries.len(),
            capacity: classifier_common::maps::LEARNED_CAPACITY,
            scope_quota: config.scope_quota,
            learned_total: get(counters::LEARN_SERVER_FIRST),
            contradicted_total: get(counters::LEARN_CONTRADICTED),
            nothing_learned: config.hints & classifier_common::LEARN_HINT_NOTHING_LEARNED != 0,
        }),
        learned_destinations: learning.map(|(_, e)| e).unwrap_or_default(),
        rejected: crate::datapath::status::RejectedReport::read(pins),
    })
}

/// The pin directory exists and can be read: the one line a user needs
/// when it cannot.
fn check_installed(pins: &PinDir) -> Result<()> {
    let root = crate::sys::process::is_root();
    if !root && !pins.root().exists() {
        // The pin directory is root-only, so it is invisible either way.
        bail!(
            "reading the classifier's maps needs root (its pins under {} are root-only)",
            pins.root().display()
        );
    }
    if !pins.root().exists() {
        bail!(
            "no classifier is installed at {} (the directory does not exist); start one with `classifier agent`",
            pins.root().display()
        );
    }
    Ok(())
}

/// Every kernel counter, summed over CPUs, by index.
fn read_counters(pins: &PinDir) -> Result<Vec<u64>> {
    let counter_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open_map(pins, maps::COUNTERS)?))?;
    let mut values = vec![0u64; counters::COUNT as usize];
    for (index, value) in values.iter_mut().enumerate() {
        let per_cpu = counter_map
            .get(&(index as u32), 0)
            .context("reading counters")?;
        *value = per_cpu.iter().sum();
    }
    Ok(values)
}

/// The verdict table's size, and the verdicts it lost (from the counters
/// `get` reads).
fn verdict_table(pins: &PinDir, get: &impl Fn(u32) -> u64) -> Result<VerdictTable> {
    let verdicts: HashMap<MapData, ConnKey, ConnVerdict> =
        HashMap::try_from(Map::HashMap(open_map(pins, maps::VERDICTS)?))?;
    let capacity = u64::from(verdicts.map().info()?.max_entries());
    let entries = verdicts.keys().filter(|k| k.is_ok()).count() as u64;
    Ok(VerdictTable {
        entries,
        capacity,
        // Each ambiguity turns two published verdicts into one entry.
        lost: get(counters::PUBLISHED)
            .saturating_sub(get(counters::UNPUBLISHED))
            .saturating_sub(get(counters::PUBLISH_AMBIGUOUS))
            .saturating_sub(entries),
    })
}

/// The 10 most connected-to destination ports, busiest first.
fn top_ports(pins: &PinDir) -> Result<Vec<PortCount>> {
    let ports: PerCpuHashMap<MapData, u32, u64> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(open_map(pins, maps::PORT_COUNTS)?))?;
    let mut top_ports: Vec<PortCount> = ports
        .iter()
        .filter_map(|r| r.ok())
        .map(|(port, per_cpu)| PortCount {
            port: port as u16,
            connects: per_cpu.iter().sum(),
        })
        .collect();
    top_ports.sort_by(|a, b| b.connects.cmp(&a.connects).then(a.port.cmp(&b.port)));
    top_ports.truncate(10);
    Ok(top_ports)
}

fn policy_info(config: &PolicyConfig) -> PolicyInfo {
    PolicyInfo {
        generation: config.generation,
        rules: config.rule_count,
        v4_entries: config.v4_entries,
        v6_entries: config.v6_entries,
        default_opaque_ports: config.default_port_count,
        excluded_uids: config.excluded_uid_count,
        mark: (config.flags & classifier_common::CONFIG_FLAG_MARK != 0)
            .then_some((config.mark_value, config.mark_mask)),
    }
}

/// The learning settings and entries, if readable.
fn learning_snapshot(
    pins: &PinDir,
) -> Option<(
    classifier_common::LearnConfig,
    Vec<crate::learned::LearnedDestination>,
)> {
    let table = crate::learned::LearnedTable::open(pins).ok()?;
    let config = table.config().ok()?;
    let entries = table.entries(&crate::learned::scope_names(pins)).ok()?;
    Some((config, entries))
}

fn agent_info(pins: &PinDir) -> Option<AgentInfo> {
    use classifier_common::{AGENT_FLAG_KUBERNETES, AGENT_FLAG_KUBERNETES_CONNECTED};
    let status = crate::datapath::status::StatusMap::read(pins)?;
    let now = crate::datapath::status::unix_now();
    let age = |t: u64| (t != 0).then(|| now.saturating_sub(t));
    Some(AgentInfo {
        pid: status.pid,
        version: running_version(status.pid),
        status_age_s: now.saturating_sub(status.updated_unix),
        last_apply_age_s: age(status.last_apply_unix),
        policy_errors: status.policy_errors,
        kubernetes: (status.flags & AGENT_FLAG_KUBERNETES != 0).then(|| KubernetesInfo {
            connected: status.flags & AGENT_FLAG_KUBERNETES_CONNECTED != 0,
            sync_errors: status.sync_errors,
            last_sync_age_s: age(status.last_sync_unix),
        }),
    })
}

/// The version embedded in the running agent's executable, if `pid` is a
/// `classifier` process here.
fn running_version(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "classifier" {
        return None;
    }
    let exe = std::fs::read(format!("/proc/{pid}/exe")).ok()?;
    crate::build_info::embedded_version(&exe)
}

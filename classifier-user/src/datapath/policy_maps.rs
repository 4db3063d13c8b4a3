//! Writing a compiled policy into the kernel's maps, as one atomic switch.
//!
//! Every policy map is keyed by slot (0 or 1). `apply` fills the inactive
//! slot, flips `CLS_ACTIVE_SLOT` (a single 4-byte array write), waits for
//! connects that read the old slot to finish, then empties the old slot.
//! A connect reads the slot once, so it sees one whole policy.

use std::{thread, time::Duration, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData};
use classifier_common::{
    excluded_uid_key, maps, PolicyConfig, RuleKeyV4, RuleKeyV6, RuleVerdict, CONFIG_FLAG_MARK,
    DEFAULT_PORT_WORDS,
};

use super::pins::PinDir;
use crate::policy::compile::{key_v4, key_v6, CompiledPolicy};

/// How long to wait after the switch before deleting the old slot. eBPF
/// programs run to completion in microseconds under RCU; this is a wide
/// margin for a connect that read the old slot just before the switch.
const GRACE: Duration = Duration::from_millis(20);

pub struct PolicyMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, PolicyConfig>,
    v4: LpmTrie<MapData, RuleKeyV4, RuleVerdict>,
    v6: LpmTrie<MapData, RuleKeyV6, RuleVerdict>,
    default_ports: Array<MapData, u64>,
    excluded: HashMap<MapData, u64, u8>,
    /// The inactive slot may hold entries of a failed `apply`.
    inactive_dirty: bool,
}

/// What an `apply` did, for logs and benchmarks.
#[derive(Clone, Debug)]
pub struct Applied {
    pub generation: u32,
    pub slot: u32,
    pub v4_entries: usize,
    pub v6_entries: usize,
    pub elapsed: Duration,
}

pub(crate) fn open(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl PolicyMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            active: Array::try_from(Map::Array(open(pins, maps::ACTIVE_SLOT)?))?,
            config: Array::try_from(Map::Array(open(pins, maps::POLICY_CONFIG)?))?,
            v4: LpmTrie::try_from(Map::LpmTrie(open(pins, maps::RULES_V4)?))?,
            v6: LpmTrie::try_from(Map::LpmTrie(open(pins, maps::RULES_V6)?))?,
            default_ports: Array::try_from(Map::Array(open(pins, maps::DEFAULT_PORTS)?))?,
            excluded: HashMap::try_from(Map::HashMap(open(pins, maps::EXCLUDED_UIDS)?))?,
            // Unknown until checked: an agent may have died mid-apply.
            inactive_dirty: true,
        })
    }

    pub fn active_slot(&self) -> Result<u32> {
        Ok(self.active.get(&0, 0)? & 1)
    }

    /// The settings of the policy connects currently see.
    pub fn active_config(&self) -> Result<PolicyConfig> {
        Ok(self.config.get(&self.active_slot()?, 0)?)
    }

    /// Empties the inactive slot. An agent killed in the middle of `apply`
    /// can leave a half-written one behind; call this once after adopting.
    pub fn clear_inactive(&mut self) -> Result<()> {
        let inactive = self.active_slot()? ^ 1;
        self.clear_slot(inactive)?;
        self.inactive_dirty = false;
        Ok(())
    }

    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<Applied> {
        let started = Instant::now();
        let old = self.active_slot()?;
        let new = old ^ 1;
        let generation = self.config.get(&old, 0)?.generation.wrapping_add(1).max(1);
        let slot = new as u8;
        if self.inactive_dirty {
            self.clear_slot(new)?;
        }
        // Until the switch below succeeds, the slot holds a partial policy.
        self.inactive_dirty = true;

        for entry in &policy.v4 {
            let (prefix_len, data) = key_v4(slot, entry);
            self.v4
                .insert(&Key::new(prefix_len, data), entry.verdict, 0)
                .context("writing an IPv4 rule entry")?;
        }
        for entry in &policy.v6 {
            let (prefix_len, data) = key_v6(slot, entry);
            self.v6
                .insert(&Key::new(prefix_len, data), entry.verdict, 0)
                .context("writing an IPv6 rule entry")?;
        }
        for (i, word) in policy.default_ports.iter().enumerate() {
            self.default_ports
                .set(new * DEFAULT_PORT_WORDS + i as u32, *word, 0)
                .context("writing the default port bitmap")?;
        }
        for uid in &policy.excluded_uids {
            self.excluded
                .insert(excluded_uid_key(new, *uid), 1, 0)
                .context("writing an excluded UID")?;
        }
        let (flags, mark_value, mark_mask) = match policy.mark {
            Some(mark) => (CONFIG_FLAG_MARK, mark.value, mark.mask),
            None => (0, 0, 0),
        };
        let config = PolicyConfig {
            generation,
            flags,
            mark_value,
            mark_mask,
            rule_count: policy.rule_count,
            v4_entries: policy.v4.len() as u32,
            v6_entries: policy.v6.len() as u32,
            default_port_count: policy.default_ports.iter().map(|w| w.count_ones()).sum(),
            excluded_uid_count: policy.excluded_uids.len() as u32,
            _pad: 0,
        };
        self.config
            .set(new, config, 0)
            .context("writing the policy config")?;

        // The switch.
        self.active
            .set(0, new, 0)
            .context("switching the active policy slot")?;

        thread::sleep(GRACE);
        self.clear_slot(old)?;
        self.inactive_dirty = false;
        Ok(Applied {
            generation,
            slot: new,
            v4_entries: policy.v4.len(),
            v6_entries: policy.v6.len(),
            elapsed: started.elapsed(),
        })
    }

    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let tag = slot as u8;
        let stale_v4: Vec<Key<RuleKeyV4>> = self
            .v4
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data()[0] == tag)
            .collect();
        for key in stale_v4 {
            let _ = self.v4.remove(&key);
        }
        let stale_v6: Vec<Key<RuleKeyV6>> = self
            .v6
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data()[0] == tag)
            .collect();
        for key in stale_v6 {
            let _ = self.v6.remove(&key);
        }
        for i in 0..DEFAULT_PORT_WORDS {
            self.default_ports
                .set(slot * DEFAULT_PORT_WORDS + i, 0, 0)?;
        }
        let stale_uids: Vec<u64> = self
            .excluded
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| (k >> 32) as u32 == slot)
            .collect();
        for key in stale_uids {
            let _ = self.excluded.remove(&key);
        }
        self.config.set(slot, PolicyConfig::default(), 0)?;
        Ok(())
    }
}

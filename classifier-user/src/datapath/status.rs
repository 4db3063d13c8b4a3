//! The agent's own status, pinned so `classifier stats` can show it without
//! talking to the agent (it may not be running).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use classifier_common::{maps, AgentStatus};

use super::{pins::PinDir, policy_maps::open};

pub struct StatusMap(Array<MapData, AgentStatus>);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl StatusMap {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(Array::try_from(Map::Array(open(
            pins,
            maps::AGENT_STATUS,
        )?))?))
    }

    pub fn write(&mut self, status: &AgentStatus) -> Result<()> {
        self.0.set(0, status, 0)?;
        Ok(())
    }

    /// `None` when no agent ever wrote one.
    pub fn read(pins: &PinDir) -> Option<AgentStatus> {
        let map = Self::open(pins).ok()?;
        let status = map.0.get(&0, 0).ok()?;
        (status.updated_unix != 0).then_some(status)
    }
}

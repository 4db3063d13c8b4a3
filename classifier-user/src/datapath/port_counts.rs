//! Keeps the kernel's per-port connect counts (`CLS_PORT_COUNTS`, the
//! "top destination ports" of `classifier stats`) current.
//!
//! The kernel adds an entry at the first connect to a port and only counts
//! ports it has an entry for. A node that connects to many ports over its
//! life (ephemeral services, port scans) would fill the table, and from
//! then on no new port would be counted: the top ports would describe the
//! past. So the agent ages it: when the table is more than three quarters
//! full, it removes the ports with the fewest connects until half of it is
//! free, and new ports are counted again. A removed port that is connected
//! to again starts from its next connect.

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuHashMap};
use classifier_common::maps;

use super::PinDir;

pub struct PortCounts {
    table: PerCpuHashMap<MapData, u32, u64>,
    capacity: usize,
}

impl PortCounts {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let path = pins.map(maps::PORT_COUNTS);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let capacity = data.info()?.max_entries() as usize;
        Ok(Self {
            table: PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?,
            capacity,
        })
    }

    /// Removes the least connected-to ports once the table is more than
    /// three quarters full, down to half. Returns how many it removed.
    pub fn age(&mut self) -> Result<usize> {
        let keys: Vec<u32> = self.table.keys().filter_map(|k| k.ok()).collect();
        let Some(remove) = to_remove(keys.len(), self.capacity) else {
            return Ok(0);
        };
        let mut counted: Vec<(u64, u32)> = keys
            .iter()
            .filter_map(|port| {
                let per_cpu = self.table.get(port, 0).ok()?;
                Some((per_cpu.iter().sum::<u64>(), *port))
            })
            .collect();
        // Fewest connects first; among equals the higher port (ephemeral
        // ranges) first.
        counted.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut removed = 0;
        for (_, port) in counted.into_iter().take(remove) {
            // Gone already (the map changed under us) is as good.
            if self.table.remove(&port).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The most entries a table of `capacity` holds after an ageing pass:
/// three quarters of it (the kernel may add more until the next tick).
pub fn high_water(capacity: usize) -> usize {
    capacity * 3 / 4
}

/// How many entries to remove from a table of `capacity` holding `len`:
/// none up to [`high_water`], else down to half.
fn to_remove(len: usize, capacity: usize) -> Option<usize> {
    (len > high_water(capacity)).then(|| len - capacity / 2)
}

#[cfg(test)]
mod tests;

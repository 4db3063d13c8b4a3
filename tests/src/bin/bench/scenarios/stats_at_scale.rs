//! Scenario 3: `classifier stats` with the verdict table full.

use std::{process::Command, time::Instant};

use anyhow::Result;
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use classifier_common::{maps, ConnKey, ConnVerdict};
use classifier_user::datapath::PinDir;
use serde_json::{json, Value};
use tests::{classifier_bin, run, Sandbox};

use crate::{
    args::Plan,
    stats::{summarize, summary_json},
};

pub(crate) fn stats_at_scale(plan: &Plan, sb: &Sandbox) -> Result<Value> {
    let pins = PinDir::new(&sb.pins);
    let mut verdicts: HashMap<MapData, ConnKey, ConnVerdict> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pins.map(maps::VERDICTS))?))?;
    let capacity = verdicts.map().info()?.max_entries();
    // Fill the table as a busy node would: one entry per open connection.
    for i in 0..capacity {
        let key = ConnKey {
            netns_cookie: 1,
            addr: [
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xff,
                0xff,
                10,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ],
            port: 40000,
            _pad: [0; 6],
        };
        verdicts.insert(
            key,
            ConnVerdict {
                protocol: 1,
                source: 1,
                ..Default::default()
            },
            0,
        )?;
    }
    let mut samples = Vec::new();
    for _ in 0..if plan.quick { 3 } else { 7 } {
        let t = Instant::now();
        run(Command::new(classifier_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&sb.pins))?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(json!({ "entries": capacity, "stats_json_ms": summary_json(summarize(&samples)) }))
}

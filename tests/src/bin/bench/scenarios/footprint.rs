//! Scenario 4: The agent's footprint: resident memory and map memory, with the
//! default policy and with 100k rules.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use classifier_common::maps;
use serde_json::{json, Value};
use tests::Sandbox;

use crate::{
    policies::{policy_yaml, random_policy},
    system::{bpftool_json, rss_kib},
};

pub(super) fn map_memory_bytes(pins: &Path) -> Result<u64> {
    let mut total = 0;
    for name in maps::ALL {
        let info = bpftool_json(&[
            "map",
            "show",
            "pinned",
            pins.join("maps").join(name).to_str().unwrap(),
        ])?;
        total += info["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

pub(crate) fn footprint() -> Result<Value> {
    let mut out = json!({});
    for (label, rules) in [("default_policy", 0usize), ("100k_rules", 100_000)] {
        let mut sb = Sandbox::new("bench-footprint")?;
        let mut args: Vec<String> = Vec::new();
        if rules > 0 {
            let path = sb.dir.join("policy.yaml");
            fs::write(&path, policy_yaml(&random_policy(rules, 0xf00d)))?;
            args = vec!["--policy".into(), path.to_str().unwrap().into()];
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.start_agent(&args)?;
        std::thread::sleep(Duration::from_millis(300));
        out[label] = json!({
            "agent_rss_kib": rss_kib(sb.agent_pid().context("agent pid")?)?,
            "map_memory_bytes": map_memory_bytes(&sb.pins)?,
        });
    }
    Ok(out)
}

//! Scenario 2: Policy scale: compile and write time, and the connect cost, from
//! no rules to the largest rule count.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use classifier_user::{
    datapath::{PinDir, PolicyMaps},
    policy::{compile, PortSet},
};
use serde_json::{json, Value};
use tests::Sandbox;

use super::connect_overhead::connect_loop;
use crate::{
    args::Plan,
    policies::random_policy,
    stats::{interleave, ratio, summarize, summary_json},
};

pub(crate) fn policy_scale(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let mut maps = PolicyMaps::open(&PinDir::new(&attached.pins))?;
    let mut rows = Vec::new();
    let mut baseline_ratio = None;
    for &rules in &plan.rule_counts {
        let policy = random_policy(rules, 0x5eed + rules as u64);
        let t = Instant::now();
        let compiled = compile(&policy)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        // The first write into a slot of unknown contents is a full write.
        let applied = maps.apply(Arc::new(compiled))?;
        eprintln!("bench:   {rules} rules: {} v4 + {} v6 entries, compile {compile_ms:.1} ms, apply {:.1} ms", applied.v4_entries, applied.v6_entries, applied.elapsed.as_secs_f64() * 1e3);
        let repeats = (plan.repeats / 2).max(3);
        let (a, b) = interleave(
            repeats,
            &format!("{rules} rules"),
            || connect_loop(attached, "127.0.0.1:3306", plan.iterations, false),
            || connect_loop(bare, "127.0.0.1:3306", plan.iterations, false),
        )?;
        let r = ratio(&a, &b);
        let baseline = *baseline_ratio.get_or_insert(r.median);
        rows.push(json!({
            "rules": rules,
            "v4_entries": applied.v4_entries,
            "v6_entries": applied.v6_entries,
            "compile_ms": compile_ms,
            "apply_full_ms": applied.elapsed.as_secs_f64() * 1e3,
            "map_writes": applied.map_writes,
            "with_ns": summary_json(summarize(&a)),
            "without_ns": summary_json(summarize(&b)),
            "ratio": summary_json(r),
            "ratio_vs_0_rules": r.median / baseline,
        }));
    }

    // A one-rule change to the largest policy. Apply it once more so both
    // slots hold it, then change one rule's port.
    let largest = *plan.rule_counts.last().unwrap();
    let mut policy = random_policy(largest, 0x5eed + largest as u64);
    maps.apply(Arc::new(compile(&policy)?))?;
    let mut samples_compile = Vec::new();
    let mut samples_apply = Vec::new();
    let mut writes = 0;
    for i in 0..5u16 {
        let rule = &mut policy.rules[0];
        rule.ports = PortSet::new();
        rule.ports.insert(2000 + i);
        let t = Instant::now();
        let compiled = compile(&policy)?;
        samples_compile.push(t.elapsed().as_secs_f64() * 1e3);
        let applied = maps.apply(Arc::new(compiled))?;
        assert!(applied.incremental);
        samples_apply.push(applied.elapsed.as_secs_f64() * 1e3);
        writes = applied.map_writes;
        // Space the changes past the grace period, as real edits are.
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(json!({
        "rows": rows,
        "one_rule_change": {
            "rules": largest,
            "compile_ms": summary_json(summarize(&samples_compile)),
            "apply_ms": summary_json(summarize(&samples_apply)),
            "map_writes": writes,
        },
    }))
}

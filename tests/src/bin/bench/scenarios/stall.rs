//! Scenario 5: The stall it removes: the MariaDB greeting direct, through the
//! detecting proxy with the classifier, and without it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tests::{
    e2e::{World, MARIADB},
    run,
};

use crate::{
    args::Plan,
    stats::{interleave, summarize, summary_json, Summary},
};

fn greeting_ms(world: &World, uid: Option<u32>) -> Result<f64> {
    let out = run(&mut world.sb.probe(&["greeting", MARIADB], uid))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ms"].as_f64().context("probe greeting output")
}

/// Connect to the MariaDB server's greeting: direct (as the proxy's UID,
/// which the nat rules let through), through the reference proxy with the
/// classifier, and through it without (Linkerd's 10 s detection timeout).
pub(crate) fn stall(plan: &Plan) -> Result<Value> {
    if !tests::e2e::prerequisites("bench stall") {
        return Ok(json!({ "status": "skipped: mariadb-server / iptables missing" }));
    }
    let timeout = Duration::from_secs(10);
    let mut world = World::with_detect_timeout("bench-stall", timeout)?;
    let slow_runs = if plan.quick { 1 } else { 3 };
    let mut without = Vec::new();
    for i in 0..slow_runs {
        eprintln!(
            "bench:   through the proxy without the classifier ({}/{slow_runs}, ~10 s each)",
            i + 1
        );
        without.push(greeting_ms(&world, None)?);
    }
    world.sb.start_agent(&[])?;
    let (with, direct) = interleave(
        plan.repeats,
        "with classifier vs direct",
        || greeting_ms(&world, None),
        || greeting_ms(&world, Some(tests::PROXY_UID)),
    )?;
    let (sw, sd) = (summarize(&with), summarize(&direct));
    let row = |path: &str, s: Summary, runs: usize| json!({ "path": path, "ms": summary_json(s), "runs": runs });
    Ok(json!({
        "detect_timeout_s": timeout.as_secs(),
        "rows": [
            row("direct (no proxy)", sd, direct.len()),
            row("through the proxy, with the classifier", sw, with.len()),
            row("through the proxy, without the classifier", summarize(&without), without.len()),
        ],
        "with_minus_direct_ms": sw.median - sd.median,
    }))
}

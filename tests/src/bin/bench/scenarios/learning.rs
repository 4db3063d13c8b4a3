//! Scenario 8: what learning costs a connection the policy gives
//! no verdict: connect + accept + close (the socket is watched: one hash
//! insert at connect, header-option callbacks for its SYN and ACK), and a
//! 1 MiB client-first transfer (the watch ends at the first data segment;
//! the rest of the transfer pays nothing). Learning is on by default, so
//! the attached sandbox's agent runs with it; the bare one has no classifier.

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tests::{run, Sandbox};

use crate::{
    args::Plan,
    scenarios::connect_overhead::connect_loop,
    stats::{interleave, ratio, summarize, summary_json},
};

fn transfer_loop(sb: &Sandbox, addr: &str, iterations: u64, bytes: usize) -> Result<f64> {
    let (n, b) = (iterations.to_string(), bytes.to_string());
    let out = run(&mut sb.probe(&["transfer-loop", addr, &n, &b], None))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_iteration"].as_f64().context("probe output")
}

pub(crate) fn learning(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let addr = "127.0.0.1:8089";
    let (a, b) = interleave(
        plan.repeats,
        "learning_connect",
        || connect_loop(attached, addr, plan.iterations, false),
        || connect_loop(bare, addr, plan.iterations, false),
    )?;
    let connect = json!({
        "addr": addr,
        "with_ns": summary_json(summarize(&a)),
        "without_ns": summary_json(summarize(&b)),
        "ratio": summary_json(ratio(&a, &b)),
    });
    let transfers = (plan.iterations / 50).max(20);
    let (a, b) = interleave(
        plan.repeats,
        "learning_transfer_1mib",
        || transfer_loop(attached, addr, transfers, 1 << 20),
        || transfer_loop(bare, addr, transfers, 1 << 20),
    )?;
    let transfer = json!({
        "addr": addr,
        "iterations": transfers,
        "with_ns": summary_json(summarize(&a)),
        "without_ns": summary_json(summarize(&b)),
        "ratio": summary_json(ratio(&a, &b)),
    });
    Ok(json!({ "connect_no_verdict": connect, "transfer_1mib": transfer }))
}

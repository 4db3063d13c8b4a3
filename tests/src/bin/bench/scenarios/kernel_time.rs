//! `bench --only kernel-time`: the kernel time our programs add to one
//! connection, summed over all of them, against the datapath's budget of
//! 500 ns, in a pass of its own (bpf_stats on, nothing else running), and
//! the with/without ratios of the same connects measured right after it
//! with the statistics off.
//!
//! The unit is one loopback connect + accept + close (linger 0), client
//! and server both in the agent's cgroup, as in scenario 1: a classified
//! destination (3306, a default opaque port) and an unclassified one with
//! learning on, the agent's default (8080). Each program's figure is its
//! runs per connection and nanoseconds per run as the kernel counts them
//! (`run_cnt`, `run_time_ns`); bpf_stats itself adds a few tens of ns per
//! run, so the sum is an upper bound.

use anyhow::Result;
use classifier_common::programs;
use serde_json::{json, Value};
use tests::Sandbox;

use super::connect_overhead::{connect_loop, program_counters, BpfStats};
use crate::{
    args::Plan,
    stats::{interleave, ratio, summarize, summary_json},
};

/// Kernel time per connection the datapath may add, all programs together.
pub(crate) const BUDGET_NS: f64 = 500.0;

const DESTINATIONS: [(&str, &str); 2] = [
    ("classified_3306", "127.0.0.1:3306"),
    ("unclassified_learning_8080", "127.0.0.1:8080"),
];

pub(crate) fn kernel_time(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let mut out = json!({ "budget_ns": BUDGET_NS, "connects_per_loop": plan.iterations });
    {
        let _stats = BpfStats::enable()?;
        for (name, addr) in DESTINATIONS {
            out[name] = per_program(plan, attached, addr)?;
        }
    }
    // The ratios, with the statistics off again: the same loops against a
    // cgroup without the programs, interleaved.
    for (name, addr) in DESTINATIONS {
        let (a, b) = interleave(
            plan.repeats,
            name,
            || connect_loop(attached, addr, plan.iterations, false),
            || connect_loop(bare, addr, plan.iterations, false),
        )?;
        let (sa, sb) = (summarize(&a), summarize(&b));
        out[name]["ratio"] = summary_json(ratio(&a, &b));
        out[name]["with_ns"] = json!(sa.median);
        out[name]["without_ns"] = json!(sb.median);
    }
    Ok(out)
}

/// Each program's runs and ns per connection over one loop to `addr`, and
/// their sum.
fn per_program(plan: &Plan, sb: &Sandbox, addr: &str) -> Result<Value> {
    // The mean over a few loops: one loop of 5,000 connects moves by ~5%.
    let loops = if plan.quick { 2 } else { 3 };
    let before = program_counters(sb)?;
    for _ in 0..loops {
        connect_loop(sb, addr, plan.iterations, false)?;
    }
    let after = program_counters(sb)?;
    // Each loop also makes its warm-up connects (`probe connect-loop`).
    let warm_up = (plan.iterations / 20).max(10);
    let connects = ((plan.iterations + warm_up) * loops) as f64;
    let mut row = json!({ "addr": addr });
    let mut total = 0.0;
    for ((program, c0, t0), (_, c1, t1)) in before.iter().zip(&after) {
        let (runs, ns) = ((c1 - c0) as f64, (t1 - t0) as f64);
        total += ns / connects;
        row["programs"][*program] = json!({
            "runs_per_connect": runs / connects,
            "ns_per_run": if runs > 0.0 { ns / runs } else { 0.0 },
            "ns_per_connect": ns / connects,
        });
    }
    row["total_ns_per_connect"] = json!(total);
    row["within_budget"] = json!(total <= BUDGET_NS);
    Ok(row)
}

/// The pass as Markdown: one row per destination, one column per program.
pub(crate) fn render(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Kernel time per connection (bpf_stats; budget {} ns)\n",
        r["budget_ns"]
    );
    let _ = write!(md, "| destination |");
    for p in programs::ALL {
        let _ = write!(md, " {p} runs x ns |");
    }
    let _ = writeln!(md, " total ns | within budget | ratio (median, p25-p75) |");
    let _ = writeln!(
        md,
        "|---|{}---:|---|---:|",
        "---:|".repeat(programs::ALL.len())
    );
    for (name, _) in DESTINATIONS {
        let v = &r[name];
        let _ = write!(md, "| {name} `{}` |", v["addr"].as_str().unwrap_or(""));
        for p in programs::ALL {
            let x = &v["programs"][p];
            let _ = write!(
                md,
                " {:.2} x {:.0} = {:.0} |",
                num(&x["runs_per_connect"]),
                num(&x["ns_per_run"]),
                num(&x["ns_per_connect"])
            );
        }
        let _ = writeln!(
            md,
            " {:.0} | {} | {:.3} ({:.3}-{:.3}) |",
            num(&v["total_ns_per_connect"]),
            if v["within_budget"] == true {
                "yes"
            } else {
                "NO"
            },
            num(&v["ratio"]["median"]),
            num(&v["ratio"]["p25"]),
            num(&v["ratio"]["p75"]),
        );
    }
    md
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

//! Scenario 1: What a classified connect costs: connect + accept + close in an
//! attached cgroup against a bare one, and the programs' run time as the
//! kernel measures it.

use std::fs;

use anyhow::{Context as _, Result};
use classifier_common::programs;
use serde_json::{json, Value};
use tests::{run, Sandbox};

use crate::{
    args::Plan,
    stats::{interleave, ratio, summarize, summary_json},
    system::bpftool_json,
};

pub(crate) fn connect_loop(sb: &Sandbox, addr: &str, iterations: u64, query: bool) -> Result<f64> {
    let n = iterations.to_string();
    let mut args = vec!["connect-loop", addr, n.as_str()];
    if query {
        args.push("--query");
    }
    let out = run(&mut sb.probe(&args, None))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_iteration"].as_f64().context("probe output")
}

pub(crate) fn connect_overhead(plan: &Plan, attached: &Sandbox, bare: &Sandbox) -> Result<Value> {
    let mut out = json!({});
    for (name, addr) in [
        ("opaque_port_v4", "127.0.0.1:3306"),
        ("other_port_v4", "127.0.0.1:8080"),
        ("opaque_port_v6", "[::1]:3306"),
    ] {
        let (a, b) = interleave(
            plan.repeats,
            name,
            || connect_loop(attached, addr, plan.iterations, false),
            || connect_loop(bare, addr, plan.iterations, false),
        )?;
        let (sa, sb) = (summarize(&a), summarize(&b));
        out[name] = json!({
            "addr": addr,
            "with_ns": summary_json(sa),
            "without_ns": summary_json(sb),
            "ratio": summary_json(ratio(&a, &b)),
            "added_ns": sa.median - sb.median,
        });
    }
    Ok(out)
}

/// Keeps `kernel.bpf_stats_enabled` on while alive (run_time_ns/run_cnt).
pub(crate) struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub(crate) fn enable() -> Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let previous = fs::read_to_string(path).context("reading kernel.bpf_stats_enabled")?;
        fs::write(path, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", self.previous.trim());
    }
}

/// (run_cnt, run_time_ns) of each program, from the kernel.
pub(crate) fn program_counters(sb: &Sandbox) -> Result<Vec<(&'static str, u64, u64)>> {
    let mut out = Vec::new();
    for program in programs::ALL {
        let link = sb.pins.join("links").join(program);
        let link_info = bpftool_json(&["link", "show", "pinned", link.to_str().unwrap()])?;
        let id = link_info["prog_id"].as_u64().context("prog_id")?;
        let prog = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
        out.push((
            program,
            prog["run_cnt"].as_u64().unwrap_or(0),
            prog["run_time_ns"].as_u64().unwrap_or(0),
        ));
    }
    Ok(out)
}

/// Per-program run time as the kernel measures it. Stats collection itself
/// slows every program down, so it is on only for these extra loops, never
/// during the timed comparisons.
///
/// Returns the totals over a classified IPv4 loop (with the proxy's query)
/// and a classified IPv6 loop, as before, and, per destination kind
/// (classified, with and without the query, and unclassified), each
/// program's invocations and nanoseconds per connect + accept + close.
pub(crate) fn program_run_times(plan: &Plan, sb: &Sandbox) -> Result<(Value, Value)> {
    let stats = BpfStats::enable()?;
    let mut per_connect = json!({});
    let mut totals: Vec<(&str, u64, u64)> = Vec::new();
    for (name, addr, query, in_totals) in [
        ("opaque_port_v4_query", "127.0.0.1:3306", true, true),
        ("opaque_port_v6", "[::1]:3306", false, true),
        ("other_port_v4", "127.0.0.1:8080", false, false),
    ] {
        let before = program_counters(sb)?;
        connect_loop(sb, addr, plan.iterations, query)?;
        let after = program_counters(sb)?;
        let mut row = json!({"addr": addr});
        for ((program, c0, t0), (_, c1, t1)) in before.iter().zip(&after) {
            let (runs, ns) = (c1 - c0, t1 - t0);
            row[*program] = json!({
                "runs_per_connect": runs as f64 / plan.iterations as f64,
                "ns_per_connect": ns as f64 / plan.iterations as f64,
                "ns_per_run": if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
            });
            if in_totals {
                match totals.iter_mut().find(|(p, _, _)| p == program) {
                    Some(t) => {
                        t.1 += runs;
                        t.2 += ns;
                    }
                    None => totals.push((program, runs, ns)),
                }
            }
        }
        per_connect[name] = row;
    }
    let mut out = json!({});
    for (program, runs, ns) in totals {
        out[program] = json!({
            "run_cnt": runs,
            "run_time_ns": ns,
            "ns_per_run": if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
        });
    }
    drop(stats);
    Ok((out, per_connect))
}

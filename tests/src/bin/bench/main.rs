//! `cargo xtask bench`: what the classifier costs per connect() and what it
//! saves, measured side by side in one run.
//!
//! Every comparison is interleaved (A B A B ...) and reported as a median
//! with its spread; absolute times are printed but only the ratios matter.
//! Runs as root in its own cgroups, namespaces and pin directories (the
//! test harness's `Sandbox`), and removes them when done.
//!
//! ```text
//! bench [--quick] [--out DIR]      results in DIR/results.json and DIR/results.md
//! bench --only kubernetes           scenario 6 alone, JSON on stdout
//! bench --only kernel-time          kernel ns per connection per program, against
//!                                   the 500 ns budget, and the ratios beside it
//! ```
//!
//! ```text
//! args.rs        the command line and the plan it gives (--quick or full)
//! stats.rs       medians and quartiles, interleaved A/B runs, paired ratios
//! rng.rs         a deterministic generator, so every run measures the same input
//! policies.rs    random policies, and a policy as the agent's YAML
//! scenarios/     what is measured, one file per scenario
//! system.rs      a process's resident memory, bpftool's JSON
//! report.rs      the machine description and the Markdown report
//! ```

#![deny(unsafe_code)]

mod args;
mod policies;
mod report;
mod rng;
mod scenarios;
mod stats;
mod system;

use std::{fs, time::Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tests::Sandbox;

use crate::{
    args::{Args, Plan},
    report::{machine, render_markdown},
    scenarios::*,
};

/// Counts what each structure holds (scenario 6); the agent's own
/// allocator underneath, set up as the agent sets it.
#[global_allocator]
static ALLOC: tests::sys::CountingAlloc = tests::sys::CountingAlloc;

fn main() {
    if let Err(err) = real_main() {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    classifier_user::allocator::configure()?;
    let Args { quick, out, only } = Args::parse(std::env::args().skip(1));
    if !tests::sys::is_root() {
        bail!("benchmarks attach eBPF programs and create cgroups and namespaces: run as root");
    }
    let plan = Plan::new(quick);
    fs::create_dir_all(&out)?;
    let started = Instant::now();

    let mut results = json!({
        "quick": quick,
        "machine": machine(),
        "iterations_per_loop": plan.iterations,
        "repeats": plan.repeats,
    });

    if only.as_deref() == Some("kubernetes") {
        // Scenario 6 alone, for work on the document compiler.
        let mut attached = Sandbox::new("bench-attached")?;
        attached.start_agent(&[])?;
        attached.kill_agent();
        let r = kubernetes_scale(&attached)?;
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    } else if only.as_deref() == Some("kernel-time") {
        // The datapath's kernel-time budget, in a pass of its own.
        let mut attached = Sandbox::new("bench-attached")?;
        let bare = Sandbox::new("bench-bare")?;
        // The bench's clients are in no known pod: they learn (the
        // unclassified scenarios measure the watch) only with this.
        attached.start_agent(&["--learn-outside-pods"])?;
        step("kernel time per connection (bpf_stats), then the ratios");
        results["kernel_time"] = kernel_time(&plan, &attached, &bare)?;
        let markdown = render_kernel_time(&results["kernel_time"]);
        fs::write(
            out.join("kernel-time.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
        fs::write(out.join("kernel-time.md"), &markdown)?;
        println!("{markdown}");
        return Ok(());
    } else if let Some(other) = only {
        bail!("--only {other:?}: the scenarios that run alone are `kubernetes` and `kernel-time`");
    }

    let mut attached = Sandbox::new("bench-attached")?;
    let bare = Sandbox::new("bench-bare")?;
    // As above: learning's scenarios need the watch outside pods.
    attached.start_agent(&["--learn-outside-pods"])?;

    step("1/7 connect overhead (attached vs bare cgroup, interleaved)");
    results["connect_overhead"] = connect_overhead(&plan, &attached, &bare)?;
    let (run_times, per_connect) = program_run_times(&plan, &attached)?;
    results["program_run_time"] = run_times;
    results["program_cost_per_connect"] = per_connect;

    step("7/7 the proxy's query per accepted connection (attached vs bare cgroup)");
    results["proxy_query"] = proxy_query(&plan, &attached, &bare)?;

    step("8/8 learning: a connection without a verdict, watched until its first segment");
    results["learning"] = learning(&plan, &attached, &bare)?;

    step("9/9 new pods: mkdir of a pod cgroup to its namespace scope in CLS_SCOPES");
    results["pod_registration"] = pod_registration(&plan)?;

    step("2/7 policy scale");
    // The bench writes the policy itself from here on, to time each part;
    // the programs stay attached through their pinned links.
    attached.kill_agent();
    results["policy_scale"] = policy_scale(&plan, &attached, &bare)?;
    step("6/7 a cluster's worth of Kubernetes objects (10k Services, 50k and 100k Pods)");
    results["kubernetes_scale"] = kubernetes_scale(&attached)?;

    step("3/7 stats with the verdict table full");
    results["stats_at_scale"] = stats_at_scale(&plan, &attached)?;
    drop(attached);
    drop(bare);

    step("4/7 agent footprint");
    results["footprint"] = footprint()?;

    step("5/7 the stall it removes (MariaDB greeting)");
    results["stall"] = stall(&plan)?;

    results["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    let markdown = render_markdown(&results);
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    fs::write(out.join("results.md"), &markdown)?;
    println!("{markdown}");
    eprintln!(
        "bench: wrote {} and {} in {:.0} s",
        out.join("results.json").display(),
        out.join("results.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn step(what: &str) {
    eprintln!("bench: {what}");
}

//! `cargo xtask bench`: what the classifier costs and what it saves.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{is_root, run_checked, show, step};
use crate::{cargo, prereqs};

/// Build, then measure what the classifier costs and what it saves.
///
/// Connect overhead with and without the programs (interleaved, as
/// ratios), per-program kernel run time, policy scale up to 100k rules,
/// stats with a full verdict table, agent memory, and the MariaDB stall
/// through the reference proxy. Needs root; creates and removes its own
/// cgroups, namespaces and pins. Writes target/bench/results.json and
/// results.md. A full run takes about 3 minutes; --quick under 2.
#[derive(clap::Args)]
pub struct Options {
    /// Fewer iterations and repeats, for use while developing.
    #[arg(long)]
    quick: bool,
    /// Only the kernel-time pass: each program's runs and ns per
    /// connection (bpf_stats), summed against the 500 ns budget, with the
    /// with/without ratios beside it. Writes target/bench/kernel-time.md.
    #[arg(long)]
    kernel_time: bool,
}

pub fn bench(Options { quick, kernel_time }: Options) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach eBPF programs and create cgroups and namespaces: run as root (sudo -E cargo xtask bench)");
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    run_checked(
        cargo::cargo().args(["build", "--release", "-p", "tests", "--bins"]),
        "building the benchmark",
    )?;
    let out_dir = cargo::target_dir().join("bench");
    let mut cmd = Command::new(cargo::target_dir().join("release").join("bench"));
    if quick {
        cmd.arg("--quick");
    }
    if kernel_time {
        cmd.args(["--only", "kernel-time"]);
    }
    cmd.arg("--out").arg(&out_dir).env("CLASSIFIER_BIN", &bin);
    step!("{}", show(&cmd));
    run_checked(&mut cmd, "the benchmark")
}

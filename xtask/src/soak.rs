//! `cargo xtask soak`: the churn soak (`tests/src/soak.rs`).

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{is_root, run_checked, show, step};
use crate::{cargo, prereqs};

/// Build, then compress a year of a large, busy node into minutes.
///
/// A real agent in its own cgroup, pins and network namespace goes
/// through 10,000 policy changes, 50,000 namespace names and 500,000 pods
/// (a policy directory, and a kubelet-style cgroup per pod), and 50,000
/// network namespaces created, publishing verdicts and destroyed. After a
/// warm-up and at the end it counts every kernel table, the agent's
/// memory and its applies, then checks that nothing grew past the
/// warm-up (a named slack), that every apply succeeded, and that a
/// network namespace made after the churn gets its verdict share and no
/// more. Prints its figures. Needs root; takes up to 15 minutes (--short:
/// the suite's version, under 3).
#[derive(clap::Args)]
pub struct Options {
    /// The short scale `cargo xtask test` runs.
    #[arg(long)]
    short: bool,
}

pub fn soak(Options { short }: Options) -> Result<()> {
    if !is_root() {
        bail!("the soak attaches eBPF programs and creates cgroups and network namespaces: run as root (sudo -E cargo xtask soak)");
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    run_checked(
        cargo::cargo().args(["build", "--release", "-p", "tests", "--bins"]),
        "building the soak",
    )?;
    let mut cmd = Command::new(cargo::target_dir().join("release").join("soak"));
    if short {
        cmd.arg("--short");
    }
    cmd.env("CLASSIFIER_BIN", &bin);
    step!("{}", show(&cmd));
    run_checked(&mut cmd, "the soak")
}

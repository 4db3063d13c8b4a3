//! `cargo xtask run`: the agent with the built-in default policy.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{find_on_path, is_root, show, step};
use crate::{cargo, prereqs};

/// Build, then run `classifier agent [AGENT_ARGS...]` as root.
///
/// Loading and attaching eBPF programs needs root (CAP_BPF and
/// CAP_NET_ADMIN). If you are not root, the agent is started through
/// `sudo -E`; without sudo the command fails. Ctrl-C stops the agent.
/// Example: `cargo xtask run -- --help`
#[derive(clap::Args)]
pub struct Options {
    /// Arguments passed to `classifier agent` (put them after `--`).
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<String>,
}

pub fn run(Options { agent_args }: Options) -> Result<()> {
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());

    let mut cmd = if is_root() {
        let mut c = Command::new(&bin);
        c.arg("agent");
        c
    } else if let Some(sudo) = find_on_path("sudo") {
        step!("not root: running the agent through sudo -E (loading eBPF needs root)");
        let mut c = Command::new(sudo);
        c.arg("-E").arg(&bin).arg("agent");
        c
    } else {
        bail!(
            "the agent needs root to load eBPF programs and sudo is not installed; \
             rerun as root: {} agent ...",
            bin.display()
        );
    };
    cmd.args(&agent_args);
    step!("exec {}", show(&cmd));
    // Replace this process: signals (Ctrl-C, SIGTERM) reach the agent (or
    // sudo, which relays them) directly and its exit code becomes ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec {}", show(&cmd)))
}

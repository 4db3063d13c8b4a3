//! `classifier agent`: install or adopt the kernel side, keep the policy in
//! its maps current, and get out of the way. Stopping the agent leaves the
//! programs attached and the last policy active; `--uninstall` removes them.

mod policy_source;
mod preflight;
mod privileges;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    datapath::{self, cgroup, loader::InstallOptions, Installed, PinDir, PolicyMaps},
    policy::compile,
};
pub use policy_source::PolicySource;

pub struct AgentOptions {
    pub cgroup: Option<PathBuf>,
    pub pins: PinDir,
    pub policy: Option<PathBuf>,
    /// Apply policy files that non-root users can change.
    pub allow_untrusted_policy: bool,
    pub watch_interval: Duration,
    pub verdict_capacity: Option<u32>,
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    preflight::check()?;
    let mut source = PolicySource::new(opts.policy.clone(), opts.allow_untrusted_policy);
    // Parse before touching the kernel: a bad file on first start should not
    // leave half an install behind.
    let first = source.load();

    let cgroup = match &opts.cgroup {
        Some(path) => path.clone(),
        None => cgroup::cgroup2_root()?,
    };
    let installed = datapath::install_or_adopt(&InstallOptions {
        pins: &opts.pins,
        cgroup: &cgroup,
        verdict_capacity: opts.verdict_capacity,
    })?;
    match installed {
        Installed::Fresh => {
            tracing::info!(cgroup = %cgroup.display(), pins = %opts.pins.root().display(), "attached programs")
        }
        Installed::Adopted => {
            tracing::info!(pins = %opts.pins.root().display(), "adopted programs attached by a previous agent; no detach")
        }
    }

    let mut maps = PolicyMaps::open(&opts.pins)?;
    // Everything that needs more than CAP_BPF is done.
    match privileges::keep_only(&[privileges::CAP_BPF]) {
        Ok(()) => tracing::info!("dropped every capability but CAP_BPF"),
        Err(err) => tracing::warn!("{err:#}; running with the capabilities it was started with"),
    }
    match first {
        Ok(policy) => apply(&mut maps, &source, &policy)?,
        Err(err) => {
            let active = maps.active_config()?.generation;
            if active == 0 {
                return Err(err.context("no policy is active yet, so the agent cannot start"));
            }
            tracing::error!("{err:#}; keeping the active policy (generation {active})");
        }
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(opts.watch_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                let Some(loaded) = source.reload_if_changed() else { continue };
                if let Err(err) = loaded.and_then(|policy| apply(&mut maps, &source, &policy)) {
                    let active = maps.active_config().map(|c| c.generation).unwrap_or(0);
                    tracing::error!("{err:#}; the previous policy (generation {active}) stays active");
                }
            }
        }
    }
    tracing::info!(
        pins = %opts.pins.root().display(),
        "stopping; programs stay attached with the last policy (`classifier agent --uninstall` removes them)"
    );
    Ok(())
}

fn apply(
    maps: &mut PolicyMaps,
    source: &PolicySource,
    policy: &crate::policy::Policy,
) -> Result<()> {
    let compiled = compile(policy).with_context(|| format!("{}", source.describe()))?;
    let applied = maps.apply(std::sync::Arc::new(compiled))?;
    tracing::info!(
        source = %source.describe(),
        generation = applied.generation,
        rules = policy.rules.len(),
        v4_entries = applied.v4_entries,
        v6_entries = applied.v6_entries,
        elapsed_ms = applied.elapsed.as_secs_f64() * 1e3,
        "policy applied"
    );
    Ok(())
}

pub fn uninstall(pins: &PinDir) -> Result<()> {
    preflight::require_root("uninstalling")?;
    if datapath::uninstall(pins)? {
        tracing::info!(pins = %pins.root().display(), "detached programs and removed all pins");
    } else {
        tracing::info!(pins = %pins.root().display(), "nothing installed there");
    }
    Ok(())
}

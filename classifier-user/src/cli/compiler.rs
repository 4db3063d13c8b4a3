//! `classifier compiler`: publish the cluster's policy sources as
//! ClassifierSlices for the node agents.

use std::time::Duration;

use anyhow::Result;
use classifier_user::{build_info, compiler, sources::kubernetes};

use super::args::CompilerArgs;

pub fn run(args: CompilerArgs) -> Result<()> {
    let identity = match args.identity.filter(|i| !i.is_empty()) {
        Some(identity) => identity,
        None => hostname()?,
    };
    let opts = compiler::CompilerOptions {
        namespace: args.namespace.unwrap_or_else(kubernetes::own_namespace),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration.max(3)),
        objects_per_slice: usize::from(args.objects_per_slice),
        ..compiler::CompilerOptions::default()
    };
    tracing::info!(
        version = build_info::VERSION,
        commit = build_info::COMMIT,
        "classifier compiler starting"
    );
    // Several threads: the watch's parsing and the slice writes overlap.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async { compiler::run(kubernetes::client().await?, opts).await })
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}

//! `cargo xtask build`: the classifier binary (eBPF object embedded).

use anyhow::Result;

use crate::{cargo, prereqs, util::step};

/// Build the classifier (eBPF program + userspace binary).
///
/// Runs `cargo build --release -p classifier-user`; its build script
/// compiles the eBPF crate with nightly via aya-build and embeds the
/// object. Prints the path of the binary (target/release/classifier).
/// Does not need root.
#[derive(clap::Args)]
pub struct Options {
    /// Build the debug profile instead (binary in target/debug/classifier).
    #[arg(long)]
    debug: bool,
}

pub fn build(Options { debug }: Options) -> Result<()> {
    prereqs::ensure()?;
    let bin = cargo::build_classifier(!debug)?;
    step!("built {}", bin.display());
    println!("{}", bin.display());
    Ok(())
}

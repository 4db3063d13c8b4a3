//! Developer tasks for the classifier workspace: `cargo xtask <command>`.
//!
//! The alias lives in `.cargo/config.toml` (`xtask = "run --package xtask --"`).
//! This file only dispatches: each command is its own module with its own
//! options (`build`, `run`, `test`, `demo`, `image`, `bench`, `soak`, `docs`,
//! `completions`, `manpage`, `linkerd_proxy`, `node_e2e`); `cargo`, `prereqs` and `util` are what they
//! share, and `classifier_cli` is the `classifier` binary's clap
//! definitions (included from classifier-user/src/cli/args.rs).

mod bench;
mod build;
mod cargo;
#[allow(
    dead_code,
    reason = "the binary's clap definitions, of which xtask uses only the command tree"
)]
#[path = "../../classifier-user/src/cli/args.rs"]
mod classifier_cli;
mod completions;
mod demo;
mod docs;
mod image;
mod linkerd_proxy;
mod manpage;
mod node_e2e;
mod prereqs;
mod run;
mod soak;
mod test;
mod util;

use std::process;

use clap::{Parser, Subcommand};

use crate::util::Failed;

/// Developer tasks for the eBPF TCP traffic classifier.
///
/// Every command first checks prerequisites and installs what it can: the
/// `nightly` toolchain must exist (install it yourself with
/// `rustup toolchain install nightly`); its `rust-src` component and
/// `bpf-linker` 0.10.0 are installed automatically when missing.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Build(build::Options),
    Run(run::Options),
    Test(test::Options),
    Demo(demo::Options),
    Image(image::Options),
    Bench(bench::Options),
    Docs(docs::Options),
    Soak(soak::Options),
    Completions(completions::Options),
    Manpage(manpage::Options),
    LinkerdProxy(linkerd_proxy::Options),
    NodeE2e(node_e2e::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build(opts) => build::build(opts),
        Cmd::Run(opts) => run::run(opts),
        Cmd::Test(opts) => test::test(opts),
        Cmd::Demo(opts) => demo::demo(opts),
        Cmd::Image(opts) => image::image(opts),
        Cmd::Bench(opts) => bench::bench(opts),
        Cmd::Docs(opts) => docs::docs(opts),
        Cmd::Soak(opts) => soak::soak(opts),
        Cmd::Completions(opts) => completions::completions(opts),
        Cmd::Manpage(opts) => manpage::manpage(opts),
        Cmd::LinkerdProxy(opts) => linkerd_proxy::linkerd_proxy(opts),
        Cmd::NodeE2e(opts) => node_e2e::node_e2e(opts),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        let code = err.downcast_ref::<Failed>().map(|f| f.code).unwrap_or(1);
        process::exit(if code == 0 { 1 } else { code });
    }
}

//! The `classifier` command: the node agent, its stats, a policy explainer,
//! the reference proxy and `check`. See `classifier --help`; the clap
//! definitions are in `cli/args.rs`, and each subcommand in its own module
//! of `cli/`.

#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _};
use classifier_user::build_info;
use cli::{Cli, Command, LogFormat};

/// jemalloc (`classifier_user::allocator` says why).
#[global_allocator]
static GLOBAL: classifier_user::allocator::Allocator = classifier_user::allocator::ALLOCATOR;

fn main() -> ExitCode {
    // `--version`: the version, git commit and map layout (build_info).
    let long_version: &'static str = Box::leak(build_info::long_version().into_boxed_str());
    let matches = Cli::command()
        .version(build_info::VERSION)
        .long_version(long_version)
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if let Err(err) = classifier_user::allocator::configure() {
        tracing::warn!("{err}: freed memory goes back to the system after jemalloc's 10 s");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("classifier: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Hands the parsed command to its module in `cli/`.
fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => cli::agent::run(args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Learned(args) => cli::learned::run(args),
        Command::Suggest(args) => cli::suggest::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Compiler(args) => cli::compiler::run(args),
        Command::Proxy(args) => cli::proxy::run(args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
        assert_eq!(
            super::cli::args::DEFAULT_PIN_DIR,
            classifier_user::datapath::pins::DEFAULT_PIN_DIR
        );
        assert_eq!(
            super::cli::args::DEFAULT_NAMESPACE_ENTRY_BUDGET,
            classifier_policy::sources::linkerd::DEFAULT_NAMESPACE_ENTRY_BUDGET
        );
    }
}

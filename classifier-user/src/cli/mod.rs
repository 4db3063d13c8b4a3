//! One module per subcommand, each a `run(args)` that parses nothing and
//! prints what the library computes; the clap definitions are in `args`.

pub mod args;

pub mod agent;
pub mod check;
pub mod compiler;
pub mod explain;
pub mod learned;
pub mod proxy;
pub mod stats;
pub mod suggest;

pub use args::{Cli, Command, LogFormat};

use anyhow::Result;

/// A single-threaded runtime for the commands that talk to the kernel and
/// an API server one thing at a time.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

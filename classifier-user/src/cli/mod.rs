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
use classifier_user::sources::kubernetes;

use args::{KubernetesSource, SourceArgs};

/// A single-threaded runtime for the commands that talk to the kernel and
/// an API server one thing at a time.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The watch's source the flags name; the slices' namespace is the
/// process's own by default.
pub fn kubernetes_source(args: SourceArgs) -> kubernetes::Source {
    match args.kubernetes_source {
        KubernetesSource::Objects => kubernetes::Source::Objects,
        KubernetesSource::Slices => kubernetes::Source::Slices {
            namespace: args
                .slices_namespace
                .unwrap_or_else(kubernetes::own_namespace),
        },
    }
}

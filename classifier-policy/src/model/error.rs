//! The one error type of policy reading and compiling: every message
//! starts with where the problem is (a path, or an origin such as
//! `policy.yaml` or `egress.yaml#2 (EgressNetwork team-a/nats)`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    // Not a `source`: the message already carries the OS error, and a
    // source would make `{:#}` print it twice.
    #[error("{}: cannot read policy file: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: policy file is {size} bytes, over the limit of {limit} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: policy file is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    /// `message` is the YAML reader's, which already carries the field path
    /// and "at line L column C".
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
    /// A directory symlink that leads back to one of its own ancestors.
    #[error("{}: symlink loop: leads back to {}", path.display(), target.display())]
    SymlinkLoop { path: PathBuf, target: PathBuf },
    #[error("{}: more than {limit} documents in the policy directory", path.display())]
    TooManyDocuments { path: PathBuf, limit: usize },
}

//! The one error type of policy reading and compiling: every message
//! starts with where the problem is (a path, or an origin such as
//! `policy.yaml` or `egress.yaml#2 (EgressNetwork team-a/nats)`).

use std::path::PathBuf;

/// Bytes of a user's text an error message quotes at most. Tenant objects
/// may carry values of up to 256 KiB (an annotation); an error about one
/// must not carry it all into every log line and status it reaches.
pub const QUOTED_TEXT_LIMIT: usize = 96;

/// `text`, or its first [`QUOTED_TEXT_LIMIT`] bytes (on a character
/// boundary) followed by `...` and its full length, for quoting in an error.
pub fn clip(text: &str) -> String {
    if text.len() <= QUOTED_TEXT_LIMIT {
        return text.to_owned();
    }
    let mut end = QUOTED_TEXT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

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

#[cfg(test)]
mod clip_tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_bounds_long_text() {
        assert_eq!(clip("25,587"), "25,587");
        let long = "é".repeat(100_000);
        let clipped = clip(&long);
        assert!(clipped.len() < QUOTED_TEXT_LIMIT + 32, "{}", clipped.len());
        assert!(clipped.ends_with("... (200000 bytes)"), "{clipped}");
    }
}

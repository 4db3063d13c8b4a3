//! Reading policy and manifest files: bounded in size, UTF-8 only, and
//! YAML positions carried over to the file's own line numbers.

use std::io::Read;
use std::path::Path;

use super::parse_policy;
use crate::model::{Policy, PolicyError};

/// A policy is a handful of kilobytes; anything near this is a mistake (a
/// log file, a binary) and should not be read into memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 << 20;

/// Reads and validates the policy file at `path`.
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyError> {
    let text = read_policy_text(path)?;
    parse_policy(&text, &path.display().to_string())
}

/// Reads a policy or manifest file as text: at most
/// [`MAX_POLICY_FILE_BYTES`], UTF-8.
pub fn read_policy_text(path: &Path) -> Result<String, PolicyError> {
    let io = |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let too_large = |size| PolicyError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_POLICY_FILE_BYTES,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_POLICY_FILE_BYTES {
        return Err(too_large(size));
    }
    // The file may grow between stat and read (or be a pipe that reports
    // size 0), so the read itself is bounded too.
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// serde_yaml's message for `e`, with its line number moved down by
/// `line_offset` lines (for a document that starts further into a file).
pub fn yaml_message(e: &serde_yaml::Error, line_offset: usize) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if line_offset > 0 => msg.replace(
            &format!("line {} column {}", loc.line(), loc.column()),
            &format!("line {} column {}", loc.line() + line_offset, loc.column()),
        ),
        _ => msg,
    }
}

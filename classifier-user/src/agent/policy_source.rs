//! Where the agent's policy comes from: the built-in default or a file,
//! watched by polling. Polling (default every second) rather than inotify
//! because ConfigMap volumes update through symlink swaps that an inotify
//! watch on the file misses. Each poll is one `stat`; the file is read only
//! when its identity, size or modification time changed.
//!
//! A policy decides what every process on the node gets, so by default it
//! is only taken from a root-owned file that nobody else can write, in a
//! directory nobody else can write to (sticky directories like /tmp are
//! fine: others cannot replace a root-owned file there).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use crate::policy::{load_policy_file, Policy};

pub struct PolicySource {
    path: Option<PathBuf>,
    allow_untrusted: bool,
    last_seen: Option<Fingerprint>,
}

/// What changes when a file's contents may have: which file the path leads
/// to, its size and its modification time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

impl PolicySource {
    pub fn new(path: Option<PathBuf>, allow_untrusted: bool) -> Self {
        Self {
            path,
            allow_untrusted,
            last_seen: None,
        }
    }

    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "built-in default policy".to_owned(),
        }
    }

    /// Loads the policy now.
    pub fn load(&mut self) -> Result<Policy> {
        let Some(path) = self.path.clone() else {
            return Ok(Policy::builtin_default());
        };
        self.last_seen = fingerprint(&path);
        self.read(&path)
    }

    /// `None` when the file is unchanged (or there is no file), else the
    /// result of loading it again. A file that disappears is reported once
    /// and the active policy stays.
    pub fn reload_if_changed(&mut self) -> Option<Result<Policy>> {
        let path = self.path.clone()?;
        let now = fingerprint(&path);
        if now == self.last_seen && now.is_some() {
            return None;
        }
        if now.is_none() && self.last_seen.is_none() {
            return None;
        }
        self.last_seen = now;
        Some(self.read(&path))
    }

    fn read(&self, path: &Path) -> Result<Policy> {
        if !self.allow_untrusted {
            check_trusted(path)?;
        }
        Ok(load_policy_file(path)?)
    }
}

fn check_trusted(path: &Path) -> Result<()> {
    let Ok(file) = fs::metadata(path) else {
        // Let the parser report a missing or unreadable file.
        return Ok(());
    };
    let hint = "the agent only applies policies that root alone can change; fix the ownership \
                and mode, or pass --allow-untrusted-policy";
    if file.uid() != 0 || file.mode() & 0o022 != 0 {
        bail!(
            "{}: owned by uid {} with mode {:o}, so non-root users can change it; {hint}",
            path.display(),
            file.uid(),
            file.mode() & 0o7777
        );
    }
    let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(dir) = resolved.parent() {
        let d = fs::metadata(dir)?;
        let sticky = d.mode() & 0o1000 != 0;
        if d.uid() != 0 || (d.mode() & 0o022 != 0 && !sticky) {
            bail!(
                "{}: its directory {} (uid {}, mode {:o}) lets non-root users replace it; {hint}",
                path.display(),
                dir.display(),
                d.uid(),
                d.mode() & 0o7777
            );
        }
    }
    Ok(())
}

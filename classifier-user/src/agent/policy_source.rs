//! Where the agent's policy comes from: the built-in default, a file, or a
//! directory of manifests, watched by polling. Polling (default every
//! second) rather than inotify because ConfigMap volumes update through
//! symlink swaps that an inotify watch on the file misses. Each poll is a
//! `stat` per file; files are read only when the identity, size or
//! modification time of one of them changed.
//!
//! A policy decides what every process on the node gets, so by default it
//! is only taken from a root-owned file that nobody else can write, in a
//! directory nobody else can write to (sticky directories like /tmp are
//! fine: others cannot replace a root-owned file there).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Result};

use crate::{
    datapath::status::RejectedReport,
    policy::{sources::load_policy_path_lenient, Policy},
    sources::{compile_documents_report, DocumentSet, Options, Rejected},
};

pub struct PolicySource {
    path: Option<PathBuf>,
    allow_untrusted: bool,
    last_seen: Option<Fingerprint>,
    /// The latest documents from the Kubernetes API (`--kubernetes`); the
    /// file's documents are added to them.
    kubernetes: Option<Arc<DocumentSet>>,
    linkerd: Options,
    /// The objects the last policy composed skipped.
    rejected: std::sync::Mutex<RejectedReport>,
}

/// What changes when the policy's contents may have: for every file, which
/// file the path leads to, its size and its modification time.
type Fingerprint = Vec<(PathBuf, u64, u64, u64, i128)>;

/// Directories are walked to this depth at most (ConfigMap volumes are flat
/// apart from their `..data` indirection).
const MAX_DEPTH: usize = 8;

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = fs::metadata(path).ok()?;
    let mut out = Vec::new();
    if m.is_dir() {
        for file in policy_files(path) {
            if let Ok(fm) = fs::metadata(&file) {
                out.push(stamp(file, &fm));
            }
        }
        // An emptied directory differs from a missing one.
        out.push(stamp(path.to_path_buf(), &m));
    } else {
        out.push(stamp(path.to_path_buf(), &m));
    }
    Some(out)
}

fn stamp(path: PathBuf, m: &fs::Metadata) -> (PathBuf, u64, u64, u64, i128) {
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    (path, m.dev(), m.ino(), m.size(), mtime)
}

/// The YAML files under `dir`, following symlinks but not loops.
fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(meta) = fs::metadata(&d) else { continue };
        if depth > MAX_DEPTH || !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            match fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push((p, depth + 1)),
                Ok(_) if p.extension().is_some_and(|e| e == "yaml" || e == "yml") => files.push(p),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

impl PolicySource {
    pub fn new(path: Option<PathBuf>, allow_untrusted: bool, linkerd: Options) -> Self {
        Self {
            path,
            allow_untrusted,
            last_seen: None,
            kubernetes: None,
            linkerd,
            rejected: std::sync::Mutex::new(RejectedReport::default()),
        }
    }

    pub fn describe(&self) -> String {
        match (&self.path, &self.kubernetes) {
            (Some(path), None) => path.display().to_string(),
            (Some(path), Some(set)) => {
                format!("kubernetes ({} documents) + {}", set.len(), path.display())
            }
            (None, Some(set)) => format!("kubernetes ({} documents)", set.len()),
            (None, None) => "built-in default policy".to_owned(),
        }
    }

    /// Loads the policy now.
    pub fn load(&mut self) -> Result<Policy> {
        if let Some(path) = self.path.clone() {
            self.last_seen = fingerprint(&path);
        }
        self.compose()
    }

    /// A new snapshot from the Kubernetes API; returns the policy it gives
    /// together with the file, if any.
    pub fn kubernetes_changed(&mut self, snapshot: Arc<DocumentSet>) -> Result<Policy> {
        self.kubernetes = Some(snapshot);
        self.compose()
    }

    /// The objects the policy last loaded skipped (empty for the
    /// built-in policy and for classifier-format files).
    pub fn rejected(&self) -> RejectedReport {
        self.rejected.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn set_rejected(&self, rejected: &[Rejected]) {
        if let Ok(mut r) = self.rejected.lock() {
            *r = RejectedReport::of(rejected);
        }
    }

    fn compose(&self) -> Result<Policy> {
        match (&self.path, &self.kubernetes) {
            (None, None) => {
                self.set_rejected(&[]);
                Ok(Policy::builtin_default())
            }
            (Some(path), None) => self.read(path),
            (path, Some(live)) => {
                let mut set = DocumentSet::clone(live);
                if let Some(path) = path {
                    self.check(path)?;
                    for doc in DocumentSet::from_path(path)?.iter() {
                        set.insert(doc.clone());
                    }
                }
                // Objects the compiler rejects are skipped (each logged as
                // a warning) and the rest applies.
                let compiled = compile_documents_report(&set, &self.linkerd)?;
                self.set_rejected(&compiled.rejected);
                Ok(compiled.policy)
            }
        }
    }

    /// `None` when the file is unchanged (or there is no file), else the
    /// result of loading it again. A file that disappears is reported once
    /// and the active policy stays.
    pub fn reload_if_changed(&mut self) -> Option<Result<Policy>> {
        let path = self.path.clone()?;
        let now = fingerprint(&path);
        if now == self.last_seen {
            // Unchanged, or still missing (reported when it went missing).
            return None;
        }
        self.last_seen = now;
        Some(self.compose())
    }

    fn read(&self, path: &Path) -> Result<Policy> {
        self.check(path)?;
        let compiled = load_policy_path_lenient(path, &self.linkerd)?;
        self.set_rejected(&compiled.rejected);
        Ok(compiled.policy)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if !self.allow_untrusted {
            check_trusted(path)?;
            if path.is_dir() {
                for file in policy_files(path) {
                    check_trusted(&file)?;
                }
            }
        }
        Ok(())
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

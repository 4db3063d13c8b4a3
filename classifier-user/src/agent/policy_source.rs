//! Where the agent's policy comes from: the built-in default, a file, a
//! directory of manifests, and the Kubernetes API, the files watched by
//! polling. Polling (default every second) rather than inotify because
//! ConfigMap volumes update through symlink swaps that an inotify watch on
//! the file misses. Each poll is a `stat` per file; a file is read again
//! only when its identity, size or modification time changed, and only
//! that file: its documents become changes of the live policy
//! ([`Loaded::Changes`]), so one changed file among many costs that file.
//!
//! A file in the classifier's own format (not Kubernetes-style documents)
//! is a whole policy ([`Loaded::Policy`]), read and compiled in full.
//!
//! With `--kubernetes` the watch's objects and the files' documents make
//! one document set. A file's document stands in for the watch's object
//! of the same kind, namespace and name; the object comes back when the
//! file no longer has it.
//!
//! A policy decides what every process on the node gets, so by default it
//! is only taken from a root-owned file that nobody else can write, in a
//! directory nobody else can write to (sticky directories like /tmp are
//! fine: others cannot replace a root-owned file there).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    datapath::status::RejectedReport,
    policy::{
        file::read_policy_text,
        live::Change,
        sources::{document::policy_files, is_document_text, load_policy_path_lenient},
        Policy, PolicyError,
    },
    sources::{
        document::{DocumentKey, MAX_DOCUMENTS},
        kubernetes::KubeUpdate,
        Document, DocumentSet, Options, Rejected,
    },
};

/// What a load or reload gives the applier.
pub enum Loaded {
    /// A whole policy: the built-in one, or a file in the classifier's own
    /// format.
    Policy(Policy),
    /// Changes of the document set in force, in order (from nothing when
    /// the policy in force is not a document set).
    Changes(Vec<Change>),
    /// The whole document set (the watch's first list, with the files'
    /// documents): applied as the difference from the set in force.
    Snapshot(DocumentSet),
}

pub struct PolicySource {
    path: Option<PathBuf>,
    allow_untrusted: bool,
    /// The path is a single file in the classifier's own format, as last
    /// read (its fingerprint), or `None` while the path gives documents.
    whole_file: Option<Fingerprint>,
    /// The documents of each policy file, as last read.
    files: BTreeMap<PathBuf, FileDocs>,
    /// The file that holds each document of the files.
    owners: HashMap<DocumentKey, PathBuf>,
    /// The watch's objects that a file's document stands in for.
    shadowed: HashMap<DocumentKey, Arc<Document>>,
    /// The path could not be listed at the last poll (reported once).
    missing: bool,
    /// The files' documents as read were never applied (the first load
    /// failed): the next change of any file reads them all again.
    unapplied: bool,
    /// A file that did not read, while others' changes apply.
    read_error: Option<anyhow::Error>,
    /// The Kubernetes watch delivered its first list (`--kubernetes`).
    kubernetes: bool,
    /// Documents in force, for messages.
    documents: usize,
    linkerd: Options,
    /// The objects the last policy composed skipped.
    rejected: std::sync::Mutex<RejectedReport>,
    /// What was last logged per rejected object.
    rejection_log: std::sync::Mutex<RejectionLog>,
    /// (origin, error) of the rejections last reported, to report a live
    /// policy's only when they change.
    last_rejected: Vec<(String, String)>,
    /// The rejections changed since [`PolicySource::take_rejected_changed`].
    rejected_changed: bool,
}

/// One policy file: what identifies its contents, and its documents' keys.
struct FileDocs {
    stamp: Stamp,
    keys: Vec<DocumentKey>,
}

/// Device, inode, size and modification time (ns) of a file.
type Stamp = (u64, u64, u64, i128);

/// What changes when a whole-policy file's contents may have: which file
/// the path leads to, its size and its modification time.
type Fingerprint = Stamp;

fn stamp(m: &fs::Metadata) -> Stamp {
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    (m.dev(), m.ino(), m.size(), mtime)
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    fs::metadata(path).ok().map(|m| stamp(&m))
}

impl PolicySource {
    pub fn new(path: Option<PathBuf>, allow_untrusted: bool, linkerd: Options) -> Self {
        Self {
            path,
            allow_untrusted,
            whole_file: None,
            files: BTreeMap::new(),
            owners: HashMap::new(),
            shadowed: HashMap::new(),
            missing: false,
            unapplied: false,
            read_error: None,
            kubernetes: false,
            documents: 0,
            linkerd,
            rejected: std::sync::Mutex::new(RejectedReport::default()),
            rejection_log: Default::default(),
            last_rejected: Vec::new(),
            rejected_changed: false,
        }
    }

    pub fn describe(&self) -> String {
        let objects = self.documents.saturating_sub(self.owners.len());
        match (&self.path, self.kubernetes) {
            (Some(path), false) => path.display().to_string(),
            (Some(path), true) => {
                format!("kubernetes ({objects} documents) + {}", path.display())
            }
            (None, true) => format!("kubernetes ({objects} documents)"),
            (None, false) => "built-in default policy".to_owned(),
        }
    }

    /// The number of documents in force (after an apply), for messages.
    pub fn set_documents(&mut self, documents: usize) {
        self.documents = documents;
    }

    /// Loads the policy now: the built-in one, a whole-policy file, or
    /// every file's documents.
    pub fn load(&mut self) -> Result<Loaded> {
        let Some(path) = self.path.clone() else {
            self.set_rejected::<Rejected>(&[]);
            return Ok(Loaded::Policy(Policy::builtin_default()));
        };
        if let Some(policy) = self.read_whole(&path)? {
            return Ok(Loaded::Policy(policy));
        }
        let (changes, error) = self.read_files(&path, None);
        match error {
            Some(err) => {
                self.unapplied = true;
                Err(err)
            }
            None => Ok(Loaded::Changes(changes)),
        }
    }

    /// The error of a file that did not read while the other files'
    /// changes were returned (they apply; this one keeps its documents).
    pub fn take_read_error(&mut self) -> Option<anyhow::Error> {
        self.read_error.take()
    }

    /// An update from the Kubernetes watch, with the files' documents
    /// standing in for its objects where they have the same key.
    pub fn kubernetes_update(&mut self, update: KubeUpdate) -> Result<Loaded> {
        match update {
            KubeUpdate::Snapshot(set) => {
                // Every file read again, as documents (the policy in force
                // may have been a whole-policy file).
                self.kubernetes = true;
                self.whole_file = None;
                self.files.clear();
                self.owners.clear();
                self.shadowed.clear();
                let mut set = Arc::unwrap_or_clone(set);
                if let Some(path) = self.path.clone() {
                    let (changes, error) = self.read_files(&path, None);
                    if let Some(err) = error {
                        // The cluster's objects apply all the same.
                        tracing::error!("{err:#}; applying the Kubernetes objects without it");
                    }
                    for change in changes {
                        if let Change::Apply(doc) = change {
                            let key = doc.key();
                            if let Some(object) = set.insert_shared(doc) {
                                self.shadowed.insert(key, object);
                            }
                        }
                    }
                }
                Ok(Loaded::Snapshot(set))
            }
            KubeUpdate::Changes(changes) => {
                let changes = changes
                    .into_iter()
                    .filter(|c| {
                        let key = match c {
                            Change::Apply(doc) => doc.key(),
                            Change::Delete(key) => key.clone(),
                        };
                        if !self.owners.contains_key(&key) {
                            return true;
                        }
                        match c {
                            Change::Apply(doc) => self.shadowed.insert(key, doc.clone()),
                            Change::Delete(_) => self.shadowed.remove(&key),
                        };
                        false
                    })
                    .collect();
                Ok(Loaded::Changes(changes))
            }
        }
    }

    /// The objects the policy last loaded skipped (empty for the
    /// built-in policy and for classifier-format files).
    pub fn rejected(&self) -> RejectedReport {
        self.rejected.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Whether the rejections changed since the last call (the report
    /// needs writing again).
    pub fn take_rejected_changed(&mut self) -> bool {
        std::mem::take(&mut self.rejected_changed)
    }

    fn set_rejected<R: std::borrow::Borrow<Rejected>>(&mut self, rejected: &[R]) {
        self.rejected_changed = true;
        if let Ok(mut log) = self.rejection_log.lock() {
            log.log_changes(rejected);
        }
        if let Ok(mut r) = self.rejected.lock() {
            *r = RejectedReport::of(rejected);
        }
    }

    /// A live policy's rejections: reported (logged, kept for the report)
    /// when they differ from the last ones. Returns whether they did.
    pub fn set_live_rejected<'a>(&mut self, rejected: impl Iterator<Item = &'a Rejected>) -> bool {
        let rejected: Vec<&Rejected> = rejected.collect();
        let now: Vec<(String, String)> = rejected
            .iter()
            .map(|r| (r.origin.clone(), r.error.to_string()))
            .collect();
        if now == self.last_rejected {
            return false;
        }
        self.last_rejected = now;
        self.set_rejected(&rejected);
        true
    }

    /// `None` when nothing changed (or there is no file), else what
    /// changed: the changed files' documents as changes of the documents
    /// in force (`current`), or a whole-policy file read again. A file
    /// that disappears or no longer reads is reported once and its
    /// documents stay as they were.
    pub fn reload_if_changed(&mut self, current: Option<&DocumentSet>) -> Option<Result<Loaded>> {
        let path = self.path.clone()?;
        if let Some(seen) = self.whole_file {
            let now = stamp_of(&path);
            if now == Some(seen) {
                return None;
            }
            if now.is_none() {
                if self.missing {
                    return None;
                }
                self.missing = true;
                // Worded as every other unreadable policy file is.
                let error = match fs::metadata(&path) {
                    Err(error) => error,
                    Ok(_) => std::io::Error::other("it changed while it was looked at"),
                };
                return Some(Err(PolicyError::Io { path, error }.into()));
            }
            self.missing = false;
            match self.read_whole(&path) {
                Ok(Some(policy)) => return Some(Ok(Loaded::Policy(policy))),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
            // Now documents: read as such, from nothing.
            self.files.clear();
            self.owners.clear();
            let (changes, error) = self.read_files(&path, None);
            return Some(error.map_or(Ok(Loaded::Changes(changes)), Err));
        }
        let (changes, error) = self.read_files(&path, current);
        match error {
            Some(err) if changes.is_empty() => Some(Err(err)),
            Some(err) => {
                self.read_error = Some(err);
                Some(Ok(Loaded::Changes(changes)))
            }
            None if changes.is_empty() => None,
            None => Some(Ok(Loaded::Changes(changes))),
        }
    }

    /// The path as a whole policy in the classifier's own format, or
    /// `None` when it gives documents (a directory, a manifest file, or
    /// anything while the Kubernetes watch is on).
    fn read_whole(&mut self, path: &Path) -> Result<Option<Policy>> {
        if self.kubernetes || path.is_dir() {
            self.whole_file = None;
            return Ok(None);
        }
        // Checked at every poll until it passes: a chmod or chown that
        // makes the file trusted changes no part of its stamp.
        self.check(path)?;
        // Recorded before reading, so a file that does not read (not UTF-8,
        // too large) is reported once, not at every poll.
        self.whole_file = stamp_of(path);
        let text = read_policy_text(path)?;
        if is_document_text(&text) {
            self.whole_file = None;
            return Ok(None);
        }
        let compiled = load_policy_path_lenient(path, &self.linkerd)?;
        self.set_rejected(&compiled.rejected);
        Ok(Some(compiled.policy))
    }

    /// Reads the files under `path` whose stamp changed since the last
    /// read, and returns the changes of their documents (against
    /// `current`, the documents in force, to skip those read unchanged),
    /// with the first error met: a file that does not read keeps its
    /// documents as they were.
    fn read_files(
        &mut self,
        path: &Path,
        current: Option<&DocumentSet>,
    ) -> (Vec<Change>, Option<anyhow::Error>) {
        let listed = match policy_files(path) {
            Ok(files) => {
                self.missing = false;
                files
            }
            Err(err) if self.missing => {
                tracing::debug!("{err}");
                return (Vec::new(), None);
            }
            Err(err) => {
                self.missing = true;
                return (Vec::new(), Some(err.into()));
            }
        };
        let mut changes = Vec::new();
        let mut error = None;
        let stamps: BTreeMap<PathBuf, Option<Stamp>> =
            listed.iter().map(|f| (f.clone(), stamp_of(f))).collect();
        if self.unapplied {
            let changed = stamps.len() != self.files.len()
                || stamps
                    .iter()
                    .any(|(f, s)| self.files.get(f).map(|d| d.stamp) != *s);
            if !changed {
                return (Vec::new(), None);
            }
            self.unapplied = false;
            self.files.clear();
            self.owners.clear();
            self.shadowed.clear();
        }
        // Files gone: their documents go (or give way to the watch's).
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !stamps.contains_key(*f))
            .cloned()
            .collect();
        for file in gone {
            if let Some(old) = self.files.remove(&file) {
                self.drop_keys(old.keys.iter(), &mut changes);
            }
        }
        for (file, now) in stamps {
            let Some(now) = now else { continue };
            if self.files.get(&file).is_some_and(|f| f.stamp == now) {
                continue;
            }
            match self.read_file(&file, now, current, &mut changes) {
                Ok(()) => {}
                Err(err) => {
                    // Not read again until it changes; its documents stay.
                    match self.files.get_mut(&file) {
                        Some(f) => f.stamp = now,
                        None => {
                            self.files.insert(
                                file.clone(),
                                FileDocs {
                                    stamp: now,
                                    keys: Vec::new(),
                                },
                            );
                        }
                    }
                    error.get_or_insert(err);
                }
            }
        }
        (changes, error)
    }

    /// One file read again: its documents' changes appended to `changes`.
    fn read_file(
        &mut self,
        file: &Path,
        now: Stamp,
        current: Option<&DocumentSet>,
        changes: &mut Vec<Change>,
    ) -> Result<()> {
        self.check(file)?;
        let text = read_policy_text(file)?;
        let mut set = DocumentSet::new();
        set.add_text(&text, &file.display().to_string())?;
        let others = self.owners.len() - self.files.get(file).map_or(0, |f| f.keys.len());
        if others + set.len() > MAX_DOCUMENTS {
            bail!(
                "{}: {} documents, with the other files' {others} over the limit of {MAX_DOCUMENTS}",
                file.display(),
                set.len()
            );
        }
        for key in set.docs.keys() {
            if let Some(other) = self.owners.get(key).filter(|o| o.as_path() != file) {
                bail!(
                    "{}: {} is defined twice; the other one is in {}",
                    file.display(),
                    set.docs[key].describe(),
                    other.display()
                );
            }
        }
        let old = self.files.remove(file).map(|f| f.keys).unwrap_or_default();
        let dropped: Vec<&DocumentKey> =
            old.iter().filter(|k| !set.docs.contains_key(*k)).collect();
        self.drop_keys(dropped.into_iter(), changes);
        for (key, doc) in &set.docs {
            let in_force = current.and_then(|c| c.docs.get(key));
            if self
                .owners
                .insert(key.clone(), file.to_path_buf())
                .is_none()
            {
                // Taken over from the watch, if it has that object.
                if let Some(object) = in_force.filter(|_| self.kubernetes) {
                    self.shadowed.insert(key.clone(), object.clone());
                }
            }
            if in_force.is_some_and(|d| same_content(d, doc)) {
                continue;
            }
            changes.push(Change::Apply(doc.clone()));
        }
        self.files.insert(
            file.to_path_buf(),
            FileDocs {
                stamp: now,
                keys: set.docs.into_keys().collect(),
            },
        );
        Ok(())
    }

    /// Documents a file no longer has: removed, or the watch's object
    /// they stood in for back in force.
    fn drop_keys<'a>(
        &mut self,
        keys: impl Iterator<Item = &'a DocumentKey>,
        changes: &mut Vec<Change>,
    ) {
        for key in keys {
            self.owners.remove(key);
            changes.push(match self.shadowed.remove(key) {
                Some(object) => Change::Apply(object),
                None => Change::Delete(key.clone()),
            });
        }
    }

    fn check(&self, path: &Path) -> Result<()> {
        if !self.allow_untrusted {
            check_trusted(path)?;
            if path.is_dir() {
                for file in policy_files(path).with_context(|| path.display().to_string())? {
                    check_trusted(&file)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a document read again is the one in force: same contents and
/// origin (a document that moved to another line of its file is reported
/// with its new origin).
fn same_content(a: &Document, b: &Document) -> bool {
    a == b
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

/// Logs each rejected object once per change of its rejection: a tenant's
/// bad object is recompiled with every policy change on the node, and
/// logging it each time would let one object fill the node's logs. An
/// object is logged again when its error changes, or when it is rejected
/// again after it was fixed or deleted. Holds one hash per rejected object.
#[derive(Default)]
pub struct RejectionLog {
    /// Object (kind, namespace, name, origin) -> hash of its error text.
    last: std::collections::HashMap<(String, Option<String>, String, String), u64>,
}

impl RejectionLog {
    /// Logs the rejections that are new or changed since the last call;
    /// returns how many it logged.
    pub fn log_changes<R: std::borrow::Borrow<Rejected>>(&mut self, rejected: &[R]) -> usize {
        use std::hash::{Hash as _, Hasher as _};
        let mut now = std::collections::HashMap::with_capacity(rejected.len());
        let mut logged = 0;
        for r in rejected {
            let r: &Rejected = r.borrow();
            let key = (
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.origin.clone(),
            );
            let text = r.error.to_string();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut hasher);
            let hash = hasher.finish();
            if self.last.get(&key) != Some(&hash) {
                tracing::warn!(
                    origin = %r.origin,
                    object = %format_args!("{} {}{}", r.kind, r.namespace.as_deref().map_or(String::new(), |n| format!("{n}/")), r.name),
                    error = %text,
                    "skipping an object the policy compiler rejects; the rest of the policy applies (logged once until it changes)"
                );
                logged += 1;
            }
            now.insert(key, hash);
        }
        self.last = now;
        logged
    }
}

#[cfg(test)]
mod rejection_log_tests {
    use super::*;
    use crate::policy::PolicyError;

    fn rejected(name: &str, message: &str) -> Rejected {
        Rejected {
            origin: format!("kubernetes:Service/t/{name}"),
            kind: "Service".into(),
            namespace: Some("t".into()),
            name: name.into(),
            error: PolicyError::Invalid {
                origin: "x".into(),
                field: "metadata.annotations".into(),
                message: message.into(),
            },
        }
    }

    #[test]
    fn a_rejection_is_logged_once_per_change_of_its_object() {
        let mut log = RejectionLog::default();
        let bad = [rejected("a", "bad port"), rejected("b", "bad port")];
        assert_eq!(log.log_changes(&bad), 2);
        // Recompiles with the same objects: nothing logged again.
        for _ in 0..100 {
            assert_eq!(log.log_changes(&bad), 0);
        }
        // One object changes its error: that one only.
        assert_eq!(
            log.log_changes(&[rejected("a", "another bad port"), rejected("b", "bad port")]),
            1
        );
        // Fixed, then broken again: logged again.
        assert_eq!(log.log_changes(&[rejected("b", "bad port")]), 0);
        assert_eq!(
            log.log_changes(&[rejected("a", "another bad port"), rejected("b", "bad port")]),
            1
        );
        // Only the rejected objects are remembered.
        assert_eq!(log.log_changes::<Rejected>(&[]), 0);
        assert!(log.last.is_empty());
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    fn pod(name: &str, ip: &str, opaque: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: t\n  uid: u-{name}\n  annotations: {{config.linkerd.io/opaque-ports: \"{opaque}\"}}\nstatus:\n  phase: Running\n  podIP: {ip}\n"
        )
    }

    /// The keys a batch applies and deletes, as `kind/ns/name` strings.
    fn summary(loaded: Loaded) -> (Vec<String>, Vec<String>) {
        let Loaded::Changes(changes) = loaded else {
            panic!("expected changes")
        };
        let show = |k: &DocumentKey| k.as_str().replace('\0', "/");
        let (mut applied, mut deleted) = (Vec::new(), Vec::new());
        for c in changes {
            match c {
                Change::Apply(doc) => applied.push(show(&doc.key())),
                Change::Delete(key) => deleted.push(show(&key)),
            }
        }
        applied.sort();
        deleted.sort();
        (applied, deleted)
    }

    /// A fresh directory of its own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("policy-dir-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Writes through a rename, as a ConfigMap volume or an editor does
    /// (a new inode: the stamp changes even within the same second).
    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn one_changed_file_is_read_alone_and_gives_only_its_changes() {
        let dir = Scratch::new("one-file");
        let path = dir.path();
        write(
            &path.join("a.yaml"),
            &(pod("a1", "10.0.0.1", "3306") + &pod("a2", "10.0.0.2", "3306")),
        );
        write(&path.join("b.yaml"), &pod("b1", "10.0.0.3", "3306"));
        let mut source = PolicySource::new(Some(path.to_path_buf()), true, Options::default());
        let first = source.load().unwrap();
        assert_eq!(summary(first).0, ["Pod/t/a1", "Pod/t/a2", "Pod/t/b1"]);

        // The documents in force, as the applier's live policy holds them.
        let mut current = DocumentSet::new();
        let mut reread = DocumentSet::new();
        for f in ["a.yaml", "b.yaml"] {
            let text = fs::read_to_string(path.join(f)).unwrap();
            reread
                .add_text(&text, &path.join(f).display().to_string())
                .unwrap();
        }
        for doc in reread.docs.values() {
            current.insert_shared(doc.clone());
        }
        assert!(
            source.reload_if_changed(Some(&current)).is_none(),
            "nothing changed"
        );

        // b1's port changes: b.yaml alone, b1 alone.
        write(&path.join("b.yaml"), &pod("b1", "10.0.0.3", "3307"));
        let changed = source.reload_if_changed(Some(&current)).unwrap().unwrap();
        assert_eq!(summary(changed), (vec!["Pod/t/b1".to_owned()], vec![]));

        // a2 leaves a.yaml; a1, unchanged, is not applied again.
        write(&path.join("a.yaml"), &pod("a1", "10.0.0.1", "3306"));
        let changed = source.reload_if_changed(Some(&current)).unwrap().unwrap();
        assert_eq!(summary(changed), (vec![], vec!["Pod/t/a2".to_owned()]));

        // A file removed: its documents go.
        fs::remove_file(path.join("b.yaml")).unwrap();
        let changed = source.reload_if_changed(Some(&current)).unwrap().unwrap();
        assert_eq!(summary(changed), (vec![], vec!["Pod/t/b1".to_owned()]));
    }

    #[test]
    fn a_file_that_does_not_read_keeps_its_documents_and_the_others_apply() {
        let dir = Scratch::new("bad-file");
        let path = dir.path();
        write(&path.join("a.yaml"), &pod("a1", "10.0.0.1", "3306"));
        write(&path.join("b.yaml"), &pod("b1", "10.0.0.3", "3306"));
        let mut source = PolicySource::new(Some(path.to_path_buf()), true, Options::default());
        source.load().unwrap();
        write(
            &path.join("a.yaml"),
            "---\napiVersion: v1\nkind: Pod\nmetadata: [not, a, map\n",
        );
        write(&path.join("b.yaml"), &pod("b1", "10.0.0.3", "3307"));
        let changed = source.reload_if_changed(None).unwrap().unwrap();
        // b1 applies; a1 is neither applied nor deleted.
        assert_eq!(summary(changed), (vec!["Pod/t/b1".to_owned()], vec![]));
        let err = source.take_read_error().expect("a.yaml's error");
        assert!(format!("{err:#}").contains("a.yaml"), "{err:#}");
        // Reported once: the bad file is not read again until it changes.
        assert!(source.reload_if_changed(None).is_none());
        // A document defined in two files is refused, naming both.
        write(&path.join("a.yaml"), &pod("b1", "10.0.0.9", "3306"));
        let err = source
            .reload_if_changed(None)
            .unwrap()
            .err()
            .expect("defined twice");
        assert!(format!("{err:#}").contains("defined twice"), "{err:#}");
    }
}

//! Kubernetes-style documents, and reading them from files.
//!
//! A [`Document`] is one object (`apiVersion`, `kind`, `metadata`, ...)
//! with its whole body kept as YAML; a [`DocumentSet`] holds the documents
//! of one policy, keyed by (kind, namespace, name) like the API server
//! does, so that a live watch can insert and remove them one by one.
//!
//! [`DocumentSet::from_path`] reads a file or a directory of
//! multi-document YAML (recursively, `*.yaml`/`*.yml`, in name order,
//! skipping dot-names such as a ConfigMap volume's `..data`), at most
//! [`MAX_POLICY_FILE_BYTES`](crate::file::MAX_POLICY_FILE_BYTES) per
//! file and [`MAX_DOCUMENTS`] in all. Every document's origin is
//! `path#N`, N counting the file's non-empty documents from 1.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::intern::intern;
use super::kinds;
use super::objects::{FieldError, Object};
use crate::file::{
    parse_policy_document_at, parse_yaml_value, read_policy_text, ParsedPolicy, API_VERSION,
};
use crate::model::PolicyError;

pub use super::objects::show;

/// At most this many documents in one policy (all files together).
pub const MAX_DOCUMENTS: usize = 10_000;
/// Directories deeper than this below the policy directory are an error.
pub const MAX_DEPTH: usize = 16;

/// One Kubernetes object (or our ClassifierPolicy): its identity, and what
/// the compiler reads of it. The rest of the body is not kept.
///
/// Its API version, kind and namespace are shared with every other
/// document that has the same ([`super::intern`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub api_version: Arc<str>,
    pub kind: Arc<str>,
    /// `None` for cluster-scoped kinds (Namespace, ClassifierPolicy).
    pub namespace: Option<Arc<str>>,
    /// Its key in a set (`kind\0namespace\0name`), made once and shared by
    /// every holder: the watch, its snapshots and the live policy's set.
    /// The name ([`Document::name`]) is its last part.
    key: DocumentKey,
    /// `metadata.creationTimestamp` as written (RFC 3339), for the kinds
    /// whose rules are ordered by age (Server, EgressNetwork); `None` for
    /// the others.
    pub creation_timestamp: Option<Box<str>>,
    /// A Pod's `metadata.uid` (which ties its cgroup to its namespace);
    /// shared with the live policy's index of them.
    pub uid: Option<Arc<str>>,
    pub content: Content,
    /// See [`Document::origin`]; empty for an object of the live watch,
    /// whose origin follows from its identity (one string less per pod).
    origin: Box<str>,
}

/// Whether documents of `kind` are ordered by their creation time.
fn kind_is_aged(kind: &str) -> bool {
    kind == kinds::SERVER.kind || kind == kinds::EGRESS_NETWORK.kind
}

/// The origin of an object of the live watch: `kubernetes:Kind/ns/name`.
pub const KUBERNETES_ORIGIN: &str = "kubernetes:";

/// What the compiler reads of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Of a kind (and API version) the compiler reads: held in the
    /// document itself (one allocation per document, not two).
    Object(Object),
    /// Of a kind the compiler reads, with a field that does not read: the
    /// compiler reports the object and skips it.
    Invalid(Box<FieldError>),
    /// A ClassifierPolicy, as YAML (or JSON, which is YAML) text, parsed
    /// by the compiler with the policy file's own errors; `line_offset`:
    /// the lines of its file before it, so that those errors carry the
    /// file's line numbers.
    ClassifierPolicy { text: Arc<str>, line_offset: usize },
    /// Anything else: not read.
    Other,
}

/// Key of a document in a set: kind, namespace and name, packed in one
/// string (`kind\0namespace\0name`, one allocation rather than three),
/// which sorts as the tuple would: NUL is below every other character.
/// A clone shares the string (a snapshot of a set, the live policy's
/// index of the objects' rules).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentKey(Arc<str>);

impl DocumentKey {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        DocumentKey(format!("{kind}\0{}\0{name}", namespace.unwrap_or("")).into())
    }

    /// `kind\0namespace\0name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Document {
    /// The document for a parsed YAML or JSON object, or `None` when it is
    /// not a Kubernetes-style object (no string `apiVersion` and `kind`).
    /// Fails when `metadata.name`, `metadata.namespace` or
    /// `metadata.creationTimestamp` is there but not a string. A kind the
    /// compiler reads is read now ([`Object::read`]); its errors are kept
    /// as [`Content::Invalid`].
    ///
    /// `origin` is `path#N`, or [`KUBERNETES_ORIGIN`] for an object of the
    /// live watch.
    pub fn from_value(body: Value, origin: String) -> Result<Option<Document>, PolicyError> {
        let (Some(api_version), Some(kind)) = (
            body.get("apiVersion").and_then(Value::as_str),
            body.get("kind").and_then(Value::as_str),
        ) else {
            return Ok(None);
        };
        let (api_version, kind) = (intern(api_version), intern(kind));
        Self::of_kind(api_version, kind, body, origin).map(Some)
    }

    /// [`Document::from_value`] of an object whose API version and kind
    /// the caller knows (a list's items carry neither): those in `body`,
    /// if any, are not read.
    pub fn from_value_of_kind(
        api_version: &str,
        kind: &str,
        body: Value,
        origin: String,
    ) -> Result<Document, PolicyError> {
        Self::of_kind(intern(api_version), intern(kind), body, origin)
    }

    fn of_kind(
        api_version: Arc<str>,
        kind: Arc<str>,
        mut body: Value,
        origin: String,
    ) -> Result<Document, PolicyError> {
        let meta = |field: &str| body.get("metadata").and_then(|m| m.get(field));
        let meta_str = |field: &str| -> Result<Option<String>, PolicyError> {
            match meta(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(PolicyError::Invalid {
                    origin: format!("{origin} ({kind})"),
                    field: format!("metadata.{field}"),
                    message: format!("expected a string, got {}", show(other)),
                }),
            }
        };
        let name = meta_str("name")?.unwrap_or_default();
        let mut namespace = meta_str("namespace")?.filter(|n| !n.is_empty());
        let reader = kinds::by_name(&kind).filter(|k| k.reads_api_version(&api_version));
        // A document of a namespaced kind the compiler reads without
        // `metadata.namespace` is in `default`, as with kubectl.
        if namespace.is_none() && kinds::by_name(&kind).is_some_and(|k| k.namespaced) {
            namespace = Some("default".to_string());
        }
        // Only Servers and EgressNetworks are ordered by age
        // (`linkerd::age_order`): other kinds do not keep it (one string
        // less per pod). It is still checked to be a string.
        let creation_timestamp = meta_str("creationTimestamp")?.filter(|_| kind_is_aged(&kind));
        let mut uid = None;
        let content = if &*kind == crate::file::KIND || api_version.starts_with("classifier.dev/") {
            // The policy parser reads them from the text.
            if let Some(map) = body.as_object_mut() {
                map.insert("apiVersion".into(), api_version.to_string().into());
                map.insert("kind".into(), kind.to_string().into());
            }
            Content::ClassifierPolicy {
                text: body.to_string().into(),
                line_offset: 0,
            }
        } else if let Some(reader) = reader {
            let mut read = || -> Result<Object, FieldError> {
                if name.is_empty() {
                    return Err(FieldError::new("metadata.name", "missing"));
                }
                if reader.kind == kinds::POD.kind {
                    uid = match meta("uid") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.is_empty() => None,
                        Some(Value::String(s)) => Some(Arc::from(s.as_str())),
                        Some(other) => {
                            return Err(FieldError::new(
                                "metadata.uid",
                                format!("expected a string, got {}", show(other)),
                            ))
                        }
                    };
                }
                Object::read(reader, &body)
            };
            match read() {
                Ok(object) => Content::Object(object),
                Err(e) => Content::Invalid(Box::new(e)),
            }
        } else {
            Content::Other
        };
        Ok(Document {
            key: DocumentKey::new(&kind, namespace.as_deref(), &name),
            api_version,
            kind,
            namespace: namespace.as_deref().map(intern),
            creation_timestamp: creation_timestamp.map(Into::into),
            uid,
            content,
            origin: if origin == KUBERNETES_ORIGIN {
                Box::default()
            } else {
                origin.into()
            },
        })
    }

    /// Where it came from: `path#N` (`path#N.items[i]` in a List), or
    /// `kubernetes:Kind/ns/name`.
    pub fn origin(&self) -> std::borrow::Cow<'_, str> {
        if !self.origin.is_empty() {
            return std::borrow::Cow::Borrowed(&self.origin);
        }
        std::borrow::Cow::Owned(match &self.namespace {
            Some(ns) => format!("{KUBERNETES_ORIGIN}{}/{ns}/{}", self.kind, self.name()),
            None => format!("{KUBERNETES_ORIGIN}{}/{}", self.kind, self.name()),
        })
    }

    /// Its key in a set; a clone shares the string.
    pub fn key(&self) -> DocumentKey {
        self.key.clone()
    }

    /// `metadata.name`; empty when the document has none (a
    /// ClassifierPolicy needs no metadata).
    pub fn name(&self) -> &str {
        // The key is `kind\0namespace\0name`, an absent namespace empty.
        let ns = self.namespace.as_deref().map_or(0, str::len);
        &self.key.as_str()[self.kind.len() + 1 + ns + 1..]
    }

    /// `Kind namespace/name` or `Kind name`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name()),
            None if self.name().is_empty() => self.kind.to_string(),
            None => format!("{} {}", self.kind, self.name()),
        }
    }

    /// Whether this is one of ours (a ClassifierPolicy, or any kind under
    /// our API group, which the policy parser then rejects by name).
    pub fn is_classifier_policy(&self) -> bool {
        matches!(self.content, Content::ClassifierPolicy { .. })
    }

    /// What the compiler read of it, if it read.
    pub fn object(&self) -> Option<&Object> {
        match &self.content {
            Content::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Parses it as a ClassifierPolicy, with file positions in its errors
    /// when it was read from a file.
    pub fn parse_classifier_policy(&self) -> Result<ParsedPolicy, PolicyError> {
        match &self.content {
            Content::ClassifierPolicy { text, line_offset } => {
                parse_policy_document_at(text, &self.origin(), *line_offset)
            }
            _ => Err(PolicyError::Invalid {
                origin: self.origin().into_owned(),
                field: "kind".into(),
                message: format!("{} is not a ClassifierPolicy", self.describe()),
            }),
        }
    }
}

/// The documents of one policy, keyed by (kind, namespace, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentSet {
    /// Shared: the live watch keeps the same documents, and a snapshot of
    /// the set costs its keys, not its documents.
    pub docs: BTreeMap<DocumentKey, Arc<Document>>,
}

impl DocumentSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the document with the same (kind, namespace, name);
    /// returns the one replaced.
    pub fn insert(&mut self, doc: Document) -> Option<Arc<Document>> {
        self.insert_shared(Arc::new(doc))
    }

    /// [`DocumentSet::insert`] of a document shared with its holder.
    pub fn insert_shared(&mut self, doc: Arc<Document>) -> Option<Arc<Document>> {
        self.docs.insert(doc.key(), doc)
    }

    pub fn remove(
        &mut self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<Document>> {
        self.docs.remove(&DocumentKey::new(kind, namespace, name))
    }

    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&Document> {
        self.docs
            .get(&DocumentKey::new(kind, namespace, name))
            .map(|d| &**d)
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// In key order: kind, then namespace, then name.
    pub fn iter(&self) -> impl Iterator<Item = &Document> {
        self.docs.values().map(|d| &**d)
    }

    /// The documents of one kind, in (namespace, name) order.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Document> + 'a {
        let prefix = format!("{kind}\0");
        self.docs
            .range(DocumentKey(prefix.as_str().into())..)
            .take_while(move |(k, _)| k.0.starts_with(&prefix))
            .map(|(_, d)| &**d)
    }

    /// Reads a file, or a directory of files, of YAML documents.
    pub fn from_path(path: &Path) -> Result<DocumentSet, PolicyError> {
        let mut set = DocumentSet::new();
        let files = policy_files(path)?;
        let mut count = 0;
        for file in files {
            let text = read_policy_text(&file)?;
            count += set
                .add_text_limited(&text, &file.display().to_string(), MAX_DOCUMENTS - count)
                .map_err(|e| match e {
                    AddError::Policy(e) => e,
                    AddError::TooMany => PolicyError::TooManyDocuments {
                        path: path.to_path_buf(),
                        limit: MAX_DOCUMENTS,
                    },
                })?;
        }
        Ok(set)
    }

    /// Adds the documents of one file's text; `file` names it in origins
    /// (`file#N`). Returns how many non-empty documents the text had.
    /// A (kind, namespace, name) already in the set is an error.
    pub fn add_text(&mut self, text: &str, file: &str) -> Result<usize, PolicyError> {
        self.add_text_limited(text, file, MAX_DOCUMENTS)
            .map_err(|e| match e {
                AddError::Policy(e) => e,
                AddError::TooMany => PolicyError::TooManyDocuments {
                    path: PathBuf::from(file),
                    limit: MAX_DOCUMENTS,
                },
            })
    }

    fn add_text_limited(
        &mut self,
        text: &str,
        file: &str,
        limit: usize,
    ) -> Result<usize, AddError> {
        let raw = split_documents(text);
        if raw.len() > limit {
            return Err(AddError::TooMany);
        }
        for (i, r) in raw.iter().enumerate() {
            let origin = format!("{file}#{}", i + 1);
            let value: Value = parse_yaml_value(&r.text, &origin, r.line_offset)?;
            if value.is_null() {
                continue;
            }
            // `kind: List` (what `kubectl get -o yaml` prints): its items,
            // as documents `file#N.items[i]`.
            let items = match value.get("kind").and_then(Value::as_str) {
                Some("List") if value.get("items").is_some_and(Value::is_array) => {
                    let Some(Value::Array(items)) = value.get("items") else {
                        unreachable!("checked above")
                    };
                    items
                        .iter()
                        .enumerate()
                        .map(|(j, item)| (format!("{origin}.items[{j}]"), item.clone()))
                        .collect()
                }
                _ => vec![(origin.clone(), value)],
            };
            for (origin, value) in items {
                self.add_value(value, origin, r)?;
            }
        }
        Ok(raw.len())
    }

    fn add_value(&mut self, value: Value, origin: String, r: &RawDocument) -> Result<(), AddError> {
        let Some(mut doc) = Document::from_value(value, origin.clone())? else {
            tracing::debug!(%origin, "skipping a document without apiVersion and kind");
            return Ok(());
        };
        if let Some(other) = self.docs.get(&doc.key()) {
            let message = if doc.is_classifier_policy() && other.is_classifier_policy() {
                format!(
                    "at most one ClassifierPolicy is allowed; another one is at {}",
                    other.origin()
                )
            } else {
                format!(
                    "{} is defined twice; the other one is at {}",
                    doc.describe(),
                    other.origin()
                )
            };
            return Err(AddError::Policy(PolicyError::Invalid {
                origin,
                field: "metadata.name".into(),
                message,
            }));
        }
        if doc.is_classifier_policy() && !origin.contains(".items[") {
            // Its own text, so that its errors carry the file's lines.
            doc.content = Content::ClassifierPolicy {
                text: r.text.as_str().into(),
                line_offset: r.line_offset,
            };
        }
        self.docs.insert(doc.key(), Arc::new(doc));
        Ok(())
    }
}

/// The files [`DocumentSet::from_path`] reads for `path`, in the order it
/// reads them: `path` itself if it is a file, else the YAML files below it.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let meta = std::fs::metadata(path).map_err(|error| io_error(path, error))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut walk = Walk {
        ancestors: Vec::new(),
        seen_dirs: HashSet::new(),
        seen_files: HashSet::new(),
        files: &mut files,
    };
    walk.dir(path, &meta, 0)?;
    Ok(files)
}

enum AddError {
    Policy(PolicyError),
    TooMany,
}

impl From<PolicyError> for AddError {
    fn from(e: PolicyError) -> Self {
        AddError::Policy(e)
    }
}

fn io_error(path: &Path, error: std::io::Error) -> PolicyError {
    PolicyError::Io {
        path: path.to_path_buf(),
        error,
    }
}

struct Walk<'a> {
    /// (dev, ino, path) of the directories from the root to here.
    ancestors: Vec<(u64, u64, PathBuf)>,
    seen_dirs: HashSet<(u64, u64)>,
    seen_files: HashSet<(u64, u64)>,
    files: &'a mut Vec<PathBuf>,
}

impl Walk<'_> {
    fn dir(
        &mut self,
        dir: &Path,
        meta: &std::fs::Metadata,
        depth: usize,
    ) -> Result<(), PolicyError> {
        let id = (meta.dev(), meta.ino());
        if let Some((_, _, target)) = self.ancestors.iter().find(|(d, i, _)| (*d, *i) == id) {
            return Err(PolicyError::SymlinkLoop {
                path: dir.to_path_buf(),
                target: target.clone(),
            });
        }
        if depth > MAX_DEPTH {
            return Err(PolicyError::Invalid {
                origin: dir.display().to_string(),
                field: "directory".into(),
                message: format!("nested more than {MAX_DEPTH} directories deep"),
            });
        }
        if !self.seen_dirs.insert(id) {
            // Reached again through another symlink: already read.
            return Ok(());
        }
        self.ancestors.push((id.0, id.1, dir.to_path_buf()));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_error(dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| io_error(dir, e))?;
        entries.sort();
        for p in entries {
            // Dot-names are hidden files and, in a ConfigMap volume, the
            // `..data` indirection whose files the top-level links point at.
            if p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
            {
                continue;
            }
            let m = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(PolicyError::SymlinkLoop {
                        target: std::fs::read_link(&p).unwrap_or_else(|_| p.clone()),
                        path: p,
                    })
                }
                Err(e) => return Err(io_error(&p, e)),
            };
            if m.is_dir() {
                self.dir(&p, &m, depth + 1)?;
            } else if m.is_file()
                && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && self.seen_files.insert((m.dev(), m.ino()))
            {
                self.files.push(p);
            }
        }
        self.ancestors.pop();
        Ok(())
    }
}

/// One document of a multi-document file, before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument {
    pub text: String,
    /// Lines of the file before the document's first line.
    pub line_offset: usize,
}

/// Splits a YAML stream at its `---` and `...` markers (which YAML only
/// allows at the start of a line, never inside a value). Documents with
/// nothing but blanks and comments are dropped.
pub fn split_documents(text: &str) -> Vec<RawDocument> {
    fn marker(line: &str, m: &str) -> Option<usize> {
        let rest = line.strip_prefix(m)?;
        (rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n'])).then_some(m.len())
    }
    fn has_content(text: &str) -> bool {
        text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_offset = 0;
    let mut flush = |cur: &mut String, offset: usize| {
        if has_content(cur) {
            out.push(RawDocument {
                text: std::mem::take(cur),
                line_offset: offset,
            });
        }
        cur.clear();
    };
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if let Some(n) = marker(line, "---") {
            flush(&mut cur, cur_offset);
            // `--- {a: 1}`: the rest of the line belongs to the document.
            cur.push_str(&" ".repeat(n));
            cur.push_str(&line[n..]);
            cur_offset = i;
        } else if marker(line, "...").is_some() {
            flush(&mut cur, cur_offset);
            cur_offset = i + 1;
        } else if cur.is_empty() && line.starts_with('%') {
            // A directive (%YAML, %TAG) before the document: not content.
            cur_offset = i + 1;
        } else {
            if cur.is_empty() {
                cur_offset = i;
            }
            cur.push_str(line);
        }
    }
    flush(&mut cur, cur_offset);
    out
}

/// Whether a file's text is Kubernetes manifests (several documents, or one
/// of a kind the Linkerd compiler reads) rather than a lone ClassifierPolicy.
pub fn is_manifest_text(text: &str) -> bool {
    let docs = split_documents(text);
    match docs.as_slice() {
        [] => false,
        [one] => {
            let Ok(v) = parse_yaml_value(&one.text, "", one.line_offset) else {
                return false;
            };
            let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
            !api.is_empty()
                && api != API_VERSION
                && !api.starts_with("classifier.dev/")
                && kinds::by_name(kind).is_some()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests;

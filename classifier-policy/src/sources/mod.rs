//! Where policy documents come from, and how they become a [`Policy`].
//!
//! ```text
//! --policy FILE|DIR --document--> DocumentSet --linkerd--> Policy
//! (a live watch, in classifier-user) -/               (then crate::compile)
//! ```
//!
//! - [`document`]: Kubernetes-style documents ([`Document`]) keyed by
//!   (kind, namespace, name) in a [`DocumentSet`], read from a file or a
//!   directory of multi-document YAML.
//! - [`kinds`]: the Kubernetes kinds the compiler reads, one table for the
//!   document reader, the compiler and the live watch.
//! - [`linkerd`]: the compiler from ClassifierPolicy and Linkerd's own
//!   resources (EgressNetwork, Server, Service, Pod, Namespace) to a
//!   [`Policy`].
//! - [`load_policy_path`]: a path of either kind (a lone ClassifierPolicy
//!   file, or manifests) to a [`Policy`].
//!
//! This layer depends on [`crate::model`] and [`crate::file`]; neither of
//! them knows it exists.

use std::path::Path;

use crate::file::{parse_policy, read_policy_text};
use crate::model::{Policy, PolicyError};

pub mod document;
pub mod intern;
pub mod kinds;
pub mod linkerd;
pub mod objects;

pub use document::{Document, DocumentSet};
pub use kinds::{KubeKind, KINDS};
pub use linkerd::{compile_documents, compile_documents_report, Compiled, Options, Rejected};

/// Reads the policy at `path`: a ClassifierPolicy file (exactly as
/// [`load_policy_file`](crate::file::load_policy_file), with the same errors), or a directory or a file of
/// Kubernetes manifests (Linkerd's resources, optionally with one
/// ClassifierPolicy), compiled by [`linkerd`] with the
/// default options.
///
/// A file goes the manifest way when it holds more than one document, or
/// one document of a Kubernetes kind the compiler reads (EgressNetwork,
/// Server, Service, Pod, Namespace); anything else is read as a
/// ClassifierPolicy, so a broken one is reported as before.
pub fn load_policy_path(path: &Path) -> Result<Policy, PolicyError> {
    let meta = std::fs::metadata(path).map_err(|error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let set = if meta.is_dir() {
        DocumentSet::from_path(path)?
    } else {
        let text = read_policy_text(path)?;
        if !document::is_manifest_text(&text) {
            return parse_policy(&text, &path.display().to_string());
        }
        let mut set = DocumentSet::default();
        set.add_text(&text, &path.display().to_string())?;
        set
    };
    linkerd::compile_documents(&set, &linkerd::Options::default())
}

/// [`load_policy_path`] that skips and returns the objects the compiler
/// rejects (see [`compile_documents_report`]) instead of failing on the
/// first, and refuses a path without any document it reads (rather than
/// answering with the built-in policy). `path` `-` is standard input.
pub fn load_policy_path_report(path: &Path, opts: &Options) -> Result<Compiled, PolicyError> {
    load_report(path, opts, true)
}

/// [`load_policy_path_report`] for the agent: a directory (a ConfigMap
/// volume) that holds nothing yet is the built-in policy, as before.
pub fn load_policy_path_lenient(path: &Path, opts: &Options) -> Result<Compiled, PolicyError> {
    load_report(path, opts, false)
}

fn load_report(path: &Path, opts: &Options, require: bool) -> Result<Compiled, PolicyError> {
    if path == Path::new("-") {
        let mut text = String::new();
        use std::io::Read as _;
        std::io::stdin()
            .take(crate::file::MAX_POLICY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|error| PolicyError::Io {
                path: path.to_path_buf(),
                error,
            })?;
        if text.len() as u64 > crate::file::MAX_POLICY_FILE_BYTES {
            return Err(PolicyError::TooLarge {
                path: path.to_path_buf(),
                size: text.len() as u64,
                limit: crate::file::MAX_POLICY_FILE_BYTES,
            });
        }
        return text_report(&text, "<stdin>", opts, require);
    }
    let meta = std::fs::metadata(path).map_err(|error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if meta.is_dir() {
        let set = DocumentSet::from_path(path)?;
        return report_set(&set, &path.display().to_string(), opts, require);
    }
    let text = read_policy_text(path)?;
    text_report(&text, &path.display().to_string(), opts, require)
}

/// One text (a file's, or standard input's), as [`load_policy_path_report`].
pub fn load_policy_text_report(
    text: &str,
    name: &str,
    opts: &Options,
) -> Result<Compiled, PolicyError> {
    text_report(text, name, opts, true)
}

fn text_report(
    text: &str,
    name: &str,
    opts: &Options,
    require: bool,
) -> Result<Compiled, PolicyError> {
    if !document::is_manifest_text(text) && !is_list_text(text) {
        return Ok(Compiled {
            policy: parse_policy(text, name)?,
            rejected: Vec::new(),
        });
    }
    let mut set = DocumentSet::default();
    set.add_text(text, name)?;
    report_set(&set, name, opts, require)
}

/// Whether a policy file's text is Kubernetes-style documents (read as a
/// [`DocumentSet`]) rather than the classifier's own policy format.
pub fn is_document_text(text: &str) -> bool {
    document::is_manifest_text(text) || is_list_text(text)
}

fn is_list_text(text: &str) -> bool {
    text.lines().any(|l| l.trim_end() == "kind: List")
}

fn report_set(
    set: &DocumentSet,
    name: &str,
    opts: &Options,
    require: bool,
) -> Result<Compiled, PolicyError> {
    let recognised = set.iter().any(|d| {
        d.is_classifier_policy()
            || kinds::by_name(&d.kind).is_some_and(|k| k.reads_api_version(&d.api_version))
    });
    if require && !recognised {
        return Err(PolicyError::Invalid {
            origin: name.to_string(),
            field: "documents".into(),
            message: format!(
                "no ClassifierPolicy and no document of a kind the compiler reads ({}) in {} document(s)",
                kinds::KINDS
                    .iter()
                    .map(|k| k.kind)
                    .collect::<Vec<_>>()
                    .join(", "),
                set.len()
            ),
        });
    }
    linkerd::compile_documents_report(set, opts)
}

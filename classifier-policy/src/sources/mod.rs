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
pub mod kinds;
pub mod linkerd;

pub use document::{Document, DocumentSet};
pub use kinds::{KubeKind, KINDS};
pub use linkerd::{compile_documents, Options};

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

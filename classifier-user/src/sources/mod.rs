//! Where policy documents come from, and how they become a [`Policy`].
//!
//! ```text
//! --policy FILE|DIR --document--> DocumentSet --linkerd--> Policy
//! --kubernetes      --kubernetes-/                 (then policy::compile)
//! ```
//!
//! - [`document`]: Kubernetes-style documents ([`Document`]) keyed by
//!   (kind, namespace, name) in a [`DocumentSet`], read from a file or a
//!   directory of multi-document YAML.
//! - [`linkerd`]: the compiler from ClassifierPolicy and Linkerd's own
//!   resources (EgressNetwork, Server, Service, Pod, Namespace) to a
//!   [`Policy`](crate::policy::Policy).
//! - [`kubernetes`]: the same documents, watched live from the API server.

pub mod document;
#[cfg(feature = "node")]
pub mod kubernetes;
pub mod linkerd;

pub use document::{Document, DocumentSet};
pub use linkerd::{compile_documents, Options};

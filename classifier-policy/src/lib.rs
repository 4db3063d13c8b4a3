//! The classifier's policy, and nothing else: what protocol a destination
//! `address:port` speaks, how that is written down, and what the kernel's
//! policy maps must hold for it.
//!
//! It is what the fuzz targets, `classifier explain` and any future
//! controller link against. It must not depend on aya, kube, tokio or hyper
//! (or anything else that loads programs, talks to an API server or runs a
//! runtime): `cargo tree -p classifier-policy -e normal` checks it, and
//! the node side (agent, datapath, live Kubernetes watch, stats, metrics,
//! proxy) lives in `classifier-user`. The only crate it shares with the
//! kernel is `classifier-common`, for the wire types.
//!
//! The pipeline:
//!
//! ```text
//! policy.yaml --file--------------------------> Policy --explain--> Decision (`classifier explain`, test oracle)
//! manifests ----sources::linkerd (DocumentSet)--^     \--compile--> CompiledPolicy --agent--> kernel maps
//! ```
//!
//! Layers, each depending only on the ones above it:
//!
//! - [`ports`] and [`model`]: the validated policy ([`Policy`], [`Rule`],
//!   [`Network`], [`PortSet`]), the error type [`PolicyError`] and the
//!   CIDR helpers every reader shares.
//! - [`file`]: the ClassifierPolicy file format; parses and validates the
//!   YAML, with field paths and line numbers in every error; nothing after
//!   it re-validates.
//! - [`sources`]: Kubernetes-style documents and the Linkerd compiler, and
//!   [`load_policy_path`], which takes either a lone ClassifierPolicy file
//!   or a file or directory of Kubernetes manifests.
//! - [`explain`] is the reference semantics, written for clarity: rules
//!   scoped to the client's namespace first, then node-wide rules, then
//!   the default opaque ports.
//! - [`compile`] flattens a policy into longest-prefix-match trie entries
//!   and a default-port bitmap; its tests check it against [`explain`]
//!   through `compile::kernel_model` (feature `testing`), the one model
//!   of the kernel's lookup, which the fuzz targets use too.
#![forbid(unsafe_code)]

pub mod compile;
pub mod explain;
pub mod file;
pub mod live;
pub mod model;
pub mod ports;
pub mod sources;
pub mod text;

pub use classifier_common::Source;
pub use compile::{compile, compile_with_scopes, CompileError, CompiledPolicy, TrieEntry};
pub use explain::{classify, classify_from, Decision, RuleMatch};
pub use file::{load_policy_file, parse_policy, parse_policy_document, ParsedPolicy};
pub use model::{
    format_ttl, parse_ttl, Learning, LearningScope, Mark, Network, Policy, PolicyError, Protocol,
    Rule, LINKERD_DEFAULT_CLUSTER_NETWORKS, LINKERD_DEFAULT_OPAQUE_PORTS, LINKERD_PROXY_UID,
};
pub use ports::{PortListError, PortSet};
pub use sources::{load_policy_path, load_policy_path_report, load_policy_text_report};

//! Classification policy: what protocol a destination `address:port` speaks.
//!
//! The pipeline:
//!
//! ```text
//! policy.yaml --file--------------------------> Policy --explain--> Decision (`classifier explain`, test oracle)
//! manifests ----sources::linkerd (DocumentSet)--^     \--compile--> CompiledPolicy --agent--> kernel maps
//! ```
//!
//! [`load_policy_path`] takes either: a lone ClassifierPolicy file, or a
//! file or directory of Kubernetes manifests.
//!
//! - [`file`] parses and validates the YAML, with field paths and line
//!   numbers in every error; nothing after it re-validates.
//! - [`model`] is the validated policy ([`Policy`], [`Rule`], [`PortSet`]).
//! - [`explain`] is the reference semantics, written for clarity: rules
//!   scoped to the client's namespace first, then node-wide rules, then
//!   the default opaque ports.
//! - [`compile`] flattens a policy into longest-prefix-match trie entries
//!   and a default-port bitmap; its tests check it against [`explain`].

pub mod compile;
pub mod explain;
pub mod file;
pub mod model;
pub mod ports;

pub use compile::{compile, compile_with_scopes, CompileError, CompiledPolicy, TrieEntry};
pub use explain::{classify, classify_from, Decision, DecisionSource};
pub use file::{
    load_policy_file, load_policy_path, parse_policy, parse_policy_document, ParsedPolicy,
    PolicyError, LINKERD_DEFAULT_CLUSTER_NETWORKS,
};
pub use model::{
    Mark, Network, Policy, Protocol, Rule, LINKERD_DEFAULT_OPAQUE_PORTS, LINKERD_PROXY_UID,
};
pub use ports::{PortListError, PortSet};

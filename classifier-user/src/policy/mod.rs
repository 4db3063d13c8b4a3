//! Classification policy: what protocol a destination `address:port` speaks.
//!
//! The pipeline:
//!
//! ```text
//! policy.yaml --file--> Policy --explain--> Decision   (`classifier explain`, test oracle)
//!                              \--compile--> CompiledPolicy --agent--> kernel maps
//! ```
//!
//! - [`file`] parses and validates the YAML, with field paths and line
//!   numbers in every error; nothing after it re-validates.
//! - [`model`] is the validated policy ([`Policy`], [`Rule`], [`PortSet`]).
//! - [`explain`] is the reference semantics, written for clarity.
//! - [`compile`] flattens a policy into longest-prefix-match trie entries
//!   and a default-port bitmap; its tests check it against [`explain`].

pub mod compile;
pub mod explain;
pub mod file;
pub mod model;
pub mod ports;

pub use compile::{compile, CompileError, CompiledPolicy, TrieEntry};
pub use explain::{classify, Decision, DecisionSource};
pub use file::{load_policy_file, parse_policy, PolicyError};
pub use model::{
    Mark, Network, Policy, Protocol, Rule, LINKERD_DEFAULT_OPAQUE_PORTS, LINKERD_PROXY_UID,
};
pub use ports::{PortListError, PortSet};

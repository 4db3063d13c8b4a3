//! The classifier's userspace: policy model and compiler, the datapath
//! loader and map writer, the agent, stats, and the proxy-side client.
//!
//! ```text
//! policy/        file -> Policy -> explain (reference semantics) / compile (map entries)
//! sources/       manifests (files, directories, Kubernetes) -> DocumentSet -> Policy
//! datapath/      embedded object, pins, install-or-adopt, atomic policy writes
//! agent/         the long-running `classifier agent`
//! stats/         `classifier stats` from the pinned maps
//! metrics/       `agent --metrics-addr`: /metrics, /healthz, /readyz
//! proxy_client   the getsockopt query a proxy makes on its accepted socket
//! ```

pub mod agent;
pub mod datapath;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod proxy_client;
pub mod sources;
pub mod stats;

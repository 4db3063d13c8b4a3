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
//! sys/           every raw system call, behind safe wrappers: the only
//!                module allowed `unsafe`
//! ```

#![deny(unsafe_code)]

#[cfg(feature = "node")]
pub mod agent;
#[cfg(feature = "node")]
pub mod datapath;
#[cfg(feature = "node")]
pub mod metrics;
pub mod policy;
#[cfg(feature = "node")]
pub mod proxy;
#[cfg(feature = "node")]
pub mod proxy_client;
pub mod sources;
#[cfg(feature = "node")]
pub mod stats;
#[cfg(feature = "node")]
#[allow(unsafe_code)]
mod sys;

//! The classifier's node side: the datapath loader and map writer, the
//! agent, the live Kubernetes watch, stats, metrics, the reference proxy,
//! and the `classifier` binary. The proxy's side of the query contract is
//! the `classifier-client` crate.
//!
//! The policy itself (model, file format, document compiler, explain, the
//! compiler to map entries) is the `classifier-policy` crate, re-exported
//! as [`policy`] (and its document sources under [`sources`]); this crate
//! builds on it and it knows nothing of this one.
//!
//! ```text
//! policy         = classifier_policy: file -> Policy -> explain / compile
//! sources/       classifier_policy::sources, plus the live Kubernetes watch
//! datapath/      embedded object, pins, install-or-adopt, atomic policy writes
//! learned/       the learned server-first destinations: read, expire, suggest
//! agent/         the long-running `classifier agent`
//! compiler/      `classifier compiler`: the cluster's sources published as slices
//! stats/         `classifier stats` from the pinned maps, and the kernel
//!                counters' Prometheus encoding
//! metrics/       `agent --metrics-addr`: /metrics, /healthz, /readyz
//! sys/           every raw system call, behind safe wrappers: the only
//!                module allowed `unsafe`
//! ```
//!
//! Modules depend one way: `agent` on everything below it, `metrics` on
//! `stats`, `stats` and `agent` on `datapath`; never the reverse.

#![deny(unsafe_code)]

pub use classifier_policy as policy;

pub mod agent;
pub mod allocator;
pub mod build_info;
pub mod check;
pub mod compiler;
pub mod datapath;
pub mod learned;
pub mod metrics;
pub mod proxy;
pub mod sources;
pub mod stats;
#[expect(
    unsafe_code,
    reason = "sys/ is the one module that makes raw system calls"
)]
mod sys;

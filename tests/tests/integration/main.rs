//! The integration tests: one binary, one module per topic (run one topic
//! with `cargo xtask test -- -p tests -- datapath::`).
//!
//! The privileged ones run on the real kernel, each in its own cgroup,
//! bpffs pin directory and network namespace with its own agent (see
//! `tests::Sandbox`); each starts with `privileged!()`, which skips it
//! without root (and fails it under CI=true). The others (`kube_watch`,
//! most of `deploy`, most of `central_compiler`) need no privilege.

#![deny(unsafe_code)]

mod agent_kube;
mod bad_input;
mod central_compiler;
mod check;
mod datapath;
mod deploy;
mod e2e;
mod full_tables;
mod http;
mod kube_watch;
mod learning;
mod learning_scopes;
mod metrics;
mod new_pods;
mod old_kernel;
mod reliability;
mod runtime;
mod scope_churn;
mod scoping;
mod soak;
mod tenant_isolation;

//! The scenarios, one per file, each returning its part of results.json.
//! The numbers are the report's section numbers.

mod connect_overhead; // 1, and the kernel's own per-program run times
mod footprint; // 4
mod kernel_time; // the kernel-time pass (`--only kernel-time`)
mod kubernetes_agent; // 6: the real agent at the largest size
mod kubernetes_churn; // 6: one change, churn, resync
mod kubernetes_scale; // 6
mod kubernetes_slices; // 6: what a node receives, objects or slices
mod learning; // 8
mod pod_registration; // 9
mod policy_directory; // 6: a policy directory, one file changed
mod policy_scale; // 2
mod proxy_query; // 7
mod stall; // 5
mod stats_at_scale; // 3

pub(crate) use connect_overhead::{connect_overhead, program_run_times};
pub(crate) use footprint::footprint;
pub(crate) use kernel_time::{kernel_time, render as render_kernel_time};
pub(crate) use kubernetes_scale::kubernetes_scale;
pub(crate) use learning::learning;
pub(crate) use pod_registration::pod_registration;
pub(crate) use policy_scale::policy_scale;
pub(crate) use proxy_query::proxy_query;
pub(crate) use stall::stall;
pub(crate) use stats_at_scale::stats_at_scale;

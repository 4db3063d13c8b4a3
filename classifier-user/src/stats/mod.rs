//! `classifier stats`: what the kernel side has seen, read from the pinned
//! maps (so it works whether or not an agent is running).

pub mod prometheus;
mod read;
mod render;

pub use prometheus::{render_prometheus, KernelCollector};
pub use read::{read_snapshot, LearningInfo, PolicyInfo, PortCount, Snapshot, VerdictTable};
pub use render::{render_json, render_table};

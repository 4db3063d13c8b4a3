//! `classifier agent`: install or adopt the datapath and keep the policy in
//! the kernel's maps (or `--uninstall`).

use std::time::Duration;

use anyhow::Result;
use classifier_user::{
    agent::{self, AgentOptions},
    build_info,
    datapath::PinDir,
};

use super::args::AgentArgs;

pub fn run(args: AgentArgs) -> Result<()> {
    let pins = PinDir::new(args.pins.pin_dir);
    if args.uninstall {
        return agent::uninstall(&pins);
    }
    tracing::info!(
        version = build_info::VERSION,
        commit = build_info::COMMIT,
        layout = build_info::LAYOUT,
        "classifier agent starting"
    );
    super::current_thread_runtime()?.block_on(agent::run(AgentOptions {
        cgroup: args.cgroup,
        pins,
        policy: args.policy,
        watch_interval: Duration::from_secs_f64(args.watch_interval.max(0.05)),
        verdict_capacity: args.verdict_table_size,
        allow_untrusted_policy: args.allow_untrusted_policy,
        metrics_addr: args.metrics_addr,
        probe_addr: args.probe_addr,
        kubernetes: args.kubernetes,
        kubernetes_source: super::kubernetes_source(args.source),
        egress_namespace: args.egress_namespace,
        namespace_entry_budget: args.namespace_entry_budget,
        learn_outside_pods: args.learn_outside_pods,
    }))
}

//! What `/metrics` says, encoded with `prometheus-client`.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust client
//! (github.com/prometheus/client_rust), maintained and widely used (it is
//! what linkerd2-proxy exports with), with no dependencies beyond a
//! float formatter. It owns the parts of the exposition format that are
//! easy to get subtly wrong by hand: name and `_total` suffix rules, HELP
//! and label-value escaping, one TYPE line per family, and the content
//! type. Nothing in it keeps state for us: both sources below are
//! [`Collector`]s, asked for their values at scrape time.
//!
//! The kernel counters are [`stats::KernelCollector`](crate::stats::KernelCollector),
//! the encoding `classifier stats --prometheus` prints
//! (`classifier_connects_total{family}`, `classifier_verdicts_total{protocol}`,
//! `classifier_errors_total{reason}`, ...), registered here next to
//! `classifier_agent_*` for the agent's own state and `classifier_build_info`.

use std::fmt;

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric as _},
    metrics::{gauge::ConstGauge, info::Info, MetricType},
    registry::Registry,
};

use super::{AgentMetrics, AgentValues};
use crate::{
    build_info,
    datapath::{status::RejectedReport, PinDir},
    stats::{
        prometheus::{counter, encode, gauge, KernelCollector, PREFIX},
        read_snapshot, Snapshot,
    },
};

/// Prometheus text format 0.0.4, which every scraper reads.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything `/metrics` serves, under the `classifier_` prefix, and the
/// rejected-objects report `/debug/rejected` serves.
pub struct Exporter {
    registry: Registry,
    rejected: Box<dyn Fn() -> Option<RejectedReport> + Send + Sync>,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// The kernel counters from the maps pinned under `pins`, read at every
    /// scrape, and the agent's own metrics.
    /// The report is the one the agent wrote under the pin directory's
    /// state directory, read at every request.
    pub fn new(pins: PinDir, agent: AgentMetrics) -> Self {
        let report_pins = pins.clone();
        Self::with_snapshots(move || read_snapshot(&pins), agent)
            .with_rejected(move || RejectedReport::read(&report_pins))
    }

    /// Only the kernel counters of one snapshot: what `classifier stats
    /// --prometheus` prints, so both speak the same metric names.
    pub fn kernel_only(snapshot: Snapshot) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(KernelCollector::of(snapshot)));
        Self {
            registry,
            rejected: Box::new(|| None),
        }
    }

    /// As [`new`](Self::new), with the snapshot from `read` (tests).
    pub fn with_snapshots(
        read: impl Fn() -> Result<Snapshot> + Send + Sync + 'static,
        agent: AgentMetrics,
    ) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(KernelCollector::new(read)));
        registry.register_collector(Box::new(AgentCollector(agent)));
        Self {
            registry,
            rejected: Box::new(|| None),
        }
    }

    /// The rejected-objects report from `read` (`None`: no agent wrote one
    /// yet).
    pub fn with_rejected(
        self,
        read: impl Fn() -> Option<RejectedReport> + Send + Sync + 'static,
    ) -> Self {
        Self {
            rejected: Box::new(read),
            ..self
        }
    }

    /// The rejected-objects report, as `classifier stats` reads it.
    pub fn rejected(&self) -> Option<RejectedReport> {
        (self.rejected)()
    }

    /// One scrape. Reading the maps is a few system calls per map plus one
    /// per verdict-table entry (about 80 ms for a full 65,536-entry table);
    /// it runs on the caller's thread, which in the agent is its only one.
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

#[derive(Debug)]
struct AgentCollector(AgentMetrics);

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let v = self.0.values();
        encode_policy(&mut enc, &v)?;
        encode_last_seen(&mut enc, &v)?;
        encode_rejected(&mut enc, &v)?;
        encode_build_info(&mut enc)
    }
}

/// Readiness, the policy this agent applied, and its error counts.
fn encode_policy(enc: &mut DescriptorEncoder, v: &AgentValues) -> fmt::Result {
    gauge(
        enc,
        "agent_ready",
        "1 once the programs are attached or adopted and this agent applied a policy",
        u32::from(v.ready),
    )?;
    gauge(
        enc,
        "agent_policy_generation",
        "Generation of the last policy this agent applied",
        v.policy_generation,
    )?;
    gauge(
        enc,
        "agent_policy_rules",
        "Rules in the last policy this agent applied",
        v.policy_rules,
    )?;
    counter(
        enc,
        "agent_policy_apply_errors",
        "Policies that could not be loaded, compiled or written (the previous one stayed active)",
        v.apply_errors,
    )?;
    counter(
        enc,
        "agent_policy_full_applies",
        "Policies compiled whole and switched to (a slot switch)",
        v.full_applies,
    )?;
    counter(
        enc,
        "agent_policy_incremental_applies",
        "Document changes applied to the policy in force in place, key by key, without a full compile",
        v.incremental_applies,
    )?;
    counter(
        enc,
        "agent_sync_errors",
        "Failed syncs with the policy source (Kubernetes API); retried with backoff",
        v.sync_errors,
    )
}

/// When this agent last applied a policy and last synced with its source,
/// and whether the Kubernetes watch is connected (each when known).
fn encode_last_seen(enc: &mut DescriptorEncoder, v: &AgentValues) -> fmt::Result {
    if let Some(t) = v.last_apply {
        gauge(
            enc,
            "agent_last_apply_timestamp_seconds",
            "Unix time this agent last applied a policy",
            t,
        )?;
    }
    if let Some(t) = v.last_sync {
        gauge(
            enc,
            "agent_last_sync_timestamp_seconds",
            "Unix time of the last successful sync with the policy source (Kubernetes API)",
            t,
        )?;
    }
    if let Some(connected) = v.kubernetes_connected {
        gauge(
            enc,
            "agent_kubernetes_connected",
            "1 while the Kubernetes watch is connected (the last policy stays when it is not)",
            u32::from(connected),
        )?;
    }
    Ok(())
}

/// Counts only, never names (those are in `classifier stats` and
/// `/debug/rejected`). Every watched kind is listed, at 0 when none is
/// skipped.
fn encode_rejected(enc: &mut DescriptorEncoder, v: &AgentValues) -> fmt::Result {
    let mut by_kind: std::collections::BTreeMap<&str, u64> = crate::sources::kinds::KINDS
        .iter()
        .map(|k| (k.kind, 0))
        .collect();
    for (kind, n) in &v.rejected_by_kind {
        *by_kind.entry(kind.as_str()).or_insert(0) += n;
    }
    let mut family = enc.encode_descriptor(
        "agent_rejected_objects",
        "Objects the current policy skipped because the compiler rejects them (the rest applies), by kind",
        None,
        MetricType::Gauge,
    )?;
    for (kind, n) in by_kind {
        ConstGauge::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
    }
    Ok(())
}

fn encode_build_info(enc: &mut DescriptorEncoder) -> fmt::Result {
    let info = enc.encode_descriptor(
        "build",
        "The agent's version, git commit and map layout version (always 1)",
        None,
        MetricType::Info,
    )?;
    let layout = build_info::LAYOUT.to_string();
    let labels = [
        ("version", build_info::VERSION),
        ("commit", build_info::COMMIT),
        ("layout", layout.as_str()),
    ];
    Info::new(labels).encode(info)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{PolicyInfo, PortCount, VerdictTable};

    fn snapshot() -> Snapshot {
        Snapshot {
            connects_total: 7,
            opaque_total: 5,
            classified_total: 5,
            excluded_total: 1,
            proxy_queries_total: 2,
            errors_total: 0,
            counters: vec![
                ("connect4".into(), 6),
                ("connect6".into(), 1),
                ("excluded".into(), 1),
                ("verdict_opaque".into(), 5),
                ("source_default_port".into(), 5),
                ("query_classified".into(), 2),
            ],
            verdict_table: VerdictTable {
                entries: 3,
                capacity: 65536,
                lost: 0,
            },
            policy: PolicyInfo {
                generation: 4,
                rules: 2,
                v4_entries: 3,
                v6_entries: 1,
                default_opaque_ports: 8,
                excluded_uids: 1,
                mark: None,
            },
            top_ports: vec![PortCount {
                port: 3306,
                connects: 5,
            }],
            agent: None,
            learning: None,
            learned_destinations: Vec::new(),
            rejected: None,
        }
    }

    #[test]
    fn renders_kernel_and_agent_metrics() {
        let agent = AgentMetrics::new(Duration::from_secs(30));
        agent.policy_applied(4, 2);
        agent.policy_apply_failed();
        agent.set_rejected(&[("Pod".to_owned(), 2), ("EgressNetwork".to_owned(), 1)].into());
        let text = Exporter::with_snapshots(|| Ok(snapshot()), agent).render();
        for line in [
            "# TYPE classifier_connects_total counter",
            "classifier_connects_total{family=\"ipv4\"} 6",
            "classifier_connects_total{family=\"ipv6\"} 1",
            "classifier_connects_total{family=\"ipv4_mapped\"} 0",
            "classifier_verdicts_total{protocol=\"opaque\"} 5",
            "classifier_verdict_sources_total{source=\"default_port\"} 5",
            "classifier_errors_total{reason=\"mark\"} 0",
            "classifier_proxy_queries_total{result=\"classified\"} 2",
            "classifier_excluded_connects_total 1",
            "classifier_verdict_table_capacity 65536",
            "classifier_policy_generation 4",
            "classifier_policy_trie_entries{family=\"ipv6\"} 1",
            "classifier_kernel_maps_readable 1",
            "classifier_agent_ready 1",
            "classifier_agent_policy_generation 4",
            "classifier_agent_policy_rules 2",
            "classifier_agent_policy_apply_errors_total 1",
            "classifier_agent_sync_errors_total 0",
            "# TYPE classifier_build_info gauge",
            "# TYPE classifier_agent_rejected_objects gauge",
            "classifier_agent_rejected_objects{kind=\"Pod\"} 2",
            "classifier_agent_rejected_objects{kind=\"EgressNetwork\"} 1",
            "classifier_agent_rejected_objects{kind=\"Server\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("classifier_agent_last_apply_timestamp_seconds "));
        assert!(
            text.contains(&format!(
                "classifier_build_info{{version=\"{}\",commit=\"{}\",layout=\"{}\"}} 1",
                build_info::VERSION,
                build_info::COMMIT,
                build_info::LAYOUT
            )),
            "{text}"
        );
        // Never synced, no --kubernetes: no sync time, no connected gauge.
        assert!(!text.contains("last_sync"), "{text}");
        assert!(!text.contains("kubernetes_connected"), "{text}");
        // No family mixes kinds of events any more.
        assert!(!text.contains("kernel_events"), "{text}");
        // Destination ports are not exported.
        assert!(!text.contains("3306"), "{text}");
    }

    #[test]
    fn unreadable_maps_still_serve_the_agent_metrics() {
        let agent = AgentMetrics::new(Duration::from_secs(30));
        agent.sync_failed();
        agent.sync_succeeded();
        agent.set_kubernetes_connected(true);
        let text = Exporter::with_snapshots(|| Err(anyhow::anyhow!("no pins")), agent).render();
        assert!(
            text.contains("classifier_kernel_maps_readable 0\n"),
            "{text}"
        );
        assert!(
            text.contains("classifier_agent_sync_errors_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("classifier_agent_last_sync_timestamp_seconds "),
            "{text}"
        );
        assert!(
            text.contains("classifier_agent_kubernetes_connected 1\n"),
            "{text}"
        );
        assert!(!text.contains("classifier_connects_total"), "{text}");
    }
}

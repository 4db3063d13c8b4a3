//! The kernel counters in Prometheus text, encoded with
//! `prometheus-client`: the one encoding `classifier stats --prometheus`
//! prints and `/metrics` serves (the metrics module registers
//! [`KernelCollector`] next to its agent collector), so the names cannot
//! drift apart.

use std::fmt;

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::Snapshot;

/// Every metric name starts with `classifier_`.
pub const PREFIX: &str = "classifier";

/// The Prometheus text of the kernel counters of one snapshot.
pub fn render_prometheus(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(KernelCollector::of(s.clone())));
    encode(&registry)
}

/// One scrape of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = prometheus_text::encode(&mut out, registry) {
        // Only a failing fmt::Write can cause this, and a String never fails.
        tracing::error!("encoding metrics: {err}");
    }
    out
}

/// The counters `classifier stats` shows, from the pinned maps.
pub struct KernelCollector {
    read: Box<dyn Fn() -> Result<Snapshot> + Send + Sync>,
}

impl KernelCollector {
    /// The counters of whatever `read` returns, read at every scrape.
    pub fn new(read: impl Fn() -> Result<Snapshot> + Send + Sync + 'static) -> Self {
        KernelCollector {
            read: Box::new(read),
        }
    }

    /// The counters of one snapshot.
    pub fn of(snapshot: Snapshot) -> Self {
        Self::new(move || Ok(snapshot.clone()))
    }
}

impl fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KernelCollector")
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snapshot = match (self.read)() {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!("metrics: cannot read the kernel counters: {err:#}");
                return gauge(
                    &mut enc,
                    "kernel_maps_readable",
                    "Whether this scrape could read the pinned maps (1) or not (0)",
                    0u32,
                );
            }
        };
        let s = &snapshot;
        gauge(
            &mut enc,
            "kernel_maps_readable",
            "Whether this scrape could read the pinned maps (1) or not (0)",
            1u32,
        )?;
        counter(
            &mut enc,
            "connects",
            "TCP connect() calls seen",
            s.connects_total,
        )?;
        counter(
            &mut enc,
            "opaque",
            "Connects classified opaque",
            s.opaque_total,
        )?;
        counter(
            &mut enc,
            "classified",
            "Connects that got a verdict (opaque, http1, http2 or detect)",
            s.classified_total,
        )?;
        counter(
            &mut enc,
            "excluded",
            "Connects by excluded UIDs",
            s.excluded_total,
        )?;
        counter(
            &mut enc,
            "proxy_queries",
            "Proxy verdict queries answered",
            s.proxy_queries_total,
        )?;
        counter(
            &mut enc,
            "errors",
            "Internal errors (the connect was allowed anyway)",
            s.errors_total,
        )?;
        gauge(
            &mut enc,
            "verdict_table_entries",
            "Published verdicts in the table",
            s.verdict_table.entries,
        )?;
        gauge(
            &mut enc,
            "verdict_table_capacity",
            "Verdict table size",
            s.verdict_table.capacity,
        )?;
        counter(
            &mut enc,
            "verdict_table_evicted",
            "Verdicts evicted before their connection closed",
            s.verdict_table.evicted,
        )?;
        // Learning (issue 11): counts only, never addresses.
        if let Some(l) = &s.learning {
            gauge(
                &mut enc,
                "learned_destinations",
                "Learned server-first destinations in the table",
                l.entries,
            )?;
            counter(
                &mut enc,
                "learned_observations",
                "Server-first observations recorded",
                l.learned_total,
            )?;
            counter(
                &mut enc,
                "learned_contradicted",
                "Learned destinations removed by a client-first observation",
                l.contradicted_total,
            )?;
        }
        let p = &s.policy;
        gauge(
            &mut enc,
            "policy_generation",
            "Generation of the policy active in the kernel",
            p.generation,
        )?;
        gauge(
            &mut enc,
            "policy_rules",
            "Rules in the policy active in the kernel",
            p.rules,
        )?;
        {
            let mut family = enc.encode_descriptor(
                "policy_trie_entries",
                "Longest-prefix-match entries of the active policy, by address family",
                None,
                MetricType::Gauge,
            )?;
            for (af, n) in [("ipv4", p.v4_entries), ("ipv6", p.v6_entries)] {
                let labels = [("family", af)];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "policy_default_opaque_ports",
            "Ports in the active policy's default opaque set",
            p.default_opaque_ports,
        )?;
        gauge(
            &mut enc,
            "policy_excluded_uids",
            "UIDs the active policy leaves alone",
            p.excluded_uids,
        )?;
        let mut family = enc.encode_descriptor(
            "kernel_events",
            "Every kernel counter by name",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in &s.counters {
            let labels = [("event", name.as_str())];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

pub fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

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
        encode_kernel_families(&mut enc, s)?;
        encode_tables(&mut enc, s)?;
        encode_policy(&mut enc, s)
    }
}

/// Every kernel counter, each in the one family it belongs to (see
/// [`KERNEL_FAMILIES`]): no family mixes things whose sum means nothing.
fn encode_kernel_families(enc: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    let value_of = |counter: &str| {
        s.counters
            .iter()
            .find(|(n, _)| n == counter)
            .map_or(0, |(_, v)| *v)
    };
    for family in KERNEL_FAMILIES {
        let mut encoder =
            enc.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
        match family.label {
            None => {
                let (counter, _) = family.counters[0];
                ConstCounter::new(value_of(counter)).encode(encoder)?;
            }
            Some(key) => {
                for (counter, label) in family.counters {
                    let labels = [(key, label.unwrap_or_default())];
                    ConstCounter::new(value_of(counter)).encode(encoder.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

/// The verdict table's and the learned table's fill.
fn encode_tables(enc: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    gauge(
        enc,
        "verdict_table_entries",
        "Published verdicts in the table",
        s.verdict_table.entries,
    )?;
    gauge(
        enc,
        "verdict_table_capacity",
        "Verdict table size",
        s.verdict_table.capacity,
    )?;
    counter(
        enc,
        "verdict_table_lost",
        "Published verdicts gone from the table before their connection closed (the table never evicts: stays 0)",
        s.verdict_table.lost,
    )?;
    // Learning: counts only, never addresses (its kernel counters are
    // families of KERNEL_FAMILIES).
    if let Some(l) = &s.learning {
        gauge(
            enc,
            "learned_destinations",
            "Learned server-first destinations in the table",
            l.entries,
        )?;
    }
    Ok(())
}

/// The policy active in the kernel.
fn encode_policy(enc: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    let p = &s.policy;
    gauge(
        enc,
        "policy_generation",
        "Generation of the policy active in the kernel",
        p.generation,
    )?;
    gauge(
        enc,
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
        enc,
        "policy_default_opaque_ports",
        "Ports in the active policy's default opaque set",
        p.default_opaque_ports,
    )?;
    gauge(
        enc,
        "policy_excluded_uids",
        "UIDs the active policy leaves alone",
        p.excluded_uids,
    )
}

/// One counter family made of kernel counters: `name` (`_total` is added),
/// and either one unlabelled counter, or one series per counter with
/// `label` set to the value given.
pub struct KernelFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub label: Option<&'static str>,
    /// (kernel counter name, label value)
    pub counters: &'static [(&'static str, Option<&'static str>)],
}

/// Where each kernel counter (`classifier_common::counters::NAMES`) is
/// exported. A unit test fails when a counter is in no family, so a new
/// kernel counter cannot go unexported.
pub const KERNEL_FAMILIES: &[KernelFamily] = &[
    KernelFamily {
        name: "connects",
        help: "TCP connect() calls seen, by the socket's address family",
        label: Some("family"),
        counters: &[
            ("connect4", Some("ipv4")),
            ("connect6", Some("ipv6")),
            ("connect6_v4mapped", Some("ipv4_mapped")),
        ],
    },
    KernelFamily {
        name: "non_tcp_connects",
        help: "connect() calls on non-TCP sockets (ignored)",
        label: None,
        counters: &[("not_tcp", None)],
    },
    KernelFamily {
        name: "excluded_connects",
        help: "TCP connects by excluded UIDs (not classified)",
        label: None,
        counters: &[("excluded", None)],
    },
    KernelFamily {
        name: "verdicts",
        help: "Classified TCP connects by the protocol decided (none: no rule and no default opaque port)",
        label: Some("protocol"),
        counters: &[
            ("verdict_opaque", Some("opaque")),
            ("verdict_http1", Some("http1")),
            ("verdict_http2", Some("http2")),
            ("verdict_detect", Some("detect")),
            ("no_verdict", Some("none")),
        ],
    },
    KernelFamily {
        name: "verdict_sources",
        help: "Verdicts by what decided them: a default opaque port or a policy rule",
        label: Some("source"),
        counters: &[
            ("source_default_port", Some("default_port")),
            ("source_rule", Some("rule")),
            ("source_learned", Some("learned")),
        ],
    },
    KernelFamily {
        name: "unregistered_pod_connects",
        help: "Connects from pod cgroups the agent had not registered yet (namespace unknown): no verdict under namespace-scoped rules, no learning under namespace-scoped learning",
        label: None,
        counters: &[("pod_unregistered", None)],
    },
    KernelFamily {
        name: "learning_watched",
        help: "Connections without a verdict watched for who speaks first",
        label: None,
        counters: &[("learn_watched", None)],
    },
    KernelFamily {
        name: "learned_observations",
        help: "Watched connections by who spoke first (server: recorded as learned)",
        label: Some("first"),
        counters: &[
            ("learn_server_first", Some("server")),
            ("learn_client_first", Some("client")),
        ],
    },
    KernelFamily {
        name: "learned_contradicted",
        help: "Learned destinations removed by a client-first observation",
        label: None,
        counters: &[("learn_contradicted", None)],
    },
    KernelFamily {
        name: "learning_scope_full",
        help: "Server-first observations not recorded because their scope holds its share of the table",
        label: None,
        counters: &[("learn_scope_full", None)],
    },
    KernelFamily {
        name: "marks_set",
        help: "Sockets given the policy's SO_MARK bits",
        label: None,
        counters: &[("mark_set", None)],
    },
    KernelFamily {
        name: "marks_cleared",
        help: "Sockets whose SO_MARK bits from an earlier connect were cleared at a connect that is not marked",
        label: None,
        counters: &[("mark_cleared", None)],
    },
    KernelFamily {
        name: "verdicts_not_published",
        help: "Verdicts not published for the proxy, by reason (the proxy detects as usual)",
        label: Some("reason"),
        counters: &[
            ("publish_dst_mismatch", Some("destination_mismatch")),
            ("publish_netns_full", Some("netns_share_full")),
            ("publish_table_full", Some("table_full")),
        ],
    },
    KernelFamily {
        name: "verdicts_published",
        help: "Verdicts published for the proxy at TCP connect",
        label: None,
        counters: &[("published", None)],
    },
    KernelFamily {
        name: "verdicts_withdrawn",
        help: "Published verdicts removed when their connection closed",
        label: None,
        counters: &[("unpublished", None)],
    },
    KernelFamily {
        name: "verdicts_missing_at_close",
        help: "Connections closed whose verdict was already gone",
        label: None,
        counters: &[("unpublish_missing", None)],
    },
    KernelFamily {
        name: "verdicts_ambiguous",
        help: "Verdicts not published because another live connection holds the same client address and port",
        label: None,
        counters: &[("publish_ambiguous", None)],
    },
    KernelFamily {
        name: "proxy_queries",
        help: "Proxy verdict queries, by answer",
        label: Some("result"),
        counters: &[
            ("query_classified", Some("classified")),
            ("query_unknown", Some("unknown")),
            ("query_bad_buffer", Some("bad_buffer")),
            ("query_not_connected", Some("not_connected")),
        ],
    },
    KernelFamily {
        name: "errors",
        help: "Internal errors of the kernel programs, by reason (the connect was allowed anyway)",
        label: Some("reason"),
        counters: &[
            ("err_inflight", Some("inflight")),
            ("err_publish_insert", Some("publish_insert")),
            ("err_mark", Some("mark")),
            ("err_config", Some("config")),
            ("err_cb_flags", Some("cb_flags")),
            ("err_learn", Some("learn")),
        ],
    },
    KernelFamily {
        name: "port_counts_dropped",
        help: "Destination ports not counted for `classifier stats` because its table is full",
        label: None,
        counters: &[("port_counts_full", None)],
    },
];

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

#[cfg(test)]
mod tests {
    use super::KERNEL_FAMILIES;
    use classifier_common::counters;

    #[test]
    fn every_kernel_counter_is_in_exactly_one_family() {
        for (_, name) in counters::NAMES {
            let homes: Vec<&str> = KERNEL_FAMILIES
                .iter()
                .filter(|f| f.counters.iter().any(|(c, _)| c == name))
                .map(|f| f.name)
                .collect();
            assert_eq!(
                homes.len(),
                1,
                "kernel counter {name} is exported in {homes:?}: add it to KERNEL_FAMILIES"
            );
        }
        for f in KERNEL_FAMILIES {
            for (c, label) in f.counters {
                assert!(
                    counters::NAMES.iter().any(|(_, n)| n == c),
                    "{c} is no kernel counter"
                );
                assert_eq!(label.is_some(), f.label.is_some(), "{}", f.name);
            }
            assert!(f.label.is_some() || f.counters.len() == 1, "{}", f.name);
        }
        // The errors family is exactly the counters the kernel calls errors.
        let errors = KERNEL_FAMILIES.iter().find(|f| f.name == "errors").unwrap();
        assert_eq!(errors.counters.len(), counters::ERRORS.len());
    }
}

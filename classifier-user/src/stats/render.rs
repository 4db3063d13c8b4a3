//! The three faces of a snapshot: a table for people, JSON for scripts,
//! (and Prometheus text for scrapers, in [`super::prometheus`], the same
//! encoder as `/metrics`).

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use classifier_common::counters as k;

use super::Snapshot;

/// Rejected objects the table lists (the JSON lists every one).
const REJECTED_LISTED: usize = 20;

pub fn render_table(s: &Snapshot) -> String {
    let mut out = String::new();
    connects(&mut out, s);
    learning(&mut out, s);
    errors_and_policy(&mut out, s);
    agent(&mut out, s);
    rejected(&mut out, s);
    if !s.top_ports.is_empty() {
        let ports: Vec<String> = s
            .top_ports
            .iter()
            .map(|p| format!("{} ({})", p.port, p.connects))
            .collect();
        let _ = writeln!(out, "top destination ports {}", ports.join(", "));
    }
    out
}

/// Connects by family, verdict and source; proxy queries; the verdict
/// table.
fn connects(out: &mut String, s: &Snapshot) {
    let c = |index: u32| s.counter(index);
    let _ = writeln!(
        out,
        "connects (TCP)        {:>12}   v4 {} / v6 {} / v4-mapped {}",
        s.connects_total,
        c(k::CONNECT4),
        c(k::CONNECT6),
        c(k::CONNECT6_V4MAPPED)
    );
    let _ = writeln!(out, "  opaque              {:>12}", s.opaque_total);
    let _ = writeln!(out, "  http1               {:>12}", c(k::VERDICT_HTTP1));
    let _ = writeln!(out, "  http2               {:>12}", c(k::VERDICT_HTTP2));
    let _ = writeln!(out, "  detect (rule)       {:>12}", c(k::VERDICT_DETECT));
    let _ = writeln!(out, "  no verdict          {:>12}", c(k::NO_VERDICT));
    let _ = writeln!(out, "    pod unregistered  {:>12}", c(k::POD_UNREGISTERED));
    let _ = writeln!(out, "  excluded (uid)      {:>12}", s.excluded_total);
    let _ = writeln!(
        out,
        "  by default port     {:>12}",
        c(k::SOURCE_DEFAULT_PORT)
    );
    let _ = writeln!(out, "  by policy rule      {:>12}", c(k::SOURCE_RULE));
    let _ = writeln!(out, "  by learning         {:>12}", c(k::SOURCE_LEARNED));
    let _ = writeln!(out, "  marked              {:>12}", c(k::MARK_SET));
    let _ = writeln!(
        out,
        "proxy queries         {:>12}   classified {} / unknown {}",
        s.proxy_queries_total,
        c(k::QUERY_CLASSIFIED),
        c(k::QUERY_UNKNOWN)
    );
    let _ = writeln!(
        out,
        "verdict table         {:>12}   of {} ({:.1}%), lost {}",
        s.verdict_table.entries,
        s.verdict_table.capacity,
        100.0 * s.verdict_table.entries as f64 / s.verdict_table.capacity.max(1) as f64,
        s.verdict_table.lost
    );
}

/// Learning's settings, counts and entries, when its maps read.
fn learning(out: &mut String, s: &Snapshot) {
    if let Some(l) = &s.learning {
        let _ = writeln!(
            out,
            "learned destinations  {:>12}   of {} ({} scope, quota {} per scope, min {} observations{}{})",
            l.entries,
            l.capacity,
            l.scope,
            l.scope_quota,
            l.min_observations,
            if l.outside_pods { "" } else { ", off outside pods" },
            if l.enabled { "" } else { ", learning off" }
        );
        let _ = writeln!(out, "  server-first seen   {:>12}", l.learned_total);
        let _ = writeln!(out, "  contradicted        {:>12}", l.contradicted_total);
        for e in &s.learned_destinations {
            let _ = writeln!(
                out,
                "  {:<44} {} ({} observations)",
                e.destination().to_string(),
                e.scope_label(),
                e.observations
            );
        }
    }
}

/// The errors that occurred, and the policy in force.
fn errors_and_policy(out: &mut String, s: &Snapshot) {
    let _ = writeln!(out, "errors                {:>12}", s.errors_total);
    for (name, value) in s
        .counters
        .iter()
        .filter(|(n, v)| n.starts_with("err_") && *v > 0)
    {
        let _ = writeln!(out, "  {name:<20}{value:>12}");
    }
    let p = &s.policy;
    let _ = writeln!(out, "policy                generation {}, {} rules ({} v4 + {} v6 entries), {} default opaque ports, {} excluded uids{}",
        p.generation, p.rules, p.v4_entries, p.v6_entries, p.default_opaque_ports, p.excluded_uids,
        p.mark.map(|(v, m)| format!(", mark {v:#x}/{m:#x}")).unwrap_or_default());
}

/// What the agent last reported.
fn agent(out: &mut String, s: &Snapshot) {
    match &s.agent {
        None => {
            let _ = writeln!(out, "agent                 never ran here");
        }
        Some(a) => {
            let applied = a
                .last_apply_age_s
                .map_or("no policy applied yet".to_owned(), |t| {
                    format!("last policy applied {t} s ago")
                });
            let _ = writeln!(
                out,
                "agent                 pid {}, status {} s old, {applied}, {} policies rejected",
                a.pid, a.status_age_s, a.policy_errors
            );
            let _ = writeln!(
                out,
                "agent version         {}",
                a.version
                    .as_deref()
                    .unwrap_or("unknown (not a classifier process in this pid namespace)")
            );
            if let Some(k) = &a.kubernetes {
                let synced = k.last_sync_age_s.map_or("never synced".to_owned(), |t| {
                    format!("last sync {t} s ago")
                });
                let _ = writeln!(
                    out,
                    "kubernetes            {}, {synced}, {} sync errors",
                    if k.connected {
                        "connected"
                    } else {
                        "DISCONNECTED (keeping the last policy)"
                    },
                    k.sync_errors
                );
            }
        }
    }
}

/// The objects the current policy skipped, the first [`REJECTED_LISTED`].
fn rejected(out: &mut String, s: &Snapshot) {
    if let Some(r) = &s.rejected {
        let kinds: Vec<String> = r.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "rejected objects      {:>12}   {}",
            r.total,
            if kinds.is_empty() {
                "(the current policy applies every object)".to_owned()
            } else {
                format!("skipped, the rest applies: {}", kinds.join(", "))
            }
        );
        for o in r.objects.iter().take(REJECTED_LISTED) {
            let _ = writeln!(
                out,
                "  {} {}{} ({}): {}",
                o.kind,
                o.namespace
                    .as_deref()
                    .map_or(String::new(), |n| format!("{n}/")),
                o.name,
                o.origin,
                o.reason
            );
        }
        let listed = r.objects.len().min(REJECTED_LISTED) as u64;
        if listed < r.total {
            let _ = writeln!(
                out,
                "  ... and {} more (`classifier stats --json` lists them all)",
                r.total - listed
            );
        }
    }
}

pub fn render_json(s: &Snapshot) -> Value {
    let mut counters = Map::new();
    for (name, value) in &s.counters {
        counters.insert(name.clone(), json!(value));
    }
    json!({
        "connects_total": s.connects_total,
        "opaque_total": s.opaque_total,
        "classified_total": s.classified_total,
        "excluded_total": s.excluded_total,
        "proxy_queries_total": s.proxy_queries_total,
        "errors_total": s.errors_total,
        "counters": counters,
        "verdict_table": s.verdict_table,
        "policy": s.policy,
        "top_ports": s.top_ports,
        "agent": s.agent,
        "learning": s.learning,
        "learned_destinations": crate::learned::cli::to_json(&s.learned_destinations),
        "rejected_objects": s.rejected.as_ref().map_or_else(Vec::new, |r| r.objects.clone()),
        "rejected_objects_total": s.rejected.as_ref().map_or(0, |r| r.total),
        "rejected_objects_by_kind": s.rejected.as_ref().map(|r| r.by_kind.clone()).unwrap_or_default(),
    })
}

//! `classifier learned` and the live-table half of `classifier explain`.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Result;
use serde_json::{json, Value};

use super::{lookup_scope, scope_names, scope_of_namespace, LearnedDestination, LearnedTable};
use crate::datapath::PinDir;
use classifier_common::maps;

/// Whether an agent's maps (with the learned table) are pinned at `pins`.
pub fn installed(pins: &PinDir) -> bool {
    pins.map(maps::LEARNED).exists()
}

/// Every learned destination at `pins`.
pub fn list(pins: &PinDir) -> Result<Vec<LearnedDestination>> {
    let table = LearnedTable::open(pins)?;
    table.entries(&scope_names(pins))
}

fn unix_to_rfc3339(secs: u64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn to_json(entries: &[LearnedDestination]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({
                    "destination": e.destination().to_string(),
                    "scope": if e.scope_id == 0 { "node".to_owned() } else { "namespace".to_owned() },
                    "scope_id": e.scope_id,
                    "namespace": e.namespace,
                    "observations": e.observations,
                    "active": e.active,
                    "first_seen_unix": e.first_seen_unix,
                    "last_seen_unix": e.last_seen_unix,
                    "first_seen": unix_to_rfc3339(e.first_seen_unix),
                    "last_seen": unix_to_rfc3339(e.last_seen_unix),
                })
            })
            .collect(),
    )
}

pub fn render_table(entries: &[LearnedDestination]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no learned server-first destinations\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<46} {:<24} {:>6}  {:<20}  {:<20}",
        "DESTINATION", "SCOPE", "SEEN", "FIRST SEEN", "LAST SEEN"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<46} {:<24} {:>6}{} {:<20}  {:<20}",
            e.destination().to_string(),
            e.scope_label(),
            e.observations,
            if e.active { " " } else { "*" },
            unix_to_rfc3339(e.first_seen_unix),
            unix_to_rfc3339(e.last_seen_unix),
        );
    }
    if entries.iter().any(|e| !e.active) {
        out.push_str("* fewer observations than minObservations: no verdict yet\n");
    }
    out
}

/// What the live table says for a client (of `from_namespace`, or outside
/// any pod) connecting to `dst`: the entry if it gives a verdict.
pub fn explain(
    pins: &PinDir,
    from_namespace: Option<&str>,
    dst: SocketAddr,
) -> Result<Option<LearnedDestination>> {
    let table = LearnedTable::open(pins)?;
    let config = table.config()?;
    if config.flags & classifier_common::LEARN_FLAG_ENABLED == 0 {
        return Ok(None);
    }
    let client = match from_namespace {
        // A namespace without a scope id: its pods are in no known pod
        // cgroup, as processes outside pods are (the node scope, 0).
        Some(ns) => scope_of_namespace(pins, ns).unwrap_or_default(),
        None => 0,
    };
    let Some(scope) = lookup_scope(&config, client) else {
        return Ok(None);
    };
    let names = scope_names(pins);
    Ok(table
        .entries(&names)?
        .into_iter()
        .find(|e| e.scope_id == scope && e.destination() == dst && e.active))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::unix_to_rfc3339(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
    }
}

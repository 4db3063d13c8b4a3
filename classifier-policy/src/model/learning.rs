//! `spec.learning`: learning server-first destinations from the
//! traffic. On by default.

use std::fmt;
use std::time::Duration;

/// Which clients share what one client's connections taught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LearningScope {
    /// A destination learned from a client in namespace A applies to
    /// clients in A only (processes in no known pod learn nothing, unless
    /// the agent's `--learn-outside-pods` lets them share the node scope).
    #[default]
    Namespace,
    /// One table for every client on the node.
    Node,
}

impl LearningScope {
    pub const fn as_str(self) -> &'static str {
        match self {
            LearningScope::Namespace => "namespace",
            LearningScope::Node => "node",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "namespace" => Ok(LearningScope::Namespace),
            "node" => Ok(LearningScope::Node),
            other => Err(format!(
                "unknown learning scope {other:?} (expected namespace or node)"
            )),
        }
    }
}

impl fmt::Display for LearningScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The learning settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Learning {
    pub enabled: bool,
    /// Entries not seen for this long are removed by the agent.
    pub ttl: Duration,
    /// Server-first observations before an entry gives verdicts.
    pub min_observations: u32,
    pub scope: LearningScope,
}

impl Default for Learning {
    fn default() -> Self {
        Learning {
            enabled: true,
            ttl: Duration::from_secs(24 * 3600),
            min_observations: 1,
            scope: LearningScope::Namespace,
        }
    }
}

/// The longest ttl accepted (a year): anything longer is a typo.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// `"24h"`, `"90s"`, `"1h30m"`, `"7d"`: one or more `<integer><unit>`
/// with units `s`, `m`, `h`, `d`. Must be at least one second.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid ttl {s:?} (expected a duration such as \"24h\", \"30m\", \"90s\" or \"1h30m\")")
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
        any = true;
    }
    if !any || !digits.is_empty() {
        return Err(bad());
    }
    let ttl = Duration::from_secs(total);
    if ttl.is_zero() {
        return Err(format!("ttl {s:?} is zero: entries would expire at once (use enabled: false to turn learning off)"));
    }
    if ttl > MAX_TTL {
        return Err(format!("ttl {s:?} is longer than a year"));
    }
    Ok(ttl)
}

/// The ttl as the file writes it (largest exact units).
pub fn format_ttl(ttl: Duration) -> String {
    let mut s = ttl.as_secs();
    let mut out = String::new();
    for (unit, name) in [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if s >= unit {
            out.push_str(&format!("{}{name}", s / unit));
            s %= unit;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_ttl("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in [
            "soon",
            "",
            "24",
            "h",
            "0s",
            "1x",
            "-1h",
            "999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert_eq!(format_ttl(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_ttl(Duration::from_secs(86400)), "1d");
    }

    #[test]
    fn defaults_are_on_24h_1_namespace() {
        let l = Learning::default();
        assert!(l.enabled);
        assert_eq!(l.ttl, Duration::from_secs(86400));
        assert_eq!(l.min_observations, 1);
        assert_eq!(l.scope, LearningScope::Namespace);
        assert!(LearningScope::parse("cluster").is_err());
    }
}

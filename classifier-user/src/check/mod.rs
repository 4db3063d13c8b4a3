//! `classifier check`: can this node run the agent, and is the agent
//! healthy? Modelled on `linkerd check` and `cilium status`: a list of
//! named checks, each with what it found and, when it fails, the fix.
//!
//! ```text
//! node        kernel version and BPF features, cgroup v2 and the attach
//!             cgroup, bpffs, the capabilities an agent needs
//! installed   the pin directory (owner, mode), pinned layout and programs,
//!             agent liveness and status age, last policy apply, rejections
//! kubernetes  (--kubernetes) API reachability, RBAC per watched kind
//!             (SelfSubjectAccessReview), Linkerd's CRDs
//! ```
//!
//! Needs no agent: with none installed, the `installed` checks fail and
//! say what is missing. `--json` prints `[{"check", "ok", "detail"}]`.

mod installed;
mod kubernetes;
mod node;

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::datapath::PinDir;

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    /// What was found, and for a failure, what to do.
    pub detail: String,
}

impl Check {
    pub fn pass(check: &str, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failure: what was found, then the fix.
    pub fn fail(check: &str, found: impl AsRef<str>, fix: impl AsRef<str>) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: format!("{}; fix: {}", found.as_ref(), fix.as_ref()),
        }
    }
}

pub struct CheckOptions {
    pub pins: PinDir,
    /// The cgroup an agent attaches to [default: the cgroup v2 root].
    pub cgroup: Option<PathBuf>,
    /// Also check the Kubernetes API, RBAC and Linkerd's CRDs.
    pub kubernetes: bool,
    /// With `kubernetes`: where the agent reads the cluster.
    pub source: crate::sources::kubernetes::Source,
}

/// Runs every check, in report order.
pub fn run(opts: &CheckOptions) -> Vec<Check> {
    let mut checks = node::checks(opts.cgroup.as_deref());
    checks.extend(installed::checks(&opts.pins, opts.cgroup.as_deref()));
    if opts.kubernetes {
        checks.extend(kubernetes::checks(&opts.source));
    }
    checks
}

/// The human report: one line per check, then a summary.
pub fn render_text(checks: &[Check]) -> String {
    let mut out = String::new();
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    for c in checks {
        out.push_str(&format!(
            "{} {:<width$}  {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.check,
            c.detail
        ));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        out.push_str(&format!("all {} checks passed\n", checks.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", checks.len()));
    }
    out
}

pub fn render_json(checks: &[Check]) -> Result<String> {
    Ok(serde_json::to_string_pretty(checks)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_json() {
        let checks = vec![
            Check::pass("kernel", "6.1"),
            Check::fail("pin-dir", "missing", "start the agent"),
        ];
        let text = render_text(&checks);
        assert!(text.contains("ok   kernel   6.1\n"), "{text}");
        assert!(
            text.contains("FAIL pin-dir  missing; fix: start the agent\n"),
            "{text}"
        );
        assert!(text.ends_with("1 of 2 checks failed\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&checks).unwrap()).unwrap();
        assert_eq!(json[1]["check"], "pin-dir");
        assert_eq!(json[1]["ok"], false);
        assert_eq!(json[0].as_object().unwrap().len(), 3);
    }
}

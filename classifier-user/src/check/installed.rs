//! What is installed: the pin directory, the pinned layout and programs,
//! the agent's status and its last policy.

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use classifier_common::{maps, programs, PinMeta, LAYOUT_VERSION};

use super::Check;
use crate::{
    agent::preflight,
    datapath::{status::StatusMap, PinDir},
};

/// How old the agent's status may be: it writes it every tick (1 s by
/// default), so anything this old means no agent loop runs.
const STATUS_STALE_S: u64 = 30;

pub fn checks(pins: &PinDir, cgroup: Option<&Path>) -> Vec<Check> {
    if !pins.root().exists() || !pins.maps_dir().is_dir() {
        return vec![Check::fail(
            "pin-dir",
            format!(
                "no classifier is installed at {} (no agent has run on this node)",
                pins.root().display()
            ),
            "install the agent (`kubectl apply -k deploy/`, or `classifier agent` as root)",
        )];
    }
    let mut out = vec![pin_dir(pins), layout(pins), pinned_programs(pins, cgroup)];
    out.extend(agent(pins));
    out
}

fn pin_dir(pins: &PinDir) -> Check {
    match preflight::check_pin_dir(pins) {
        Ok(()) => Check::pass("pin-dir", format!("{} owned by uid {}, not writable by others", pins.root().display(), crate::sys::process::euid())),
        Err(err) => Check::fail("pin-dir", format!("{err:#}"), "`chown root:root` and `chmod 0700` it, or remove it with `classifier agent --uninstall`"),
    }
}

fn layout(pins: &PinDir) -> Check {
    let path = pins.map(maps::META);
    let found = MapData::from_pin(&path)
        .map_err(anyhow::Error::from)
        .and_then(|m| Ok(Array::<MapData, PinMeta>::try_from(Map::Array(m))?))
        .and_then(|a| Ok(a.get(&0, 0)?.layout_version));
    match found {
        Ok(v) if v == LAYOUT_VERSION => Check::pass("pinned-layout", format!("map layout {v}, as this binary")),
        Ok(v) => Check::fail(
            "pinned-layout",
            format!("pinned maps have layout {v}, this binary speaks {LAYOUT_VERSION}"),
            "run the agent of the matching version, or `classifier agent --uninstall` then a fresh start",
        ),
        Err(err) => Check::fail("pinned-layout", format!("{}: {err:#}", path.display()), "run as root; if the file is missing, reinstall (`classifier agent --uninstall`, then start the agent)"),
    }
}

/// Each program's pinned link exists and is attached to the agent's
/// cgroup, as `/readyz` checks it: a link whose cgroup was removed stays
/// pinned but classifies nothing (its cgroup id reads 0).
fn pinned_programs(pins: &PinDir, cgroup: Option<&Path>) -> Check {
    let missing: Vec<&str> = programs::ALL
        .iter()
        .copied()
        .filter(|p| !pins.link(p).exists())
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            "pinned-programs",
            format!("no pinned link for {}", missing.join(", ")),
            "restart the agent (it re-attaches what is missing), or `classifier agent --uninstall` and start it",
        );
    }
    let reattach = "restart the agent (it re-attaches its programs to --cgroup), or `classifier agent --uninstall` and start it";
    let target = match cgroup {
        Some(path) => Ok(path.to_path_buf()),
        None => crate::datapath::cgroup::cgroup2_root(),
    };
    let target = target.and_then(|path| {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .ino();
        Ok((path, id))
    });
    match target {
        Ok((path, id)) => match crate::datapath::link::all_attached(pins, id) {
            Ok(()) => Check::pass(
                "pinned-programs",
                format!(
                    "{} attached to {} through pinned links",
                    programs::ALL.join(", "),
                    path.display()
                ),
            ),
            Err(why) => Check::fail(
                "pinned-programs",
                format!("{why} (expected on {}, cgroup id {id})", path.display()),
                reattach,
            ),
        },
        // The attach cgroup cannot be found: at least every link must be
        // attached, and all to one cgroup.
        Err(err) => {
            let mut ids = Vec::new();
            for program in programs::ALL {
                match crate::datapath::link::pinned_link_cgroup(&pins.link(program)) {
                    Ok(0) => {
                        return Check::fail(
                            "pinned-programs",
                            format!("{program} is detached (its cgroup is gone)"),
                            reattach,
                        )
                    }
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        return Check::fail(
                            "pinned-programs",
                            format!("{program}: {e:#}"),
                            "run as root",
                        )
                    }
                }
            }
            ids.dedup();
            if ids.len() == 1 {
                Check::pass(
                    "pinned-programs",
                    format!(
                        "{} attached to one cgroup (id {}); the attach cgroup itself: {err:#}",
                        programs::ALL.join(", "),
                        ids[0]
                    ),
                )
            } else {
                Check::fail(
                    "pinned-programs",
                    format!("the programs are attached to different cgroups (ids {ids:?})"),
                    reattach,
                )
            }
        }
    }
}

fn agent(pins: &PinDir) -> Vec<Check> {
    let Some(status) = StatusMap::read(pins) else {
        return vec![Check::fail(
            "agent",
            "no agent status in the pins (no agent of this version ran here)",
            "start the agent",
        )];
    };
    let now = crate::datapath::status::unix_now();
    let age = now.saturating_sub(status.updated_unix);
    let alive = Path::new(&format!("/proc/{}", status.pid)).exists();
    let mut out = Vec::new();
    out.push(if age <= STATUS_STALE_S {
        Check::pass("agent", format!("pid {} wrote its status {age} s ago", status.pid))
    } else {
        Check::fail(
            "agent",
            format!(
                "last status {age} s ago from pid {} ({}); programs stay attached with the last policy",
                status.pid,
                if alive { "a process of that pid exists here, maybe in another pid namespace" } else { "not running" }
            ),
            "start the agent (`kubectl -n classifier-system get pods -o wide` for this node's pod and its logs)",
        )
    });
    out.push(if status.last_apply_unix == 0 {
        Check::fail(
            "policy-applied",
            "the running agent has applied no policy",
            "see the agent's log: the policy it was given was rejected",
        )
    } else {
        Check::pass(
            "policy-applied",
            format!(
                "last applied {} s ago",
                now.saturating_sub(status.last_apply_unix)
            ),
        )
    });
    out.push(if status.policy_errors == 0 {
        Check::pass("policy-rejections", "no policy rejected")
    } else {
        Check::fail(
            "policy-rejections",
            format!("{} policies rejected by this agent (the previous one stayed active)", status.policy_errors),
            "the agent's log names the file or resource, field and value; fix it and the agent re-applies",
        )
    });
    out
}

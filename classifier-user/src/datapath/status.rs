//! The agent's own status, pinned so `classifier stats` can show it without
//! talking to the agent (it may not be running).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use classifier_common::{maps, AgentStatus};

use super::{pins::PinDir, policy_maps::open};

pub struct StatusMap(Array<MapData, AgentStatus>);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl StatusMap {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self(Array::try_from(Map::Array(open(
            pins,
            maps::AGENT_STATUS,
        )?))?))
    }

    pub fn write(&mut self, status: &AgentStatus) -> Result<()> {
        self.0.set(0, status, 0)?;
        Ok(())
    }

    /// `None` when no agent ever wrote one.
    pub fn read(pins: &PinDir) -> Option<AgentStatus> {
        let map = Self::open(pins).ok()?;
        let status = map.0.get(&0, 0).ok()?;
        (status.updated_unix != 0).then_some(status)
    }
}

/// The objects the agent's current policy skipped, for `classifier stats`.
///
/// Where: `rejected.json` in the pin directory's state directory under
/// `/run` (see [`PinDir::state_dir`]), root-only, replaced atomically (a
/// new file, then `rename` over the old). Why not a map: the status map's
/// value type is shared with the kernel side, and growing it would change
/// its layout for data the kernel never reads. Why not bpffs: it holds only
/// pins, directories and symlinks. Every rejected object is listed; names
/// and reasons longer than [`RejectedReport::MAX_FIELD`] bytes are cut.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedReport {
    /// Every rejected object of the current policy.
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// Every one, in the order the compiler met them.
    pub objects: Vec<RejectedObject>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedObject {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// `file#N` or `kubernetes:Kind/ns/name`.
    pub origin: String,
    pub reason: String,
}

const REJECTED_FILE: &str = "rejected.json";
/// Where agents before the report moved to `/run` kept it (a symlink whose
/// target was the JSON); removed when found.
const LEGACY_REJECTED_LINK: &str = "agent-rejected";

impl RejectedReport {
    /// Longer reasons and names are cut (with `...`).
    pub const MAX_FIELD: usize = 240;

    pub fn of<R: std::borrow::Borrow<crate::policy::sources::Rejected>>(rejected: &[R]) -> Self {
        let mut by_kind = std::collections::BTreeMap::new();
        for r in rejected {
            let r = r.borrow();
            *by_kind.entry(r.kind.clone()).or_insert(0) += 1;
        }
        let cut = |s: &str| {
            if s.len() <= Self::MAX_FIELD {
                return s.to_owned();
            }
            let mut end = Self::MAX_FIELD;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &s[..end])
        };
        Self {
            total: rejected.len() as u64,
            by_kind,
            objects: rejected
                .iter()
                .map(std::borrow::Borrow::borrow)
                .map(|r: &crate::policy::sources::Rejected| RejectedObject {
                    kind: cut(&r.kind),
                    namespace: r.namespace.as_deref().map(cut),
                    name: cut(&r.name),
                    origin: cut(&r.origin),
                    reason: cut(&r.error.to_string()),
                })
                .collect(),
        }
    }

    /// Replaces the report for `pins` (written by the agent after every
    /// policy it applies).
    pub fn write(&self, pins: &PinDir) -> Result<()> {
        use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _};

        use anyhow::Context as _;
        let _ = fs::remove_file(pins.root().join(LEGACY_REJECTED_LINK));
        let dir = pins.prepare_state_dir()?;
        let path = dir.join(REJECTED_FILE);
        let new = dir.join(format!("{REJECTED_FILE}.new"));
        let _ = fs::remove_file(&new);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&new)
            .with_context(|| format!("creating {}", new.display()))?;
        serde_json::to_writer(&mut file, self)
            .map_err(std::io::Error::from)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", new.display()))?;
        fs::rename(&new, &path).with_context(|| format!("renaming {}", new.display()))?;
        Ok(())
    }

    /// `None` if no agent wrote one (or it cannot be read).
    pub fn read(pins: &PinDir) -> Option<Self> {
        let text = std::fs::read(pins.state_dir().join(REJECTED_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the report (uninstall).
    pub fn remove(pins: &PinDir) {
        let _ = std::fs::remove_file(pins.state_dir().join(REJECTED_FILE));
        let _ = std::fs::remove_file(pins.root().join(LEGACY_REJECTED_LINK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{sources::Rejected, PolicyError};

    fn rejected(i: usize, kind: &str) -> Rejected {
        Rejected {
            origin: format!("policy.yaml#{i}"),
            kind: kind.to_owned(),
            namespace: Some("tenant-a".to_owned()),
            name: format!("object-{i}"),
            error: PolicyError::Syntax {
                origin: format!("policy.yaml#{i}"),
                message: "x".repeat(1000),
            },
        }
    }

    #[test]
    fn the_report_lists_and_counts_everything_and_cuts_long_fields() {
        let all: Vec<Rejected> = (0..500)
            .map(|i| rejected(i, if i % 2 == 0 { "Pod" } else { "EgressNetwork" }))
            .collect();
        let report = RejectedReport::of(&all);
        assert_eq!(report.total, 500);
        assert_eq!(report.by_kind["Pod"], 250);
        assert_eq!(report.by_kind["EgressNetwork"], 250);
        assert_eq!(report.objects.len(), 500);
        assert_eq!(report.objects[0].name, "object-0");
        assert_eq!(report.objects[499].name, "object-499");
        assert!(report.objects[0].reason.ends_with("..."));
        assert!(report.objects[0].reason.len() <= RejectedReport::MAX_FIELD + 3);
    }

    #[test]
    fn the_report_round_trips_through_a_root_only_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("classifier-rejected-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pins = PinDir::with_state_dir(&dir, dir.join("state"));
        // An older agent's report: a symlink in the pin directory.
        std::os::unix::fs::symlink("{}", dir.join(LEGACY_REJECTED_LINK)).unwrap();
        assert_eq!(RejectedReport::read(&pins), None);
        let report = RejectedReport::of(&[rejected(1, "Pod")]);
        report.write(&pins).unwrap();
        assert!(dir.join(LEGACY_REJECTED_LINK).symlink_metadata().is_err());
        let file = pins.state_dir().join(REJECTED_FILE);
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let state = pins.state_dir().metadata().unwrap();
        assert_eq!(state.permissions().mode() & 0o777, 0o700);
        RejectedReport::of::<Rejected>(&[]).write(&pins).unwrap();
        assert_eq!(RejectedReport::read(&pins), Some(RejectedReport::default()));
        report.write(&pins).unwrap();
        assert_eq!(RejectedReport::read(&pins), Some(report));
        RejectedReport::remove(&pins);
        assert_eq!(RejectedReport::read(&pins), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

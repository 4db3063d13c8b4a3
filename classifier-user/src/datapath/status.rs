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

/// The objects the agent's current policy skipped, for
/// `classifier stats`.
///
/// Where: a symlink `<pin dir>/agent-rejected` whose target is this report
/// as JSON, replaced atomically (a new link, then `rename` over the old).
/// Why not a map: the status map's value type is shared with the kernel
/// side, and growing it would change its layout (a new `LAYOUT_VERSION`
/// and no in-place upgrade) for data the kernel never reads. Why a symlink
/// and not a file: the pin directory is on bpffs, which holds only pins,
/// directories and symlinks (and no names with dots). The pin directory is
/// root-only, so only root reads it, as with the maps; it goes away with
/// the pins on uninstall, and it is seen wherever the bpffs is (host and
/// container alike). A symlink target is at most 4095 bytes, so the list
/// is capped (see [`RejectedReport::MAX_BYTES`]); the total and the counts
/// by kind are always complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedReport {
    /// Every rejected object of the current policy.
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
    /// The first few, in the order the compiler met them.
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

const REJECTED_LINK: &str = "agent-rejected";
const REJECTED_LINK_NEW: &str = "agent-rejected-new";

impl RejectedReport {
    /// At most this many objects are listed.
    pub const MAX_OBJECTS: usize = 20;
    /// The encoded report stays below the symlink target limit (4095).
    pub const MAX_BYTES: usize = 4000;
    /// Longer reasons and names are cut (with `...`).
    const MAX_FIELD: usize = 240;

    pub fn of(rejected: &[crate::policy::sources::Rejected]) -> Self {
        let mut by_kind = std::collections::BTreeMap::new();
        for r in rejected {
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
        let mut report = Self {
            total: rejected.len() as u64,
            by_kind,
            objects: rejected
                .iter()
                .take(Self::MAX_OBJECTS)
                .map(|r| RejectedObject {
                    kind: cut(&r.kind),
                    namespace: r.namespace.as_deref().map(cut),
                    name: cut(&r.name),
                    origin: cut(&r.origin),
                    reason: cut(&r.error.to_string()),
                })
                .collect(),
        };
        // Many kinds could only come from a flood of made-up kinds; keep
        // the encoding under the limit whatever happens.
        while report.encode().len() > Self::MAX_BYTES {
            if report.objects.pop().is_none() {
                let Some(last) = report.by_kind.keys().last().cloned() else {
                    break;
                };
                report.by_kind.remove(&last);
            }
        }
        report
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Replaces the report under `pins` (written by the agent after every
    /// policy it applies).
    pub fn write(&self, pins: &PinDir) -> Result<()> {
        use anyhow::Context as _;
        let new = pins.root().join(REJECTED_LINK_NEW);
        let _ = std::fs::remove_file(&new);
        std::os::unix::fs::symlink(self.encode(), &new)
            .with_context(|| format!("creating {}", new.display()))?;
        std::fs::rename(&new, pins.root().join(REJECTED_LINK))
            .with_context(|| format!("renaming {}", new.display()))?;
        Ok(())
    }

    /// `None` if no agent wrote one (or it cannot be read).
    pub fn read(pins: &PinDir) -> Option<Self> {
        let target = std::fs::read_link(pins.root().join(REJECTED_LINK)).ok()?;
        serde_json::from_str(target.to_str()?).ok()
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
    fn the_report_is_capped_but_counts_everything() {
        let all: Vec<Rejected> = (0..500)
            .map(|i| rejected(i, if i % 2 == 0 { "Pod" } else { "EgressNetwork" }))
            .collect();
        let report = RejectedReport::of(&all);
        assert_eq!(report.total, 500);
        assert_eq!(report.by_kind["Pod"], 250);
        assert_eq!(report.by_kind["EgressNetwork"], 250);
        assert!(!report.objects.is_empty());
        assert!(report.objects.len() <= RejectedReport::MAX_OBJECTS);
        assert!(report.encode().len() <= RejectedReport::MAX_BYTES);
        assert_eq!(report.objects[0].name, "object-0");
        assert!(report.objects[0].reason.ends_with("..."));
    }

    #[test]
    fn the_report_round_trips_through_its_link() {
        let dir = std::env::temp_dir().join(format!("classifier-rejected-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pins = PinDir::new(&dir);
        assert_eq!(RejectedReport::read(&pins), None);
        let report = RejectedReport::of(&[rejected(1, "Pod")]);
        report.write(&pins).unwrap();
        RejectedReport::of(&[]).write(&pins).unwrap();
        assert_eq!(RejectedReport::read(&pins), Some(RejectedReport::default()));
        report.write(&pins).unwrap();
        assert_eq!(RejectedReport::read(&pins), Some(report));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Finding pod cgroups the way the kubelet lays them out, under either
//! cgroup driver and every QoS class:
//!
//! ```text
//! systemd:   kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice
//!            kubepods.slice/kubepods-pod<uid>.slice                      (Guaranteed)
//! cgroupfs:  kubepods/burstable/pod<uid>   kubepods/besteffort/pod<uid>   kubepods/pod<uid>
//! ```
//!
//! The pod UID in the directory name ties the cgroup to its Pod object,
//! hence to its namespace.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A pod's cgroup found on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub uid: String,
    pub path: PathBuf,
    /// The cgroup id the kernel reports (the directory's inode on cgroup v2).
    pub cgroup_id: u64,
}

/// What a scan found: the pod roots (`kubepods`, `kubepods.slice`: every
/// pod cgroup is below one) and the pod cgroups.
#[derive(Debug, Default)]
pub struct PodTree {
    /// (path, cgroup id) of each pod root.
    pub roots: Vec<(PathBuf, u64)>,
    pub pods: Vec<PodCgroup>,
}

/// Depth limit of the walk: pod cgroups sit 2-3 levels below `kubepods`.
pub const MAX_DEPTH: usize = 6;
/// How deep to look for `kubepods` itself (the root on a node; deeper when
/// the agent is pointed at a sub-tree, as in tests). The rest of the
/// hierarchy (system.slice, user sessions) is not walked.
const MAX_KUBEPODS_DEPTH: usize = 2;

/// Whether a cgroup directory name is a pod root.
pub fn is_pod_root(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice"
}

/// Every pod root and pod cgroup below `root`.
pub fn scan(root: &Path) -> PodTree {
    scan_with(root, &mut |_, _| {})
}

/// [`scan`], calling `visit(dir, depth)` for each directory inside a pod
/// root that is not a pod cgroup (the roots, QoS classes), before its
/// entries are read: a watch added there sees every entry the read misses.
pub fn scan_with(root: &Path, visit: &mut dyn FnMut(&Path, usize)) -> PodTree {
    let mut found = PodTree::default();
    walk(root, 0, false, &mut found, visit);
    found
}

/// [`scan_with`] of `dir`, a directory inside a pod root at `depth`.
pub fn scan_inside(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path, usize)) -> PodTree {
    let mut found = PodTree::default();
    visit(dir, depth);
    walk(dir, depth + 1, true, &mut found, visit);
    found
}

/// The pod cgroup `name` in `dir` (just created), if it is one.
pub fn pod_cgroup(dir: &Path, name: &str) -> Option<PodCgroup> {
    let uid = pod_uid(name)?;
    let path = dir.join(name);
    let cgroup_id = fs::metadata(&path).ok()?.ino();
    Some(PodCgroup {
        uid,
        path,
        cgroup_id,
    })
}

fn walk(
    dir: &Path,
    depth: usize,
    in_kubepods: bool,
    found: &mut PodTree,
    visit: &mut dyn FnMut(&Path, usize),
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let root = !in_kubepods && is_pod_root(&name);
        let kubepods = in_kubepods || root;
        if !kubepods && depth >= MAX_KUBEPODS_DEPTH {
            continue;
        }
        if kubepods {
            if let Some(uid) = pod_uid(&name) {
                if let Ok(meta) = entry.metadata() {
                    found.pods.push(PodCgroup {
                        uid,
                        path,
                        cgroup_id: meta.ino(),
                    });
                }
                // Containers below a pod are not pods.
                continue;
            }
            if root {
                if let Ok(meta) = entry.metadata() {
                    found.roots.push((path.clone(), meta.ino()));
                }
            }
            visit(&path, depth);
        }
        walk(&path, depth + 1, kubepods, found, visit);
    }
}

/// The pod UID in a kubelet pod cgroup directory name, dashes restored.
pub fn pod_uid(name: &str) -> Option<String> {
    let uid = if let Some(rest) = name.strip_suffix(".slice") {
        // kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice
        let (_, uid) = rest.rsplit_once("-pod")?;
        uid.replace('_', "-")
    } else {
        name.strip_prefix("pod")?.to_owned()
    };
    looks_like_uid(&uid).then_some(uid)
}

fn looks_like_uid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";

    #[test]
    fn recognises_both_drivers_and_every_qos_class() {
        let underscored = UID.replace('-', "_");
        for name in [
            format!("kubepods-burstable-pod{underscored}.slice"),
            format!("kubepods-besteffort-pod{underscored}.slice"),
            format!("kubepods-pod{underscored}.slice"),
            format!("pod{UID}"),
        ] {
            assert_eq!(pod_uid(&name).as_deref(), Some(UID), "{name}");
        }
        for name in [
            "kubepods.slice",
            "kubepods-burstable.slice",
            "burstable",
            "cri-containerd-abc.scope",
            "podnot-a-uid",
        ] {
            assert_eq!(pod_uid(name), None, "{name}");
        }
    }

    #[test]
    fn scans_a_kubelet_layout() {
        let root = std::env::temp_dir().join(format!("pods-scan-{}", std::process::id()));
        let underscored = UID.replace('-', "_");
        let systemd = root.join(format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-1.scope"));
        let other = "11111111-2222-3333-4444-555555555555";
        let cgroupfs = root.join(format!("kubepods/besteffort/pod{other}/abc"));
        let unrelated = root.join(format!("system.slice/pod{other}"));
        for dir in [&systemd, &cgroupfs, &unrelated] {
            fs::create_dir_all(dir).unwrap();
        }
        let mut visited = Vec::new();
        let tree = scan_with(&root, &mut |dir, _| {
            visited.push(dir.strip_prefix(&root).unwrap().to_owned())
        });
        let mut uids: Vec<String> = tree.pods.into_iter().map(|p| p.uid).collect();
        uids.sort();
        assert_eq!(
            uids,
            vec![UID.to_owned(), other.to_owned()],
            "pods under kubepods only, not their containers"
        );
        let mut roots: Vec<PathBuf> = tree
            .roots
            .iter()
            .map(|(p, _)| p.strip_prefix(&root).unwrap().to_owned())
            .collect();
        roots.sort();
        assert_eq!(
            roots,
            vec![PathBuf::from("kubepods"), PathBuf::from("kubepods.slice")]
        );
        visited.sort();
        assert_eq!(
            visited,
            [
                "kubepods",
                "kubepods/besteffort",
                "kubepods.slice",
                "kubepods.slice/kubepods-burstable.slice"
            ]
            .map(PathBuf::from),
            "the directories a watch goes on: pod roots and QoS classes, not pods"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}

//! Finding the cgroup v2 hierarchy. Nodes differ: `/sys/fs/cgroup` on most
//! Kubernetes nodes, `/sys/fs/cgroup/unified` on hybrid layouts. The mount
//! table is the only reliable source.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// statfs(2) `f_type` of cgroup v2.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// The mount point of the first cgroup2 filesystem in `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let table =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    match find_cgroup2(&table) {
        Some(path) => Ok(path),
        None => bail!(
            "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo); \
             mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup PATH"
        ),
    }
}

/// Where an agent given `--cgroup PATH` attaches.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachPoint {
    /// PATH is a cgroup v2 directory.
    AsGiven(PathBuf),
    /// PATH is not on cgroup v2 (a hybrid host's v1 tmpfs at
    /// /sys/fs/cgroup, or the host's one mounted into a container); this is
    /// the cgroup v2 hierarchy mounted below it.
    Below(PathBuf),
}

impl AttachPoint {
    pub fn path(&self) -> &Path {
        match self {
            AttachPoint::AsGiven(p) | AttachPoint::Below(p) => p,
        }
    }
}

/// The cgroup v2 directory to attach to for `--cgroup PATH`: PATH itself on
/// cgroup v2; on a hybrid layout (PATH is the v1 tmpfs), the cgroup v2
/// mount below it, `unified`; otherwise an error that names the cgroup v2
/// mount to pass instead. Attaching to a directory that is not cgroup v2
/// fails in the kernel with a bare EBADF.
pub fn attach_point(path: &Path) -> Result<AttachPoint> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    choose_attach_point(path, &crate::sys::fs::fs_type, &mountinfo)
}

fn choose_attach_point(
    path: &Path,
    fs_type: &dyn Fn(&Path) -> io::Result<i64>,
    mountinfo: &str,
) -> Result<AttachPoint> {
    let found = match fs_type(path) {
        Ok(CGROUP2_SUPER_MAGIC) => return Ok(AttachPoint::AsGiven(path.to_path_buf())),
        Ok(magic) => magic,
        Err(err) => bail!("--cgroup {}: {err}", path.display()),
    };
    let unified = path.join("unified");
    if matches!(fs_type(&unified), Ok(CGROUP2_SUPER_MAGIC)) {
        return Ok(AttachPoint::Below(unified));
    }
    if let Some(below) = cgroup2_mounts(mountinfo).find(|m| m.starts_with(path) && m != path) {
        if matches!(fs_type(&below), Ok(CGROUP2_SUPER_MAGIC)) {
            return Ok(AttachPoint::Below(below));
        }
    }
    let what = match found {
        TMPFS_MAGIC => "a tmpfs (the v1 side of a hybrid cgroup layout?)".to_owned(),
        CGROUP_SUPER_MAGIC => "a cgroup v1 hierarchy".to_owned(),
        other => format!("a filesystem of type {other:#x}"),
    };
    let hint = match cgroup2_mounts(mountinfo).next() {
        Some(mount) => format!(
            "cgroup v2 is mounted at {} here: pass --cgroup {0}",
            mount.display()
        ),
        None => "no cgroup v2 hierarchy is mounted here (/proc/self/mountinfo); mount one \
                 (mount -t cgroup2 none /sys/fs/cgroup/unified) and pass it"
            .to_owned(),
    };
    bail!(
        "--cgroup {} is not a cgroup v2 directory but {what}, and no cgroup v2 hierarchy is \
         mounted below it; {hint} (in a container, mount the host's cgroup v2 hierarchy)",
        path.display()
    )
}

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    cgroup2_mounts(mountinfo).next()
}

/// Every cgroup2 mount point in a mountinfo table, in table order.
fn cgroup2_mounts(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> <source> <super options>"
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        // mountinfo escapes spaces and the like as octal.
        Some(PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_layouts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            find_cgroup2("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    /// A fake statfs over a table of (path, magic).
    fn fs_types(table: &'static [(&'static str, i64)]) -> impl Fn(&Path) -> io::Result<i64> {
        move |p: &Path| {
            table
                .iter()
                .find(|(path, _)| Path::new(path) == p)
                .map(|(_, magic)| *magic)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn a_hybrid_hosts_v1_tmpfs_resolves_to_the_unified_mount_below_it() {
        let statfs = fs_types(&[
            ("/host/sys/fs/cgroup", TMPFS_MAGIC),
            ("/host/sys/fs/cgroup/unified", CGROUP2_SUPER_MAGIC),
            ("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC),
        ]);
        assert_eq!(
            choose_attach_point(Path::new("/host/sys/fs/cgroup"), &statfs, "").unwrap(),
            AttachPoint::Below(PathBuf::from("/host/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            choose_attach_point(Path::new("/sys/fs/cgroup"), &statfs, "").unwrap(),
            AttachPoint::AsGiven(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn a_cgroup2_mount_elsewhere_below_the_path_is_found_from_mountinfo() {
        let statfs = fs_types(&[
            ("/mnt/cg", TMPFS_MAGIC),
            ("/mnt/cg/v2", CGROUP2_SUPER_MAGIC),
        ]);
        let mountinfo = "41 31 0:38 / /mnt/cg/v2 rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            choose_attach_point(Path::new("/mnt/cg"), &statfs, mountinfo).unwrap(),
            AttachPoint::Below(PathBuf::from("/mnt/cg/v2"))
        );
    }

    #[test]
    fn a_path_with_no_cgroup2_below_is_refused_naming_the_mount_to_use() {
        let statfs = fs_types(&[
            ("/tmp/x", 0xef53),
            ("/sys/fs/cgroup/memory", CGROUP_SUPER_MAGIC),
        ]);
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let err = choose_attach_point(Path::new("/tmp/x"), &statfs, mountinfo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cgroup /tmp/x is not a cgroup v2 directory"),
            "{err}"
        );
        assert!(
            err.contains("pass --cgroup /sys/fs/cgroup/unified"),
            "{err}"
        );
        let err = choose_attach_point(Path::new("/sys/fs/cgroup/memory"), &statfs, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a cgroup v1 hierarchy"), "{err}");
        assert!(
            err.contains("no cgroup v2 hierarchy is mounted here"),
            "{err}"
        );
        let err = choose_attach_point(Path::new("/nonexistent"), &statfs, "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--cgroup /nonexistent: "), "{err}");
    }
}

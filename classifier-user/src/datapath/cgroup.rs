//! Finding the cgroup v2 hierarchy. Nodes differ: `/sys/fs/cgroup` on most
//! Kubernetes nodes, `/sys/fs/cgroup/unified` on hybrid layouts. The mount
//! table is the only reliable source.

use std::{fs, path::PathBuf};

use anyhow::{bail, Context as _, Result};

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

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
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
}

//! Checks that turn the kernel's terse EPERM/EINVAL into one line a user can
//! act on, before anything is loaded.

use std::fs;

use anyhow::{bail, Result};

/// Oldest kernel the programs are written for: `bpf_get_netns_cookie` in
/// sockops and cgroup/getsockopt programs arrived in 5.15.
pub const MIN_KERNEL: (u32, u32) = (5, 15);

pub fn check() -> Result<()> {
    require_root("loading eBPF programs")?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some(version) = parse_release(release.trim()) {
        if version < MIN_KERNEL {
            bail!(
                "kernel {} is too old: the classifier needs {}.{} or later",
                release.trim(),
                MIN_KERNEL.0,
                MIN_KERNEL.1
            );
        }
    }
    Ok(())
}

pub fn require_root(what: &str) -> Result<()> {
    if !crate::sys::process::is_root() {
        bail!("{what} needs root (uid 0 with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); run it with sudo");
    }
    Ok(())
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_kernel_releases() {
        assert_eq!(super::parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(super::parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(super::parse_release("garbage"), None);
    }
}

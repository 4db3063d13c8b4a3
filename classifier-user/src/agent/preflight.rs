//! Checks that turn the kernel's terse EPERM/EINVAL into one line a user can
//! act on, before anything is loaded.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{bail, Result};

use crate::datapath::PinDir;

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

/// The pin directory (and its `maps/` and `links/`), where they exist,
/// must be directories owned by this user that no one else can write, and
/// its parent must not let others swap it (not group- or world-writable
/// unless sticky): whoever can write there can replace the maps the
/// kernel reads policy from. The agent refuses anything else rather than
/// repairing it.
pub fn check_pin_dir(pins: &PinDir) -> Result<()> {
    let uid = crate::sys::process::euid();
    if let Some(parent) = pins.root().parent() {
        if let Ok(meta) = fs::metadata(parent) {
            let mode = meta.mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                bail!(
                    "refusing pin directory {}: its parent {} is writable by others (mode {:o}), \
                     so they could replace it; use a root-only directory",
                    pins.root().display(),
                    parent.display(),
                    mode & 0o7777
                );
            }
        }
    }
    for dir in [pins.root().to_path_buf(), pins.maps_dir(), pins.links_dir()] {
        check_owned_dir(&dir, uid)?;
    }
    Ok(())
}

fn check_owned_dir(dir: &Path, uid: u32) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => bail!("pin directory {}: {err}", dir.display()),
    };
    if !meta.file_type().is_dir() {
        bail!(
            "refusing pin directory {}: not a directory (a symlink or file is not followed)",
            dir.display()
        );
    }
    if meta.uid() != uid {
        bail!(
            "refusing pin directory {}: owned by uid {}, not by the agent (uid {uid}); \
             remove it (`classifier agent --uninstall --pin-dir ...`) or chown it",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "refusing pin directory {}: writable by group or others (mode {:o}); \
             `chmod 0700` it or remove it",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

pub fn parse_release(release: &str) -> Option<(u32, u32)> {
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

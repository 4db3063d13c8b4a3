//! Runs the classifier on another kernel: a Debian kernel package booted
//! under qemu-system-x86_64 with a small initramfs (busybox, `classifier`,
//! `probe` and their shared libraries). The guest's /init starts the agent,
//! makes an IPv4 and an IPv6 connect from the test cgroup, prints what it
//! saw in `==> NAME` sections on the serial console, and powers off.
//!
//! The kernel is fetched with `apt-get download` (never installed on the
//! host) and cached, vmlinuz and config only, in target/qemu-kernel/. The
//! initramfs and the serial log live in a temp directory removed on drop.
//!
//! ```text
//! kernel.rs      fetch a Debian kernel package (apt-get download) and cache it
//! initramfs.rs   the guest's /init and the newc cpio archive that carries it
//! boot.rs        run qemu, wait for power-off, split the serial console
//! ```

use std::{fs, path::PathBuf};

use anyhow::Result;

mod boot;
mod initramfs;
mod kernel;

pub use boot::{qemu_binary, Boot, BOOT_TIMEOUT};
pub use kernel::{cache_dir, debian_kernel, Kernel, DEFAULT_KERNEL_PACKAGE};

/// A temp directory with the initramfs and the serial log; removed on drop.
pub struct Guest {
    dir: PathBuf,
}

impl Guest {
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("clst-qemu-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Guest { dir })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The `probe` binary built with this package (see the crate root).
pub fn probe_bin() -> PathBuf {
    crate::probe_bin()
}

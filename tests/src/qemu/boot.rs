//! One boot under qemu-system-x86_64: start it on the kernel and
//! initramfs, wait for the guest to power off, and split its serial
//! console into the `==> NAME` sections /init prints.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{Guest, Kernel};

/// Hard limit for one boot + test. Under TCG it takes about 5 s here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// qemu-system-x86_64 on $PATH or in /usr/bin.
pub fn qemu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// One boot: the serial console split into its `==> NAME` sections, in order.
pub struct Boot {
    pub serial: String,
    pub sections: BTreeMap<String, String>,
    pub elapsed: Duration,
    pub accel: &'static str,
}

impl Boot {
    pub fn section(&self, name: &str) -> &str {
        self.sections.get(name).map_or("", String::as_str)
    }

    /// The `==> result ...` line's text (PASS, or FAIL: why), if any.
    pub fn result(&self) -> Option<&str> {
        self.sections.keys().find_map(|k| k.strip_prefix("result "))
    }
}

impl Guest {
    /// Boots `kernel` with `initramfs` and waits for it to power off (or
    /// for [`BOOT_TIMEOUT`]). KVM only with $CLASSIFIER_QEMU_ACCEL=kvm:
    /// TCG boots and runs the test in seconds, and nested KVM is often
    /// broken in CI VMs.
    pub fn boot(&self, kernel: &Kernel, initramfs: &Path) -> Result<Boot> {
        let qemu = qemu_binary().context("no qemu-system-x86_64 (install qemu-system-x86)")?;
        let accel = match std::env::var("CLASSIFIER_QEMU_ACCEL").as_deref() {
            Ok("kvm") => "kvm",
            _ => "tcg",
        };
        let serial = self.dir.join("serial.log");
        let qemu_log = self.dir.join("qemu.log");
        let start = Instant::now();
        let mut child = Command::new(qemu)
            .args(["-accel", accel])
            .args(if accel == "kvm" {
                &["-cpu", "host"][..]
            } else {
                &[][..]
            })
            .args([
                "-m",
                "1024",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&qemu_log)?)
            .stderr(fs::File::create(self.dir.join("qemu.err"))?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        let elapsed = start.elapsed();
        let serial =
            String::from_utf8_lossy(&fs::read(&serial).unwrap_or_default()).replace('\r', "");
        let stderr = fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default();
        match status {
            None => bail!(
                "qemu did not power off within {} s; serial console:\n{serial}\nqemu stderr:\n{stderr}",
                BOOT_TIMEOUT.as_secs()
            ),
            Some(s) if !s.success() => {
                bail!("qemu exited with {s}; serial console:\n{serial}\nqemu stderr:\n{stderr}")
            }
            Some(_) => {}
        }
        Ok(Boot {
            sections: sections(&serial),
            serial,
            elapsed,
            accel,
        })
    }
}

/// Splits the console at `==> NAME` lines. Kernel messages may interleave.
fn sections(serial: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in serial.lines() {
        if let Some(name) = line.strip_prefix("==> ") {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((n, body)) = current {
        out.insert(n, body);
    }
    out
}

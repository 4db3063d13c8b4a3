//! The kernel to boot: a Debian kernel package, fetched with `apt-get
//! download` (never installed on the host) and cached, vmlinuz and config
//! only, in target/qemu-kernel/.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _, Result};

/// The Debian package whose dependency names the kernel to boot: the cloud
/// flavour is the smallest (no hardware drivers) and has BPF, cgroup BPF
/// and the BPF JIT built in. Override with $CLASSIFIER_QEMU_KERNEL_PACKAGE
/// (a meta-package or a versioned `linux-image-*` package).
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Kernel config options the classifier needs built in.
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BPF_SYSCALL=y",
    "CONFIG_CGROUP_BPF=y",
    "CONFIG_BPF_JIT=y",
    "CONFIG_CGROUPS=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_DEVTMPFS=y",
    "CONFIG_SERIAL_8250_CONSOLE=y",
    "CONFIG_IPV6=y",
];

pub struct Kernel {
    /// `uname -r` of the kernel, from its file name (vmlinuz-RELEASE).
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The package it came from.
    pub package: String,
}

/// Where downloaded kernels are kept between runs.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qemu-kernel")
}

/// The kernel of `package` (default: [`DEFAULT_KERNEL_PACKAGE`]), from the
/// cache or downloaded with `apt-get download`. Runs `apt-get update` once
/// if the package lists do not know it (a fresh machine).
pub fn debian_kernel() -> Result<Kernel> {
    let requested = std::env::var("CLASSIFIER_QEMU_KERNEL_PACKAGE")
        .unwrap_or_else(|_| DEFAULT_KERNEL_PACKAGE.to_owned());
    let package = match resolve_package(&requested) {
        Ok(p) => p,
        Err(first) => {
            eprintln!("qemu: {first:#}; running apt-get update");
            match run_apt(Command::new("apt-get").args(["update", "-qq"]))
                .and_then(|()| resolve_package(&requested))
            {
                Ok(p) => p,
                // Offline: any kernel downloaded before will do.
                Err(err) => return any_cached().ok_or(err),
            }
        }
    };
    let dir = cache_dir().join(&package);
    if let Some(kernel) = cached(&dir, &package)? {
        return Ok(kernel);
    }
    fs::create_dir_all(cache_dir())?;
    // Download and extract next to the cache entry, then rename: a run
    // stopped half way leaves no half entry that looks complete.
    let staging = cache_dir().join(format!(".{package}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let result = (|| -> Result<()> {
        let download = || {
            run_apt(
                Command::new("apt-get")
                    .args(["download", "-qq", "-o", "APT::Sandbox::User=root"])
                    .arg(&package)
                    .current_dir(&staging),
            )
        };
        if let Err(first) = download() {
            eprintln!("qemu: {first:#}; running apt-get update and retrying");
            run_apt(Command::new("apt-get").args(["update", "-qq"]))?;
            download()?;
        }
        let deb = fs::read_dir(&staging)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        // Only ./boot (vmlinuz, config, System.map): the modules are not needed.
        let status = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" ./boot")
            .arg("sh")
            .arg(&deb)
            .arg(&staging)
            .status()?;
        ensure!(status.success(), "extracting ./boot from {}", deb.display());
        fs::remove_file(&deb)?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staging, &dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.with_context(|| format!("fetching kernel package {package}"))?;
    cached(&dir, &package)?.with_context(|| format!("no boot/vmlinuz-* in {package}"))
}

/// A meta-package (`linux-image-cloud-amd64`) names the current kernel in
/// its Depends; a versioned package is taken as is.
fn resolve_package(requested: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", requested])
        .stderr(Stdio::null())
        .output()
        .context("running apt-cache (Debian's apt is needed to fetch the kernel)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.lines().next().is_some(),
        "apt-cache does not know {requested}"
    );
    let dep = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Depends: ")
            .filter(|d| d.starts_with("linux-image-") && !d.starts_with('<'))
            .map(str::to_owned)
    });
    Ok(dep.unwrap_or_else(|| requested.to_owned()))
}

fn run_apt(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn any_cached() -> Option<Kernel> {
    fs::read_dir(cache_dir()).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (!name.starts_with('.'))
            .then(|| cached(&e.path(), &name).ok().flatten())
            .flatten()
    })
}

fn cached(dir: &Path, package: &str) -> Result<Option<Kernel>> {
    let boot = dir.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let config = fs::read_to_string(boot.join(format!("config-{release}")))
                .with_context(|| format!("config of {package}"))?;
            for option in REQUIRED_CONFIG {
                ensure!(
                    config.lines().any(|l| l == *option),
                    "{package} lacks {option}"
                );
            }
            return Ok(Some(Kernel {
                release: release.to_owned(),
                vmlinuz: entry.path(),
                package: package.to_owned(),
            }));
        }
    }
    Ok(None)
}

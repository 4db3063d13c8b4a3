//! Runs the classifier on another kernel: a Debian kernel package booted
//! under qemu-system-x86_64 with a small initramfs (busybox, `classifier`,
//! `probe` and their shared libraries). The guest's /init starts the agent,
//! makes an IPv4 and an IPv6 connect from the test cgroup, prints what it
//! saw in `==> NAME` sections on the serial console, and powers off.
//!
//! The kernel is fetched with `apt-get download` (never installed on the
//! host) and cached, vmlinuz and config only, in target/qemu-kernel/. The
//! initramfs and the serial log live in a temp directory removed on drop.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

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

/// Hard limit for one boot + test. Under TCG it takes about 5 s here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

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

/// qemu-system-x86_64 on $PATH or in /usr/bin.
pub fn qemu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
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

/// The guest's /init. Everything the test checks is printed in sections
/// that start with a `==> NAME` line; the last one is `==> result PASS` or
/// `==> result FAIL: why`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mkdir -p /tmp
ip link set lo up
section() { echo "==> $*"; }
finish() { section result "$@"; sync; poweroff -f; sleep 60; }
section release; uname -r
mkdir /sys/fs/cgroup/t
: >/tmp/agent.log
RUST_LOG=info classifier agent --cgroup /sys/fs/cgroup/t --pin-dir /sys/fs/bpf/c \
    --watch-interval 0.2 >/tmp/agent.log 2>&1 &
AGENT=$!
i=0
while ! grep -q "policy applied" /tmp/agent.log; do
    kill -0 $AGENT 2>/dev/null || break
    i=$((i + 1)); [ $i -gt 1200 ] && break
    sleep 0.1
done
section agent-log; cat /tmp/agent.log
grep -q "policy applied" /tmp/agent.log || finish "FAIL: the agent applied no policy"
section links; ls /sys/fs/bpf/c/links
# As the harness does: the probe joins the test cgroup ("0" moves the
# writing process), then execs.
in_cgroup() { sh -c 'echo 0 >/sys/fs/cgroup/t/cgroup.procs && exec "$@"' sh "$@"; }
pass=1
# case NAME LISTEN-AND-CONNECT-ADDR
case_() {
    : >/tmp/$1.serve
    in_cgroup probe serve "$2" 1 >/tmp/$1.serve 2>&1 &
    server=$!
    i=0
    until grep -q '^ready' /tmp/$1.serve; do
        kill -0 $server 2>/dev/null || break
        i=$((i + 1)); [ $i -gt 300 ] && break
        sleep 0.1
    done
    section $1-connect; in_cgroup probe connect "$2" 2>&1
    i=0
    while kill -0 $server 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 300 ] && kill $server && break
        sleep 0.1
    done
    section $1-serve; cat /tmp/$1.serve
    grep -q '"protocol":"opaque"' /tmp/$1.serve || pass=0
}
case_ v4 127.0.0.1:3306
case_ v6 [::1]:3306
section stats; classifier stats --json --pin-dir /sys/fs/bpf/c 2>&1
kill -0 $AGENT 2>/dev/null || { pass=0; section agent-exited; cat /tmp/agent.log; }
[ $pass = 1 ] && finish PASS
finish "FAIL: a connect was not classified opaque"
"#;

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

    /// Writes the initramfs: busybox, `classifier`, `probe`, the shared
    /// libraries they load (from ldd) and /init.
    pub fn build_initramfs(&self, classifier: &Path, probe: &Path) -> Result<PathBuf> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("no busybox (install busybox-static)")?;
        let mut cpio = Cpio::default();
        for d in [
            "bin", "dev", "proc", "sys", "tmp", "lib", "lib64", "usr", "usr/lib",
        ] {
            cpio.dir(d);
        }
        cpio.char_device("dev/console", 0o600, 5, 1);
        cpio.char_device("dev/null", 0o666, 1, 3);
        cpio.file("init", 0o755, INIT.as_bytes().to_vec());
        let mut libs = Vec::new();
        for (name, path) in [
            ("busybox", &busybox),
            ("classifier", &classifier.to_path_buf()),
            ("probe", &probe.to_path_buf()),
        ] {
            cpio.file(
                &format!("bin/{name}"),
                0o755,
                fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            );
            for lib in shared_libraries(path)? {
                if !libs.contains(&lib) {
                    libs.push(lib);
                }
            }
        }
        for lib in &libs {
            let rel = lib.strip_prefix("/").unwrap_or(lib);
            let mut parent = PathBuf::new();
            for part in rel.parent().into_iter().flat_map(Path::components) {
                parent.push(part);
                cpio.dir(&parent.to_string_lossy());
            }
            // fs::read follows the symlink chain to the real library.
            cpio.file(
                &rel.to_string_lossy(),
                0o755,
                fs::read(lib).with_context(|| format!("reading {}", lib.display()))?,
            );
        }
        let path = self.dir.join("initramfs.cpio");
        fs::write(&path, cpio.finish())?;
        Ok(path)
    }

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

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
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

/// Absolute paths of the shared libraries and dynamic loader `binary` needs
/// (none for a static binary).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no path.
        if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| s.starts_with('/'));
        if let Some(path) = path {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// An uncompressed cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08x}").unwrap();
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_owned());
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entry(name, 0o100000 | (perm & 0o7777), (0, 0), &data);
    }

    fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The `probe` binary built with this package (see the crate root).
pub fn probe_bin() -> PathBuf {
    crate::probe_bin()
}

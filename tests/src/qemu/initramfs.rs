//! The guest's initramfs: its /init script, the binaries and shared
//! libraries it runs, packed as the uncompressed "newc" cpio archive the
//! kernel unpacks.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::Guest;

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

impl Guest {
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

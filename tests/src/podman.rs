//! podman for one test: a private store under the test's directory, runc
//! (crun refuses hybrid cgroup layouts), the cgroupfs manager (PID 1 need
//! not be systemd), never a pull, and explicit rlimits (a sandbox without
//! CAP_SYS_RESOURCE cannot raise podman's defaults). On drop every
//! container is removed, the store deleted and the cgroups its containers
//! were placed under removed, pass or fail.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::run;

/// The archives `cargo xtask image` writes: $CLASSIFIER_IMAGES_DIR, else
/// target/images/ of this workspace.
pub fn images_dir() -> PathBuf {
    std::env::var_os("CLASSIFIER_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"))
}

/// The agent image's archive and reference (xtask/src/image.rs).
pub const CLASSIFIER_ARCHIVE: &str = "classifier.oci.tar";
pub const CLASSIFIER_IMAGE: &str =
    concat!("docker.io/library/classifier:", env!("CARGO_PKG_VERSION"));

/// Whether a test that runs images can run: podman installed and the
/// archive built. Under CI=true a missing one fails the test.
pub fn available(test: &str, archive: &str) -> bool {
    let missing = if Command::new("podman").arg("--version").output().is_err() {
        Some("podman is not installed (Debian's podman)".to_owned())
    } else if !images_dir().join(archive).is_file() {
        Some(format!(
            "{} is missing: build it with `cargo xtask image` (`cargo xtask test` does)",
            images_dir().join(archive).display()
        ))
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: {why}, and CI=true forbids skipping")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

pub struct Podman {
    dir: PathBuf,
    /// `--cgroup-parent` of every container: one per test, removed on drop.
    cgroup_parent: String,
    /// containers/image's blob-info cache is always under
    /// /var/lib/containers for root; removed on drop if this made it.
    blob_cache_existed: bool,
}

const BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

impl Podman {
    /// A store in `dir` (created), containers under the cgroup `/NAME`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Podman {
            dir: dir.to_path_buf(),
            cgroup_parent: format!("/{name}-podman"),
            blob_cache_existed: Path::new(BLOB_INFO_CACHE).exists(),
        })
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(["--events-backend", "none", "--storage-driver", "overlay"])
            .arg("--network-config-dir")
            .arg(self.dir.join("network"));
        cmd
    }

    /// `podman load` of an OCI archive into this store.
    pub fn load(&self, archive: &Path) -> Result<()> {
        ensure!(
            archive.exists(),
            "{} does not exist: build the images first (`sudo -E cargo xtask image`, \
             or `cargo xtask test` without --no-images)",
            archive.display()
        );
        run(self
            .cmd()
            .arg("load")
            .arg("--quiet")
            .arg("--input")
            .arg(archive))
        .with_context(|| format!("podman load {}", archive.display()))?;
        Ok(())
    }

    /// `podman run --detach` with the flags every test container gets
    /// (no pull, no network, rlimits, this test's cgroup parent), then
    /// `args`; returns the container ID.
    pub fn start(&self, name: &str, args: &[String]) -> Result<String> {
        let out = run(self
            .cmd()
            .args(["run", "--detach", "--pull=never", "--network=none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg(format!("--cgroup-parent={}", self.cgroup_parent))
            .arg(format!("--name={name}"))
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `podman run --rm` in the foreground, with [`Podman::start`]'s
    /// flags; its output, whatever the exit status.
    pub fn run_to_end(&self, name: &str, args: &[String]) -> Result<std::process::Output> {
        self.cmd()
            .args(["run", "--rm", "--pull=never", "--network=none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg(format!("--cgroup-parent={}", self.cgroup_parent))
            .arg(format!("--name={name}"))
            .args(args)
            .output()
            .context("podman run")
    }

    pub fn logs(&self, id: &str) -> String {
        self.cmd()
            .args(["logs", id])
            .output()
            .map(|o| {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text
            })
            .unwrap_or_default()
    }

    /// `Some(exit code)` once the container has exited.
    pub fn exit_code(&self, id: &str) -> Result<Option<i32>> {
        let out = run(self.cmd().args([
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            id,
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some("exited" | "stopped"), Some(code)) => Ok(code.parse().ok()),
            _ => Ok(None),
        }
    }

    /// Waits until the container's log holds `needle` (`Ok(true)`) or it
    /// exits (`Ok(false)`).
    pub fn wait_for_log_or_exit(&self, id: &str, needle: &str, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs(id).contains(needle) {
                return Ok(true);
            }
            if self.exit_code(id)?.is_some() {
                return Ok(self.logs(id).contains(needle));
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id}: no {needle:?} within {timeout:?}:\n{}",
                    self.logs(id)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the container to exit; its exit code.
    pub fn wait_exit(&self, id: &str, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code(id)? {
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still running after {timeout:?}:\n{}",
                    self.logs(id)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `podman stop` (SIGTERM, then SIGKILL after `grace`); the exit code.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<i32> {
        run(self
            .cmd()
            .args(["stop", "--time", &grace.as_secs().to_string(), id]))?;
        self.wait_exit(id, Duration::from_secs(10))
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        run(self.cmd().args(["rm", "--force", id]))?;
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        // Unmounts and deletes everything in the store.
        let _ = self.cmd().args(["system", "reset", "--force"]).output();
        // runc removed each container's cgroup; what podman made around it
        // (the parent, conmon's) stays in every hierarchy unless removed.
        let parent = self.cgroup_parent.trim_start_matches('/');
        let mut roots = vec![Path::new("/sys/fs/cgroup").join(parent)];
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            roots.push(hierarchy.path().join(parent));
        }
        for root in roots {
            remove_cgroup_tree(&root);
        }
        let _ = fs::remove_dir_all(&self.dir);
        if !self.blob_cache_existed {
            let file = Path::new(BLOB_INFO_CACHE);
            let _ = fs::remove_file(file);
            for dir in file.ancestors().skip(1).take(2) {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// rmdir of `root` and everything below it, deepest first (a cgroup with
/// children cannot be removed).
fn remove_cgroup_tree(root: &Path) {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        i += 1;
    }
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}

//! Where the classifier lives on bpffs:
//!
//! ```text
//! <pin dir>/maps/CLS_*        every map (policy, verdicts, counters)
//! <pin dir>/links/<program>   the cgroup attachments
//! ```
//!
//! The links keep the programs attached with no process holding them, which
//! is what lets the agent restart (or crash) without a gap.
//!
//! What is not a pin (the rejected-objects report) goes in a state
//! directory under `/run`: `/run/classifier` for the default pin directory,
//! `/run/classifier/pins/<pin dir path>` for any other, so agents with
//! different pin directories (tests) never share one.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::sys;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/classifier";
/// The default pin directory's state directory (a writable volume in the
/// DaemonSet: the root file system is read-only).
pub const DEFAULT_STATE_DIR: &str = "/run/classifier";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
    state: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let state = if root == Path::new(DEFAULT_PIN_DIR) {
            PathBuf::from(DEFAULT_STATE_DIR)
        } else {
            let relative = root.strip_prefix("/").unwrap_or(&root);
            Path::new(DEFAULT_STATE_DIR).join("pins").join(relative)
        };
        Self { root, state }
    }

    /// A pin directory whose state directory is `state` (unit tests).
    pub fn with_state_dir(root: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            state: state.into(),
        }
    }

    /// Where the agent keeps what is not a pin (see the module docs).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Creates the state directory, root-only.
    pub fn prepare_state_dir(&self) -> Result<&Path> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state)
            .with_context(|| format!("creating state directory {}", self.state.display()))?;
        fs::set_permissions(&self.state, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} root-only", self.state.display()))?;
        Ok(&self.state)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    pub fn exists(&self) -> bool {
        self.maps_dir().is_dir()
    }

    /// Makes sure the pin directory is on a bpffs, mounting one on its
    /// parent's mount point if needed, and creates `maps/` and `links/`
    /// readable by root only.
    pub fn prepare(&self) -> Result<()> {
        let bpffs_root = bpffs_mount_point_for(&self.root);
        if !is_bpffs(&bpffs_root) {
            mount_bpffs(&bpffs_root)?;
        }
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .with_context(|| format!("creating pin directory {}", dir.display()))?;
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} root-only", dir.display()))?;
        }
        Ok(())
    }

    /// Removes every pin and the directories, and the state the agent kept
    /// under `/run`. Removing a link pin detaches its program once no
    /// process holds the link.
    pub fn remove_all(&self) -> Result<()> {
        super::status::RejectedReport::remove(self);
        // A per-pin-dir state directory is ours alone: it goes, with its
        // parents once empty. The default one may be a volume's mount
        // point, so only its files go.
        let mut dir = self.state.as_path();
        while dir.starts_with(DEFAULT_STATE_DIR)
            && dir != Path::new(DEFAULT_STATE_DIR)
            && fs::remove_dir(dir).is_ok()
        {
            dir = dir.parent().unwrap_or(Path::new(DEFAULT_STATE_DIR));
        }
        if self.root.exists() {
            fs::remove_dir_all(&self.root)
                .with_context(|| format!("removing {}", self.root.display()))?;
        }
        Ok(())
    }
}

/// `/sys/fs/bpf` for anything below it, else the pin dir's parent.
fn bpffs_mount_point_for(pin_dir: &Path) -> PathBuf {
    let standard = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(standard) {
        standard.to_path_buf()
    } else {
        pin_dir.parent().unwrap_or(pin_dir).to_path_buf()
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    sys::fs::fs_type(path).is_ok_and(|t| t == BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    if let Err(err) = sys::fs::mount("bpf", at, "mode=0700") {
        bail!(
            "bpffs is not mounted at {} and mounting it failed: {err}",
            at.display()
        );
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}

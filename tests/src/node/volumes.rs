//! Pod volumes laid out as the kubelet lays them out under
//! `pods/<uid>/volumes/<plugin>/<name>`: ConfigMaps and projected
//! service-account tokens with the atomic writer's layout (a timestamped
//! `..<ts>` directory, a `..data` symlink to it, and one symlink per key into
//! `..data`), so an update is one rename of `..data`, exactly what the
//! agent's policy reload must follow.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

/// Writes `files` into `dir` with the atomic writer's layout; on an
/// existing `dir`, swaps `..data` to a new timestamped directory and
/// removes the old one, as the kubelet does on a ConfigMap update.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let ts_name = format!("..{nanos}");
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir)?;
    for (key, value) in files {
        let path = ts_dir.join(key);
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&ts_name, &tmp)?;
    fs::rename(&tmp, dir.join("..data"))?;
    for key in files.keys() {
        let link = dir.join(key);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link)?;
        }
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

/// `pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`.
pub fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

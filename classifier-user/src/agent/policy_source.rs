//! Where the agent's policy comes from: the built-in default or a file,
//! watched by polling its contents. Polling (default every second) rather
//! than inotify because ConfigMap volumes update through symlink swaps that
//! inotify watches on the file miss; reading a small file once a second
//! costs nothing.

use std::{fs, path::PathBuf};

use anyhow::Result;

use crate::policy::{load_policy_file, Policy};

pub struct PolicySource {
    path: Option<PathBuf>,
    last_seen: Option<Vec<u8>>,
}

impl PolicySource {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            last_seen: None,
        }
    }

    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "built-in default policy".to_owned(),
        }
    }

    /// Loads the policy now, remembering what was read.
    pub fn load(&mut self) -> Result<Policy> {
        let Some(path) = &self.path else {
            return Ok(Policy::builtin_default());
        };
        self.last_seen = fs::read(path).ok();
        Ok(load_policy_file(path)?)
    }

    /// `None` when the file is unchanged (or there is no file), else the
    /// result of loading the new contents. A file that disappears is
    /// reported once and the active policy stays.
    pub fn reload_if_changed(&mut self) -> Option<Result<Policy>> {
        let path = self.path.as_ref()?;
        let now = fs::read(path).ok();
        if now == self.last_seen {
            return None;
        }
        self.last_seen = now;
        Some(load_policy_file(path).map_err(Into::into))
    }
}

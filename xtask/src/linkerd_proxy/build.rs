//! Building and testing the proxy from a prepared tree.
//!
//! One cargo target directory, outside the clone, serves the stock and the
//! patched builds and every later run: switching branches rebuilds only the
//! crates the series touches (and what depends on them). Built binaries are
//! kept next to it under a key of their inputs, so a run whose inputs did
//! not change does not build at all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::source::{self, Tree, Upstream, PATCHED, STOCK};
use crate::util::{run_checked, show, step};

/// Bumped whenever the way the proxy is built changes (flags, profile), so
/// that cached binaries built the old way are not reused.
const BUILD_RECIPE: &str = "dev-nodebug-tokio_unstable-1";

/// Where the builds happen and what they produce.
pub struct Builder {
    pub target_dir: PathBuf,
    pub tree: Tree,
    upstream: Upstream,
}

/// The two proxies of one pinned commit.
pub struct Proxies {
    pub stock: PathBuf,
    pub patched: PathBuf,
}

impl Builder {
    pub fn new(target_dir: PathBuf, tree: Tree, upstream: Upstream) -> Self {
        Self {
            target_dir,
            tree,
            upstream,
        }
    }

    /// A cargo command in the proxy's workspace, with the flags upstream's
    /// Dockerfile builds with and the installed stable toolchain.
    pub fn cargo(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(dir)
            // Upstream's rust-toolchain.toml is removed; make sure no
            // toolchain chosen for this workspace leaks in either.
            .env("RUSTUP_TOOLCHAIN", "stable")
            // kubert-prometheus-tokio does not compile without it.
            .env("RUSTFLAGS", "--cfg tokio_unstable")
            // A debug build without debug info: about a tenth of the disk
            // and link time of upstream's default, same code paths.
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env("CARGO_INCREMENTAL", "0")
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("RUSTC_WRAPPER");
        cmd
    }

    fn cached(&self, side: &str) -> Result<PathBuf> {
        let mut key = format!(
            "{}-{}-{BUILD_RECIPE}",
            &self.upstream.proxy.commit[..12],
            &self.upstream.kubert.commit[..12]
        );
        if side == PATCHED {
            key.push('-');
            key.push_str(&source::series_digest(&source::series()?)?);
        }
        Ok(self
            .target_dir
            .join("classifier-bins")
            .join(format!("linkerd2-proxy-{side}-{key}")))
    }

    /// Builds (or reuses) the stock and the patched proxy.
    pub fn proxies(&self) -> Result<Proxies> {
        Ok(Proxies {
            stock: self.proxy(STOCK)?,
            patched: self.proxy(PATCHED)?,
        })
    }

    fn proxy(&self, side: &str) -> Result<PathBuf> {
        let cached = self.cached(side)?;
        if cached.is_file() {
            step!("{side} linkerd2-proxy: reusing {}", cached.display());
            return Ok(cached);
        }
        source::checkout(&self.tree, side)?;
        step!(
            "building the {side} linkerd2-proxy in {} (cold: about 4 minutes on 2 cores; \
             after that only the crates the series touches rebuild)",
            self.target_dir.display()
        );
        let started = Instant::now();
        let mut cmd = self.cargo(&self.tree.proxy);
        cmd.args(["build", "-p", "linkerd2-proxy"]);
        run_checked(&mut cmd, &format!("building the {side} linkerd2-proxy"))?;
        let built = self.target_dir.join("debug").join("linkerd2-proxy");
        ensure!(built.is_file(), "{} was not built", built.display());
        fs::create_dir_all(cached.parent().unwrap())?;
        // Copy through a temporary name: a half-written file must never
        // look like a cached build.
        let tmp = cached.with_extension("tmp");
        fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
        fs::rename(&tmp, &cached)?;
        step!(
            "built the {side} linkerd2-proxy in {:.0} s: {}",
            started.elapsed().as_secs_f64(),
            cached.display()
        );
        Ok(cached)
    }

    /// The workspace packages the series touches, from its changed files.
    pub fn touched_packages(&self) -> Result<Vec<String>> {
        let mut packages = Vec::new();
        for file in &self.tree.changed {
            let mut dir = self.tree.proxy.join(file);
            while dir.pop() && dir.starts_with(&self.tree.proxy) {
                let manifest = dir.join("Cargo.toml");
                if let Some(name) = package_name(&manifest)? {
                    if !packages.contains(&name) {
                        packages.push(name);
                    }
                    break;
                }
            }
        }
        packages.sort();
        Ok(packages)
    }

    /// Upstream's tests of every package the series touches, which include
    /// the series' own tests.
    pub fn test(&self) -> Result<()> {
        source::checkout(&self.tree, PATCHED)?;
        let packages = self.touched_packages()?;
        ensure!(!packages.is_empty(), "the series touches no package?");
        step!(
            "testing the packages the series touches: {} (the first build of their tests \
             takes several minutes)",
            packages.join(", ")
        );
        let started = Instant::now();
        let mut cmd = self.cargo(&self.tree.proxy);
        cmd.arg("test");
        for p in &packages {
            cmd.args(["-p", p]);
        }
        cmd.args(["--", "--test-threads", "2"]);
        step!("{}", show(&cmd));
        run_checked(&mut cmd, "linkerd2-proxy tests")?;
        step!(
            "linkerd2-proxy tests passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// `[package] name` of a manifest, `None` for a virtual one or none at all.
fn package_name(manifest: &Path) -> Result<Option<String>> {
    let Ok(text) = fs::read_to_string(manifest) else {
        return Ok(None);
    };
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start().trim_start_matches('=').trim();
                return Ok(Some(value.trim_matches('"').to_owned()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::package_name;

    #[test]
    fn reads_package_names() {
        let dir = std::env::temp_dir().join(format!("xtask-pkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"linkerd-app-outbound\"\nversion = { workspace = true }\n",
        )
        .unwrap();
        assert_eq!(
            package_name(&manifest).unwrap().as_deref(),
            Some("linkerd-app-outbound")
        );
        std::fs::write(&manifest, "[workspace]\nmembers = [\"a\"]\n").unwrap();
        assert_eq!(package_name(&manifest).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(package_name(&manifest).unwrap(), None);
    }
}

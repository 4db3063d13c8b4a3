//! The linkerd2-proxy source tree the series is built from: the pinned
//! upstream commits (`integrations/linkerd2-proxy/UPSTREAM`), unpacked under
//! `target/linkerd2-proxy/src/` as a small git repository with two branches:
//!
//! - `stock`: upstream plus the local build preparation (the two
//!   `kubert-prometheus-*` dependencies point at the unpacked linkerd-kubert
//!   instead of github.com; upstream's `rust-toolchain.toml`, which names a
//!   toolchain that cannot be installed here, is removed);
//! - `patched`: `stock` plus the series (`git am patches/*.patch`).
//!
//! Switching branches with `git checkout` gives the files that differ a new
//! mtime, which is what keeps cargo's fingerprints right when one target
//! directory serves both builds. A fresh unpack gets the series' files
//! touched for the same reason (a cached target directory may hold artifacts
//! built from either side).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::cargo::workspace_root;
use crate::util::{run_checked, step};

/// One pinned upstream source, a line of `UPSTREAM`.
#[derive(Clone, Debug)]
pub struct Pin {
    pub name: String,
    pub url: String,
    pub commit: String,
}

/// The two sources the build needs.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub proxy: Pin,
    pub kubert: Pin,
}

/// Where the sources come from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A directory with `NAME-COMMIT.tar.gz` archives or `NAME/` checkouts.
    Dir(PathBuf),
    /// `git fetch` of the pinned commits from their URLs.
    Git,
}

/// A prepared tree.
pub struct Tree {
    /// The linkerd2-proxy workspace (a git repository).
    pub proxy: PathBuf,
    /// Files the series changes, relative to `proxy`.
    pub changed: Vec<String>,
}

pub const STOCK: &str = "stock";
pub const PATCHED: &str = "patched";

pub fn integration_dir() -> PathBuf {
    workspace_root().join("integrations").join("linkerd2-proxy")
}

/// `integrations/linkerd2-proxy/patches/*.patch`, in order.
pub fn series() -> Result<Vec<PathBuf>> {
    let dir = integration_dir().join("patches");
    let mut patches: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    patches.sort();
    ensure!(!patches.is_empty(), "{}: no *.patch files", dir.display());
    Ok(patches)
}

/// A short, stable digest of the series' bytes (FNV-1a, 64 bits): part of
/// the cache key of the patched binary.
pub fn series_digest(patches: &[PathBuf]) -> Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for patch in patches {
        let bytes = fs::read(patch).with_context(|| format!("reading {}", patch.display()))?;
        for b in bytes.iter().chain(b"\0") {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

impl Upstream {
    /// Parses `integrations/linkerd2-proxy/UPSTREAM`.
    pub fn read() -> Result<Upstream> {
        let path = integration_dir().join("UPSTREAM");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    fn parse(text: &str) -> Result<Upstream> {
        let mut pins = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, url, commit] = fields[..] else {
                bail!("line {}: expected `NAME URL COMMIT`, found {line:?}", i + 1);
            };
            ensure!(
                commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                "line {}: commit {commit:?} is not a 40-digit hex id",
                i + 1
            );
            pins.push(Pin {
                name: name.to_owned(),
                url: url.to_owned(),
                commit: commit.to_owned(),
            });
        }
        let take = |name: &str| {
            pins.iter()
                .find(|p| p.name == name)
                .cloned()
                .with_context(|| format!("no line for {name}"))
        };
        Ok(Upstream {
            proxy: take("linkerd2-proxy")?,
            kubert: take("linkerd-kubert")?,
        })
    }
}

impl Origin {
    /// `--src DIR`, else `../shared/upstream` when it holds the archives,
    /// else git.
    pub fn choose(src: Option<PathBuf>, upstream: &Upstream) -> Result<Origin> {
        if let Some(dir) = src {
            ensure!(dir.is_dir(), "--src {}: not a directory", dir.display());
            return Ok(Origin::Dir(dir));
        }
        let shared = workspace_root().join("..").join("shared").join("upstream");
        if [&upstream.proxy, &upstream.kubert]
            .iter()
            .all(|pin| archive(&shared, pin).is_file())
        {
            return Ok(Origin::Dir(shared));
        }
        Ok(Origin::Git)
    }

    fn describe(&self) -> String {
        match self {
            Origin::Dir(dir) => dir.display().to_string(),
            Origin::Git => "git (github.com)".to_owned(),
        }
    }

    /// Puts `pin`'s tree at `dest`.
    fn fetch(&self, pin: &Pin, dest: &Path) -> Result<()> {
        match self {
            Origin::Dir(dir) if archive(dir, pin).is_file() => {
                let parent = dest.parent().expect("dest has a parent");
                run_checked(
                    Command::new("tar")
                        .arg("-xzf")
                        .arg(archive(dir, pin))
                        .arg("-C")
                        .arg(parent),
                    &format!("unpacking {}", archive(dir, pin).display()),
                )?;
                ensure!(
                    dest.is_dir(),
                    "{} did not unpack into {}/",
                    archive(dir, pin).display(),
                    pin.name
                );
                Ok(())
            }
            Origin::Dir(dir) if dir.join(&pin.name).is_dir() => {
                let checkout = dir.join(&pin.name);
                if checkout.join(".git").exists() {
                    let head = git_output(&checkout, &["rev-parse", "HEAD"])?;
                    ensure!(
                        head == pin.commit,
                        "{} is at {head}, but UPSTREAM pins {} at {}",
                        checkout.display(),
                        pin.name,
                        pin.commit
                    );
                }
                run_checked(
                    Command::new("cp").arg("-a").arg(&checkout).arg(dest),
                    &format!("copying {}", checkout.display()),
                )?;
                // The copy's own history is not ours to touch.
                let _ = fs::remove_dir_all(dest.join(".git"));
                Ok(())
            }
            Origin::Dir(dir) => bail!(
                "--src {}: neither {} nor {}/ is there",
                dir.display(),
                archive(dir, pin)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy(),
                pin.name
            ),
            Origin::Git => {
                fs::create_dir_all(dest)?;
                for args in [
                    &["init", "-q"][..],
                    &["fetch", "-q", "--depth", "1", &pin.url, &pin.commit],
                    &["checkout", "-q", "FETCH_HEAD"],
                ] {
                    run_checked(
                        Command::new("git").arg("-C").arg(dest).args(args),
                        &format!("git {} ({})", args[0], pin.url),
                    )?;
                }
                fs::remove_dir_all(dest.join(".git"))?;
                Ok(())
            }
        }
    }
}

fn archive(dir: &Path, pin: &Pin) -> PathBuf {
    dir.join(format!("{}-{}.tar.gz", pin.name, pin.commit))
}

/// Makes `work/src` hold the prepared tree for `upstream` and the series,
/// reusing it when it was prepared from the same inputs.
pub fn prepare(work: &Path, upstream: &Upstream, origin: &Origin) -> Result<Tree> {
    let patches = series()?;
    let stamp_text = format!(
        "linkerd2-proxy {}\nlinkerd-kubert {}\nseries {}\n",
        upstream.proxy.commit,
        upstream.kubert.commit,
        series_digest(&patches)?
    );
    let src = work.join("src");
    let stamp = src.join("prepared");
    let proxy = src.join(&upstream.proxy.name);
    if fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        step!("reusing the prepared tree in {}", src.display());
        let changed = changed_files(&proxy)?;
        return Ok(Tree { proxy, changed });
    }

    step!(
        "preparing {} from {} (linkerd2-proxy {}, {} patches)",
        src.display(),
        origin.describe(),
        &upstream.proxy.commit[..12],
        patches.len()
    );
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    fs::create_dir_all(&src)?;
    origin.fetch(&upstream.proxy, &proxy)?;
    origin.fetch(&upstream.kubert, &src.join(&upstream.kubert.name))?;

    git(&proxy, &["init", "-q", "-b", "upstream"])?;
    git(&proxy, &["add", "-A"])?;
    let message = format!("upstream {}", upstream.proxy.commit);
    git(&proxy, &["commit", "-q", "--no-verify", "-m", &message])?;

    prepare_build(&proxy, &upstream.kubert.name)?;
    git(&proxy, &["checkout", "-q", "-b", STOCK])?;
    git(&proxy, &["add", "-A"])?;
    git(
        &proxy,
        &[
            "commit",
            "-q",
            "--no-verify",
            "-m",
            "build: take linkerd-kubert from the local copy; use the installed toolchain",
        ],
    )?;

    git(&proxy, &["checkout", "-q", "-b", PATCHED])?;
    let mut am = git_cmd(&proxy);
    am.args(["am", "-q", "--no-gpg-sign"]).args(&patches);
    if let Err(err) = run_checked(&mut am, "git am") {
        let _ = git(&proxy, &["am", "--abort"]);
        return Err(err).context(format!(
            "the series in {} does not apply to linkerd2-proxy {}; \
             see integrations/linkerd2-proxy/README.md (refreshing the series)",
            integration_dir().join("patches").display(),
            upstream.proxy.commit
        ));
    }

    // A cached target directory may hold artifacts of either side built
    // from files newer than these archive mtimes: make the series' files
    // newer than any of them.
    let changed = changed_files(&proxy)?;
    for file in &changed {
        let path = proxy.join(file);
        if path.exists() {
            run_checked(Command::new("touch").arg(&path), "touch")?;
        }
    }
    fs::write(&stamp, stamp_text)?;
    Ok(Tree { proxy, changed })
}

/// Points the `kubert-prometheus-*` workspace dependencies at the local
/// linkerd-kubert copy, drops their git sources from Cargo.lock, and removes
/// `rust-toolchain.toml`.
fn prepare_build(proxy: &Path, kubert: &str) -> Result<()> {
    let manifest = proxy.join("Cargo.toml");
    let mut text = fs::read_to_string(&manifest)?;
    let lock = proxy.join("Cargo.lock");
    let mut lock_text = fs::read_to_string(&lock)?;
    for krate in ["kubert-prometheus-process", "kubert-prometheus-tokio"] {
        let section = format!("[workspace.dependencies.{krate}]");
        let start = text
            .find(&section)
            .with_context(|| format!("{}: no {section}", manifest.display()))?;
        let end = text[start + section.len()..]
            .find("\n[")
            .map(|i| start + section.len() + i)
            .unwrap_or(text.len());
        let body: String = text[start..end]
            .lines()
            .filter(|l| !l.starts_with("git =") && !l.starts_with("tag ="))
            .map(|l| format!("{l}\n"))
            .collect();
        // Keep the blank lines that separated the section from the next.
        let body = body.trim_end_matches('\n');
        let gap = &text[start..end][text[start..end].trim_end_matches('\n').len()..];
        let body = format!("{body}\npath = \"../{kubert}/{krate}\"{gap}");
        text.replace_range(start..end, &body);

        let needle = format!("name = \"{krate}\"\n");
        let at = lock_text
            .find(&needle)
            .with_context(|| format!("{}: no package {krate}", lock.display()))?;
        let rest = &lock_text[at + needle.len()..];
        if let Some(line_end) = rest
            .lines()
            .take(2)
            .find(|l| l.starts_with("source = \"git+"))
            .map(|l| l.len())
        {
            let line_start = at + needle.len() + rest.find("source = \"git+").unwrap();
            lock_text.replace_range(line_start..line_start + line_end + 1, "");
        }
    }
    fs::write(&manifest, text)?;
    fs::write(&lock, lock_text)?;
    let toolchain = proxy.join("rust-toolchain.toml");
    if toolchain.exists() {
        fs::remove_file(toolchain)?;
    }
    Ok(())
}

/// Files that differ between `stock` and `patched`.
fn changed_files(proxy: &Path) -> Result<Vec<String>> {
    let out = git_output(proxy, &["diff", "--name-only", STOCK, PATCHED])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Checks out `branch` (files that differ get a new mtime).
pub fn checkout(tree: &Tree, branch: &str) -> Result<()> {
    git(&tree.proxy, &["checkout", "-q", branch])
}

fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "user.name=xtask", "-c", "user.email=xtask@localhost"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ]);
    cmd
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    run_checked(git_cmd(dir).args(args), &format!("git {}", args.join(" ")))
}

fn git_output(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git_cmd(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "git {} in {}: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream() {
        let up = Upstream::parse(
            "# comment\n\nlinkerd2-proxy https://x/p 29637b64f6cebedaf15bfbf516818d7a28a4d5a6\n\
             linkerd-kubert https://x/k cb414cccb5099a0246f4b9b3f298f66e1bf21318\n",
        )
        .unwrap();
        assert_eq!(up.proxy.commit, "29637b64f6cebedaf15bfbf516818d7a28a4d5a6");
        assert_eq!(up.kubert.url, "https://x/k");
    }

    #[test]
    fn rejects_bad_upstream_lines() {
        let err = Upstream::parse("linkerd2-proxy https://x/p abc\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: commit \"abc\" is not a 40-digit hex id"
        );
        let err = Upstream::parse("linkerd2-proxy https://x/p\n").unwrap_err();
        assert!(err.to_string().starts_with("line 1: expected"), "{err}");
        let err = Upstream::parse(
            "linkerd2-proxy https://x/p 29637b64f6cebedaf15bfbf516818d7a28a4d5a6\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no line for linkerd-kubert");
    }

    #[test]
    fn the_committed_upstream_file_parses() {
        let up = Upstream::read().unwrap();
        assert_eq!(up.proxy.name, "linkerd2-proxy");
    }

    #[test]
    fn build_preparation_points_kubert_at_the_local_copy() {
        let dir = std::env::temp_dir().join(format!("xtask-prep-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("Cargo.toml"),
            "[workspace.dependencies.kubert-prometheus-process]\nversion = \"0.2\"\n\
             default-features = false\ngit = \"https://github.com/linkerd/linkerd-kubert.git\"\n\
             tag = \"kubert-prometheus-process/v0.2.4\"\n\n\
             [workspace.dependencies.kubert-prometheus-tokio]\nversion = \"0.2\"\n\
             git = \"https://github.com/linkerd/linkerd-kubert.git\"\ntag = \"t\"\n\n[other]\nx = 1\n",
        )
        .unwrap();
        fs::write(
            dir.join("Cargo.lock"),
            "[[package]]\nname = \"kubert-prometheus-process\"\nversion = \"0.2.4\"\n\
             source = \"git+https://github.com/linkerd/linkerd-kubert.git?tag=a#cb41\"\n\n\
             [[package]]\nname = \"kubert-prometheus-tokio\"\nversion = \"0.2.1\"\n\
             source = \"git+https://github.com/linkerd/linkerd-kubert.git?tag=b#cb41\"\n",
        )
        .unwrap();
        fs::write(dir.join("rust-toolchain.toml"), "").unwrap();
        prepare_build(&dir, "linkerd-kubert").unwrap();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let lock = fs::read_to_string(dir.join("Cargo.lock")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            manifest,
            "[workspace.dependencies.kubert-prometheus-process]\nversion = \"0.2\"\n\
             default-features = false\npath = \"../linkerd-kubert/kubert-prometheus-process\"\n\n\
             [workspace.dependencies.kubert-prometheus-tokio]\nversion = \"0.2\"\n\
             path = \"../linkerd-kubert/kubert-prometheus-tokio\"\n\n[other]\nx = 1\n"
        );
        assert!(!lock.contains("source"), "{lock}");
        assert!(lock.contains("name = \"kubert-prometheus-tokio\"\nversion = \"0.2.1\"\n"));
    }
}

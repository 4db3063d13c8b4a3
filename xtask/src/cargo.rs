//! Invoking cargo: building the userspace binary and locating it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{output_of, run_checked, step};

/// Name of the userspace binary built by the `classifier-user` package.
pub const BIN_NAME: &str = "classifier";
const USER_PACKAGE: &str = "classifier-user";

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root. Uses `$CARGO` (set when we
/// run under `cargo run`) so the same toolchain builds everything.
pub fn cargo() -> Command {
    let bin = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(bin);
    cmd.current_dir(workspace_root());
    cmd
}

/// Cargo's target directory: `cargo metadata` (honours CARGO_TARGET_DIR and
/// `build.target-dir`), falling back to CARGO_TARGET_DIR or `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    if let Some(json) = output_of(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
    {
        if let Some(dir) = json_string_field(&json, "target_directory") {
            return root.join(dir);
        }
    }
    match env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Extract a top-level string field from cargo's JSON without a JSON crate.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key)? + key.len();
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other), // \" \\ \/
            },
            c => out.push(c),
        }
    }
    None
}

/// `cargo build [--release] -p classifier-user`; returns the absolute path of
/// the resulting binary. The package's build script compiles the eBPF crate
/// via aya-build (`rustup run nightly cargo build -Z build-std=core ...`).
pub fn build_classifier(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    step!("building {USER_PACKAGE} ({profile}); its build script compiles the eBPF program with nightly");
    let mut cmd = cargo();
    cmd.args(["build", "-p", USER_PACKAGE]);
    if release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd, &format!("cargo build -p {USER_PACKAGE}"))?;
    let bin = target_dir().join(profile).join(BIN_NAME);
    if !bin.is_file() {
        bail!(
            "cargo build succeeded but {} does not exist (does {USER_PACKAGE} define a \
             [[bin]] named `{BIN_NAME}`?)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `cargo build --release -p tests --bin NAME...`: the helper binaries of the
/// tests crate (probe, demo, bench, linkerd-e2e).
pub fn build_test_bins(bins: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "tests"]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    run_checked(&mut cmd, "building the tests crate's binaries")
}

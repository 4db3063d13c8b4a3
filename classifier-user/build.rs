//! Builds the kernel programs (`classifier-ebpf`) with the nightly toolchain
//! and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1` (unit tests of the pure-Rust modules on machines
//! without the eBPF toolchain) an empty object is left instead; the agent
//! then refuses to start with a message saying so.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("classifier");
    let ebpf_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../classifier-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?.to_owned();
    aya_build::build_ebpf(
        [Package { name: "classifier-ebpf", root_dir: &ebpf_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; `cargo xtask build` checks and installs the prerequisites (nightly rust-src, bpf-linker 0.10.0)")?;
    if !object.exists() {
        fs::write(&object, []).context("writing the placeholder object")?;
    }
    git_commit();
    Ok(())
}

/// `CLASSIFIER_GIT_COMMIT` for `--version`, `classifier_build_info` and the
/// start-up log: the environment's value if set (an image build without
/// `.git`), else `git rev-parse --short=12 HEAD`, else "unknown".
fn git_commit() {
    println!("cargo:rerun-if-env-changed=CLASSIFIER_GIT_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = env::var("CLASSIFIER_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (the branch ref it names, or a detached HEAD).
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rustc-env=CLASSIFIER_GIT_COMMIT={commit}");
}

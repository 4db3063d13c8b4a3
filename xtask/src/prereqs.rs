//! Prerequisite checks shared by `build`, `run` and `test`: rustup, the
//! `nightly` toolchain with `rust-src` (used by aya-build to compile the eBPF
//! crate with `-Z build-std=core`), `bpf-linker` (pinned to 0.10.0), and a C
//! compiler with `make` (tikv-jemalloc-sys builds the agent's allocator from
//! its C sources).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cargo::cargo;
use crate::util::{
    cargo_bin_dir, find_on_path, is_executable, output_of, prepend_to_path, run_checked, step,
};

/// bpf-linker release to install. Newer releases need a system LLVM (21-23)
/// that Debian 12 does not ship; 0.10.0 links through nightly's own libLLVM.
pub const BPF_LINKER_VERSION: &str = "0.10.0";
const NIGHTLY: &str = "nightly";

/// Check every prerequisite, installing what can be installed.
pub fn ensure() -> Result<()> {
    step!("checking prerequisites");
    // Tools that `cargo install`/rustup put in ~/.cargo/bin must be visible
    // to the build script (aya-build runs rustc, which runs bpf-linker).
    if let Some(dir) = cargo_bin_dir().filter(|d| d.is_dir()) {
        prepend_to_path(&dir)?;
    }
    check_rustup()?;
    check_nightly()?;
    check_rust_src()?;
    check_bpf_linker()?;
    check_c_build()?;
    step!("prerequisites ok");
    Ok(())
}

/// jemalloc, the agent's allocator, is C built with its own configure
/// script and make (crate tikv-jemalloc-sys, `classifier-user/src/allocator.rs`).
fn check_c_build() -> Result<()> {
    let missing: Vec<&str> = ["cc", "make"]
        .into_iter()
        .filter(|tool| find_on_path(tool).is_none())
        .collect();
    if missing.is_empty() {
        step!("C compiler and make: found");
        return Ok(());
    }
    bail!(
        "{} not found on PATH: the agent's allocator, jemalloc, is built from C sources \
         (crate tikv-jemalloc-sys); on Debian run `apt-get install gcc libc6-dev make`",
        missing.join(" and ")
    )
}

fn check_rustup() -> Result<()> {
    match output_of(Command::new("rustup").arg("--version")) {
        Some(v) => {
            step!("rustup: {}", v.lines().next().unwrap_or("").trim());
            Ok(())
        }
        None => bail!(
            "rustup not found on PATH (nor in ~/.cargo/bin): the eBPF crate is built with \
             `rustup run nightly cargo ...`; install rustup from https://rustup.rs"
        ),
    }
}

fn check_nightly() -> Result<()> {
    let list = output_of(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    match list.lines().find(|l| l.trim_start().starts_with(NIGHTLY)) {
        Some(line) => {
            step!("nightly toolchain: {}", line.trim());
            Ok(())
        }
        None => bail!(
            "the `nightly` Rust toolchain is not installed; the eBPF crate needs it \
             (-Z build-std). Run `rustup toolchain install nightly --component rust-src` \
             and retry (xtask does not install toolchains itself)"
        ),
    }
}

fn check_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        step!("rust-src on nightly: installed");
        return Ok(());
    }
    step!("rust-src missing on nightly (needed for -Z build-std=core); installing it");
    run_checked(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "rustup component add rust-src --toolchain nightly",
    )
}

fn check_bpf_linker() -> Result<()> {
    if let Some(path) = locate_bpf_linker() {
        let version = output_of(Command::new(&path).arg("--version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "version unknown".into());
        step!("bpf-linker: {} ({version})", path.display());
        return Ok(());
    }
    step!("bpf-linker not found on PATH or in ~/.cargo/bin (it links the eBPF object)");
    step!("installing bpf-linker {BPF_LINKER_VERSION} (about a minute)...");
    run_checked(
        cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]),
        "cargo install bpf-linker",
    )?;
    match locate_bpf_linker() {
        Some(path) => {
            step!("bpf-linker installed at {}", path.display());
            Ok(())
        }
        None => bail!(
            "`cargo install bpf-linker@{BPF_LINKER_VERSION}` succeeded but bpf-linker is still \
             not on PATH; add $CARGO_HOME/bin (~/.cargo/bin) to PATH"
        ),
    }
}

fn locate_bpf_linker() -> Option<std::path::PathBuf> {
    if let Some(p) = find_on_path("bpf-linker") {
        return Some(p);
    }
    let dir = cargo_bin_dir()?;
    let p = dir.join("bpf-linker");
    if is_executable(&p) {
        // Make it visible to rustc when it runs the linker.
        prepend_to_path(&dir).ok()?;
        Some(p)
    } else {
        None
    }
}

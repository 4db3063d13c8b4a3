//! `cargo xtask test`: the whole suite, privileged tests included.

use anyhow::{bail, Result};

use crate::util::{in_ci, is_root, run_checked, show, step};
use crate::{cargo, prereqs};

/// Build the release binary, then run the whole test suite.
///
/// Builds the book and checks its links (`cargo xtask docs`); as root,
/// builds the container images (`cargo xtask image`: OCI archives in
/// target/images/, which the container-runtime tests run); then runs
/// `cargo test --workspace --release` with CLASSIFIER_BIN set to the
/// absolute path of target/release/classifier and at most 2 test threads,
/// then, as root, `cargo xtask node-e2e` (the DaemonSet through a private
/// containerd's CRI, about a minute), then `cargo xtask linkerd-proxy test` and, as root, `cargo xtask
/// linkerd-proxy e2e` (the real linkerd2-proxy with our patch series; the
/// first run builds it, several minutes). The privileged integration tests
/// (package `tests`) need root: as a normal user they skip themselves, but
/// with CI=true not being root is an error. Arguments after `--` (a
/// selection of tests) run only `cargo test`.
/// Example: `cargo xtask test -- -p tests -- --nocapture`
#[derive(clap::Args)]
pub struct Options {
    /// Skip the linkerd2-proxy tests and end-to-end run.
    #[arg(long)]
    no_linkerd_proxy: bool,
    /// Skip `cargo xtask node-e2e` (the DaemonSet through containerd's CRI).
    #[arg(long)]
    no_node_e2e: bool,
    /// Do not build the container images first (the tests that run them
    /// use whatever target/images/ holds, and fail without it).
    #[arg(long)]
    no_images: bool,
    /// Arguments passed to `cargo test` (after `--`); a further `--`
    /// separates arguments for the test binaries.
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

pub fn test(
    Options {
        no_linkerd_proxy,
        no_node_e2e,
        no_images,
        cargo_test_args,
    }: Options,
) -> Result<()> {
    let root = is_root();
    if !root {
        if in_ci() {
            bail!(
                "CI=true but not running as root: the privileged integration tests \
                 (package `tests`) would skip themselves; run the CI as root"
            );
        }
        step!(
            "not root: privileged integration tests (package `tests`) will skip themselves; \
             run as root (e.g. `sudo -E cargo xtask test`) to run them"
        );
    }
    prereqs::ensure()?;
    if cargo_test_args.is_empty() {
        // The whole suite includes the book: it builds, and its links resolve.
        step!("the book: mdbook build docs, then every link and anchor");
        crate::docs::docs(crate::docs::Options::default())?;
    }
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    if root && !no_images {
        let t0 = std::time::Instant::now();
        crate::image::build_for_tests(&bin)?;
        step!(
            "container images took {:.1} s (skip with --no-images)",
            t0.elapsed().as_secs_f64()
        );
    }

    let (cargo_args, harness_args) = split_test_args(&cargo_test_args);
    let mut cmd = cargo::cargo();
    cmd.args(["test", "--workspace", "--release"])
        // Only builds for bpfel-unknown-none with nightly; classifier-user's
        // build script already compiled it.
        .args(["--exclude", "classifier-ebpf"])
        .args(&cargo_args)
        .arg("--")
        .args(&harness_args)
        .env("CLASSIFIER_BIN", &bin);
    step!("CLASSIFIER_BIN={} {}", bin.display(), show(&cmd));
    run_checked(&mut cmd, "cargo test")?;
    step!("tests passed");
    if !cargo_test_args.is_empty() {
        return Ok(());
    }
    if no_node_e2e {
        step!("node-e2e skipped (--no-node-e2e)");
    } else if root {
        step!("node-e2e: the DaemonSet through containerd's CRI (skip with --no-node-e2e)");
        let started = std::time::Instant::now();
        crate::node_e2e::node_e2e(crate::node_e2e::Options::default())?;
        step!(
            "node-e2e passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        step!("not root: node-e2e skipped");
    }
    if no_linkerd_proxy {
        return Ok(());
    }
    step!("linkerd2-proxy with the patch series (skip with --no-linkerd-proxy)");
    crate::linkerd_proxy::test_all()?;
    step!("linkerd2-proxy tests passed");
    Ok(())
}

/// Maximum number of test threads: integration tests share the kernel's
/// cgroups, iptables and ports, so keep parallelism low.
const MAX_TEST_THREADS: usize = 2;

/// Split `cargo test` args at the first `--` into (cargo args, harness args)
/// and make sure the harness runs with at most [`MAX_TEST_THREADS`] threads.
fn split_test_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (cargo_args, rest) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args.to_vec(), Vec::new()),
    };
    let mut harness = Vec::with_capacity(rest.len() + 1);
    let mut threads: Option<usize> = None;
    let mut iter = rest.into_iter();
    while let Some(arg) = iter.next() {
        if let Some(n) = arg.strip_prefix("--test-threads=") {
            threads = n.parse().ok();
        } else if arg == "--test-threads" {
            threads = iter.next().and_then(|n| n.parse().ok());
        } else {
            harness.push(arg);
        }
    }
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or(MAX_TEST_THREADS)
        .min(MAX_TEST_THREADS);
    harness.insert(0, format!("--test-threads={n}"));
    (cargo_args, harness)
}

#[cfg(test)]
mod tests {
    use super::split_test_args;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_threads() {
        let (c, h) = split_test_args(&s(&["-p", "tests"]));
        assert_eq!(c, s(&["-p", "tests"]));
        assert_eq!(h, s(&["--test-threads=2"]));
    }

    #[test]
    fn clamps_and_keeps_harness_args() {
        let (c, h) = split_test_args(&s(&["--", "--nocapture", "--test-threads", "8", "foo"]));
        assert!(c.is_empty());
        assert_eq!(h, s(&["--test-threads=2", "--nocapture", "foo"]));
        let (_, h) = split_test_args(&s(&["--", "--test-threads=1"]));
        assert_eq!(h, s(&["--test-threads=1"]));
    }
}

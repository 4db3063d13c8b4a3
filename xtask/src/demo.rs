//! `cargo xtask demo`: the stall the classifier removes, with real MariaDB.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{is_root, run_checked, step};
use crate::{cargo, prereqs};

/// Build, then show the stall the classifier removes, with real MariaDB.
///
/// Sets up a "pod" network namespace (linkerd-init style nat rules, the
/// reference `classifier proxy` as UID 2102) and a "server" namespace with
/// a MariaDB server, runs the same `mariadb -e 'SELECT 1'` without and
/// with the classifier agent (on a private cgroup), and prints both times.
/// Needs root and the Debian packages mariadb-server, mariadb-client,
/// iptables. Removes everything it created, also on Ctrl-C.
#[derive(clap::Args)]
pub struct Options {
    /// The proxy's protocol detection timeout in seconds (Linkerd's default).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    detect_timeout: u64,
}

pub fn demo(Options { detect_timeout }: Options) -> Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, iptables, cgroups, eBPF): sudo -E cargo xtask demo");
    }
    prereqs::ensure()?;
    let bin = cargo::build_classifier(true)?;
    step!("built {}", bin.display());
    // The demo shares the end-to-end tests' set-up code (tests::e2e).
    cargo::build_test_bins(&["demo", "probe"])?;
    let mut cmd = Command::new(cargo::target_dir().join("release").join("demo"));
    cmd.arg("--detect-timeout")
        .arg(detect_timeout.to_string())
        .env("CLASSIFIER_BIN", &bin);
    run_checked(&mut cmd, "the demo")
}

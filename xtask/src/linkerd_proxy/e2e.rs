//! `cargo xtask linkerd-proxy e2e`: builds what the end-to-end run needs and
//! hands over to the `linkerd-e2e` binary of the tests crate, which shares
//! the end-to-end tests' world (`tests::e2e`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Result};

use super::build::Builder;
use crate::util::{is_root, run_checked, show, step};
use crate::{cargo, prereqs};

#[derive(clap::Args)]
pub struct Options {
    // `Default` below must match the defaults here.
    /// Connections measured per proxy and case (the median is reported).
    #[arg(long, default_value_t = 5, value_name = "N")]
    runs: u32,
    /// The detect timeout: the proxy's LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT
    /// and the control plane's Detect policy (Linkerd's default is 10 s;
    /// shorter keeps the run short).
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    detect_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            runs: 5,
            detect_timeout_ms: 3000,
        }
    }
}

pub fn e2e(builder: &Builder, work: &Path, opts: Options) -> Result<()> {
    if !is_root() {
        bail!(
            "the end-to-end run needs root (network namespaces, iptables, cgroups, eBPF): \
             sudo -E cargo xtask linkerd-proxy e2e"
        );
    }
    ensure!(opts.runs > 0, "--runs must be at least 1");
    let proxies = builder.proxies()?;

    step!("building the test control plane");
    let control_plane_dir = super::source::integration_dir().join("control-plane");
    let mut cmd = builder.cargo(&control_plane_dir);
    cmd.args(["build", "--locked"]);
    run_checked(&mut cmd, "building the test control plane")?;
    let control_plane = builder
        .target_dir
        .join("debug")
        .join("linkerd-test-control-plane");

    prereqs::ensure()?;
    let classifier = cargo::build_classifier(true)?;
    cargo::build_test_bins(&["linkerd-e2e", "probe"])?;

    let out = work.join("e2e.json");
    let identity = builder.tree.proxy.join("linkerd/app/integration/src/data");
    let mut cmd = Command::new(cargo::target_dir().join("release").join("linkerd-e2e"));
    cmd.arg("--stock")
        .arg(&proxies.stock)
        .arg("--patched")
        .arg(&proxies.patched)
        .arg("--control-plane")
        .arg(&control_plane)
        .arg("--identity-data")
        .arg(&identity)
        .arg("--detect-timeout-ms")
        .arg(opts.detect_timeout_ms.to_string())
        .arg("--runs")
        .arg(opts.runs.to_string())
        .arg("--out")
        .arg(&out)
        .env("CLASSIFIER_BIN", &classifier);
    step!("{}", show(&cmd));
    run_checked(&mut cmd, "the linkerd2-proxy end-to-end run")?;
    step!("wrote {}", out.display());
    Ok(())
}

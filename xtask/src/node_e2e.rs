//! `cargo xtask node-e2e`: the DaemonSet on a node, through containerd's CRI.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::cargo::{build_test_bins, target_dir, workspace_root};
use crate::util::{in_ci, is_root, run_checked, show, step};

/// Run the DaemonSet the way the kubelet runs it, on this machine (root).
///
/// Starts a private containerd (Debian's, own config, root, state dir and
/// socket; the machine's containerd is never touched), imports the OCI
/// archives of `cargo xtask image` into its `k8s.io` namespace, and drives
/// it through the CRI with the pod template of `kubectl kustomize deploy/`:
/// pod cgroups under kubepods/<qos>/pod<uid> below a test cgroup, the init
/// container, the agent with the manifest's securityContext, resources,
/// mounts, probes, a projected service-account token for the tests' HTTPS
/// fake API server; then a Linkerd-shaped app pod and a MariaDB pod, a
/// ConfigMap change, a SIGKILL restart, a rollout to a second build, and an
/// uninstall. Writes target/node-e2e/report.json. Leaves nothing behind,
/// also after a failure (everything it makes is named cls-node-e2e*).
/// Takes about a minute. Example: `sudo -E cargo xtask node-e2e`.
#[derive(clap::Args)]
pub struct Options {
    /// Directory holding the OCI archives (*.oci.tar) [default: target/images].
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// The agent image of another build, for the rollout.
    #[arg(long, value_name = "IMAGE", default_value = crate::image::CLASSIFIER_NEXT_IMAGE)]
    rollout_image: String,
    /// The sandbox (pause) image.
    #[arg(long, value_name = "IMAGE", default_value = crate::image::PAUSE_IMAGE)]
    pause_image: String,
    /// The image with iptables, for the linkerd-init container.
    #[arg(long, value_name = "IMAGE", default_value = crate::image::TOOLS_IMAGE)]
    tools_image: String,
    /// The MariaDB server and client image.
    #[arg(long, value_name = "IMAGE", default_value = crate::image::MARIADB_IMAGE)]
    mariadb_image: String,
    /// Kustomize directory of the uninstall manifests.
    #[arg(long, value_name = "DIR")]
    uninstall: Option<PathBuf>,
    /// The reference proxy's detect timeout, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    detect_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            opts: Options,
        }
        Wrapper::parse_from(["node-e2e"]).opts
    }
}

pub fn node_e2e(opts: Options) -> Result<()> {
    if !is_root() {
        bail!("node-e2e needs root (a private containerd, cgroups, mounts): run `sudo -E cargo xtask node-e2e`");
    }
    let images = opts.images.unwrap_or_else(|| target_dir().join("images"));
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&images)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".tar"))
                .collect()
        })
        .unwrap_or_default();
    archives.sort();
    if archives.is_empty() {
        bail!(
            "no OCI archives in {}: build them first with `cargo xtask image`",
            images.display()
        );
    }
    build_test_bins(&["node-e2e"])?;
    let bin = target_dir().join("release/node-e2e");
    let root = workspace_root();
    let uninstall = opts
        .uninstall
        .unwrap_or_else(|| root.join("deploy/uninstall"));
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--deploy").arg(root.join("deploy"));
    for a in &archives {
        cmd.arg("--image").arg(a);
    }
    cmd.args(["--rollout-image", &opts.rollout_image])
        .args(["--pause-image", &opts.pause_image])
        .args(["--tools-image", &opts.tools_image])
        .args(["--mariadb-image", &opts.mariadb_image])
        .args(["--detect-timeout-ms", &opts.detect_timeout_ms.to_string()])
        .arg("--out")
        .arg(target_dir().join("node-e2e/report.json"));
    if uninstall.is_dir() {
        cmd.arg("--uninstall").arg(&uninstall);
    } else if in_ci() {
        bail!(
            "CI=true and no uninstall manifests at {}",
            uninstall.display()
        );
    }
    step!("{}", show(&cmd));
    run_checked(&mut cmd, "node-e2e")
}

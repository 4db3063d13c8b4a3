//! The DaemonSet on a node, driven through containerd's CRI the way the
//! kubelet drives it (`cargo xtask node-e2e`, binary `node-e2e`).
//!
//! One file per concern: [`layout`] (names, paths, cleanup), [`host`] (the
//! host side: test cgroup, bpffs stand-in, pod bridge), [`containerd`] (the
//! private containerd), [`cri`] (the CRI client), [`manifest`] (the
//! rendered Kustomize base), [`kubelet`] and [`volumes`] (pod spec to CRI),
//! [`probes`], [`apps`] (the Linkerd-shaped app pod and the MariaDB pod),
//! [`run`] (the phases and the report).

pub mod apps;
pub mod containerd;
pub mod cri;
pub mod host;
pub mod kubelet;
pub mod layout;
pub mod manifest;
pub mod probes;
pub mod run;
pub mod volumes;

use std::path::PathBuf;

/// What the run needs from outside: the images and the manifests.
#[derive(Clone, Debug)]
pub struct Options {
    /// OCI archives imported into containerd's `k8s.io` namespace.
    pub archives: Vec<PathBuf>,
    /// The Kustomize base (`deploy/`).
    pub deploy: PathBuf,
    /// The agent image of another build, for the rollout (`classifier:TAG`).
    pub rollout_image: String,
    /// The sandbox (pause) image.
    pub pause_image: String,
    /// The image with iptables (the linkerd-init container).
    pub tools_image: String,
    /// The MariaDB server and client image.
    pub mariadb_image: String,
    /// Uninstall manifests (a directory for `kubectl kustomize`), if any.
    pub uninstall: Option<PathBuf>,
    /// The reference proxy's detect timeout.
    pub detect_timeout_ms: u64,
    /// Where report.json goes.
    pub out: PathBuf,
}

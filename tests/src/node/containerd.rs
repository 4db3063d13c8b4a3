//! A private containerd: Debian's binary with its own config, root, state
//! directory and socket, so it never touches a containerd the machine runs.
//! The config is `containerd config default` with the paths pointed at
//! [`Layout`], the cgroupfs driver (`SystemdCgroup = false`: no systemd as
//! PID 1 here), the CNI plugins of `/usr/lib/cni` with our own conf dir,
//! network namespaces under the state dir, and the locally imported pause
//! image as the sandbox image.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::layout::Layout;

/// Where Debian's containernetworking-plugins put the CNI binaries.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

pub struct Containerd {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Writes the config and the CNI network, starts containerd and waits
    /// for its socket to answer.
    pub fn start(layout: &Layout, sandbox_image: &str) -> Result<Containerd> {
        for dir in [&layout.root, &layout.state, &layout.cni_conf, &layout.run] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::set_permissions(&layout.root, fs::Permissions::from_mode(0o711))?;
        let config = config(layout, sandbox_image)?;
        let config_path = layout.run.join("containerd.toml");
        fs::write(&config_path, config)?;
        fs::write(
            layout.cni_conf.join("10-cls-node-e2e.conflist"),
            cni_network(layout),
        )?;
        let log = layout.run.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting containerd (Debian package `containerd`)")?;
        let mut me = Containerd {
            child: Some(child),
            socket: layout.socket.clone(),
            log,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "containerd exited ({status}) before it served {}:\n{}",
                    self.socket.display(),
                    self.log_tail()
                );
            }
            let ok = Command::new("ctr")
                .args(["--address"])
                .arg(&self.socket)
                .args(["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not serve {} within 60 s:\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `ctr -n k8s.io images import`: the OCI archive's images under the
    /// names the CRI resolves (`classifier:0.1.0` is
    /// `docker.io/library/classifier:0.1.0`).
    pub fn import(&self, archive: &Path) -> Result<()> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--no-unpack",
                "--all-platforms",
            ])
            .arg(archive)
            .output()
            .context("running ctr")?;
        ensure!(
            out.status.success(),
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::sys::terminate(&child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `containerd config default`, with every path that would be shared with a
/// machine's containerd pointed at the test's own directories.
fn config(layout: &Layout, sandbox_image: &str) -> Result<String> {
    let out = Command::new("containerd")
        .args(["config", "default"])
        .output()
        .context("running `containerd config default`")?;
    ensure!(out.status.success(), "containerd config default failed");
    let default = String::from_utf8(out.stdout)?;
    let s = |p: &Path| p.display().to_string();
    let replacements: Vec<(&str, String)> = vec![
        (
            "root = \"/var/lib/containerd\"",
            format!("root = \"{}\"", s(&layout.root)),
        ),
        (
            "state = \"/run/containerd\"",
            format!("state = \"{}\"", s(&layout.state)),
        ),
        (
            "address = \"/run/containerd/containerd.sock\"",
            format!("address = \"{}\"", s(&layout.socket)),
        ),
        (
            "sandbox_image = \"registry.k8s.io/pause:3.6\"",
            format!("sandbox_image = \"{sandbox_image}\""),
        ),
        (
            "bin_dir = \"/opt/cni/bin\"",
            format!("bin_dir = \"{CNI_BIN_DIR}\""),
        ),
        (
            "conf_dir = \"/etc/cni/net.d\"",
            format!("conf_dir = \"{}\"", s(&layout.cni_conf)),
        ),
        (
            "netns_mounts_under_state_dir = false",
            "netns_mounts_under_state_dir = true".into(),
        ),
        (
            "path = \"/opt/containerd\"",
            format!("path = \"{}\"", s(&layout.root.join("opt"))),
        ),
        // The sandbox lacks CAP_SYS_RESOURCE: a node-critical pod's
        // oom_score_adj of -997 would be refused; clamp to containerd's own.
        (
            "restrict_oom_score_adj = false",
            "restrict_oom_score_adj = true".into(),
        ),
        (
            "Root = \"\"",
            format!("Root = \"{}\"", s(&layout.state.join("runc"))),
        ),
    ];
    let mut config = default;
    for (from, to) in replacements {
        ensure!(
            config.contains(from),
            "`containerd config default` has no `{from}` (containerd 1.6's default config expected)"
        );
        config = config.replacen(from, &to, 1);
    }
    ensure!(
        config.contains("SystemdCgroup = false"),
        "containerd's default is not the cgroupfs driver"
    );
    Ok(config)
}

/// The pod network: a bridge of our own name with host-local addresses in
/// our own data dir; no masquerading (no iptables rule on the host).
fn cni_network(layout: &Layout) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": super::layout::CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": super::layout::BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": super::layout::POD_SUBNET, "gateway": super::layout::GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": layout.run.join("cni-ipam"),
            }
        }]
    })
    .to_string()
}

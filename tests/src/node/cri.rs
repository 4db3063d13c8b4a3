//! The CRI v1 client the kubelet uses, over containerd's unix socket
//! (`k8s-cri`'s generated tonic client).

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, *,
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let socket = socket.to_owned();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::try_from("http://[::]:0")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .context("connecting to containerd's CRI socket")?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The runtime's name and version (`containerd 1.6.20~ds1`).
    pub async fn version(&self) -> Result<String> {
        let v = self
            .runtime
            .clone()
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .context("CRI Version")?
            .into_inner();
        Ok(format!(
            "{} {} (CRI {})",
            v.runtime_name, v.runtime_version, v.runtime_api_version
        ))
    }

    /// What `imagePullPolicy: IfNotPresent` checks: the image is there
    /// (nothing can be pulled on this machine).
    pub async fn image_present(&self, image: &str) -> Result<bool> {
        let status = self
            .images
            .clone()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .with_context(|| format!("CRI ImageStatus {image}"))?
            .into_inner();
        Ok(status.image.is_some())
    }

    pub async fn run_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("CRI RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn sandbox_ip(&self, id: &str) -> Result<String> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .context("CRI PodSandboxStatus")?
            .into_inner();
        Ok(status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .context("CRI StopPodSandbox")?;
        Ok(())
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .context("CRI RemovePodSandbox")?;
        Ok(())
    }

    pub async fn create_container(
        &self,
        sandbox: &str,
        config: ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Ok(self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .with_context(|| format!("CRI CreateContainer {name}"))?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .context("CRI StartContainer")?;
        Ok(())
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after
    /// `timeout` seconds.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        self.runtime
            .clone()
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .context("CRI StopContainer")?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .context("CRI RemoveContainer")?;
        Ok(())
    }

    pub async fn status(&self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .context("CRI ContainerStatus")?
            .into_inner()
            .status
            .context("CRI ContainerStatus without a status")
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<(i32, String, String)> {
        let r = self
            .runtime
            .clone()
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.as_secs() as i64,
            })
            .await
            .with_context(|| format!("CRI ExecSync {cmd:?}"))?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub async fn list_sandboxes(&self) -> Result<Vec<String>> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .context("CRI ListPodSandbox")?
            .into_inner()
            .items
            .into_iter()
            .map(|s| s.id)
            .collect())
    }
}

/// Container state names for messages.
pub fn state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "created",
        Ok(ContainerState::ContainerRunning) => "running",
        Ok(ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

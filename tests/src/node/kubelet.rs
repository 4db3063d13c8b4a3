//! What the kubelet does with a pod spec, through the CRI: the pod cgroup
//! under `kubepods/<qos>/pod<uid>`, the sandbox (pod network, DNS, the
//! sandbox's seccomp profile), volumes, `/etc/hosts`, the termination log,
//! then the init containers one after another (each must exit 0), then the
//! containers, each with its securityContext, resources, env, args and
//! mounts translated as the kubelet translates them.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    Container, PodSecurityContext, PodSpec, SecurityContext, Volume, VolumeMount,
};

use super::{cri::Cri, layout::Layout, volumes};

/// The kubelet's default masked and read-only /proc and /sys paths for
/// unprivileged containers (`procMount: Default`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A pod to run: its identity and spec (from the rendered manifests, or
/// built by the test for the app pods).
#[derive(Clone)]
pub struct PodDef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub spec: PodSpec,
}

/// The node: CRI client, paths, and the sources of volumes.
pub struct Kubelet {
    pub cri: Cri,
    pub layout: Layout,
    /// hostPath path -> the test-owned path used instead (see layout.rs).
    pub host_paths: BTreeMap<String, PathBuf>,
    /// ConfigMaps by name: key -> content.
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The projected service-account volume's files (token, ca.crt,
    /// namespace) and the API server address for KUBERNETES_SERVICE_*.
    pub service_account: Option<(BTreeMap<String, Vec<u8>>, String, u16)>,
}

pub struct RunningPod {
    pub def: PodDef,
    pub sandbox: String,
    pub sandbox_config: cri::PodSandboxConfig,
    pub ip: String,
    pub dir: PathBuf,
    /// Container name -> (id, created at).
    pub containers: BTreeMap<String, (String, Instant)>,
    /// Restart count per container name (the CRI attempt).
    pub attempts: HashMap<String, u32>,
    /// The pod's cgroup in the cgroup2 hierarchy.
    pub cgroup: PathBuf,
}

pub fn qos(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        any |= !req.is_empty() || !lim.is_empty();
        for res in ["cpu", "memory"] {
            match (req.get(res), lim.get(res)) {
                (Some(a), Some(b)) if a == b => {}
                (None, Some(_)) => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "besteffort",
        (true, true) => "guaranteed",
        (true, false) => "burstable",
    }
}

/// `classifier:0.1.0` -> `docker.io/library/classifier:0.1.0`, as the CRI
/// resolves a short name.
pub fn normalize_image(image: &str) -> String {
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        image.to_owned()
    } else {
        format!("docker.io/{image}")
    }
}

impl Kubelet {
    /// Runs a pod up to its running containers: returns once every init
    /// container has exited 0 and every container was started.
    pub async fn run_pod(&self, def: &PodDef) -> Result<RunningPod> {
        let qos = qos(&def.spec);
        let parent = if qos == "guaranteed" {
            format!("{}/pod{}", self.layout.kubepods, def.uid)
        } else {
            format!("{}/{qos}/pod{}", self.layout.kubepods, def.uid)
        };
        let cgroup = self.layout.cgroup2.join(parent.trim_start_matches('/'));
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating the pod cgroup {}", cgroup.display()))?;
        let dir = self.layout.pods.join(&def.uid);
        fs::create_dir_all(dir.join("logs"))?;
        let sandbox_config = self.sandbox_config(def, &parent, &dir);
        let sandbox = self.cri.run_sandbox(sandbox_config.clone()).await?;
        let ip = self.cri.sandbox_ip(&sandbox).await?;
        fs::write(
            dir.join("etc-hosts"),
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                def.name
            ),
        )?;
        let mut pod = RunningPod {
            def: def.clone(),
            sandbox,
            sandbox_config,
            ip,
            dir,
            containers: BTreeMap::new(),
            attempts: HashMap::new(),
            cgroup,
        };
        self.write_volumes(&pod)?;
        for c in def.spec.init_containers.iter().flatten() {
            let id = self.start_container(&mut pod, c).await?;
            self.wait_exit_zero(&pod, c, &id).await?;
        }
        for c in &def.spec.containers {
            self.start_container(&mut pod, c).await?;
        }
        Ok(pod)
    }

    fn sandbox_config(&self, def: &PodDef, parent: &str, dir: &Path) -> cri::PodSandboxConfig {
        let privileged = def
            .spec
            .containers
            .iter()
            .chain(def.spec.init_containers.iter().flatten())
            .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
        let pod_sc = def.spec.security_context.clone().unwrap_or_default();
        let mut labels: HashMap<String, String> = def.labels.clone().into_iter().collect();
        labels.insert("io.kubernetes.pod.name".into(), def.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), def.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), def.uid.clone());
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: def.name.clone(),
                uid: def.uid.clone(),
                namespace: def.namespace.clone(),
                attempt: 0,
            }),
            hostname: def.name.clone(),
            log_directory: dir.join("logs").display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec![super::layout::GATEWAY.into()],
                searches: vec![
                    format!("{}.svc.cluster.local", def.namespace),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            labels,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: parent.to_owned(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    privileged,
                    run_as_user: pod_sc.run_as_user.map(|value| cri::Int64Value { value }),
                    seccomp: Some(seccomp(
                        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn write_volumes(&self, pod: &RunningPod) -> Result<()> {
        for v in pod.def.spec.volumes.iter().flatten() {
            if let Some(cm) = &v.config_map {
                let files = self.config_maps.get(&cm.name).with_context(|| {
                    format!(
                        "pod {}: volume {}: no ConfigMap {}",
                        pod.def.name, v.name, cm.name
                    )
                })?;
                let mode = cm.default_mode.unwrap_or(0o644) as u32;
                volumes::write_atomic(
                    &volumes::volume_dir(&pod.dir, "configmap", &v.name),
                    files,
                    mode,
                )?;
            } else if v.empty_dir.is_some() {
                fs::create_dir_all(volumes::volume_dir(&pod.dir, "empty-dir", &v.name))?;
            }
        }
        if let Some((files, _, _)) = &self.service_account {
            volumes::write_atomic(
                &volumes::volume_dir(&pod.dir, "projected", "kube-api-access"),
                files,
                0o644,
            )?;
        }
        Ok(())
    }

    /// Rewrites a ConfigMap's volume in every given pod, as the kubelet
    /// does when the ConfigMap changes.
    pub fn update_config_map(
        &mut self,
        pod: &RunningPod,
        name: &str,
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<()> {
        self.config_maps.insert(name.to_owned(), files.clone());
        for v in pod.def.spec.volumes.iter().flatten() {
            if let Some(cm) = v.config_map.as_ref().filter(|cm| cm.name == name) {
                let mode = cm.default_mode.unwrap_or(0o644) as u32;
                volumes::write_atomic(
                    &volumes::volume_dir(&pod.dir, "configmap", &v.name),
                    &files,
                    mode,
                )?;
            }
        }
        Ok(())
    }

    /// Creates and starts container `c` of the pod (a restart when it ran
    /// before: the next attempt).
    pub async fn start_container(&self, pod: &mut RunningPod, c: &Container) -> Result<String> {
        let attempt = *pod
            .attempts
            .entry(c.name.clone())
            .and_modify(|a| *a += 1)
            .or_insert(0);
        let image = normalize_image(c.image.as_deref().context("container without image")?);
        ensure!(
            self.cri.image_present(&image).await?,
            "pod {}: container {}: image {image} is not in containerd's k8s.io namespace (imagePullPolicy \
             IfNotPresent, and nothing can be pulled here): import it first",
            pod.def.name,
            c.name
        );
        let config = self.container_config(pod, c, &image, attempt)?;
        let created = Instant::now();
        let id = self
            .cri
            .create_container(&pod.sandbox, config, &pod.sandbox_config)
            .await?;
        self.cri.start_container(&id).await.with_context(|| {
            format!(
                "starting {}/{}: {}",
                pod.def.name,
                c.name,
                self.log(pod, &c.name, attempt)
            )
        })?;
        pod.containers.insert(c.name.clone(), (id.clone(), created));
        Ok(id)
    }

    /// The container's CRI log (the last 40 lines).
    pub fn log(&self, pod: &RunningPod, container: &str, attempt: u32) -> String {
        let path = pod
            .dir
            .join("logs")
            .join(container)
            .join(format!("{attempt}.log"));
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn current_log(&self, pod: &RunningPod, container: &str) -> String {
        let attempt = pod.attempts.get(container).copied().unwrap_or(0);
        self.log(pod, container, attempt)
    }

    async fn wait_exit_zero(&self, pod: &RunningPod, c: &Container, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.cri.status(id).await?;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                ensure!(
                    status.exit_code == 0,
                    "pod {}: init container {} exited {} ({}): {}",
                    pod.def.name,
                    c.name,
                    status.exit_code,
                    status.reason,
                    self.log(pod, &c.name, 0)
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "pod {}: init container {} still running after 120 s",
                pod.def.name,
                c.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn container_config(
        &self,
        pod: &RunningPod,
        c: &Container,
        image: &str,
        attempt: u32,
    ) -> Result<cri::ContainerConfig> {
        let sc = c.security_context.clone().unwrap_or_default();
        let pod_sc = pod.def.spec.security_context.clone().unwrap_or_default();
        let envs = self.envs(c)?;
        let log_path = format!("{}/{attempt}.log", c.name);
        fs::create_dir_all(pod.dir.join("logs").join(&c.name))?;
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: c.name.clone(),
                attempt,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            envs,
            mounts: self.mounts(pod, c, attempt)?,
            labels: HashMap::from([
                ("io.kubernetes.container.name".into(), c.name.clone()),
                ("io.kubernetes.pod.name".into(), pod.def.name.clone()),
                (
                    "io.kubernetes.pod.namespace".into(),
                    pod.def.namespace.clone(),
                ),
                ("io.kubernetes.pod.uid".into(), pod.def.uid.clone()),
            ]),
            log_path,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(resources(c, &pod.def.spec)),
                security_context: Some(security_context(&sc, &pod_sc)),
            }),
            ..Default::default()
        })
    }

    /// The container's environment: the API server's address when the pod
    /// has a service account, then the container's own values.
    fn envs(&self, c: &Container) -> Result<Vec<cri::KeyValue>> {
        let mut envs = Vec::new();
        if let Some((_, host, port)) = &self.service_account {
            for (k, v) in [
                ("KUBERNETES_SERVICE_HOST", host.clone()),
                ("KUBERNETES_SERVICE_PORT", port.to_string()),
                ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
                ("KUBERNETES_PORT", format!("tcp://{host}:{port}")),
            ] {
                envs.push(cri::KeyValue {
                    key: k.into(),
                    value: v,
                });
            }
        }
        for e in c.env.iter().flatten() {
            ensure!(
                e.value_from.is_none(),
                "container {}: env {}: valueFrom is not supported here",
                c.name,
                e.name
            );
            envs.push(cri::KeyValue {
                key: e.name.clone(),
                value: e.value.clone().unwrap_or_default(),
            });
        }
        Ok(envs)
    }

    fn mounts(&self, pod: &RunningPod, c: &Container, attempt: u32) -> Result<Vec<cri::Mount>> {
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = pod
                .def
                .spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .with_context(|| {
                    format!(
                        "container {}: volumeMount {}: no such volume",
                        c.name, m.name
                    )
                })?;
            let host_path = self.volume_source(pod, v)?;
            let propagation = propagation(c, m)?;
            mounts.push(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host_path.display().to_string(),
                readonly: m.read_only == Some(true),
                propagation: propagation as i32,
                ..Default::default()
            });
        }
        if self.service_account.is_some()
            && pod.def.spec.automount_service_account_token != Some(false)
        {
            mounts.push(cri::Mount {
                container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                host_path: volumes::volume_dir(&pod.dir, "projected", "kube-api-access")
                    .display()
                    .to_string(),
                readonly: true,
                ..Default::default()
            });
        }
        mounts.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: pod.dir.join("etc-hosts").display().to_string(),
            ..Default::default()
        });
        let term = pod.dir.join("containers").join(&c.name);
        fs::create_dir_all(&term)?;
        let term = term.join(format!("{attempt}"));
        fs::write(&term, "")?;
        mounts.push(cri::Mount {
            container_path: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            host_path: term.display().to_string(),
            ..Default::default()
        });
        Ok(mounts)
    }

    /// Where a volume's files are on the host: a hostPath's test-owned
    /// stand-in, or the pod's directory for the volume.
    fn volume_source(&self, pod: &RunningPod, v: &Volume) -> Result<PathBuf> {
        Ok(if let Some(hp) = &v.host_path {
            let sub = self.host_paths.get(&hp.path).with_context(|| {
                format!(
                    "volume {}: hostPath {} has no test-owned stand-in",
                    v.name, hp.path
                )
            })?;
            if hp.type_.as_deref() == Some("Directory") {
                ensure!(
                    sub.is_dir(),
                    "volume {}: hostPath {} (type Directory): {} is not a directory",
                    v.name,
                    hp.path,
                    sub.display()
                );
            }
            sub.clone()
        } else if v.config_map.is_some() {
            volumes::volume_dir(&pod.dir, "configmap", &v.name)
        } else if v.empty_dir.is_some() {
            volumes::volume_dir(&pod.dir, "empty-dir", &v.name)
        } else {
            bail!(
                "volume {}: only hostPath, configMap and emptyDir volumes are supported here",
                v.name
            );
        })
    }
}

/// The container's Linux security context, its own settings over the pod's.
fn security_context(
    sc: &SecurityContext,
    pod_sc: &PodSecurityContext,
) -> cri::LinuxContainerSecurityContext {
    let privileged = sc.privileged == Some(true);
    let seccomp_type = sc
        .seccomp_profile
        .as_ref()
        .or(pod_sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    cri::LinuxContainerSecurityContext {
        capabilities: capabilities(sc),
        privileged,
        namespace_options: Some(namespaces()),
        run_as_user: sc
            .run_as_user
            .or(pod_sc.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(pod_sc.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem == Some(true),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        masked_paths: if privileged {
            vec![]
        } else {
            MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        },
        readonly_paths: if privileged {
            vec![]
        } else {
            READONLY_PATHS.iter().map(|s| s.to_string()).collect()
        },
        seccomp: Some(seccomp(seccomp_type)),
        ..Default::default()
    }
}

/// A volumeMount's propagation, as the CRI names it.
fn propagation(c: &Container, m: &VolumeMount) -> Result<cri::MountPropagation> {
    Ok(match m.mount_propagation.as_deref() {
        None | Some("None") => cri::MountPropagation::PropagationPrivate,
        Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
        Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
        Some(other) => bail!(
            "container {}: mountPropagation {other:?} is not a Kubernetes value",
            c.name
        ),
    })
}

/// Network and IPC shared in the pod, PID per container (no
/// shareProcessNamespace).
fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The kubelet's seccomp translation: no profile field is Unconfined
/// (seccompDefault off), RuntimeDefault is the runtime's default profile.
fn seccomp(type_: Option<&str>) -> cri::SecurityProfile {
    let profile_type = match type_ {
        Some("RuntimeDefault") => cri::security_profile::ProfileType::RuntimeDefault,
        _ => cri::security_profile::ProfileType::Unconfined,
    };
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: String::new(),
    }
}

fn capabilities(sc: &SecurityContext) -> Option<cri::Capability> {
    let caps = sc.capabilities.clone()?;
    Some(cri::Capability {
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        ..Default::default()
    })
}

/// The kubelet's resource translation: CPU limit -> CFS quota over a
/// 100 ms period, CPU request -> shares, memory limit in bytes;
/// oom_score_adj by QoS (-997 for node-critical pods, which the agent's
/// `system-node-critical` priority class makes it).
fn resources(c: &Container, spec: &PodSpec) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
    let cpu_millis = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.map(|q| parse_cpu_millis(&q.0))
    };
    let mem = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.map(|q| parse_bytes(&q.0))
    };
    let shares = cpu_millis(req.get("cpu"))
        .or(cpu_millis(lim.get("cpu")))
        .map(|m| (m * 1024 / 1000).max(2))
        .unwrap_or(2);
    let quota = cpu_millis(lim.get("cpu"))
        .map(|m| (m * 100_000 / 1000).max(1000))
        .unwrap_or(0);
    let critical = matches!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical" | "system-cluster-critical")
    );
    let oom = match qos(spec) {
        _ if critical => -997,
        "guaranteed" => -997,
        "besteffort" => 1000,
        _ => {
            let request = mem(req.get("memory")).unwrap_or(0);
            (1000 - 1000 * request / memory_capacity()).clamp(2, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_period: if quota > 0 { 100_000 } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: mem(lim.get("memory")).unwrap_or(0),
        oom_score_adj: oom,
        ..Default::default()
    }
}

fn memory_capacity() -> i64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

pub fn parse_cpu_millis(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(0),
        None => (q.parse::<f64>().unwrap_or(0.0) * 1000.0) as i64,
    }
}

pub fn parse_bytes(q: &str) -> i64 {
    const UNITS: &[(&str, i64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<i64>().unwrap_or(0) * mult;
        }
    }
    q.parse().unwrap_or(0)
}

//! The Kubernetes manifests in `deploy/`, a Kustomize base: rendered with
//! the real `kubectl kustomize` (as `kubectl apply -k deploy/` does),
//! validated against the Kubernetes schema (`kubernetes-validate`, offline
//! from its bundled schemas), overlaid to show that image, namespace and
//! resources change without a Rust toolchain, and checked for the
//! properties the README promises (no cluster is needed, nor root); as
//! root, the agent run with exactly the DaemonSet's capabilities.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::http::free_addr;
use classifier_user::policy::file::parse_yaml_value;
use classifier_user::policy::{parse_policy, Policy};
use serde_json::Value;
use tests::{classifier_bin, privileged, Sandbox};

/// What the tests expect of the base (the README says the same).
mod manifests {
    use std::path::PathBuf;

    pub const IMAGE: &str = concat!("classifier:", env!("CARGO_PKG_VERSION"));
    pub const NAMESPACE: &str = "classifier-system";
    pub const METRICS_PORT: u16 = 9990;
    /// The kubelet's probes' own port (`--probe-addr`).
    pub const PROBE_PORT: u16 = 9991;
    pub const HOST_CGROUP: &str = "/host/sys/fs/cgroup";
    /// The agent container's capabilities: the smallest set that works
    /// (the privileged test below runs the agent with exactly these, and
    /// with each one left out).
    pub const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
    pub const AGENT_ARGS: [&str; 10] = [
        "agent",
        "--cgroup",
        HOST_CGROUP,
        "--policy",
        "/etc/classifier/policy.yaml",
        "--metrics-addr",
        "0.0.0.0:9990",
        "--probe-addr",
        "0.0.0.0:9991",
        "--kubernetes",
    ];

    pub fn deploy_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
    }
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `kubectl kustomize DIR`, or `None` without kubectl (an error under CI).
pub(crate) fn kustomize(dir: &Path) -> Option<String> {
    match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8(out.stdout).unwrap())
        }
        Err(err) if !in_ci() => {
            eprintln!("SKIPPED kubectl kustomize (install Debian's kubernetes-client): {err}");
            None
        }
        Err(err) => panic!("kubectl (Debian's kubernetes-client) is needed: {err}"),
    }
}

pub(crate) fn split_documents(text: &str, what: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| parse_yaml_value(doc, what, 0).unwrap_or_else(|e| panic!("{e}")))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

/// The base as `kubectl apply -k deploy/` sends it: the real kustomize
/// rendering, or without kubectl (outside CI) the resources the
/// kustomization lists, read as they are.
fn all_documents() -> Vec<Value> {
    let dir = manifests::deploy_dir();
    if let Some(rendered) = kustomize(&dir) {
        return split_documents(&rendered, "kubectl kustomize deploy/");
    }
    let kustomization = parse_yaml_value(
        &fs::read_to_string(dir.join("kustomization.yaml")).unwrap(),
        "deploy/kustomization.yaml",
        0,
    )
    .unwrap();
    strings(&kustomization["resources"])
        .iter()
        .flat_map(|f| split_documents(&fs::read_to_string(dir.join(f)).unwrap(), f))
        .collect()
}

pub(crate) fn the_in(docs: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0].clone()
}

fn the(kind: &str) -> Value {
    the_in(&all_documents(), kind)
}

pub(crate) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|x| s(x).to_owned())
        .collect()
}

pub(crate) fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no item named {name} in {list:?}"))
}

/// The value after `flag` in the agent's args.
fn flag(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1].clone()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("classifier-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_kustomize_base_validates_against_the_kubernetes_schema() {
    let Some(rendered) = kustomize(&manifests::deploy_dir()) else {
        return;
    };
    validate(&rendered, "validate");
}

#[test]
fn the_uninstall_daemonset_and_the_seccomp_component_validate_too() {
    let Some(rendered) = kustomize(&manifests::deploy_dir().join("uninstall")) else {
        return;
    };
    validate(&rendered, "validate-uninstall");
    let Some(rendered) = with_component("seccomp-localhost") else {
        return;
    };
    validate(&rendered, "validate-seccomp");
    let docs = split_documents(&rendered, "overlay with seccomp-localhost");
    let pod = &the_in(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    assert_eq!(
        agent["securityContext"]["seccompProfile"]["type"],
        "Localhost"
    );
    // The profile is installed by an init container, so it exists before
    // the runtime creates the agent's container.
    let install = named(&pod["initContainers"], "install-seccomp-profile");
    let script = strings(&install["command"]).join(" ");
    let profile = s(&agent["securityContext"]["seccompProfile"]["localhostProfile"]);
    assert!(
        script.contains(&format!("/host/seccomp/{profile}")),
        "{script}"
    );
    let kubelet = named(&pod["volumes"], "kubelet-seccomp");
    assert_eq!(kubelet["hostPath"]["path"], "/var/lib/kubelet/seccomp");
}

/// The base with the component `name` of `deploy/components/`,
/// rendered (`None` where kustomize is missing, outside CI).
fn with_component(name: &str) -> Option<String> {
    let scratch = Scratch::new(&format!("{name}-component"));
    let base = manifests::deploy_dir().canonicalize().unwrap();
    let up = scratch
        .0
        .components()
        .skip(1)
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    fs::write(
        scratch.0.join("kustomization.yaml"),
        format!(
            "resources: [{up}{b}]\ncomponents: [{up}{b}/components/{name}]\n",
            b = base.display()
        ),
    )
    .unwrap();
    kustomize(&scratch.0)
}

/// The object of `kind` named `name` among `docs`.
fn the_named(docs: &[Value], kind: &str, name: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .clone()
}

#[test]
fn the_central_compiler_component_validates_and_matches_the_binary() {
    use classifier_user::compiler::LEASE_NAME;
    use classifier_user::sources::kubernetes::slices;
    let Some(rendered) = with_component("central-compiler") else {
        return;
    };
    validate(&rendered, "validate-central-compiler");
    let docs = split_documents(&rendered, "overlay with central-compiler");
    // The agents read slices.
    let ds = the_in(&docs, "DaemonSet");
    let agent = named(&ds["spec"]["template"]["spec"]["containers"], "agent");
    let args = strings(&agent["args"]);
    assert_eq!(flag(&args, "--kubernetes-source"), "slices", "{args:?}");
    // The CRD is the kind the binary reads and writes.
    let crd = the_in(&docs, "CustomResourceDefinition");
    assert_eq!(crd["spec"]["group"], slices::GROUP);
    assert_eq!(crd["spec"]["names"]["kind"], slices::KIND);
    assert_eq!(crd["spec"]["names"]["plural"], slices::PLURAL);
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert!(
        strings(&json_path(&crd["spec"]["versions"], "name")).contains(&slices::VERSION.to_owned())
    );
    // The compiler's flags and variables are the binary's.
    let deployment = the_named(&docs, "Deployment", "classifier-compiler");
    let pod = &deployment["spec"]["template"]["spec"];
    let compiler = &pod["containers"][0];
    assert_eq!(strings(&compiler["args"]), ["compiler"]);
    let help = Command::new(classifier_bin())
        .args(["compiler", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for var in compiler["env"].as_array().unwrap() {
        let name = s(&var["name"]);
        if name.starts_with("CLASSIFIER_") || name == "POD_NAME" {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "`classifier compiler` reads no {name}:\n{help}"
            );
        }
    }
    // It may write slices and its lease in its namespace, and nothing else.
    let role = the_named(&docs, "Role", "classifier-compiler");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                granted.insert(format!("{resource}/{verb}"));
            }
        }
        if let Some(names) = rule.get("resourceNames") {
            assert_eq!(strings(names), [LEASE_NAME], "{rule}");
        }
    }
    let expected: BTreeSet<String> = [
        "classifierslices/get",
        "classifierslices/list",
        "classifierslices/create",
        "classifierslices/update",
        "classifierslices/delete",
        "leases/get",
        "leases/update",
        "leases/create",
    ]
    .map(String::from)
    .into();
    assert_eq!(granted, expected);
    // The agents may only read the slices.
    let agents = the_named(&docs, "Role", "classifier");
    for rule in agents["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["resources"]), [slices::PLURAL]);
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        assert_eq!(verbs, ["get", "list", "watch"].map(String::from).into());
    }
}

/// `field` of each item of `list`.
fn json_path(list: &Value, field: &str) -> Value {
    Value::Array(
        list.as_array()
            .map(|l| l.iter().map(|i| i[field].clone()).collect())
            .unwrap_or_default(),
    )
}

fn validate(rendered: &str, name: &str) {
    let scratch = Scratch::new(name);
    let file = scratch.0.join("rendered.yaml");
    fs::write(&file, rendered).unwrap();
    // Strict: unknown fields are errors too. Offline: the package bundles
    // the schemas of each Kubernetes version.
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(&file)
        .output();
    match out {
        Ok(out) => {
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "kubernetes-validate: {report}");
            assert_eq!(
                report.matches(" passed for resource ").count(),
                split_documents(rendered, "rendered").len(),
                "every document validated: {report}"
            );
        }
        Err(err) if !in_ci() => {
            eprintln!("SKIPPED kubernetes-validate (pip install kubernetes-validate): {err}")
        }
        Err(err) => panic!("kubernetes-validate (PyPI) is needed: {err}"),
    }
}

#[test]
fn an_overlay_changes_image_namespace_and_resources_without_rust() {
    let scratch = Scratch::new("overlay");
    // Kustomize takes a base only by a relative path.
    let base = manifests::deploy_dir().canonicalize().unwrap();
    let depth = scratch.0.canonicalize().unwrap().components().count() - 1;
    let base = Path::new(&"../".repeat(depth)).join(base.strip_prefix("/").unwrap());
    fs::write(
        scratch.0.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [{}]
namespace: platform-classifier
images:
  - name: classifier
    newName: registry.example/classifier
    newTag: 9.9.9
patchesStrategicMerge: [limits.yaml]
",
            base.display()
        ),
    )
    .unwrap();
    fs::write(
        scratch.0.join("limits.yaml"),
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: classifier, namespace: classifier-system}
spec:
  template:
    spec:
      containers:
        - name: agent
          resources:
            limits: {memory: 1Gi}
",
    )
    .unwrap();
    let Some(rendered) = kustomize(&scratch.0) else {
        return;
    };
    let docs = split_documents(&rendered, "overlay");
    let ds = the_in(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "platform-classifier");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    assert_eq!(agent["image"], "registry.example/classifier:9.9.9");
    assert_eq!(
        named(&pod["initContainers"], "mount-bpffs")["image"],
        "registry.example/classifier:9.9.9"
    );
    assert_eq!(agent["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(agent["resources"]["limits"]["cpu"], "1", "the rest is kept");
    let binding = the_in(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["namespace"], "platform-classifier");
    for doc in &docs {
        if !matches!(
            s(&doc["kind"]),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        ) {
            assert_eq!(
                doc["metadata"]["namespace"], "platform-classifier",
                "{doc:?}"
            );
        }
    }
}

#[test]
fn every_container_runs_under_the_runtime_default_seccomp_profile_and_the_init_container_is_locked_down(
) {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers: Vec<&Value> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
        .collect();
    for c in &containers {
        let sc = &c["securityContext"];
        assert_eq!(
            sc["seccompProfile"]["type"],
            "RuntimeDefault",
            "{}",
            s(&c["name"])
        );
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", s(&c["name"]));
        // The API server rejects allowPrivilegeEscalation: false on a
        // privileged container.
        assert!(
            !(sc["privileged"] == true && sc["allowPrivilegeEscalation"] == false),
            "{} would be rejected by the API server",
            s(&c["name"])
        );
    }
    let init = named(&pod["initContainers"], "mount-bpffs");
    let script = strings(&init["command"]).join(" ");
    assert!(
        script.contains("mount -t bpf -o mode=0700 bpf /sys/fs/bpf"),
        "bpffs mounted root-only: {script}"
    );
}

#[test]
fn only_scrapers_reach_the_metrics_port() {
    let policy = the("NetworkPolicy");
    let ds = the("DaemonSet");
    assert_eq!(policy["metadata"]["namespace"], manifests::NAMESPACE);
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod_labels[k.as_str()], v, "selects the agent's pods");
    }
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "one rule: the scrapers");
    let rule = &ingress[0];
    let ports = rule["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert!(ports[0]["port"] == "metrics" || ports[0]["port"] == manifests::METRICS_PORT);
    let from = rule["from"].as_array().unwrap();
    assert!(!from.is_empty(), "not open to everyone");
    for peer in from {
        assert!(peer.get("ipBlock").is_none(), "{peer:?}");
        assert!(
            peer["podSelector"]["matchLabels"]
                .as_object()
                .is_some_and(|m| !m.is_empty()),
            "a peer narrowed to the scraper's pods: {peer:?}"
        );
    }
}

#[test]
fn every_manifest_parses_and_lives_in_the_classifier_namespace() {
    let docs = all_documents();
    assert_eq!(
        docs.len(),
        7,
        "Namespace, ServiceAccount, ClusterRole(Binding), ConfigMap, DaemonSet, NetworkPolicy"
    );
    for doc in &docs {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{doc:?}"
        );
        assert!(doc["metadata"]["name"].is_string(), "{doc:?}");
        let cluster_scoped = matches!(
            s(&doc["kind"]),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        if !cluster_scoped {
            assert_eq!(
                doc["metadata"]["namespace"],
                manifests::NAMESPACE,
                "{doc:?}"
            );
        }
    }
    let ns = the("Namespace");
    assert_eq!(ns["metadata"]["name"], manifests::NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "the init container is privileged and the agent adds capabilities"
    );
}

#[test]
fn daemonset_runs_everywhere_critical_and_rolls_one_node_at_a_time() {
    let ds = the("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"]["spec"];
    let tolerations = pod["tolerations"].as_array().unwrap();
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "tolerates every taint: {tolerations:?}"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    // Neither is needed (pod cgroups come from the mounted host cgroup fs).
    assert_eq!(pod["hostPID"], false);
    assert_eq!(pod["hostNetwork"], false);
    assert_eq!(
        pod["serviceAccountName"],
        the("ServiceAccount")["metadata"]["name"]
    );

    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 1);

    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[k.as_str()],
            v,
            "the selector matches the pod template"
        );
    }
}

#[test]
fn agent_container_has_exactly_the_documented_capabilities_and_no_more() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
    assert_eq!(agent["image"], manifests::IMAGE);

    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"], 0, "the agent needs uid 0 (root-only pins)");
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let documented: BTreeSet<String> = manifests::CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(added, documented);
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into(),
        "the measured minimal set (see the privileged test below)"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    // Each added capability is explained next to it in the manifest.
    let template = fs::read_to_string(manifests::deploy_dir().join("daemonset.yaml")).unwrap();
    for cap in &added {
        assert!(
            template.contains(&format!("# {cap}: ")),
            "{cap} is documented"
        );
    }

    // The only privileged container is the init container that mounts bpffs.
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0]["name"], "mount-bpffs");
    assert_eq!(inits[0]["securityContext"]["privileged"], true);
    assert_eq!(inits[0]["image"], manifests::IMAGE);
}

#[test]
fn bpffs_cgroup_and_policy_are_mounted_as_the_agent_expects() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    let init = named(&pod["initContainers"], "mount-bpffs");
    let volumes = &pod["volumes"];
    let args = strings(&agent["args"]);
    assert_eq!(args, manifests::AGENT_ARGS);
    assert_eq!(args[0], "agent");

    // bpffs: the host's, so pins outlive the pod. The init container mounts
    // it on the host if missing (Bidirectional, so the mount reaches the
    // host); the agent sees host mounts (HostToContainer).
    assert_eq!(named(volumes, "bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    let init_mount = named(&init["volumeMounts"], "bpffs");
    assert_eq!(init_mount["mountPath"], "/sys/fs/bpf");
    assert_eq!(init_mount["mountPropagation"], "Bidirectional");
    let agent_mount = named(&agent["volumeMounts"], "bpffs");
    assert_eq!(agent_mount["mountPath"], "/sys/fs/bpf");
    assert_eq!(agent_mount["mountPropagation"], "HostToContainer");
    assert_ne!(agent_mount["readOnly"], true, "the agent pins there");
    assert!(
        !args.contains(&"--pin-dir".to_owned()),
        "default pin dir /sys/fs/bpf/classifier, inside the bpffs mount"
    );

    // The host cgroup v2 root, read-only, and --cgroup points at it.
    assert_eq!(
        named(volumes, "cgroup")["hostPath"]["path"],
        "/sys/fs/cgroup"
    );
    let cgroup_mount = named(&agent["volumeMounts"], "cgroup");
    assert_eq!(cgroup_mount["readOnly"], true);
    assert_eq!(cgroup_mount["mountPath"], manifests::HOST_CGROUP);
    assert_eq!(flag(&args, "--cgroup"), manifests::HOST_CGROUP);

    // The policy ConfigMap, and --policy names a key of it.
    let cm = the("ConfigMap");
    let policy_volume = named(volumes, "policy");
    assert_eq!(policy_volume["configMap"]["name"], cm["metadata"]["name"]);
    let policy_mount = named(&agent["volumeMounts"], "policy");
    assert_eq!(policy_mount["readOnly"], true);
    let dir = s(&policy_mount["mountPath"]);
    let policy = flag(&args, "--policy");
    let key = policy
        .strip_prefix(&format!("{dir}/"))
        .unwrap_or_else(|| panic!("--policy {policy} is not in the ConfigMap mount {dir}"));
    assert!(cm["data"][key].is_string(), "ConfigMap has key {key}");

    // The state directory (the rejected-objects report `stats` shows): a
    // writable volume, since the root file system is read-only.
    let state_mount = named(&agent["volumeMounts"], "state");
    assert_eq!(
        state_mount["mountPath"],
        classifier_user::datapath::pins::DEFAULT_STATE_DIR
    );
    assert_ne!(state_mount["readOnly"], true, "the agent writes there");
    assert!(named(volumes, "state")["emptyDir"].is_object());
}

#[test]
fn probes_hit_healthz_and_readyz_on_their_own_port_and_resources_are_set() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    let args = strings(&agent["args"]);
    let port = named(&agent["ports"], "metrics");
    assert_eq!(port["containerPort"], manifests::METRICS_PORT);
    assert_eq!(
        flag(&args, "--metrics-addr"),
        format!("0.0.0.0:{}", manifests::METRICS_PORT)
    );
    // The probes have a port of their own: on the metrics port, processes
    // sharing the kubelet's address could starve them (its per-peer limit).
    let probes = named(&agent["ports"], "probes");
    assert_eq!(probes["containerPort"], manifests::PROBE_PORT);
    assert_eq!(
        flag(&args, "--probe-addr"),
        format!("0.0.0.0:{}", manifests::PROBE_PORT)
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "probes" || get["port"] == manifests::PROBE_PORT,
            "{probe} port {:?}",
            get["port"]
        );
    }
    let containers = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap());
    for c in containers {
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !c["resources"][kind][resource].is_null(),
                    "{} has {kind}.{resource}",
                    s(&c["name"])
                );
            }
        }
    }
}

#[test]
fn cluster_role_only_reads_the_kinds_the_policy_comes_from() {
    let role = the("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        assert_eq!(
            verbs,
            ["get", "list", "watch"].map(String::from).into(),
            "least verbs: {rule:?}"
        );
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.insert((group.clone(), resource));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),
        ("policy.linkerd.io", "egressnetworks"),
        ("policy.linkerd.io", "servers"),
    ]
    .iter()
    .map(|(g, r)| (g.to_string(), r.to_string()))
    .collect();
    assert_eq!(granted, expected);

    let binding = the("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    let sa = the("ServiceAccount");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], manifests::NAMESPACE);
}

#[test]
fn configmap_policy_is_the_built_in_default() {
    let cm = the("ConfigMap");
    let text = s(&cm["data"]["policy.yaml"]);
    let policy =
        parse_policy(text, "deploy/configmap.yaml").expect("the ConfigMap's policy parses");
    let builtin = Policy::builtin_default();
    assert_eq!(policy.default_opaque_ports, builtin.default_opaque_ports);
    assert_eq!(
        policy.default_opaque_ports.to_string(),
        "25,587,3306,4444,5432,6379,9300,11211"
    );
    assert_eq!(policy.exclude_uids, vec![2102]);
    assert_eq!(policy, builtin);
}

#[test]
fn dockerfile_builds_with_the_pinned_toolchain_and_ships_only_the_binary() {
    let text = fs::read_to_string(manifests::deploy_dir().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert_eq!(
        stages.len(),
        4,
        "builder, runtime, prebuilt (tests) and the image: {stages:?}"
    );
    // The bases are build-args whose defaults are the public images.
    assert!(text.contains("ARG RUST_IMAGE=rust:1.95-bookworm"));
    assert!(text.contains("ARG BASE_IMAGE=debian:bookworm-slim"));
    assert_eq!(
        stages.last().map(|l| l.trim()),
        Some("FROM runtime"),
        "the default target is the image built from the builder stage"
    );
    assert!(
        text.contains("bpf-linker@0.10.0 --locked"),
        "pinned bpf-linker"
    );
    assert!(text.contains("rust-src"));
    assert!(text.contains("cargo xtask build"));
    assert!(text
        .contains("COPY --from=builder /src/target/release/classifier /usr/local/bin/classifier"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/classifier\"]"));
}

// --- privileged -------------------------------------------------------------

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the agent on the sandbox with `caps` as its whole bounding set
/// (as a container runtime does with `capabilities.add` + `drop: [ALL]`),
/// and returns whether it became ready, with its log and, once ready, its
/// /proc/PID/status.
fn agent_ready_with(sb: &Sandbox, caps: &[&str]) -> (bool, String, String) {
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let addr = free_addr();
    let log_path = sb.dir.join(format!("agent-caps-{}.log", caps.join("-")));
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&sb.cgroup)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .args(["--metrics-addr", &addr])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = String::new();
    let ready = loop {
        if http_status(&addr, "/readyz") == Some(200) {
            // setpriv exec()s the agent: the child's pid is the agent's.
            status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    tests::sys::terminate(&child);
    let _ = child.wait();
    (
        ready,
        fs::read_to_string(&log_path).unwrap_or_default(),
        status,
    )
}

/// A `Cap*:` line of a /proc/PID/status as a mask.
fn cap_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
}

#[test]
fn the_agent_runs_with_exactly_the_daemonsets_capabilities_and_needs_each() {
    if !privileged!() {
        return;
    }
    // Every flag the DaemonSet passes exists in this agent.
    let help = Command::new(classifier_bin())
        .args(["agent", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in manifests::AGENT_ARGS.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(*arg),
            "`classifier agent` has no {arg}:\n{help}"
        );
    }
    // And every CLASSIFIER_* variable it sets is one the agent reads.
    let ds = the("DaemonSet");
    let agent = named(&ds["spec"]["template"]["spec"]["containers"], "agent");
    for var in agent["env"].as_array().unwrap() {
        let name = s(&var["name"]);
        if name.starts_with("CLASSIFIER_") {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "`classifier agent` reads no {name}:\n{help}"
            );
        }
    }

    let sb = Sandbox::new("deploy-caps").unwrap();
    let caps: Vec<&str> = manifests::CAPABILITIES.to_vec();

    // Each one left out: the agent cannot install (tried before any
    // install, so nothing is pinned yet).
    for missing in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != missing).collect();
        let (ready, log, _) = agent_ready_with(&sb, &fewer);
        assert!(!ready, "without {missing} the agent should fail:\n{log}");
        assert!(
            log.contains("Permission denied") || log.contains("Operation not permitted"),
            "without {missing}: {log}"
        );
        // Whatever a failed start left pinned goes before the next try.
        let _ = Command::new(classifier_bin())
            .args(["agent", "--uninstall", "--pin-dir"])
            .arg(&sb.pins)
            .stderr(Stdio::null())
            .status();
    }

    // Exactly the set: installs, applies, serves ready, and drops to CAP_BPF.
    let (ready, log, status) = agent_ready_with(&sb, &caps);
    assert!(ready, "with {caps:?}:\n{log}");
    assert!(log.contains("attached programs"), "{log}");
    assert!(
        log.contains("dropped every capability but CAP_BPF"),
        "{log}"
    );
    // What the README says remains under the DaemonSet, read from the
    // running agent: CAP_BPF effective and permitted, nothing inheritable
    // or ambient; the bounding set keeps the three it was given (dropping
    // from it needs CAP_SETPCAP, which the DaemonSet does not grant), and
    // no_new_privs is set so no exec can regain them.
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    assert_eq!(cap_mask(&status, "CapEff:"), CAP_BPF, "{status}");
    assert_eq!(cap_mask(&status, "CapPrm:"), CAP_BPF, "{status}");
    assert_eq!(cap_mask(&status, "CapInh:"), 0, "{status}");
    assert_eq!(cap_mask(&status, "CapAmb:"), 0, "{status}");
    assert_eq!(
        cap_mask(&status, "CapBnd:"),
        CAP_BPF | CAP_NET_ADMIN | CAP_PERFMON,
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
        "{status}"
    );
    assert!(
        log.contains("bounding_set_keeps=CAP_NET_ADMIN,CAP_PERFMON"),
        "{log}"
    );

    // And adopts what it pinned, as an upgraded agent in the next pod does.
    let (ready, log, _) = agent_ready_with(&sb, &caps);
    assert!(ready, "adopting with {caps:?}:\n{log}");
    assert!(log.contains("adopted programs"), "{log}");
}

#[test]
fn agent_flags_come_from_classifier_env_vars_and_json_logs_parse() {
    if !privileged!() {
        return;
    }
    let mut sb = Sandbox::new("deploy-env").unwrap();
    let addr = free_addr();
    let policy = sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec: {}\n",
    );
    // As the DaemonSet does: JSON logs; the rest as a Kustomize env patch
    // would set them, with no flag on the command line.
    sb.start_agent_with_env(
        &[],
        &[
            ("CLASSIFIER_LOG_FORMAT", "json"),
            ("CLASSIFIER_METRICS_ADDR", &addr),
            ("CLASSIFIER_POLICY", policy.to_str().unwrap()),
        ],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_status(&addr, "/readyz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready on {addr}:\n{}",
            sb.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = sb.agent_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "classifier agent starting")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(
        start["fields"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{start}"
    );
    assert!(start["fields"]["commit"].is_string(), "{start}");
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("policy applied"))
            && log.contains(policy.to_str().unwrap())),
        "the policy came from CLASSIFIER_POLICY:\n{log}"
    );
    sb.stop_agent();
}

//! The Kubernetes manifests in `deploy/`: parsed and checked for the
//! properties the README promises (no cluster is needed, nor root), kept
//! equal to `cargo xtask manifests`' rendering, and, as root, the agent run
//! with exactly the DaemonSet's capabilities.

#[allow(dead_code)]
#[path = "../../../xtask/src/manifests.rs"]
mod manifests;

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use classifier_user::policy::{parse_policy, Policy};
use serde_yaml::Value;
use tests::{classifier_bin, privileged, Sandbox};

fn documents(file: &str) -> Vec<Value> {
    let path = manifests::deploy_dir().join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Documents are separated by `---` lines (the manifests use no other
    // multi-document syntax).
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

fn all_documents() -> Vec<Value> {
    manifests::MANIFESTS
        .iter()
        .flat_map(|f| documents(f))
        .collect()
}

fn the(kind: &str) -> Value {
    let mut found: Vec<Value> = all_documents()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|x| s(x).to_owned())
        .collect()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
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

#[test]
fn committed_manifests_are_the_rendering_of_the_templates() {
    let stale = manifests::stale().unwrap();
    assert!(
        stale.is_empty(),
        "deploy/{stale:?} differ from deploy/templates rendered with {}: run `cargo xtask manifests`",
        manifests::DEFAULT_IMAGE
    );
    // Another image changes only the image lines.
    let other = manifests::render_all("registry.example/classifier:9.9.9").unwrap();
    for (name, text) in other {
        let committed = fs::read_to_string(manifests::deploy_dir().join(&name)).unwrap();
        assert_eq!(
            text.replace(
                "registry.example/classifier:9.9.9",
                manifests::DEFAULT_IMAGE
            ),
            committed,
            "{name}"
        );
    }
}

#[test]
fn every_manifest_parses_and_lives_in_the_classifier_namespace() {
    let docs = all_documents();
    assert_eq!(
        docs.len(),
        6,
        "Namespace, ServiceAccount, ClusterRole(Binding), ConfigMap, DaemonSet"
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
    let tolerations = pod["tolerations"].as_sequence().unwrap();
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
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[s(k)], v, "the selector matches the pod template");
    }
}

#[test]
fn agent_container_has_exactly_the_documented_capabilities_and_no_more() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    assert_eq!(pod["containers"].as_sequence().unwrap().len(), 1);
    assert_eq!(agent["image"], manifests::DEFAULT_IMAGE);

    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"], 0, "the agent needs uid 0 (root-only pins)");
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let documented: BTreeSet<String> = manifests::CAPABILITIES
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(added, documented);
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into(),
        "the measured minimal set (see the privileged test below)"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    // Each added capability is explained next to it in the template.
    let template =
        fs::read_to_string(manifests::deploy_dir().join("templates/daemonset.yaml")).unwrap();
    for cap in &added {
        assert!(
            template.contains(&format!("# {cap}: ")),
            "{cap} is documented"
        );
    }

    // The only privileged container is the init container that mounts bpffs.
    let inits = pod["initContainers"].as_sequence().unwrap();
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0]["name"], "mount-bpffs");
    assert_eq!(inits[0]["securityContext"]["privileged"], true);
    assert_eq!(inits[0]["image"], manifests::DEFAULT_IMAGE);
}

#[test]
fn bpffs_cgroup_and_policy_are_mounted_as_the_agent_expects() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = named(&pod["containers"], "agent");
    let init = named(&pod["initContainers"], "mount-bpffs");
    let volumes = &pod["volumes"];
    let args = strings(&agent["args"]);
    assert_eq!(args, manifests::agent_args());
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
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_metrics_port_and_resources_are_set() {
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
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "metrics" || get["port"] == manifests::METRICS_PORT,
            "{probe} port {:?}",
            get["port"]
        );
    }
    let containers = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_sequence().unwrap());
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
    for rule in role["rules"].as_sequence().unwrap() {
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
    let subjects = binding["subjects"].as_sequence().unwrap();
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
    assert_eq!(stages.len(), 2, "builder and runtime: {stages:?}");
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

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

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
    for arg in manifests::agent_args()
        .iter()
        .filter(|a| a.starts_with("--"))
    {
        assert!(
            help.contains(arg.as_str()),
            "`classifier agent` has no {arg}:\n{help}"
        );
    }

    let sb = Sandbox::new("deploy-caps").unwrap();
    let caps: Vec<&str> = manifests::CAPABILITIES.iter().map(|(c, _)| *c).collect();

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
        status.lines().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
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

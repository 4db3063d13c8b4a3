//! The agent as a container runtime runs it, and the host layouts it meets.
//!
//! - The image `cargo xtask image` built, under podman 4 and runc with the
//!   flags the rendered DaemonSet gives the agent container (capabilities,
//!   read-only root, no_new_privs, uid, env, args, mounts and their
//!   propagation, memory limit): under podman's default seccomp profile
//!   (containers-common's, as CRI-O's) it fails and says seccomp refused
//!   bpf(), leaving no pins; with the Localhost profile the
//!   `seccomp-localhost` component installs, it attaches; the uninstall
//!   DaemonSet's container then leaves no pins, links or bpffs mounts.
//! - A hybrid cgroup layout (`--cgroup` on the v1 tmpfs, cgroup v2 at
//!   `unified` below it), built in a private mount namespace.
//! - A first start that fails leaves no pin directory.
//!
//! Never the machine's root cgroup: each test attaches to its sandbox's.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    classifier_bin,
    podman::{self, Podman},
    privileged, Sandbox,
};

use crate::deploy::{kustomize, named, s, split_documents, the_in};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The programs attached to `cgroup` (bpftool), by attach type.
fn attached(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["--json", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (Debian's bpftool)");
    let text = String::from_utf8_lossy(&out.stdout);
    let list: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Array(vec![]));
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|p| p["attach_type"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The bpffs mounts in this mount namespace.
fn bpffs_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - bpf "))
        .map(|l| l.split_whitespace().nth(4).unwrap().to_owned())
        .collect()
}

/// A rendered kustomization: the base, or an overlay of it in `scratch`
/// with `components` (paths below deploy/).
fn render(scratch: &Path, components: &[&str]) -> Option<Vec<Value>> {
    let deploy = deploy_dir().canonicalize().unwrap();
    let overlay = scratch.join("overlay");
    fs::create_dir_all(&overlay).unwrap();
    // Kustomize wants relative paths; the scratch dir is below /tmp.
    let up = overlay
        .components()
        .skip(1)
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    let rel = |p: &Path| format!("{up}{}", p.display());
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\n",
        rel(&deploy)
    );
    if !components.is_empty() {
        let list: Vec<String> = components.iter().map(|c| rel(&deploy.join(c))).collect();
        text.push_str(&format!("components: [{}]\n", list.join(", ")));
    }
    fs::write(overlay.join("kustomization.yaml"), text).unwrap();
    kustomize(&overlay).map(|r| split_documents(&r, "kubectl kustomize (overlay of deploy/)"))
}

/// The DaemonSet's pod spec in `docs`.
fn pod_spec(docs: &[Value], name: &str) -> Value {
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no DaemonSet {name}"));
    ds["spec"]["template"]["spec"].clone()
}

/// What a test maps each hostPath/ConfigMap volume to on this machine.
struct Volumes<'a> {
    host: Vec<(&'a str, PathBuf)>,
}

/// `podman run` flags for `container` of `pod`, as the kubelet would set
/// them through the CRI: securityContext (pod and container), env, args,
/// memory limit, and each volumeMount with the host path `volumes` gives
/// its volume. Seccomp: RuntimeDefault is podman's default profile;
/// Localhost is the profile file `localhost_profiles` holds for its name.
/// `drop_args` (flags that take no value) are left out of the manifest's
/// args.
fn podman_flags(
    pod: &Value,
    container: &Value,
    volumes: &Volumes<'_>,
    localhost_profiles: &[(&str, PathBuf)],
    drop_args: &[&str],
) -> Vec<String> {
    let mut flags = security_flags(pod, container, localhost_profiles);
    if let Some(memory) = container["resources"]["limits"]["memory"].as_str() {
        let bytes = memory
            .strip_suffix("Mi")
            .map(|m| m.parse::<u64>().unwrap() << 20)
            .unwrap_or_else(|| panic!("memory limit {memory} not in Mi"));
        flags.push(format!("--memory={bytes}"));
    }
    for env in container["env"].as_array().into_iter().flatten() {
        flags.push(format!("--env={}={}", s(&env["name"]), s(&env["value"])));
    }
    flags.extend(mount_flags(pod, container, volumes));
    if let Some(command) = container["command"].as_array() {
        flags.push(format!("--entrypoint={}", s(&command[0])));
        assert_eq!(command.len(), 1, "multi-word commands not handled");
    }
    flags.push(podman::CLASSIFIER_IMAGE.into());
    let args = container["args"].as_array().into_iter().flatten();
    flags.extend(
        args.map(|a| s(a).to_owned())
            .filter(|a| !drop_args.contains(&a.as_str())),
    );
    flags
}

/// The flags for the container's securityContext (and the pod's seccomp
/// profile when it sets none).
fn security_flags(
    pod: &Value,
    container: &Value,
    localhost_profiles: &[(&str, PathBuf)],
) -> Vec<String> {
    let mut flags = Vec::new();
    let sc = &container["securityContext"];
    let seccomp = if sc["seccompProfile"].is_null() {
        &pod["securityContext"]["seccompProfile"]
    } else {
        &sc["seccompProfile"]
    };
    match s(&seccomp["type"]) {
        "RuntimeDefault" => {}
        "Localhost" => {
            let name = s(&seccomp["localhostProfile"]);
            let (_, file) = localhost_profiles
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no Localhost profile {name} installed"));
            flags.push(format!("--security-opt=seccomp={}", file.display()));
        }
        other => panic!("seccompProfile type {other} not handled"),
    }
    assert_ne!(sc["privileged"], true, "not for privileged containers");
    if let Some(caps) = sc["capabilities"]["drop"].as_array() {
        for cap in caps {
            flags.push(format!("--cap-drop={}", s(cap).to_ascii_lowercase()));
        }
    }
    if let Some(caps) = sc["capabilities"]["add"].as_array() {
        for cap in caps {
            flags.push(format!("--cap-add=CAP_{}", s(cap)));
        }
    }
    if sc["readOnlyRootFilesystem"] == true {
        // Without podman's extra tmpfs on /tmp, /run and /var/tmp: the
        // kubelet adds none.
        flags.push("--read-only".into());
        flags.push("--read-only-tmpfs=false".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        flags.push("--security-opt=no-new-privileges".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        flags.push(format!("--user={uid}"));
    }
    flags
}

/// The flags for the container's volumeMounts.
fn mount_flags(pod: &Value, container: &Value, volumes: &Volumes<'_>) -> Vec<String> {
    let mut flags = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = s(&mount["name"]);
        // An emptyDir is a fresh, empty directory of the pod's own, as the
        // kubelet makes it: a tmpfs here, nothing of the host's.
        if named(&pod["volumes"], name)["emptyDir"].is_object() {
            flags.push(format!("--tmpfs={}:rw,mode=0700", s(&mount["mountPath"])));
            continue;
        }
        let (_, host) = volumes
            .host
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("the test maps no host path for volume {name}"));
        let mut options = vec![];
        if mount["readOnly"] == true {
            options.push("ro");
        }
        match mount["mountPropagation"].as_str() {
            None | Some("None") => options.push("rprivate"),
            Some("HostToContainer") => options.push("rslave"),
            Some("Bidirectional") => options.push("rshared"),
            Some(other) => panic!("mountPropagation {other}"),
        }
        flags.push(format!(
            "--volume={}:{}:{}",
            host.display(),
            s(&mount["mountPath"]),
            options.join(",")
        ));
    }
    flags
}

/// Everything a container run needs on this machine: the sandbox's cgroup
/// and a bpffs directory of its own, the policy ConfigMap's file, a store.
struct Setup {
    // Dropped first: containers go before the cgroup and pins they use.
    podman: Podman,
    sb: Sandbox,
    bpffs: PathBuf,
    policy_dir: PathBuf,
    scratch: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Setup {
        let sb = Sandbox::new(test).unwrap();
        // The container's /sys/fs/bpf: a directory of the host's bpffs
        // (the agent pins in <it>/classifier, as on a node).
        let bpffs = sb.pins.clone();
        fs::DirBuilder::new().mode(0o700).create(&bpffs).unwrap();
        let scratch = sb.dir.join("runtime");
        let policy_dir = scratch.join("policy");
        fs::create_dir_all(&policy_dir).unwrap();
        fs::set_permissions(&policy_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let podman = Podman::new(&scratch.join("podman"), &sb.name).unwrap();
        podman
            .load(&podman::images_dir().join(podman::CLASSIFIER_ARCHIVE))
            .unwrap();
        Setup {
            podman,
            sb,
            bpffs,
            policy_dir,
            scratch,
        }
    }

    fn pins(&self) -> PathBuf {
        self.bpffs.join("classifier")
    }

    /// Writes the rendered ConfigMap's policy file.
    fn write_policy(&self, docs: &[Value]) {
        let cm = the_in(docs, "ConfigMap");
        let file = self.policy_dir.join("policy.yaml");
        fs::write(&file, s(&cm["data"]["policy.yaml"])).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
    }
}

#[test]
fn under_podmans_default_seccomp_profile_the_agent_names_seccomp_and_the_localhost_profile_fixes_it(
) {
    if !privileged!() || !podman::available(tests::test_name!(), podman::CLASSIFIER_ARCHIVE) {
        return;
    }
    let setup = Setup::new(tests::test_name!());
    let Some(base) = render(&setup.scratch.join("base"), &[]) else {
        return;
    };
    let Some(fixed) = render(
        &setup.scratch.join("fixed"),
        &["components/seccomp-localhost"],
    ) else {
        return;
    };
    setup.write_policy(&base);
    // A hybrid node as this machine is one: the hostPath /sys/fs/cgroup is
    // not cgroup v2 (here a plain directory), cgroup v2 is at `unified`
    // below it (here the sandbox's cgroup), and the DaemonSet passes
    // --cgroup /host/sys/fs/cgroup as shipped.
    let hybrid = setup.scratch.join("host-sys-fs-cgroup");
    fs::create_dir_all(hybrid.join("unified")).unwrap();
    let volumes = Volumes {
        host: vec![
            ("bpffs", setup.bpffs.clone()),
            ("cgroup", hybrid.clone()),
            ("policy", setup.policy_dir.clone()),
        ],
    };
    let unified = format!(
        "--volume={}:/host/sys/fs/cgroup/unified:ro,rprivate",
        setup.sb.cgroup.display()
    );
    // --kubernetes needs an API server (the CRI harness gives it one).
    let drop = ["--kubernetes"];
    let bpffs_before = bpffs_mounts();

    let run = AgentRun {
        setup: &setup,
        volumes: &volumes,
        unified: &unified,
        drop: &drop,
    };
    // 1. As shipped, on podman: containers-common's profile refuses bpf().
    default_profile_refuses_bpf(&run, &base);
    // 2. With the component: its Localhost profile, as its init container
    // installs it (the file in the ConfigMap it generates).
    localhost_profile_attaches(&run, &fixed);
    // 3. The uninstall DaemonSet's container, with its own securityContext
    // (no capability, the default seccomp profile).
    uninstall_leaves_nothing(&setup, &volumes, &bpffs_before);
}

/// What each run of the agent's container in the seccomp test shares.
struct AgentRun<'a> {
    setup: &'a Setup,
    volumes: &'a Volumes<'a>,
    /// The flag mounting the sandbox's cgroup at `unified`.
    unified: &'a str,
    /// Manifest args the run leaves out.
    drop: &'a [&'a str],
}

/// As shipped, on podman: containers-common's profile refuses bpf(); the
/// agent says so, leaves no pins, and `classifier check` says the same.
fn default_profile_refuses_bpf(run: &AgentRun<'_>, base: &[Value]) {
    let AgentRun {
        setup,
        volumes,
        unified,
        drop,
    } = *run;
    let pod = pod_spec(base, "classifier");
    let agent = named(&pod["containers"], "agent");
    let mut flags = vec![unified.to_owned()];
    flags.extend(podman_flags(&pod, agent, volumes, &[], drop));
    let id = setup.podman.start("agent-default-seccomp", &flags).unwrap();
    let code = setup
        .podman
        .wait_exit(&id, Duration::from_secs(60))
        .unwrap();
    let log = setup.podman.logs(&id);
    assert_ne!(
        code, 0,
        "the agent started under podman's default profile:\n{log}"
    );
    assert!(
        log.contains("the container runtime's seccomp profile refused bpf()")
            && log.contains("Seccomp: 2")
            && log.contains("deploy/components/seccomp-localhost"),
        "the error does not name seccomp and the fix:\n{log}"
    );
    assert!(
        !setup.pins().exists(),
        "a failed first start left {}",
        setup.pins().display()
    );
    assert!(attached(&setup.sb.cgroup).is_empty());
    setup.podman.remove(&id).unwrap();
    check_names_seccomp(setup, &flags);
}

/// `classifier check` in the agent's container (`flags`, up to the image)
/// fails its seccomp check and names the fix.
fn check_names_seccomp(setup: &Setup, flags: &[String]) {
    let image_at = flags
        .iter()
        .position(|f| f == podman::CLASSIFIER_IMAGE)
        .unwrap();
    let mut check = flags[..=image_at].to_vec();
    check.extend(["check", "--json", "--cgroup", "/host/sys/fs/cgroup"].map(String::from));
    let out = setup
        .podman
        .run_to_end("check-default-seccomp", &check)
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let seccomp = report
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "seccomp")
        .unwrap_or_else(|| panic!("no seccomp check: {report}"));
    assert_eq!(seccomp["ok"], false, "{seccomp}");
    let detail = s(&seccomp["detail"]);
    assert!(
        detail.contains("seccomp profile refused bpf()")
            && detail.contains("fix: ")
            && detail.contains("seccomp-localhost"),
        "{detail}"
    );
}

/// With the Localhost profile the component's init container installs (the
/// file in the ConfigMap it generates), the agent attaches below the v1
/// side, and its programs stay attached when it stops.
fn localhost_profile_attaches(run: &AgentRun<'_>, fixed: &[Value]) {
    let AgentRun {
        setup,
        volumes,
        unified,
        drop,
    } = *run;
    let pod = pod_spec(fixed, "classifier");
    let cm = fixed
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && !d["data"]["classifier-agent.json"].is_null())
        .expect("the component's ConfigMap");
    let profile = setup.scratch.join("seccomp-classifier-agent.json");
    fs::write(&profile, s(&cm["data"]["classifier-agent.json"])).unwrap();
    let agent = named(&pod["containers"], "agent");
    let mut flags = vec![unified.to_owned()];
    flags.extend(podman_flags(
        &pod,
        agent,
        volumes,
        &[("classifier/agent.json", profile.clone())],
        drop,
    ));
    let id = setup
        .podman
        .start("agent-localhost-seccomp", &flags)
        .unwrap();
    let ready = setup
        .podman
        .wait_for_log_or_exit(&id, "policy applied", Duration::from_secs(60))
        .unwrap();
    let log = setup.podman.logs(&id);
    assert!(ready, "the agent did not apply its policy:\n{log}");
    assert!(
        log.contains("/host/sys/fs/cgroup/unified"),
        "the agent did not say it attached below the v1 side:\n{log}"
    );
    let mut types = attached(&setup.sb.cgroup);
    types.sort();
    assert_eq!(
        types.len(),
        4,
        "programs on the sandbox cgroup: {types:?}\n{log}"
    );
    assert!(setup.pins().join("links").is_dir());
    // SIGTERM: the agent stops, the programs stay attached (pinned).
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let code = setup.podman.stop(&id, Duration::from_secs(grace)).unwrap();
    assert_eq!(code, 0, "{}", setup.podman.logs(&id));
    assert_eq!(attached(&setup.sb.cgroup).len(), 4);
    setup.podman.remove(&id).unwrap();
}

/// The uninstall DaemonSet's container, with its own securityContext (no
/// capability, the default seccomp profile), leaves no pins, links or
/// bpffs mounts.
fn uninstall_leaves_nothing(setup: &Setup, volumes: &Volumes<'_>, bpffs_before: &[String]) {
    let Some(uninstall) = kustomize(&deploy_dir().join("uninstall")) else {
        return;
    };
    let docs = split_documents(&uninstall, "kubectl kustomize deploy/uninstall");
    let pod = pod_spec(&docs, "classifier-uninstall");
    let container = named(&pod["initContainers"], "uninstall");
    let flags = podman_flags(&pod, container, volumes, &[], &[]);
    let id = setup.podman.start("uninstall", &flags).unwrap();
    let code = setup
        .podman
        .wait_exit(&id, Duration::from_secs(60))
        .unwrap();
    let log = setup.podman.logs(&id);
    assert_eq!(code, 0, "uninstall failed:\n{log}");
    assert!(
        log.contains("detached programs and removed all pins"),
        "{log}"
    );
    assert!(!setup.pins().exists(), "pins left after uninstall");
    assert!(
        attached(&setup.sb.cgroup).is_empty(),
        "links left after uninstall"
    );
    assert_eq!(bpffs_mounts(), bpffs_before, "bpffs mounts changed");
}

#[test]
fn an_uninstall_while_an_agent_runs_is_refused_and_detaches_nothing() {
    if !privileged!() {
        return;
    }
    let mut sb = Sandbox::new(tests::test_name!()).unwrap();
    sb.start_agent(&[]).unwrap();
    let out = Command::new(classifier_bin())
        .args(["agent", "--uninstall", "--pin-dir"])
        .arg(&sb.pins)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another classifier agent is already running"),
        "{err}"
    );
    assert_eq!(attached(&sb.cgroup).len(), 4);
    sb.uninstall_agent().unwrap();
    assert!(attached(&sb.cgroup).is_empty());
}

/// `classifier agent` in a private mount namespace where `layout` is a
/// tmpfs with the sandbox's cgroup bind-mounted at `unified`: a hybrid
/// host's /sys/fs/cgroup in miniature.
fn agent_on_fake_hybrid(sb: &Sandbox, layout: &Path, log: &Path) -> std::process::Child {
    let script = format!(
        "mount -t tmpfs -o mode=0755 classifier-test {l} && mkdir {l}/unified && \
         mount --bind {cg} {l}/unified && exec \"$0\" \"$@\"",
        l = layout.display(),
        cg = sb.cgroup.display()
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(layout)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .args(["--watch-interval", "0.2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("unshare (util-linux)")
}

#[test]
fn on_a_hybrid_layout_the_agent_attaches_to_the_cgroup2_mount_below_the_path_given() {
    if !privileged!() {
        return;
    }
    let sb = Sandbox::new(tests::test_name!()).unwrap();
    let layout = sb.dir.join("sys-fs-cgroup");
    fs::create_dir_all(&layout).unwrap();
    let log = sb.dir.join("hybrid-agent.log");
    let mut child = agent_on_fake_hybrid(&sb, &layout, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("policy applied") {
            break text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no policy applied:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let unified = layout.join("unified").display().to_string();
    assert!(
        text.contains("attaching to the cgroup v2 hierarchy mounted below it")
            && text.contains(&unified),
        "{text}"
    );
    assert_eq!(attached(&sb.cgroup).len(), 4, "{text}");
    tests::sys::terminate(&child);
    child.wait().unwrap();
    // Its mounts went with its mount namespace.
    assert!(!bpffs_mounts()
        .iter()
        .any(|m| m.starts_with(&*layout.to_string_lossy())));
    assert_eq!(fs::read_dir(&layout).unwrap().count(), 0);
}

#[test]
fn a_cgroup_path_without_cgroup2_is_refused_naming_the_mount_and_leaves_no_pins() {
    if !privileged!() {
        return;
    }
    let sb = Sandbox::new(tests::test_name!()).unwrap();
    let plain = sb.dir.join("not-a-cgroup");
    fs::create_dir_all(&plain).unwrap();
    let out = Command::new(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&plain)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let v2 = classifier_user::datapath::cgroup::cgroup2_root().unwrap();
    assert!(
        err.contains("is not a cgroup v2 directory")
            && err.contains(&format!("pass --cgroup {}", v2.display())),
        "{err}"
    );
    assert!(!sb.pins.exists(), "{} left behind", sb.pins.display());
}

#[test]
fn a_first_start_that_fails_after_pinning_maps_leaves_no_pin_directory() {
    if !privileged!() {
        return;
    }
    let sb = Sandbox::new(tests::test_name!()).unwrap();
    // Without CAP_PERFMON the maps are created and pinned, then the
    // verifier rejects the connect programs.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf,+net_admin", "--inh-caps=-all"])
        .arg(classifier_bin())
        .args(["agent", "--cgroup"])
        .arg(&sb.cgroup)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without CAP_PERFMON:\n{err}");
    assert!(
        !sb.pins.exists(),
        "{} left behind:\n{err}",
        sb.pins.display()
    );
    assert!(attached(&sb.cgroup).is_empty());
}

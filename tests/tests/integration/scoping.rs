//! Namespace scoping on a real kernel: pod cgroups laid out the way the
//! kubelet lays them out (systemd and cgroupfs drivers, several QoS
//! classes), Pod documents with the matching UIDs, and EgressNetworks in a
//! pod's own namespace and in the global `linkerd-egress` namespace.

use std::{fs, path::Path};

use serde_json::Value;
use tests::{privileged, Sandbox};

const TEAM_A_POD: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
const TEAM_B_POD: &str = "11111111-2222-3333-4444-555555555555";

fn pod(uid: &str, namespace: &str, name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {uid}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: 10.244.0.9\n")
}

fn egress(namespace: &str, name: &str, ports: &str) -> String {
    format!("apiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations:\n    config.linkerd.io/opaque-ports: \"{ports}\"\nspec:\n  trafficPolicy: Allow\n  networks:\n    - cidr: 127.0.0.0/8\n")
}

/// The verdict a client in `cgroup` gets for 127.0.0.1:`port`.
fn verdict_from(sb: &Sandbox, cgroup: &Path, port: u16) -> Value {
    let addr = format!("127.0.0.1:{port}");
    let server = sb
        .serve(&addr, 1, None)
        .unwrap_or_else(|e| panic!("serve {addr}: {e:#}"));
    let out = sb
        .probe_in_cgroup(&["connect", &addr], cgroup)
        .output()
        .expect("probe connect");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok"),
        "{out:?}"
    );
    server
        .results()
        .unwrap_or_else(|e| panic!("verdict for {addr}: {e:#}"))
        .remove(0)
}

#[test]
fn namespace_egress_networks_apply_to_their_pods_and_global_ones_to_the_rest() {
    if !privileged!() {
        return;
    }
    let mut sb = Sandbox::new("scoping").expect("sandbox");
    // kubelet layouts: systemd driver, Burstable; cgroupfs driver, BestEffort.
    let team_a = sb.cgroup.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123.scope",
        TEAM_A_POD.replace('-', "_")
    ));
    let team_b = sb
        .cgroup
        .join(format!("kubepods/besteffort/pod{TEAM_B_POD}/4567"));
    fs::create_dir_all(&team_a).expect("team-a pod cgroup");
    fs::create_dir_all(&team_b).expect("team-b pod cgroup");

    let dir = sb.dir.join("policy");
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join("pods.yaml"),
        format!(
            "{}---\n{}",
            pod(TEAM_A_POD, "team-a", "a"),
            pod(TEAM_B_POD, "team-b", "b")
        ),
    )
    .unwrap();
    fs::write(
        dir.join("egress.yaml"),
        format!(
            "{}---\n{}",
            egress("team-a", "local", "4222"),
            egress("linkerd-egress", "global", "5222")
        ),
    )
    .unwrap();
    sb.start_agent(&["--policy", dir.to_str().unwrap()])
        .expect("agent starts with the pods and EgressNetworks");

    // team-a's own EgressNetwork decides for its pod: 4222 opaque, every
    // other port detected (Linkerd: an EgressNetwork's ports replace the
    // defaults), even 3306.
    let v = verdict_from(&sb, &team_a, 4222);
    assert_eq!(v["protocol"], "opaque", "team-a pod, 4222: {v}");
    let v = verdict_from(&sb, &team_a, 5222);
    assert_eq!(v["protocol"], "unknown", "team-a pod, 5222: {v}");
    let v = verdict_from(&sb, &team_a, 3306);
    assert_eq!(
        v["protocol"], "unknown",
        "team-a pod, 3306 not in its EgressNetwork's ports: {v}"
    );
    assert!(
        v["source"].as_str().unwrap().starts_with("rule:"),
        "decided by a rule: {v}"
    );

    // team-b has none: the global one applies; so for a process outside
    // any pod.
    for (who, cgroup) in [
        ("team-b pod", &team_b),
        ("node process", &sb.cgroup.clone()),
    ] {
        let v = verdict_from(&sb, cgroup, 5222);
        assert_eq!(v["protocol"], "opaque", "{who}, 5222: {v}");
        let v = verdict_from(&sb, cgroup, 4222);
        assert_eq!(v["protocol"], "unknown", "{who}, 4222: {v}");
    }
    // Only team-a has scoped rules, but learning (on by default, namespace
    // scope) gives every pod its namespace's scope: both are registered.
    assert!(
        sb.agent_log().contains("scoped_pods=2"),
        "{}",
        sb.agent_log()
    );
}

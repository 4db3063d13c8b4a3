//! The workloads on the node: a MariaDB server pod, and an app pod shaped
//! like a Linkerd-injected one: an init container with linkerd-init's nat
//! rules, the reference detecting proxy (`classifier proxy`, from the agent
//! image) as the proxy's UID 2102, and a `mariadb` client container.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};

use super::{cri::Cri, kubelet::PodDef};
use crate::PROXY_UID;

pub const NAMESPACE: &str = "node-e2e";
pub const MARIADB_PORT: u16 = 3306;

/// linkerd-init's nat rules (design notes, "Linkerd facts"): outbound TCP
/// is REDIRECTed to 4140 except the proxy's own UID and loopback; inbound
/// to 4143.
fn linkerd_init_script() -> String {
    [
        "set -e",
        "iptables -t nat -N PROXY_INIT_REDIRECT",
        "iptables -t nat -A PROXY_INIT_REDIRECT -p tcp --match multiport --dports 4190,4191 -j RETURN",
        "iptables -t nat -A PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-port 4143",
        "iptables -t nat -A PREROUTING -j PROXY_INIT_REDIRECT",
        "iptables -t nat -N PROXY_INIT_OUTPUT",
        &format!("iptables -t nat -A PROXY_INIT_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN"),
        "iptables -t nat -A PROXY_INIT_OUTPUT -o lo -j RETURN",
        "iptables -t nat -A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
        "iptables -t nat -A OUTPUT -j PROXY_INIT_OUTPUT",
        "iptables -t nat -S",
    ]
    .join("\n")
}

fn pod(name: &str, uid: &str, spec: Value) -> Result<PodDef> {
    Ok(PodDef {
        name: name.into(),
        namespace: NAMESPACE.into(),
        uid: uid.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        spec: serde_json::from_value(spec).with_context(|| format!("pod {name} spec"))?,
    })
}

/// The MariaDB server: the image's own entrypoint (initialises its data
/// directory, user `app`, and serves on 3306).
pub fn mariadb_pod(mariadb_image: &str, uid: &str) -> Result<PodDef> {
    pod(
        "mariadb",
        uid,
        json!({
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "mariadb",
                "image": mariadb_image,
                // A data directory of its own: Debian's package already
                // initialised /var/lib/mysql in the image (root only), so
                // the image's entrypoint would not create user `app` there.
                "env": [{"name": "MARIADB_DATADIR", "value": "/var/lib/mysql-e2e"}],
                "ports": [{"name": "mysql", "containerPort": MARIADB_PORT}],
                "resources": {"limits": {"memory": "512Mi"}, "requests": {"memory": "128Mi", "cpu": "100m"}},
            }],
        }),
    )
}

pub fn app_pod(
    agent_image: &str,
    tools_image: &str,
    mariadb_image: &str,
    uid: &str,
    detect_timeout_ms: u64,
) -> Result<PodDef> {
    let timeout = format!("{}", detect_timeout_ms as f64 / 1000.0);
    pod(
        "app",
        uid,
        json!({
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{
                "name": "linkerd-init",
                "image": tools_image,
                "command": ["/bin/sh", "-c", linkerd_init_script()],
                "securityContext": {
                    "runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                },
            }],
            "containers": [
                {
                    "name": "linkerd-proxy",
                    "image": agent_image,
                    "args": ["proxy", "--listen", "0.0.0.0:4140", "--detect-timeout", timeout],
                    "securityContext": {
                        "runAsUser": PROXY_UID, "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
                    },
                },
                {
                    "name": "app",
                    "image": mariadb_image,
                    "command": ["sleep", "infinity"],
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                },
            ],
        }),
    )
}

/// The Pod object the API server would hold for the pod: Pending with no
/// address yet while `ip` is empty (before its sandbox has one), else
/// Running at `ip`.
pub fn pod_object(def: &PodDef, ip: &str) -> Value {
    let status = if ip.is_empty() {
        json!({"phase": "Pending"})
    } else {
        json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": def.name, "namespace": def.namespace, "uid": def.uid,
            "labels": def.labels,
            "annotations": {"linkerd.io/inject": "enabled"},
        },
        "spec": def.spec,
        "status": status,
    })
}

pub fn namespace_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "uid": "6e0de2e0-0000-4000-8000-000000000001", "labels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "status": {"phase": "Active"},
    })
}

/// Connects from the app container to `ip:port` (through the nat rules, so
/// through the proxy) and returns the milliseconds until the server's
/// first bytes (the MariaDB greeting) arrive.
pub async fn greeting_ms(cri: &Cri, container: &str, ip: &str) -> Result<u64> {
    let script = format!(
        "t0=$(date +%s%N); exec 3<>/dev/tcp/{ip}/{MARIADB_PORT} || exit 2; \
         head -c 4 <&3 >/dev/null || exit 3; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 ))"
    );
    let (code, out, err) = cri
        .exec(container, &["bash", "-c", &script], Duration::from_secs(60))
        .await?;
    ensure!(
        code == 0,
        "greeting from the app container: exit {code}: {err}"
    );
    out.trim()
        .parse()
        .with_context(|| format!("greeting output {out:?}"))
}

/// A real client round trip, to show the path carries MySQL.
pub async fn mariadb_query(cri: &Cri, container: &str, ip: &str) -> Result<String> {
    let (code, out, err) = cri
        .exec(
            container,
            &[
                "mariadb",
                "-h",
                ip,
                "-u",
                "app",
                "-papp",
                "--connect-timeout=30",
                "-N",
                "-e",
                "SELECT 40 + 2",
            ],
            Duration::from_secs(60),
        )
        .await?;
    ensure!(code == 0, "mariadb client: exit {code}: {err}");
    Ok(out.trim().to_owned())
}

/// Where the connect loop appends one line per connection as it goes, so
/// that a test can wait for it to have connected (`connect_loop_count`).
pub const CONNECT_LOOP_LOG: &str = "/tmp/connect-loop.log";

/// A connect loop in the app container until `/tmp/stop-loop` exists:
/// prints one line per connection, `ok MS` or `fail`, and appends it to
/// [`CONNECT_LOOP_LOG`].
pub fn connect_loop_script(ip: &str) -> String {
    format!(
        "rm -f /tmp/stop-loop {CONNECT_LOOP_LOG}; while [ ! -e /tmp/stop-loop ]; do \
         t0=$(date +%s%N); \
         if timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/{MARIADB_PORT} && head -c 4 <&3 >/dev/null'; then \
         t1=$(date +%s%N); r=\"ok $(( (t1 - t0) / 1000000 ))\"; else r=fail; fi; \
         echo \"$r\"; echo \"$r\" >> {CONNECT_LOOP_LOG}; \
         sleep 0.05; done"
    )
}

/// How many connections the connect loop in `container` has made so far
/// (0 before its first).
pub async fn connect_loop_count(cri: &Cri, container: &str) -> Result<usize> {
    let (code, out, err) = cri
        .exec(
            container,
            &[
                "sh",
                "-c",
                &format!("cat {CONNECT_LOOP_LOG} 2>/dev/null | wc -l"),
            ],
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        code == 0,
        "counting the connect loop's lines: exit {code}: {err}"
    );
    out.trim()
        .parse()
        .with_context(|| format!("counting the connect loop's lines: {out:?}"))
}

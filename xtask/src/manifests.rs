//! `cargo xtask manifests`: the Kubernetes manifests in `deploy/`, rendered
//! from `deploy/templates/` with the image and the agent's flags defined
//! once, here.
//!
//! The templating is plain text substitution of `{{NAME}}` placeholders
//! (no template engine): `{{IMAGE}}`, `{{NAMESPACE}}`, `{{METRICS_PORT}}`,
//! `{{AGENT_ARGS}}` (a YAML flow list) and `{{CAPABILITIES}}` (likewise). An
//! unknown or unclosed placeholder is an error. `deploy/*.yaml` are the
//! templates rendered with [`DEFAULT_IMAGE`] and are committed, so
//! `kubectl apply -f deploy/` works from a checkout; `tests/tests/deploy.rs`
//! includes this file (`#[path]`) and checks they are up to date.
//!
//! This file uses only `std`, so both crates can include it.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The image the committed manifests name. `deploy/Dockerfile` builds it:
/// `docker build -f deploy/Dockerfile -t classifier:VERSION .`
pub const DEFAULT_IMAGE: &str = concat!("classifier:", env!("CARGO_PKG_VERSION"));

pub const NAMESPACE: &str = "classifier-system";

/// Where the agent serves `/metrics`, `/healthz` and `/readyz` in its pod.
pub const METRICS_PORT: u16 = 9990;

/// Where the DaemonSet mounts the host's cgroup v2 hierarchy (read-only),
/// which the agent attaches to. Not `/sys/fs/cgroup`: in the container that
/// is the container's own cgroup namespace view.
pub const HOST_CGROUP: &str = "/host/sys/fs/cgroup";

/// Where the policy ConfigMap is mounted.
pub const POLICY_DIR: &str = "/etc/classifier";

/// The agent container's capabilities, with why each is needed. Everything
/// else is dropped (`drop: [ALL]`), and the agent itself drops all but
/// CAP_BPF once its programs are attached. This is the smallest set that
/// works: `tests/tests/deploy.rs` runs the agent with exactly these (as its
/// bounding set) and with each one left out, which fails.
pub const CAPABILITIES: &[(&str, &str)] = &[
    (
        "BPF",
        "create the maps and load the programs; kept after attaching for map writes",
    ),
    (
        "NET_ADMIN",
        "load and attach cgroup sock_addr, sock_ops and getsockopt programs (networking types)",
    ),
    (
        "PERFMON",
        "the verifier's privileged mode (pointer handling) that the programs need to load",
    ),
];

/// `classifier agent` flags: the one place they are set.
pub fn agent_args() -> Vec<String> {
    [
        "agent",
        "--cgroup",
        HOST_CGROUP,
        "--policy",
        &format!("{POLICY_DIR}/policy.yaml"),
        "--metrics-addr",
        &format!("0.0.0.0:{METRICS_PORT}"),
        "--kubernetes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The manifests, in the order `kubectl apply` should see them.
pub const MANIFESTS: &[&str] = &[
    "namespace.yaml",
    "serviceaccount.yaml",
    "rbac.yaml",
    "configmap.yaml",
    "daemonset.yaml",
];

/// `deploy/` of the workspace (both including crates sit one level below it).
pub fn deploy_dir() -> PathBuf {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"));
    krate.parent().unwrap_or(krate).join("deploy")
}

fn flow_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Substitutes every `{{NAME}}` in `template`.
pub fn render(template: &str, image: &str) -> Result<String, String> {
    let caps: Vec<String> = CAPABILITIES.iter().map(|(c, _)| c.to_string()).collect();
    let values = [
        ("IMAGE", image.to_string()),
        ("NAMESPACE", NAMESPACE.to_string()),
        ("METRICS_PORT", METRICS_PORT.to_string()),
        ("AGENT_ARGS", flow_list(&agent_args())),
        ("CAPABILITIES", flow_list(&caps)),
        ("HOST_CGROUP", HOST_CGROUP.to_string()),
        ("POLICY_DIR", POLICY_DIR.to_string()),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder near {:?}", &rest[start..]))?;
        let name = &after[..end];
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every manifest rendered with `image`: `(file name, contents)`.
pub fn render_all(image: &str) -> Result<Vec<(String, String)>, String> {
    let templates = deploy_dir().join("templates");
    MANIFESTS
        .iter()
        .map(|name| {
            let path = templates.join(name);
            let template = fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let rendered =
                render(&template, image).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((name.to_string(), rendered))
        })
        .collect()
}

/// The committed manifests that differ from the rendering with
/// [`DEFAULT_IMAGE`] (empty when all are up to date).
pub fn stale() -> Result<Vec<String>, String> {
    let mut stale = Vec::new();
    for (name, rendered) in render_all(DEFAULT_IMAGE)? {
        let committed = fs::read_to_string(deploy_dir().join(&name)).unwrap_or_default();
        if committed != rendered {
            stale.push(name);
        }
    }
    Ok(stale)
}

/// Writes every manifest rendered with `image` into `out`.
pub fn write_all(image: &str, out: &Path) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut written = Vec::new();
    for (name, rendered) in render_all(image)? {
        let path = out.join(&name);
        fs::write(&path, rendered).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Every manifest rendered with `image` as one multi-document YAML stream.
pub fn stream(image: &str) -> Result<String, String> {
    let docs: Vec<String> = render_all(image)?.into_iter().map(|(_, d)| d).collect();
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_rejects_unknown_placeholders() {
        assert_eq!(
            render("image: {{IMAGE}}\nport: {{METRICS_PORT}}\n", "x:1").unwrap(),
            "image: x:1\nport: 9990\n"
        );
        assert!(render("{{NOPE}}", "x")
            .unwrap_err()
            .contains("unknown placeholder {{NOPE}}"));
        assert!(render("a {{IMAGE", "x").unwrap_err().contains("unclosed"));
        assert_eq!(
            render("args: {{AGENT_ARGS}}", "x").unwrap(),
            "args: [\"agent\", \"--cgroup\", \"/host/sys/fs/cgroup\", \"--policy\", \
             \"/etc/classifier/policy.yaml\", \"--metrics-addr\", \"0.0.0.0:9990\", \"--kubernetes\"]"
        );
    }
}

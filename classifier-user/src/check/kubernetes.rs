//! `--kubernetes`: the API server answers, the credentials in use (the
//! in-cluster service account, or KUBECONFIG) may list and watch each kind
//! the agent watches, and Linkerd's CRDs are served; for an agent reading
//! a central compiler's slices, that it may list and watch them and that
//! a compiler has published a complete cluster.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::{api::PostParams, Api, Client};

use super::Check;
use crate::policy::sources::kinds::KINDS;
use crate::sources::kubernetes::{slices, Source};

/// Each call's limit: a check must not hang on an unreachable server.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The checks for an agent reading the cluster from `source`.
pub fn checks(source: &Source) -> Vec<Check> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            return vec![Check::fail(
                "kubernetes-api",
                format!("no runtime: {err}"),
                "report a bug",
            )]
        }
    };
    runtime.block_on(async {
        let client =
            match tokio::time::timeout(CALL_TIMEOUT, crate::sources::kubernetes::client()).await {
                Ok(Ok(client)) => client,
                Ok(Err(err)) => {
                    return vec![Check::fail(
                        "kubernetes-api",
                        format!("{err:#}"),
                        "run in the agent's pod (its service account) or set KUBECONFIG",
                    )]
                }
                Err(_) => {
                    return vec![Check::fail(
                        "kubernetes-api",
                        "building the client timed out",
                        "check KUBECONFIG",
                    )]
                }
            };
        with_client(client, source).await
    })
}

/// The checks against `client` (tests call this with a fake server's).
pub async fn with_client(client: Client, source: &Source) -> Vec<Check> {
    match tokio::time::timeout(CALL_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            let mut out = vec![Check::pass(
                "kubernetes-api",
                format!("reachable, Kubernetes {}", v.git_version),
            )];
            match source {
                Source::Objects => {
                    for kind in KINDS {
                        out.push(rbac(&client, kind.group, kind.plural, None).await);
                    }
                    out.push(linkerd_crds(&client).await);
                }
                Source::Slices { namespace: ns } => {
                    out.push(rbac(&client, slices::GROUP, slices::PLURAL, Some(ns)).await);
                    out.push(slices_published(&client, ns).await);
                }
            }
            out
        }
        Ok(Err(err)) => vec![Check::fail(
            "kubernetes-api",
            format!("GET /version failed: {err}"),
            "check that the API server is reachable from this node (NetworkPolicy, firewall, KUBECONFIG server)",
        )],
        Err(_) => vec![Check::fail(
            "kubernetes-api",
            format!("GET /version: no answer within {} s", CALL_TIMEOUT.as_secs()),
            "check that the API server is reachable from this node",
        )],
    }
}

/// SelfSubjectAccessReview: may these credentials list and watch `plural`
/// (in `namespace`, or cluster-wide)?
async fn rbac(client: &Client, group: &str, plural: &str, namespace: Option<&str>) -> Check {
    let name = format!(
        "rbac-{plural}{}",
        if group.is_empty() {
            String::new()
        } else {
            format!(".{group}")
        }
    );
    let mut denied = Vec::new();
    for verb in ["list", "watch"] {
        match allowed(client, group, plural, verb, namespace).await {
            Ok(true) => {}
            Ok(false) => denied.push(verb.to_owned()),
            Err(err) => {
                return Check::fail(
                    &name,
                    format!("SelfSubjectAccessReview failed: {err:#}"),
                    "check the API server and credentials",
                )
            }
        }
    }
    let fix = match namespace {
        None => "apply deploy/rbac.yaml (ClusterRole classifier and its binding to the classifier service account)",
        Some(_) => "apply deploy/components/central-compiler (Role classifier and its binding to the classifier service account)",
    };
    if denied.is_empty() {
        Check::pass(&name, "may list and watch")
    } else {
        Check::fail(
            &name,
            format!("may not {} {plural}", denied.join(" or ")),
            fix,
        )
    }
}

async fn allowed(
    client: &Client,
    group: &str,
    plural: &str,
    verb: &str,
    namespace: Option<&str>,
) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(plural.to_owned()),
                verb: Some(verb.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &review))
        .await
        .context("timed out")??;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A central compiler has published a complete cluster in `ns`: its
/// marker slice is there (an agent applies nothing from slices before).
async fn slices_published(client: &Client, ns: &str) -> Check {
    let api: Api<slices::ClassifierSlice> = Api::namespaced(client.clone(), ns);
    let fix = format!(
        "install deploy/components/central-compiler, and see its log (kubectl -n {ns} logs deploy/classifier-compiler)"
    );
    match tokio::time::timeout(CALL_TIMEOUT, api.get_opt(slices::SYNCED)).await {
        Ok(Ok(Some(_))) => Check::pass(
            "slices-published",
            format!("a central compiler has published a complete cluster in {ns}"),
        ),
        Ok(Ok(None)) => Check::fail(
            "slices-published",
            format!(
                "no {:?} {} in {ns}: no central compiler has published a complete cluster (or its CRD is not installed)",
                slices::SYNCED,
                slices::KIND
            ),
            &fix,
        ),
        Ok(Err(err)) => Check::fail("slices-published", format!("reading the slices: {err}"), &fix),
        Err(_) => Check::fail(
            "slices-published",
            format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            "check that the API server is reachable from this node",
        ),
    }
}

/// Linkerd's policy CRDs are served (discovery; needs no RBAC).
async fn linkerd_crds(client: &Client) -> Check {
    let mut missing = Vec::new();
    for kind in KINDS.iter().filter(|k| !k.group.is_empty()) {
        let gv = format!("{}/{}", kind.group, kind.watch_version());
        let served = tokio::time::timeout(CALL_TIMEOUT, client.list_api_group_resources(&gv))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|list| list.resources.iter().any(|r| r.name == kind.plural));
        if !served {
            missing.push(format!("{}.{} ({gv})", kind.plural, kind.group));
        }
    }
    if missing.is_empty() {
        Check::pass("linkerd-crds", "EgressNetwork and Server are served")
    } else {
        Check::fail(
            "linkerd-crds",
            format!("not served: {}", missing.join(", ")),
            "install Linkerd's CRDs (`linkerd install --crds | kubectl apply -f -`)",
        )
    }
}

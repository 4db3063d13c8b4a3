//! Scenario 6: A cluster's worth of Kubernetes documents (10k Services, 50k Pods)
//! compiled and applied.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use classifier_user::{
    datapath::{PinDir, PolicyMaps},
    policy::compile,
    sources::{compile_documents, Document, DocumentSet, Options},
};
use serde_json::{json, Value};
use tests::Sandbox;

use crate::system::rss_kib;

/// 100 namespaces (half annotated `5432`), 10,000 Services (every other one
/// annotated `3306`, every tenth with an appProtocol opaque port) and
/// 50,000 running Pods, as the watcher would hand them over.
fn cluster_documents() -> Result<DocumentSet> {
    use serde_yaml::Value as Y;
    let doc = |text: String| -> Result<Y> { Ok(serde_yaml::from_str(&text)?) };
    let mut set = DocumentSet::new();
    let mut add = |body: Y, origin: String| -> Result<()> {
        if let Some(d) = Document::from_value(body, origin)? {
            set.insert(d);
        }
        Ok(())
    };
    for n in 0..100 {
        let annotations = if n % 2 == 0 {
            "  annotations: {config.linkerd.io/opaque-ports: \"5432\"}\n"
        } else {
            ""
        };
        add(
            doc(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n{annotations}"
            ))?,
            format!("bench:ns/{n}"),
        )?;
    }
    for i in 0..10_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i + 1);
        let annotations = if i % 2 == 0 {
            "  annotations: {config.linkerd.io/opaque-ports: \"3306\"}\n"
        } else {
            ""
        };
        let app = if i % 10 == 0 {
            ", appProtocol: linkerd.io/opaque"
        } else {
            ""
        };
        add(
            doc(format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{}\n{annotations}spec:\n  clusterIP: {ip}\n  ports: [{{port: 8080{app}}}]\n",
                i % 100
            ))?,
            format!("bench:svc/{i}"),
        )?;
    }
    for i in 0..50_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0af4_0000 + i + 1);
        add(
            doc(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: ns-{}\n  uid: 00000000-0000-4000-8000-{i:012}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n",
                i % 100
            ))?,
            format!("bench:pod/{i}"),
        )?;
    }
    Ok(set)
}

pub(crate) fn kubernetes_scale(sb: &Sandbox) -> Result<Value> {
    let rss_before = rss_kib(std::process::id())?;
    let set = cluster_documents()?;
    let t = Instant::now();
    let policy = compile_documents(&set, &Options::default())?;
    let documents_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let compiled = Arc::new(compile(&policy)?);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut maps = PolicyMaps::open(&PinDir::new(&sb.pins))?;
    let applied = maps.apply(compiled.clone())?;
    // Twice more, so that both slots hold it: the last one is what a
    // re-list that changed nothing costs.
    maps.apply(compiled.clone())?;
    std::thread::sleep(Duration::from_millis(25));
    let again = maps.apply(compiled)?;
    let rss_after = rss_kib(std::process::id())?;
    eprintln!(
        "bench:   {} documents -> {} rules, {} + {} entries: documents {documents_ms:.0} ms, compile {compile_ms:.0} ms, apply {:.0} ms",
        set.len(),
        policy.rules.len(),
        applied.v4_entries,
        applied.v6_entries,
        applied.elapsed.as_secs_f64() * 1e3
    );
    Ok(json!({
        "documents": set.len(),
        "rules": policy.rules.len(),
        "v4_entries": applied.v4_entries,
        "v6_entries": applied.v6_entries,
        "documents_to_policy_ms": documents_ms,
        "compile_ms": compile_ms,
        "apply_full_ms": applied.elapsed.as_secs_f64() * 1e3,
        "apply_unchanged_ms": again.elapsed.as_secs_f64() * 1e3,
        "memory_kib": rss_after.saturating_sub(rss_before),
    }))
}

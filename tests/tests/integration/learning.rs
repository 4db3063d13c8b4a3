//! Learning server-first destinations on a real kernel: real
//! sockets in the sandbox's cgroup and network namespace, the agent's own
//! pinned tables, the `learned`, `stats`, `explain` and `suggest` commands.
//! A process in the sandbox's cgroup is in no known pod, so the tests that
//! learn from one start the agent with `--learn-outside-pods`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use tests::{classifier_bin, privileged, run, Sandbox, Server};

pub(crate) fn talk_server(
    sb: &Sandbox,
    addr: &str,
    count: usize,
    server_first: bool,
) -> Result<Server> {
    let mode = if server_first {
        "server-first"
    } else {
        "client-first"
    };
    Sandbox::spawn_server(
        sb.probe(&["talk-serve", addr, &count.to_string(), mode], None),
        count,
    )
}

pub(crate) fn talk(sb: &Sandbox, addr: &str, server_first: bool) -> Result<()> {
    talk_as(
        sb,
        addr,
        if server_first {
            "server-first"
        } else {
            "client-first"
        },
    )
}

fn talk_as(sb: &Sandbox, addr: &str, mode: &str) -> Result<()> {
    let out = run(&mut sb.probe(&["talk", addr, mode], None))?;
    anyhow::ensure!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    Ok(())
}

pub(crate) fn learned(sb: &Sandbox) -> Result<Vec<Value>> {
    let out = run(Command::new(classifier_bin())
        .args(["learned", "--json", "--pin-dir"])
        .arg(&sb.pins))?;
    Ok(serde_json::from_slice::<Value>(&out.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

pub(crate) fn wait_learned(sb: &Sandbox, want: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = learned(sb)?;
        if want(&l) {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!(
                "learned table never as wanted: {l:?}\nagent log:\n{}",
                sb.agent_log()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn counter(sb: &Sandbox, name: &str) -> u64 {
    sb.stats()
        .ok()
        .and_then(|s| s["counters"][name].as_u64())
        .unwrap_or(0)
}

#[test]
fn server_first_is_learned_then_used_and_a_client_first_contradiction_removes_it() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn")?;
    sb.start_agent(&["--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;

    // 2222: no rule, not a default opaque port.
    let server = talk_server(&sb, "127.0.0.1:2222", 2, true)?;
    talk(&sb, "127.0.0.1:2222", true)?;
    let table = wait_learned(&sb, |l| !l.is_empty())?;
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["destination"], "127.0.0.1:2222");
    assert_eq!(
        table[0]["scope"], "node",
        "a process outside pods: node scope"
    );
    assert_eq!(table[0]["observations"], 1);
    talk(&sb, "127.0.0.1:2222", true)?;
    let verdicts = server.results()?;
    assert_eq!(
        verdicts[0]["protocol"], "unknown",
        "first connection: no verdict yet"
    );
    assert_eq!(verdicts[1]["protocol"], "opaque", "{}", verdicts[1]);
    assert_eq!(verdicts[1]["source"], "learned");
    wait_learned(&sb, |l| l.first().is_some_and(|e| e["observations"] == 2))?;

    // explain with the agent's pins consults the live table.
    let out = run(Command::new(classifier_bin())
        .args(["explain", "127.0.0.1:2222", "--json", "--pin-dir"])
        .arg(&sb.pins))?;
    let explained: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(explained["source"], "learned", "{explained}");
    assert_eq!(explained["protocol"], "opaque");
    // stats shows the table and the counters.
    let stats = sb.stats()?;
    assert_eq!(
        stats["learned_destinations"].as_array().map(Vec::len),
        Some(1),
        "{stats}"
    );
    assert!(
        stats["learning"]["learned_total"].as_u64() >= Some(2),
        "{stats}"
    );

    // HTTP/1 and a TLS client hello (client first) are never learned.
    let http = talk_server(&sb, "127.0.0.1:8081", 4, false)?;
    talk(&sb, "127.0.0.1:8081", false)?;
    talk(&sb, "127.0.0.1:8081", false)?;
    talk_as(&sb, "127.0.0.1:8081", "tls")?;
    talk_as(&sb, "127.0.0.1:8081", "tls")?;
    http.results()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&sb, "learn_client_first") < 4 {
        anyhow::ensure!(Instant::now() < deadline, "client-first never observed");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        learned(&sb)?.len(),
        1,
        "client-first 8081 (HTTP/1, TLS) must not be learned"
    );

    // The same destination now speaks client first: the entry goes.
    let contra = talk_server(&sb, "127.0.0.1:2222", 1, false)?;
    talk(&sb, "127.0.0.1:2222", false)?;
    contra.results()?;
    wait_learned(&sb, |l| l.is_empty())?;
    assert_eq!(counter(&sb, "learn_contradicted"), 1);
    assert_eq!(counter(&sb, "err_learn"), 0);
    Ok(())
}

/// While nothing is learned, connects skip the learned table (the agent's
/// hint). The kernel drops the hint itself when it learns: the very next
/// connect to the destination gets the learned verdict, with no agent tick
/// in between (this agent's tick is an hour away). Once the table is empty
/// again the agent sets the hint again, and learning still works.
#[test]
fn a_destination_learned_while_nothing_was_learned_is_used_by_the_next_connect() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-hint")?;
    sb.start_agent(&["--learn-outside-pods", "--watch-interval", "3600"])?;
    sb.wait_for_generation(1)?;
    let hinted = |sb: &Sandbox| -> Result<bool> {
        let stats = sb.stats()?;
        stats["learning"]["nothing_learned"]
            .as_bool()
            .with_context(|| format!("no learning.nothing_learned in {stats}"))
    };
    assert!(hinted(&sb)?, "an empty table: connects skip it");

    // Unclassified, client first: watched, nothing learned, hint kept.
    let http = talk_server(&sb, "127.0.0.1:8082", 1, false)?;
    talk(&sb, "127.0.0.1:8082", false)?;
    http.results()?;
    assert!(hinted(&sb)?);

    let server = talk_server(&sb, "127.0.0.1:2225", 2, true)?;
    talk(&sb, "127.0.0.1:2225", true)?;
    wait_learned(&sb, |l| !l.is_empty())?;
    assert!(!hinted(&sb)?, "the kernel dropped the hint when it learned");
    talk(&sb, "127.0.0.1:2225", true)?;
    let verdicts = server.results()?;
    assert_eq!(verdicts[0]["protocol"], "unknown", "{}", verdicts[0]);
    assert_eq!(verdicts[1]["protocol"], "opaque", "{}", verdicts[1]);
    assert_eq!(verdicts[1]["source"], "learned", "{}", verdicts[1]);

    // Contradicted: the table is empty again. An agent with a short tick
    // sees it and sets the hint again; learning goes on.
    let contra = talk_server(&sb, "127.0.0.1:2225", 1, false)?;
    talk(&sb, "127.0.0.1:2225", false)?;
    contra.results()?;
    wait_learned(&sb, |l| l.is_empty())?;
    sb.stop_agent();
    sb.start_agent(&["--learn-outside-pods"])?;
    crate::learning_scopes::wait_until("the hint set again", &sb, || hinted(&sb))?;
    let server = talk_server(&sb, "127.0.0.1:2226", 2, true)?;
    talk(&sb, "127.0.0.1:2226", true)?;
    wait_learned(&sb, |l| !l.is_empty())?;
    talk(&sb, "127.0.0.1:2226", true)?;
    let verdicts = server.results()?;
    assert_eq!(verdicts[1]["source"], "learned", "{}", verdicts[1]);
    assert_eq!(counter(&sb, "err_learn"), 0);
    Ok(())
}

/// A flood of connects to closed ports (a tenant's scan, a crash-looping
/// client) between another connection's connect and its server's greeting
/// does not cost that connection its observation: a refused connect never
/// takes a place in the watch table, which holds established connections
/// only.
#[test]
fn a_flood_of_refused_connects_does_not_stop_anothers_learning() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-flood")?;
    sb.start_agent(&["--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;
    let go = sb.dir.join("greet-now");
    let mut server = Sandbox::spawn_server(
        sb.probe(
            &[
                "talk-serve",
                "127.0.0.1:2222",
                "1",
                "server-first",
                go.to_str().unwrap(),
            ],
            None,
        ),
        1,
    )?;
    let client = sb
        .probe(&["talk", "127.0.0.1:2222", "server-first"], None)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    server.expect_line("accepted")?;

    // More refused connects than the watch table holds, from another
    // network namespace, to ports below the ephemeral range (a connect to
    // a port in it can connect to itself).
    let other = Sandbox::new("learn-flood-other")?;
    let flood = classifier_common::maps::LEARN_PENDING_CAPACITY + 4096;
    let out = run(&mut sb.probe_in_netns(
        &["connect-ports", "127.0.0.1", "10000", &flood.to_string()],
        &other.netns,
    ))?;
    let out: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(out["connected"], 0, "{out}");

    std::fs::write(&go, b"")?;
    server.results()?;
    client.wait_with_output()?;
    let table = wait_learned(&sb, |l| !l.is_empty())?;
    assert_eq!(table[0]["destination"], "127.0.0.1:2222", "{table:?}");
    assert_eq!(counter(&sb, "err_learn"), 0);
    Ok(())
}

/// A learned verdict the published table has no room for (the namespace's
/// share is in use) is still watched: a client-first connection to that
/// destination removes the entry even though its proxy never saw the
/// verdict.
#[test]
fn a_learned_verdict_that_cannot_be_published_is_still_contradicted() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-unpublished")?;
    // 16 entries: this namespace may hold 16 / 8 = 2.
    sb.start_agent(&["--verdict-table-size", "16", "--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;
    let server = talk_server(&sb, "127.0.0.1:2222", 1, true)?;
    talk(&sb, "127.0.0.1:2222", true)?;
    server.results()?;
    wait_learned(&sb, |l| l.len() == 1)?;

    // Two classified connections held open use up the namespace's share
    // (the server waits for a third before it lets them go).
    let held = sb.serve_held("127.0.0.1:3306", 3)?;
    let holder = sb
        .probe(&["connect-held", "127.0.0.1:3306", "2"], None)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&sb, "published") < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the held connections never published"
        );
        thread::sleep(Duration::from_millis(20));
    }

    // The destination now speaks client first; its learned verdict is not
    // published (no room), and the observation still removes it.
    let contra = talk_server(&sb, "127.0.0.1:2222", 1, false)?;
    talk(&sb, "127.0.0.1:2222", false)?;
    let seen = contra.results()?;
    assert_eq!(seen[0]["protocol"], "unknown", "not published: {}", seen[0]);
    assert!(counter(&sb, "publish_netns_full") >= 1);
    wait_learned(&sb, |l| l.is_empty())?;
    assert_eq!(counter(&sb, "learn_contradicted"), 1);

    sb.connect(&["127.0.0.1:3306"], None)?;
    held.results()?;
    holder.wait_with_output()?;
    assert_eq!(counter(&sb, "err_learn"), 0);
    Ok(())
}

/// A server that closes before anyone speaks (its FIN counts one in the
/// client's bytes_received) is not server-first.
#[test]
fn a_server_that_closes_without_speaking_is_not_learned() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-fin")?;
    sb.start_agent(&["--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;
    for _ in 0..3 {
        let v = sb.verdict("127.0.0.1:8082")?;
        assert_eq!(v["protocol"], "unknown", "{v}");
    }
    // And a client that keeps reading after the server's FIN, then speaks.
    let server = talk_server(&sb, "127.0.0.1:8083", 1, false)?;
    talk(&sb, "127.0.0.1:8083", false)?;
    server.results()?;
    assert!(learned(&sb)?.is_empty(), "{:?}", learned(&sb)?);
    Ok(())
}

#[test]
fn learning_disabled_watches_nothing_and_learns_nothing() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-off")?;
    let policy = sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  learning: {enabled: false}\n",
    );
    sb.start_agent(&["--policy", policy.to_str().unwrap(), "--learn-outside-pods"])?;
    sb.wait_for_generation(1)?;
    let server = talk_server(&sb, "127.0.0.1:2223", 2, true)?;
    talk(&sb, "127.0.0.1:2223", true)?;
    talk(&sb, "127.0.0.1:2223", true)?;
    let verdicts = server.results()?;
    assert_eq!(verdicts[1]["protocol"], "unknown");
    assert_eq!(counter(&sb, "learn_watched"), 0, "no callback switched on");
    assert!(learned(&sb)?.is_empty());
    Ok(())
}

#[test]
fn ttl_expires_entries_and_an_agent_restart_keeps_the_table() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-ttl")?;
    let policy = sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  learning: {ttl: 1h}\n",
    );
    sb.start_agent(&[
        "--learn-outside-pods",
        "--policy",
        policy.to_str().unwrap(),
        "--watch-interval",
        "0.2",
    ])?;
    sb.wait_for_generation(1)?;
    let server = talk_server(&sb, "127.0.0.1:2224", 1, true)?;
    talk(&sb, "127.0.0.1:2224", true)?;
    server.results()?;
    wait_learned(&sb, |l| l.len() == 1)?;

    // Restart: the pinned table survives.
    sb.stop_agent();
    assert_eq!(learned(&sb)?.len(), 1, "the table outlives the agent");
    sb.start_agent(&[
        "--learn-outside-pods",
        "--policy",
        policy.to_str().unwrap(),
        "--watch-interval",
        "0.2",
    ])?;
    sb.wait_for_log("policy applied", 1, Duration::from_secs(15))?;
    assert_eq!(learned(&sb)?.len(), 1, "a restarted agent keeps the table");

    // A 1 s ttl: the entry expires.
    std::fs::write(
        &policy,
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  learning: {ttl: 1s}\n",
    )?;
    wait_learned(&sb, |l| l.is_empty())?;
    Ok(())
}

/// The cluster of the suggest test: a Service (cluster IP 127.0.0.21, an
/// appProtocol-opaque port 9000) and a Pod (127.0.0.22) without
/// annotations, in a namespace without one: their ports keep the default
/// opaque ports and are otherwise undecided, so they are learned.
const SUGGEST_CLUSTER: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: orders-db, namespace: shop}
spec:
  clusterIP: 127.0.0.21
  ports:
    - {name: db, port: 2227}
    - {name: metrics, port: 9000, appProtocol: linkerd.io/opaque}
---
apiVersion: v1
kind: Pod
metadata:
  name: cache-0
  namespace: shop
  uid: 6b1d2c3e-0000-4000-8000-00000000c0de
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cache-5f6d, uid: x}]
spec:
  containers: [{name: cache, image: cache}]
status: {podIP: 127.0.0.22, phase: Running}
"#;

/// RFC 7386 JSON merge patch (what `kubectl patch --type merge` does).
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if let Some(slot) = t.get_mut(k).filter(|s| s.is_object()) {
                    merge_patch(slot, v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    use classifier_user::{policy::file::parse_yaml_value, sources::document::split_documents};
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let v = parse_yaml_value(&doc.text, "suggest", doc.line_offset)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// `(kind, namespace, name)` of a document.
fn object_key(v: &Value) -> (String, String, String) {
    let s = |v: Option<&Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
    (
        s(v.get("kind")),
        s(v.get("metadata").and_then(|m| m.get("namespace"))),
        s(v.get("metadata").and_then(|m| m.get("name"))),
    )
}

/// `classifier suggest`'s output applied to the cluster: its Service and
/// Pod documents merged as patches into the object they name (which must
/// exist), anything else added.
fn apply_suggestion(cluster: &str, suggestion: &str) -> Result<(String, usize)> {
    let mut docs = yaml_documents(cluster)?;
    let mut patched = 0;
    for patch in yaml_documents(suggestion)? {
        let key = object_key(&patch);
        if key.0 == "Service" || key.0 == "Pod" {
            let Some(target) = docs.iter_mut().find(|d| object_key(d) == key) else {
                bail!("the patch names {key:?}, which is not in the documents");
            };
            merge_patch(target, &patch);
            patched += 1;
        } else {
            docs.push(patch);
        }
    }
    let mut text = String::new();
    for d in docs {
        // JSON is YAML.
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(&d)?);
        text.push('\n');
    }
    Ok((text, patched))
}

fn explain_with(policy: &std::path::Path, dst: &str) -> Result<Value> {
    // No --pin-dir with an agent: a pure policy question.
    let out = run(Command::new(classifier_bin())
        .args(["explain", "--json", "--pin-dir", "/nonexistent", "--policy"])
        .arg(policy)
        .arg(dst))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// An external address, the Service's cluster IP and the Pod's IP (all on
/// the sandbox's loopback).
const SUGGEST_LEARNED: [&str; 3] = ["127.0.0.1:2225", "127.0.0.21:2227", "127.0.0.22:2228"];

#[test]
fn suggest_round_trips_through_explain() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-suggest")?;
    let cluster_dir = sb.dir.join("cluster");
    std::fs::create_dir(&cluster_dir)?;
    std::fs::write(cluster_dir.join("cluster.yaml"), SUGGEST_CLUSTER)?;
    sb.start_agent(&[
        "--policy",
        cluster_dir.to_str().unwrap(),
        "--learn-outside-pods",
    ])?;
    sb.wait_for_generation(1)?;
    for dst in SUGGEST_LEARNED {
        let server = talk_server(&sb, dst, 1, true)?;
        talk(&sb, dst, true)?;
        server.results()?;
    }
    wait_learned(&sb, |l| l.len() == 3)?;

    let istio = suggest(&sb, &cluster_dir, "istio", false)?;
    assert!(
        istio.contains("kind: ServiceEntry") && istio.contains("protocol: TCP"),
        "{istio}"
    );

    // Destinations whose verdict must not change: default opaque ports,
    // the Service's appProtocol port, undecided ports, another address.
    let others: Vec<String> = ["127.0.0.1", "127.0.0.21", "127.0.0.22", "127.0.0.2"]
        .iter()
        .flat_map(|a| {
            [2225, 2227, 2228, 3306, 5432, 8080, 9000]
                .iter()
                .map(move |p| format!("{a}:{p}"))
        })
        .filter(|d| !SUGGEST_LEARNED.contains(&d.as_str()))
        .collect();

    for (name, before, after, text) in suggestion_cases(&sb, &cluster_dir)? {
        for dst in SUGGEST_LEARNED {
            let fixed = explain_with(&after, dst)?;
            assert_eq!(fixed["protocol"], "opaque", "{name} {dst}: {fixed}\n{text}");
            assert_eq!(fixed["source"], "rule", "{name} {dst}: {fixed}");
        }
        for dst in &others {
            let (was, now) = (explain_with(&before, dst)?, explain_with(&after, dst)?);
            assert_eq!(
                now["protocol"], was["protocol"],
                "{name} {dst}: {was} -> {now}\n{text}"
            );
        }
    }
    Ok(())
}

/// `classifier suggest --format FORMAT` on the sandbox's learned table,
/// given the cluster's documents or not.
fn suggest(sb: &Sandbox, cluster_dir: &Path, format: &str, documents: bool) -> Result<String> {
    let mut cmd = Command::new(classifier_bin());
    cmd.args(["suggest", "--format", format, "--pin-dir"])
        .arg(&sb.pins);
    if documents {
        cmd.arg("--policy").arg(cluster_dir);
    }
    Ok(String::from_utf8(run(&mut cmd)?.stdout)?)
}

/// One way to apply a suggestion: (name, the policy explain reads before,
/// the one it reads after, the suggestion's text).
type SuggestionCase = (&'static str, PathBuf, PathBuf, String);

/// Each of `suggest`'s fixes, applied: a ClassifierPolicy of its own; the
/// linkerd form without the documents (an EgressNetwork for every
/// address); the linkerd form with them (patches for the Service and the
/// Pod, an EgressNetwork for the external address).
fn suggestion_cases(sb: &Sandbox, cluster_dir: &Path) -> Result<Vec<SuggestionCase>> {
    let original = sb.write_file("original.yaml", SUGGEST_CLUSTER);
    let mut cases = Vec::new();
    // policy: a ClassifierPolicy of its own, against the built-in policy.
    let text = suggest(sb, cluster_dir, "policy", false)?;
    let builtin = sb.write_file(
        "builtin.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec: {}\n",
    );
    cases.push((
        "policy",
        builtin,
        sb.write_file("suggest-policy.yaml", &text),
        text,
    ));
    let text = suggest(sb, cluster_dir, "linkerd", false)?;
    assert_eq!(text.matches("kind: EgressNetwork").count(), 3, "{text}");
    let (applied, patched) = apply_suggestion(SUGGEST_CLUSTER, &text)?;
    assert_eq!(patched, 0);
    cases.push((
        "linkerd without documents",
        original.clone(),
        sb.write_file("suggest-linkerd-egress.yaml", &applied),
        text,
    ));
    let text = suggest(sb, cluster_dir, "linkerd", true)?;
    assert_eq!(text.matches("kind: EgressNetwork").count(), 1, "{text}");
    assert!(
        text.contains("kubectl -n shop annotate --overwrite service/orders-db config.linkerd.io/opaque-ports=25,587,2227,3306,4444,5432,6379,9300,11211"),
        "{text}"
    );
    assert!(
        text.contains("kubectl -n shop annotate --overwrite pod/cache-0 config.linkerd.io/opaque-ports=25,587,2228,3306,4444,5432,6379,9300,11211")
            && text.contains("ReplicaSet cache-5f6d"),
        "{text}"
    );
    let (applied, patched) = apply_suggestion(SUGGEST_CLUSTER, &text)?;
    assert_eq!(patched, 2, "{text}");
    cases.push((
        "linkerd with documents",
        original,
        sb.write_file("suggest-linkerd-patched.yaml", &applied),
        text,
    ));
    Ok(cases)
}

pub(crate) const TEAM_A_POD: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
pub(crate) const TEAM_B_POD: &str = "11111111-2222-3333-4444-555555555555";

pub(crate) fn pod(uid: &str, namespace: &str, name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {uid}\nspec:\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: 10.244.0.9\n")
}

#[test]
fn a_destination_learned_in_one_namespace_does_not_apply_in_another() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-scope")?;
    let team_a = sb
        .cgroup
        .join(format!("kubepods/burstable/pod{TEAM_A_POD}/c1"));
    let team_b = sb
        .cgroup
        .join(format!("kubepods/burstable/pod{TEAM_B_POD}/c2"));
    std::fs::create_dir_all(&team_a)?;
    std::fs::create_dir_all(&team_b)?;
    let dir = sb.dir.join("policy");
    std::fs::create_dir(&dir)?;
    std::fs::write(
        dir.join("pods.yaml"),
        format!(
            "{}---\n{}",
            pod(TEAM_A_POD, "team-a", "a"),
            pod(TEAM_B_POD, "team-b", "b")
        ),
    )?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_generation(1)?;

    let talk_in = |cgroup: &std::path::Path| -> Result<()> {
        let out = sb
            .probe_in_cgroup(&["talk", "127.0.0.1:2226", "server-first"], cgroup)
            .output()?;
        anyhow::ensure!(
            String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{out:?}"
        );
        Ok(())
    };
    let server = talk_server(&sb, "127.0.0.1:2226", 3, true)?;
    talk_in(&team_a)?;
    let table = wait_learned(&sb, |l| l.len() == 1)?;
    assert_eq!(table[0]["scope"], "namespace", "{table:?}");
    assert_eq!(table[0]["namespace"], "team-a", "{table:?}");
    talk_in(&team_b)?;
    talk_in(&team_a)?;
    let v = server.results()?;
    assert_eq!(v[0]["protocol"], "unknown");
    assert_eq!(
        v[1]["protocol"], "unknown",
        "team-b does not get team-a's entry: {}",
        v[1]
    );
    assert_eq!(v[2]["source"], "learned", "team-a does: {}", v[2]);
    // explain --from-namespace reads the right scope.
    let explain = |ns: &str| -> Result<Value> {
        let out = run(Command::new(classifier_bin())
            .args([
                "explain",
                "127.0.0.1:2226",
                "--json",
                "--from-namespace",
                ns,
                "--pin-dir",
            ])
            .arg(&sb.pins))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    assert_eq!(explain("team-a")?["source"], "learned");
    // team-b has by now learned its own entry from its own connection.
    wait_learned(&sb, |l| l.len() == 2)?;
    assert_eq!(
        explain("team-c")?["source"],
        "none",
        "a namespace without pods: node scope"
    );
    Ok(())
}

/// Through the reference proxy (3 s detection timeout, linkerd-init's nat
/// rules), real MariaDB with 3306 taken out of the default ports: the first
/// connection stalls for the detection timeout, is learned, and the next
/// does not stall. curl (HTTP/1, client first) is never learned.
#[test]
fn mariadb_outside_the_default_ports_stalls_once_then_is_learned() -> Result<()> {
    use tests::e2e::{prerequisites, World, DETECT_TIMEOUT, MARIADB};
    let test = tests::test_name!();
    if !prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    let policy = world.sb.write_file(
        "policy.yaml",
        "apiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  defaultOpaquePorts: \"\"\n",
    );
    world
        .sb
        .start_agent(&["--policy", policy.to_str().unwrap(), "--learn-outside-pods"])?;
    world.sb.wait_for_generation(1)?;

    let (out, elapsed) = world.curl(&[])?;
    assert!(out.status.success(), "curl: {out:?}");
    assert!(elapsed < DETECT_TIMEOUT / 2, "{elapsed:?}");

    let first = world.mariadb_select_1()?;
    eprintln!("{test}: first connection {first:?}");
    assert!(
        first >= DETECT_TIMEOUT,
        "the first connection stalls: {first:?}"
    );
    let table = wait_learned(&world.sb, |l| !l.is_empty())?;
    assert_eq!(table.len(), 1, "only MariaDB, not HTTP: {table:?}");
    assert_eq!(table[0]["destination"], MARIADB);

    let second = world.mariadb_select_1()?;
    eprintln!("{test}: second connection {second:?}");
    assert!(
        second < DETECT_TIMEOUT / 2,
        "learned: no stall: {second:?}\n{}",
        world.proxy_log()
    );
    world.wait_for_proxy_lines(
        &["opaque from kernel verdict", &format!("dst={MARIADB}")],
        1,
    )?;
    assert_eq!(learned(&world.sb)?.len(), 1);
    Ok(())
}

/// Through the reference proxy (3 s detection timeout, linkerd-init's nat
/// rules), the real sshd from openssh-server on a port in no default list.
/// OpenSSH's own `ssh` client sends its banner as soon as it is connected:
/// client first, it never stalls and is never learned. `ssh-keyscan` waits
/// for the server's banner: its first connection stalls for the detection
/// timeout and is learned, the next one does not stall. A later `ssh`
/// contradicts the entry and removes it (the same server, a client that
/// speaks first).
#[test]
fn sshd_stalls_a_server_first_client_once_then_is_learned() -> Result<()> {
    use tests::e2e::{sshd_prerequisites, World, DETECT_TIMEOUT, SSHD};
    let test = tests::test_name!();
    if !sshd_prerequisites(test) {
        return Ok(());
    }
    let mut world = World::new(test)?;
    world.sb.start_agent(&["--learn-outside-pods"])?;
    world.sb.wait_for_generation(1)?;
    let host_key = world.start_sshd()?;
    let key_base64 = host_key.split_whitespace().nth(1).unwrap().to_owned();

    let (out, elapsed) = world.ssh()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "ssh reached sshd and was refused: {out:?}"
    );
    assert!(
        elapsed < DETECT_TIMEOUT / 2,
        "ssh speaks first: no stall: {elapsed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&world.sb, "learn_client_first") < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ssh connection was never observed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(learned(&world.sb)?.is_empty(), "ssh is not learned");

    let (keys, first) = world.ssh_keyscan()?;
    eprintln!("{test}: first ssh-keyscan {first:?}");
    assert!(keys.contains(&key_base64), "the test's host key: {keys:?}");
    assert!(
        first >= DETECT_TIMEOUT,
        "the first connection stalls: {first:?}"
    );
    let table = wait_learned(&world.sb, |l| !l.is_empty())?;
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["destination"], SSHD);

    let (keys, second) = world.ssh_keyscan()?;
    eprintln!("{test}: second ssh-keyscan {second:?}");
    assert!(keys.contains(&key_base64), "{keys:?}");
    assert!(
        second < DETECT_TIMEOUT / 2,
        "learned: no stall: {second:?}\n{}",
        world.proxy_log()
    );
    world.wait_for_proxy_lines(&["opaque from kernel verdict", &format!("dst={SSHD}")], 1)?;

    let (out, _) = world.ssh()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    wait_learned(&world.sb, |l| l.is_empty())?;
    assert_eq!(counter(&world.sb, "learn_contradicted"), 1);
    Ok(())
}

/// `suggest --kubernetes` reads the cluster's documents from the API (the
/// fake API server's recorded lists): the learned cluster IP of Service
/// default/kubernetes (no annotation, in a namespace without one) gets a
/// patch keeping the default opaque ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggest_reads_the_documents_from_the_kubernetes_api() -> Result<()> {
    use tests::fake_kube::{FakeApi, ALL};
    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let url = fake.url();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut sb = Sandbox::new("learn-suggest-kube")?;
        sb.ip(&["addr", "add", "10.96.0.1/32", "dev", "lo"])?;
        let kubeconfig = sb.write_file(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{url}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            ),
        );
        sb.start_agent(&["--learn-outside-pods"])?;
        sb.wait_for_generation(1)?;
        let server = talk_server(&sb, "10.96.0.1:2229", 1, true)?;
        talk(&sb, "10.96.0.1:2229", true)?;
        server.results()?;
        wait_learned(&sb, |l| l.len() == 1)?;

        let out = run(Command::new(classifier_bin())
            .args(["suggest", "--format", "linkerd", "--kubernetes", "--pin-dir"])
            .arg(&sb.pins)
            .env("KUBECONFIG", &kubeconfig))?;
        let text = String::from_utf8(out.stdout)?;
        assert!(
            text.contains("kubectl -n default annotate --overwrite service/kubernetes config.linkerd.io/opaque-ports=25,587,2229,3306,4444,5432,6379,9300,11211")
                && text.contains("(kubernetes:Service/default/kubernetes)"),
            "{text}"
        );
        assert!(!text.contains("kind: EgressNetwork"), "{text}");
        Ok(())
    })
    .await??;
    Ok(())
}

//! Learning server-first destinations (issue 11) on a real kernel: real
//! sockets in the sandbox's cgroup and network namespace, the agent's own
//! pinned tables, the `learned`, `stats`, `explain` and `suggest` commands.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;
use tests::{classifier_bin, privileged, run, Sandbox, Server};

fn talk_server(sb: &Sandbox, addr: &str, count: usize, server_first: bool) -> Result<Server> {
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

fn talk(sb: &Sandbox, addr: &str, server_first: bool) -> Result<()> {
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

fn learned(sb: &Sandbox) -> Result<Vec<Value>> {
    let out = run(Command::new(classifier_bin())
        .args(["learned", "--json", "--pin-dir"])
        .arg(&sb.pins))?;
    Ok(serde_json::from_slice::<Value>(&out.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn wait_learned(sb: &Sandbox, want: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
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

fn counter(sb: &Sandbox, name: &str) -> u64 {
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
    sb.start_agent(&[])?;
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

/// A server that closes before anyone speaks (its FIN counts one in the
/// client's bytes_received) is not server-first.
#[test]
fn a_server_that_closes_without_speaking_is_not_learned() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-fin")?;
    sb.start_agent(&[])?;
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
    sb.start_agent(&["--policy", policy.to_str().unwrap()])?;
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

#[test]
fn suggest_round_trips_through_explain() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-suggest")?;
    sb.start_agent(&[])?;
    sb.wait_for_generation(1)?;
    let server = talk_server(&sb, "127.0.0.1:2225", 1, true)?;
    talk(&sb, "127.0.0.1:2225", true)?;
    server.results()?;
    wait_learned(&sb, |l| l.len() == 1)?;

    for format in ["linkerd", "policy", "istio"] {
        let out = run(Command::new(classifier_bin())
            .args(["suggest", "--format", format, "--pin-dir"])
            .arg(&sb.pins))?;
        let text = String::from_utf8(out.stdout)?;
        if format == "istio" {
            assert!(
                text.contains("kind: ServiceEntry") && text.contains("protocol: TCP"),
                "{text}"
            );
            continue;
        }
        let file = sb.write_file(&format!("suggest-{format}.yaml"), &text);
        let explain = |dst: &str| -> Result<Value> {
            // No --pin-dir with an agent: a pure policy question.
            let out = run(Command::new(classifier_bin())
                .args(["explain", "--json", "--pin-dir", "/nonexistent", "--policy"])
                .arg(&file)
                .arg(dst))?;
            Ok(serde_json::from_slice(&out.stdout)?)
        };
        let fixed = explain("127.0.0.1:2225")?;
        assert_eq!(fixed["protocol"], "opaque", "{format}: {fixed}\n{text}");
        assert_eq!(fixed["source"], "rule", "{format}: {fixed}");
        // No other verdict changes: a default opaque port and an unknown one.
        for (dst, want) in [
            ("127.0.0.1:3306", "opaque"),
            ("127.0.0.1:8080", "detect"),
            ("127.0.0.2:2225", "detect"),
        ] {
            let v = explain(dst)?;
            assert_eq!(v["protocol"], want, "{format} {dst}: {v}\n{text}");
        }
    }
    Ok(())
}

const TEAM_A_POD: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";
const TEAM_B_POD: &str = "11111111-2222-3333-4444-555555555555";

fn pod(uid: &str, namespace: &str, name: &str) -> String {
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
        .start_agent(&["--policy", policy.to_str().unwrap()])?;
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

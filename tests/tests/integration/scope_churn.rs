//! Scope ids over time: a namespace that goes away gives its id back, a
//! reused id carries nothing of the namespace that had it before, and the
//! first pod of a new namespace never runs under the node scope.
//!
//! The tests read and write the agent's pinned maps directly (as the
//! kernel would write the learning maps), through aya.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use classifier_common::{maps, LearnWatch, LearnedEntry, LearnedKey, SCOPE_FLAG_POD_UNKNOWN};
use classifier_user::{
    datapath::{scopes::ScopeReader, PinDir},
    learned::{scope_names, scope_of_namespace},
};
use serde_json::json;
use tests::{
    fake_kube::{FakeApi, ALL, PODS},
    privileged, Sandbox,
};

fn pod_doc(uid: &str, namespace: &str, name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: {uid}\nstatus:\n  phase: Running\n  podIP: 10.244.0.1\n")
}

fn uid(round: usize, i: usize) -> String {
    format!("5c09e000-{round:04x}-4000-8000-{i:012x}")
}

/// Replaces the policy directory's one file with `text` and waits until
/// the agent applied it (the `n`th "policy applied"), failing on a refusal.
fn replace_and_wait(sb: &Sandbox, dir: &Path, text: &str, n: usize) -> Result<()> {
    let tmp = sb.dir.join("policy.tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join("all.yaml"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = sb.agent_log();
        if log.contains("stays active") || log.contains("policy rejected") {
            bail!("a policy was refused:\n{}", tail(&log));
        }
        if log.matches("policy applied").count() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("policy {n} not applied within 60 s:\n{}", tail(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn open_map(sb: &Sandbox, name: &str) -> MapData {
    MapData::from_pin(PinDir::new(sb.pins.clone()).map(name))
        .unwrap_or_else(|e| panic!("opening pinned {name}: {e}"))
}

/// The repro of a node frozen by scope ids: a policy directory replaced
/// 17 times, each time with 1,000 pods in 1,000 new namespaces (every pod
/// namespace needs an id under namespace-scoped learning, the default).
/// 17,000 names were ever seen, more than the 16,384 ids, but never more
/// than 1,000 at once: every apply succeeds, and the id table holds the
/// namespaces that exist.
#[test]
fn scope_ids_of_namespaces_that_went_away_are_freed() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    const ROUNDS: usize = 17;
    const NAMESPACES: usize = 1000;
    let mut sb = Sandbox::new("scope-churn")?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    let round = |r: usize| -> String {
        (0..NAMESPACES)
            .map(|i| pod_doc(&uid(r, i), &format!("r{r}-ns{i}"), "p"))
            .collect()
    };
    fs::write(dir.join("all.yaml"), round(0))?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    let pins = PinDir::new(sb.pins.clone());
    let mut most = 0;
    for r in 1..ROUNDS {
        replace_and_wait(&sb, &dir, &round(r), r + 1)?;
        // The round's policy is in force once its namespaces have ids.
        let first = format!("r{r}-ns0");
        let deadline = Instant::now() + Duration::from_secs(30);
        while scope_of_namespace(&pins, &first).is_none() {
            anyhow::ensure!(Instant::now() < deadline, "round {r} never applied");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ids = scope_names(&pins);
        most = most.max(ids.len());
        assert_eq!(
            ids.len(),
            NAMESPACES,
            "round {r}: ids of gone namespaces kept"
        );
        assert!(
            ids.values().all(|ns| ns.starts_with(&format!("r{r}-"))),
            "round {r}: {:?}",
            ids.values().find(|ns| !ns.starts_with(&format!("r{r}-")))
        );
        // Ids stay dense: freed ones are reused after their quarantine
        // (the live round's, and at most three rounds' waiting).
        let max = ids.keys().max().copied().unwrap_or(0);
        assert!(max <= 4 * NAMESPACES as u32, "round {r}: ids up to {max}");
    }
    eprintln!("{ROUNDS} rounds of {NAMESPACES} namespaces: at most {most} ids held");
    Ok(())
}

/// A pod watch event: pod `i` (its own UID and address) in `namespace`.
fn pod_event(kind: &str, i: usize, namespace: &str) -> serde_json::Value {
    json!({
        "type": kind,
        "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace, "uid": uid(9, i)},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 200 + i / 65536, i / 256 % 256, i % 256)}
        }
    })
}

/// Starts the agent on the Kubernetes API `kubeconfig` names, until the
/// namespace "small" has its scope id.
fn start_with_kubeconfig(mut sb: Sandbox, kubeconfig: &Path) -> Result<Sandbox> {
    sb.start_agent_with_env(
        &["--kubernetes"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )?;
    let pins = PinDir::new(sb.pins.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while scope_of_namespace(&pins, "small").is_none() {
        anyhow::ensure!(Instant::now() < deadline, "small never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(sb)
}

/// Waits for the agent's warning that the scope-id table is full.
fn wait_table_full_warning(sb: Sandbox) -> Result<Sandbox> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let warning = format!(
        "more than {} namespaces need a scope id at once",
        maps::SCOPE_IDS_CAPACITY
    );
    while !sb.agent_log().contains(&warning) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "never warned:\n{}",
            tail(&sb.agent_log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(sb)
}

/// The scope id table full: a cluster whose namespaces need more ids at
/// once than it holds (16,385 namespaces with a pod each, through the
/// Kubernetes API: a policy directory holds at most 10,000 documents).
/// Pod changes apply one by one as they come, so the namespaces get ids
/// until the table is full; the one that finds it full waits, with a
/// warning naming the capacity, while its change (and every later one)
/// still applies. The ids held never exceed the table, the namespaces
/// that had one keep it, and once ids are freed a new namespace gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_finding_the_scope_id_table_full_waits_and_every_change_still_applies(
) -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let sb = Sandbox::new("scope-ids-full")?;
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    fake.push(PODS, vec![pod_event("ADDED", 0, "small")]);
    let sb = tokio::task::spawn_blocking(move || start_with_kubeconfig(sb, &kubeconfig)).await??;
    let pins = PinDir::new(sb.pins.clone());
    let small = scope_of_namespace(&pins, "small").context("small has an id")?;
    // (The fake API's fixtures hold namespaces with rules of their own.)
    let before = scope_names(&pins);

    // One namespace more than there are ids, each with a pod (each needs
    // an id under namespace-scoped learning, the default).
    let big = maps::SCOPE_IDS_CAPACITY as usize + 1 - before.len();
    fake.push(
        PODS,
        (1..=big)
            .map(|i| pod_event("ADDED", i, &format!("big-{i}")))
            .collect(),
    );
    let sb = tokio::task::spawn_blocking(move || wait_table_full_warning(sb)).await??;
    let log = sb.agent_log();
    assert!(
        !log.contains("stays active"),
        "a full id table refused a change:\n{}",
        tail(&log)
    );
    let ids = scope_names(&pins);
    assert!(
        ids.len() > before.len() + big / 2,
        "the changes applied: {} ids held, {} before",
        ids.len(),
        before.len()
    );
    assert_eq!(ids.get(&small).map(String::as_str), Some("small"));
    assert!(
        ids.len() <= maps::SCOPE_IDS_CAPACITY as usize,
        "{} ids held, the table holds {}",
        ids.len(),
        maps::SCOPE_IDS_CAPACITY
    );

    // The big namespaces go, a new one comes: it applies.
    let mut events: Vec<_> = (1..=big)
        .map(|i| pod_event("DELETED", i, &format!("big-{i}")))
        .collect();
    events.push(pod_event("ADDED", big + 1, "next"));
    fake.push(PODS, events);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while scope_of_namespace(&pins, "next").is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the fitting policy never applied:\n{}",
                tail(&sb.agent_log())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(sb);
        Ok(())
    })
    .await??;
    Ok(())
}

/// The learned state of scopes, as the datapath keeps it.
struct LearnState {
    learned: BpfHashMap<MapData, LearnedKey, LearnedEntry>,
    counts: BpfHashMap<MapData, u32, u32>,
    pending: BpfHashMap<MapData, u64, LearnWatch>,
}

impl LearnState {
    fn open(sb: &Sandbox) -> Result<LearnState> {
        Ok(LearnState {
            learned: BpfHashMap::try_from(Map::LruHashMap(open_map(sb, maps::LEARNED)))?,
            counts: BpfHashMap::try_from(Map::HashMap(open_map(sb, maps::LEARN_SCOPES)))?,
            pending: BpfHashMap::try_from(Map::LruHashMap(open_map(sb, maps::LEARN_PENDING)))?,
        })
    }

    /// Five learned entries of `scope`, their count and their watches, as
    /// the datapath leaves them.
    fn plant(&mut self, scope: u32, salt: u16) -> Result<()> {
        for i in 0..5u16 {
            let key = LearnedKey {
                scope,
                port: 3306 + i + salt,
                _pad: 0,
                addr: std::net::Ipv4Addr::new(192, 0, 2, 1)
                    .to_ipv6_mapped()
                    .octets(),
            };
            // Seen just now: the agent's ttl expiry leaves it alone.
            let now = classifier_user::learned::boot_ns_now()?;
            let entry = LearnedEntry {
                first_seen_ns: now,
                last_seen_ns: now,
                observations: 3,
                _pad: 0,
            };
            self.learned.insert(key, entry, 0)?;
            self.pending.insert(
                u64::from(scope) << 32 | u64::from(i + salt),
                LearnWatch { key },
                0,
            )?;
        }
        self.counts.insert(scope, 5, 0)?;
        Ok(())
    }

    /// What is left of `scope`: learned entries, its count, watches.
    fn left(&self, scope: u32) -> (usize, Option<u32>, usize) {
        (
            self.learned
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.scope == scope)
                .count(),
            self.counts.get(&scope, 0).ok(),
            self.pending
                .iter()
                .filter_map(|e| e.ok())
                .filter(|(_, w)| w.key.scope == scope)
                .count(),
        )
    }
}

/// A reused id inherits nothing: learned entries, the scope's entry count
/// and pending watches left under an id (before it was freed, and after:
/// a watch of an old socket firing late) are gone before a new namespace
/// gets that id.
#[test]
fn a_reused_scope_id_inherits_nothing() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("scope-reuse")?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    let keep = pod_doc(&uid(0, 1), "keep", "k");
    fs::write(
        dir.join("all.yaml"),
        pod_doc(&uid(0, 0), "old", "o") + &keep,
    )?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    let pins = PinDir::new(sb.pins.clone());
    let old = scope_of_namespace(&pins, "old").context("old has an id")?;

    let mut state = LearnState::open(&sb)?;
    // What "old" learned while it existed.
    state.plant(old, 0)?;
    // "old" goes: its id is freed and its learned state purged.
    replace_and_wait(&sb, &dir, &keep, 2)?;
    assert_eq!(scope_of_namespace(&pins, "old"), None);
    assert_eq!(state.left(old), (0, None, 0));
    // A watch of one of its sockets fires late and adds entries again.
    state.plant(old, 100)?;
    // Two more switches end the id's quarantine; then a new namespace
    // gets it (the lowest free id) and none of that state.
    let extra = pod_doc(&uid(0, 2), "keep", "k2");
    replace_and_wait(&sb, &dir, &(keep.clone() + &extra), 3)?;
    replace_and_wait(&sb, &dir, &keep, 4)?;
    assert_eq!(state.left(old).0, 5, "not purged before reuse");
    replace_and_wait(&sb, &dir, &(keep + &pod_doc(&uid(0, 3), "new", "n")), 5)?;
    let new = scope_of_namespace(&pins, "new").context("new has an id")?;
    assert_eq!(new, old, "the freed id is reused");
    assert_eq!(state.left(new), (0, None, 0));
    Ok(())
}

/// The first pod of a namespace the policy in force does not know yet,
/// seen by the Pod watch before the debounced recompile, is never
/// registered under the node scope (it would get the node-wide rules and
/// learn into the node's table): it stays "namespace unknown" (no
/// verdict) until the policy with it gives it its own scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_namespaces_first_pod_never_gets_the_node_scope() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let paths: Vec<&str> = ALL.iter().map(|(path, _)| *path).collect();
    let fake = FakeApi::start(&paths).await;
    let mut sb = Sandbox::new("first-pod")?;
    let qos = sb.cgroup.join("kubepods.slice/kubepods-burstable.slice");
    fs::create_dir_all(&qos)?;
    let kubeconfig = sb.write_file("kubeconfig", &fake.kubeconfig());
    let uid = "f1257000-0000-4000-8000-000000000001";
    let pod = qos.join(format!(
        "kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    let sb = tokio::task::spawn_blocking(move || -> Result<(Sandbox, u64)> {
        sb.start_agent_with_env(
            &["--kubernetes"],
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        )?;
        sb.wait_for_log("source=\"kubernetes (", 1, Duration::from_secs(20))?;
        sb.wait_for_log("watching pod cgroups", 1, Duration::from_secs(20))?;
        // The kubelet creates the pod's cgroup; its Pod is not known yet.
        fs::create_dir(&pod)?;
        let id = fs::metadata(&pod)?.ino();
        sb.wait_for_log("its Pod is not known yet", 1, Duration::from_secs(20))?;
        Ok((sb, id))
    })
    .await??;
    let (sb, cgroup_id) = sb;
    fake.push(
        PODS,
        vec![json!({
            "type": "ADDED",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "first", "namespace": "brand-new", "uid": uid},
                "status": {"phase": "Running", "podIP": "10.244.9.9"}
            }
        })],
    );
    tokio::task::spawn_blocking(move || -> Result<()> {
        let reader = ScopeReader::open(&PinDir::new(sb.pins.clone()))?;
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let last = loop {
            let entry = reader.get(cgroup_id)?;
            if let Some(v) = entry {
                seen.insert(v);
                if v & 0xffff != 0 {
                    break v;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the pod never got its scope: seen {seen:?}\n{}",
                    sb.agent_log()
                );
            }
            std::thread::yield_now();
        };
        let scope = scope_of_namespace(&PinDir::new(sb.pins.clone()), "brand-new")
            .context("brand-new has an id")?;
        assert_eq!(last & 0xffff, scope);
        // Every value the pod's cgroup ever had: its own scope, or no
        // entry at all (then its pod root's "namespace unknown" marker
        // applies). Never 0, the node scope.
        assert!(
            seen.iter()
                .all(|v| v & 0xffff == scope && v & SCOPE_FLAG_POD_UNKNOWN == 0),
            "seen {seen:?}, scope {scope}"
        );
        Ok(())
    })
    .await??;
    Ok(())
}

//! Learning's scopes on a real kernel: who may learn at all, each scope's
//! quota, what the LRU may evict across scopes, and the agent's recount of
//! each scope's entries. Pods are kubelet-style cgroups below the sandbox's
//! with Pod documents in the policy directory; the tests read and write the
//! agent's pinned learning maps through aya (as the kernel would).

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use classifier_common::{maps, LearnConfig, LearnedEntry, LearnedKey};
use classifier_user::{
    datapath::PinDir,
    learned::{address_key, boot_ns_now, scope_of_namespace},
};
use tests::{privileged, Sandbox};

use crate::learning::{counter, pod, talk, talk_server, TEAM_A_POD, TEAM_B_POD};

type Learned = BpfHashMap<MapData, LearnedKey, LearnedEntry>;
type Counts = BpfHashMap<MapData, u32, u32>;

fn open_map(sb: &Sandbox, name: &str) -> MapData {
    MapData::from_pin(PinDir::new(sb.pins.clone()).map(name))
        .unwrap_or_else(|e| panic!("opening pinned {name}: {e}"))
}

fn learned_map(sb: &Sandbox) -> Result<Learned> {
    Ok(BpfHashMap::try_from(Map::LruHashMap(open_map(
        sb,
        maps::LEARNED,
    )))?)
}

fn counts_map(sb: &Sandbox) -> Result<Counts> {
    Ok(BpfHashMap::try_from(Map::HashMap(open_map(
        sb,
        maps::LEARN_SCOPES,
    )))?)
}

/// The settings the agent wrote (its quota for this node included).
fn learn_config(sb: &Sandbox) -> Result<LearnConfig> {
    let config: Array<MapData, LearnConfig> =
        Array::try_from(Map::Array(open_map(sb, maps::LEARN_CONFIG)))?;
    Ok(config.get(&0, 0)?)
}

fn key(scope: u32, addr: Ipv4Addr, port: u16) -> LearnedKey {
    LearnedKey {
        scope,
        port,
        _pad: 0,
        addr: address_key(addr.into()),
    }
}

/// A destination as a server-first observation seen just now would leave
/// it (the agent's ttl expiry leaves it alone).
fn entry(observations: u32) -> Result<LearnedEntry> {
    let now = boot_ns_now()?;
    Ok(LearnedEntry {
        first_seen_ns: now,
        last_seen_ns: now,
        observations,
        _pad: 0,
    })
}

/// The `n`th planted destination of a scope: 198.18.x.y, port 1000 + n.
fn planted(scope: u32, n: u32) -> LearnedKey {
    let [_, _, hi, lo] = n.to_be_bytes();
    key(
        scope,
        Ipv4Addr::new(198, 18, hi, lo),
        1000 + (n % 50_000) as u16,
    )
}

fn scope_entries(learned: &Learned, scope: u32) -> usize {
    learned
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.scope == scope)
        .count()
}

pub(crate) fn wait_until(
    what: &str,
    sb: &Sandbox,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok()? {
        if Instant::now() > deadline {
            bail!("{what}: not within 20 s\nagent log:\n{}", sb.agent_log());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A sandbox with one kubelet-style pod cgroup in each of team-a and
/// team-b, their Pods in the policy directory.
fn two_teams(name: &str) -> Result<(Sandbox, PathBuf, PathBuf, PathBuf)> {
    let sb = Sandbox::new(name)?;
    let team_a = sb
        .cgroup
        .join(format!("kubepods/burstable/pod{TEAM_A_POD}/c1"));
    let team_b = sb
        .cgroup
        .join(format!("kubepods/burstable/pod{TEAM_B_POD}/c2"));
    fs::create_dir_all(&team_a)?;
    fs::create_dir_all(&team_b)?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    fs::write(
        dir.join("pods.yaml"),
        format!(
            "{}---\n{}",
            pod(TEAM_A_POD, "team-a", "a"),
            pod(TEAM_B_POD, "team-b", "b")
        ),
    )?;
    Ok((sb, dir, team_a, team_b))
}

fn talk_in(sb: &Sandbox, cgroup: &Path, addr: &str) -> Result<()> {
    let out = sb
        .probe_in_cgroup(&["talk", addr, "server-first"], cgroup)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );
    Ok(())
}

fn scope_of(sb: &Sandbox, namespace: &str) -> Result<u32> {
    scope_of_namespace(&PinDir::new(sb.pins.clone()), namespace)
        .with_context(|| format!("{namespace} has no scope id"))
}

/// Without pod knowledge every process is "outside pods", and they would
/// all share the node scope: one could plant an entry that makes the
/// others' connections skip detection, or erase theirs. So by default a
/// process in no known pod cgroup neither learns nor reads the table; the
/// operator of a single-tenant host opts in with `--learn-outside-pods`.
#[test]
fn a_process_in_no_known_pod_neither_learns_nor_reads_unless_allowed() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-outside")?;
    sb.start_agent(&[])?;
    sb.wait_for_generation(1)?;
    // What another process outside pods would have planted in the node
    // scope (0): 127.0.0.1:2240 is server-first.
    let mut learned = learned_map(&sb)?;
    let planted = key(0, Ipv4Addr::LOCALHOST, 2240);
    learned.insert(planted, entry(1)?, 0)?;

    // Two server-first exchanges to the planted destination, one to a new
    // one: neither read nor learned.
    let server = talk_server(&sb, "127.0.0.1:2240", 2, true)?;
    let fresh = talk_server(&sb, "127.0.0.1:2241", 1, true)?;
    talk(&sb, "127.0.0.1:2240", true)?;
    talk(&sb, "127.0.0.1:2240", true)?;
    talk(&sb, "127.0.0.1:2241", true)?;
    for v in server.results()?.iter().chain(&fresh.results()?) {
        assert_eq!(v["protocol"], "unknown", "the node scope is not read: {v}");
    }
    assert_eq!(counter(&sb, "learn_watched"), 0, "nothing watched");
    let entries: Vec<(LearnedKey, LearnedEntry)> = learned.iter().filter_map(|e| e.ok()).collect();
    assert_eq!(entries.len(), 1, "nothing learned: {entries:?}");
    assert_eq!(entries[0].0, planted);
    assert_eq!(entries[0].1.observations, 1, "not even counted again");
    let stats = sb.stats()?;
    assert_eq!(stats["learning"]["outside_pods"], false, "{stats}");
    // explain (a client outside pods) agrees with the kernel.
    let out = tests::run(
        std::process::Command::new(tests::classifier_bin())
            .args(["explain", "127.0.0.1:2240", "--json", "--pin-dir"])
            .arg(&sb.pins),
    )?;
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_ne!(explained["source"], "learned", "{explained}");

    // Opted in: the same process reads the planted entry and learns.
    sb.stop_agent();
    sb.start_agent(&["--learn-outside-pods"])?;
    let server = talk_server(&sb, "127.0.0.1:2240", 1, true)?;
    let fresh = talk_server(&sb, "127.0.0.1:2241", 1, true)?;
    talk(&sb, "127.0.0.1:2240", true)?;
    talk(&sb, "127.0.0.1:2241", true)?;
    let v = &server.results()?[0];
    assert_eq!(v["source"], "learned", "{v}");
    fresh.results()?;
    wait_until("127.0.0.1:2241 learned in the node scope", &sb, || {
        Ok(learned.get(&key(0, Ipv4Addr::LOCALHOST, 2241), 0).is_ok())
    })?;
    assert_eq!(sb.stats()?["learning"]["outside_pods"], true);
    Ok(())
}

/// A scope at its quota records no new destination (`learn_scope_full`),
/// and another namespace still learns its own.
#[test]
fn a_scope_at_its_quota_learns_nothing_more_and_others_still_learn() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let (mut sb, dir, team_a, team_b) = two_teams("learn-quota")?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_generation(1)?;
    let (a, b) = (scope_of(&sb, "team-a")?, scope_of(&sb, "team-b")?);
    let quota = learn_config(&sb)?.scope_quota;
    ensure!(quota >= 64, "quota {quota}");

    // team-a has learned all but one of its quota already.
    let mut learned = learned_map(&sb)?;
    let mut counts = counts_map(&sb)?;
    for n in 0..quota - 1 {
        learned.insert(planted(a, n), entry(1)?, 0)?;
    }
    counts.insert(a, quota - 1, 0)?;
    // (The agent's recount agrees.)
    wait_until("team-a counted at its quota minus one", &sb, || {
        Ok(counts.get(&a, 0).ok() == Some(quota - 1))
    })?;

    let servers = [
        talk_server(&sb, "127.0.0.1:2242", 1, true)?,
        talk_server(&sb, "127.0.0.1:2243", 2, true)?,
    ];
    // The last entry of its quota...
    talk_in(&sb, &team_a, "127.0.0.1:2242")?;
    wait_until("team-a's last entry learned", &sb, || {
        Ok(learned.get(&key(a, Ipv4Addr::LOCALHOST, 2242), 0).is_ok())
    })?;
    // ...and then nothing more.
    talk_in(&sb, &team_a, "127.0.0.1:2243")?;
    wait_until("learn_scope_full counted", &sb, || {
        Ok(counter(&sb, "learn_scope_full") == 1)
    })?;
    assert!(
        learned.get(&key(a, Ipv4Addr::LOCALHOST, 2243), 0).is_err(),
        "team-a is at its quota: 2243 is not recorded"
    );
    assert_eq!(scope_entries(&learned, a), quota as usize);
    // team-b learns the very same destination.
    talk_in(&sb, &team_b, "127.0.0.1:2243")?;
    wait_until("team-b learned 2243", &sb, || {
        Ok(learned.get(&key(b, Ipv4Addr::LOCALHOST, 2243), 0).is_ok())
    })?;
    for s in servers {
        s.results()?;
    }
    assert_eq!(counter(&sb, "err_learn"), 0);
    Ok(())
}

/// The learned table is one kernel LRU hash shared by every scope, and the
/// per-scope quota is what keeps scopes from evicting each other: the
/// kernel LRU starts evicting once it holds `capacity - 128 x possible
/// CPUs` entries (each CPU keeps up to 128 free entries of its own), and
/// the agent's quota is a sixteenth of that. Entries inserted from every
/// CPU in turn (each CPU's free list in play, as under real load): 16
/// scopes at their quota lose nothing; a 17th scope at its quota pushes
/// other scopes' entries out. The test that each scope stays within its
/// quota is the one above.
#[test]
fn sixteen_scopes_at_their_quota_evict_nothing_and_a_seventeenth_does() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("learn-evict")?;
    sb.start_agent(&[])?;
    let quota = learn_config(&sb)?.scope_quota;
    let capacity = open_map(&sb, maps::LEARNED).info()?.max_entries();
    let cpus = aya::util::nr_cpus().map_err(|(p, e)| anyhow::anyhow!("{p}: {e}"))? as u32;
    assert_eq!(
        quota,
        classifier_user::learned::scope_quota(capacity, cpus),
        "the agent's quota for {cpus} CPUs"
    );
    // The table alone from here (no expiry, no recount).
    sb.kill_agent();

    let fill = |scopes: std::ops::Range<u32>| -> Result<()> {
        let online = thread::available_parallelism()?.get();
        let workers: Vec<_> = (0..online)
            .map(|cpu| {
                let mut learned = learned_map(&sb)?;
                let scopes = scopes.clone();
                Ok(thread::spawn(move || -> Result<()> {
                    tests::sys::pin_to_cpu(cpu)?;
                    let entry = entry(1)?;
                    for scope in scopes {
                        for n in (cpu as u32..quota).step_by(online) {
                            learned.insert(planted(scope, n), entry, 0)?;
                        }
                    }
                    Ok(())
                }))
            })
            .collect::<Result<_>>()?;
        for w in workers {
            w.join().expect("filler panicked")?;
        }
        Ok(())
    };
    let learned = learned_map(&sb)?;
    fill(1..17)?;
    for scope in 1..17 {
        assert_eq!(
            scope_entries(&learned, scope),
            quota as usize,
            "scope {scope} lost entries with 16 scopes at their quota of {quota} \
             ({capacity} entries, {cpus} CPUs)"
        );
    }
    fill(17..18)?;
    let held: usize = (1..17).map(|s| scope_entries(&learned, s)).sum();
    assert!(
        held < 16 * quota as usize,
        "17 scopes at their quota: the LRU evicts others' entries ({held} of {} left)",
        16 * quota
    );
    Ok(())
}

/// The kernel's per-scope counts are not atomic, and a count left wrong
/// (too high: the scope could never learn again; a scope without entries:
/// a count kept forever) is put right by the agent, from the table, also
/// after a restart.
#[test]
fn a_restarted_agent_recounts_each_scopes_learned_entries() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let (mut sb, dir, team_a, _) = two_teams("learn-recount")?;
    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    sb.wait_for_generation(1)?;
    let a = scope_of(&sb, "team-a")?;
    let quota = learn_config(&sb)?.scope_quota;
    sb.kill_agent();

    let mut learned = learned_map(&sb)?;
    let mut counts = counts_map(&sb)?;
    for n in 0..5 {
        learned.insert(planted(a, n), entry(1)?, 0)?;
    }
    // As if team-a were full, and a scope without entries had a count.
    counts.insert(a, quota, 0)?;
    const EMPTY_SCOPE: u32 = 4000;
    counts.insert(EMPTY_SCOPE, 9, 0)?;

    sb.start_agent(&["--policy", dir.to_str().unwrap()])?;
    wait_until(
        "team-a recounted to 5, the empty scope's count removed",
        &sb,
        || Ok(counts.get(&a, 0).ok() == Some(5) && counts.get(&EMPTY_SCOPE, 0).is_err()),
    )?;
    // So team-a learns again.
    let server = talk_server(&sb, "127.0.0.1:2244", 1, true)?;
    talk_in(&sb, &team_a, "127.0.0.1:2244")?;
    server.results()?;
    wait_until("team-a learned 2244", &sb, || {
        Ok(learned.get(&key(a, Ipv4Addr::LOCALHOST, 2244), 0).is_ok())
    })?;
    assert_eq!(counter(&sb, "learn_scope_full"), 0);
    Ok(())
}

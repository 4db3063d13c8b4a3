//! The churn soak: a year of a large, busy node compressed into minutes,
//! against a real agent in a [`Sandbox`]. `cargo xtask soak` runs the full
//! scale ([`Scale::full`]); the integration suite runs [`Scale::short`],
//! which still goes past the capacity of every table the churn fills.
//!
//! What churns, round after round (one round is one policy change):
//!
//! - pods: each round adds Pods in namespaces never seen before to the
//!   policy directory and removes those of the oldest live round, so a
//!   window of pods is live and the rest come and go; each pod also gets
//!   a kubelet-style cgroup, created and removed with it;
//! - rules: one namespace of each round has an EgressNetwork of its own
//!   (namespace-scoped rule keys come and go with it);
//! - network namespaces: a probe in the sandbox's cgroup creates network
//!   namespaces, makes classified connects in each (published verdicts,
//!   per-namespace counts), a refused connect to a port that changes
//!   every time (unclassified: learning's watch, port counts), and lets
//!   each namespace go.
//!
//! After a warm-up the kernel tables, the agent's memory and its applies
//! are measured; at the end the same, then a fresh network namespace asks
//! for more verdicts than its share. Checked:
//!
//! - every hash map holds at most its warm-up count plus [`MAP_SLACK`]
//!   entries (LRU maps may stay full: for those, each scope holds at most
//!   its quota);
//! - the agent's resident memory is within [`RSS_SLACK_MIB`] of the
//!   warm-up's;
//! - every policy apply succeeded;
//! - the fresh network namespace gets exactly its share of verdicts;
//! - learned entries hold their per-scope quota.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuHashMap};
use classifier_common::{
    maps, verdicts_per_netns, ConnKey, ConnVerdict, LearnWatch, LearnedEntry, LearnedKey,
    NamespaceName, RuleKeyV4, RuleKeyV6, RuleVerdict,
};
use classifier_user::datapath::PinDir;

use crate::{run, Sandbox};

/// Entries a hash map may hold at the end above its warm-up count: the
/// live window is the same size then, but a round's changes may be half
/// applied when the count is taken.
pub const MAP_SLACK: usize = 256;
/// Resident memory the agent may hold at the end above its warm-up's.
pub const RSS_SLACK_MIB: u64 = 24;
/// The port the churn's classified connects go to (opaque by the policy).
const PORT: u16 = 4222;

/// How much churns.
#[derive(Clone, Debug)]
pub struct Scale {
    pub name: &'static str,
    /// Policy changes (rounds).
    pub rounds: usize,
    /// Rounds before the warm-up measurement.
    pub warmup_rounds: usize,
    /// New namespaces per round.
    pub namespaces_per_round: usize,
    /// New pods per round.
    pub pods_per_round: usize,
    /// Rounds a round's pods stay live.
    pub live_rounds: usize,
    /// Network namespaces created (and destroyed) per round.
    pub netns_per_round: usize,
    /// Classified connects in each of them.
    pub connects_per_netns: usize,
}

impl Scale {
    /// A year on a large node: 10,000 policy changes, 50,000 namespace
    /// names, 500,000 pods, 50,000 network namespaces.
    pub fn full() -> Self {
        Scale {
            name: "full",
            rounds: 10_000,
            warmup_rounds: 200,
            namespaces_per_round: 5,
            pods_per_round: 50,
            live_rounds: 20,
            netns_per_round: 5,
            connects_per_netns: 2,
        }
    }

    /// Under three minutes, past every capacity the churn fills: 20,000
    /// namespace names and pod cgroups (16,384 scope ids and scope
    /// entries), 20,000 network namespaces (16,384 counts), 80,000
    /// verdicts (65,536), 20,000 refused connects on 5,000 ports (16,384
    /// watches, 4,096 port counts).
    pub fn short() -> Self {
        Scale {
            name: "short",
            rounds: 1_000,
            warmup_rounds: 50,
            namespaces_per_round: 20,
            pods_per_round: 20,
            live_rounds: 10,
            netns_per_round: 20,
            connects_per_netns: 4,
        }
    }

    fn totals(&self) -> String {
        format!(
            "{} policy changes, {} namespace names, {} pods, {} network namespaces, {} classified connects",
            self.rounds,
            self.rounds * self.namespaces_per_round,
            self.rounds * self.pods_per_round,
            self.rounds * self.netns_per_round,
            self.rounds * self.netns_per_round * self.connects_per_netns,
        )
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub maps: BTreeMap<&'static str, usize>,
    pub rss_kib: u64,
    pub applies: usize,
    pub refused: usize,
    /// Largest entry count of one scope in `CLS_LEARNED`.
    pub learned_max_per_scope: usize,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub scale: Scale,
    pub warmup: Sample,
    pub last: Sample,
    pub elapsed: Duration,
    /// (verdicts counted for it, entries in the table) of the fresh
    /// network namespace, and what it asked for.
    pub fresh_share: (u64, usize),
    pub fresh_asked: usize,
    pub failures: Vec<String>,
}

impl Report {
    /// The figures, as a table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "soak ({}): {}", self.scale.name, self.scale.totals());
        let _ = writeln!(out, "elapsed {:.0} s", self.elapsed.as_secs_f64());
        let _ = writeln!(out, "{:<22} {:>10} {:>10}", "table", "warm-up", "end");
        for (name, end) in &self.last.maps {
            let warm = self.warmup.maps.get(name).copied().unwrap_or(0);
            let _ = writeln!(out, "{name:<22} {warm:>10} {end:>10}");
        }
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10}",
            "agent RSS (KiB)", self.warmup.rss_kib, self.last.rss_kib
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10}",
            "applies (refused)",
            format!("{} ({})", self.warmup.applies, self.warmup.refused),
            format!("{} ({})", self.last.applies, self.last.refused)
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10}",
            "learned, max/scope",
            self.warmup.learned_max_per_scope,
            self.last.learned_max_per_scope
        );
        let _ = writeln!(
            out,
            "fresh netns: asked {}, counted {}, table entries {}, share {}",
            self.fresh_asked,
            self.fresh_share.0,
            self.fresh_share.1,
            verdicts_per_netns(maps::VERDICTS_CAPACITY)
        );
        if self.failures.is_empty() {
            out.push_str("all checks passed\n");
        } else {
            for f in &self.failures {
                let _ = writeln!(out, "FAILED: {f}");
            }
        }
        out
    }
}

const RULES: &str = "---\napiVersion: classifier.dev/v1alpha1\nkind: ClassifierPolicy\nspec:\n  rules:\n    - networks: [\"127.0.0.0/8\"]\n      ports: \"4222\"\n      protocol: opaque\n";

fn uid(round: usize, i: usize) -> String {
    format!(
        "50a4c000-{:04x}-4000-8000-{:012x}",
        round >> 16,
        ((round & 0xffff) << 20) | i
    )
}

/// The Pods (and one EgressNetwork) of round `r`.
fn round_docs(scale: &Scale, r: usize) -> String {
    let mut out = String::new();
    for i in 0..scale.pods_per_round {
        let ns = format!("s{r}-n{}", i % scale.namespaces_per_round);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: {ns}\n  uid: {}\nstatus:\n  phase: Running\n  podIP: 10.{}.{}.{}\n",
            uid(r, i),
            64 + (r >> 16) % 64,
            (r >> 8) & 0xff,
            (r & 0xff) ^ (i & 0xff),
        );
    }
    let _ = write!(
        out,
        "---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata:\n  name: own\n  namespace: s{r}-n0\n  annotations: {{config.linkerd.io/opaque-ports: \"{}\"}}\nspec:\n  trafficPolicy: Allow\n  networks: [{{cidr: 198.18.{}.{}/32}}]\n",
        5000 + r % 1000,
        (r >> 8) & 0xff,
        r & 0xff
    );
    out
}

fn pod_cgroup(qos: &Path, round: usize, i: usize) -> PathBuf {
    qos.join(format!(
        "kubepods-burstable-pod{}.slice",
        uid(round, i).replace('-', "_")
    ))
}

/// Count of entries of the pinned hash-like map `name`.
fn count<K: aya::Pod, V: aya::Pod>(pins: &PinDir, name: &str, lru: bool) -> Result<usize> {
    let data = MapData::from_pin(pins.map(name)).with_context(|| format!("opening {name}"))?;
    let map = if lru {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    Ok(HashMap::<_, K, V>::try_from(map)?.keys().count())
}

fn count_trie<K: aya::Pod>(pins: &PinDir, name: &str) -> Result<usize> {
    let data = MapData::from_pin(pins.map(name)).with_context(|| format!("opening {name}"))?;
    Ok(LpmTrie::<_, K, RuleVerdict>::try_from(Map::LpmTrie(data))?
        .keys()
        .count())
}

fn map_counts(pins: &PinDir) -> Result<BTreeMap<&'static str, usize>> {
    let mut out = BTreeMap::new();
    out.insert(
        maps::VERDICTS,
        count::<ConnKey, ConnVerdict>(pins, maps::VERDICTS, false)?,
    );
    out.insert(
        maps::NETNS_VERDICTS,
        count::<u64, u64>(pins, maps::NETNS_VERDICTS, false)?,
    );
    out.insert(maps::SCOPES, count::<u64, u32>(pins, maps::SCOPES, false)?);
    out.insert(
        maps::SCOPE_IDS,
        count::<NamespaceName, u32>(pins, maps::SCOPE_IDS, false)?,
    );
    out.insert(
        maps::LEARN_SCOPES,
        count::<u32, u32>(pins, maps::LEARN_SCOPES, false)?,
    );
    out.insert(
        maps::EXCLUDED_UIDS,
        count::<u64, u8>(pins, maps::EXCLUDED_UIDS, false)?,
    );
    out.insert(
        maps::LEARNED,
        count::<LearnedKey, LearnedEntry>(pins, maps::LEARNED, true)?,
    );
    out.insert(
        maps::LEARN_PENDING,
        count::<u64, LearnWatch>(pins, maps::LEARN_PENDING, true)?,
    );
    let data = MapData::from_pin(pins.map(maps::PORT_COUNTS))?;
    out.insert(
        maps::PORT_COUNTS,
        PerCpuHashMap::<_, u32, u64>::try_from(Map::PerCpuHashMap(data))?
            .keys()
            .count(),
    );
    out.insert(
        maps::RULES_V4,
        count_trie::<RuleKeyV4>(pins, maps::RULES_V4)?,
    );
    out.insert(
        maps::RULES_V6,
        count_trie::<RuleKeyV6>(pins, maps::RULES_V6)?,
    );
    Ok(out)
}

/// LRU maps: they may stay full; fairness is checked instead.
const LRU_MAPS: [&str; 2] = [maps::LEARNED, maps::LEARN_PENDING];

fn learned_max_per_scope(pins: &PinDir) -> Result<usize> {
    let data = MapData::from_pin(pins.map(maps::LEARNED))?;
    let map = HashMap::<_, LearnedKey, LearnedEntry>::try_from(Map::LruHashMap(data))?;
    let mut per: BTreeMap<u32, usize> = BTreeMap::new();
    for key in map.keys().filter_map(|k| k.ok()) {
        *per.entry(key.scope).or_default() += 1;
    }
    Ok(per.values().copied().max().unwrap_or(0))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")
}

fn sample(sb: &Sandbox) -> Result<Sample> {
    let pins = PinDir::new(sb.pins.clone());
    let log = sb.agent_log();
    Ok(Sample {
        maps: map_counts(&pins)?,
        rss_kib: rss_kib(sb.agent_pid().context("agent running")?)?,
        applies: log.matches("policy applied").count(),
        refused: log.matches("stays active").count(),
        learned_max_per_scope: learned_max_per_scope(&pins)?,
    })
}

/// Waits until the agent has applied the policy directory as it is now
/// (its newest round's namespace has a scope id) and registered the live
/// pods' cgroups.
fn settle(sb: &Sandbox, newest_round: usize) -> Result<()> {
    let pins = PinDir::new(sb.pins.clone());
    let ns = format!("s{newest_round}-n0");
    let deadline = Instant::now() + Duration::from_secs(120);
    while classifier_user::learned::scope_of_namespace(&pins, &ns).is_none() {
        if Instant::now() > deadline {
            let log = sb.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "round {newest_round}'s policy never applied; the agent's log ends:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs the soak; `progress` gets a line now and then.
pub fn run_soak(scale: &Scale, mut progress: impl FnMut(&str)) -> Result<Report> {
    let started = Instant::now();
    let mut sb = Sandbox::new(&format!("soak-{}", scale.name))?;
    let qos = sb.cgroup.join("kubepods.slice/kubepods-burstable.slice");
    fs::create_dir_all(&qos)?;
    let dir = sb.dir.join("policy");
    fs::create_dir(&dir)?;
    fs::write(dir.join("rules.yaml"), RULES)?;
    sb.start_agent(&[
        "--policy",
        dir.to_str().unwrap(),
        "--watch-interval",
        "0.05",
    ])?;

    let mut warmup = None;
    let mut connects = 0usize;
    let mut live = std::collections::VecDeque::new();
    for r in 0..scale.rounds {
        connects += churn_round(&sb, scale, &qos, &dir, &mut live, r)?;
        if r + 1 == scale.warmup_rounds {
            settle(&sb, r)?;
            let s = sample(&sb)?;
            progress(&format!("warm-up after {} rounds: {:?}", r + 1, s));
            warmup = Some(s);
        }
        if (r + 1).is_multiple_of(500) {
            progress(&format!(
                "round {} of {} ({connects} classified connects, {:.0} s)",
                r + 1,
                scale.rounds,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    settle(&sb, scale.rounds - 1)?;
    // The last round's counts drain (closed sockets' verdicts go as
    // their sockets do).
    let last = sample(&sb)?;
    let warmup = warmup.context("no warm-up (fewer rounds than warm-up rounds)")?;
    let (fresh_share, fresh_asked) = fresh_netns_share(&sb)?;
    let mut failures = map_failures(&warmup, &last);
    failures.extend(bound_failures(&warmup, &last));
    let share = u64::from(verdicts_per_netns(maps::VERDICTS_CAPACITY));
    if fresh_share.0 != share || fresh_share.1 as u64 != share {
        failures.push(format!(
            "a network namespace created after the churn asked for {fresh_asked} verdicts and got {} counted, {} in the table; its share is {share}",
            fresh_share.0, fresh_share.1
        ));
    }
    Ok(Report {
        scale: scale.clone(),
        warmup,
        last,
        elapsed: started.elapsed(),
        fresh_share,
        fresh_asked,
        failures,
    })
}

/// One round of churn: this round's pods and cgroups arrive, the oldest
/// live round's go, and (in batches) network namespaces come and go.
/// Returns the classified connects it made.
fn churn_round(
    sb: &Sandbox,
    scale: &Scale,
    qos: &Path,
    dir: &Path,
    live: &mut std::collections::VecDeque<String>,
    r: usize,
) -> Result<usize> {
    // This round's pods and cgroups arrive, the oldest live round's go.
    // One file replaced atomically (as a ConfigMap update is): a
    // directory read while files come and go could miss one.
    live.push_back(round_docs(scale, r));
    if live.len() > scale.live_rounds {
        live.pop_front();
    }
    let tmp = sb.dir.join("pods.yaml.tmp");
    fs::write(&tmp, live.iter().map(String::as_str).collect::<String>())?;
    fs::rename(&tmp, dir.join("pods.yaml"))?;
    for i in 0..scale.pods_per_round {
        fs::create_dir(pod_cgroup(qos, r, i))?;
    }
    if let Some(old) = r.checked_sub(scale.live_rounds) {
        for i in 0..scale.pods_per_round {
            fs::remove_dir(pod_cgroup(qos, old, i))?;
        }
    }
    // Network namespaces, in batches (one probe process each).
    if (r + 1).is_multiple_of(50) || r + 1 == scale.rounds {
        let batch = 50.min(r + 1 - (r / 50) * 50).max(1) * scale.netns_per_round;
        let out = run(&mut sb.probe(
            &[
                "netns-churn",
                &batch.to_string(),
                &PORT.to_string(),
                &scale.connects_per_netns.to_string(),
                &(5000 + (r * 7) % 5000).to_string(),
            ],
            None,
        ))?;
        anyhow::ensure!(String::from_utf8_lossy(&out.stdout).starts_with("done"));
        return Ok(batch * scale.connects_per_netns);
    }
    Ok(0)
}

/// Tables that grew past their warm-up size (LRU tables excepted; the port
/// counts are held to the agent's ageing bound instead).
fn map_failures(warmup: &Sample, last: &Sample) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, end) in &last.maps {
        let warm = warmup.maps.get(name).copied().unwrap_or(0);
        if LRU_MAPS.contains(name) {
            continue;
        }
        // Aged by the agent, not emptied: a port once connected to keeps
        // its count until the table passes its high-water mark, so it ends
        // anywhere below that (and new ports are still counted).
        if *name == maps::PORT_COUNTS {
            let bound = classifier_user::datapath::port_counts::high_water(
                maps::PORT_COUNTS_CAPACITY as usize,
            ) + MAP_SLACK;
            if *end > bound {
                failures.push(format!(
                    "{name} holds {end} entries, more than the agent's ageing bound {bound}"
                ));
            }
            continue;
        }
        if *end > warm + MAP_SLACK {
            failures.push(format!(
                "{name} holds {end} entries, more than its warm-up's {warm} + {MAP_SLACK}"
            ));
        }
    }
    failures
}

/// The learned quota, the agent's memory and refused applies, against
/// their bounds.
fn bound_failures(warmup: &Sample, last: &Sample) -> Vec<String> {
    let mut failures = Vec::new();
    // This node's quota, as the agent computes it from the table's size and
    // the possible CPUs (the LRU's per-CPU free lists come off the top).
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
    let quota =
        classifier_user::learned::scope_quota(classifier_common::maps::LEARNED_CAPACITY, cpus)
            as usize;
    if last.learned_max_per_scope > quota {
        failures.push(format!(
            "a scope holds {} learned entries, over its quota of {quota}",
            last.learned_max_per_scope
        ));
    }
    if last.rss_kib > warmup.rss_kib + RSS_SLACK_MIB * 1024 {
        failures.push(format!(
            "the agent's RSS grew from {} KiB to {} KiB, more than {RSS_SLACK_MIB} MiB",
            warmup.rss_kib, last.rss_kib
        ));
    }
    if last.refused > 0 {
        failures.push(format!("{} policy applies were refused", last.refused));
    }
    failures
}

/// A network namespace made after the churn holds more classified
/// connections than its share: it gets its share, and no more. Returns
/// ((its count, its entries in the verdict table), connections made).
fn fresh_netns_share(sb: &Sandbox) -> Result<((u64, usize), usize)> {
    let share = verdicts_per_netns(maps::VERDICTS_CAPACITY) as usize;
    let asked = share + share / 10;
    let mut child = sb
        .probe(
            &["netns-share", &asked.to_string(), &PORT.to_string()],
            None,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("probe netns-share")?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().context("probe netns-share said nothing")??;
    let cookie: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("probe netns-share: {line}"))?;
    let pins = PinDir::new(sb.pins.clone());
    let counted = {
        let data = MapData::from_pin(pins.map(maps::NETNS_VERDICTS))?;
        HashMap::<_, u64, u64>::try_from(Map::HashMap(data))?
            .get(&cookie, 0)
            .unwrap_or(0)
    };
    let entries = {
        let data = MapData::from_pin(pins.map(maps::VERDICTS))?;
        HashMap::<_, ConnKey, ConnVerdict>::try_from(Map::HashMap(data))?
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.netns_cookie == cookie)
            .count()
    };
    // Closing stdin ends it; its namespace goes with it.
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::io::stdout().flush();
    Ok(((counted, entries), asked))
}

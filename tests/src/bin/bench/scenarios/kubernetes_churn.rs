//! Scenario 6, continued: at the largest cluster size, what one change
//! costs, what a steady churn costs, and what a full resync costs, for
//! the incremental path (`classifier_policy::live` and in-place map
//! patches) next to the full recompile every change used to take.
//!
//! - `one_change_ms`: one Pod, Service or Server changed (in turn), from
//!   the watch event (the API object, converted as the watch does) to the
//!   kernel maps, no debounce; p99 over `ONE_CHANGES`.
//! - `churn_*`: `CHURN_RATE` object changes a second for `CHURN_SECS`
//!   (rollouts: a pod deleted and its replacement created, with a new
//!   name and address; annotation changes on pods and Services; Server
//!   protocol changes), produced on one thread as a watch would deliver
//!   them; the agent's work (conversion, compile, map writes) on another,
//!   taking whatever has arrived each time it is free. CPU is that
//!   thread's own (`/proc/thread-self/schedstat`) over wall time;
//!   visible latency is from an event's arrival to the map write that
//!   made it visible.
//! - `resync_s`: a restart: every object listed and converted from its
//!   JSON text, the policy compiled and written into slots whose contents
//!   are unknown (in full), and switched to. Until the switch the old
//!   policy is in force: no connect lacks its verdict meanwhile. Making
//!   the objects' JSON is the API server's work, timed apart
//!   (`resync_generate_s`).
//! - `peak_rss_mib`: the process's peak resident memory (`VmHWM`, reset
//!   through `/proc/self/clear_refs` first, after the heap the earlier
//!   scenarios freed is given back) over the resync, the changes and the
//!   churn: an upper bound of the agent's (it includes the bench's own
//!   generator). `resync_*_mib`: what the allocator held for the
//!   documents, at most during the resync, and for the live policy.
//!
//! The `before_*` figures take today's path for the same changes (a full
//! document compile, a full trie compile and a slot switch), fewer of them
//! (`BEFORE_CHANGES`, `BEFORE_CHURN_SECS`), with the agent's default
//! debounce (500 ms quiet, at most 5 s).

use std::{
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use classifier_user::{
    datapath::{PinDir, PolicyMaps},
    policy::{
        compile,
        live::{Change, LivePolicy},
    },
    sources::{compile_documents, document::DocumentKey, kinds, Options},
};
use serde_json::{json, Value};
use tests::{sys::CountingAlloc, Sandbox};

use super::kubernetes_scale::{
    cluster_objects, convert_object, mib, pod, read_objects, server, service, Read, NAMESPACES,
    SERVICES,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One watch event: an object's JSON text, as the API server sends it,
/// or a deletion.
pub(super) enum Event {
    Apply(&'static kinds::KubeKind, Vec<u8>),
    Delete(DocumentKey),
}

fn apply(kind: &'static kinds::KubeKind, object: &Value) -> Event {
    Event::Apply(
        kind,
        serde_json::to_vec(object).expect("JSON of a JSON value"),
    )
}

/// The `n`th change of a churn: rollouts, annotations, Servers.
pub(super) fn churn_events(n: u64, pods: u32) -> Vec<Event> {
    let pick = (n * 7919) as u32;
    match n % 20 {
        // A rollout step: pod j replaced by a new pod (new name, address).
        0..=11 => {
            let j = (n as u32 * 13) % pods;
            let old = pod(j);
            let mut new = old.clone();
            let name = format!("{}-r{n}", old["metadata"]["name"].as_str().unwrap_or(""));
            let ip = std::net::Ipv4Addr::from(0x0ac0_0000 + n as u32).to_string();
            new["metadata"]["name"] = json!(name);
            new["metadata"]["uid"] = json!(format!("r-{n}"));
            new["status"]["podIP"] = json!(ip);
            new["status"]["podIPs"] = json!([{ "ip": ip }]);
            let ns = old["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let old_name = old["metadata"]["name"].as_str().unwrap_or("").to_string();
            vec![
                Event::Delete(DocumentKey::new("Pod", Some(&ns), &old_name)),
                apply(&kinds::POD, &new),
            ]
        }
        12..=15 => vec![apply(&kinds::POD, &annotated_pod(pick % pods, n))],
        16..=18 => vec![apply(
            &kinds::SERVICE,
            &service(
                pick % SERVICES,
                if n.is_multiple_of(2) { "3307" } else { "3306" },
            ),
        )],
        _ => vec![apply(
            &kinds::SERVER,
            &server(
                pick % NAMESPACES,
                if n.is_multiple_of(2) {
                    "HTTP/2"
                } else {
                    "HTTP/1"
                },
            ),
        )],
    }
}

fn annotated_pod(i: u32, n: u64) -> Value {
    let mut v = pod(i);
    v["metadata"]["annotations"]["config.linkerd.io/opaque-ports"] =
        json!(if n.is_multiple_of(2) { "3307" } else { "3306" });
    v
}

/// The change `k` of the one-change series: a Pod, a Service or a Server.
fn one_change(k: u64, pods: u32) -> Event {
    let pick = (k * 7919) as u32;
    match k % 3 {
        0 => apply(&kinds::POD, &annotated_pod(pick % pods, k / 3)),
        1 => apply(
            &kinds::SERVICE,
            &service(
                pick % SERVICES,
                if k.is_multiple_of(2) { "3307" } else { "3306" },
            ),
        ),
        _ => apply(
            &kinds::SERVER,
            &server(
                pick % NAMESPACES,
                if k.is_multiple_of(2) {
                    "HTTP/2"
                } else {
                    "HTTP/1"
                },
            ),
        ),
    }
}

/// The agent's conversion of a watch event.
fn convert(event: Event) -> Result<Change> {
    Ok(match event {
        Event::Apply(kind, json) => Change::Apply(Arc::new(convert_object(kind, &json)?)),
        Event::Delete(key) => Change::Delete(key),
    })
}

/// Brings the maps to the live policy after an update.
fn write_maps(
    maps: &mut PolicyMaps,
    live: &LivePolicy,
    out: &classifier_user::policy::live::Outcome,
) -> Result<()> {
    if !out.full && maps.patch(&out.delta)?.is_some() {
        return Ok(());
    }
    maps.apply(Arc::new(live.compiled()))?;
    Ok(())
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// This thread's CPU time so far.
fn thread_cpu() -> Result<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("schedstat")?;
    Ok(Duration::from_nanos(ns))
}

fn reset_peak_rss() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")
}

/// Produces `rate` events a second for `secs` on another thread.
fn producer(rate: u64, secs: u64, pods: u32) -> mpsc::Receiver<(Instant, Event)> {
    let (tx, rx) = mpsc::sync_channel(100_000);
    thread::spawn(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            for event in churn_events(n, pods) {
                if tx.send((Instant::now(), event)).is_err() {
                    return;
                }
                n += 1;
            }
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    });
    rx
}

struct ChurnResult {
    events: usize,
    cpu_fraction: f64,
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    full_compiles: u64,
    updates: u64,
}

/// The incremental path under churn: every batch applied as it comes.
fn churn_live(
    maps: &mut PolicyMaps,
    live: &mut LivePolicy,
    pods: u32,
    rate: u64,
    secs: u64,
) -> Result<ChurnResult> {
    let rx = producer(rate, secs, pods);
    let fulls = live.full_compiles();
    let (wall, cpu) = (Instant::now(), thread_cpu()?);
    let mut latencies = Vec::new();
    let mut updates = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let sent: Vec<Instant> = batch.iter().map(|(t, _)| *t).collect();
        let changes = batch
            .into_iter()
            .map(|(_, e)| convert(e))
            .collect::<Result<Vec<_>>>()?;
        let out = live.apply(changes)?;
        write_maps(maps, live, &out)?;
        updates += 1;
        let now = Instant::now();
        latencies.extend(sent.iter().map(|t| (now - *t).as_secs_f64() * 1e3));
    }
    let cpu = thread_cpu()? - cpu;
    Ok(ChurnResult {
        events: latencies.len(),
        cpu_fraction: cpu.as_secs_f64() / wall.elapsed().as_secs_f64(),
        visible_p50_ms: percentile(latencies.clone(), 0.5),
        visible_p99_ms: percentile(latencies, 0.99),
        full_compiles: live.full_compiles() - fulls,
        updates,
    })
}

/// Today's path under churn: debounce, then compile everything.
fn churn_before(
    maps: &mut PolicyMaps,
    live: &LivePolicy,
    pods: u32,
    rate: u64,
    secs: u64,
) -> Result<ChurnResult> {
    let (quiet, max) = (Duration::from_millis(500), Duration::from_secs(5));
    let mut set = live.documents().clone();
    let rx = producer(rate, secs, pods);
    let (wall, cpu) = (Instant::now(), thread_cpu()?);
    let mut latencies = Vec::new();
    let mut pending: Vec<Instant> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let mut updates = 0;
    let mut open = true;
    while open || !pending.is_empty() {
        let deadline = first.map(|f| (last + quiet).min(f + max));
        let item = match deadline {
            _ if !open => None,
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(item) => Some(item),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
            None => match rx.recv() {
                Ok(item) => Some(item),
                Err(_) => {
                    open = false;
                    None
                }
            },
        };
        if let Some((t, event)) = item {
            match convert(event)? {
                Change::Apply(doc) => {
                    set.insert_shared(doc);
                }
                Change::Delete(key) => {
                    set.docs.remove(&key);
                }
            }
            pending.push(t);
            last = Instant::now();
            first.get_or_insert(last);
            continue;
        }
        if pending.is_empty() {
            continue;
        }
        // Publish: a snapshot of the set, compiled whole.
        let snapshot = set.clone();
        let policy = compile_documents(&snapshot, &Options::default())?;
        maps.apply(Arc::new(compile(&policy)?))?;
        updates += 1;
        let now = Instant::now();
        latencies.extend(pending.drain(..).map(|t| (now - t).as_secs_f64() * 1e3));
        first = None;
    }
    let cpu = thread_cpu()? - cpu;
    Ok(ChurnResult {
        events: latencies.len(),
        cpu_fraction: cpu.as_secs_f64() / wall.elapsed().as_secs_f64(),
        visible_p50_ms: percentile(latencies.clone(), 0.5),
        visible_p99_ms: percentile(latencies, 0.99),
        full_compiles: updates,
        updates,
    })
}

/// How long a restart's resync took, in seconds, and what it held.
struct Resync {
    /// Converting the objects' JSON (not making it: `generate_s`).
    read_s: f64,
    generate_s: f64,
    compile_s: f64,
    write_s: f64,
    total_s: f64,
    /// Bytes the allocator held for the documents alone, at most during
    /// the resync, and for the live policy (documents included) after it.
    documents_bytes: usize,
    peak_held_bytes: usize,
    live_bytes: usize,
    /// The process's peak resident memory over the resync alone, KiB.
    peak_rss_kib: u64,
}

impl Resync {
    /// The `resync_*` fields of the bench's JSON.
    fn fields(&self) -> serde_json::Map<String, Value> {
        let json = json!({
            "resync_s": self.total_s,
            "resync_read_s": self.read_s,
            "resync_compile_s": self.compile_s,
            "resync_write_s": self.write_s,
            "resync_generate_s": self.generate_s,
            "resync_documents_mib": mib(self.documents_bytes),
            "resync_peak_held_mib": mib(self.peak_held_bytes),
            "resync_live_policy_mib": mib(self.live_bytes),
            "resync_peak_rss_mib": self.peak_rss_kib as f64 / 1024.0,
        });
        let Value::Object(fields) = json else {
            unreachable!("json! of braces is an object")
        };
        fields
    }
}

/// A restart: list, convert, compile, write both slots from scratch.
/// Times are the agent's work only: making the objects' JSON (the API
/// server's) is counted apart. The heap the earlier scenarios freed is
/// given back first, so that the peak is this stage's.
fn resync(sb: &Sandbox, pods: u32) -> Result<(LivePolicy, PolicyMaps, Resync)> {
    classifier_user::allocator::release_free_heap();
    reset_peak_rss()?;
    let base = CountingAlloc::held();
    CountingAlloc::reset_peak();
    let t = Instant::now();
    let Read {
        set,
        count,
        convert,
        generate,
    } = read_objects(cluster_objects(pods))?;
    let documents_bytes = CountingAlloc::held().saturating_sub(base);
    let t_compile = Instant::now();
    let mut live = LivePolicy::new(Options::default())?;
    live.sync(&set)?;
    drop(set);
    let compile_s = t_compile.elapsed().as_secs_f64();
    let mut maps = PolicyMaps::open(&PinDir::new(&sb.pins))?;
    let first = maps.apply(Arc::new(live.compiled()))?;
    let wall_s = t.elapsed().as_secs_f64();
    let read_s = convert.as_secs_f64();
    let generate_s = generate.as_secs_f64();
    let resync_s = wall_s - generate_s;
    let peak_held_bytes = CountingAlloc::peak().saturating_sub(base);
    let live_bytes = CountingAlloc::held().saturating_sub(base);
    let peak_rss_kib = crate::system::peak_rss_kib(std::process::id())?;
    // The other slot too, so that later full switches are diffs.
    maps.apply(Arc::new(live.compiled()))?;
    let write_s = first.elapsed.as_secs_f64();
    crate::step(&format!(
        "  resync of {count} objects: {resync_s:.2} s (convert {read_s:.2} s, compile {compile_s:.2} s, write {write_s:.2} s; making the JSON {generate_s:.2} s more); held: documents {:.1} MiB, at most {:.1} MiB, live policy {:.1} MiB; peak RSS {:.0} MiB",
        mib(documents_bytes),
        mib(peak_held_bytes),
        mib(live_bytes),
        peak_rss_kib as f64 / 1024.0,
    ));
    Ok((
        live,
        maps,
        Resync {
            read_s,
            generate_s,
            compile_s,
            write_s,
            total_s: resync_s,
            documents_bytes,
            peak_held_bytes,
            live_bytes,
            peak_rss_kib,
        },
    ))
}

/// One change at a time, each written before the next.
struct OneAtATime {
    /// Milliseconds per change.
    times: Vec<f64>,
    /// IPv4 entries written per change.
    writes: Vec<usize>,
    full_compiles: u64,
    p99_ms: f64,
}

fn one_at_a_time(
    maps: &mut PolicyMaps,
    live: &mut LivePolicy,
    pods: u32,
    one_changes: u64,
) -> Result<OneAtATime> {
    let mut times = Vec::new();
    let mut writes = Vec::new();
    let fulls = live.full_compiles();
    for k in 0..one_changes {
        let event = one_change(k, pods);
        let t = Instant::now();
        let out = live.apply([convert(event)?])?;
        write_maps(maps, live, &out)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        writes.push(out.delta.v4_removed.len() + out.delta.v4_upserted.len());
    }
    let one_full = live.full_compiles() - fulls;
    let one_change_ms = percentile(times.clone(), 0.99);
    crate::step(&format!(
        "  one change ({one_changes}): p50 {:.2} ms, p99 {one_change_ms:.2} ms, {one_full} full compiles",
        percentile(times.clone(), 0.5)
    ));
    Ok(OneAtATime {
        times,
        writes,
        full_compiles: one_full,
        p99_ms: one_change_ms,
    })
}

/// Today's path for one change at a time: compile everything, write it.
/// Milliseconds per change.
fn before_one_at_a_time(
    maps: &mut PolicyMaps,
    live: &LivePolicy,
    pods: u32,
    before_changes: u64,
) -> Result<Vec<f64>> {
    let mut before_times = Vec::new();
    let mut docs = live.documents().clone();
    for k in 0..before_changes {
        let event = one_change(k + 1000, pods);
        let t = Instant::now();
        if let Change::Apply(doc) = convert(event)? {
            docs.insert_shared(doc);
        }
        let policy = compile_documents(&docs, &Options::default())?;
        maps.apply(Arc::new(compile(&policy)?))?;
        before_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(docs);
    Ok(before_times)
}

/// The resync alone (`BENCH_RESYNC_ONLY`).
pub(crate) fn resync_only(sb: &Sandbox, pods: u32) -> Result<Value> {
    let (_, _, r) = resync(sb, pods)?;
    Ok(Value::Object(r.fields()))
}

pub(crate) fn churn(sb: &Sandbox, pods: u32) -> Result<Value> {
    let one_changes = env_or("BENCH_ONE_CHANGES", 200);
    let rate = env_or("BENCH_CHURN_RATE", 200);
    let secs = env_or("BENCH_CHURN_SECS", 60);
    let before_changes = env_or("BENCH_BEFORE_CHANGES", 10);
    let before_secs = env_or("BENCH_BEFORE_CHURN_SECS", 15);

    // A restart: list, convert, compile, write both slots from scratch.
    let (mut live, mut maps, resync) = resync(sb, pods)?;

    // One change at a time.
    let one = one_at_a_time(&mut maps, &mut live, pods, one_changes)?;
    let (times, writes, one_full, one_change_ms) =
        (one.times, one.writes, one.full_compiles, one.p99_ms);

    let churn = churn_live(&mut maps, &mut live, pods, rate, secs)?;
    crate::step(&format!(
        "  churn {rate}/s for {secs} s: cpu {:.3}, visible p99 {:.1} ms, {} full compiles in {} updates",
        churn.cpu_fraction, churn.visible_p99_ms, churn.full_compiles, churn.updates
    ));
    let peak_rss_kib = crate::system::peak_rss_kib(std::process::id())?;

    // A re-list (410 Gone): equal objects, nothing to apply.
    let t = Instant::now();
    let relist_read = read_objects(cluster_objects(pods))?;
    let relist = live.sync(&relist_read.set)?;
    write_maps(&mut maps, &live, &relist)?;
    drop(relist_read.set);
    let relist_s = t.elapsed().as_secs_f64() - relist_read.generate.as_secs_f64();

    // Today's path, for the same kind of changes.
    let before_times = before_one_at_a_time(&mut maps, &live, pods, before_changes)?;
    let before = churn_before(&mut maps, &live, pods, rate, before_secs)?;
    crate::step(&format!(
        "  before: one change p50 {:.0} ms; churn cpu {:.3}, visible p99 {:.0} ms",
        percentile(before_times.clone(), 0.5),
        before.cpu_fraction,
        before.visible_p99_ms
    ));

    let mut out = json!({
        "one_change_ms": one_change_ms,
        "one_change_p50_ms": percentile(times, 0.5),
        "one_change_count": one_changes,
        "one_change_full_compiles": one_full,
        "one_change_map_writes_max": writes.iter().max().copied().unwrap_or(0),
        "churn_rate_per_s": rate,
        "churn_secs": secs,
        "churn_events": churn.events,
        "churn_cpu_fraction": churn.cpu_fraction,
        "churn_visible_p50_ms": churn.visible_p50_ms,
        "churn_visible_p99_ms": churn.visible_p99_ms,
        "churn_updates": churn.updates,
        "churn_full_compiles": churn.full_compiles,
        "peak_rss_mib": peak_rss_kib as f64 / 1024.0,
        "relist_unchanged_s": relist_s,
        "before_one_change_ms_p50": percentile(before_times.clone(), 0.5),
        "before_one_change_ms_max": percentile(before_times, 1.0),
        "before_one_change_count": before_changes,
        "before_churn_secs": before_secs,
        "before_churn_cpu_fraction": before.cpu_fraction,
        "before_churn_visible_p50_ms": before.visible_p50_ms,
        "before_churn_visible_p99_ms": before.visible_p99_ms,
        "before_churn_publishes": before.updates,
    });
    out.as_object_mut()
        .expect("a JSON object")
        .extend(resync.fields());
    Ok(out)
}

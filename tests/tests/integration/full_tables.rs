//! What happens when a kernel table the connections fill is full: the
//! connect succeeds without a verdict (the proxy detects as usual), the
//! loss is counted, and nobody's entry is pushed out. Each network
//! namespace is a `probe netns-share` holding classified connections in a
//! namespace of its own; the tests read the agent's pinned tables through
//! aya (and fill the namespace-count table through it, as 16,384 live
//! namespaces would).

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use classifier_common::{maps, ConnKey, ConnVerdict};
use classifier_user::datapath::PinDir;
use tests::{privileged, Sandbox};

/// A network namespace holding classified connections until dropped.
struct Netns {
    child: Child,
    cookie: u64,
}

impl Netns {
    /// `count` connections to 127.0.0.1:3306 (a default opaque port) in a
    /// new network namespace; every connect succeeded once it is back.
    fn hold(sb: &Sandbox, count: usize) -> Result<Self> {
        let mut child = sb
            .probe(&["netns-share", &count.to_string(), "3306"], None)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("probe netns-share")?;
        let line = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next()
            .context("probe netns-share said nothing (a connect failed?)")??;
        let mut words = line.split_whitespace();
        let cookie = match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(cookie), Some(n)) if n == count.to_string() => cookie.parse()?,
            _ => bail!("probe netns-share: {line}"),
        };
        Ok(Self { child, cookie })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Closing stdin ends it; its connections and namespace go with it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn open_map(sb: &Sandbox, name: &str) -> Result<MapData> {
    MapData::from_pin(PinDir::new(sb.pins.clone()).map(name))
        .with_context(|| format!("opening pinned {name}"))
}

fn verdict_cookies(sb: &Sandbox) -> Result<Vec<u64>> {
    let table: BpfHashMap<_, ConnKey, ConnVerdict> =
        BpfHashMap::try_from(Map::HashMap(open_map(sb, maps::VERDICTS)?))?;
    Ok(table
        .keys()
        .filter_map(|k| k.ok())
        .map(|k| k.netns_cookie)
        .collect())
}

fn netns_counts(sb: &Sandbox) -> Result<BpfHashMap<MapData, u64, u64>> {
    Ok(BpfHashMap::try_from(Map::HashMap(open_map(
        sb,
        maps::NETNS_VERDICTS,
    )?))?)
}

fn counter(sb: &Sandbox, name: &str) -> Result<u64> {
    let stats = sb.stats()?;
    stats["counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name}: {stats}"))
}

/// Nine network namespaces each within their share (2 of 16) ask for 18
/// entries of a 16-entry table: the ninth's connections succeed without
/// verdicts (`publish_table_full`), the eight holding the table keep every
/// entry, and once one of them goes there is room again.
#[test]
fn a_full_verdict_table_fails_open_counts_and_evicts_nothing() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("table-full")?;
    sb.start_agent(&["--verdict-table-size", "16"])?;
    let mut holders: Vec<Netns> = (0..8).map(|_| Netns::hold(&sb, 2)).collect::<Result<_>>()?;
    assert_eq!(counter(&sb, "published")?, 16);
    assert_eq!(counter(&sb, "publish_table_full")?, 0);

    let late = Netns::hold(&sb, 2)?;
    assert_eq!(counter(&sb, "publish_table_full")?, 2, "{}", sb.stats()?);
    assert_eq!(counter(&sb, "published")?, 16);
    assert_eq!(counter(&sb, "publish_netns_full")?, 0);
    let cookies = verdict_cookies(&sb)?;
    assert_eq!(cookies.len(), 16);
    let counts = netns_counts(&sb)?;
    for h in &holders {
        assert_eq!(
            cookies.iter().filter(|c| **c == h.cookie).count(),
            2,
            "every earlier entry is still there"
        );
        assert_eq!(counts.get(&h.cookie, 0)?, 2);
    }
    assert!(
        counts.get(&late.cookie, 0).is_err(),
        "no count for a namespace with no entry"
    );
    assert_eq!(sb.stats()?["errors_total"], 0);

    // One namespace goes: its two entries are withdrawn, and a new one gets
    // them.
    drop(holders.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while verdict_cookies(&sb)?.len() > 14 {
        anyhow::ensure!(Instant::now() < deadline, "entries never withdrawn");
        std::thread::sleep(Duration::from_millis(20));
    }
    let next = Netns::hold(&sb, 2)?;
    assert_eq!(counter(&sb, "published")?, 18);
    assert_eq!(netns_counts(&sb)?.get(&next.cookie, 0)?, 2);
    Ok(())
}

/// The table of per-namespace counts (16,384 namespaces holding verdicts at
/// once) full: a namespace whose count cannot be created gets no verdict
/// (an uncounted entry would escape its share), counted in
/// `publish_table_full`; its connects succeed, the counts there stay, and
/// once there is room it gets its verdicts again.
#[test]
fn a_full_namespace_count_table_fails_open_and_is_counted() -> Result<()> {
    if !privileged!() {
        return Ok(());
    }
    let mut sb = Sandbox::new("netns-count-full")?;
    sb.start_agent(&[])?;
    let mut counts = netns_counts(&sb)?;
    // As many namespaces as it holds, each with one verdict (cookies no
    // real namespace has: the kernel counts them up from 1).
    const FAKE: u64 = 1 << 62;
    let mut planted = 0u64;
    while counts.insert(FAKE + planted, 1, 0).is_ok() {
        planted += 1;
        anyhow::ensure!(planted <= 1 << 20, "the count table never filled");
    }
    assert_eq!(planted, u64::from(maps::NETNS_VERDICTS_CAPACITY));

    let shut_out = Netns::hold(&sb, 3)?;
    assert_eq!(counter(&sb, "publish_table_full")?, 3, "{}", sb.stats()?);
    assert_eq!(counter(&sb, "published")?, 0);
    assert!(
        verdict_cookies(&sb)?.is_empty(),
        "no uncounted entry left in the verdict table"
    );
    assert_eq!(counts.keys().count() as u64, planted, "the counts stay");
    assert_eq!(sb.stats()?["errors_total"], 0);
    drop(shut_out);

    // Room again (those namespaces went): verdicts again.
    for i in 0..planted {
        counts.remove(&(FAKE + i))?;
    }
    let next = Netns::hold(&sb, 3)?;
    assert_eq!(counter(&sb, "published")?, 3);
    assert_eq!(counts.get(&next.cookie, 0)?, 3);
    Ok(())
}

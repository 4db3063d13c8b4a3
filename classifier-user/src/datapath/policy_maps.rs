//! Writing a compiled policy into the kernel's maps, as one atomic switch.
//!
//! Every policy map is keyed by slot (0 or 1). `apply` brings the inactive
//! slot to the new policy, then flips `CLS_ACTIVE_SLOT` (a single 4-byte
//! array write). A connect reads the slot once, so it sees one whole policy.
//!
//! Both slots stay populated: after a switch the inactive slot still holds
//! the policy before, so the next `apply` only writes the difference between
//! that one and the new one. A one-rule change to a 100k-rule policy costs a
//! handful of map writes, not a rewrite. When the inactive slot's contents
//! are unknown (after an agent restart, or a failed write) it is read back
//! and only the difference written; a difference that cannot be written
//! clears the slot and writes it in full. Many entries go in batches
//! (`trie_batch`): a full slot at 100k pods is 140k entries.
//!
//! After a switch, connects that read the old slot index just before it may
//! still be looking up in that slot. The old slot is rewritten only after
//! an RCU grace period (`sys::bpf::RcuBarrier`), which every program
//! running at the switch has left by then. The wait starts on a helper
//! thread right after the switch; the next apply joins it before it writes,
//! so only policies changing faster than a grace period (milliseconds)
//! ever wait.

use std::{
    cmp::Ordering,
    collections::HashSet,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError};
use classifier_common::{
    excluded_uid_key, maps, PolicyConfig, RuleKeyV4, RuleKeyV6, RuleVerdict, CONFIG_FLAG_ANY_PORT,
    CONFIG_FLAG_GLOBAL_EGRESS, CONFIG_FLAG_MARK, CONFIG_FLAG_ONE_EXCLUDED_UID, CONFIG_FLAG_SCOPED,
    DEFAULT_PORT_WORDS,
};

use super::{pins::PinDir, trie_batch};
use crate::{
    policy::compile::{key_v4, key_v6, CompiledPolicy, TrieEntry},
    sys::bpf::RcuBarrier,
};

pub struct PolicyMaps {
    active: Array<MapData, u32>,
    pub(super) config: Array<MapData, PolicyConfig>,
    pub(super) v4: LpmTrie<MapData, RuleKeyV4, RuleVerdict>,
    pub(super) v6: LpmTrie<MapData, RuleKeyV6, RuleVerdict>,
    default_ports: Array<MapData, u64>,
    excluded: HashMap<MapData, u64, u8>,
    /// What each slot holds, when known. `None` for a slot this agent has
    /// not written (adopted pins) or whose write failed half way.
    pub(super) contents: [Option<Arc<CompiledPolicy>>; 2],
    /// In-place changes written into a slot since its `contents` (see
    /// `policy_patch.rs`), folded in when the slot is next diffed.
    pub(super) pending: [Vec<classifier_policy::live::Delta>; 2],
    /// The grace period after the last switch, being waited for.
    grace: Option<thread::JoinHandle<std::io::Result<()>>>,
    rcu: Arc<RcuBarrier>,
}

/// What an `apply` did, for logs and benchmarks.
#[derive(Clone, Debug)]
pub struct Applied {
    pub generation: u32,
    pub slot: u32,
    pub v4_entries: usize,
    pub v6_entries: usize,
    /// Map writes and deletes this apply made (a full write or a diff).
    pub map_writes: usize,
    pub incremental: bool,
    /// The difference could not be written, so the slot was rewritten in
    /// full (the error is logged).
    pub rewritten: bool,
    /// Time spent waiting for the grace period after the previous switch.
    pub grace_wait: Duration,
    pub elapsed: Duration,
}

/// A delete of a key that should be there: its absence is the state wanted,
/// so only other errors count.
pub(crate) fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

pub(crate) fn open(pins: &PinDir, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl PolicyMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            active: Array::try_from(Map::Array(open(pins, maps::ACTIVE_SLOT)?))?,
            config: Array::try_from(Map::Array(open(pins, maps::POLICY_CONFIG)?))?,
            v4: LpmTrie::try_from(Map::LpmTrie(open(pins, maps::RULES_V4)?))?,
            v6: LpmTrie::try_from(Map::LpmTrie(open(pins, maps::RULES_V6)?))?,
            default_ports: Array::try_from(Map::Array(open(pins, maps::DEFAULT_PORTS)?))?,
            excluded: HashMap::try_from(Map::HashMap(open(pins, maps::EXCLUDED_UIDS)?))?,
            contents: [None, None],
            pending: [Vec::new(), Vec::new()],
            grace: None,
            rcu: Arc::new(
                RcuBarrier::new().context("creating the map-in-map used as an RCU barrier")?,
            ),
        })
    }

    pub fn active_slot(&self) -> Result<u32> {
        Ok(self.active.get(&0, 0)? & 1)
    }

    /// The settings of the policy connects currently see.
    pub fn active_config(&self) -> Result<PolicyConfig> {
        Ok(self.config.get(&self.active_slot()?, 0)?)
    }

    /// The rule entries of the slot connects currently see, as the kernel
    /// holds them: (prefix length, key without its slot byte, verdict),
    /// IPv4 first, sorted. What tests compare the maps by.
    pub fn active_entries(&self) -> Result<Vec<(u32, Vec<u8>, RuleVerdict)>> {
        let tag = self.active_slot()? as u8;
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (key, verdict) = item.context("listing IPv4 rule entries")?;
            let data = key.data();
            if data[0] == tag {
                out.push((key.prefix_len(), data[1..].to_vec(), verdict));
            }
        }
        for item in self.v6.iter() {
            let (key, verdict) = item.context("listing IPv6 rule entries")?;
            let data = key.data();
            if data[0] == tag {
                out.push((key.prefix_len(), data[1..].to_vec(), verdict));
            }
        }
        out.sort_by(|a, b| (a.1.len(), &a.1, a.0).cmp(&(b.1.len(), &b.1, b.0)));
        Ok(out)
    }

    /// The node-wide entry a connect to `addr:port` finds in the active
    /// slot's IPv4 trie (its exact-port lookup), if any.
    pub fn lookup_v4(&self, port: u16, addr: std::net::Ipv4Addr) -> Result<Option<RuleVerdict>> {
        let tag = self.active_slot()? as u8;
        let data =
            classifier_common::rule_key_v4(tag, classifier_common::SCOPE_NODE, port, addr.octets());
        match self.v4.get(
            &Key::new(classifier_common::RULE_KEY_FIXED_BITS + 32, data),
            0,
        ) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("looking up an IPv4 rule entry"),
        }
    }

    /// Makes `policy` the one connects see. The maps keep a reference to it
    /// to diff the next change against.
    pub fn apply(&mut self, policy: Arc<CompiledPolicy>) -> Result<Applied> {
        let started = Instant::now();
        let old = self.active_slot()?;
        let new = old ^ 1;
        let generation = self.config.get(&old, 0)?.generation.wrapping_add(1).max(1);
        let grace_started = Instant::now();
        match self.grace.take() {
            Some(waiting) => waiting
                .join()
                .map_err(|_| anyhow::anyhow!("the RCU grace period thread panicked"))?,
            // No switch by this agent yet; an earlier agent may have
            // switched just before it stopped.
            None => self.rcu.wait(),
        }
        .context("waiting for an RCU grace period after the last policy switch")?;
        let grace_wait = grace_started.elapsed();

        // Until the switch succeeds, the inactive slot's contents are unknown.
        let previous = self.take_contents(new);
        let incremental = previous.is_some();
        let previous = previous.or_else(|| self.read_back(new));
        let mut rewritten = false;
        let map_writes = match previous {
            Some(previous) => match self.write_diff(new, &previous, &policy) {
                Ok(writes) => writes,
                Err(err) => {
                    // The slot is in no known state now: bring it to the
                    // new policy from scratch.
                    tracing::warn!(
                        slot = new,
                        error = format!("{err:#}"),
                        "writing the policy difference failed; rewriting the slot in full"
                    );
                    rewritten = true;
                    self.rewrite(new, &policy)?
                }
            },
            None => self.rewrite(new, &policy)?,
        };

        let config = slot_config(&policy, generation);
        self.config
            .set(new, config, 0)
            .context("writing the policy config")?;

        // The switch.
        self.active
            .set(0, new, 0)
            .context("switching the active policy slot")?;
        let rcu = Arc::clone(&self.rcu);
        self.grace = Some(thread::spawn(move || rcu.wait()));
        let (v4_entries, v6_entries) = (policy.v4.len(), policy.v6.len());
        self.contents[new as usize] = Some(policy);

        Ok(Applied {
            generation,
            slot: new,
            v4_entries,
            v6_entries,
            map_writes,
            incremental,
            rewritten,
            grace_wait,
            elapsed: started.elapsed(),
        })
    }

    /// What `slot`, whose contents this agent does not know (it was
    /// started on pins an earlier agent wrote), holds, read back so that
    /// only the difference is written. After a restart it holds the policy
    /// before the last switch, which is most often nearly this one:
    /// reading 140k entries costs a fraction of writing them. `None` when
    /// it cannot be read, or holds a key this agent does not write (of
    /// another layout): the caller clears it and writes it in full.
    fn read_back(&self, slot: u32) -> Option<Arc<CompiledPolicy>> {
        match self.read_slot(slot) {
            Ok(found) => found.map(Arc::new),
            Err(err) => {
                tracing::warn!(
                    slot,
                    error = format!("{err:#}"),
                    "reading the policy slot back failed; rewriting it in full"
                );
                None
            }
        }
    }

    /// What `slot` holds (entries, default ports, excluded UIDs), or
    /// `None` when an entry of it does not decode as one the compiler
    /// writes.
    fn read_slot(&self, slot: u32) -> Result<Option<CompiledPolicy>> {
        let tag = slot as u8;
        let mut found = CompiledPolicy::empty();
        // Both slots' entries, a batch at a time: a slot at 100k pods is
        // 140k entries, which one lookup each made most of a restart's
        // write.
        let v4 = trie_batch::read_all(&self.v4).context("reading the IPv4 rule entries back")?;
        let v6 = trie_batch::read_all(&self.v6).context("reading the IPv6 rule entries back")?;
        let (Some(v4), Some(v6)) = (slot_entries(tag, v4), slot_entries(tag, v6)) else {
            return Ok(None);
        };
        found.v4 = v4;
        found.v6 = v6;
        for (i, word) in found.default_ports.iter_mut().enumerate() {
            *word = self
                .default_ports
                .get(&(slot * DEFAULT_PORT_WORDS + i as u32), 0)
                .context("reading the default port bitmap")?;
        }
        for key in self.excluded.keys() {
            let key = key.context("listing excluded UIDs")?;
            if (key >> 32) as u32 == slot {
                found.excluded_uids.push(key as u32);
            }
        }
        Ok(Some(found))
    }

    /// Clears `slot` and writes `policy` into it; returns the number of map
    /// writes. An error leaves the slot's contents unknown (the caller's
    /// `contents` entry stays `None`), so the next apply rewrites it again.
    fn rewrite(&mut self, slot: u32, policy: &CompiledPolicy) -> Result<usize> {
        self.clear_slot(slot)
            .with_context(|| format!("clearing policy slot {slot}"))?;
        self.write_diff(slot, &CompiledPolicy::empty(), policy)
            .with_context(|| format!("writing policy slot {slot} in full"))
    }

    /// Brings `slot` from `from` to `to`; returns the number of map writes.
    fn write_diff(
        &mut self,
        slot: u32,
        from: &CompiledPolicy,
        to: &CompiledPolicy,
    ) -> Result<usize> {
        let tag = slot as u8;
        let mut writes = 0;

        writes += write_entries(&mut self.v4, &from.v4, &to.v4, |e| key_v4(tag, e))
            .context("writing IPv4 rule entries")?;
        writes += write_entries(&mut self.v6, &from.v6, &to.v6, |e| key_v6(tag, e))
            .context("writing IPv6 rule entries")?;

        for (i, (old, new)) in from
            .default_ports
            .iter()
            .zip(to.default_ports.iter())
            .enumerate()
        {
            if old != new {
                self.default_ports
                    .set(slot * DEFAULT_PORT_WORDS + i as u32, *new, 0)
                    .context("writing the default port bitmap")?;
                writes += 1;
            }
        }

        let before: HashSet<u32> = from.excluded_uids.iter().copied().collect();
        let after: HashSet<u32> = to.excluded_uids.iter().copied().collect();
        for uid in before.difference(&after) {
            absent_ok(self.excluded.remove(&excluded_uid_key(slot, *uid)))
                .context("removing an excluded UID")?;
            writes += 1;
        }
        for uid in after.difference(&before) {
            self.excluded
                .insert(excluded_uid_key(slot, *uid), 1, 0)
                .context("writing an excluded UID")?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Removes everything in `slot`, whatever wrote it. Any failure (listing
    /// or deleting) is an error: the slot is then not known to be empty.
    fn clear_slot(&mut self, slot: u32) -> Result<()> {
        let tag = slot as u8;
        clear_entries(&mut self.v4, tag).context("clearing IPv4 rule entries")?;
        clear_entries(&mut self.v6, tag).context("clearing IPv6 rule entries")?;
        for i in 0..DEFAULT_PORT_WORDS {
            self.default_ports
                .set(slot * DEFAULT_PORT_WORDS + i, 0, 0)
                .context("clearing the default port bitmap")?;
        }
        let stale_uids = self
            .excluded
            .keys()
            .filter(|k| k.as_ref().map_or(true, |k| (k >> 32) as u32 == slot))
            .collect::<Result<Vec<u64>, _>>()
            .context("listing excluded UIDs")?;
        for key in stale_uids {
            absent_ok(self.excluded.remove(&key)).context("removing an excluded UID")?;
        }
        Ok(())
    }
}

/// Brings one family's trie, in the slot `key` encodes, from `from` to
/// `to`; returns the number of map writes.
fn write_entries<K: aya::Pod + bytemuck::Pod, const N: usize>(
    trie: &mut LpmTrie<MapData, K, RuleVerdict>,
    from: &[TrieEntry<N>],
    to: &[TrieEntry<N>],
    key: impl Fn(&TrieEntry<N>) -> (u32, K),
) -> Result<usize> {
    let (removed, upserted) = diff_entries(from, to);
    let removed: Vec<_> = removed.iter().map(&key).collect();
    let upserted: Vec<_> = upserted
        .iter()
        .map(|e| {
            let (prefix_len, data) = key(e);
            (prefix_len, data, e.verdict)
        })
        .collect();
    trie_batch::remove_all(trie, &removed).context("removing the entries the new policy lacks")?;
    trie_batch::insert_all(trie, &upserted).context("writing the new policy's entries")?;
    Ok(removed.len() + upserted.len())
}

/// Removes every entry of slot `tag` from one family's trie.
fn clear_entries<K: aya::Pod + bytemuck::Pod + AsRef<[u8]>>(
    trie: &mut LpmTrie<MapData, K, RuleVerdict>,
    tag: u8,
) -> Result<()> {
    let stale: Vec<(u32, K)> = trie_batch::read_all(trie)
        .context("listing the slot's entries")?
        .into_iter()
        .filter(|(_, d, _)| d.as_ref()[0] == tag)
        .map(|(p, d, _)| (p, d))
        .collect();
    trie_batch::remove_all(trie, &stale).context("removing the slot's entries")
}

/// The entries of slot `tag` among one family's (`N` address bytes), as
/// the compiler writes them; `None` when one does not decode as such.
fn slot_entries<K: AsRef<[u8]>, const N: usize>(
    tag: u8,
    entries: Vec<(u32, K, RuleVerdict)>,
) -> Option<Vec<TrieEntry<N>>> {
    let mut out = Vec::new();
    for (prefix_len, d, verdict) in entries {
        let d = d.as_ref();
        if d[0] != tag {
            continue;
        }
        out.push(TrieEntry {
            scope: u16::from_be_bytes([d[1], d[2]]),
            port: u16::from_be_bytes([d[3], d[4]]),
            addr: d.get(5..5 + N)?.try_into().ok()?,
            prefix: entry_prefix(prefix_len, 8 * N as u32)?,
            verdict,
        });
    }
    Some(out)
}

/// The address prefix of a trie key of `prefix_len` bits (slot, scope and
/// port included), if it is one the compiler writes.
fn entry_prefix(prefix_len: u32, address_bits: u32) -> Option<u8> {
    let bits = prefix_len.checked_sub(classifier_common::RULE_KEY_FIXED_BITS)?;
    (bits <= address_bits).then_some(bits as u8)
}

/// Entries of `from` whose key is gone in `to`, and entries of `to` that are
/// new or changed. Keys are (scope, port, address, prefix). `compile` emits entries
/// sorted by that key, so this is one merge walk; unsorted input (not from
/// `compile`) is sorted first.
fn diff_entries<const N: usize>(
    from: &[TrieEntry<N>],
    to: &[TrieEntry<N>],
) -> (Vec<TrieEntry<N>>, Vec<TrieEntry<N>>) {
    let key = |e: &TrieEntry<N>| (e.scope, e.port, e.addr, e.prefix);
    let sorted = |v: &[TrieEntry<N>]| -> Vec<TrieEntry<N>> {
        let mut v = v.to_vec();
        v.sort_by_key(key);
        v
    };
    let (from_sorted, to_sorted);
    let from = if from.is_sorted_by_key(key) {
        from
    } else {
        from_sorted = sorted(from);
        &from_sorted
    };
    let to = if to.is_sorted_by_key(key) {
        to
    } else {
        to_sorted = sorted(to);
        &to_sorted
    };

    let (mut removed, mut upserted) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < from.len() || j < to.len() {
        match (from.get(i), to.get(j)) {
            (Some(a), Some(b)) => match key(a).cmp(&key(b)) {
                Ordering::Less => {
                    removed.push(*a);
                    i += 1;
                }
                Ordering::Greater => {
                    upserted.push(*b);
                    j += 1;
                }
                Ordering::Equal => {
                    if a.verdict != b.verdict {
                        upserted.push(*b);
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                removed.push(*a);
                i += 1;
            }
            (None, Some(b)) => {
                upserted.push(*b);
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    (removed, upserted)
}

/// The settings connects read with `policy`'s slot.
fn slot_config(policy: &CompiledPolicy, generation: u32) -> PolicyConfig {
    let (mut flags, mark_value, mark_mask) = match policy.mark {
        Some(mark) => (CONFIG_FLAG_MARK, mark.value, mark.mask),
        None => (0, 0, 0),
    };
    if policy.scoped {
        flags |= CONFIG_FLAG_SCOPED;
    }
    if policy.any_port {
        flags |= CONFIG_FLAG_ANY_PORT;
    }
    if policy.global_egress {
        flags |= CONFIG_FLAG_GLOBAL_EGRESS;
    }
    // One UID (the default policy's proxy UID) is compared in place of
    // the hash lookup; the hash holds it too, for older programs.
    let excluded_uid = match policy.excluded_uids.as_slice() {
        [uid] => {
            flags |= CONFIG_FLAG_ONE_EXCLUDED_UID;
            *uid
        }
        _ => 0,
    };
    PolicyConfig {
        generation,
        flags,
        mark_value,
        mark_mask,
        rule_count: policy.rule_count,
        v4_entries: policy.v4.len() as u32,
        v6_entries: policy.v6.len() as u32,
        default_port_count: policy.default_ports.iter().map(|w| w.count_ones()).sum(),
        excluded_uid_count: policy.excluded_uids.len() as u32,
        excluded_uid,
    }
}

#[cfg(test)]
mod tests {
    use classifier_common::{RuleVerdict, RULE_MATCH};

    use super::*;

    #[test]
    fn one_excluded_uid_is_compared_in_place_and_more_are_looked_up() {
        let mut policy = CompiledPolicy::empty();
        let none = slot_config(&policy, 3);
        assert_eq!(none.generation, 3);
        assert_eq!(none.excluded_uid_count, 0, "connects skip the lookup");
        assert_eq!(none.flags & CONFIG_FLAG_ONE_EXCLUDED_UID, 0);

        policy.excluded_uids = vec![2102];
        let one = slot_config(&policy, 3);
        assert_eq!(one.excluded_uid_count, 1);
        assert_ne!(one.flags & CONFIG_FLAG_ONE_EXCLUDED_UID, 0);
        assert_eq!(one.excluded_uid, 2102);

        // UID 0 is a UID like any other.
        policy.excluded_uids = vec![0];
        let root = slot_config(&policy, 3);
        assert_ne!(root.flags & CONFIG_FLAG_ONE_EXCLUDED_UID, 0);
        assert_eq!(root.excluded_uid, 0);

        policy.excluded_uids = vec![2102, 1337];
        let two = slot_config(&policy, 3);
        assert_eq!(two.excluded_uid_count, 2);
        assert_eq!(
            two.flags & CONFIG_FLAG_ONE_EXCLUDED_UID,
            0,
            "the hash decides"
        );
        assert_eq!(two.excluded_uid, 0);
    }

    fn entry(port: u16, last: u8, rule_id: u32) -> TrieEntry<4> {
        TrieEntry {
            scope: 0,
            port,
            addr: [10, 0, 0, last],
            prefix: 32,
            verdict: RuleVerdict {
                rule_id,
                protocol: 1,
                kind: RULE_MATCH,
                net_prefix: 32,
                _pad: 0,
            },
        }
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let from = vec![entry(80, 1, 1), entry(80, 2, 1), entry(443, 1, 2)];
        let to = vec![entry(80, 1, 1), entry(80, 2, 3), entry(8080, 1, 2)];
        let (removed, upserted) = diff_entries(&from, &to);
        assert_eq!(removed, vec![entry(443, 1, 2)]);
        assert_eq!(upserted, vec![entry(80, 2, 3), entry(8080, 1, 2)]);
        // Order of the input does not matter.
        let shuffled = vec![entry(8080, 1, 2), entry(80, 2, 3), entry(80, 1, 1)];
        assert_eq!(diff_entries(&from, &shuffled), (removed, upserted));
        let (removed, upserted) = diff_entries(&to, &to);
        assert!(removed.is_empty() && upserted.is_empty());
    }
}

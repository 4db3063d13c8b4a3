//! Changing the policy in force in place, key by key, for an incremental
//! update ([`classifier_policy::live`]): no slot switch, so no RCU grace
//! period on the path of a change.
//!
//! Every entry of such an update is node-wide at one address's
//! full-length prefix (a /32 or /128 of a pod or a Service). At such an
//! address the connect program's answer for port `p` is the exact-port
//! entry `(p, addr)` if there is one (it is full-length and a match, so it
//! beats any wildcard hit), else the wildcard entry `(PORT_ANY, addr)` if
//! there is one, else what shorter (background) entries say. Each single
//! map write is atomic. The writes go in this order:
//!
//! 1. exact-port entries added or changed;
//! 2. the wildcard entry added or changed;
//! 3. the wildcard entry removed;
//! 4. exact-port entries removed.
//!
//! A connect to `(addr, p)` between two of these writes sees either the
//! old policy's answer or the new one's, never a third: a port with an
//! exact entry after the update has its final answer from step 1 on (and
//! the old one before); a port whose exact entry goes away keeps its old
//! entry (the old answer) until step 4, when the wildcard entry and the
//! background are already final; a port with no exact entry before or
//! after only changes at the wildcard write. Different addresses change
//! one after the other, as if their objects' watch events had arrived a
//! moment apart. A connect sees one state or the other for each address;
//! nothing else about the slot changes (settings and flags changes go
//! through a full switch).
//!
//! The verdicts' policy generation is not bumped: it names the last full
//! switch.

use std::{sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use classifier_common::{PolicyConfig, PORT_ANY};

use super::policy_maps::{absent_ok, Applied, PolicyMaps};
use crate::policy::compile::{key_v4, key_v6, CompiledPolicy, TrieEntry};
use crate::policy::live::Delta;

/// Entries written in place after which they are folded into the slot's
/// known contents.
const FOLD_AFTER: usize = 4096;

impl PolicyMaps {
    /// Writes `delta` into the active slot in place. `Ok(None)` when it
    /// cannot be done in place (the slot's contents are not known, or the
    /// wildcard-port flag would change): apply the whole policy instead.
    /// On an error the active slot's contents are unknown, and the next
    /// full apply rewrites it after switching away from it.
    pub fn patch(&mut self, delta: &Delta) -> Result<Option<Applied>> {
        let started = Instant::now();
        let slot = self.active_slot()?;
        let s = slot as usize;
        match &self.contents[s] {
            // A wildcard-port flag change goes through a switch, so no
            // pending delta ever changes it.
            Some(current) if current.any_port == delta.any_port => {}
            _ => return Ok(None),
        }
        let config = self.config.get(&slot, 0)?;
        // Unknown until the writes succeed.
        let current = self.contents[s].take();
        let writes = self.write_in_place(slot as u8, delta)?;
        self.contents[s] = current;
        self.pending[s].push(delta.clone());
        // Folded now and then, so that what is kept stays proportional to
        // the policy, not to the changes since the last switch.
        if self.pending[s].iter().map(Delta::len).sum::<usize>() > FOLD_AFTER {
            self.contents[s] = self.take_contents(slot);
        }
        // Same generation, flags and mark (rewritten with the same bytes):
        // only the counts, which the programs do not read, change.
        let config = PolicyConfig {
            rule_count: delta.rule_count,
            v4_entries: delta.v4_entries as u32,
            v6_entries: delta.v6_entries as u32,
            ..config
        };
        self.config
            .set(slot, config, 0)
            .context("writing the policy config")?;
        Ok(Some(Applied {
            generation: config.generation,
            slot,
            v4_entries: delta.v4_entries,
            v6_entries: delta.v6_entries,
            map_writes: writes,
            incremental: true,
            rewritten: false,
            grace_wait: std::time::Duration::ZERO,
            elapsed: started.elapsed(),
        }))
    }

    /// What `slot` holds, with the in-place changes since folded in (one
    /// merge), taken out: `None` when not known.
    pub(super) fn take_contents(&mut self, slot: u32) -> Option<Arc<CompiledPolicy>> {
        let pending = std::mem::take(&mut self.pending[slot as usize]);
        let mut contents = self.contents[slot as usize].take()?;
        if !pending.is_empty() {
            Delta::apply_all(&pending, Arc::make_mut(&mut contents));
        }
        Some(contents)
    }

    fn write_in_place(&mut self, tag: u8, delta: &Delta) -> Result<usize> {
        fn exact<const N: usize>(e: &&TrieEntry<N>) -> bool {
            e.port != PORT_ANY
        }
        fn wild<const N: usize>(e: &&TrieEntry<N>) -> bool {
            e.port == PORT_ANY
        }
        let mut writes = 0;
        for pass in [exact::<4> as fn(&&TrieEntry<4>) -> bool, wild::<4>] {
            for e in delta.v4_upserted.iter().filter(pass) {
                let (len, data) = key_v4(tag, e);
                self.v4
                    .insert(&Key::new(len, data), e.verdict, 0)
                    .context("writing an IPv4 rule entry")?;
                writes += 1;
            }
        }
        for pass in [exact::<16> as fn(&&TrieEntry<16>) -> bool, wild::<16>] {
            for e in delta.v6_upserted.iter().filter(pass) {
                let (len, data) = key_v6(tag, e);
                self.v6
                    .insert(&Key::new(len, data), e.verdict, 0)
                    .context("writing an IPv6 rule entry")?;
                writes += 1;
            }
        }
        for pass in [wild::<4> as fn(&&TrieEntry<4>) -> bool, exact::<4>] {
            for e in delta.v4_removed.iter().filter(pass) {
                let (len, data) = key_v4(tag, e);
                absent_ok(self.v4.remove(&Key::new(len, data)))
                    .context("removing an IPv4 rule entry")?;
                writes += 1;
            }
        }
        for pass in [wild::<16> as fn(&&TrieEntry<16>) -> bool, exact::<16>] {
            for e in delta.v6_removed.iter().filter(pass) {
                let (len, data) = key_v6(tag, e);
                absent_ok(self.v6.remove(&Key::new(len, data)))
                    .context("removing an IPv6 rule entry")?;
                writes += 1;
            }
        }
        Ok(writes)
    }
}

//! Many rule entries written to, deleted from, or read from a rule trie
//! in few system calls.
//!
//! A full policy slot at 100k pods is about 140,000 entries; one
//! `bpf(BPF_MAP_UPDATE_ELEM)` per entry makes the syscall's own cost most
//! of what writing the slot takes. The LPM trie has had the generic batch
//! commands since Linux 5.13 (the agent needs 5.15): the kernel loops over
//! the elements itself,
//! doing for each exactly what the single-element command does, so the
//! entries' order and what a connect can see in between are unchanged.
//!
//! Entries go in chunks of [`CHUNK`] (a bounded buffer, and a failure
//! localised to one chunk). A kernel that refuses the batch command
//! outright (EINVAL, ENOTSUPP or EOPNOTSUPP with nothing done) gets the
//! entries one by one instead.

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::maps::IterableMap as _;

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, LpmTrie, MapData};

type Trie<K> = LpmTrie<MapData, K, RuleVerdict>;
use classifier_common::RuleVerdict;

use crate::sys::bpf::{self, BatchError};

/// Entries per batch command.
pub const CHUNK: usize = 4096;

/// Below this many entries the single-element commands are used: a batch
/// saves nothing on a handful.
const MIN_BATCH: usize = 16;

/// The kernel's ENOTSUPP (524): an in-kernel errno that leaks to userspace
/// for a map type without a batch operation.
const ENOTSUPP: i32 = 524;

/// Whether the kernel refused a batch command itself (no element done),
/// rather than failing on an element.
fn unsupported(e: &BatchError) -> bool {
    e.done == 0
        && matches!(
            e.error.raw_os_error(),
            Some(libc::EINVAL | libc::EOPNOTSUPP) | Some(ENOTSUPP)
        )
}

/// A trie's raw key bytes as the kernel reads them: the prefix length
/// (native-endian u32) then the key data.
fn push_key<K: bytemuck::Pod>(buf: &mut Vec<u8>, prefix_len: u32, data: &K) {
    buf.extend_from_slice(&prefix_len.to_ne_bytes());
    buf.extend_from_slice(bytemuck::bytes_of(data));
}

/// Writes (creates or replaces) `entries` into `trie`.
pub fn insert_all<K: aya::Pod + bytemuck::Pod>(
    trie: &mut Trie<K>,
    entries: &[(u32, K, RuleVerdict)],
) -> Result<()> {
    if entries.len() >= MIN_BATCH {
        let fd = fd(trie);
        let key_size = 4 + size_of::<K>();
        let value_size = size_of::<RuleVerdict>();
        let mut keys = Vec::with_capacity(CHUNK.min(entries.len()) * key_size);
        let mut values = Vec::with_capacity(CHUNK.min(entries.len()) * value_size);
        for (n, chunk) in entries.chunks(CHUNK).enumerate() {
            keys.clear();
            values.clear();
            for (prefix_len, data, verdict) in chunk {
                push_key(&mut keys, *prefix_len, data);
                values.extend_from_slice(bytemuck::bytes_of(verdict));
            }
            match bpf::map_update_batch(fd, &keys, key_size, &values, value_size) {
                Ok(()) => {}
                Err(e) if n == 0 && unsupported(&e) => return insert_each(trie, entries),
                Err(e) => {
                    return Err(e).context(format!(
                        "writing rule entries in a batch ({} of {} written before it)",
                        n * CHUNK,
                        entries.len()
                    ))
                }
            }
        }
        return Ok(());
    }
    insert_each(trie, entries)
}

fn insert_each<K: aya::Pod>(trie: &mut Trie<K>, entries: &[(u32, K, RuleVerdict)]) -> Result<()> {
    for (prefix_len, data, verdict) in entries {
        trie.insert(&Key::new(*prefix_len, *data), *verdict, 0)
            .context("writing a rule entry")?;
    }
    Ok(())
}

/// Deletes `keys` from `trie`; a key that is not there is skipped, as its
/// absence is what was wanted.
pub fn remove_all<K: aya::Pod + bytemuck::Pod>(
    trie: &mut Trie<K>,
    keys: &[(u32, K)],
) -> Result<()> {
    if keys.len() >= MIN_BATCH {
        let fd = fd(trie);
        let key_size = 4 + size_of::<K>();
        let mut buf = Vec::with_capacity(CHUNK.min(keys.len()) * key_size);
        for (n, chunk) in keys.chunks(CHUNK).enumerate() {
            buf.clear();
            for (prefix_len, data) in chunk {
                push_key(&mut buf, *prefix_len, data);
            }
            let mut at = 0;
            while at < chunk.len() {
                match bpf::map_delete_batch(fd, &buf[at * key_size..], key_size) {
                    Ok(()) => break,
                    Err(e) if n == 0 && at == 0 && unsupported(&e) => {
                        return remove_each(trie, keys)
                    }
                    // Not there: skip it and go on after it.
                    Err(e) if e.error.raw_os_error() == Some(libc::ENOENT) => at += e.done + 1,
                    Err(e) => {
                        let failed = n * CHUNK + at + e.done + 1;
                        return Err(e).context(format!(
                            "deleting rule entries in a batch (entry {failed} of {})",
                            keys.len()
                        ));
                    }
                }
            }
        }
        return Ok(());
    }
    remove_each(trie, keys)
}

fn remove_each<K: aya::Pod>(trie: &mut Trie<K>, keys: &[(u32, K)]) -> Result<()> {
    for (prefix_len, data) in keys {
        super::policy_maps::absent_ok(trie.remove(&Key::new(*prefix_len, *data)))
            .context("removing a rule entry")?;
    }
    Ok(())
}

/// The trie's file descriptor, for the batch commands (which check the
/// sizes they are given against the map's own).
fn fd<K: aya::Pod>(trie: &Trie<K>) -> BorrowedFd<'_> {
    trie.map().fd().as_fd()
}

/// Every entry of `trie`: prefix length, key data and verdict, in the
/// trie's own order, read [`CHUNK`] at a time.
pub fn read_all<K: aya::Pod + bytemuck::Pod>(trie: &Trie<K>) -> Result<Vec<(u32, K, RuleVerdict)>> {
    let fd = fd(trie);
    let key_size = 4 + size_of::<K>();
    let value_size = size_of::<RuleVerdict>();
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    let (mut from, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let position = (!first).then_some(&from[..]);
        let (n, more) = match bpf::map_lookup_batch(
            fd,
            position,
            &mut next,
            &mut keys,
            key_size,
            &mut values,
            value_size,
        ) {
            Ok(found) => found,
            Err(e) if first && unsupported(&e) => return read_each(trie),
            Err(e) => return Err(e).context("reading rule entries in a batch"),
        };
        for i in 0..n {
            let key = &keys[i * key_size..(i + 1) * key_size];
            let prefix_len = u32::from_ne_bytes(key[..4].try_into().expect("4 bytes"));
            let data: K = bytemuck::pod_read_unaligned(&key[4..]);
            let verdict: RuleVerdict =
                bytemuck::pod_read_unaligned(&values[i * value_size..(i + 1) * value_size]);
            out.push((prefix_len, data, verdict));
        }
        if !more || n == 0 {
            return Ok(out);
        }
        std::mem::swap(&mut from, &mut next);
        first = false;
    }
}

fn read_each<K: aya::Pod>(trie: &Trie<K>) -> Result<Vec<(u32, K, RuleVerdict)>> {
    let mut out = Vec::new();
    for item in trie.iter() {
        let (key, verdict) = item.context("listing rule entries")?;
        out.push((key.prefix_len(), key.data(), verdict));
    }
    Ok(out)
}

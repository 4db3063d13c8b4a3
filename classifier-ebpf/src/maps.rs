//! Every map of the classifier, pinned by name so that a restarted agent
//! (and `classifier stats`) finds them. Names and sizes come from
//! `classifier_common::maps`; the agent may resize the verdict table.

use core::{intrinsics::AtomicOrdering, ptr::read_volatile};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use classifier_common::{
    counters, maps as m, AgentStatus, ConnKey, ConnVerdict, LearnConfig, LearnWatch, LearnedEntry,
    LearnedKey, NamespaceName, PinMeta, PolicyConfig, RuleKeyV4, RuleKeyV6, RuleVerdict,
    DEFAULT_PORT_WORDS, POLICY_SLOTS,
};

/// For maps only the agent writes, mostly small or empty: memory is taken
/// per entry instead of for the whole capacity up front. The connect path
/// only reads them.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

#[map]
pub static CLS_ACTIVE_SLOT: Array<u32> = Array::pinned(1, 0);
#[map]
pub static CLS_POLICY_CONFIG: Array<PolicyConfig> = Array::pinned(POLICY_SLOTS, 0);
#[map]
pub static CLS_RULES_V4: LpmTrie<RuleKeyV4, RuleVerdict> = LpmTrie::pinned(m::RULES_V4_CAPACITY, 0);
#[map]
pub static CLS_RULES_V6: LpmTrie<RuleKeyV6, RuleVerdict> = LpmTrie::pinned(m::RULES_V6_CAPACITY, 0);
#[map]
pub static CLS_DEFAULT_PORTS: Array<u64> = Array::pinned(POLICY_SLOTS * DEFAULT_PORT_WORDS, 0);
#[map]
pub static CLS_EXCLUDED_UIDS: HashMap<u64, u8> =
    HashMap::pinned(m::EXCLUDED_UIDS_CAPACITY, NO_PREALLOC);
/// The verdict of a socket between connect() and its SYN, in the slot its
/// cookie selects (`inflight_slot`). An array: a connect writes a slot and
/// `publish` reads it, with no insert, eviction or delete (an LRU hash
/// insert cost ~0.4 us per classified connect, socket-local storage ~1 us
/// on 6.18: it allocates and charges memory per socket).
#[map]
pub static CLS_INFLIGHT: Array<ConnVerdict> = Array::pinned(m::INFLIGHT_CAPACITY, 0);
/// Published verdicts. A plain hash, not an LRU: an LRU lets one network
/// namespace's connects evict another's verdicts. Each namespace holds at
/// most `VERDICTS_PER_NETNS` entries (counted in `CLS_NETNS_VERDICTS`).
#[map]
pub static CLS_VERDICTS: HashMap<ConnKey, ConnVerdict> = HashMap::pinned(m::VERDICTS_CAPACITY, 0);
#[map]
pub static CLS_NETNS_VERDICTS: HashMap<u64, u64> =
    HashMap::pinned(m::NETNS_VERDICTS_CAPACITY, NO_PREALLOC);

/// Entries of `CLS_VERDICTS` one network namespace may hold; set by the
/// loader (`classifier_common::verdicts_per_netns` of the table's size).
///
/// `static mut`, so that it lives in `.data`, not `.rodata`: LLVM merges an
/// immutable zero with the anonymous zero constants that code passes by
/// reference (a map insert's `&0`), and the loader's value then replaced
/// those too (found by the learning tests: every new scope counted 8192
/// entries). The programs only ever read it.
#[no_mangle]
static mut VERDICTS_PER_NETNS: u32 = 0;

/// The per-namespace share (0 until the loader sets it: no limit).
#[inline(always)]
pub fn verdicts_per_netns() -> u64 {
    // SAFETY: a global the loader wrote before the program was verified.
    u64::from(unsafe { core::ptr::read_volatile(&raw const VERDICTS_PER_NETNS) })
}

/// Attempts at an update another CPU keeps changing under us. Contention is
/// between connects of one namespace on different CPUs, each update takes
/// nanoseconds: more than a few failures in a row means something is wrong,
/// and the caller fails open.
const CAS_TRIES: u32 = 16;

/// A namespace's count while the CPU that took it to zero deletes the entry:
/// no other CPU may count on it meanwhile (it would be deleted under it).
/// Not 0: pins of earlier agents hold entries left at 0, which are plain
/// counts to go up from.
const NETNS_COUNT_DYING: u64 = u64::MAX;

/// Counts one more verdict for namespace `netns`. False when it could not
/// be counted (the namespace table is full, or the entry kept changing):
/// the caller then must not keep the verdict, or the namespace's share would
/// no longer hold.
///
/// A namespace's entry exists only while the namespace holds verdicts:
/// the CPU that takes it to zero deletes it (`netns_verdicts_sub`), so the
/// table shrinks back as pods come and go.
#[inline(always)]
pub fn netns_verdicts_add(netns: u64) -> bool {
    let mut i = 0;
    while i < CAS_TRIES {
        match CLS_NETNS_VERDICTS.get_ptr_mut(netns) {
            Some(n) => {
                // SAFETY: n points to a live (or just deleted, still
                // readable) aligned u64 map value.
                let seen = unsafe { read_volatile(n) };
                if seen != NETNS_COUNT_DYING && compare_exchange(n, seen, seen + 1) {
                    if still_entry_of(netns, n) {
                        return true;
                    }
                    // Deleted and reused for another namespace between the
                    // lookup and the update: give that one its count back.
                    atomic_add(n, u64::MAX);
                }
                // Dying: its deleter removes it in a moment; insert afresh.
            }
            None => {
                if CLS_NETNS_VERDICTS.insert(netns, 1, BPF_NOEXIST).is_ok() {
                    return true;
                }
                // Another CPU created it first (counted on the next round),
                // or the table is full (fails every round).
            }
        }
        i += 1;
    }
    false
}

/// Counts one verdict less for namespace `netns`, and deletes its entry
/// when that was the last one.
#[inline(always)]
pub fn netns_verdicts_sub(netns: u64) {
    let Some(n) = CLS_NETNS_VERDICTS.get_ptr_mut(netns) else {
        return;
    };
    let mut i = 0;
    while i < CAS_TRIES {
        // SAFETY: as in netns_verdicts_add.
        let seen = unsafe { read_volatile(n) };
        if seen == NETNS_COUNT_DYING || seen == 0 {
            // Not ours to take below zero.
            return;
        }
        if seen == 1 {
            // Mark it dying first: a CPU that found the entry cannot count
            // on it between this and the delete.
            if compare_exchange(n, 1, NETNS_COUNT_DYING) {
                let _ = CLS_NETNS_VERDICTS.remove(netns);
                return;
            }
        } else if compare_exchange(n, seen, seen - 1) {
            return;
        }
        i += 1;
    }
    // Left one too high: the namespace's share is one smaller until its
    // count next reaches zero through the other connections.
    count(counters::ERR_PUBLISH_INSERT);
}

/// Whether `n` is still the value of `netns`'s entry.
#[inline(always)]
fn still_entry_of(netns: u64, n: *mut u64) -> bool {
    match CLS_NETNS_VERDICTS.get_ptr_mut(netns) {
        Some(p) => p == n,
        None => false,
    }
}

/// An atomic add (other CPUs may update the value at once). Its result is
/// unused, so it is a plain BPF XADD. The eBPF target has no `AtomicU64`
/// read-modify-write methods, hence the intrinsics.
#[inline(always)]
fn atomic_add(n: *mut u64, delta: u64) {
    // SAFETY: n points to a live, aligned u64 map value.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, delta);
    }
}

/// `BPF_CMPXCHG` (5.12+): sets `*n` to `new` if it is `old`. Fully ordered:
/// the kernel's JITs emit a full barrier (or a sequentially consistent
/// instruction) for it on every architecture, arm64 included.
#[inline(always)]
pub fn compare_exchange(n: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: callers pass a live, aligned u64 map value.
    unsafe {
        core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            n, old, new,
        )
        .1
    }
}

/// `BPF_XCHG` (5.12+): stores `new` in `*n`, fully ordered like
/// `compare_exchange`.
#[inline(always)]
pub fn exchange(n: *mut u64, new: u64) -> u64 {
    // SAFETY: callers pass a live, aligned u64 map value.
    unsafe { core::intrinsics::atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(n, new) }
}

/// The number of entries namespace `netns` holds.
#[inline(always)]
pub fn netns_verdicts(netns: u64) -> u64 {
    match CLS_NETNS_VERDICTS.get_ptr(netns) {
        // SAFETY: a live map value.
        Some(n) => match unsafe { read_volatile(n) } {
            // Being deleted by the CPU that took it to zero.
            NETNS_COUNT_DYING => 0,
            count => count,
        },
        None => 0,
    }
}

/// The map-update flag: insert only (the kernel's value, as the helper's
/// `u64` flags take it).
pub(crate) const BPF_NOEXIST: u64 = aya_ebpf::bindings::BPF_NOEXIST as u64;
#[map]
pub static CLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);
#[map]
pub static CLS_PORT_COUNTS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::pinned(m::PORT_COUNTS_CAPACITY, 0);
#[map]
pub static CLS_META: Array<PinMeta> = Array::pinned(1, 0);
#[map]
pub static CLS_SCOPES: HashMap<u64, u32> = HashMap::pinned(m::SCOPES_CAPACITY, NO_PREALLOC);
/// Written and read by the agent only; declared here so they are created
/// and pinned with the rest.
#[map]
pub static CLS_AGENT_STATUS: Array<AgentStatus> = Array::pinned(1, 0);
#[map]
pub static CLS_SCOPE_IDS: HashMap<NamespaceName, u32> =
    HashMap::pinned(m::SCOPE_IDS_CAPACITY, NO_PREALLOC);

// Learning server-first destinations; used by `learn.rs` only.
#[map]
pub static CLS_LEARNED: LruHashMap<LearnedKey, LearnedEntry> =
    LruHashMap::pinned(m::LEARNED_CAPACITY, 0);
#[map]
pub static CLS_LEARN_PENDING: LruHashMap<u64, LearnWatch> =
    LruHashMap::pinned(m::LEARN_PENDING_CAPACITY, 0);
#[map]
pub static CLS_LEARN_CONFIG: Array<LearnConfig> = Array::pinned(1, 0);
#[map]
pub static CLS_LEARN_SCOPES: HashMap<u32, u32> =
    HashMap::pinned(m::LEARN_SCOPES_CAPACITY, NO_PREALLOC);

/// Adds one to a per-CPU counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = CLS_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: the pointer is into this CPU's slot of the map value.
        unsafe { *value += 1 };
    }
}

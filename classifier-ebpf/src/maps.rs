//! Every map of the classifier, pinned by name so that a restarted agent
//! (and `classifier stats`) finds them. Names and sizes come from
//! `classifier_common::maps`; the agent may resize the verdict table.

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

/// Adds `delta` (wrapping: `u64::MAX` is -1) to namespace `netns`'s count.
#[inline(always)]
pub fn netns_verdicts_add(netns: u64, delta: u64) {
    if let Some(n) = CLS_NETNS_VERDICTS.get_ptr_mut(netns) {
        atomic_add(n, delta);
        return;
    }
    if delta == 1 && CLS_NETNS_VERDICTS.insert(netns, 1, BPF_NOEXIST).is_err() {
        // Another CPU created it first (or the map is full).
        if let Some(n) = CLS_NETNS_VERDICTS.get_ptr_mut(netns) {
            atomic_add(n, 1);
        }
    }
}

/// An atomic add (other CPUs may update the value at once). Its result is
/// unused, so it is a plain BPF XADD. The eBPF target has no `AtomicU64`
/// read-modify-write methods (no compare-and-swap), hence the intrinsic.
#[inline(always)]
fn atomic_add(n: *mut u64, delta: u64) {
    // SAFETY: n points to a live, aligned u64 map value.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            n, delta,
        );
    }
}

/// The number of entries namespace `netns` holds.
#[inline(always)]
pub fn netns_verdicts(netns: u64) -> u64 {
    match CLS_NETNS_VERDICTS.get_ptr(netns) {
        // SAFETY: a live map value.
        Some(n) => unsafe { core::ptr::read_volatile(n) },
        None => 0,
    }
}

const BPF_NOEXIST: u64 = 1;
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

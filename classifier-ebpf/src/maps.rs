//! Every map of the classifier, pinned by name so that a restarted agent
//! (and `classifier stats`) finds them. Names and sizes come from
//! `classifier_common::maps`; the agent may resize the verdict table.

use aya_ebpf::{
    bindings::bpf_sock,
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use classifier_common::{
    counters, maps as m, AgentStatus, ConnKey, ConnVerdict, NamespaceName, PinMeta, PolicyConfig,
    RuleKeyV4, RuleKeyV6, RuleVerdict, SockState, DEFAULT_PORT_WORDS, POLICY_SLOTS,
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
/// The verdict of a socket's latest connect, on the socket itself
/// (`BPF_MAP_TYPE_SK_STORAGE`): freed with the socket, nothing to evict or
/// delete. A BTF map (the kernel needs its key and value types), pinned by
/// the loader (`map_pin_path`: BTF map definitions carry no pinning).
#[btf_map]
pub static CLS_SOCK: SkStorage<SockState> = SkStorage::new();
#[map]
pub static CLS_VERDICTS: LruHashMap<ConnKey, ConnVerdict> =
    LruHashMap::pinned(m::VERDICTS_CAPACITY, 0);
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

/// Adds one to a per-CPU counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = CLS_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: the pointer is into this CPU's slot of the map value.
        unsafe { *value += 1 };
    }
}

/// `BPF_SK_STORAGE_GET_F_CREATE`.
const SK_STORAGE_CREATE: u64 = 1;

/// The classifier's state on `sk`, created (zeroed) when `create` and
/// absent; null when absent (or on failure). Any program type that may
/// call `bpf_sk_storage_get` (sock_addr, sockops, sockopt) passes its
/// context's `sk`.
///
/// # Safety
/// `sk` must be the `sk` field just read from the program's context (the
/// verifier checks the pointer's provenance; null is checked here).
#[inline(always)]
pub unsafe fn sock_state(sk: *mut bpf_sock, create: bool) -> *mut SockState {
    if sk.is_null() {
        return core::ptr::null_mut();
    }
    let map = (&raw const CLS_SOCK).cast_mut().cast();
    let flags = if create { SK_STORAGE_CREATE } else { 0 };
    // SAFETY: a map of this object and a socket pointer from the context.
    unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) }.cast()
}

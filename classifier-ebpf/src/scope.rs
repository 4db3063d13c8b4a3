//! The connecting process's scope: the `CLS_SCOPES` entry of the first
//! ancestor cgroup, from the root down, that the agent registered (a pod's
//! cgroup; the process is usually in a container cgroup below it). A pod
//! root marked `SCOPE_FLAG_POD_UNKNOWN` ("pods below, namespace unknown")
//! does not end the walk: it is the answer only when nothing below it is
//! registered, i.e. for a pod the agent has not registered yet. Both the
//! rule lookup and learning need it; a connect walks the cgroup ancestry
//! at most once.

use aya_ebpf::helpers::bpf_get_current_ancestor_cgroup_id;
use classifier_common::{MAX_CGROUP_LEVEL, SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN};

use crate::maps::CLS_SCOPES;

/// The client's scope entry, looked up on first use. A plain value and a
/// flag rather than an `Option`, which the verifier handles poorly.
pub struct ClientScope {
    entry: u32,
    known: bool,
}

impl ClientScope {
    #[inline(always)]
    pub fn new() -> Self {
        Self {
            entry: 0,
            known: false,
        }
    }

    /// The scope id (`SCOPE_NODE` outside any pod).
    #[inline(always)]
    pub fn id(&mut self) -> u16 {
        self.entry() as u16
    }

    /// Whether the client's namespace has rules of its own (which shadow
    /// the global EgressNetworks).
    #[inline(always)]
    pub fn has_own_rules(&mut self) -> bool {
        self.entry() & SCOPE_FLAG_OWN_RULES != 0
    }

    /// Whether the client is in a pod cgroup the agent has not registered
    /// yet (its namespace is unknown).
    #[inline(always)]
    pub fn pod_unknown(&mut self) -> bool {
        self.entry() & SCOPE_FLAG_POD_UNKNOWN != 0
    }

    /// The scope id in the low 16 bits and `SCOPE_FLAG_*` bits; 0
    /// (`SCOPE_NODE`, no flags) outside any pod.
    #[inline(always)]
    fn entry(&mut self) -> u32 {
        if !self.known {
            self.entry = lookup();
            self.known = true;
        }
        self.entry
    }
}

#[inline(always)]
fn lookup() -> u32 {
    // A pod root's "namespace unknown" marker, if the walk passed one.
    let mut below_pod_root = 0;
    let mut level = 1;
    while level <= MAX_CGROUP_LEVEL {
        // SAFETY: helper with a plain integer argument.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            // Deeper than the process's own cgroup.
            break;
        }
        if let Some(scope) = CLS_SCOPES.get_ptr(id) {
            // SAFETY: live map value.
            let value = unsafe { *scope };
            if value & SCOPE_FLAG_POD_UNKNOWN == 0 {
                return value;
            }
            below_pod_root = value;
        }
        level += 1;
    }
    below_pod_root
}

//! The Kubernetes kinds the policy is compiled from, in one table: the
//! document reader (which kinds are namespaced, which make a file a
//! manifest), the Linkerd compiler (which API versions it reads) and the
//! live watch in classifier-user (what it lists and watches, and what it
//! keeps of each object) all read it.

/// One kind the policy compiler reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeKind {
    pub kind: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    /// The versions the compiler reads, oldest first; the watch asks the
    /// API server for the last one.
    pub versions: &'static [&'static str],
    /// The resource's plural name in API paths.
    pub plural: &'static str,
    /// A document of a namespaced kind without `metadata.namespace` is in
    /// `default`, as with kubectl.
    pub namespaced: bool,
}

impl KubeKind {
    /// Whether a document's `apiVersion` is one the compiler reads for
    /// this kind (`v1`, or `group/version`).
    pub fn reads_api_version(&self, api_version: &str) -> bool {
        let version = if self.group.is_empty() {
            Some(api_version)
        } else {
            api_version
                .strip_prefix(self.group)
                .and_then(|rest| rest.strip_prefix('/'))
        };
        version.is_some_and(|v| self.versions.contains(&v))
    }

    /// The version the live watch lists and watches.
    pub fn watch_version(&self) -> &'static str {
        self.versions.last().expect("every kind has a version")
    }
}

const LINKERD_POLICY_GROUP: &str = "policy.linkerd.io";

pub const NAMESPACE: KubeKind = KubeKind {
    kind: "Namespace",
    group: "",
    versions: &["v1"],
    plural: "namespaces",
    namespaced: false,
};

pub const SERVICE: KubeKind = KubeKind {
    kind: "Service",
    group: "",
    versions: &["v1"],
    plural: "services",
    namespaced: true,
};

pub const POD: KubeKind = KubeKind {
    kind: "Pod",
    group: "",
    versions: &["v1"],
    plural: "pods",
    namespaced: true,
};

pub const EGRESS_NETWORK: KubeKind = KubeKind {
    kind: "EgressNetwork",
    group: LINKERD_POLICY_GROUP,
    versions: &["v1alpha1"],
    plural: "egressnetworks",
    namespaced: true,
};

pub const SERVER: KubeKind = KubeKind {
    kind: "Server",
    group: LINKERD_POLICY_GROUP,
    versions: &["v1beta1", "v1beta2", "v1beta3"],
    plural: "servers",
    namespaced: true,
};

/// Every kind the compiler reads, in the order the watch starts them.
pub const KINDS: [KubeKind; 5] = [NAMESPACE, SERVICE, POD, EGRESS_NETWORK, SERVER];

/// The kind named `kind` (whatever its API version), if the compiler
/// reads it.
pub fn by_name(kind: &str) -> Option<&'static KubeKind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The kind `kind` of API group `group`, if the compiler reads it.
pub fn lookup(group: &str, kind: &str) -> Option<&'static KubeKind> {
    KINDS.iter().find(|k| k.group == group && k.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(POD.reads_api_version("v1"));
        assert!(!POD.reads_api_version("v2"));
        assert!(SERVER.reads_api_version("policy.linkerd.io/v1beta1"));
        assert!(SERVER.reads_api_version("policy.linkerd.io/v1beta3"));
        assert!(!SERVER.reads_api_version("policy.linkerd.io/v1alpha1"));
        assert!(!SERVER.reads_api_version("policy.linkerd.iov1beta3"));
        assert!(!SERVER.reads_api_version("v1beta3"));
        assert!(EGRESS_NETWORK.reads_api_version("policy.linkerd.io/v1alpha1"));
        assert_eq!(SERVER.watch_version(), "v1beta3");
    }

    #[test]
    fn names_are_unique_and_found() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(by_name(k.kind), Some(k));
            assert_eq!(lookup(k.group, k.kind), Some(k));
            assert!(KINDS[i + 1..].iter().all(|o| o.kind != k.kind));
        }
        assert_eq!(by_name("ConfigMap"), None);
        assert_eq!(lookup("policy.linkerd.io", "Pod"), None);
    }
}

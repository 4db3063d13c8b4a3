use super::*;

/// Sixteen scopes at their quota, plus every CPU's held-back free entries,
/// fit in the table: no cross-scope eviction before that.
#[test]
fn sixteen_scopes_at_quota_fit_beside_every_cpus_free_entries() {
    for cpus in [1, 2, 8, 64, 119] {
        let quota = scope_quota(maps::LEARNED_CAPACITY, cpus);
        assert!(
            quota * SCOPES_AT_QUOTA + LRU_LOCAL_FREE_PER_CPU * cpus <= maps::LEARNED_CAPACITY,
            "{cpus} CPUs: quota {quota}"
        );
        assert!(quota >= MIN_SCOPE_QUOTA);
    }
    assert_eq!(scope_quota(maps::LEARNED_CAPACITY, 2), 1008);
    assert_eq!(scope_quota(maps::LEARNED_CAPACITY, 64), 512);
    // Past 120 CPUs the floor holds and fewer scopes fit.
    assert_eq!(scope_quota(maps::LEARNED_CAPACITY, 256), MIN_SCOPE_QUOTA);
}

//! Turning a policy into kernel state: compile it with this node's scope
//! ids, keep pod cgroups registered to their namespace's scope, and switch
//! the maps atomically.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result};

use super::{learning::Learner, pods};
use crate::{
    datapath::{policy_maps::Applied, PinDir, PolicyMaps, ScopeMaps},
    policy::{compile::compile_with_scopes, Policy},
};

pub struct Applier {
    maps: PolicyMaps,
    scopes: ScopeMaps,
    /// Where pod cgroups are looked for: the cgroup the programs are
    /// attached to.
    cgroup_root: PathBuf,
    pod_namespaces: BTreeMap<String, String>,
    scope_ids: BTreeMap<String, u16>,
    /// Scope ids of namespaces with rules of their own (not only learning).
    own_rule_scopes: std::collections::HashSet<u16>,
    /// Whether this agent has switched in a policy of its own yet.
    applied_once: bool,
    /// Learning (issue 11).
    learner: Learner,
}

impl Applier {
    /// Opens the pinned maps. Must run before capabilities are dropped.
    pub fn open(pins: &PinDir, cgroup_root: PathBuf) -> Result<Self> {
        Ok(Self {
            maps: PolicyMaps::open(pins)?,
            scopes: ScopeMaps::open(pins)?,
            cgroup_root,
            pod_namespaces: BTreeMap::new(),
            scope_ids: BTreeMap::new(),
            own_rule_scopes: Default::default(),
            applied_once: false,
            learner: Learner::open(pins)?,
        })
    }

    pub fn active_generation(&self) -> u32 {
        self.maps.active_config().map(|c| c.generation).unwrap_or(0)
    }

    pub fn apply(&mut self, policy: &Policy, source: &str) -> Result<Applied> {
        let mut namespaces: Vec<&str> = policy
            .rules
            .iter()
            .filter_map(|r| r.scope.as_deref())
            .collect();
        let with_rules: std::collections::BTreeSet<&str> = namespaces.iter().copied().collect();
        namespaces.extend(Learner::namespaces(policy)); // issue 11
        namespaces.sort_unstable();
        namespaces.dedup();
        let scope_ids = self.scopes.ids_for(namespaces)?;
        let own_rule_scopes: std::collections::HashSet<u16> = scope_ids
            .iter()
            .filter(|(ns, _)| with_rules.contains(ns.as_str()))
            .map(|(_, id)| *id)
            .collect();
        let compiled =
            compile_with_scopes(policy, &scope_ids).with_context(|| source.to_owned())?;
        // Pods the new policy scopes are registered before the switch (a
        // registered pod whose namespace has no rules yet just gets the
        // node-wide ones); pods it no longer scopes are dropped after it, so
        // the policy in force always finds its pods.
        let wanted = self.pod_table(&policy.pod_namespaces, &scope_ids);
        self.scopes.register(&wanted, &own_rule_scopes)?;
        let applied = self.maps.apply(Arc::new(compiled))?;
        self.own_rule_scopes = own_rule_scopes;
        self.pod_namespaces = policy.pod_namespaces.clone();
        self.scope_ids = scope_ids;
        self.applied_once = true;
        self.scopes.unregister_others(&wanted)?;
        self.learner.apply(&policy.learning)?; // issue 11
                                               // Parsing and compiling a large policy leaves freed heap behind that
                                               // glibc keeps; give it back so the agent's resident size is what it
                                               // actually holds (the previous and current compiled policies).
        crate::sys::process::release_free_heap();
        tracing::info!(
            source,
            generation = applied.generation,
            rules = policy.rules.len(),
            scopes = self.scope_ids.len(),
            scoped_pods = wanted.len(),
            v4_entries = applied.v4_entries,
            v6_entries = applied.v6_entries,
            map_writes = applied.map_writes,
            elapsed_ms = applied.elapsed.as_secs_f64() * 1e3,
            "policy applied"
        );
        Ok(applied)
    }

    fn pod_table(
        &self,
        pod_namespaces: &BTreeMap<String, String>,
        scope_ids: &BTreeMap<String, u16>,
    ) -> HashMap<u64, u16> {
        if scope_ids.is_empty() {
            return HashMap::new();
        }
        pods::scope_table(&pods::scan(&self.cgroup_root), pod_namespaces, scope_ids)
    }

    /// Re-scans pod cgroups (pods come and go between policy changes) and
    /// keeps the ones whose namespace has scoped rules registered. Until
    /// this agent has applied a policy it does not know which pods the
    /// policy in force needs (an adopted one), so it leaves them alone.
    pub fn refresh_pods(&mut self) -> Result<()> {
        self.learner.tick(); // issue 11: ttl expiry, every tick
        if !self.applied_once {
            return Ok(());
        }
        let wanted = self.pod_table(&self.pod_namespaces, &self.scope_ids);
        let changed = self.scopes.register(&wanted, &self.own_rule_scopes)?;
        let removed = self.scopes.unregister_others(&wanted)?;
        if changed + removed > 0 {
            tracing::info!(
                scoped = wanted.len(),
                changed,
                removed,
                "pod cgroups registered"
            );
        }
        Ok(())
    }
}

//! Turning a policy into kernel state: compile it with this node's scope
//! ids, keep pod cgroups registered to their namespace's scope, and switch
//! the maps atomically.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};

use super::pods;
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
        })
    }

    pub fn active_generation(&self) -> u32 {
        self.maps.active_config().map(|c| c.generation).unwrap_or(0)
    }

    pub fn apply(&mut self, policy: &Policy, source: &str) -> Result<Applied> {
        let namespaces: Vec<&str> = policy
            .rules
            .iter()
            .filter_map(|r| r.scope.as_deref())
            .collect();
        let scope_ids = self.scopes.ids_for(namespaces)?;
        let compiled =
            compile_with_scopes(policy, &scope_ids).with_context(|| source.to_owned())?;
        // Register pods first: a pod mapped to a scope with no rules yet just
        // gets the node-wide rules.
        self.pod_namespaces = policy.pod_namespaces.clone();
        self.scope_ids = scope_ids;
        self.refresh_pods()?;
        let applied = self.maps.apply(Arc::new(compiled))?;
        tracing::info!(
            source,
            generation = applied.generation,
            rules = policy.rules.len(),
            scopes = self.scope_ids.len(),
            v4_entries = applied.v4_entries,
            v6_entries = applied.v6_entries,
            map_writes = applied.map_writes,
            elapsed_ms = applied.elapsed.as_secs_f64() * 1e3,
            "policy applied"
        );
        Ok(applied)
    }

    /// Re-scans pod cgroups (pods come and go between policy changes) and
    /// registers the ones whose namespace has scoped rules.
    pub fn refresh_pods(&mut self) -> Result<()> {
        if self.scope_ids.is_empty() {
            // Nothing scoped: every client gets the node-wide rules. Drop
            // registrations a previous policy needed.
            self.scopes.sync_cgroups(&Default::default())?;
            return Ok(());
        }
        let found = pods::scan(&self.cgroup_root);
        let wanted = pods::scope_table(&found, &self.pod_namespaces, &self.scope_ids);
        let (changed, removed) = self.scopes.sync_cgroups(&wanted)?;
        if changed + removed > 0 {
            tracing::info!(
                pods = found.len(),
                scoped = wanted.len(),
                changed,
                removed,
                "pod cgroups registered"
            );
        }
        Ok(())
    }
}

//! Turning a policy into kernel state: compile it with this node's scope
//! ids, keep pod cgroups registered to their namespace's scope, and switch
//! the maps atomically.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result};

use classifier_common::{SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN, SCOPE_NODE};

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
    /// Namespaces the policy in force decided about: those of its pods and
    /// those with a scope id. A pod of any other namespace (its first pod,
    /// seen by the watch before the policy with it is applied) gets no
    /// verdict until then: the node scope would give it the node-wide rules
    /// and let it learn into the node's table, its own scope does not exist
    /// yet, and whether its namespace has rules of its own is not known.
    covered: std::collections::HashSet<String>,
    /// Scope ids of namespaces with rules of their own (not only learning).
    own_rule_scopes: HashSet<u16>,
    /// Whether this agent has switched in a policy of its own yet.
    applied_once: bool,
    /// Learning server-first destinations.
    learner: Learner,
    /// The agent watches the cluster's Pods (`--kubernetes`): it expects
    /// to learn every pod's namespace, so pod roots are marked "namespace
    /// unknown" even before it knows any pod.
    expects_pods: bool,
    /// Pod cgroups that appeared before their Pod was known, by UID.
    waiting: HashMap<String, pods::PodCgroup>,
    /// The pod cgroups on this node as last scanned, kept up to date by
    /// the cgroup watch (`pod_appeared`, `pod_gone`) and rescanned by
    /// `refresh_pods`: an apply does not walk the cgroup tree again.
    tree: Option<pods::PodTree>,
}

impl Applier {
    /// Opens the pinned maps. Must run before capabilities are dropped.
    pub fn open(
        pins: &PinDir,
        cgroup_root: PathBuf,
        expects_pods: bool,
        learn_outside_pods: bool,
    ) -> Result<Self> {
        Ok(Self {
            maps: PolicyMaps::open(pins)?,
            scopes: ScopeMaps::open(pins)?,
            cgroup_root,
            pod_namespaces: BTreeMap::new(),
            scope_ids: BTreeMap::new(),
            covered: Default::default(),
            own_rule_scopes: Default::default(),
            applied_once: false,
            learner: Learner::open(pins, learn_outside_pods)?,
            expects_pods,
            waiting: HashMap::new(),
            tree: None,
        })
    }

    pub fn active_generation(&self) -> u32 {
        self.maps.active_config().map(|c| c.generation).unwrap_or(0)
    }

    /// Compiles `policy` with this node's scope ids and switches to it. Its
    /// pod namespaces are moved into the applier (not copied: at 100k pods
    /// the map is several MiB).
    pub fn apply(&mut self, policy: &mut Policy, source: &str) -> Result<Applied> {
        let mut namespaces: Vec<&str> = policy
            .rules
            .iter()
            .filter_map(|r| r.scope.as_deref())
            .collect();
        let with_rules: std::collections::BTreeSet<&str> = namespaces.iter().copied().collect();
        namespaces.extend(Learner::namespaces(policy)); // learning's scopes
        namespaces.sort_unstable();
        namespaces.dedup();
        let (scope_ids, reused) = self.scopes.ids_for(namespaces)?;
        // A reused id's old learned state goes before any pod gets it.
        self.learner
            .purge(&reused)
            .context("purging the learned state of a reused scope id")?;
        let own_rule_scopes: HashSet<u16> = scope_ids
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
        let covered = covered_namespaces(&policy.pod_namespaces, &scope_ids);
        let wanted = self.pod_table(
            &policy.pod_namespaces,
            &scope_ids,
            &own_rule_scopes,
            &covered,
            false,
        );
        self.scopes.register(&wanted)?;
        let applied = self.maps.apply(Arc::new(compiled))?;
        self.own_rule_scopes = own_rule_scopes;
        self.pod_namespaces = std::mem::take(&mut policy.pod_namespaces);
        self.scope_ids = scope_ids;
        self.applied_once = true;
        self.covered = covered;
        // Cgroups that waited for their Pod (or for the policy that knows
        // its namespace) are in `wanted` now.
        let pod_namespaces = &self.pod_namespaces;
        self.waiting.retain(|uid, pod| {
            let Some(namespace) = pod_namespaces.get(uid) else {
                return true;
            };
            if wanted.contains_key(&pod.cgroup_id) {
                tracing::info!(
                    uid,
                    namespace = %namespace,
                    cgroup_id = pod.cgroup_id,
                    "pod cgroup registered with the policy that knows its namespace"
                );
            }
            false
        });
        self.scopes.unregister_others(&wanted)?;
        // Namespaces this policy no longer needs give their ids back.
        let freed = self.scopes.release_others(&self.scope_ids);
        if let Err(err) = self.learner.purge(&freed) {
            // Purged again before the id is reused.
            tracing::warn!("purging the learned state of freed scope ids failed: {err:#}");
        }
        self.learner.apply(&policy.learning)?;
        // Parsing and compiling a large policy leaves freed heap behind that
        // glibc keeps; give it back so the agent's resident size is what it
        // actually holds (the previous and current compiled policies).
        crate::sys::process::release_free_heap();
        tracing::info!(
            source,
            generation = applied.generation,
            rules = policy.rules.len(),
            scopes = self.scope_ids.len(),
            scopes_freed = freed.len(),
            scoped_pods = pod_entries(&wanted),
            pod_roots = wanted.len() - pod_entries(&wanted),
            v4_entries = applied.v4_entries,
            v6_entries = applied.v6_entries,
            map_writes = applied.map_writes,
            elapsed_ms = applied.elapsed.as_secs_f64() * 1e3,
            "policy applied"
        );
        Ok(applied)
    }

    /// The `CLS_SCOPES` entries the pod cgroups on this node need: each
    /// pod root marked "namespace unknown", and each pod whose namespace is
    /// known under its namespace's scope (or the node scope, for a
    /// namespace without one). Nothing while the agent knows no pods and
    /// does not expect to (no `--kubernetes`, no Pod in the policy): pods
    /// then get the node-wide rules, as every other process.
    fn pod_table(
        &mut self,
        pod_namespaces: &BTreeMap<String, String>,
        scope_ids: &BTreeMap<String, u16>,
        own_rules: &HashSet<u16>,
        covered: &HashSet<String>,
        rescan: bool,
    ) -> HashMap<u64, u32> {
        if !self.knows_pods(pod_namespaces) {
            return HashMap::new();
        }
        if rescan || self.tree.is_none() {
            self.tree = Some(pods::scan(&self.cgroup_root));
        }
        let tree = self.tree.as_ref().expect("scanned above");
        let mut table: HashMap<u64, u32> = tree
            .roots
            .iter()
            .map(|(_, id)| (*id, SCOPE_FLAG_POD_UNKNOWN))
            .collect();
        for pod in &tree.pods {
            if let Some(namespace) = pod_namespaces
                .get(&pod.uid)
                .filter(|ns| covered.contains(ns.as_str()))
            {
                table.insert(pod.cgroup_id, entry(namespace, scope_ids, own_rules));
            }
        }
        table
    }

    /// Whether the agent knows (or expects to know) the namespace of the
    /// node's pods: then pod roots are marked "namespace unknown".
    fn knows_pods(&self, pod_namespaces: &BTreeMap<String, String>) -> bool {
        self.expects_pods || !pod_namespaces.is_empty()
    }

    /// Learning's ttl expiry, every tick.
    pub fn tick(&mut self) {
        self.learner.tick();
    }

    /// Re-scans pod cgroups and registers them under their namespaces
    /// (the safety net behind the inotify watch, or the poll without it).
    /// Until this agent has applied a policy it does not know which pods
    /// the policy in force needs (an adopted one), so it leaves them alone.
    pub fn refresh_pods(&mut self) -> Result<()> {
        if !self.applied_once {
            return Ok(());
        }
        let (pod_namespaces, scope_ids, own_rule_scopes, covered) = (
            std::mem::take(&mut self.pod_namespaces),
            std::mem::take(&mut self.scope_ids),
            std::mem::take(&mut self.own_rule_scopes),
            std::mem::take(&mut self.covered),
        );
        let wanted = self.pod_table(
            &pod_namespaces,
            &scope_ids,
            &own_rule_scopes,
            &covered,
            true,
        );
        (
            self.pod_namespaces,
            self.scope_ids,
            self.own_rule_scopes,
            self.covered,
        ) = (pod_namespaces, scope_ids, own_rule_scopes, covered);
        let changed = self.scopes.register(&wanted)?;
        let removed = self.scopes.unregister_others(&wanted)?;
        if changed + removed > 0 {
            tracing::info!(
                scoped = pod_entries(&wanted),
                pod_roots = wanted.len() - pod_entries(&wanted),
                changed,
                removed,
                "pod cgroups registered"
            );
        }
        Ok(())
    }

    /// A pod cgroup just created: registered at once if its Pod (hence its
    /// namespace) is known; otherwise it stays under its pod root's
    /// "namespace unknown" marker until a policy with its Pod is applied.
    pub fn pod_appeared(&mut self, pod: &pods::PodCgroup) -> Result<()> {
        if let Some(tree) = &mut self.tree {
            tree.pods.retain(|p| p.cgroup_id != pod.cgroup_id);
            tree.pods.push(pod.clone());
        }
        // Before this agent's first policy, or while it knows no pods (and
        // so marks no pod root: pods get the node-wide rules).
        if !self.applied_once || !self.knows_pods(&self.pod_namespaces) {
            return Ok(());
        }
        let Some(namespace) = self.pod_namespaces.get(&pod.uid) else {
            tracing::info!(
                uid = %pod.uid,
                cgroup = %pod.path.display(),
                "new pod cgroup; its Pod is not known yet (no verdict until it is)"
            );
            self.waiting.insert(pod.uid.clone(), pod.clone());
            return Ok(());
        };
        if !self.covered.contains(namespace) {
            tracing::info!(
                uid = %pod.uid,
                namespace = %namespace,
                "new pod cgroup in a namespace the policy in force does not know (no verdict until the policy with it is applied)"
            );
            // The apply that knows its namespace registers it, and says so.
            self.waiting.insert(pod.uid.clone(), pod.clone());
            return Ok(());
        }
        let value = entry(namespace, &self.scope_ids, &self.own_rule_scopes);
        if self.scopes.register_one(pod.cgroup_id, value)? {
            tracing::info!(
                uid = %pod.uid,
                namespace = %namespace,
                cgroup_id = pod.cgroup_id,
                "pod cgroup registered"
            );
        }
        Ok(())
    }

    /// A Pod the watch just saw for the first time (before the policy with
    /// it is compiled): its namespace is known from now on, and its cgroup,
    /// if it is already there, is registered at once when the policy in
    /// force knows its namespace, under the scope that policy gives it
    /// (node-wide rules for a namespace without rules of its own, as for
    /// every pod of such a namespace). The first pod of a namespace the
    /// policy in force does not know stays unregistered (no verdict) until
    /// the policy with the Pod, applied after the watch's debounce.
    pub fn pod_known(&mut self, uid: &str, namespace: &str) -> Result<()> {
        if !self.applied_once || !self.knows_pods(&self.pod_namespaces) {
            return Ok(());
        }
        self.pod_namespaces
            .entry(uid.to_string())
            .or_insert_with(|| namespace.to_string());
        if !self.covered.contains(namespace) {
            // Its cgroup, if waiting, stays unregistered: the policy with
            // the Pod registers it.
            return Ok(());
        }
        let Some(pod) = self.waiting.remove(uid) else {
            return Ok(());
        };
        let value = entry(namespace, &self.scope_ids, &self.own_rule_scopes);
        if self.scopes.register_one(pod.cgroup_id, value)? {
            tracing::info!(
                uid,
                namespace,
                cgroup_id = pod.cgroup_id,
                "pod cgroup registered as its Pod arrived"
            );
        }
        Ok(())
    }

    /// A pod cgroup removed.
    pub fn pod_gone(&mut self, pod: &pods::PodCgroup) {
        if let Some(tree) = &mut self.tree {
            tree.pods.retain(|p| p.cgroup_id != pod.cgroup_id);
        }
        self.waiting.remove(&pod.uid);
        if self.scopes.unregister_one(pod.cgroup_id) {
            tracing::info!(uid = %pod.uid, cgroup_id = pod.cgroup_id, "pod cgroup unregistered");
        }
    }
}

/// The `CLS_SCOPES` value for a pod in `namespace`.
fn entry(namespace: &str, scope_ids: &BTreeMap<String, u16>, own_rules: &HashSet<u16>) -> u32 {
    match scope_ids.get(namespace) {
        Some(id) if own_rules.contains(id) => u32::from(*id) | SCOPE_FLAG_OWN_RULES,
        Some(id) => u32::from(*id),
        None => u32::from(SCOPE_NODE),
    }
}

/// The namespaces a policy decided about: its pods' and those with an id.
fn covered_namespaces(
    pod_namespaces: &BTreeMap<String, String>,
    scope_ids: &BTreeMap<String, u16>,
) -> HashSet<String> {
    pod_namespaces
        .values()
        .chain(scope_ids.keys())
        .cloned()
        .collect()
}

/// Entries of pods (not pod roots) in a table from `pod_table`.
fn pod_entries(table: &HashMap<u64, u32>) -> usize {
    table
        .values()
        .filter(|v| *v & SCOPE_FLAG_POD_UNKNOWN == 0)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_their_namespace_scope_or_the_node_scope() {
        let ids: BTreeMap<String, u16> = [("team-a".to_owned(), 3), ("learn-only".to_owned(), 4)]
            .into_iter()
            .collect();
        let own: HashSet<u16> = [3].into_iter().collect();
        assert_eq!(entry("team-a", &ids, &own), 3 | SCOPE_FLAG_OWN_RULES);
        assert_eq!(entry("learn-only", &ids, &own), 4);
        assert_eq!(entry("no-rules", &ids, &own), u32::from(SCOPE_NODE));
        let table: HashMap<u64, u32> = [(1, SCOPE_FLAG_POD_UNKNOWN), (2, 3), (3, 0)]
            .into_iter()
            .collect();
        assert_eq!(pod_entries(&table), 2);
    }
}

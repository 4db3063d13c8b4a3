//! Turning a policy into kernel state: compile it with this node's scope
//! ids, keep pod cgroups registered to their namespace's scope, and switch
//! the maps atomically; or, for a document policy kept live
//! ([`LivePolicy`]), write each change's entries in place
//! ([`PolicyMaps::patch`]) and switch only when the live policy compiled
//! in full.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, Result};

use classifier_common::{SCOPE_FLAG_OWN_RULES, SCOPE_FLAG_POD_UNKNOWN, SCOPE_NODE};

use super::{learning::Learner, pods};
use crate::{
    datapath::{policy_maps::Applied, PinDir, PolicyMaps, ScopeMaps},
    policy::{
        compile::{compile_with_scopes, CompiledPolicy},
        live::{Change, LivePolicy, Outcome, PodNamespaces},
        Learning, Policy,
    },
    sources::{DocumentSet, Options},
};

pub struct Applier {
    maps: PolicyMaps,
    scopes: ScopeMaps,
    /// Where pod cgroups are looked for: the cgroup the programs are
    /// attached to.
    cgroup_root: PathBuf,
    /// Pod UID -> namespace: a whole policy's; with a live policy (which
    /// has its own, from the Pods' documents) the pods the watch announced
    /// whose change is not applied yet.
    pod_namespaces: BTreeMap<String, String>,
    scope_ids: BTreeMap<String, u16>,
    /// Namespaces the policy in force decided about: those of its pods and
    /// those with a scope id. A pod of any other namespace (its first pod,
    /// seen by the watch before the policy with it is applied) gets no
    /// verdict until then: the node scope would give it the node-wide rules
    /// and let it learn into the node's table, its own scope does not exist
    /// yet, and whether its namespace has rules of its own is not known.
    covered: HashSet<String>,
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
    /// The document policy in force, kept up to date change by change;
    /// `None` while a whole policy (built-in, or a file in the
    /// classifier's own format) is.
    live: Option<LivePolicy>,
    /// Whether the maps hold `live`'s policy: a new live policy is
    /// switched to in full once.
    live_written: bool,
    /// Namespaces with pods that wait for a scope id (the table was full
    /// when their first pod came); retried at every incremental change.
    id_waiting: BTreeSet<String>,
    /// How Linkerd's documents compile.
    linkerd: Options,
}

/// No pods (a whole policy's live map).
/// Pod UID -> namespace: the live policy's, then the applier's own.
#[derive(Clone, Copy)]
struct Namespaces<'a> {
    live: Option<&'a PodNamespaces>,
    extra: &'a BTreeMap<String, String>,
}

impl<'a> Namespaces<'a> {
    fn of(live: &'a Option<LivePolicy>, extra: &'a BTreeMap<String, String>) -> Self {
        Namespaces {
            live: live.as_ref().map(LivePolicy::pod_namespaces),
            extra,
        }
    }

    fn get(&self, uid: &str) -> Option<&'a str> {
        self.live
            .and_then(|l| l.get(uid))
            .or_else(|| self.extra.get(uid).map(String::as_str))
    }

    fn is_empty(&self) -> bool {
        self.live.is_none_or(PodNamespaces::is_empty) && self.extra.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &'a str> {
        self.live
            .into_iter()
            .flat_map(PodNamespaces::values)
            .chain(self.extra.values().map(String::as_str))
    }
}

/// What one switch installs besides the compiled policy.
struct Switch<'a> {
    scope_ids: BTreeMap<String, u16>,
    own_rule_scopes: HashSet<u16>,
    learning: &'a Learning,
    rules: usize,
    source: &'a str,
}

impl Applier {
    /// Opens the pinned maps. Must run before capabilities are dropped.
    pub fn open(
        pins: &PinDir,
        cgroup_root: PathBuf,
        expects_pods: bool,
        learn_outside_pods: bool,
        linkerd: Options,
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
            live: None,
            live_written: false,
            id_waiting: BTreeSet::new(),
            linkerd,
        })
    }

    pub fn active_generation(&self) -> u32 {
        self.maps.active_config().map(|c| c.generation).unwrap_or(0)
    }

    /// The live document policy in force, if any.
    pub fn live(&self) -> Option<&LivePolicy> {
        self.live.as_ref()
    }

    /// Compiles a whole `policy` with this node's scope ids and switches
    /// to it. Its pod namespaces are moved into the applier (not copied:
    /// at 100k pods the map is several MiB).
    pub fn apply(&mut self, policy: &mut Policy, source: &str) -> Result<Applied> {
        let mut namespaces: Vec<&str> = policy
            .rules
            .iter()
            .filter_map(|r| r.scope.as_deref())
            .collect();
        let with_rules: BTreeSet<&str> = namespaces.iter().copied().collect();
        namespaces.extend(Learner::namespaces(policy)); // learning's scopes
        namespaces.sort_unstable();
        namespaces.dedup();
        let (scope_ids, reused) = self.scopes.ids_for(namespaces)?;
        // A reused id's old learned state goes before any pod gets it.
        self.learner
            .purge(&reused)
            .context("purging the learned state of a reused scope id")?;
        let own_rule_scopes = own_rules(&scope_ids, &with_rules);
        let compiled =
            compile_with_scopes(policy, &scope_ids).with_context(|| source.to_owned())?;
        self.live = None;
        self.live_written = false;
        self.pod_namespaces = std::mem::take(&mut policy.pod_namespaces);
        self.switch(
            compiled,
            Switch {
                scope_ids,
                own_rule_scopes,
                learning: &policy.learning,
                rules: policy.rules.len(),
                source,
            },
        )
    }

    /// Applies changes of the document set in force (from nothing, when
    /// the policy in force is not a document set): in place when the live
    /// policy updated incrementally, else by a switch.
    pub fn apply_changes(&mut self, changes: Vec<Change>, source: &str) -> Result<Applied> {
        let new_namespaces = pod_namespaces_of(&changes);
        let live = self.live_policy()?;
        let outcome = live.apply(changes).with_context(|| source.to_owned())?;
        self.write_live(outcome, &new_namespaces, source)
    }

    /// Brings the document set in force to `set` (a first list, or a
    /// re-list), as the difference between the two.
    pub fn apply_snapshot(&mut self, set: &DocumentSet, source: &str) -> Result<Applied> {
        let live = self.live_policy()?;
        let outcome = live.sync(set).with_context(|| source.to_owned())?;
        self.write_live(outcome, &[], source)
    }

    fn live_policy(&mut self) -> Result<&mut LivePolicy> {
        if self.live.is_none() {
            self.live = Some(LivePolicy::new(self.linkerd.clone())?);
            self.live_written = false;
        }
        Ok(self.live.as_mut().expect("set above"))
    }

    /// Writes what the live policy's update changed.
    fn write_live(
        &mut self,
        outcome: Outcome,
        new_namespaces: &[Arc<str>],
        source: &str,
    ) -> Result<Applied> {
        if outcome.full || !self.live_written {
            return self.switch_live(source);
        }
        self.scope_new_namespaces(new_namespaces)?;
        let live = self.live.as_ref().expect("a live policy is in force");
        let applied = match self.maps.patch(&outcome.delta)? {
            Some(applied) => applied,
            // Not writable in place (see `patch`): a switch of the same.
            None => self.maps.apply(Arc::new(live.compiled()))?,
        };
        let known = live.pod_namespaces();
        self.pod_namespaces
            .retain(|uid, _| !known.contains_key(uid));
        self.register_waiting()?;
        tracing::info!(
            source,
            generation = applied.generation,
            incremental = applied.incremental,
            addresses = outcome.addresses,
            v4_entries = applied.v4_entries,
            v6_entries = applied.v6_entries,
            map_writes = applied.map_writes,
            elapsed_ms = applied.elapsed.as_secs_f64() * 1e3,
            "policy applied"
        );
        Ok(applied)
    }

    /// Gives the namespaces of an incremental change that had no pod before
    /// (and those still waiting for one) their scope ids under
    /// namespace-scoped learning, before the change reaches the kernel.
    /// With the id table full, the change applies all the same and those
    /// namespaces wait: their pods stay out of learning (they neither learn
    /// nor read learned verdicts) until ids are freed, and the warning names
    /// the limit. Rules of a namespace of its own take the full path, where
    /// a want of ids refuses the policy.
    fn scope_new_namespaces(&mut self, new_namespaces: &[Arc<str>]) -> Result<()> {
        let live = self.live.as_ref().expect("a live policy is in force");
        let per_namespace = Learner::per_namespace(&live.settings().learning);
        // Only while some wait (the id table was full): the set walks every
        // pod, which a change must not pay for otherwise.
        if !self.id_waiting.is_empty() {
            let with_pods: HashSet<&str> = live.pod_namespaces().values().collect();
            self.id_waiting.retain(|ns| with_pods.contains(ns.as_str()));
        }
        let mut added = false;
        for ns in new_namespaces {
            if !self.covered.contains(&**ns) {
                self.covered.insert(ns.to_string());
            }
            if per_namespace && !self.scope_ids.contains_key(&**ns) {
                added |= self.id_waiting.insert(ns.to_string());
            }
        }
        if self.id_waiting.is_empty() {
            return Ok(());
        }
        match self.scopes.ids_for(self.id_waiting.iter().map(String::as_str)) {
            Ok((ids, reused)) => {
                self.learner
                    .purge(&reused)
                    .context("purging the learned state of a reused scope id")?;
                self.scope_ids.extend(ids);
                self.id_waiting.clear();
            }
            // Once per namespace that starts waiting, not at every change.
            Err(err) if added => tracing::warn!(
                waiting = self.id_waiting.len(),
                "{err:#}; the change applies, and the pods of these namespaces stay out of learning until ids are freed"
            ),
            Err(_) => {}
        }
        Ok(())
    }

    /// Switches to the live policy in full: its scoped namespaces get ids
    /// (compiling again if the ones it used differ), then as any switch.
    fn switch_live(&mut self, source: &str) -> Result<Applied> {
        let live = self.live.as_mut().expect("a live policy is in force");
        let settings = live.settings();
        let with_rules: BTreeSet<String> =
            settings.scopes().into_iter().map(str::to_owned).collect();
        let mut namespaces: BTreeSet<&str> = with_rules.iter().map(String::as_str).collect();
        namespaces.extend(Learner::namespaces_of(
            &settings.learning,
            live.pod_namespaces().values(),
        ));
        let (scope_ids, reused) = self.scopes.ids_for(namespaces)?;
        self.learner
            .purge(&reused)
            .context("purging the learned state of a reused scope id")?;
        self.id_waiting.clear();
        live.rescope(scope_ids.clone())
            .with_context(|| source.to_owned())?;
        let compiled = live.compiled();
        let own_rule_scopes = own_rules(&scope_ids, &with_rules);
        let rules = compiled.rule_count as usize;
        // The pods announced early that the live policy now has.
        let known = live.pod_namespaces();
        self.pod_namespaces
            .retain(|uid, _| !known.contains_key(uid));
        let learning = live.settings().learning.clone();
        let applied = self.switch(
            compiled,
            Switch {
                scope_ids,
                own_rule_scopes,
                learning: &learning,
                rules,
                source,
            },
        )?;
        self.live_written = true;
        Ok(applied)
    }

    /// Registers the pods `compiled` scopes, switches to it, then drops
    /// the registrations and scope ids it no longer needs.
    fn switch(&mut self, compiled: CompiledPolicy, s: Switch<'_>) -> Result<Applied> {
        let namespaces = Namespaces::of(&self.live, &self.pod_namespaces);
        // Pods the new policy scopes are registered before the switch (a
        // registered pod whose namespace has no rules yet just gets the
        // node-wide ones); pods it no longer scopes are dropped after it, so
        // the policy in force always finds its pods.
        let covered = covered_namespaces(namespaces, &s.scope_ids);
        if self.tree.is_none() && self.knows_pods(namespaces) {
            self.tree = Some(pods::scan(&self.cgroup_root));
        }
        let wanted = self.pod_table(namespaces, &s.scope_ids, &s.own_rule_scopes, &covered);
        self.scopes.register(&wanted)?;
        let applied = self.maps.apply(Arc::new(compiled))?;
        self.own_rule_scopes = s.own_rule_scopes;
        self.scope_ids = s.scope_ids;
        self.applied_once = true;
        self.covered = covered;
        // Cgroups that waited for their Pod (or for the policy that knows
        // its namespace) are in `wanted` now.
        self.waiting.retain(|uid, pod| {
            let Some(namespace) = namespaces.get(uid) else {
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
        self.learner.apply(s.learning)?;
        // A full compile frees its temporaries all at once; give back
        // whatever the allocator still caches of them, so the agent's
        // resident size is what it holds (the previous and current
        // compiled policies).
        crate::allocator::release_free_heap();
        tracing::info!(
            source = s.source,
            generation = applied.generation,
            incremental = false,
            rules = s.rules,
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

    /// Cgroups waiting for their Pod whose namespace the policy in force
    /// now covers: registered (after an incremental update).
    fn register_waiting(&mut self) -> Result<()> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let namespaces = Namespaces::of(&self.live, &self.pod_namespaces);
        let ready: Vec<(String, String)> = self
            .waiting
            .keys()
            .filter_map(|uid| {
                let ns = namespaces.get(uid)?;
                self.covered
                    .contains(ns)
                    .then(|| (uid.clone(), ns.to_owned()))
            })
            .collect();
        for (uid, namespace) in ready {
            let Some(pod) = self.waiting.remove(&uid) else {
                continue;
            };
            let value = entry(&namespace, &self.scope_ids, &self.own_rule_scopes);
            if self.scopes.register_one(pod.cgroup_id, value)? {
                tracing::info!(
                    uid,
                    namespace,
                    cgroup_id = pod.cgroup_id,
                    "pod cgroup registered with the policy that knows its namespace"
                );
            }
        }
        Ok(())
    }

    /// The `CLS_SCOPES` entries the pod cgroups on this node need: each
    /// pod root marked "namespace unknown", and each pod whose namespace is
    /// known under its namespace's scope (or the node scope, for a
    /// namespace without one). Nothing while the agent knows no pods and
    /// does not expect to (no `--kubernetes`, no Pod in the policy): pods
    /// then get the node-wide rules, as every other process.
    fn pod_table(
        &self,
        namespaces: Namespaces<'_>,
        scope_ids: &BTreeMap<String, u16>,
        own_rules: &HashSet<u16>,
        covered: &HashSet<String>,
    ) -> HashMap<u64, u32> {
        let Some(tree) = self.tree.as_ref().filter(|_| self.knows_pods(namespaces)) else {
            return HashMap::new();
        };
        let mut table: HashMap<u64, u32> = tree
            .roots
            .iter()
            .map(|(_, id)| (*id, SCOPE_FLAG_POD_UNKNOWN))
            .collect();
        for pod in &tree.pods {
            if let Some(namespace) = namespaces.get(&pod.uid).filter(|ns| covered.contains(*ns)) {
                table.insert(pod.cgroup_id, entry(namespace, scope_ids, own_rules));
            }
        }
        table
    }

    /// Whether the agent knows (or expects to know) the namespace of the
    /// node's pods: then pod roots are marked "namespace unknown".
    fn knows_pods(&self, namespaces: Namespaces<'_>) -> bool {
        self.expects_pods || !namespaces.is_empty()
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
        let namespaces = Namespaces::of(&self.live, &self.pod_namespaces);
        if self.knows_pods(namespaces) {
            self.tree = Some(pods::scan(&self.cgroup_root));
        }
        let wanted = self.pod_table(
            namespaces,
            &self.scope_ids,
            &self.own_rule_scopes,
            &self.covered,
        );
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
        let namespaces = Namespaces::of(&self.live, &self.pod_namespaces);
        // Before this agent's first policy, or while it knows no pods (and
        // so marks no pod root: pods get the node-wide rules).
        if !self.applied_once || !self.knows_pods(namespaces) {
            return Ok(());
        }
        let Some(namespace) = namespaces.get(&pod.uid) else {
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
    /// the policy with the Pod is applied.
    pub fn pod_known(&mut self, uid: &str, namespace: &str) -> Result<()> {
        if !self.applied_once || !self.knows_pods(Namespaces::of(&self.live, &self.pod_namespaces))
        {
            return Ok(());
        }
        let known = Namespaces::of(&self.live, &self.pod_namespaces)
            .get(uid)
            .is_some();
        if !known {
            self.pod_namespaces
                .insert(uid.to_string(), namespace.to_string());
        }
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

/// The namespaces of the Pods `changes` add or replace.
fn pod_namespaces_of(changes: &[Change]) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Apply(doc) if &*doc.kind == "Pod" => doc.namespace.clone(),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The scope ids of namespaces with rules of their own.
fn own_rules<S: std::borrow::Borrow<str> + Ord>(
    scope_ids: &BTreeMap<String, u16>,
    with_rules: &BTreeSet<S>,
) -> HashSet<u16> {
    scope_ids
        .iter()
        .filter(|(ns, _)| with_rules.contains(ns.as_str()))
        .map(|(_, id)| *id)
        .collect()
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
    pod_namespaces: Namespaces<'_>,
    scope_ids: &BTreeMap<String, u16>,
) -> HashSet<String> {
    let mut out: HashSet<String> = scope_ids.keys().cloned().collect();
    for ns in pod_namespaces.values() {
        if !out.contains(ns) {
            out.insert(ns.to_owned());
        }
    }
    out
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

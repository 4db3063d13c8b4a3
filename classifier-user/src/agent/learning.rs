//! The agent's side of learning: write `spec.learning` into the
//! kernel's settings after every policy, expire entries older than its
//! ttl at every tick, and tell the kernel when nothing is learned (it then
//! skips the table at connect).

use std::time::Duration;

use anyhow::Result;

use crate::{
    datapath::PinDir,
    learned::LearnedTable,
    policy::{Learning, LearningScope, Policy},
};

pub struct Learner {
    table: LearnedTable,
    /// The settings this agent wrote; `None` until its first policy (an
    /// adopted policy keeps its predecessor's settings, and nothing expires).
    settings: Option<Learning>,
    /// `--learn-outside-pods`.
    outside_pods: bool,
}

impl Learner {
    pub fn open(pins: &PinDir, outside_pods: bool) -> Result<Self> {
        Ok(Self {
            table: LearnedTable::open(pins)?,
            settings: None,
            outside_pods,
        })
    }

    /// The namespaces whose pods need a scope id for learning: every pod's,
    /// under `scope: namespace` (a pod without one would learn into, and
    /// read, the node scope).
    pub fn namespaces(policy: &Policy) -> impl Iterator<Item = &str> {
        Self::namespaces_of(
            &policy.learning,
            policy.pod_namespaces.values().map(String::as_str),
        )
    }

    /// [`Learner::namespaces`] for these settings and the pods' namespaces.
    pub fn namespaces_of<'a>(
        learning: &Learning,
        pod_namespaces: impl Iterator<Item = &'a str> + 'a,
    ) -> impl Iterator<Item = &'a str> {
        let wanted = Self::per_namespace(learning);
        pod_namespaces.filter(move |_| wanted)
    }

    /// Whether every pod's namespace needs a scope id for learning.
    pub fn per_namespace(learning: &Learning) -> bool {
        learning.enabled && learning.scope == LearningScope::Namespace
    }

    pub fn apply(&mut self, learning: &Learning) -> Result<()> {
        self.table.write_config(learning, self.outside_pods)?;
        if self.settings.as_ref() != Some(learning) {
            tracing::info!(
                enabled = learning.enabled,
                ttl = %crate::policy::format_ttl(learning.ttl),
                min_observations = learning.min_observations,
                scope = %learning.scope,
                outside_pods = self.outside_pods,
                "learning settings"
            );
        }
        self.settings = Some(learning.clone());
        Ok(())
    }

    /// Purges what scopes `ids` learned (freed, or about to be reused).
    pub fn purge(&mut self, ids: &std::collections::BTreeSet<u16>) -> Result<()> {
        let removed = self.table.purge_scopes(ids)?;
        if removed > 0 {
            tracing::info!(
                scopes = ids.len(),
                removed,
                "learned state of freed scopes purged"
            );
        }
        Ok(())
    }

    /// Expires entries not seen for the ttl; recounts each scope's entries;
    /// sets the "nothing learned" hint again once the table is empty.
    pub fn tick(&mut self) {
        if let Some(settings) = &self.settings {
            let ttl: Duration = settings.ttl;
            match self.table.expire(ttl) {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "learned destinations expired"),
                Err(err) => tracing::warn!("expiring learned destinations failed: {err:#}"),
            }
        }
        // Also under an adopted policy's settings: the kernel may have
        // emptied the table (contradictions), or a tool written to it.
        if let Err(err) = self.table.refresh_hint() {
            tracing::warn!("updating the learned table's hint failed: {err:#}");
        }
    }
}

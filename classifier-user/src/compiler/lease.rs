//! Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes'
//! own controllers do it (client-go's `leaderelection`): one replica
//! holds the lease and renews it; another takes it over only after it has
//! seen the lease unchanged for a whole lease duration. Expiry is judged
//! by this process's own clock from when it last saw the lease change,
//! never from the holder's timestamps, so clock skew between nodes does
//! not matter.
//!
//! Every update carries the lease's resourceVersion: of two replicas
//! racing for it, the API server lets one write and answers the other
//! 409 Conflict.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::info;

/// One replica's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease's record as last seen, and when it was first seen so.
    observed: Option<(Record, Instant)>,
}

/// What changes when the holder renews or another takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew: Option<String>,
    transitions: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity,
            renew: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        }
    }
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Elector {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
        }
    }

    /// How often to call [`Elector::try_lead`]: a third of the lease, so
    /// that two renewals may fail before it lapses.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the lease; true while this replica holds it.
    /// Errors are the API server's (the caller retries).
    pub async fn try_lead(&mut self) -> Result<bool> {
        let now = Instant::now();
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .context("reading the lease")?
        else {
            return self.create().await;
        };
        let record = Record::of(&lease);
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            seen => {
                let holder_changed = seen.as_ref().map(|(r, _)| &r.holder) != Some(&record.holder);
                if holder_changed && record.holder.as_deref() != Some(self.identity.as_str()) {
                    info!(lease = %self.name, holder = ?record.holder, "waiting to lead: the lease is held");
                }
                self.observed = Some((record.clone(), now));
            }
        }
        let mine = record.holder.as_deref() == Some(self.identity.as_str());
        let lapsed = record.holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, since)| now.duration_since(*since) >= self.duration);
        if !mine && !lapsed {
            return Ok(false);
        }
        if !mine {
            info!(lease = %self.name, previous = ?record.holder, "taking over the lease");
        }
        self.update(lease, mine).await
    }

    fn spec(&self, acquire: bool, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: acquire.then(|| now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn create(&mut self) -> Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec(true, 0)),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(lease) => {
                info!(lease = %self.name, "created the lease: leading");
                self.observed = Some((Record::of(&lease), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e).context("creating the lease"),
        }
    }

    /// Renews the lease (`mine`) or takes it over.
    async fn update(&mut self, mut lease: Lease, mine: bool) -> Result<bool> {
        let old = lease.spec.clone().unwrap_or_default();
        let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let mut spec = self.spec(!mine, transitions);
        if mine {
            spec.acquire_time = old.acquire_time;
        }
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(lease) => {
                self.observed = Some((Record::of(&lease), Instant::now()));
                Ok(true)
            }
            // Another replica wrote it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e).context("renewing the lease"),
        }
    }

    /// Gives the lease up (on a clean stop), so another replica need not
    /// wait for it to lapse.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .context("releasing the lease")?;
        Ok(())
    }
}

//! `classifier compiler`: watches the cluster's policy sources once and
//! publishes what the node agents read of them as `ClassifierSlice`
//! objects ([`crate::sources::kubernetes::slices`]), so that a node
//! watches those instead of every Pod in the cluster.
//!
//! ```text
//! Pods, Services, Namespaces,   watchers ─> SliceTable ─(writes, batched)─> ClassifierSlices ─> node agents
//! Servers, EgressNetworks                    (pruned JSON per object)        + the "synced" marker
//! ```
//!
//! - Replicas elect a leader on a Lease ([`lease`]); only the leader
//!   watches and writes. A leader that cannot renew its lease within two
//!   thirds of its duration, or finds another holder, exits (its
//!   Deployment starts it again as a follower).
//! - A new leader reads the slices there are first and writes only what
//!   differs from the cluster, once every kind is listed ([`table`]).
//! - After its first complete publication it writes the marker slice,
//!   which the nodes wait for before reading any slice.
//! - Each object is checked as a node would read it: an object a node
//!   would skip (over the label limits, unreadable) is left out, with a
//!   warning here rather than on every node.

use std::time::Duration;

use anyhow::Result;
use kube::{api::Api, Client};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

mod lease;
mod project;
mod publish;
mod table;

pub use lease::Elector;
pub use project::project;
pub use publish::Publisher;
pub use table::{object_text, Limits, SliceKind, SliceTable, Write};

/// The Lease the replicas elect their leader on.
pub const LEASE_NAME: &str = "classifier-compiler";

/// What `classifier compiler` runs with.
#[derive(Clone, Debug)]
pub struct CompilerOptions {
    /// Where the slices and the lease live.
    pub namespace: String,
    /// This replica's name in the lease (its pod's name).
    pub identity: String,
    /// How long a lease lasts unrenewed before another replica takes it.
    pub lease_duration: Duration,
    /// Objects per slice (see [`Limits`]).
    pub objects_per_slice: usize,
    /// Changes are written together once none came for this long (at
    /// most [`publish::FLUSH_MAX`] after the first).
    pub flush_quiet: Duration,
}

impl Default for CompilerOptions {
    fn default() -> Self {
        CompilerOptions {
            namespace: "classifier-system".to_owned(),
            identity: String::new(),
            lease_duration: Duration::from_secs(15),
            objects_per_slice: crate::sources::kubernetes::slices::DEFAULT_SLICE_OBJECTS,
            flush_quiet: Duration::from_millis(20),
        }
    }
}

/// Waits to lead, then publishes until the lease is lost (an error), the
/// watch fails for good (an error) or SIGTERM/SIGINT (the lease is given
/// up: `Ok`).
pub async fn run(client: Client, opts: CompilerOptions) -> Result<()> {
    let mut elector = Elector::new(
        Api::namespaced(client.clone(), &opts.namespace),
        LEASE_NAME,
        &opts.identity,
        opts.lease_duration,
    );
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    info!(identity = %opts.identity, namespace = %opts.namespace, "starting");
    tokio::select! {
        r = wait_to_lead(&mut elector) => r?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    }
    info!(identity = %opts.identity, "leading: publishing slices");
    let publisher = Publisher::new(client, &opts);
    let outcome = tokio::select! {
        r = publisher.run() => r,
        r = keep_leading(&mut elector) => r,
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    };
    if outcome.is_ok() {
        if let Err(e) = elector.release().await {
            warn!("could not give the lease up (another replica takes it when it lapses): {e:#}");
        }
    }
    outcome
}

async fn wait_to_lead(elector: &mut Elector) -> Result<()> {
    loop {
        match elector.try_lead().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => warn!("leader election: {e:#}"),
        }
        tokio::time::sleep(elector.retry_period()).await;
    }
}

/// Renews the lease every retry period; an error once it is another's, or
/// when it could not be renewed for two thirds of its duration (it may
/// lapse soon after, and two leaders must not write for long).
async fn keep_leading(elector: &mut Elector) -> Result<()> {
    let deadline = elector.retry_period() * 2;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(elector.retry_period()).await;
        // Bounded: a renewal stuck on a dead connection must not outlive
        // the lease while this replica writes on.
        let left = deadline.saturating_sub(renewed.elapsed());
        let attempt = tokio::time::timeout(left, elector.try_lead())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {left:?}")));
        match attempt {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => anyhow::bail!("another replica holds the lease now; stopping"),
            Err(e) if renewed.elapsed() < deadline => warn!("renewing the lease: {e:#}"),
            Err(e) => {
                anyhow::bail!("could not renew the lease for {deadline:?}; stopping: {e:#}")
            }
        }
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease: only the leader runs the controllers.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Context, run, spawn_readiness};

/// Leader election on a `coordination.k8s.io/v1` Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal; a standby takes over within about this long
    /// after the leader dies.
    pub lease_duration: Duration,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost leadership: stopping so that another replica takes over cleanly")]
    LostLeadership,
    #[error(
        "the controllers stopped while this replica led ({0}); the lease is released and the process exits so that another replica takes over"
    )]
    ControllersStopped(String),
}

/// How often a standby asks whether the Lease is free. kube-lease-manager's own loop sleeps
/// until the holder's Lease would expire, so a Lease released at shutdown sat unused for up to
/// `lease_duration`; client-go's standbys likewise retry every 2 s.
const STANDBY_POLL: Duration = Duration::from_secs(2);

/// A Lease manager for `election` (it creates the Lease when missing).
async fn lease_manager(
    ctx: &Context,
    election: &LeaderElection,
) -> Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError> {
    let seconds = u64::max(election.lease_duration.as_secs(), 2);
    kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &election.lease_name)
        .with_namespace(&election.lease_namespace)
        .with_identity(&election.identity)
        .with_duration(seconds)
        .with_grace(u64::max(seconds / 3, 1))
        .build()
        .await
}

/// Waits as a standby until this replica leads, runs the controllers while it does, and on
/// shutdown lets in-flight reconciles finish and releases the lease so a standby takes over at
/// once. Losing the lease stops the controllers and returns an error (the pod restarts as a
/// standby).
pub async fn run_with_leader_election(
    ctx: Arc<Context>,
    election: LeaderElection,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ElectionError> {
    lead_with(ctx, election, shutdown, run).await
}

/// [`run_with_leader_election`] with the work to do while leading passed in (tests pass work
/// that fails). If the work ends while this replica leads and no shutdown was asked for — a
/// panicking reconcile ends the controller task — the replica must not keep renewing a Lease it
/// does nothing with (a zombie leader): it releases the Lease and returns
/// [`ElectionError::ControllersStopped`], so the process exits non-zero and a standby takes over.
pub async fn lead_with<F, Fut>(
    ctx: Arc<Context>,
    election: LeaderElection,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    work: F,
) -> Result<(), ElectionError>
where
    F: FnOnce(Arc<Context>, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    spawn_readiness(&ctx, shutdown.clone());
    // An API server that cannot be reached yet is waited for (the replica stays unready), not a
    // crash loop.
    let mut manager = loop {
        match lease_manager(&ctx, &election).await {
            Ok(manager) => break manager,
            Err(e) => warn!(error = %e, "leader election: cannot reach the Lease yet; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    };
    ctx.metrics.leader.set(0);
    info!(lease = %election.lease_name, identity = %election.identity, "standby: waiting for the lease");
    // A manager that has seen the Lease held sleeps until it would expire; each poll a fresh one
    // reads it again, so a Lease released at shutdown is taken within a poll.
    loop {
        let failed = tokio::select! {
            changed = tokio::time::timeout(STANDBY_POLL, manager.changed()) => match changed {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) | Err(_) => false,
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election: cannot take the Lease; retrying");
                    true
                }
            },
            _ = shutdown.changed() => {
                let _ = manager.release().await;
                return Ok(());
            }
        };
        if failed {
            tokio::select! {
                () = tokio::time::sleep(STANDBY_POLL) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        match lease_manager(&ctx, &election).await {
            Ok(fresh) => manager = fresh,
            Err(e) => warn!(error = %e, "leader election: cannot read the Lease; retrying"),
        }
    }
    let (mut leading, lease_task) = manager.watch().await;
    info!(identity = %election.identity, "leading");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut controllers = tokio::spawn(work(ctx.clone(), stopped));
    let mut stopped_early: Option<String> = None;
    let lost = loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() { break true; }
            }
            _ = shutdown.changed() => break false,
            ended = &mut controllers => {
                let why = match ended {
                    Err(e) if e.is_panic() => "a reconcile panicked".to_owned(),
                    Err(e) => e.to_string(),
                    Ok(()) => "they returned".to_owned(),
                };
                tracing::error!(%why, "the controllers stopped while leading; releasing the lease");
                stopped_early = Some(why);
                break false;
            }
        }
    };
    let _ = stop.send(true);
    if stopped_early.is_none() {
        let _ = controllers.await;
    }
    ctx.metrics.leader.set(0);
    drop(leading);
    // Closing the channel ends the lease task; releasing lets a standby lead at once.
    if let Ok(Ok(manager)) = lease_task.await
        && let Err(e) = manager.release().await
    {
        warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
    }
    match (stopped_early, lost) {
        (Some(why), _) => Err(ElectionError::ControllersStopped(why)),
        (None, true) => Err(ElectionError::LostLeadership),
        (None, false) => Ok(()),
    }
}

//! The operator: a kube-runtime Controller for DatabricksIdentityGrants.
//!
//! - `reconcile.rs`: one reconcile (I/O, in the order resolve → validate → desired → act → status);
//! - `plan.rs`: the pure decisions (assignment names, desired vs observed);
//! - `conditions.rs`: condition bookkeeping;
//! - `resolve.rs`: identity, role and per-scope assignment caches;
//! - `claims.rs`: which grants claim which assignment names (shared tuples, conflicts).

pub mod claims;
pub mod concurrency;
pub mod conditions;
pub mod decide;
pub mod events;
pub mod execute;
pub mod index;
pub mod lenient;
pub mod plan;
pub mod policy_status;
pub mod reconcile;
pub mod report;
pub mod resolve;
pub mod retry;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::Api;
use kube::ResourceExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tracing::{info, warn};

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef};

use crate::api::{DatabricksIdentityGrant, GrantPolicy};
use crate::azure::ResourceId;
use crate::azure::credentials::ArmClients;
use crate::policy::evaluate::PolicyMode;
use resolve::{Resolver, ScopeAssignments};

/// Tunables of the controller.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// How often every grant is compared with Azure (jittered ±10%).
    pub resync_interval: Duration,
    /// How often the scope refresher lists every scope in use and wakes the grants at a scope
    /// whose assignments changed in Azure (drift); `None` is the resync interval. Shorter heals
    /// out-of-band removals sooner at one ARM read per scope per interval.
    pub drift_check_interval: Option<Duration>,
    /// Retry interval after errors that need a person (missing role, no permission).
    pub slow_retry: Duration,
    pub max_concurrent_reconciles: u16,
    /// In-flight ARM requests per subscription.
    pub max_arm_requests_per_subscription: usize,
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// How long resolved identities and roles are cached.
    pub cache_ttl: Duration,
    /// Name reported on Events.
    pub instance: String,
    /// Whether namespaces no GrantPolicy governs may grant anything.
    pub policy_mode: PolicyMode,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            resync_interval: Duration::from_secs(600),
            drift_check_interval: None,
            slow_retry: Duration::from_secs(300),
            max_concurrent_reconciles: 16,
            max_arm_requests_per_subscription: 8,
            namespaces: Vec::new(),
            cache_ttl: Duration::from_secs(600),
            instance: "dbx-identity-operator".into(),
            policy_mode: PolicyMode::Require,
        }
    }
}

/// Shared by every reconcile: the clients, and the state owners each with a narrow API.
pub struct Context {
    pub client: kube::Client,
    pub arm: ArmClients,
    /// Identities and roles, cached per credential.
    pub resolver: Resolver,
    /// Each scope's assignments as last listed (the drift check's memory).
    pub scopes: ScopeAssignments,
    /// Which grant claims which assignment name (shared tuples, conflicts).
    pub claims: claims::ClaimIndex,
    /// Grants, GrantPolicies and Namespaces as the watches last saw them.
    pub index: index::ClusterIndex,
    /// ARM requests in flight per subscription, and one writer per assignment.
    pub concurrency: concurrency::Concurrency,
    /// Each grant's backoff.
    pub backoff: retry::Backoff,
    pub events: events::EventPublisher,
    pub settings: ControllerSettings,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Per controller (its namespace, or `None` for all): wakes a grant out of schedule.
    triggers: Mutex<Vec<(Option<String>, GrantTrigger)>>,
    /// Set once the readiness probe runs (see [`spawn_readiness`]).
    readiness: OnceLock<()>,
}

type GrantTrigger = futures::channel::mpsc::UnboundedSender<ObjectRef<DatabricksIdentityGrant>>;

impl Context {
    pub fn new(
        client: kube::Client,
        arm: ArmClients,
        settings: ControllerSettings,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Self {
        Context {
            events: events::EventPublisher::new(client.clone(), "dbx-identity-operator", &settings.instance),
            client,
            arm,
            resolver: Resolver::new(settings.cache_ttl),
            // The scope refresher lists every scope once per resync; grants list a scope
            // themselves only when that has not happened for longer.
            scopes: ScopeAssignments::new(settings.resync_interval.mul_f64(1.5)),
            claims: claims::ClaimIndex::default(),
            index: index::ClusterIndex::default(),
            concurrency: concurrency::Concurrency::new(settings.max_arm_requests_per_subscription),
            backoff: retry::Backoff::new(settings.resync_interval, settings.slow_retry),
            settings,
            metrics,
            triggers: Mutex::default(),
            readiness: OnceLock::new(),
        }
    }

    /// Wakes every grant that asks for, or manages, an assignment at one of `scopes`.
    pub fn reconcile_grants_at(&self, scopes: &[ResourceId]) {
        let scopes: std::collections::HashSet<String> = scopes.iter().map(ResourceId::normalized).collect();
        self.wake_grants(|grant| {
            let wanted = grant
                .spec
                .role_assignments
                .iter()
                .any(|ra| ResourceId::parse(&ra.scope).is_ok_and(|scope| scopes.contains(&scope.normalized())));
            let managed = grant.status.iter().flat_map(|s| &s.managed_assignments).any(|id| {
                crate::azure::RoleAssignmentId::parse(id).is_some_and(|id| scopes.contains(&id.scope().normalized()))
            });
            wanted || managed
        });
    }

    /// Reconciles, out of schedule, every known grant `affected` selects.
    pub fn wake_grants(&self, affected: impl Fn(&DatabricksIdentityGrant) -> bool) {
        let triggers = self.triggers.lock().unwrap_or_else(|p| p.into_inner());
        for grant in self.index.grants() {
            if !affected(&grant) {
                continue;
            }
            let namespace = grant.metadata.namespace.clone();
            for (watched, trigger) in triggers.iter() {
                if watched.is_none() || *watched == namespace {
                    let _ = trigger.unbounded_send(ObjectRef::from(grant.as_ref()));
                }
            }
        }
    }
}

/// `namespace/name` of a grant: its key in logs, backoff and claims.
pub fn grant_key(grant: &DatabricksIdentityGrant) -> String {
    format!("{}/{}", grant.namespace().unwrap_or_default(), grant.name_any())
}

/// Readiness, the same for a leader and a standby: the API server answers and serves the grant
/// CRD (a one-item metadata list every few seconds). A standby is ready — it is doing its job —
/// so a Deployment of two replicas reports 2/2 and rollouts finish; a replica that cannot reach
/// the API server is not. Started once per process, by whichever of [`run`] and
/// [`run_with_leader_election`] comes first.
pub fn spawn_readiness(ctx: &Arc<Context>) {
    if ctx.readiness.set(()).is_err() {
        return;
    }
    let (client, metrics) = (ctx.client.clone(), ctx.metrics.clone());
    tokio::spawn(async move {
        let grants: Api<DatabricksIdentityGrant> = Api::all(client);
        // Metadata only: one unreadable grant must not make the operator unready.
        let params = kube::api::ListParams::default().limit(1);
        loop {
            let reachable = tokio::time::timeout(Duration::from_secs(5), grants.list_metadata(&params)).await;
            let ready = matches!(reachable, Ok(Ok(_)));
            if metrics.ready.swap(ready, Ordering::Relaxed) != ready {
                match &reachable {
                    Ok(Ok(_)) => info!("ready: the API server answers"),
                    Ok(Err(e)) => warn!(error = %e, "not ready: cannot list grants"),
                    Err(_) => warn!("not ready: listing grants timed out"),
                }
            }
            tokio::time::sleep(Duration::from_secs(if ready { 5 } else { 2 })).await;
        }
    });
}

/// Keeps the grant gauges current (on the replica that reconciles).
fn spawn_gauges(ctx: Arc<Context>) {
    tokio::spawn(async move {
        loop {
            let grants = ctx.index.grants();
            let mut by_ready: HashMap<&str, i64> = [("True", 0), ("False", 0), ("Unknown", 0)].into();
            let mut managed = 0i64;
            for g in &grants {
                let ready = g
                    .status
                    .iter()
                    .flat_map(|s| &s.conditions)
                    .find(|c| c.type_ == "Ready")
                    .map_or("Unknown", |c| if c.status == "True" { "True" } else { "False" });
                *by_ready.entry(ready).or_default() += 1;
                managed += g.status.as_ref().map_or(0, |s| s.managed_assignments.len() as i64);
            }
            for (ready, n) in by_ready {
                ctx.metrics.grants.get_or_create(&crate::telemetry::ReadyLabels { ready: ready.into() }).set(n);
            }
            ctx.metrics.managed_role_assignments.set(managed);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// Lists every scope in use once per resync interval (not once per grant) and wakes the grants
/// at a scope whose assignments changed in Azure: drift heals within one interval at a cost of
/// one read per scope.
fn spawn_scope_refresher(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        // Due one tick early, so each scope is listed once per resync interval, never twice.
        let interval = ctx.settings.drift_check_interval.unwrap_or(ctx.settings.resync_interval);
        let tick = (interval / 50).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let period = interval.saturating_sub(tick);
        let stopped = shutdown_signal(shutdown).shared();
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stopped.clone() => break,
            }
            let arm = ctx.arm.operator().clone();
            let in_use_for = interval.max(ctx.settings.resync_interval) * 2;
            let changed: Vec<ResourceId> = futures::stream::iter(ctx.scopes.due(period.max(tick), in_use_for))
                .map(|scope| {
                    let (ctx, arm) = (ctx.clone(), arm.clone());
                    async move {
                        let _permit = ctx.concurrency.arm_permit(&scope).await;
                        match ctx.scopes.refresh(&arm, &scope).await {
                            Ok(true) => Some(scope),
                            Ok(false) => None,
                            Err(e) => {
                                tracing::debug!(%scope, error = %e, "scope refresh failed; grants there list it themselves");
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(4)
                .filter_map(futures::future::ready)
                .collect()
                .await;
            if !changed.is_empty() {
                tracing::debug!(
                    scopes = changed.len(),
                    "role assignments changed in Azure; reconciling the grants there"
                );
                ctx.reconcile_grants_at(&changed);
            }
        }
    });
}

async fn shutdown_signal(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
}

/// What identifies a version of an object for re-judging grants: its uid and generation (a
/// policy re-created under the same name starts at generation 1 again, with a new uid).
type PolicyVersion = (Option<String>, Option<i64>);

/// The one GrantPolicy watch: it feeds the policy store the policy gate reads and, from the same
/// event (after the store has it), wakes every grant when a policy's spec changes, a policy
/// appears or goes, or a relist finds a different set — so a grant is never judged against a
/// policy older than the event that woke it. Every event also goes to the policy status
/// controller.
fn spawn_policy_watch(
    ctx: Arc<Context>,
    status: futures::channel::mpsc::UnboundedSender<Result<GrantPolicy, watcher::Error>>,
) -> Store<GrantPolicy> {
    let (reader, writer) = reflector::store();
    let stream = lenient::watch::<GrantPolicy>(ctx.client.clone(), None).default_backoff().reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: HashMap<String, PolicyVersion> = HashMap::new();
        let mut relisted: Option<HashMap<String, PolicyVersion>> = None;
        while let Some(event) = stream.next().await {
            let version = |p: &GrantPolicy| (p.metadata.uid.clone(), p.metadata.generation);
            let changed = match event {
                Ok(watcher::Event::Apply(p)) => {
                    let changed = seen.insert(p.name_any(), version(&p)) != Some(version(&p));
                    let _ = status.unbounded_send(Ok(p));
                    changed
                }
                Ok(watcher::Event::Delete(p)) => seen.remove(&p.name_any()).is_some(),
                Ok(watcher::Event::Init) => {
                    relisted = Some(HashMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(p)) => {
                    relisted.get_or_insert_default().insert(p.name_any(), version(&p));
                    let _ = status.unbounded_send(Ok(p));
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let current = relisted.take().unwrap_or_default();
                    std::mem::replace(&mut seen, current) != seen
                }
                Err(e) => {
                    warn!(error = %e, "GrantPolicy watch");
                    false
                }
            };
            if changed {
                tracing::debug!("GrantPolicies changed; re-judging every grant");
                ctx.wake_grants(|_| true);
            }
        }
    });
    reader
}

/// The one Namespace watch: it feeds the label store the policy gate reads and, from the same
/// event, wakes the grants of a namespace whose labels changed (or that went).
fn spawn_namespace_watch(ctx: Arc<Context>) -> Store<Namespace> {
    type Labels = std::collections::BTreeMap<String, String>;
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Namespace>::all(ctx.client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: HashMap<String, Labels> = HashMap::new();
        let mut relisted: Option<HashMap<String, Labels>> = None;
        while let Some(event) = stream.next().await {
            let labels = |ns: &Namespace| ns.metadata.labels.clone().unwrap_or_default();
            let changed: Vec<String> = match event {
                Ok(watcher::Event::Apply(ns)) => {
                    let name = ns.name_any();
                    if seen.insert(name.clone(), labels(&ns)) == Some(labels(&ns)) { vec![] } else { vec![name] }
                }
                Ok(watcher::Event::Delete(ns)) => {
                    seen.remove(&ns.name_any()).map(|_| ns.name_any()).into_iter().collect()
                }
                Ok(watcher::Event::Init) => {
                    relisted = Some(HashMap::new());
                    vec![]
                }
                Ok(watcher::Event::InitApply(ns)) => {
                    relisted.get_or_insert_default().insert(ns.name_any(), labels(&ns));
                    vec![]
                }
                Ok(watcher::Event::InitDone) => {
                    let current = relisted.take().unwrap_or_default();
                    let mut names: Vec<String> =
                        current.iter().filter(|(n, l)| seen.get(*n) != Some(*l)).map(|(n, _)| n.clone()).collect();
                    names.extend(seen.keys().filter(|n| !current.contains_key(*n)).cloned());
                    seen = current;
                    names
                }
                Err(e) => {
                    warn!(error = %e, "Namespace watch");
                    vec![]
                }
            };
            if !changed.is_empty() {
                ctx.wake_grants(|g| g.metadata.namespace.as_ref().is_some_and(|ns| changed.contains(ns)));
            }
        }
    });
    reader
}

/// Runs the controllers until `shutdown` resolves, then lets in-flight reconciles finish.
pub async fn run(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    // Only the replica that leads (or the only one) runs this.
    ctx.metrics.leader.set(1);
    spawn_readiness(&ctx);
    let namespaces: Vec<Option<String>> = if ctx.settings.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let config = ControllerConfig::default().concurrency(ctx.settings.max_concurrent_reconciles);
    let controllers: Vec<Controller<DatabricksIdentityGrant>> = namespaces
        .iter()
        .map(|ns| {
            let (trigger, triggered) = futures::channel::mpsc::unbounded();
            ctx.triggers.lock().unwrap_or_else(|p| p.into_inner()).push((ns.clone(), trigger));
            let (reader, writer) = reflector::store();
            let (index, mut relists) = (ctx.clone(), claims::RelistTracker::new(ns.clone()));
            let grants = lenient::watch::<DatabricksIdentityGrant>(ctx.client.clone(), ns.as_deref())
                // managedFields are never read and are most of a real API server's object size.
                .modify(|g: &mut DatabricksIdentityGrant| g.managed_fields_mut().clear())
                .reflect(writer)
                .inspect_ok(move |event| index.claims.observe(&mut relists, event))
                .applied_objects();
            // Policy and namespace-label changes arrive through `triggered` (see
            // spawn_policy_watch and spawn_namespace_watch).
            Controller::for_stream(grants, reader).with_config(config.clone()).reconcile_on(triggered)
        })
        .collect();
    ctx.index.set_grants(controllers.iter().map(Controller::store).collect());
    let (policy_status, policy_events) = futures::channel::mpsc::unbounded();
    let policy_reader = spawn_policy_watch(ctx.clone(), policy_status);
    ctx.index.set_policies(policy_reader.clone());
    ctx.index.set_namespaces(spawn_namespace_watch(ctx.clone()));
    spawn_gauges(ctx.clone());
    spawn_scope_refresher(ctx.clone(), shutdown.clone());
    info!(namespaces = ?ctx.settings.namespaces, policy_mode = ?ctx.settings.policy_mode, "controller started");
    let mut runs: Vec<futures::future::BoxFuture<'static, ()>> = controllers
        .into_iter()
        .map(|controller| {
            controller
                .graceful_shutdown_on(shutdown_signal(shutdown.clone()))
                .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        warn!(error = %e, "controller");
                    }
                })
                .boxed()
        })
        .collect();
    runs.push(
        Controller::for_stream(policy_events, policy_reader)
            .graceful_shutdown_on(shutdown_signal(shutdown.clone()))
            .run(policy_status::reconcile, policy_status::error_policy, ctx.clone())
            .for_each(|_| async {})
            .boxed(),
    );
    futures::future::join_all(runs).await;
    ctx.triggers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    ctx.metrics.leader.set(0);
    info!("controller stopped");
}

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
    spawn_readiness(&ctx);
    let seconds = u64::max(election.lease_duration.as_secs(), 2);
    // An API server that cannot be reached yet is waited for (the replica stays unready), not a
    // crash loop.
    let manager = loop {
        let built = kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &election.lease_name)
            .with_namespace(&election.lease_namespace)
            .with_identity(&election.identity)
            .with_duration(seconds)
            .with_grace(u64::max(seconds / 3, 1))
            .build()
            .await;
        match built {
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
    let (mut leading, lease_task) = manager.watch().await;
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.changed() => {
                drop(leading);
                if let Ok(Ok(manager)) = lease_task.await { let _ = manager.release().await; }
                return Ok(());
            }
        }
    }
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

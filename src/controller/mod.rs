//! The operator: a kube-runtime Controller for DatabricksIdentityGrants.
//!
//! One reconcile (`reconcile.rs`) is thin async code around pure steps:
//! - reads: the credential, the identity and roles (`resolve.rs`, cached per credential), the
//!   assignments at each scope (`resolve.rs`' scope cache), other grants' claims (`claims.rs`);
//! - `decide.rs` (pure): policy verdicts, the desired set, and from them each entry's outcome,
//!   the writes, removals and write-ahead record (`plan.rs` matches desired with observed);
//! - `execute.rs`: the writes and removals, paced (`concurrency.rs`), and what each did;
//! - `report.rs` (pure): status, conditions (`conditions.rs`), Events (`events.rs`), retry
//!   (`retry.rs`); every reason is an [`crate::api::Reason`].
//!
//! A grant's first write-ahead record rides on the finalizer's write (`intent.rs`, pure).
//!
//! State has owners with narrow APIs: `own_writes.rs` (grant versions our own writes replaced, so
//! a reconcile from one is skipped), `index.rs` (grants, policies, namespaces as watched),
//! `claims.rs`, the resolver and scope cache, `concurrency.rs`, `retry.rs`' backoff. Around the
//! controllers: `watches.rs` (policy and namespace watches that wake grants), `background.rs`
//! (readiness, gauges, the drift-finding scope refresher), `leader.rs`, `policy_status.rs`
//! (GrantPolicy status), `lenient.rs` (objects that do not fit their type).
//!
//! Where things go: a new reason is a variant of `Reason`; a new rule about an entry goes in
//! `decide.rs` (with a row in `decide_tests.rs`); a new Azure call goes in `azure::client` and
//! is made from `execute.rs` (writes) or `resolve.rs` (reads).

pub mod assess;
mod background;
pub mod claims;
pub mod clock;
pub mod concurrency;
pub mod conditions;
pub mod decide;
pub mod events;
pub mod execute;
pub mod expiry;
pub mod index;
pub mod intent;
pub mod leader;
pub mod lenient;
pub mod own_writes;
pub mod pim;
pub mod plan;
pub mod policy_status;
pub mod reconcile;
pub mod report;
pub mod resolve;
pub mod retry;
mod watches;

pub use background::spawn_readiness;
pub use leader::{ElectionError, LeaderElection, lead_with, run_with_leader_election};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use tracing::{info, warn};

use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef};

use crate::api::DatabricksIdentityGrant;
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
    /// How long before an entry's access ends it reads `ExpiringSoon` (with an Event).
    pub expiry_warning: Duration,
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
            expiry_warning: Duration::from_secs(3600),
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
    /// The time expiry is judged by (see `clock.rs`).
    pub clock: clock::Clock,
    /// Grant versions our own writes replaced (a reconcile from one is skipped).
    pub own_writes: own_writes::OwnWrites,
    /// Per controller (its namespace, or `None` for all): wakes a grant out of schedule.
    triggers: Mutex<Vec<(Option<String>, GrantTrigger)>>,
    /// Set once the readiness probe runs (see [`spawn_readiness`]).
    readiness: OnceLock<()>,
}

type GrantTrigger = futures::channel::mpsc::UnboundedSender<ObjectRef<DatabricksIdentityGrant>>;

impl Context {
    /// The caches and limits a reconcile's reads go through.
    pub fn caches(&self) -> assess::Caches<'_> {
        assess::Caches { resolver: &self.resolver, scopes: &self.scopes, concurrency: &self.concurrency }
    }

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
            clock: clock::Clock::default(),
            own_writes: own_writes::OwnWrites::default(),
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

/// Runs the controllers until `shutdown` resolves, then lets in-flight reconciles finish.
pub async fn run(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    // Only the replica that leads (or the only one) runs this.
    ctx.metrics.leader.set(1);
    spawn_readiness(&ctx, shutdown.clone());
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
                // managedFields are never read and are most of a real API server's object size;
                // a settled write-ahead annotation is not read either.
                .modify(|g: &mut DatabricksIdentityGrant| {
                    g.managed_fields_mut().clear();
                    intent::drop_settled(g);
                })
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
    let policy_reader = watches::spawn_policy_watch(ctx.clone(), policy_status, shutdown.clone());
    ctx.index.set_policies(policy_reader.clone());
    ctx.index.set_namespaces(watches::spawn_namespace_watch(ctx.clone(), shutdown.clone()));
    background::spawn_gauges(ctx.clone(), shutdown.clone());
    background::spawn_scope_refresher(ctx.clone(), shutdown.clone());
    background::spawn_expiry_sweeper(ctx.clone(), shutdown.clone());
    info!(namespaces = ?ctx.settings.namespaces, policy_mode = ?ctx.settings.policy_mode, "controller started");
    let mut runs: Vec<futures::future::BoxFuture<'static, ()>> = controllers
        .into_iter()
        .map(|controller| {
            controller
                .graceful_shutdown_on(background::shutdown_signal(shutdown.clone()))
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
            .graceful_shutdown_on(background::shutdown_signal(shutdown.clone()))
            .run(policy_status::reconcile, policy_status::error_policy, ctx.clone())
            .for_each(|_| async {})
            .boxed(),
    );
    futures::future::join_all(runs).await;
    ctx.triggers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    ctx.metrics.leader.set(0);
    info!("controller stopped");
}

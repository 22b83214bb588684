//! Background tasks beside the controllers: readiness, the grant gauges, and the scope
//! refresher that finds drift with one read per scope.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::Api;
use tracing::{info, warn};

use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use super::{Context, expiry};
use crate::api::{DatabricksIdentityGrant, Reason};
use crate::azure::ResourceId;
use crate::azure::pacing::{ProviderKey, ProviderWindow};
use crate::telemetry::{ReadyLabels, WindowLabels};

/// Readiness, the same for a leader and a standby: the API server answers and serves the grant
/// CRD (a one-item metadata list every few seconds). A standby is ready — it is doing its job —
/// so a Deployment of two replicas reports 2/2 and rollouts finish; a replica that cannot reach
/// the API server is not. Started once per process, by whichever of [`super::run`] and
/// [`super::run_with_leader_election`] comes first; ends at shutdown.
pub fn spawn_readiness(ctx: &Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    if ctx.readiness.set(()).is_err() {
        return;
    }
    let (client, metrics) = (ctx.client.clone(), ctx.metrics.clone());
    let stopped = shutdown_signal(shutdown);
    let probe = async move {
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
    };
    tokio::spawn(async move {
        tokio::select! {
            () = probe => {}
            () = stopped => {}
        }
    });
}

/// Keeps the grant gauges current (on the replica that reconciles).
pub(super) fn spawn_gauges(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut shown: HashSet<ReadyLabels> = HashSet::new();
        let stopped = shutdown_signal(shutdown).shared();
        loop {
            let (counts, managed) = grant_counts(&ctx.index.grants());
            // A (ready, reason) no grant has any more reads 0, not its last count.
            for gone in shown.iter().filter(|l| !counts.contains_key(*l)) {
                ctx.metrics.grants.get_or_create(gone).set(0);
            }
            for (labels, n) in &counts {
                ctx.metrics.grants.get_or_create(labels).set(*n);
            }
            shown.extend(counts.into_keys());
            ctx.metrics.managed_role_assignments.set(managed);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                () = stopped.clone() => break,
            }
        }
    });
}

/// Removes role assignments when their access ends, on time: once a second it looks through
/// the grants the watch holds for entries past their end ([`expiry::due_removals`]) and
/// DELETEs their assignments right away — not through the controller's queue, which a cold
/// start or ARM throttling can make minutes long, and without waiting for a request slot that
/// creates hold (DELETEs have their own ARM bucket). An assignment another live grant still
/// wants stays. Then it wakes the grant, whose reconcile records the end in status and sends
/// the Event. A removal that fails is left to that reconcile, which retries it.
pub(super) fn spawn_expiry_sweeper(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        // (grant uid, assignment key, end): each removal is tried once here.
        let mut tried: HashSet<(String, String, Timestamp)> = HashSet::new();
        let stopped = shutdown_signal(shutdown).shared();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stopped.clone() => break,
            }
            let now = ctx.clock.now();
            let grants = ctx.index.grants();
            for (i, n) in expiry::expiring_counts(&grants, now).into_iter().enumerate() {
                let within = expiry::EXPIRING_WINDOWS[i].0;
                ctx.metrics.assignments_expiring.get_or_create(&WindowLabels { within: within.into() }).set(n);
            }
            for grant in grants {
                if grant.meta().deletion_timestamp.is_some() {
                    continue;
                }
                let uid = grant.meta().uid.clone().unwrap_or_default();
                let due: Vec<_> = expiry::due_removals(&grant, now)
                    .into_iter()
                    .filter(|due| tried.insert((uid.clone(), due.id.key(), due.ends)))
                    .collect();
                if !due.is_empty() {
                    tokio::spawn(remove_expired(ctx.clone(), grant, due));
                }
            }
            // Forget what no grant is due for any more (bounded by the grants' entries).
            tried.retain(|(_, _, at)| now.duration_since(*at) < k8s_openapi::jiff::SignedDuration::from_hours(1));
        }
    });
}

async fn remove_expired(ctx: Arc<Context>, grant: Arc<DatabricksIdentityGrant>, due: Vec<expiry::DueRemoval>) {
    let key = super::grant_key(&grant);
    let Ok(validated) = crate::api::validation::validate_grant_spec(&grant.spec) else { return };
    let arm = match super::reconcile::arm_client(&grant, &validated, &ctx).await {
        Ok(arm) => arm,
        Err(e) => {
            warn!(grant = %key, error = %e, "expired assignments wait for the reconcile: no credential");
            ctx.wake_grants(|g| g.meta().uid == grant.meta().uid);
            return;
        }
    };
    let names: HashSet<String> = due.iter().map(|d| d.id.name().to_ascii_lowercase()).collect();
    let others = ctx.claims.others(grant.meta().uid.as_deref(), &names);
    for due in due {
        let id = &due.id;
        if others.wanted.contains(&id.name().to_ascii_lowercase()) {
            continue;
        }
        let _writer = ctx.concurrency.assignment_writer(id.name()).await;
        match super::execute::remove_now(&ctx, &arm, id).await {
            super::report::RemovalOutcome::Removed { confirmed } => {
                ctx.metrics.expiry_removals.inc();
                info!(grant = %key, assignment = %id, expired_at = %due.ends, "access ended: role assignment removed");
                // The Event is sent by whoever removed it (a reconcile may have been first).
                if confirmed {
                    let event = expiry::removed_event(&due.role, &due.scope, due.ends, ctx.clock.now());
                    super::reconcile::publish(&grant, &ctx, vec![event]).await;
                }
            }
            super::report::RemovalOutcome::Failed(e) => {
                warn!(grant = %key, assignment = %id, error = %e, "removal at expiry failed; the reconcile retries it");
            }
        }
    }
    ctx.wake_grants(|g| g.meta().uid == grant.meta().uid);
}

/// Grants by health (which of Ready / Reconciling / Stalled is True), their Ready condition's
/// status and reason, and the role assignments they own. Reasons are the closed set of
/// [`Reason`] codes (anything else counts as `Other`), so the series stay few.
pub fn grant_counts(grants: &[Arc<DatabricksIdentityGrant>]) -> (HashMap<ReadyLabels, i64>, i64) {
    let mut counts: HashMap<ReadyLabels, i64> = HashMap::new();
    let mut managed = 0i64;
    for g in grants {
        let conditions: &[_] = g.status.as_ref().map_or(&[], |s| &s.conditions);
        let health = super::conditions::health_of(conditions).unwrap_or("Unknown");
        let labels = match conditions.iter().find(|c| c.type_ == super::conditions::READY) {
            None => ReadyLabels { health: health.into(), ready: "Unknown".into(), reason: String::new() },
            Some(c) => ReadyLabels {
                health: health.into(),
                ready: if c.status == "True" { "True" } else { "False" }.into(),
                reason: Reason::from_code(&c.reason).map_or("Other", Reason::code).into(),
            },
        };
        *counts.entry(labels).or_default() += 1;
        managed += g.status.as_ref().map_or(0, |s| s.managed_assignments.len() as i64);
    }
    (counts, managed)
}

/// Share of a provider's learned limit the drift checks may spend while that limit is spent:
/// there every list costs a write its slot.
const BUSY_CHECK_SHARE: f64 = 0.05;

/// The due scopes (oldest first) to check now. All of them, except where Microsoft.Authorization's
/// own limit is spent ([`crate::azure::ArmClient::authorization_busy`]): there one check per
/// `window / (limit × BUSY_CHECK_SHARE)` per provider (at 120 a minute, one every
/// 10 s), so writes get the budget and drift is still found, later. `last` is when each provider
/// was last checked under its limit.
fn admit_checks(
    due: Vec<ResourceId>,
    busy: impl Fn(&ResourceId) -> Option<(ProviderKey, ProviderWindow)>,
    last: &mut HashMap<ProviderKey, Instant>,
    now: Instant,
) -> Vec<ResourceId> {
    due.into_iter()
        .filter(|scope| {
            let Some((provider, limit)) = busy(scope) else { return true };
            let spacing = limit.window.div_f64(f64::from(limit.limit.max(1)) * BUSY_CHECK_SHARE);
            if last.get(&provider).is_some_and(|at| now.saturating_duration_since(*at) < spacing) {
                return false;
            }
            last.insert(provider, now);
            true
        })
        .collect()
}

/// Lists every scope in use once per resync interval (not once per grant) and wakes the grants
/// at a scope whose assignments changed in Azure: drift heals within one interval at a cost of
/// one read per scope (less often while a provider's limit holds writes back: [`admit_checks`]).
pub(super) fn spawn_scope_refresher(ctx: Arc<Context>, shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        // Due one tick early, so each scope is listed once per resync interval, never twice.
        let interval = ctx.settings.drift_check_interval.unwrap_or(ctx.settings.resync_interval);
        let tick = (interval / 50).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let period = interval.saturating_sub(tick);
        let stopped = shutdown_signal(shutdown).shared();
        let mut checked_busy = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = stopped.clone() => break,
            }
            let arm = ctx.arm.operator().clone();
            let in_use_for = interval.max(ctx.settings.resync_interval) * 2;
            let due = admit_checks(
                ctx.scopes.due(period.max(tick), in_use_for),
                |scope| arm.authorization_busy(scope).map(|(provider, busy)| (provider, busy.limit)),
                &mut checked_busy,
                Instant::now(),
            );
            let changed: Vec<ResourceId> = futures::stream::iter(due)
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

pub(super) async fn shutdown_signal(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant whose Ready condition is `(status, reason)` and whose `health` condition (one of
    /// Ready, Reconciling, Stalled) is the True one.
    fn grant(ready: Option<(&str, &str, &str)>, managed: usize) -> Arc<DatabricksIdentityGrant> {
        let conditions: Vec<serde_json::Value> = ready
            .map(|(status, reason, health)| {
                ["Ready", "Reconciling", "Stalled"].map(|type_| {
                    let status = match type_ {
                        "Ready" => status,
                        _ if type_ == health => "True",
                        _ => "False",
                    };
                    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"})
                })
            })
            .into_iter()
            .flatten()
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
                "metadata": {"name": "g", "namespace": "ns"},
                "spec": {"identity": {"principal": {"principalId": "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb"}}, "roleAssignments": []},
                "status": {"conditions": conditions, "managedAssignments": vec!["x"; managed]},
            }))
            .expect("grant"),
        )
    }

    #[test]
    fn drift_checks_under_a_providers_limit_get_a_share_of_it() {
        let scope = |rg: &str| {
            ResourceId::parse(&format!("/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/{rg}"))
                .expect("scope")
        };
        let due = || vec![scope("a"), scope("b"), scope("c")];
        let authorization: ProviderKey = ("s".into(), "microsoft.authorization".into());
        let limit = ProviderWindow { limit: 120, window: Duration::from_secs(60) };
        let mut last = HashMap::new();
        let t0 = Instant::now();
        assert_eq!(admit_checks(due(), |_| None, &mut last, t0).len(), 3, "nothing busy: every due scope");
        let held = |_: &ResourceId| Some((authorization.clone(), limit));
        assert_eq!(admit_checks(due(), held, &mut last, t0), vec![scope("a")], "one check, the oldest first");
        let nine = t0 + Duration::from_secs(9);
        assert!(admit_checks(due(), held, &mut last, nine).is_empty(), "5% of 120 a minute: one per 10 s");
        assert_eq!(admit_checks(due(), held, &mut last, t0 + Duration::from_secs(10)), vec![scope("a")]);
        // Another subscription's provider has its own share.
        let other = |s: &ResourceId| {
            Some(((if s == &scope("b") { "t" } else { "s" }).into(), "microsoft.authorization".into()))
                .map(|k| (k, limit))
        };
        assert_eq!(admit_checks(due(), other, &mut last, t0 + Duration::from_secs(11)), vec![scope("b")]);
    }

    #[test]
    fn grants_counted_by_health_ready_and_reason() {
        let (counts, managed) = grant_counts(&[
            grant(Some(("True", "Ready", "Ready")), 2),
            grant(Some(("True", "Ready", "Ready")), 1),
            grant(Some(("False", "RoleNotFound", "Stalled")), 0),
            grant(Some(("False", "TooManyRequests", "Reconciling")), 0),
            grant(Some(("False", "SomethingElse", "Stalled")), 0),
            grant(None, 0),
        ]);
        let n = |health: &str, ready: &str, reason: &str| {
            counts.get(&ReadyLabels { health: health.into(), ready: ready.into(), reason: reason.into() }).copied()
        };
        assert_eq!(n("Ready", "True", "Ready"), Some(2));
        assert_eq!(n("Stalled", "False", "RoleNotFound"), Some(1));
        assert_eq!(n("Reconciling", "False", "TooManyRequests"), Some(1));
        assert_eq!(n("Stalled", "False", "Other"), Some(1), "unknown reasons are one series");
        assert_eq!(n("Unknown", "Unknown", ""), Some(1));
        assert_eq!(managed, 3);
    }
}

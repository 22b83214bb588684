//! One reconcile of one DatabricksIdentityGrant, as thin async code around pure steps:
//! validate → credential → policy pre-gate → resolve identity and roles (`resolve.rs`) →
//! judge (`decide.rs`) → observe the scopes → [`decide`](super::decide::decide) →
//! record intent → [`execute`](super::execute::execute) → [`report`](super::report::report) →
//! write status and Events. Cleanup on deletion runs through kube-runtime's finalizer helper.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::assess::assess;
use super::conditions::{self, Decided};
use super::decide;
use super::events::GrantEvent;
use super::plan::Precedence;
use super::report::{self, Report};
use super::retry::RetryClass;
use super::{Context, grant_key as key};
use super::{expiry, intent, pim};
use crate::api::validation::{ValidatedGrant, validate_grant_spec};
use crate::api::{DatabricksIdentityGrant, DatabricksIdentityGrantStatus, ManagementPolicy, Reason};
use crate::azure::{ArmClient, RoleAssignmentId};

/// Finalizer that holds a grant until its assignments are cleaned up.
pub const FINALIZER: &str = "identity.dbx-operator.io/cleanup";

/// Errors that end a reconcile early (Kubernetes API failures, cleanup that must be retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
    /// The grant changed after this reconcile read it (its status patch carried the
    /// resourceVersion it read and got 409): the reconcile runs again on the latest version.
    /// Without this, a reconcile started from a store one event behind overwrote a newer status
    /// (e.g. reset a drift counter the previous reconcile had just raised).
    #[error("stale read: the grant changed since it was read")]
    StaleRead,
}

impl ReconcileError {
    fn from_status_patch(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 409 => ReconcileError::StaleRead,
            other => ReconcileError::Kube(other),
        }
    }
}

/// Entry point for the Controller.
pub async fn reconcile(grant: Arc<DatabricksIdentityGrant>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = grant.namespace().unwrap_or_default();
    let span = tracing::info_span!("reconcile", namespace = %namespace, name = %grant.name_any(), generation = grant.metadata.generation.unwrap_or_default());
    let _entered = span.enter();
    let started = std::time::Instant::now();
    if let Some(problem) = super::lenient::unreadable(grant.as_ref()) {
        let problem = problem.to_owned();
        let result = unreadable(&grant, &ctx, problem).await;
        ctx.metrics.observe_reconcile(result.is_ok(), started);
        return result;
    }
    // Not kube-runtime's finalizer helper: it adds the finalizer in a write of its own, and a
    // grant's first creations record their write-ahead record in that same write (intent.rs).
    let uid = grant.meta().uid.clone().unwrap_or_default();
    let result = if grant.metadata.deletion_timestamp.is_none() {
        if ctx.own_writes.replaced(&uid, grant.resource_version().as_deref()) {
            // Our own write replaced this copy; its watch event reconciles the grant again.
            tracing::debug!("a copy older than our last write; waiting for the newer one");
            return Ok(Action::await_change());
        }
        apply(&grant, &ctx).await
    } else if grant.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.own_writes.forget(&uid);
        finish_deletion(&grant, &ctx).await
    } else {
        Ok(Action::await_change())
    };
    ctx.metrics.observe_reconcile(result.is_ok() || matches!(result, Err(ReconcileError::StaleRead)), started);
    match result {
        Err(ReconcileError::StaleRead) => {
            tracing::debug!("the grant changed while reconciling; again on the latest version");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        other => other,
    }
}

/// A grant stored with a spec that does not fit the type (admission bypassed): reported as
/// InvalidSpec, never acted on. The finalizer helper cannot be used: it reads the object back
/// typed. Deleting it removes what its status records as created (when its deletionPolicy is
/// readable and `Delete`) and then the finalizer.
async fn unreadable(grant: &DatabricksIdentityGrant, ctx: &Context, problem: String) -> Result<Action, ReconcileError> {
    let has_finalizer = grant.finalizers().iter().any(|f| f == FINALIZER);
    if grant.metadata.deletion_timestamp.is_none() {
        let previous = intent::recorded(grant);
        stop_early(grant, ctx, &previous, Reason::InvalidSpec, problem).await?;
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    let recorded = grant.status.as_ref().map_or(0, |s| s.managed_assignments.len());
    if grant.spec.deletion_policy == crate::api::DeletionPolicy::Retain && recorded > 0 {
        let message = format!(
            "deleted with an unreadable spec ({problem}); its {recorded} role assignments are left in Azure: {}",
            grant.status.iter().flat_map(|s| &s.managed_assignments).cloned().collect::<Vec<_>>().join(", ")
        );
        publish(grant, ctx, vec![GrantEvent::new(Reason::AssignmentsRetained, message)]).await;
    }
    finish_deletion(grant, ctx).await
}

/// A deleted grant: its assignments removed (or left, `deletionPolicy: Retain`), then the
/// finalizer; an error keeps it.
async fn finish_deletion(grant: &DatabricksIdentityGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    cleanup(grant, ctx).await?;
    let remaining: Vec<&String> = grant.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    // resourceVersion makes the patch fail rather than drop a finalizer added meanwhile.
    raw_api(grant, ctx)
        .patch(
            &grant.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {
                "finalizers": remaining,
                "resourceVersion": grant.resource_version(),
            }})),
        )
        .await?;
    Ok(Action::await_change())
}

/// The grant's API, untyped: its responses decode even when the stored object does not fit
/// [`DatabricksIdentityGrant`] (see [`super::lenient`]).
fn raw_api(grant: &DatabricksIdentityGrant, ctx: &Context) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(
        ctx.client.clone(),
        &grant.namespace().unwrap_or_default(),
        &kube::api::ApiResource::erase::<DatabricksIdentityGrant>(&()),
    )
}

/// Requeue after an error the reconcile could not record in status: mostly the Kubernetes API
/// failing. Backoff, but at most ~30 s: with the 5-minute cap of Azure errors, a grant whose
/// status patches met API errors a few times in a row sat without status for many minutes after
/// the API server had recovered (converge bench, `--faults`).
pub fn error_policy(grant: Arc<DatabricksIdentityGrant>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    warn!(grant = %key(&grant), %error, "reconcile failed");
    Action::requeue(ctx.backoff.next(&key(&grant), None).min(super::retry::jitter(Duration::from_secs(30), 0.2)))
}

/// Why a grant's credential Secret gives no client.
#[derive(Debug, thiserror::Error)]
pub(super) enum CredentialProblem {
    #[error("the credential Secret {0} does not exist")]
    SecretMissing(String),
    #[error("{0}")]
    Unusable(String),
}

/// The client for this grant: the operator's own, or one from its credential Secret.
pub(super) async fn arm_client(
    grant: &DatabricksIdentityGrant,
    validated: &ValidatedGrant,
    ctx: &Context,
) -> Result<ArmClient, CredentialProblem> {
    let Some(secret_name) = &validated.credential_secret else {
        return Ok(ctx.arm.operator().clone());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &grant.namespace().unwrap_or_default());
    let secret = match secrets.get(secret_name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(CredentialProblem::SecretMissing(secret_name.clone())),
        Err(e) => return Err(CredentialProblem::Unusable(format!("cannot read Secret {secret_name}: {e}"))),
    };
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CredentialProblem::Unusable(format!("Secret {secret_name} lacks key {k}")))
    };
    let (tenant, client, value) = (field("tenantId")?, field("clientId")?, field("clientSecret")?);
    ctx.arm.for_client_secret(&tenant, &client, &value).map_err(|e| CredentialProblem::Unusable(e.to_string()))
}

async fn apply(grant: &DatabricksIdentityGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    let previous = intent::recorded(grant);
    let validated = match validate_grant_spec(&grant.spec) {
        Ok(v) => v,
        Err(errors) => {
            stop_early(grant, ctx, &previous, Reason::InvalidSpec, errors.to_string()).await?;
            return Ok(Action::await_change());
        }
    };
    let arm = match arm_client(grant, &validated, ctx).await {
        Ok(arm) => arm,
        Err(problem) => {
            stop_early(grant, ctx, &previous, Reason::CredentialError, problem.to_string()).await?;
            return Ok(Action::requeue(ctx.backoff.slow_retry()));
        }
    };

    let policies = ctx.index.governing_policies(&grant.namespace().unwrap_or_default());
    let governing: Vec<crate::policy::evaluate::Governing<'_>> =
        policies.iter().map(|(name, policy)| crate::policy::evaluate::Governing { name, policy }).collect();
    let timing = expiry::timing(&grant.spec, &validated, &previous, ctx.clock.now(), ctx.settings.expiry_warning);
    let mut assessment =
        match assess(ctx.caches(), &arm, &governing, ctx.settings.policy_mode, &validated, timing).await {
            Ok(assessment) => assessment,
            Err(e) => {
                let report = report::identity_failed(&grant.spec, &previous, &e);
                let retry = report.retry;
                persist(grant, grant.resource_version(), ctx, report, &previous).await?;
                return Ok(Action::requeue(ctx.backoff.after(&key(grant), retry)));
            }
        };
    let enforce = validated.management_policy == ManagementPolicy::Enforce;
    // Entries Azure PIM holds leave the ordinary plan, with the assignments PIM made for them.
    let held_by_pim = if enforce {
        let held = pim::held(&grant.spec, &validated, &previous, &assessment.timing);
        let (by_pim, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut assessment.desired).into_iter().partition(|d| held.contains(&d.index));
        assessment.desired = rest;
        assessment.observed.retain(|o| !pim::carries(o, &by_pim));
        by_pim
    } else {
        Vec::new()
    };
    let others = ctx.claims.others(grant.meta().uid.as_deref(), &assessment.relevant_names(&previous));
    let precedence = Precedence {
        created: grant.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        grant: key(grant),
    };
    let mut decision = decide::decide(&assessment.inputs(&grant.spec, &previous, enforce, &others, &precedence));
    // The finalizer goes on before anything this grant made could be left behind by a deletion:
    // with its first creations' write-ahead record (one write), or alone when it already has
    // records (an older version's grant) or Azure PIM is about to write.
    let mut read_at = grant.resource_version();
    let mut finalized = grant.finalizers().iter().any(|f| f == FINALIZER);
    let has_records = !previous.managed_assignments.is_empty()
        || !previous.creating_assignments.is_empty()
        || !previous.managed_schedules.is_empty();
    if !finalized && (has_records || !held_by_pim.is_empty()) {
        read_at = add_finalizer(grant, ctx, None).await?;
        finalized = true;
    }
    let schedules = if enforce && (!held_by_pim.is_empty() || !previous.managed_schedules.is_empty()) {
        let justification = validated
            .justification
            .clone()
            .unwrap_or_else(|| format!("dbx-identity-operator: DatabricksIdentityGrant {}", key(grant)));
        let outcome =
            pim::reconcile(&arm, &grant.spec, &previous, &held_by_pim, &assessment.timing, &justification).await;
        for (index, entry) in outcome.entries {
            if let Some(slot) = decision.entries.get_mut(index) {
                *slot = Some(entry);
            }
        }
        decision.events.extend(outcome.events);
        decision.retry = decision.retry.worst(outcome.retry);
        decision.pending_elsewhere.extend(outcome.pending);
        outcome.schedules
    } else {
        previous.managed_schedules.clone()
    };

    let mut previous = previous;
    match &decision.intent {
        Some(ids) if !finalized => read_at = add_finalizer(grant, ctx, Some(ids)).await?,
        Some(ids) => {
            let (patched, conditions) = record_intent(grant, read_at, ctx, &previous, ids).await?;
            previous.conditions = conditions;
            read_at = patched;
        }
        None => {}
    }
    let executed = super::execute::execute(ctx, &arm, &decision).await;
    let mut report = report::report(&grant.spec, &previous, decision, executed);
    report.status.managed_schedules = schedules;
    if validated.enforcement == crate::api::Enforcement::AzurePim {
        pim::mark_operator_enforced(&mut report.status, &previous);
    }
    ctx.metrics.drift_corrections.inc_by(report.drift_corrected.unsigned_abs());
    let retry = report.retry;
    // The next time the status changes on its own (an entry's warning or its end), so neither
    // waits for a resync. The sweeper removes expired assignments; this records it.
    let next_change = expiry::next_change(&report.status, ctx.clock.now(), ctx.settings.expiry_warning);
    persist(grant, read_at, ctx, report, &previous).await?;
    let after = ctx.backoff.after(&key(grant), retry);
    Ok(Action::requeue(next_change.map_or(after, |at| after.min(at + Duration::from_secs(1)))))
}

/// Records the assignments about to be created (`creatingAssignments`) before creating them,
/// with `Reconciling=True` while they are in flight; returns the resourceVersion the final
/// status patch must carry and the conditions written.
async fn record_intent(
    grant: &DatabricksIdentityGrant,
    read_at: Option<String>,
    ctx: &Context,
    previous: &DatabricksIdentityGrantStatus,
    ids: &[String],
) -> Result<(Option<String>, Vec<Condition>), ReconcileError> {
    let in_flight =
        Decided::new(conditions::READY, false, Reason::Pending, format!("creating {} role assignment(s)", ids.len()));
    let generation = grant.metadata.generation;
    let conditions =
        conditions::merge(&previous.conditions, &conditions::summarised(vec![in_flight]), generation, Timestamp::now());
    let patched = raw_api(grant, ctx)
        .patch_status(
            &grant.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"resourceVersion": read_at},
                "status": {"creatingAssignments": ids, "conditions": conditions, "observedGeneration": generation},
            })),
        )
        .await
        .map_err(ReconcileError::from_status_patch)?;
    ctx.metrics.status_writes.inc();
    own_write(grant, ctx, read_at, &patched);
    Ok((patched.resource_version(), conditions))
}

/// Adds the finalizer, with the write-ahead record of `creating` when given (intent.rs); returns
/// the resourceVersion the status patch must then carry. The resourceVersion read makes a stale
/// reconcile fail here, before it writes to Azure.
async fn add_finalizer(
    grant: &DatabricksIdentityGrant,
    ctx: &Context,
    creating: Option<&[String]>,
) -> Result<Option<String>, ReconcileError> {
    let mut finalizers = grant.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let mut metadata = json!({"finalizers": finalizers, "resourceVersion": grant.resource_version()});
    if let Some(ids) = creating {
        metadata["annotations"] = json!({intent::ANNOTATION: intent::annotation(grant, ids)});
    }
    let patched = raw_api(grant, ctx)
        .patch(&grant.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": metadata})))
        .await
        .map_err(ReconcileError::from_status_patch)?;
    ctx.metrics.status_writes.inc();
    own_write(grant, ctx, grant.resource_version(), &patched);
    Ok(patched.resource_version())
}

/// Notes that our write replaced version `from` of the grant (see `own_writes.rs`).
fn own_write(grant: &DatabricksIdentityGrant, ctx: &Context, from: Option<String>, patched: &impl Resource) {
    if let Some(uid) = grant.meta().uid.as_deref() {
        ctx.own_writes.wrote(uid, from.as_deref(), patched.meta().resource_version.clone());
    }
}

/// A reconcile that stops before reading Azure: Ready false for `reason`, a Warning Event, and
/// what the grant created stays on record (and in Azure) until it is fixed.
async fn stop_early(
    grant: &DatabricksIdentityGrant,
    ctx: &Context,
    previous: &DatabricksIdentityGrantStatus,
    reason: Reason,
    message: String,
) -> Result<(), ReconcileError> {
    let status = report::carried(previous, reason, "not checked: see the Ready condition");
    let report = report::stopped(status, reason, message, RetryClass::Slowly);
    persist(grant, grant.resource_version(), ctx, report, previous).await
}

/// Writes the report: status when it changed (and `lastSyncTime` at most hourly otherwise),
/// conditions merged with the previous ones, then the Events.
async fn persist(
    grant: &DatabricksIdentityGrant,
    read_at: Option<String>,
    ctx: &Context,
    report: Report,
    previous: &DatabricksIdentityGrantStatus,
) -> Result<(), ReconcileError> {
    let Report { mut status, conditions: decided, events, .. } = report;
    let now = Timestamp::now();
    status.observed_generation = grant.metadata.generation;
    status.conditions =
        conditions::merge(&previous.conditions, &conditions::summarised(decided), grant.metadata.generation, now);
    status.last_sync_time = previous.last_sync_time.clone();
    let stale_sync = previous.last_sync_time.as_ref().is_none_or(|t| now.duration_since(t.0).as_secs() > 3600);
    if status != *previous || stale_sync {
        status.last_sync_time = Some(Time(now));
        let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
        // Merge patch: absent optional fields must be cleared explicitly.
        if let Some(map) = value.as_object_mut() {
            for field in [
                "principal",
                "roleAssignments",
                "assigned",
                "managedAssignments",
                "creatingAssignments",
                "unmanagedAssignments",
                "conditions",
                "lastSyncTime",
                "observedGeneration",
                "nextExpiry",
                "managedSchedules",
            ] {
                map.entry(field).or_insert(Value::Null);
            }
        }
        // The resourceVersion read makes a stale reconcile fail instead of overwriting.
        let patched = raw_api(grant, ctx)
            .patch_status(
                &grant.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"resourceVersion": read_at.clone()}, "status": value})),
            )
            .await
            .map_err(ReconcileError::from_status_patch)?;
        ctx.metrics.status_writes.inc();
        own_write(grant, ctx, read_at, &patched);
    }
    publish(grant, ctx, events).await;
    Ok(())
}

/// Publishes events, one per reason; outcomes the spec asked for are only logged
/// ([`crate::api::reason::Appears::Log`]).
pub(super) async fn publish(grant: &DatabricksIdentityGrant, ctx: &Context, events: Vec<GrantEvent>) {
    let reference = grant.object_ref(&());
    for event in GrantEvent::merged(events) {
        info!(grant = %key(grant), reason = %event.reason, note = %event.note, "event");
        if event.reason.appears() == crate::api::reason::Appears::Log {
            continue;
        }
        if let Err(e) =
            ctx.events.publish(&reference, event.event_type(), event.reason.code(), "Reconcile", &event.note).await
        {
            warn!(error = %e, "cannot publish event");
        }
    }
}

async fn cleanup(grant: &DatabricksIdentityGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    if grant.spec.deletion_policy == crate::api::DeletionPolicy::Retain {
        info!(grant = %key(grant), "deletionPolicy Retain: leaving role assignments in Azure");
        return Ok(Action::await_change());
    }
    let previous = intent::recorded(grant);
    let recorded: Vec<(&String, RoleAssignmentId)> = previous
        .managed_assignments
        .iter()
        .chain(&previous.creating_assignments)
        .filter_map(|text| RoleAssignmentId::parse(text).map(|id| (text, id)))
        .collect();
    let Some(arm) = cleanup_client(grant, ctx, &previous).await? else { return Ok(Action::await_change()) };
    let relevant = recorded.iter().map(|(_, id)| id.name().to_ascii_lowercase()).collect();
    let others = ctx.claims.others(grant.meta().uid.as_deref(), &relevant);
    let mut failures = Vec::new();
    let mut remaining = Vec::new();
    // Azure PIM schedules it made and Azure has not ended yet: ended early.
    let now = ctx.clock.now();
    let mut schedules_left = Vec::new();
    for schedule in previous.managed_schedules.iter().filter(|s| s.end.0 > now) {
        let justification = format!("dbx-identity-operator: DatabricksIdentityGrant {} deleted", key(grant));
        if let Err(e) = pim::end_early(&arm, schedule, &justification).await {
            failures.push(format!("PIM schedule {}: {e}", schedule.schedule_id));
            schedules_left.push(schedule.clone());
        }
    }
    for (text, id) in recorded {
        // Another live grant still wants it: it stays.
        if others.wanted.contains(&id.name().to_ascii_lowercase()) {
            continue;
        }
        if let report::RemovalOutcome::Failed(e) = super::execute::remove(ctx, &arm, &id).await {
            failures.push(format!("{text}: {e}"));
            remaining.push(text.clone());
        }
    }
    if failures.is_empty() {
        info!(grant = %key(grant), "removed its role assignments");
        return Ok(Action::await_change());
    }
    let message =
        format!("cannot remove role assignments, the finalizer stays until they are removed: {}", failures.join("; "));
    let status = DatabricksIdentityGrantStatus {
        managed_assignments: remaining,
        creating_assignments: Vec::new(),
        managed_schedules: schedules_left,
        ..previous.clone()
    };
    let report = report::stopped(status, Reason::CleanupFailed, message.clone(), RetryClass::Slowly);
    persist(grant, grant.resource_version(), ctx, report, &previous).await?;
    Err(ReconcileError::Cleanup(message))
}

/// The client to remove a deleted grant's assignments with: its credential's, or the
/// operator's when its spec is invalid. `None` when there is none left to use (the finalizer
/// is then released); an error keeps the finalizer.
async fn cleanup_client(
    grant: &DatabricksIdentityGrant,
    ctx: &Context,
    previous: &DatabricksIdentityGrantStatus,
) -> Result<Option<ArmClient>, ReconcileError> {
    let Ok(validated) = validate_grant_spec(&grant.spec) else { return Ok(Some(ctx.arm.operator().clone())) };
    match arm_client(grant, &validated, ctx).await {
        Ok(arm) => Ok(Some(arm)),
        // The namespace is going and took the Secret first (deletion order is not guaranteed):
        // no credential is left to remove with, and the operator's own identity is not used for
        // a grant that named another (that would let a namespace borrow it). The finalizer is
        // released so the namespace can go; the Event lists what stays.
        Err(CredentialProblem::SecretMissing(secret))
            if ctx.index.namespace_terminating(&grant.namespace().unwrap_or_default()) =>
        {
            let left: Vec<&str> =
                previous.managed_assignments.iter().chain(&previous.creating_assignments).map(String::as_str).collect();
            let message = format!(
                "the namespace is being deleted and its credential Secret {secret} is already gone: the finalizer is released and these role assignments stay in Azure (remove them there, or keep the Secret until the grant is gone): {}",
                left.join(", ")
            );
            warn!(grant = %key(grant), "{message}");
            publish(grant, ctx, vec![GrantEvent::new(Reason::AssignmentsRetained, message)]).await;
            Ok(None)
        }
        Err(problem) => {
            let message = format!(
                "cannot remove role assignments, the finalizer stays until they are removed: {problem} (recreate it, or remove the finalizer to leave the assignments in Azure)"
            );
            let report = report::stopped(previous.clone(), Reason::CleanupFailed, message.clone(), RetryClass::Slowly);
            persist(grant, grant.resource_version(), ctx, report, previous).await?;
            Err(ReconcileError::Cleanup(message))
        }
    }
}

//! One reconcile of one DatabricksIdentityGrant: validate → resolve the identity and roles →
//! build the desired assignments → observe Azure → plan (pure, `plan.rs`) → act → status.
//! Cleanup on deletion runs through kube-runtime's finalizer helper.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::Context;
use super::conditions::{self, Decided};
use super::plan::{
    Claim, DesiredAssignment, ObservedAssignment, OtherGrants, Precedence, Step, assignment_id, assignment_name,
    is_as_desired, plan,
};
use super::resolve::Principal;
use crate::api::validation::{ValidatedGrant, validate_grant_spec};
use crate::api::{
    AssignmentState, DatabricksIdentityGrant, DatabricksIdentityGrantStatus, ManagementPolicy, PrincipalStatus,
    RoleAssignmentStatus, UnmanagedAssignment,
};
use crate::azure::models::RoleAssignmentProperties;
use crate::azure::{ArmClient, ArmError, ResourceId};

/// Finalizer that holds a grant until its assignments are cleaned up.
pub const FINALIZER: &str = "identity.dbx-operator.io/cleanup";

/// Errors that end a reconcile early (Kubernetes API failures, cleanup that must be retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
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

/// How the next reconcile should be scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryClass {
    /// Everything settled: the next resync.
    Resync,
    /// Something may work on its own soon (throttling, outages, replication): back off.
    Soon(Option<Duration>),
    /// Something needs a person (missing role, no permission): retry slowly.
    Slowly,
}

impl RetryClass {
    fn worst(self, other: RetryClass) -> RetryClass {
        match (self, other) {
            (RetryClass::Soon(a), RetryClass::Soon(b)) => RetryClass::Soon(a.max(b)),
            (RetryClass::Soon(a), _) | (_, RetryClass::Soon(a)) => RetryClass::Soon(a),
            (RetryClass::Slowly, _) | (_, RetryClass::Slowly) => RetryClass::Slowly,
            _ => RetryClass::Resync,
        }
    }

    fn of(e: &ArmError) -> RetryClass {
        if e.is_retryable() { RetryClass::Soon(e.retry_after()) } else { RetryClass::Slowly }
    }
}

fn key(grant: &DatabricksIdentityGrant) -> String {
    format!("{}/{}", grant.namespace().unwrap_or_default(), grant.name_any())
}

/// What the policy gate decided for a grant.
struct PolicyVerdicts {
    /// `(spec index, reason, message)` of denied assignments.
    denials: Vec<(usize, &'static str, String)>,
    warnings: Vec<String>,
    allowed_by: BTreeSet<String>,
}

impl PolicyVerdicts {
    fn condition(&self) -> Decided {
        if let Some((_, reason, _)) = self.denials.first() {
            let list = self.denials.iter().map(|(i, r, m)| format!("#{i}: {r}: {m}")).collect::<Vec<_>>().join("; ");
            return Decided::new(
                conditions::POLICY_COMPLIANT,
                false,
                *reason,
                format!("{} assignment(s) denied: {list}", self.denials.len()),
            );
        }
        let by = self.allowed_by.iter().cloned().collect::<Vec<_>>().join(", ");
        let mut message = if by.is_empty() { "no assignment to judge".to_owned() } else { format!("allowed by {by}") };
        for w in &self.warnings {
            message.push_str("; warning: ");
            message.push_str(w);
        }
        Decided::new(
            conditions::POLICY_COMPLIANT,
            true,
            if self.warnings.is_empty() { "Compliant" } else { "CompliantWithWarnings" },
            message,
        )
    }
}

/// The GrantPolicies governing the grant's namespace, validated (an invalid one allows nothing;
/// its status says why).
fn governing_policies(
    grant: &DatabricksIdentityGrant,
    ctx: &Context,
) -> Vec<(String, crate::api::validation::ValidatedPolicy)> {
    use crate::policy::evaluate::selects;
    let labels = ctx.namespace_labels(&grant.namespace().unwrap_or_default());
    ctx.policies()
        .iter()
        .filter_map(|p| {
            if super::lenient::unreadable(p.as_ref()).is_some() {
                return None;
            }
            let valid = crate::api::validation::validate_policy_spec(&p.spec).ok()?;
            selects(&valid.namespace_selector, &labels).then(|| (p.name_any(), valid))
        })
        .collect()
}

/// What policies match identities against: the identity's ARM id, or `/principals/<id>`.
fn policy_identity(identity: &crate::api::validation::ValidatedIdentity) -> String {
    match identity {
        crate::api::validation::ValidatedIdentity::Principal { principal_id, .. } => {
            format!("/principals/{principal_id}")
        }
        other => other.policy_resource_id().map(ToString::to_string).unwrap_or_default(),
    }
}

/// Judges every desired assignment (role resolved) against the governing GrantPolicies.
fn policy_gate(
    ctx: &Context,
    validated: &ValidatedGrant,
    governing: &[crate::policy::evaluate::Governing<'_>],
    identity: &str,
    desired: &mut Vec<DesiredAssignment>,
    roles: &[Option<std::sync::Arc<super::resolve::ResolvedRole>>],
) -> PolicyVerdicts {
    use crate::policy::evaluate::{Request, RoleFacts, Verdict, evaluate};
    let workspace_managed_identity =
        matches!(validated.identity, crate::api::validation::ValidatedIdentity::WorkspaceManagedIdentity { .. });
    let mut verdicts = PolicyVerdicts { denials: Vec::new(), warnings: Vec::new(), allowed_by: BTreeSet::new() };
    desired.retain(|d| {
        let Some(role) = roles.get(d.index).and_then(Option::as_ref) else { return false };
        let request = Request {
            identity: identity.to_owned(),
            workspace_managed_identity,
            role: RoleFacts { guid: role.guid, name: &role.role_name, permissions: &role.permissions },
            scope: &d.scope,
            position: d.index,
        };
        match evaluate(governing, ctx.settings.policy_mode, &request) {
            Verdict::Allowed { by, warning } => {
                verdicts.allowed_by.insert(by);
                verdicts.warnings.extend(warning);
                true
            }
            Verdict::Denied { reason, message } => {
                verdicts.denials.push((d.index, reason.as_str(), message));
                false
            }
        }
    });
    verdicts
}

/// `(scope, name)` of an assignment's ARM id (`{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`).
fn split_assignment_id(id: &str) -> Option<(ResourceId, String)> {
    const MARKER: &str = "/providers/microsoft.authorization/roleassignments/";
    let at = id.to_ascii_lowercase().rfind(MARKER)?;
    let scope = ResourceId::parse(&id[..at]).ok()?;
    Some((scope, id[at + MARKER.len()..].to_ascii_lowercase()))
}

/// Entry point for the Controller.
pub async fn reconcile(grant: Arc<DatabricksIdentityGrant>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = grant.namespace().unwrap_or_default();
    let api: Api<DatabricksIdentityGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    let span = tracing::info_span!("reconcile", namespace = %namespace, name = %grant.name_any(), generation = grant.metadata.generation.unwrap_or_default());
    let _entered = span.enter();
    let started = std::time::Instant::now();
    if let Some(problem) = super::lenient::unreadable(grant.as_ref()) {
        let problem = problem.to_owned();
        let result = unreadable(&grant, &ctx, problem).await;
        ctx.metrics.observe_reconcile(result.is_ok(), started);
        return result;
    }
    let result = finalizer(&api, FINALIZER, grant, |event| async {
        match event {
            Event::Apply(g) => apply(&g, &ctx).await,
            Event::Cleanup(g) => cleanup(&g, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(ReconcileError::StaleRead)
        | kube::runtime::finalizer::Error::CleanupFailed(ReconcileError::StaleRead) => ReconcileError::StaleRead,
        other => ReconcileError::Finalizer(other.to_string()),
    });
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
    if grant.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        let recorded = grant.status.as_ref().map_or(0, |s| s.managed_assignments.len());
        if grant.spec.deletion_policy == crate::api::DeletionPolicy::Retain && recorded > 0 {
            let message = format!(
                "deleted with an unreadable spec ({problem}); its {recorded} role assignments are left in Azure: {}",
                grant.status.iter().flat_map(|s| &s.managed_assignments).cloned().collect::<Vec<_>>().join(", ")
            );
            publish(grant, ctx, vec![(EventType::Warning, "AssignmentsRetained", message)]).await;
        }
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
        return Ok(Action::await_change());
    }
    let previous = grant.status.clone().unwrap_or_default();
    let status = DatabricksIdentityGrantStatus {
        managed_assignments: previous.managed_assignments.clone(),
        creating_assignments: previous.creating_assignments.clone(),
        drift_corrections: previous.drift_corrections,
        // As for any invalid spec: what it created stays on record (and in Azure) until fixed.
        ..Default::default()
    };
    finish_not_ready(grant, ctx, status, Vec::new(), &previous, "InvalidSpec", problem).await?;
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
    Action::requeue(ctx.backoff(&key(&grant), None).min(Context::jitter(Duration::from_secs(30), 0.2)))
}

/// Why a grant's credential Secret gives no client.
#[derive(Debug, thiserror::Error)]
enum CredentialProblem {
    #[error("the credential Secret {0} does not exist")]
    SecretMissing(String),
    #[error("{0}")]
    Unusable(String),
}

/// The client for this grant: the operator's own, or one from its credential Secret.
async fn arm_client(
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

fn entry(
    grant: &DatabricksIdentityGrant,
    index: usize,
    state: AssignmentState,
    reason: &str,
    message: String,
) -> RoleAssignmentStatus {
    let spec = &grant.spec.role_assignments[index];
    RoleAssignmentStatus {
        role: spec.role.clone(),
        role_definition_id: None,
        scope: spec.scope.clone(),
        assignment_id: None,
        state,
        reason: Some(reason.to_owned()),
        message: Some(message),
    }
}

/// The assignments one grant claims, from its status (what it resolved) and spec (conditions).
pub(crate) fn claims_of(grant: &DatabricksIdentityGrant) -> Vec<Claim> {
    let Some(status) = &grant.status else { return Vec::new() };
    let Some(principal) = &status.principal else { return Vec::new() };
    let created = grant.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    let mut claims = Vec::new();
    for ra in &status.role_assignments {
        // A grant that lost a condition conflict still wants the tuple (and takes it over when
        // the older grant goes), so its claim counts too.
        let lost_conflict = ra.reason.as_deref() == Some("ConflictingGrant");
        if !lost_conflict
            && !matches!(ra.state, AssignmentState::Assigned | AssignmentState::Pending | AssignmentState::Adopted)
        {
            continue;
        }
        let (Some(role_id), Ok(scope)) = (&ra.role_definition_id, ResourceId::parse(&ra.scope)) else { continue };
        let Some(guid) = ResourceId::parse(role_id).ok().and_then(|r| crate::azure::guid::parse_guid(r.name())) else {
            continue;
        };
        // The spec entry this status entry describes, by (role, scope) — not by position: a
        // reordered spec would otherwise lend another entry's condition (a spurious conflict).
        // None: the spec no longer asks for it, and the next reconcile releases it.
        let Some(spec) = grant
            .spec
            .role_assignments
            .iter()
            .find(|s| s.role.eq_ignore_ascii_case(&ra.role) && s.scope.eq_ignore_ascii_case(&ra.scope))
        else {
            continue;
        };
        claims.push(Claim {
            name: assignment_name(&principal.principal_id, guid, &scope).to_ascii_lowercase(),
            condition: spec.condition.clone(),
            grant: key(grant),
            created: created.clone(),
        });
    }
    claims
}

/// What other live grants want among `relevant` assignment names (from the claims index, which
/// follows the grants' watch, not from Azure).
fn other_grants(grant: &DatabricksIdentityGrant, ctx: &Context, relevant: &HashSet<String>) -> OtherGrants {
    ctx.claims.others(grant.meta().uid.as_deref(), relevant)
}

async fn apply(grant: &DatabricksIdentityGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    let previous = grant.status.clone().unwrap_or_default();
    let mut status = DatabricksIdentityGrantStatus {
        managed_assignments: previous.managed_assignments.clone(),
        creating_assignments: previous.creating_assignments.clone(),
        drift_corrections: previous.drift_corrections,
        ..Default::default()
    };
    let mut decided: Vec<Decided> = Vec::new();
    let mut events: Vec<(EventType, &'static str, String)> = Vec::new();

    // 1. Validate.
    let validated = match validate_grant_spec(&grant.spec) {
        Ok(v) => v,
        Err(errors) => {
            let message = errors.to_string();
            finish_not_ready(grant, ctx, status, decided, &previous, "InvalidSpec", message).await?;
            return Ok(Action::await_change());
        }
    };

    let arm = match arm_client(grant, &validated, ctx).await {
        Ok(arm) => arm,
        Err(problem) => {
            let message = problem.to_string();
            finish_not_ready(grant, ctx, status, decided, &previous, "CredentialError", message).await?;
            return Ok(Action::requeue(ctx.slow_retry()));
        }
    };

    // 2. Policy pre-gate, before anything is read from Azure: identity and scope patterns on the
    // parsed ids. What no policy could allow costs no ARM call, and is denied the same way
    // whether or not the identity or scope exists (no existence oracle over what the operator's
    // identity can read). Roles are judged once resolved (step 5b).
    let policies = governing_policies(grant, ctx);
    let governing: Vec<crate::policy::evaluate::Governing<'_>> =
        policies.iter().map(|(name, policy)| crate::policy::evaluate::Governing { name, policy }).collect();
    let identity_id = policy_identity(&validated.identity);
    let prejudged: Vec<Option<(crate::policy::evaluate::DenialReason, String)>> = validated
        .role_assignments
        .iter()
        .map(|ra| crate::policy::evaluate::prejudge(&governing, ctx.settings.policy_mode, &identity_id, &ra.scope))
        .collect();
    let nothing_allowed = prejudged.iter().all(Option::is_some);

    // 3. Identity → principal (not even looked up when the pre-gate allows nothing).
    let principal: Option<Principal> = if nothing_allowed {
        None
    } else {
        match ctx.resolver.principal(&arm, &validated.identity).await {
            Ok(p) => Some(p),
            Err(e) => {
                decided.push(Decided::new(conditions::IDENTITY_RESOLVED, false, e.reason, e.message.clone()));
                status.role_assignments = (0..grant.spec.role_assignments.len())
                    .map(|i| {
                        entry(
                            grant,
                            i,
                            AssignmentState::Pending,
                            e.reason,
                            "waiting for the identity to resolve".into(),
                        )
                    })
                    .collect();
                finish_not_ready(grant, ctx, status, decided, &previous, e.reason, e.message.clone()).await?;
                let retry = if e.retryable { RetryClass::Soon(e.retry_after) } else { RetryClass::Slowly };
                return Ok(ctx.action(&key(grant), retry));
            }
        }
    };
    match &principal {
        Some(principal) => {
            decided.push(Decided::new(
                conditions::IDENTITY_RESOLVED,
                true,
                "Resolved",
                format!("principal {}", principal.principal_id),
            ));
            status.principal = Some(PrincipalStatus {
                principal_id: principal.principal_id.clone(),
                principal_type: principal.principal_type,
                tenant_id: principal.tenant_id.clone(),
                identity_resource_id: principal.identity_resource_id.clone(),
            });
        }
        None => {
            decided.push(Decided::new(
                conditions::IDENTITY_RESOLVED,
                false,
                "NotResolved",
                "not looked up: no GrantPolicy allows any entry of this grant, so Azure was not asked",
            ));
            status.principal = previous.principal.clone();
        }
    }

    // 4. Roles → role definitions; 5. desired assignments.
    let mut retry = RetryClass::Resync;
    let mut entries: Vec<Option<RoleAssignmentStatus>> = vec![None; validated.role_assignments.len()];
    let mut desired: Vec<DesiredAssignment> = Vec::new();
    let mut roles: Vec<Option<std::sync::Arc<super::resolve::ResolvedRole>>> =
        vec![None; validated.role_assignments.len()];
    let mut role_failures = Vec::new();
    for (index, ra) in validated.role_assignments.iter().enumerate() {
        // Denied by the pre-gate: the role is not resolved at a scope the namespace may not use.
        let (None, Some(principal)) = (&prejudged[index], &principal) else { continue };
        match ctx.resolver.role(&arm, &ra.role, &ra.scope).await {
            Ok(role) => {
                desired.push(DesiredAssignment {
                    index,
                    name: assignment_name(&principal.principal_id, role.guid, &ra.scope),
                    scope: ra.scope.clone(),
                    role_definition_id: role.role_definition_id.clone(),
                    role_guid: role.guid,
                    principal_id: principal.principal_id.clone(),
                    principal_type: principal.principal_type,
                    condition: ra.condition.clone(),
                    description: ra.description.clone(),
                });
                roles[index] = Some(role);
            }
            Err(e) => {
                retry = retry.worst(if e.retryable { RetryClass::Soon(e.retry_after) } else { RetryClass::Slowly });
                let state = if e.retryable { AssignmentState::Pending } else { AssignmentState::Failed };
                entries[index] = Some(entry(grant, index, state, e.reason, e.message.clone()));
                role_failures.push((e.reason, e.message));
            }
        }
    }
    match role_failures.first() {
        None => decided.push(Decided::new(conditions::ROLES_RESOLVED, true, "Resolved", "every role resolved")),
        Some((reason, _)) => {
            let message = role_failures.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
            decided.push(Decided::new(conditions::ROLES_RESOLVED, false, *reason, message.clone()));
            events.push((EventType::Warning, "RoleNotResolved", message));
        }
    }

    // 5b. Policy gate: denied assignments leave the desired set (and, if this grant created
    // them earlier, are removed as stale).
    let mut verdicts = policy_gate(ctx, &validated, &governing, &identity_id, &mut desired, &roles);
    verdicts.denials.extend(
        prejudged.into_iter().enumerate().filter_map(|(i, d)| d.map(|(reason, message)| (i, reason.as_str(), message))),
    );
    verdicts.denials.sort_by_key(|d| d.0);
    for (index, reason, message) in &verdicts.denials {
        entries[*index] = Some(entry(grant, *index, AssignmentState::Denied, reason, message.clone()));
        if previous.role_assignments.get(*index).is_none_or(|p| p.state != AssignmentState::Denied) {
            events.push((
                EventType::Warning,
                "PolicyDenied",
                format!(
                    "{} at {}: {reason}: {message}",
                    grant.spec.role_assignments[*index].role, grant.spec.role_assignments[*index].scope
                ),
            ));
        }
    }
    let policy_condition = verdicts.condition();
    let previous_policy_message =
        previous.conditions.iter().find(|c| c.type_ == conditions::POLICY_COMPLIANT).map(|c| c.message.clone());
    if previous_policy_message.as_deref() != Some(policy_condition.message.as_str()) {
        for warning in &verdicts.warnings {
            events.push((EventType::Warning, "DataRoleOnWorkspaceIdentity", warning.clone()));
        }
    }
    decided.push(policy_condition);

    // 6. Observe: one (cached) list per distinct scope.
    let mut observed: Vec<ObservedAssignment> = Vec::new();
    let scopes: BTreeSet<String> = desired.iter().map(|d| d.scope.normalized()).collect();
    let mut unreadable: HashMap<String, ArmError> = HashMap::new();
    for scope_key in &scopes {
        let Some(scope) = desired.iter().find(|d| d.scope.normalized() == *scope_key).map(|d| d.scope.clone()) else {
            continue;
        };
        let _permit = ctx.arm_permit(&scope).await;
        match ctx.scopes.list(&arm, &scope).await {
            Ok(list) => observed.extend(list.iter().filter_map(ObservedAssignment::from_arm)),
            Err(e) => {
                retry = retry.worst(RetryClass::of(&e));
                unreadable.insert(scope_key.clone(), e);
            }
        }
    }

    // 7. Plan.
    let managed: Vec<(ResourceId, String)> =
        status.managed_assignments.iter().filter_map(|id| split_assignment_id(id)).collect();
    let creating: Vec<(ResourceId, String)> =
        previous.creating_assignments.iter().filter_map(|id| split_assignment_id(id)).collect();
    let precedence = Precedence {
        created: grant.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        grant: key(grant),
    };
    let relevant: HashSet<String> = desired
        .iter()
        .map(|d| d.name.to_ascii_lowercase())
        .chain(managed.iter().chain(&creating).map(|(_, name)| name.to_ascii_lowercase()))
        .chain(observed.iter().map(|o| o.name.to_ascii_lowercase()))
        .collect();
    let others = other_grants(grant, ctx, &relevant);
    let the_plan = plan(&desired, &observed, &managed, &creating, &others, &precedence);
    let enforce = validated.management_policy == ManagementPolicy::Enforce;

    // 8a. Record the assignments about to be created before creating them: stopped between a
    // PUT and the status update, the operator would otherwise not know an assignment it made
    // once the grant stops wanting it (kill loop, tests/kill_loop.rs).
    let mut creating_ids: std::collections::BTreeMap<String, String> =
        previous.creating_assignments.iter().map(|s| (s.to_ascii_lowercase(), s.clone())).collect();
    let mut read_at = grant.resource_version();
    if enforce {
        let before = creating_ids.len();
        for (d, step) in desired.iter().zip(&the_plan.steps) {
            if matches!(step, Step::Create { .. }) && !unreadable.contains_key(&d.scope.normalized()) {
                let id = assignment_id(&d.scope, &d.name);
                creating_ids.entry(id.to_ascii_lowercase()).or_insert(id);
            }
        }
        if creating_ids.len() > before {
            let ids: Vec<&String> = creating_ids.values().collect();
            let patched = raw_api(grant, ctx)
                .patch_status(
                    &grant.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({
                        "metadata": {"resourceVersion": read_at},
                        "status": {"creatingAssignments": ids},
                    })),
                )
                .await
                .map_err(ReconcileError::from_status_patch)?;
            read_at = patched.resource_version();
            ctx.metrics.status_writes.inc();
        }
    }

    // 8. Act.
    // Keyed case-insensitively (Azure ids are), keeping the canonical spelling for status.
    let mut managed_ids: std::collections::BTreeMap<String, String> =
        status.managed_assignments.iter().map(|s| (s.to_ascii_lowercase(), s.clone())).collect();
    for (d, step) in desired.iter().zip(&the_plan.steps) {
        let id = assignment_id(&d.scope, &d.name);
        // Settled below unless its write's outcome stays unknown.
        let intent = creating_ids.remove(&id.to_ascii_lowercase());
        let described = format!("{} at {}", grant.spec.role_assignments[d.index].role, d.scope);
        let mut st = entry(grant, d.index, AssignmentState::Pending, "Pending", String::new());
        st.role_definition_id = Some(d.role_definition_id.clone());
        if let Some(e) = unreadable.get(&d.scope.normalized()) {
            if !e.is_retryable() {
                st.state = AssignmentState::Failed;
            }
            st.reason = Some(e.code().to_owned());
            st.message = Some(format!("cannot list assignments at the scope: {e}"));
            entries[d.index] = Some(st);
            creating_ids.extend(intent.map(|i| (i.to_ascii_lowercase(), i)));
            continue;
        }
        match step {
            Step::InSync => {
                st.state = AssignmentState::Assigned;
                st.assignment_id = Some(id.clone());
                st.reason = Some("Assigned".into());
                st.message = None;
                managed_ids.insert(id.to_ascii_lowercase(), id.clone());
            }
            Step::Adopt { id: existing, condition_differs } => {
                st.state = AssignmentState::Adopted;
                st.assignment_id = Some(existing.clone());
                st.reason = Some("Adopted".into());
                st.message = Some(if *condition_differs {
                    "an assignment for this principal, role and scope already existed and is used as is; its condition differs from the spec and is left alone".into()
                } else {
                    "an assignment for this principal, role and scope already existed; the operator uses it and never deletes it".into()
                });
                if previous.role_assignments.get(d.index).is_none_or(|p| p.state != AssignmentState::Adopted) {
                    events.push((
                        EventType::Normal,
                        "Adopted",
                        format!("adopted existing assignment {existing} for {described}"),
                    ));
                }
            }
            Step::Conflict { with } => {
                st.state = AssignmentState::Failed;
                st.reason = Some("ConflictingGrant".into());
                st.message = Some(format!(
                    "older grant {with} asks for the same principal, role and scope with another condition; Azure allows one assignment per tuple, so its condition wins (grants created in the same second: the namespace/name that sorts first)"
                ));
                events.push((
                    EventType::Warning,
                    "ConflictingGrant",
                    format!("{described}: conflicts with older grant {with}"),
                ));
            }
            Step::Create { .. } | Step::Update if !enforce => {
                st.state = AssignmentState::Planned;
                st.reason = Some(if matches!(step, Step::Update) { "UpdatePlanned" } else { "CreatePlanned" }.into());
                st.message = Some("managementPolicy is Observe: nothing is written to Azure".into());
            }
            // Written below.
            Step::Create { .. } | Step::Update => {}
        }
        if enforce && matches!(step, Step::Create { .. } | Step::Update) {
            let properties = RoleAssignmentProperties {
                scope: None,
                role_definition_id: d.role_definition_id.clone(),
                principal_id: d.principal_id.clone(),
                principal_type: Some(format!("{:?}", d.principal_type)),
                description: d.description.clone(),
                condition: d.condition.as_ref().map(|c| c.expression.clone()),
                condition_version: d.condition.as_ref().map(|c| c.version.clone()),
            };
            let _writer = ctx.assignment_writer(&d.name).await;
            // A grant sharing this tuple may have written it while we waited.
            let written_meanwhile = ctx
                .scopes
                .cached(&d.scope, &d.name)
                .await
                .filter(|a| ObservedAssignment::from_arm(a).is_some_and(|o| is_as_desired(&o, d)));
            let result = match written_meanwhile {
                Some(assignment) => Ok((assignment, false)),
                None => {
                    let _permit = ctx.arm_permit(&d.scope).await;
                    arm.put_role_assignment(&d.scope, &d.name, properties).await
                }
            };
            match result {
                Ok((assignment, created)) => {
                    ctx.scopes.record_put(&d.scope, assignment).await;
                    st.state = AssignmentState::Assigned;
                    st.assignment_id = Some(id.clone());
                    st.reason = Some("Assigned".into());
                    st.message = None;
                    managed_ids.insert(id.to_ascii_lowercase(), id.clone());
                    let drift = matches!(step, Step::Create { drift: true });
                    if created && drift {
                        status.drift_corrections += 1;
                        ctx.metrics.drift_corrections.inc();
                        events.push((
                            EventType::Warning,
                            "DriftCorrected",
                            format!("recreated {described}: it had been removed outside the operator"),
                        ));
                    } else if created {
                        events.push((EventType::Normal, "Created", format!("assigned {described}")));
                    } else if matches!(step, Step::Update) {
                        events.push((
                            EventType::Normal,
                            "Updated",
                            format!("updated condition or description of {described}"),
                        ));
                    }
                }
                Err(ArmError::RoleAssignmentExists { message }) => {
                    // Someone else's assignment the list did not show yet: adopt it.
                    ctx.scopes.invalidate(&d.scope).await;
                    let existing =
                        arm.list_role_assignments_for_principal(&d.scope, &d.principal_id).await.ok().and_then(
                            |list| {
                                list.iter()
                                    .filter_map(ObservedAssignment::from_arm)
                                    .find(|o| o.scope == d.scope && o.role_guid == d.role_guid)
                                    .map(|o| o.id)
                            },
                        );
                    st.state = AssignmentState::Adopted;
                    st.assignment_id = existing.clone();
                    st.reason = Some("Adopted".into());
                    st.message = Some(format!(
                        "an assignment for this principal, role and scope already exists ({message}); the operator uses it and never deletes it"
                    ));
                    events.push((
                        EventType::Normal,
                        "Adopted",
                        format!(
                            "adopted existing assignment {} for {described}",
                            existing.unwrap_or_else(|| "(not yet listed)".into())
                        ),
                    ));
                }
                Err(e) => {
                    // Kept while the write is retried (even a refused one: dropping it and
                    // recording it again each retry would make every retry two status writes).
                    creating_ids.extend(intent.clone().map(|i| (i.to_ascii_lowercase(), i)));
                    retry = retry.worst(RetryClass::of(&e));
                    st.state = if e.is_retryable() { AssignmentState::Pending } else { AssignmentState::Failed };
                    st.reason = Some(e.code().to_owned());
                    st.message = Some(e.to_string());
                    if !e.is_retryable() {
                        events.push((EventType::Warning, "AssignmentFailed", format!("{described}: {e}")));
                    }
                }
            }
        }
        entries[d.index] = Some(st);
    }
    for (index, note) in &the_plan.notes {
        if let Some(Some(st)) = entries.get_mut(*index) {
            st.message = Some(st.message.clone().map_or(note.clone(), |m| format!("{m}; {note}")));
        }
    }

    // Stale assignments: delete (Enforce) or report (Observe).
    let mut pending_removals = Vec::new();
    for name in &the_plan.released {
        let suffix = format!("/{name}");
        managed_ids.retain(|id, _| !id.ends_with(&suffix));
        creating_ids.retain(|id, _| !id.ends_with(&suffix));
    }
    for (scope, name) in &the_plan.deletions {
        let id = assignment_id(scope, name).to_ascii_lowercase();
        if !enforce {
            pending_removals.push(id);
            continue;
        }
        let result = {
            let _permit = ctx.arm_permit(scope).await;
            arm.delete_role_assignment(scope, name).await
        };
        match result {
            Ok(_) | Err(ArmError::NotFound { .. }) => {
                ctx.scopes.record_delete(scope, name).await;
                // A write never confirmed that turns out not to exist was not "removed".
                let recorded = managed_ids.remove(&id).is_some();
                if creating_ids.remove(&id).is_none() || recorded || result.is_ok() {
                    events.push((
                        EventType::Normal,
                        "Deleted",
                        format!("removed assignment {id}: the grant no longer asks for it"),
                    ));
                }
            }
            Err(e) => {
                retry = retry.worst(RetryClass::of(&e));
                pending_removals.push(format!("{id} ({e})"));
            }
        }
    }
    creating_ids.retain(|id, _| !managed_ids.contains_key(id));
    status.creating_assignments = creating_ids.into_values().collect();
    status.managed_assignments = managed_ids.into_values().collect();
    status.unmanaged_assignments = the_plan
        .unmanaged
        .iter()
        .map(|o| UnmanagedAssignment {
            assignment_id: o.id.clone(),
            role_definition_id: o.role_definition_id.clone(),
            scope: o.scope.to_string(),
        })
        .collect();

    // 9. Status.
    status.role_assignments = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.unwrap_or_else(|| entry(grant, i, AssignmentState::Pending, "Pending", "not yet processed".into()))
        })
        .collect();
    let total = status.role_assignments.len();
    let done = status
        .role_assignments
        .iter()
        .filter(|e| matches!(e.state, AssignmentState::Assigned | AssignmentState::Adopted))
        .count();
    status.assigned = Some(format!("{done}/{total}"));
    let planned = status.role_assignments.iter().filter(|e| e.state == AssignmentState::Planned).count();
    let in_sync = done == total && pending_removals.is_empty();
    decided.push(if in_sync {
        Decided::new(conditions::IN_SYNC, true, "InSync", "Azure matches the spec")
    } else if !enforce {
        Decided::new(
            conditions::IN_SYNC,
            false,
            "ChangesPlanned",
            format!(
                "{planned} assignment(s) would be created or updated and {} removed; managementPolicy is Observe",
                pending_removals.len()
            ),
        )
    } else {
        let mut why: Vec<String> = status
            .role_assignments
            .iter()
            .filter(|e| !matches!(e.state, AssignmentState::Assigned | AssignmentState::Adopted))
            .map(|e| {
                format!("{} at {}: {}", e.role, e.scope, e.message.clone().or(e.reason.clone()).unwrap_or_default())
            })
            .collect();
        why.extend(pending_removals.iter().map(|r| format!("removal pending: {r}")));
        Decided::new(conditions::IN_SYNC, false, "OutOfSync", why.join("; "))
    });
    let first_problem = status
        .role_assignments
        .iter()
        .find(|e| !matches!(e.state, AssignmentState::Assigned | AssignmentState::Adopted));
    decided.push(match first_problem {
        None if pending_removals.is_empty() => {
            Decided::new(conditions::READY, true, "Ready", format!("{done}/{total} role assignments in place"))
        }
        None => Decided::new(conditions::READY, false, "RemovalPending", pending_removals.join("; ")),
        Some(e) => Decided::new(
            conditions::READY,
            false,
            e.reason.clone().unwrap_or_else(|| "Pending".into()),
            format!(
                "{done}/{total} role assignments in place; {} at {}: {}",
                e.role,
                e.scope,
                e.message.clone().unwrap_or_default()
            ),
        ),
    });
    finish(grant, read_at, ctx, status, decided, &previous, events).await?;
    if retry == RetryClass::Resync {
        ctx.reset_backoff(&key(grant));
    }
    Ok(ctx.action(&key(grant), retry))
}

/// Writes status when it changed (and refreshes `lastSyncTime` at most hourly otherwise) and
/// publishes events.
async fn finish(
    grant: &DatabricksIdentityGrant,
    read_at: Option<String>,
    ctx: &Context,
    mut status: DatabricksIdentityGrantStatus,
    decided: Vec<Decided>,
    previous: &DatabricksIdentityGrantStatus,
    events: Vec<(EventType, &'static str, String)>,
) -> Result<(), ReconcileError> {
    let now = Timestamp::now();
    status.observed_generation = grant.metadata.generation;
    status.conditions = conditions::merge(&previous.conditions, &decided, grant.metadata.generation, now);
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
            ] {
                map.entry(field).or_insert(Value::Null);
            }
        }
        // The resourceVersion read makes a stale reconcile fail instead of overwriting.
        raw_api(grant, ctx)
            .patch_status(
                &grant.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"resourceVersion": read_at}, "status": value})),
            )
            .await
            .map_err(ReconcileError::from_status_patch)?;
        ctx.metrics.status_writes.inc();
    }
    publish(grant, ctx, events).await;
    Ok(())
}

/// [`finish`] for a reconcile that stops early: Ready false for `reason`, and a Warning Event
/// saying why.
async fn finish_not_ready(
    grant: &DatabricksIdentityGrant,
    ctx: &Context,
    status: DatabricksIdentityGrantStatus,
    mut decided: Vec<Decided>,
    previous: &DatabricksIdentityGrantStatus,
    reason: &'static str,
    message: String,
) -> Result<(), ReconcileError> {
    decided.push(Decided::new(conditions::READY, false, reason, message.clone()));
    let events = vec![(EventType::Warning, reason, message)];
    finish(grant, grant.resource_version(), ctx, status, decided, previous, events).await
}

/// Publishes events, one per (type, reason).
async fn publish(grant: &DatabricksIdentityGrant, ctx: &Context, events: Vec<(EventType, &'static str, String)>) {
    let reference = grant.object_ref(&());
    // One Event per reason per reconcile (notes joined): a grant with ten assignments makes one
    // "Created" Event, not ten API writes.
    let mut merged: Vec<(EventType, &'static str, String)> = Vec::new();
    for (type_, reason, note) in events {
        match merged.iter_mut().find(|(t, r, _)| *t == type_ && *r == reason) {
            Some((_, _, notes)) => {
                notes.push_str("; ");
                notes.push_str(&note);
            }
            None => merged.push((type_, reason, note)),
        }
    }
    for (type_, reason, note) in merged {
        info!(grant = %key(grant), reason, %note, "event");
        let note: String = note.chars().take(1000).collect();
        if let Err(e) = ctx.events.publish(&reference, type_, reason, "Reconcile", &note).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

async fn cleanup(grant: &DatabricksIdentityGrant, ctx: &Context) -> Result<Action, ReconcileError> {
    if grant.spec.deletion_policy == crate::api::DeletionPolicy::Retain {
        info!(grant = %key(grant), "deletionPolicy Retain: leaving role assignments in Azure");
        return Ok(Action::await_change());
    }
    let previous = grant.status.clone().unwrap_or_default();
    let recorded: Vec<&String> = previous.managed_assignments.iter().chain(&previous.creating_assignments).collect();
    let relevant: HashSet<String> =
        recorded.iter().filter_map(|id| id.rsplit('/').next()).map(str::to_ascii_lowercase).collect();
    let others = other_grants(grant, ctx, &relevant);
    let arm = match validate_grant_spec(&grant.spec) {
        Ok(v) => match arm_client(grant, &v, ctx).await {
            Ok(arm) => arm,
            // The namespace is going and took the Secret first (deletion order is not
            // guaranteed): no credential is left to remove with, and the operator's own identity
            // is not used for a grant that named another (that would let a namespace borrow it).
            // The finalizer is released so the namespace can go; the Event lists what stays.
            Err(CredentialProblem::SecretMissing(secret))
                if ctx.namespace_terminating(&grant.namespace().unwrap_or_default()) =>
            {
                let left: Vec<&str> = recorded.iter().map(|id| id.as_str()).collect();
                let message = format!(
                    "the namespace is being deleted and its credential Secret {secret} is already gone: the finalizer is released and these role assignments stay in Azure (remove them there, or keep the Secret until the grant is gone): {}",
                    left.join(", ")
                );
                warn!(grant = %key(grant), "{message}");
                publish(grant, ctx, vec![(EventType::Warning, "AssignmentsRetained", message)]).await;
                return Ok(Action::await_change());
            }
            Err(problem) => {
                let message = format!(
                    "cannot remove role assignments, the finalizer stays until they are removed: {problem} (recreate it, or remove the finalizer to leave the assignments in Azure)"
                );
                finish_not_ready(grant, ctx, previous.clone(), Vec::new(), &previous, "CleanupFailed", message.clone())
                    .await?;
                return Err(ReconcileError::Cleanup(message));
            }
        },
        Err(_) => ctx.arm.operator().clone(),
    };
    let mut failures = Vec::new();
    let mut remaining = Vec::new();
    for id in recorded {
        let Some((scope, name)) = split_assignment_id(id) else { continue };
        if others.wanted.contains(&name) {
            continue;
        }
        let name = name.as_str();
        let result = {
            let _permit = ctx.arm_permit(&scope).await;
            arm.delete_role_assignment(&scope, name).await
        };
        match result {
            // Gone already, or its scope is gone: done.
            Ok(_) | Err(ArmError::NotFound { .. }) => ctx.scopes.record_delete(&scope, name).await,
            Err(e) => {
                failures.push(format!("{id}: {e}"));
                remaining.push(id.clone());
            }
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
        ..previous.clone()
    };
    finish_not_ready(grant, ctx, status, Vec::new(), &previous, "CleanupFailed", message.clone()).await?;
    Err(ReconcileError::Cleanup(message))
}

//! The pure middle of a reconcile: given what was read (the validated spec, the identity and
//! roles resolved, the policy verdicts, the assignments observed at the grant's scopes, what
//! other grants claim, and the grant's own records), decide each entry's outcome and the writes
//! and removals to make. No I/O: every rule is unit-tested in `decide_tests.rs`.
//!
//! A reconcile is the reads in reconcile.rs → [`judge`] and [`desired_assignments`] →
//! [`decide`] → `execute` (writes) → `report` (status, conditions, Events).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::conditions::{self, Decided};
use super::events::GrantEvent;
use super::expiry::{self, Ending, Timing};
use super::plan::{DesiredAssignment, ObservedAssignment, OtherGrants, Precedence, Step, assignment_name, plan};
use super::resolve::{Principal, ResolveError, ResolvedRole};
use super::retry::RetryClass;
use crate::api::validation::{ValidatedGrant, ValidatedIdentity};
use crate::api::{
    AssignmentState, DatabricksIdentityGrantSpec, DatabricksIdentityGrantStatus, PrincipalStatus, Reason,
    RoleAssignmentStatus, UnmanagedAssignment,
};
use crate::azure::{ArmError, RoleAssignmentId};
use crate::policy::evaluate::{Governing, PolicyMode, Request, RoleFacts, Verdict, evaluate};

/// How one entry's role lookup went.
#[derive(Debug, Clone)]
pub enum RoleLookup {
    /// Not looked up: the entry was denied before Azure was asked, or there is no principal.
    NotAsked,
    Resolved(Arc<ResolvedRole>),
    Failed(ResolveError),
}

/// What the GrantPolicies decided for a grant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyVerdicts {
    /// `(spec index, reason, message)` of denied entries, by index.
    pub denials: Vec<(usize, Reason, String)>,
    pub warnings: Vec<String>,
    pub allowed_by: BTreeSet<String>,
}

impl PolicyVerdicts {
    /// Whether entry `index` is denied.
    pub fn denies(&self, index: usize) -> bool {
        self.denials.iter().any(|(i, _, _)| *i == index)
    }

    /// The `PolicyCompliant` condition.
    pub fn condition(&self) -> Decided {
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
        let reason = if self.warnings.is_empty() { Reason::Compliant } else { Reason::CompliantWithWarnings };
        Decided::new(conditions::POLICY_COMPLIANT, true, reason, message)
    }
}

/// What policies match identities against: the identity's ARM id, or `/principals/<id>`.
pub fn policy_identity(identity: &ValidatedIdentity) -> String {
    match identity {
        ValidatedIdentity::Principal { principal_id, .. } => format!("/principals/{principal_id}"),
        other => other.policy_resource_id().map(ToString::to_string).unwrap_or_default(),
    }
}

/// The policy pre-gate, before anything is read from Azure: identity and scope patterns on the
/// parsed ids, per entry. What no policy could allow costs no ARM call, and is denied the same
/// way whether or not the identity or scope exists (no existence oracle over what the
/// operator's identity can read).
pub fn prejudge(
    governing: &[Governing<'_>],
    mode: PolicyMode,
    identity: &str,
    validated: &ValidatedGrant,
) -> Vec<Option<(Reason, String)>> {
    validated
        .role_assignments
        .iter()
        .map(|ra| crate::policy::evaluate::prejudge(governing, mode, identity, &ra.scope))
        .collect()
}

/// The policy verdicts: the pre-gate's denials, and each resolved role judged at its scope.
/// Expired entries are not judged: they are not wanted any more.
pub fn judge(
    governing: &[Governing<'_>],
    mode: PolicyMode,
    validated: &ValidatedGrant,
    identity: &str,
    roles: &[RoleLookup],
    prejudged: Vec<Option<(Reason, String)>>,
    timing: &Timing,
) -> PolicyVerdicts {
    let workspace_managed_identity = matches!(validated.identity, ValidatedIdentity::WorkspaceManagedIdentity { .. });
    let mut verdicts = PolicyVerdicts::default();
    for (index, ra) in validated.role_assignments.iter().enumerate() {
        let Some(RoleLookup::Resolved(role)) = roles.get(index) else { continue };
        let request = Request {
            identity: identity.to_owned(),
            workspace_managed_identity,
            role: RoleFacts { guid: role.guid, name: &role.role_name, permissions: &role.permissions },
            scope: &ra.scope,
            position: index,
            remaining: timing.clocks.get(index).and_then(|c| c.remaining(timing.now)),
        };
        match evaluate(governing, mode, &request) {
            Verdict::Allowed { by, warning } => {
                verdicts.allowed_by.insert(by);
                verdicts.warnings.extend(warning);
            }
            Verdict::Denied { reason, message } => verdicts.denials.push((index, reason, message)),
        }
    }
    verdicts.denials.extend(
        prejudged
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !timing.expired(*i))
            .filter_map(|(i, d)| d.map(|(reason, message)| (i, reason, message))),
    );
    verdicts.denials.sort_by_key(|d| d.0);
    verdicts
}

/// The assignments the grant wants: each entry not expired whose role resolved and that no
/// policy denies.
pub fn desired_assignments(
    validated: &ValidatedGrant,
    principal: Option<&Principal>,
    roles: &[RoleLookup],
    verdicts: &PolicyVerdicts,
    timing: &Timing,
) -> Vec<DesiredAssignment> {
    let Some(principal) = principal else { return Vec::new() };
    validated
        .role_assignments
        .iter()
        .enumerate()
        .filter(|(index, _)| !verdicts.denies(*index) && !timing.expired(*index))
        .filter_map(|(index, ra)| {
            let Some(RoleLookup::Resolved(role)) = roles.get(index) else { return None };
            Some(DesiredAssignment {
                index,
                name: assignment_name(&principal.principal_id, role.guid, &ra.scope),
                scope: ra.scope.clone(),
                role_definition_id: role.role_definition_id.clone(),
                role_guid: role.guid,
                principal_id: principal.principal_id.clone(),
                principal_type: principal.principal_type,
                condition: ra.condition.clone(),
                description: ra.description.clone(),
            })
        })
        .collect()
}

/// The assignment names whose claims by other grants matter to this one.
pub fn relevant_names(
    desired: &[DesiredAssignment],
    previous: &DatabricksIdentityGrantStatus,
    observed: &[ObservedAssignment],
) -> HashSet<String> {
    desired
        .iter()
        .map(|d| d.name.to_ascii_lowercase())
        .chain(records(&previous.managed_assignments).iter().map(|id| id.name().to_ascii_lowercase()))
        .chain(records(&previous.creating_assignments).iter().map(|id| id.name().to_ascii_lowercase()))
        .chain(observed.iter().map(|o| o.name.to_ascii_lowercase()))
        .collect()
}

/// The ids of a status record list that parse (the rest cannot be acted on).
pub fn records(ids: &[String]) -> Vec<RoleAssignmentId> {
    ids.iter().filter_map(|id| RoleAssignmentId::parse(id)).collect()
}

/// Everything [`decide`] looks at.
pub struct Inputs<'a> {
    pub spec: &'a DatabricksIdentityGrantSpec,
    pub previous: &'a DatabricksIdentityGrantStatus,
    /// `managementPolicy: Enforce` (else Observe: nothing is written).
    pub enforce: bool,
    /// `None`: not looked up (every entry was denied before Azure was asked).
    pub principal: Option<&'a Principal>,
    pub roles: &'a [RoleLookup],
    pub verdicts: &'a PolicyVerdicts,
    pub desired: &'a [DesiredAssignment],
    /// Assignments listed at the desired scopes.
    pub observed: &'a [ObservedAssignment],
    /// Desired scopes (normalized) that could not be listed, and why.
    pub unreadable: &'a HashMap<String, ArmError>,
    pub others: &'a OtherGrants,
    pub precedence: &'a Precedence,
    /// When the reconcile runs, and which entries have expired.
    pub timing: &'a Timing,
}

/// A write to make: create or update one desired assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub desired: DesiredAssignment,
    /// `Create { drift }` or `Update` (from the plan).
    pub step: Step,
    /// The write-ahead record it settles (`creatingAssignments`), when there is one.
    pub intent: Option<String>,
    /// Look before writing: the grant created it before (drift), or an earlier write of it is on
    /// the write-ahead record with its outcome unknown. Either way a list that lags behind a
    /// recent write may be all that is missing it, and a GET (consistent, unlike lists) says so.
    pub check_first: bool,
}

impl Write {
    pub fn id(&self) -> RoleAssignmentId {
        RoleAssignmentId::new(self.desired.scope.clone(), self.desired.name.clone())
    }
}

/// What a reconcile decided before writing anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `managementPolicy: Enforce` (else Observe: nothing is written).
    pub enforce: bool,
    pub principal: Option<PrincipalStatus>,
    /// Per spec entry: its outcome, or `None` while a write decides it.
    pub entries: Vec<Option<RoleAssignmentStatus>>,
    pub writes: Vec<Write>,
    /// Assignments to delete (Enforce).
    pub removals: Vec<RoleAssignmentId>,
    /// Assignments Enforce would delete (Observe: reported only).
    pub planned_removals: Vec<RoleAssignmentId>,
    /// The `creatingAssignments` to record before writing, when writes add to it.
    pub intent: Option<Vec<String>>,
    /// The records (`managedAssignments`, `creatingAssignments`) once the plan is applied,
    /// keyed by lower-case id; writes and removals settle the rest.
    pub managed: BTreeMap<String, String>,
    pub creating: BTreeMap<String, String>,
    pub unmanaged: Vec<UnmanagedAssignment>,
    /// Warnings appended to entries' messages, by index.
    pub notes: Vec<(usize, String)>,
    /// `IdentityResolved`, `RolesResolved` and `PolicyCompliant`.
    pub conditions: Vec<Decided>,
    pub events: Vec<GrantEvent>,
    pub retry: RetryClass,
    pub timing: Timing,
    /// Expired entries whose assignment is among `removals`: `(index, assignment key, expiry)`.
    pub expiring: Vec<(usize, String, k8s_openapi::jiff::Timestamp)>,
    /// Removals outside `removals` that failed and are retried (Azure PIM's early ends).
    pub pending_elsewhere: Vec<String>,
}

/// A status entry for spec entry `index`.
pub fn entry(
    spec: &DatabricksIdentityGrantSpec,
    index: usize,
    state: AssignmentState,
    reason: Reason,
    message: Option<String>,
) -> RoleAssignmentStatus {
    let (role, scope) =
        spec.role_assignments.get(index).map(|ra| (ra.role.clone(), ra.scope.clone())).unwrap_or_default();
    RoleAssignmentStatus {
        role,
        role_definition_id: None,
        scope,
        assignment_id: None,
        state,
        reason: Some(reason.code().to_owned()),
        message,
        expires_at: None,
        assigned_at: None,
        removed_at: None,
        enforced_by: None,
    }
}

/// `fresh`, an entry this reconcile could not check (its identity, role or scope could not be
/// read, or the reconcile stopped early), keeping what the last check saw of it: the assignment,
/// its role definition and the time `activeFor` counts from. Without them an outage restarted
/// the clock (access extended by the outage) and dropped the assignment from status. An
/// expired entry stays as it was: it needs nothing from Azure.
pub fn unverified(previous: &DatabricksIdentityGrantStatus, fresh: RoleAssignmentStatus) -> RoleAssignmentStatus {
    let Some(before) = expiry::previous_entry(previous, &fresh.role, &fresh.scope) else { return fresh };
    if before.state == AssignmentState::Expired {
        return before.clone();
    }
    RoleAssignmentStatus {
        role_definition_id: fresh.role_definition_id.or_else(|| before.role_definition_id.clone()),
        assignment_id: before.assignment_id.clone(),
        assigned_at: before.assigned_at.clone(),
        expires_at: before.expires_at.clone(),
        enforced_by: before.enforced_by,
        ..fresh
    }
}

/// The assignments last seen for entries whose role could not be looked up: the spec still
/// asks for them, so they are not removed as unwanted (a 503 on a role lookup deleted the
/// assignment until the next reconcile made it again).
fn unchecked_assignments(inputs: &Inputs<'_>) -> Vec<RoleAssignmentId> {
    inputs
        .roles
        .iter()
        .enumerate()
        .filter(|(_, lookup)| matches!(lookup, RoleLookup::Failed(_)))
        .filter_map(|(index, _)| {
            let ra = inputs.spec.role_assignments.get(index)?;
            let before = expiry::previous_entry(inputs.previous, &ra.role, &ra.scope)?;
            before.assignment_id.as_deref().and_then(RoleAssignmentId::parse)
        })
        .collect()
}

/// `role at scope` of spec entry `index`, for Events.
pub fn described(spec: &DatabricksIdentityGrantSpec, index: usize, scope: &impl std::fmt::Display) -> String {
    let role = spec.role_assignments.get(index).map_or("", |ra| ra.role.as_str());
    format!("{role} at {scope}")
}

fn was(previous: &DatabricksIdentityGrantStatus, index: usize, state: AssignmentState) -> bool {
    previous.role_assignments.get(index).is_some_and(|p| p.state == state)
}

/// Decides every entry, the writes, the removals and the records.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let Inputs { spec, previous, enforce, .. } = *inputs;
    let mut d = Decision {
        enforce,
        principal: previous.principal.clone(),
        entries: vec![None; spec.role_assignments.len()],
        writes: Vec::new(),
        removals: Vec::new(),
        planned_removals: Vec::new(),
        intent: None,
        managed: previous.managed_assignments.iter().map(|s| (s.to_ascii_lowercase(), s.clone())).collect(),
        creating: previous.creating_assignments.iter().map(|s| (s.to_ascii_lowercase(), s.clone())).collect(),
        unmanaged: Vec::new(),
        notes: Vec::new(),
        conditions: Vec::new(),
        events: Vec::new(),
        retry: RetryClass::Resync,
        timing: inputs.timing.clone(),
        expiring: Vec::new(),
        pending_elsewhere: Vec::new(),
    };
    decide_identity(inputs, &mut d);
    decide_roles(inputs, &mut d);
    decide_policy(inputs, &mut d);
    for e in inputs.unreadable.values() {
        d.retry = d.retry.worst(RetryClass::of_arm(e));
    }

    let mut the_plan = plan(
        inputs.desired,
        inputs.observed,
        &records(&previous.managed_assignments),
        &records(&previous.creating_assignments),
        inputs.others,
        inputs.precedence,
    );
    let unchecked = unchecked_assignments(inputs);
    the_plan.deletions.retain(|id| !unchecked.iter().any(|u| id.has_name(u.name())));
    if enforce {
        record_intent(inputs, &the_plan.steps, &mut d);
    }
    for (desired, step) in inputs.desired.iter().zip(&the_plan.steps) {
        decide_entry(inputs, desired, step, &mut d);
    }
    d.notes = the_plan.notes.clone();
    for name in &the_plan.released {
        d.managed.retain(|_, id| !RoleAssignmentId::parse(id).is_some_and(|id| id.has_name(name)));
        d.creating.retain(|_, id| !RoleAssignmentId::parse(id).is_some_and(|id| id.has_name(name)));
    }
    decide_expired(inputs, &the_plan, &mut d);
    if enforce {
        d.removals = the_plan.deletions;
    } else {
        d.planned_removals = the_plan.deletions;
    }
    d.unmanaged = the_plan
        .unmanaged
        .iter()
        .map(|o| UnmanagedAssignment {
            assignment_id: o.id.clone(),
            role_definition_id: o.role_definition_id.clone(),
            scope: o.scope.to_string(),
        })
        .collect();
    d
}

fn decide_identity(inputs: &Inputs<'_>, d: &mut Decision) {
    d.conditions.push(match inputs.principal {
        Some(principal) => {
            d.principal = Some(PrincipalStatus {
                principal_id: principal.principal_id.clone(),
                principal_type: principal.principal_type,
                tenant_id: principal.tenant_id.clone(),
                identity_resource_id: principal.identity_resource_id.clone(),
            });
            Decided::new(
                conditions::IDENTITY_RESOLVED,
                true,
                Reason::Resolved,
                format!("principal {}", principal.principal_id),
            )
        }
        None if inputs.timing.all_expired() => {
            Decided::new(conditions::IDENTITY_RESOLVED, true, Reason::Expired, "not looked up: every entry has expired")
        }
        None => Decided::new(
            conditions::IDENTITY_RESOLVED,
            false,
            Reason::NotResolved,
            "not looked up: no GrantPolicy allows any entry of this grant, so Azure was not asked",
        ),
    });
}

fn decide_roles(inputs: &Inputs<'_>, d: &mut Decision) {
    let mut failures: Vec<&ResolveError> = Vec::new();
    for (index, lookup) in inputs.roles.iter().enumerate() {
        let RoleLookup::Failed(e) = lookup else { continue };
        d.retry = d.retry.worst(RetryClass::of(e.reason, e.retry_after));
        let state = if e.retryable() { AssignmentState::Pending } else { AssignmentState::Failed };
        let fresh = entry(inputs.spec, index, state, e.reason, Some(e.message.clone()));
        d.entries[index] = Some(unverified(inputs.previous, fresh));
        failures.push(e);
    }
    match failures.first() {
        None => {
            d.conditions.push(Decided::new(conditions::ROLES_RESOLVED, true, Reason::Resolved, "every role resolved"))
        }
        Some(first) => {
            let message = failures.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
            d.conditions.push(Decided::new(conditions::ROLES_RESOLVED, false, first.reason, message.clone()));
            d.events.push(GrantEvent::new(Reason::RoleNotResolved, message));
        }
    }
}

fn decide_policy(inputs: &Inputs<'_>, d: &mut Decision) {
    let verdicts = inputs.verdicts;
    for (index, reason, message) in &verdicts.denials {
        d.entries[*index] = Some(entry(inputs.spec, *index, AssignmentState::Denied, *reason, Some(message.clone())));
        if !was(inputs.previous, *index, AssignmentState::Denied) {
            let scope = inputs.spec.role_assignments.get(*index).map_or("", |ra| ra.scope.as_str());
            d.events.push(GrantEvent::new(
                Reason::PolicyDenied,
                format!("{}: {reason}: {message}", described(inputs.spec, *index, &scope)),
            ));
        }
    }
    let condition = verdicts.condition();
    let previous_message =
        inputs.previous.conditions.iter().find(|c| c.type_ == conditions::POLICY_COMPLIANT).map(|c| c.message.as_str());
    if previous_message != Some(condition.message.as_str()) {
        for warning in &verdicts.warnings {
            d.events.push(GrantEvent::new(Reason::DataRoleOnWorkspaceIdentity, warning.clone()));
        }
    }
    d.conditions.push(condition);
}

/// Write-ahead: the assignments about to be created are recorded before they are created, so
/// an operator stopped between a PUT and its status update still knows what it made once the
/// grant stops wanting it (kill loop, tests/integration/kill_loop.rs). An assignment missing
/// from its list that the grant already has on record (drift, or a list lagging behind a
/// recent write) needs no record: it is on one.
fn record_intent(inputs: &Inputs<'_>, steps: &[Step], d: &mut Decision) {
    let before = d.creating.len();
    for (desired, step) in inputs.desired.iter().zip(steps) {
        if matches!(step, Step::Create { drift: false }) && !inputs.unreadable.contains_key(&desired.scope.normalized())
        {
            let id = RoleAssignmentId::new(desired.scope.clone(), desired.name.clone());
            d.creating.entry(id.key()).or_insert_with(|| id.to_string());
        }
    }
    if d.creating.len() > before {
        d.intent = Some(d.creating.values().cloned().collect());
    }
}

/// Expired entries: their assignment is removed with the plan's deletions when this grant made
/// it (settled in `report`), stays when adopted or still wanted by another grant, and the
/// entry says which.
fn decide_expired(inputs: &Inputs<'_>, the_plan: &super::plan::Plan, d: &mut Decision) {
    let now = inputs.timing.now;
    for (index, clock) in inputs.timing.clocks.iter().enumerate() {
        let (true, Some(at)) = (clock.expired, clock.expires_at) else { continue };
        let fresh = entry(inputs.spec, index, AssignmentState::Expired, Reason::Expired, None);
        let before = expiry::previous_entry(inputs.previous, &fresh.role, &fresh.scope).cloned();
        let id = before.as_ref().and_then(|b| b.assignment_id.clone());
        let key = id.as_deref().and_then(RoleAssignmentId::parse).map(|id| id.key());
        let mut carried = fresh.clone();
        carried.role_definition_id = before.as_ref().and_then(|b| b.role_definition_id.clone());
        carried.assignment_id = id.clone();
        carried.assigned_at = before.as_ref().and_then(|b| b.assigned_at.clone());
        let deleting = key.as_ref().is_some_and(|k| the_plan.deletions.iter().any(|del| del.key() == *k));
        let released = key
            .as_ref()
            .and_then(|k| RoleAssignmentId::parse(k))
            .is_some_and(|id| the_plan.released.iter().any(|name| id.has_name(name)));
        let ending = match before.as_ref().map(|b| b.state) {
            _ if deleting && inputs.enforce => {
                if let Some(k) = key {
                    d.expiring.push((index, k, at));
                }
                // Settled by the removal's outcome in `report`.
                Ending::Removing
            }
            _ if deleting => Ending::RemovalPlanned,
            _ if released => Ending::StillWanted,
            _ if before.as_ref().is_some_and(|b| b.enforced_by == Some(crate::api::Enforcement::AzurePim)) => {
                d.entries[index] = Some(super::pim::ended_by_azure(carried, at));
                continue;
            }
            Some(AssignmentState::Adopted) => Ending::Adopted,
            Some(AssignmentState::Expired) => {
                // Already settled by an earlier reconcile: kept as it was.
                let mut kept = before.clone().unwrap_or(carried);
                kept.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
                d.entries[index] = Some(kept);
                continue;
            }
            _ => Ending::RemovedBefore(None),
        };
        d.entries[index] = Some(expiry::expired_entry(carried, at, &ending, now));
    }
}

fn decide_entry(inputs: &Inputs<'_>, desired: &DesiredAssignment, step: &Step, d: &mut Decision) {
    let id = RoleAssignmentId::new(desired.scope.clone(), desired.name.clone());
    // Settled here unless its write's outcome stays unknown.
    let intent = d.creating.remove(&id.key());
    let mut st = entry(inputs.spec, desired.index, AssignmentState::Pending, Reason::Pending, Some(String::new()));
    st.role_definition_id = Some(desired.role_definition_id.clone());
    if let Some(e) = inputs.unreadable.get(&desired.scope.normalized()) {
        let reason = Reason::of_arm(e);
        st.state = if reason.retryable() { AssignmentState::Pending } else { AssignmentState::Failed };
        st.reason = Some(reason.code().to_owned());
        // Named the way a failed write at the scope names it, whichever of the two saw it first.
        st.message = Some(match reason {
            Reason::ScopeNotFound => {
                format!("the scope {} does not exist (listing its assignments: {e})", desired.scope)
            }
            _ => format!("cannot list assignments at {}: {e}", desired.scope),
        });
        d.entries[desired.index] = Some(unverified(inputs.previous, st));
        d.creating.extend(intent.map(|i| (i.to_ascii_lowercase(), i)));
        return;
    }
    let about = described(inputs.spec, desired.index, &desired.scope);
    match step {
        Step::InSync => {
            st.state = AssignmentState::Assigned;
            st.assignment_id = Some(id.to_string());
            st.reason = Some(Reason::Assigned.code().to_owned());
            st.message = None;
            d.managed.insert(id.key(), id.to_string());
        }
        Step::Adopt { id: existing, condition_differs } => {
            st.state = AssignmentState::Adopted;
            st.assignment_id = Some(existing.clone());
            st.reason = Some(Reason::Adopted.code().to_owned());
            st.message = Some(if *condition_differs {
                "an assignment for this principal, role and scope already existed and is used as is; its condition differs from the spec and is left alone".into()
            } else {
                "an assignment for this principal, role and scope already existed; the operator uses it and never deletes it".into()
            });
            if !was(inputs.previous, desired.index, AssignmentState::Adopted) {
                d.events.push(GrantEvent::new(
                    Reason::Adopted,
                    format!("adopted existing assignment {existing} for {about}"),
                ));
            }
        }
        Step::Conflict { with } => {
            st.state = AssignmentState::Failed;
            st.reason = Some(Reason::ConflictingGrant.code().to_owned());
            st.message = Some(format!(
                "older grant {with} asks for the same principal, role and scope with another condition; Azure allows one assignment per tuple, so its condition wins (grants created in the same second: the namespace/name that sorts first)"
            ));
            d.events
                .push(GrantEvent::new(Reason::ConflictingGrant, format!("{about}: conflicts with older grant {with}")));
        }
        Step::Create { .. } | Step::Update if !inputs.enforce => {
            st.state = AssignmentState::Planned;
            let reason = if matches!(step, Step::Update) { Reason::UpdatePlanned } else { Reason::CreatePlanned };
            st.reason = Some(reason.code().to_owned());
            st.message = Some("managementPolicy is Observe: nothing is written to Azure".into());
        }
        Step::Create { .. } | Step::Update => {
            let written_before =
                inputs.previous.creating_assignments.iter().any(|c| c.eq_ignore_ascii_case(&id.to_string()));
            let check_first =
                matches!(step, Step::Create { drift: true }) || (written_before && matches!(step, Step::Create { .. }));
            d.writes.push(Write { desired: desired.clone(), step: step.clone(), intent, check_first });
            return;
        }
    }
    d.entries[desired.index] = Some(st);
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

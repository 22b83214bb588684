//! Time-bound access enforced by Azure PIM (`enforcement: AzurePIM`): each entry becomes an
//! active assignment made through `roleAssignmentScheduleRequests` (`AdminAssign`, with the
//! entry's end as `AfterDateTime`), extended with `AdminUpdate`, ended early with
//! `AdminRemove`, and read back from `roleAssignmentSchedules`, so Azure ends access on time
//! even while the operator is down.
//!
//! The assignment PIM makes also appears in the ordinary role-assignment list under a name of
//! Azure's choosing: the reconcile takes PIM-held entries, and the listed assignments of their
//! tuples, out of the ordinary plan, so they are neither re-PUT nor reported unmanaged.
//!
//! Which schedule is this grant's: one it recorded (`status.managedSchedules`), or one whose
//! request carries the name this grant would give it (a UUID v5 of the assignment name and the
//! end), so a schedule made just before a crash is recognised. Any other schedule for the tuple
//! was made outside the grant: adopted, never ended by the operator.
//!
//! When Azure refuses the request for a reason PIM's own policy does not explain (no licence,
//! a principal type PIM does not take, a schedule too short), the entry falls back to operator
//! enforcement, with a Warning Event and a status note. A refusal by the role's PIM policy
//! (`RoleAssignmentRequestPolicyValidationFailed`, e.g. its maximum duration) is not worked
//! around: the entry fails with reason `PimPolicyRefused`.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::events::GrantEvent;
use super::expiry::{self, Timing};
use super::plan::{DesiredAssignment, ObservedAssignment};
use super::retry::RetryClass;
use crate::api::validation::{Lifetime, ValidatedGrant};
use crate::api::{
    AssignmentState, DatabricksIdentityGrantSpec, DatabricksIdentityGrantStatus, Enforcement, ManagedSchedule, Reason,
    RoleAssignmentStatus,
};
use crate::azure::models::{RoleAssignmentSchedule, ScheduleRequestProperties};
use crate::azure::{ArmClient, ArmError, ResourceId};

/// Namespace of PIM request names (fixed: changing it would make the operator's own schedules
/// look foreign).
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x2f0c_61d4_7e3b_4a8e_9c55_0b1d_3e7a_f2c9);

/// Azure's answer when the role's PIM policy refuses a request.
pub const POLICY_REFUSED: &str = "RoleAssignmentRequestPolicyValidationFailed";

/// The name of the request that makes (or moves) the assignment `name` to end at `end`.
pub fn request_name(assignment: &str, end: Timestamp) -> String {
    Uuid::new_v5(&REQUEST_NAMESPACE, format!("{}|{}", assignment.to_ascii_lowercase(), end.as_second()).as_bytes())
        .to_string()
}

/// The spec entries PIM holds this reconcile: every entry of an `AzurePIM` grant that has not
/// expired and has not fallen back to operator enforcement.
pub fn held(
    spec: &DatabricksIdentityGrantSpec,
    validated: &ValidatedGrant,
    previous: &DatabricksIdentityGrantStatus,
    timing: &Timing,
) -> Vec<usize> {
    if validated.enforcement != Enforcement::AzurePim {
        return Vec::new();
    }
    spec.role_assignments
        .iter()
        .enumerate()
        .filter(|(i, ra)| {
            !timing.expired(*i)
                && expiry::previous_entry(previous, &ra.role, &ra.scope)
                    .is_none_or(|p| p.enforced_by != Some(Enforcement::Operator))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether an observed assignment is the one PIM made for a held entry (same tuple).
pub fn carries(o: &ObservedAssignment, held: &[DesiredAssignment]) -> bool {
    held.iter().any(|d| {
        d.principal_id.eq_ignore_ascii_case(&o.principal_id) && d.role_guid == o.role_guid && d.scope == o.scope
    })
}

/// When a held entry must end: its `expiresAt`, or `activeFor` from its first assignment (now,
/// if it has none yet).
pub fn end_of(timing: &Timing, index: usize) -> Option<Timestamp> {
    let clock = timing.clocks.get(index)?;
    match (clock.expires_at, clock.lifetime?) {
        (Some(at), _) => Some(at),
        (None, Lifetime::For(d)) => timing.now.checked_add(SignedDuration::try_from(d).ok()?).ok(),
        (None, Lifetime::Until(at)) => Some(at),
    }
}

/// What to do about one held entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PimStep {
    /// This grant's schedule, ending when it should.
    InSync(ManagedSchedule),
    /// This grant's schedule, ending at another time: moved with `AdminUpdate`.
    Move(ManagedSchedule),
    /// No schedule for the tuple: `AdminAssign`.
    Assign,
    /// A schedule made outside this grant.
    Adopt(ManagedSchedule),
}

fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

/// A listed schedule as the grant records it.
pub fn managed(s: &RoleAssignmentSchedule, fallback_scope: &ResourceId) -> Option<ManagedSchedule> {
    let p = &s.properties;
    Some(ManagedSchedule {
        schedule_id: s.id.clone(),
        scope: p.scope.clone().unwrap_or_else(|| fallback_scope.to_string()),
        role_definition_id: p.role_definition_id.clone()?,
        principal_id: p.principal_id.clone()?,
        end: Time(parse_time(p.end_date_time.as_deref())?),
    })
}

/// Decides one held entry from the schedules listed for its principal at its scope.
pub fn step(
    d: &DesiredAssignment,
    end: Timestamp,
    listed: &[RoleAssignmentSchedule],
    recorded: &[ManagedSchedule],
) -> PimStep {
    let same_tuple = listed.iter().find(|s| {
        let p = &s.properties;
        let role = p
            .role_definition_id
            .as_deref()
            .and_then(|r| ResourceId::parse(r).ok())
            .and_then(|r| crate::azure::guid::parse_guid(r.name()));
        let scope = p.scope.as_deref().and_then(|s| ResourceId::parse(s).ok());
        role == Some(d.role_guid)
            && scope.as_ref() == Some(&d.scope)
            && p.principal_id.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(&d.principal_id))
    });
    let Some(found) = same_tuple else { return PimStep::Assign };
    let Some(schedule) = managed(found, &d.scope) else { return PimStep::Assign };
    let request = found.properties.role_assignment_schedule_request_id.as_deref().unwrap_or_default();
    let ours = recorded.iter().any(|r| r.schedule_id.eq_ignore_ascii_case(&found.id))
        || request.to_ascii_lowercase().ends_with(&request_name(&d.name, schedule.end.0));
    if !ours {
        PimStep::Adopt(schedule)
    } else if schedule.end.0.as_second() == end.as_second() {
        PimStep::InSync(schedule)
    } else {
        PimStep::Move(schedule)
    }
}

/// What the PIM part of a reconcile did.
#[derive(Debug)]
pub struct PimOutcome {
    /// Settled held entries, by spec index.
    pub entries: Vec<(usize, RoleAssignmentStatus)>,
    /// The grant's schedules afterwards.
    pub schedules: Vec<ManagedSchedule>,
    pub events: Vec<GrantEvent>,
    pub retry: RetryClass,
    /// Early ends that failed (retried): `Ready` stays False.
    pub pending: Vec<String>,
}

/// How a refused request is handled.
fn refusal(e: &ArmError) -> Refusal {
    match e {
        ArmError::InvalidRequest { code, .. } if code.eq_ignore_ascii_case(POLICY_REFUSED) => Refusal::Policy,
        e if e.is_retryable() => Refusal::Retry,
        _ => Refusal::Fallback,
    }
}

enum Refusal {
    Policy,
    Retry,
    Fallback,
}

/// Performs the PIM part of a reconcile (`Enforce` only): each held entry assigned, moved or
/// kept; schedules this grant made that no held entry wants any more ended early.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    arm: &ArmClient,
    spec: &DatabricksIdentityGrantSpec,
    previous: &DatabricksIdentityGrantStatus,
    held: &[DesiredAssignment],
    timing: &Timing,
    justification: &str,
) -> PimOutcome {
    let mut out = PimOutcome {
        entries: Vec::new(),
        schedules: Vec::new(),
        events: Vec::new(),
        retry: RetryClass::Resync,
        pending: Vec::new(),
    };
    let now = timing.now;
    // Azure ended the recorded schedules whose end has passed.
    let mut recorded: Vec<ManagedSchedule> =
        previous.managed_schedules.iter().filter(|s| s.end.0 > now).cloned().collect();
    let mut listed: HashMap<(String, String), Vec<RoleAssignmentSchedule>> = HashMap::new();
    for d in held {
        let mut st = super::decide::entry(spec, d.index, AssignmentState::Pending, Reason::Pending, None);
        st.role_definition_id = Some(d.role_definition_id.clone());
        st.enforced_by = Some(Enforcement::AzurePim);
        let Some(end) = end_of(timing, d.index) else { continue };
        let key = (d.scope.normalized(), d.principal_id.to_ascii_lowercase());
        if !listed.contains_key(&key) {
            match arm.list_role_assignment_schedules(&d.scope, &d.principal_id).await {
                Ok(list) => {
                    listed.insert(key.clone(), list);
                }
                Err(e) => {
                    out.retry = out.retry.worst(RetryClass::of_arm(&e));
                    st.reason = Some(Reason::of_arm(&e).code().to_owned());
                    st.message = Some(format!("cannot list PIM schedules at {}: {e}", d.scope));
                    out.entries.push((d.index, st));
                    continue;
                }
            }
        }
        let schedules = listed.get(&key).map(Vec::as_slice).unwrap_or_default();
        let about = super::decide::described(spec, d.index, &d.scope);
        let result = match step(d, end, schedules, &recorded) {
            PimStep::InSync(s) => Ok(s),
            PimStep::Adopt(s) => {
                st.state = AssignmentState::Adopted;
                st.reason = Some(Reason::Adopted.code().to_owned());
                st.message = Some(format!(
                    "a PIM assignment made outside this grant exists (schedule {}, ending at {}); the operator uses it and never ends it",
                    s.schedule_id, s.end.0
                ));
                out.entries.push((d.index, st));
                continue;
            }
            PimStep::Assign => send(arm, d, "AdminAssign", end, justification).await,
            PimStep::Move(_) => send(arm, d, "AdminUpdate", end, justification).await,
        };
        match result {
            Ok(schedule) => {
                if !recorded.iter().any(|r| r.schedule_id.eq_ignore_ascii_case(&schedule.schedule_id)) {
                    out.events.push(GrantEvent::new(
                        Reason::Created,
                        format!("assigned {about} through Azure PIM until {}", schedule.end.0),
                    ));
                }
                recorded.retain(|r| !r.schedule_id.eq_ignore_ascii_case(&schedule.schedule_id));
                st.state = AssignmentState::Assigned;
                st.reason = Some(Reason::Assigned.code().to_owned());
                st.message = Some(format!("active through Azure PIM until {}; Azure ends it", schedule.end.0));
                recorded.push(schedule);
            }
            Err(e) => match refusal(&e) {
                Refusal::Policy => {
                    st.state = AssignmentState::Failed;
                    st.reason = Some(Reason::PimPolicyRefused.code().to_owned());
                    st.message = Some(format!("the role's Azure PIM policy refused the request: {e}"));
                    out.events.push(GrantEvent::new(Reason::PimPolicyRefused, format!("{about}: {e}")));
                    out.retry = out.retry.worst(RetryClass::Slowly);
                }
                Refusal::Retry => {
                    st.reason = Some(Reason::of_arm(&e).code().to_owned());
                    st.message = Some(format!("Azure PIM request failed, retried: {e}"));
                    out.retry = out.retry.worst(RetryClass::of_arm(&e));
                }
                Refusal::Fallback => {
                    st.enforced_by = Some(Enforcement::Operator);
                    st.reason = Some(Reason::PimUnavailable.code().to_owned());
                    st.message = Some(format!(
                        "Azure PIM refused the request ({e}); the operator enforces this entry's end instead"
                    ));
                    out.events.push(GrantEvent::new(
                        Reason::PimUnavailable,
                        format!("{about}: Azure PIM refused the request ({e}); falling back to operator enforcement"),
                    ));
                    out.retry = out.retry.worst(RetryClass::Soon(None));
                }
            },
        }
        out.entries.push((d.index, st));
    }
    // Schedules this grant made that no held entry wants any more: ended early.
    let wanted = |s: &ManagedSchedule| {
        held.iter().any(|d| {
            ResourceId::parse(&s.scope).is_ok_and(|scope| scope == d.scope)
                && s.principal_id.eq_ignore_ascii_case(&d.principal_id)
                && s.role_definition_id.eq_ignore_ascii_case(&d.role_definition_id)
        })
    };
    let (keep, stale): (Vec<_>, Vec<_>) = recorded.into_iter().partition(wanted);
    out.schedules = keep;
    for s in stale {
        match end_early(arm, &s, justification).await {
            Ok(()) => out.events.push(GrantEvent::new(
                Reason::Deleted,
                format!("ended PIM schedule {} early: the grant no longer asks for it", s.schedule_id),
            )),
            Err(e) => {
                out.retry = out.retry.worst(RetryClass::Soon(None));
                out.pending.push(format!("PIM schedule {} ({e})", s.schedule_id));
                out.schedules.push(s);
            }
        }
    }
    out
}

async fn send(
    arm: &ArmClient,
    d: &DesiredAssignment,
    request_type: &str,
    end: Timestamp,
    justification: &str,
) -> Result<ManagedSchedule, ArmError> {
    let properties = ScheduleRequestProperties {
        principal_type: Some(format!("{:?}", d.principal_type)),
        justification: Some(justification.to_owned()),
        condition: d.condition.as_ref().map(|c| c.expression.clone()),
        condition_version: d.condition.as_ref().map(|c| c.version.clone()),
        ..ScheduleRequestProperties::ending_at(request_type, &d.principal_id, &d.role_definition_id, &end.to_string())
    };
    let answer = arm.put_schedule_request(&d.scope, &request_name(&d.name, end), properties).await?;
    let schedule_id = answer.properties.target_role_assignment_schedule_id.clone().unwrap_or_default();
    Ok(ManagedSchedule {
        schedule_id,
        scope: d.scope.to_string(),
        role_definition_id: d.role_definition_id.clone(),
        principal_id: d.principal_id.clone(),
        end: Time(end),
    })
}

/// Ends a schedule early (`AdminRemove`). A schedule already gone is fine; one younger than
/// Azure's 5 minutes is refused and retried.
pub async fn end_early(arm: &ArmClient, s: &ManagedSchedule, justification: &str) -> Result<(), ArmError> {
    let scope = ResourceId::parse(&s.scope).map_err(|e| ArmError::InvalidRequest {
        code: "InvalidScope".into(),
        message: format!("recorded PIM schedule scope '{}': {e}", s.scope),
    })?;
    let properties = ScheduleRequestProperties {
        principal_id: s.principal_id.clone(),
        role_definition_id: s.role_definition_id.clone(),
        request_type: "AdminRemove".into(),
        justification: Some(justification.to_owned()),
        ..Default::default()
    };
    let name = Uuid::new_v4().to_string();
    match arm.put_schedule_request(&scope, &name, properties).await {
        Ok(_) => Ok(()),
        Err(ArmError::InvalidRequest { code, .. }) if code.eq_ignore_ascii_case("RoleAssignmentDoesNotExist") => Ok(()),
        Err(ArmError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// In an `AzurePIM` grant, an entry that fell back to operator enforcement stays there: its
/// `enforcedBy: Operator` is carried from the previous status (held entries set their own).
pub fn mark_operator_enforced(status: &mut DatabricksIdentityGrantStatus, previous: &DatabricksIdentityGrantStatus) {
    for e in &mut status.role_assignments {
        let fell_back = expiry::previous_entry(previous, &e.role, &e.scope)
            .is_some_and(|p| p.enforced_by == Some(Enforcement::Operator));
        if e.enforced_by.is_none() && fell_back && e.state != AssignmentState::Expired {
            e.enforced_by = Some(Enforcement::Operator);
            if e.message.is_none() {
                e.message = Some(
                    "enforced by the operator: Azure PIM refused this entry (see its PimUnavailable Event)".into(),
                );
            }
        }
    }
}

/// The status of an entry whose PIM assignment Azure ended at its end.
pub fn ended_by_azure(mut entry: RoleAssignmentStatus, at: Timestamp) -> RoleAssignmentStatus {
    entry.state = AssignmentState::Expired;
    entry.reason = Some(Reason::Expired.code().to_owned());
    entry.expires_at = Some(Time(at));
    entry.removed_at = Some(Time(at));
    entry.enforced_by = Some(Enforcement::AzurePim);
    entry.message = Some(format!("access ended at {at}; Azure PIM ended the assignment"));
    entry
}

#[cfg(test)]
#[path = "pim_tests.rs"]
mod tests;

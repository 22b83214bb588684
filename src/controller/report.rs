//! The pure end of a reconcile: from the [`Decision`] and what its writes and removals did,
//! the grant's status, its conditions, its Events and when to look again. Also the reports of
//! reconciles that stop early (invalid spec, unusable credential, unresolved identity).

use super::conditions::{self, Decided};
use super::decide::{Decision, entry, unverified};
use super::events::GrantEvent;
use super::expiry::{self, Ending};
use super::resolve::ResolveError;
use super::retry::RetryClass;
use crate::api::{
    AssignmentState, DatabricksIdentityGrantSpec, DatabricksIdentityGrantStatus, Health, Reason, RoleAssignmentStatus,
};
use crate::azure::{ArmError, RoleAssignmentId};

/// What one write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The assignment is in Azure as desired; `created` when Azure made it (201), not when it
    /// was already there or updated in place.
    Written {
        created: bool,
    },
    /// Someone else's assignment for the tuple exists (listed too late to be seen): adopted.
    Exists {
        existing: Option<String>,
        message: String,
    },
    Failed(ArmError),
}

/// What one removal did.
#[derive(Debug, Clone, PartialEq)]
pub enum RemovalOutcome {
    /// Gone. `confirmed`: Azure answered the DELETE itself (not a 404 for a scope or an
    /// assignment already gone).
    Removed {
        confirmed: bool,
    },
    Failed(ArmError),
}

/// What `execute` did, in the order of the decision's writes and removals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Executed {
    pub writes: Vec<WriteOutcome>,
    pub removals: Vec<RemovalOutcome>,
}

/// What a reconcile writes back: status (conditions merged by the writer), Events, and when to
/// reconcile again.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: DatabricksIdentityGrantStatus,
    pub conditions: Vec<Decided>,
    pub events: Vec<GrantEvent>,
    pub retry: RetryClass,
    /// Assignments removed outside the operator and recreated by this reconcile.
    pub drift_corrected: i64,
}

/// The status of a reconcile that stops before reading the spec's entries (invalid spec, no
/// credential): each entry of the last status waits (Pending for `reason`, saying `message`),
/// keeping what was last seen of it ([`unverified`]); never the unvalidated spec's entries,
/// which may be junk. What the grant created stays on record (and in Azure) until it is fixed.
pub fn carried(
    previous: &DatabricksIdentityGrantStatus,
    reason: Reason,
    message: &str,
) -> DatabricksIdentityGrantStatus {
    let waiting = |before: &RoleAssignmentStatus| RoleAssignmentStatus {
        state: AssignmentState::Pending,
        reason: Some(reason.code().to_owned()),
        message: Some(message.to_owned()),
        ..before.clone()
    };
    with_entries(
        previous,
        previous.role_assignments.iter().map(|before| unverified(previous, waiting(before))).collect(),
    )
}

/// `previous`'s records and principal with these entries.
fn with_entries(
    previous: &DatabricksIdentityGrantStatus,
    role_assignments: Vec<RoleAssignmentStatus>,
) -> DatabricksIdentityGrantStatus {
    DatabricksIdentityGrantStatus {
        principal: previous.principal.clone(),
        next_expiry: expiry::next_expiry(&role_assignments),
        role_assignments,
        managed_assignments: previous.managed_assignments.clone(),
        creating_assignments: previous.creating_assignments.clone(),
        managed_schedules: previous.managed_schedules.clone(),
        drift_corrections: previous.drift_corrections,
        ..Default::default()
    }
}

/// A reconcile that stops early: Ready false for `reason`, and a Warning Event saying why.
pub fn stopped(status: DatabricksIdentityGrantStatus, reason: Reason, message: String, retry: RetryClass) -> Report {
    Report {
        status,
        conditions: vec![Decided::new(conditions::READY, false, reason, message.clone())],
        events: vec![GrantEvent::new(reason, message)],
        retry,
        drift_corrected: 0,
    }
}

/// The identity did not resolve: every entry of the (validated) spec waits for it, keeping what
/// was last seen of it.
pub fn identity_failed(
    spec: &DatabricksIdentityGrantSpec,
    previous: &DatabricksIdentityGrantStatus,
    e: &ResolveError,
) -> Report {
    let waiting =
        |i| entry(spec, i, AssignmentState::Pending, e.reason, Some("waiting for the identity to resolve".into()));
    let status =
        with_entries(previous, (0..spec.role_assignments.len()).map(|i| unverified(previous, waiting(i))).collect());
    let mut report = stopped(status, e.reason, e.message.clone(), RetryClass::of(e.reason, e.retry_after));
    report.conditions.insert(0, Decided::new(conditions::IDENTITY_RESOLVED, false, e.reason, e.message.clone()));
    report
}

/// The report of a reconcile that ran through: each write's and removal's outcome settles its
/// entry and the records; then `InSync` and `Ready`.
pub fn report(
    spec: &DatabricksIdentityGrantSpec,
    previous: &DatabricksIdentityGrantStatus,
    decision: Decision,
    executed: Executed,
) -> Report {
    let Decision { mut entries, mut managed, mut creating, mut events, mut retry, .. } = decision;
    let now = decision.timing.now;
    let mut drift_corrected = 0;
    for (write, outcome) in decision.writes.iter().zip(executed.writes) {
        let id = write.id();
        let about = super::decide::described(spec, write.desired.index, &write.desired.scope);
        let mut st = entry(spec, write.desired.index, AssignmentState::Pending, Reason::Pending, None);
        st.role_definition_id = Some(write.desired.role_definition_id.clone());
        match outcome {
            WriteOutcome::Written { created } => {
                st.state = AssignmentState::Assigned;
                st.assignment_id = Some(id.to_string());
                st.reason = Some(Reason::Assigned.code().to_owned());
                managed.insert(id.key(), id.to_string());
                let drift = matches!(write.step, super::plan::Step::Create { drift: true });
                if created && drift {
                    drift_corrected += 1;
                    events.push(GrantEvent::new(
                        Reason::DriftCorrected,
                        format!("recreated {about}: it had been removed outside the operator"),
                    ));
                } else if created {
                    events.push(GrantEvent::new(Reason::Created, format!("assigned {about}")));
                } else if matches!(write.step, super::plan::Step::Update) {
                    events
                        .push(GrantEvent::new(Reason::Updated, format!("updated condition or description of {about}")));
                }
            }
            WriteOutcome::Exists { existing, message } => {
                st.state = AssignmentState::Adopted;
                st.assignment_id = existing.clone();
                st.reason = Some(Reason::Adopted.code().to_owned());
                st.message = Some(format!(
                    "an assignment for this principal, role and scope already exists ({message}); the operator uses it and never deletes it"
                ));
                let existing = existing.unwrap_or_else(|| "(not yet listed)".into());
                events.push(GrantEvent::new(
                    Reason::Adopted,
                    format!("adopted existing assignment {existing} for {about}"),
                ));
            }
            WriteOutcome::Failed(e) => {
                // Kept while the write is retried (even a refused one: dropping it and recording
                // it again each retry would make every retry two status writes).
                creating.extend(write.intent.clone().map(|i| (i.to_ascii_lowercase(), i)));
                retry = retry.worst(RetryClass::of_arm(&e));
                let reason = Reason::of_arm(&e);
                st.state = if reason.retryable() { AssignmentState::Pending } else { AssignmentState::Failed };
                st.reason = Some(reason.code().to_owned());
                // Named as a failed role lookup names it (Azure's text names only the GUID).
                st.message = Some(match reason {
                    Reason::RoleNotFound => format!("role '{}': {e}", st.role),
                    _ => e.to_string(),
                });
                if !reason.retryable() {
                    events.push(GrantEvent::new(Reason::AssignmentFailed, format!("{about}: {e}")));
                }
            }
        }
        entries[write.desired.index] = Some(st);
    }
    for (index, note) in &decision.notes {
        if let Some(Some(st)) = entries.get_mut(*index) {
            st.message = Some(st.message.clone().map_or(note.clone(), |m| format!("{m}; {note}")));
        }
    }

    let mut pending_removals: Vec<String> = decision.planned_removals.iter().map(RoleAssignmentId::key).collect();
    pending_removals.extend(decision.pending_elsewhere.iter().cloned());
    for (id, outcome) in decision.removals.iter().zip(executed.removals) {
        let key = id.key();
        match outcome {
            RemovalOutcome::Removed { confirmed } => {
                let recorded = managed.remove(&key).is_some();
                if let Some((index, _, at)) = decision.expiring.iter().find(|(_, k, _)| *k == key) {
                    creating.remove(&key);
                    // Unconfirmed: the expiry sweeper removed it a moment ago and sent the Event.
                    settle_expired(&mut entries, &mut events, *index, *at, &Ending::Removed, now, confirmed);
                    continue;
                }
                // A write never confirmed that turns out not to exist was not "removed".
                if creating.remove(&key).is_none() || recorded || confirmed {
                    events.push(GrantEvent::new(
                        Reason::Deleted,
                        format!("removed assignment {key}: the grant no longer asks for it"),
                    ));
                }
            }
            RemovalOutcome::Failed(e) => {
                retry = retry.worst(RetryClass::of_arm(&e));
                if let Some((index, _, at)) = decision.expiring.iter().find(|(_, k, _)| *k == key) {
                    let ending = Ending::RemovalFailed(e.to_string());
                    settle_expired(&mut entries, &mut events, *index, *at, &ending, now, false);
                }
                pending_removals.push(format!("{key} ({e})"));
            }
        }
    }
    creating.retain(|id, _| !managed.contains_key(id));

    let mut status = DatabricksIdentityGrantStatus {
        principal: decision.principal,
        creating_assignments: creating.into_values().collect(),
        managed_assignments: managed.into_values().collect(),
        unmanaged_assignments: decision.unmanaged,
        drift_corrections: previous.drift_corrections + drift_corrected,
        ..Default::default()
    };
    status.role_assignments = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.unwrap_or_else(|| {
                entry(spec, i, AssignmentState::Pending, Reason::Pending, Some("not yet processed".into()))
            })
        })
        .collect();
    events.extend(expiry::annotate(
        &mut status.role_assignments,
        &decision.timing.clocks,
        previous,
        now,
        decision.timing.warning,
    ));
    status.next_expiry = expiry::next_expiry(&status.role_assignments);
    let mut conditions = decision.conditions;
    conditions.extend(sync_and_ready(&mut status, &pending_removals, !decision.enforce));
    Report { status, conditions, events, retry, drift_corrected }
}

/// An expired entry whose assignment's removal just ended as `ending`.
fn settle_expired(
    entries: &mut [Option<RoleAssignmentStatus>],
    events: &mut Vec<GrantEvent>,
    index: usize,
    at: k8s_openapi::jiff::Timestamp,
    ending: &Ending,
    now: k8s_openapi::jiff::Timestamp,
    announce: bool,
) {
    let Some(Some(entry)) = entries.get_mut(index) else { return };
    *entry = expiry::expired_entry(entry.clone(), at, ending, now);
    if announce {
        events.push(expiry::removed_event(&entry.role, &entry.scope, at, now));
    }
}

/// `InSync` and `Ready` from the settled entries (and sets `assigned`).
fn sync_and_ready(
    status: &mut DatabricksIdentityGrantStatus,
    pending_removals: &[String],
    observe: bool,
) -> [Decided; 2] {
    let in_place = expiry::in_place;
    let expired = status.role_assignments.iter().filter(|e| e.state == AssignmentState::Expired).count();
    // Expired entries are done, not missing: counted apart.
    let total = status.role_assignments.len() - expired;
    let done = status.role_assignments.iter().filter(|e| in_place(e.state)).count();
    status.assigned =
        Some(if expired == 0 { format!("{done}/{total}") } else { format!("{done}/{total}, {expired} expired") });
    let planned = status.role_assignments.iter().filter(|e| e.state == AssignmentState::Planned).count();
    let in_sync = if done == total && pending_removals.is_empty() {
        Decided::new(conditions::IN_SYNC, true, Reason::InSync, "Azure matches the spec")
    } else if observe {
        Decided::new(
            conditions::IN_SYNC,
            false,
            Reason::ChangesPlanned,
            format!(
                "{planned} assignment(s) would be created or updated and {} removed; managementPolicy is Observe",
                pending_removals.len()
            ),
        )
    } else {
        let mut why: Vec<String> = status
            .role_assignments
            .iter()
            .filter(|e| !in_place(e.state) && e.state != AssignmentState::Expired)
            .map(|e| {
                format!("{} at {}: {}", e.role, e.scope, e.message.clone().or(e.reason.clone()).unwrap_or_default())
            })
            .collect();
        why.extend(pending_removals.iter().map(|r| format!("removal pending: {r}")));
        Decided::new(conditions::IN_SYNC, false, Reason::OutOfSync, why.join("; "))
    };
    // Observe: a planned change is what the grant asked for (report it, write nothing), so the
    // grant is Ready once observed; InSync says what Enforce would change.
    let settled = |state: AssignmentState| {
        in_place(state) || state == AssignmentState::Expired || (observe && state == AssignmentState::Planned)
    };
    let waiting: Vec<_> = status.role_assignments.iter().filter(|e| !settled(e.state)).collect();
    let reason_of =
        |e: &RoleAssignmentStatus| e.reason.as_deref().and_then(Reason::from_code).unwrap_or(Reason::Pending);
    // What needs a person speaks for the grant first: it will not become Ready without one.
    let blocking = waiting.iter().find(|e| reason_of(e).health() == Health::NeedsAttention).or(waiting.first());
    let ready = match blocking {
        None if observe && (planned > 0 || !pending_removals.is_empty()) => Decided::new(
            conditions::READY,
            true,
            Reason::ChangesPlanned,
            format!(
                "observed: {planned} assignment(s) would be created or updated and {} removed; managementPolicy is Observe, so nothing is written to Azure",
                pending_removals.len()
            ),
        ),
        None if pending_removals.is_empty() && total == 0 && expired > 0 => Decided::new(
            conditions::READY,
            true,
            Reason::Expired,
            format!("every entry has expired ({expired}); the grant holds no access"),
        ),
        None if pending_removals.is_empty() => {
            let mut message = format!("{done}/{total} role assignments in place");
            if expired > 0 {
                message.push_str(&format!("; {expired} expired"));
            }
            Decided::new(conditions::READY, true, Reason::Ready, message)
        }
        None => Decided::new(conditions::READY, false, Reason::RemovalPending, pending_removals.join("; ")),
        Some(e) => Decided::new(
            conditions::READY,
            false,
            reason_of(e),
            format!(
                "{done}/{total} role assignments in place; {} at {}: {}",
                e.role,
                e.scope,
                e.message.clone().unwrap_or_default()
            ),
        ),
    };
    [in_sync, ready]
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;

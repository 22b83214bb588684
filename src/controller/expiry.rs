//! Time-bound access: when each entry's access ends, how an entry in place or expired reads in
//! status, and which assignments are due for removal now. Pure, so every rule is unit-tested;
//! the sweeper that acts on [`due_removals`] on time is in `background.rs`.
//!
//! The expiry of an entry is recomputed from spec and status on every reconcile (`expiresAt`
//! directly; `activeFor` from `assignedAt`, recorded the first time the entry was in place), so
//! a restart, a failover or an operator that was down across an expiry reach the same answer.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::events::GrantEvent;
use crate::api::validation::{Lifetime, ValidatedGrant};
use crate::api::{
    AssignmentState, DatabricksIdentityGrant, DatabricksIdentityGrantStatus, Reason, RoleAssignmentStatus,
};
use crate::azure::RoleAssignmentId;

/// A removal later than this after `expiresAt` is explained in its Event (the operator was not
/// running, or could not reach Azure).
const LATE: Duration = Duration::from_secs(15);

/// The time of a reconcile and every entry's clock then, in spec order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timing {
    pub now: Timestamp,
    pub clocks: Vec<EntryClock>,
    /// How long before its end an entry reads `ExpiringSoon` (and an Event says so).
    pub warning: Duration,
}

impl Timing {
    /// Whether entry `index` has expired.
    pub fn expired(&self, index: usize) -> bool {
        self.clocks.get(index).is_some_and(|c| c.expired)
    }

    /// Whether every entry has expired (then nothing needs the identity resolved).
    pub fn all_expired(&self) -> bool {
        !self.clocks.is_empty() && self.clocks.iter().all(|c| c.expired)
    }
}

/// One entry's clock at the time of a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryClock {
    pub lifetime: Option<Lifetime>,
    /// When access ends; `None` without a lifetime, or for `activeFor` before the entry was
    /// first in place.
    pub expires_at: Option<Timestamp>,
    /// When the entry was first in place (from status).
    pub assigned_at: Option<Timestamp>,
    pub expired: bool,
}

impl EntryClock {
    /// Access left, as a GrantPolicy's `maxDuration` judges it: until `expiresAt`, or the whole
    /// `activeFor` before the entry is first assigned. `None`: access without end.
    pub fn remaining(&self, now: Timestamp) -> Option<Duration> {
        let left = match (self.lifetime?, self.expires_at) {
            (_, Some(at)) => at.duration_since(now),
            (Lifetime::For(d), None) => return Some(d),
            (Lifetime::Until(at), None) => at.duration_since(now),
        };
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    }
}

/// The previous status entry for `role` at `scope` (matched by text, not position: a reordered
/// spec keeps each entry's `assignedAt`).
pub fn previous_entry<'a>(
    previous: &'a DatabricksIdentityGrantStatus,
    role: &str,
    scope: &str,
) -> Option<&'a RoleAssignmentStatus> {
    previous.role_assignments.iter().find(|p| p.role.eq_ignore_ascii_case(role) && p.scope.eq_ignore_ascii_case(scope))
}

/// The grant's [`Timing`] at `now`.
pub fn timing(
    spec: &crate::api::DatabricksIdentityGrantSpec,
    validated: &ValidatedGrant,
    previous: &DatabricksIdentityGrantStatus,
    now: Timestamp,
    warning: Duration,
) -> Timing {
    Timing { now, clocks: clocks(spec, validated, previous, now), warning }
}

/// Every entry's clock, in spec order.
pub fn clocks(
    spec: &crate::api::DatabricksIdentityGrantSpec,
    validated: &ValidatedGrant,
    previous: &DatabricksIdentityGrantStatus,
    now: Timestamp,
) -> Vec<EntryClock> {
    validated
        .role_assignments
        .iter()
        .zip(&spec.role_assignments)
        .map(|(valid, written)| {
            let before = previous_entry(previous, &written.role, &written.scope);
            let assigned_at = before.and_then(|p| p.assigned_at.as_ref()).map(|t| t.0);
            let expires_at = match valid.lifetime {
                None => None,
                Some(Lifetime::Until(at)) => Some(at),
                Some(Lifetime::For(d)) => assigned_at.and_then(|a| add(a, d)),
            };
            EntryClock {
                lifetime: valid.lifetime,
                expires_at,
                assigned_at,
                expired: expires_at.is_some_and(|at| at <= now),
            }
        })
        .collect()
}

fn add(at: Timestamp, d: Duration) -> Option<Timestamp> {
    SignedDuration::try_from(d).ok().and_then(|d| at.checked_add(d).ok())
}

/// Whether the state counts as in place.
pub fn in_place(state: AssignmentState) -> bool {
    matches!(state, AssignmentState::Assigned | AssignmentState::Adopted)
}

/// Sets the expiry fields of settled entries: `assignedAt` the first time a time-bound entry
/// is in place (so `activeFor` starts then), `expiresAt`, and reason `ExpiringSoon` (with an
/// Event once) within `warning` of the end. Returns the Events.
pub fn annotate(
    entries: &mut [RoleAssignmentStatus],
    clocks: &[EntryClock],
    previous: &DatabricksIdentityGrantStatus,
    now: Timestamp,
    warning: Duration,
) -> Vec<GrantEvent> {
    let mut events = Vec::new();
    for (entry, clock) in entries.iter_mut().zip(clocks) {
        let Some(lifetime) = clock.lifetime else { continue };
        if entry.state == AssignmentState::Expired {
            continue;
        }
        let assigned_at = clock.assigned_at.or_else(|| in_place(entry.state).then_some(now));
        let expires_at = match lifetime {
            Lifetime::Until(at) => Some(at),
            Lifetime::For(d) => assigned_at.and_then(|a| add(a, d)),
        };
        entry.assigned_at = assigned_at.map(Time);
        entry.expires_at = expires_at.map(Time);
        let Some(at) = expires_at else { continue };
        let soon =
            in_place(entry.state) && at.duration_since(now) <= SignedDuration::try_from(warning).unwrap_or_default();
        if soon && entry.reason.as_deref() != Some(Reason::ConflictingGrant.code()) {
            let warned_before = previous_entry(previous, &entry.role, &entry.scope).is_some_and(|p| {
                p.reason.as_deref() == Some(Reason::ExpiringSoon.code()) && p.expires_at == entry.expires_at
            });
            entry.reason = Some(Reason::ExpiringSoon.code().to_owned());
            entry.message = Some(format!("access ends at {at}"));
            if !warned_before {
                events.push(GrantEvent::new(
                    Reason::ExpiringSoon,
                    format!("{} at {}: access ends at {at}", entry.role, entry.scope),
                ));
            }
        }
    }
    events
}

/// How an expired entry's assignment was dealt with, for its status and Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// To be removed by this reconcile (settled by the outcome).
    Removing,
    /// Removed from Azure now.
    Removed,
    /// Removed by an earlier reconcile (or the sweeper) at this time.
    RemovedBefore(Option<Time>),
    /// Adopted: made elsewhere, never deleted by the operator.
    Adopted,
    /// Another live grant still wants it.
    StillWanted,
    /// Its removal failed (retried).
    RemovalFailed(String),
    /// `managementPolicy: Observe`: it would be removed.
    RemovalPlanned,
}

/// The status of an expired entry.
pub fn expired_entry(
    mut entry: RoleAssignmentStatus,
    at: Timestamp,
    ending: &Ending,
    now: Timestamp,
) -> RoleAssignmentStatus {
    entry.state = AssignmentState::Expired;
    entry.reason = Some(Reason::Expired.code().to_owned());
    entry.expires_at = Some(Time(at));
    entry.message = Some(match ending {
        Ending::Removing => format!("access ended at {at}; its role assignment is removed"),
        Ending::Removed => {
            entry.removed_at = Some(Time(now));
            format!("access ended at {at}; its role assignment was removed at {now}")
        }
        Ending::RemovedBefore(when) => {
            entry.removed_at = when.clone();
            match when {
                Some(t) => format!("access ended at {at}; its role assignment was removed at {}", t.0),
                None => format!("access ended at {at}; there was no role assignment of this grant to remove"),
            }
        }
        Ending::Adopted => format!(
            "access ended at {at}; the role assignment was adopted (made outside this grant), so the operator leaves it in Azure"
        ),
        Ending::StillWanted => format!(
            "access ended at {at} for this grant; another grant still asks for the same role assignment, so it stays in Azure"
        ),
        Ending::RemovalPlanned => format!(
            "access ended at {at}; managementPolicy is Observe, so its role assignment is not removed (Enforce would remove it)"
        ),
        Ending::RemovalFailed(e) => {
            entry.reason = Some(Reason::RemovalPending.code().to_owned());
            format!("access ended at {at}; removing its role assignment failed and is retried: {e}")
        }
    });
    entry
}

/// The Event for an assignment removed at expiry, saying so when it came late.
pub fn removed_event(role: &str, scope: &str, at: Timestamp, now: Timestamp) -> GrantEvent {
    let late = Duration::try_from(now.duration_since(at)).unwrap_or_default();
    let mut note = format!("access to {role} at {scope} ended at {at}: its role assignment was removed");
    if late > LATE {
        note.push_str(&format!(
            " {} s late (the operator was not running or could not reach Azure at the time)",
            late.as_secs()
        ));
    }
    GrantEvent::new(Reason::Expired, note)
}

/// The soonest expiry among entries not yet expired (`status.nextExpiry`).
pub fn next_expiry(entries: &[RoleAssignmentStatus]) -> Option<Time> {
    entries
        .iter()
        .filter(|e| e.state != AssignmentState::Expired)
        .filter_map(|e| e.expires_at.as_ref())
        .min_by_key(|t| t.0)
        .cloned()
}

/// How long until the grant's status changes on its own: an entry entering its warning window
/// or expiring. `None`: never.
pub fn next_change(status: &DatabricksIdentityGrantStatus, now: Timestamp, warning: Duration) -> Option<Duration> {
    let warning = SignedDuration::try_from(warning).unwrap_or_default();
    status
        .role_assignments
        .iter()
        .filter(|e| e.state != AssignmentState::Expired)
        .filter_map(|e| e.expires_at.as_ref().map(|t| t.0))
        .flat_map(|at| {
            let warn_at = at.checked_sub(warning).ok();
            [warn_at, Some(at)]
        })
        .flatten()
        .filter(|t| *t > now)
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .min()
}

/// The assignments of a grant due for removal at `now`: entries in state `Assigned` (made by
/// this grant, never adopted ones) whose current spec says their access has ended, and whose
/// assignment the grant has on record. Judged on the spec as it is now, so an extension
/// written a moment ago is never undone. The sweeper removes them on time, ahead of the
/// controller's queue; the reconcile it then triggers records the outcome.
pub fn due_removals(grant: &DatabricksIdentityGrant, now: Timestamp) -> Vec<DueRemoval> {
    let Some(status) = &grant.status else { return Vec::new() };
    // Most grants are not time-bound: they cost the sweeper no validation, once a second.
    if !is_time_bound(&grant.spec) {
        return Vec::new();
    }
    let Ok(validated) = crate::api::validation::validate_grant_spec(&grant.spec) else { return Vec::new() };
    if validated.management_policy != crate::api::ManagementPolicy::Enforce {
        return Vec::new();
    }
    let clocks = clocks(&grant.spec, &validated, status, now);
    grant
        .spec
        .role_assignments
        .iter()
        .zip(clocks)
        .filter_map(|(written, clock)| {
            let at = clock.expires_at.filter(|_| clock.expired)?;
            let entry = previous_entry(status, &written.role, &written.scope)?;
            // Pending with an id: not checked lately (an outage), its assignment still in place.
            let in_place_or_unchecked = matches!(entry.state, AssignmentState::Assigned | AssignmentState::Pending);
            let id = entry.assignment_id.as_deref().filter(|_| in_place_or_unchecked)?;
            let recorded = status.managed_assignments.iter().any(|m| m.eq_ignore_ascii_case(id));
            let id = RoleAssignmentId::parse(id).filter(|_| recorded)?;
            Some(DueRemoval { id, ends: at, role: written.role.clone(), scope: written.scope.clone() })
        })
        .collect()
}

/// Whether the spec gives any entry an end (on the grant or on an entry).
pub fn is_time_bound(spec: &crate::api::DatabricksIdentityGrantSpec) -> bool {
    spec.expires_at.is_some()
        || spec.active_for.is_some()
        || spec.role_assignments.iter().any(|r| r.expires_at.is_some() || r.active_for.is_some())
}

/// An assignment whose access has ended, for the sweeper.
#[derive(Debug, Clone, PartialEq)]
pub struct DueRemoval {
    pub id: RoleAssignmentId,
    pub ends: Timestamp,
    /// The entry's role and scope as written (for the Event).
    pub role: String,
    pub scope: String,
}

/// Entries in place whose access ends within each window, for the `…_assignments_expiring`
/// gauge: `(window label, count)`.
pub const EXPIRING_WINDOWS: [(&str, Duration); 3] =
    [("1h", Duration::from_secs(3600)), ("24h", Duration::from_secs(86_400)), ("7d", Duration::from_secs(7 * 86_400))];

/// Counts for [`EXPIRING_WINDOWS`] over the grants' status.
pub fn expiring_counts(grants: &[std::sync::Arc<DatabricksIdentityGrant>], now: Timestamp) -> [i64; 3] {
    let mut counts = [0i64; 3];
    for entry in grants.iter().filter_map(|g| g.status.as_ref()).flat_map(|s| &s.role_assignments) {
        let Some(at) = entry.expires_at.as_ref().map(|t| t.0) else { continue };
        if !in_place(entry.state) || at <= now {
            continue;
        }
        let left = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        for (i, (_, window)) in EXPIRING_WINDOWS.iter().enumerate() {
            if left <= *window {
                counts[i] += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
#[path = "expiry_tests.rs"]
mod tests;

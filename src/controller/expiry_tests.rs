use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::DatabricksIdentityGrantSpec;
use crate::api::validation::validate_grant_spec;

const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
const HOUR: Duration = Duration::from_secs(3600);

fn at(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn spec(grant: serde_json::Value, entries: &[serde_json::Value]) -> DatabricksIdentityGrantSpec {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let mut e =
                serde_json::json!({"role": "Reader", "scope": format!("/subscriptions/{SUB}/resourceGroups/rg-{i}")});
            if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
                e.extend(extra.clone());
            }
            e
        })
        .collect();
    let mut value = serde_json::json!({
        "identity": {"principal": {"principalId": "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb"}},
        "roleAssignments": entries,
    });
    if let (Some(v), Some(grant)) = (value.as_object_mut(), grant.as_object()) {
        v.extend(grant.clone());
    }
    serde_json::from_value(value).expect("spec")
}

fn status_entry(spec: &DatabricksIdentityGrantSpec, i: usize, state: AssignmentState) -> RoleAssignmentStatus {
    crate::controller::decide::entry(spec, i, state, Reason::Assigned, None)
}

#[test]
fn an_entry_expires_by_its_own_lifetime_else_the_grants() {
    let now = at("2026-06-01T12:00:00Z");
    let s = spec(
        serde_json::json!({"expiresAt": "2026-06-01T11:59:59Z"}),
        &[
            serde_json::json!({}),
            serde_json::json!({"expiresAt": "2026-06-02T00:00:00Z"}),
            serde_json::json!({"activeFor": "2h"}),
        ],
    );
    let validated = validate_grant_spec(&s).expect("valid");
    let mut previous = DatabricksIdentityGrantStatus::default();
    let c = clocks(&s, &validated, &previous, now);
    assert!(c[0].expired, "the grant's past expiresAt");
    assert!(!c[1].expired, "its own later expiresAt wins");
    assert_eq!((c[2].expires_at, c[2].expired), (None, false), "activeFor starts when first assigned");
    assert_eq!(c[2].remaining(now), Some(2 * HOUR));

    // activeFor counts from assignedAt, found by (role, scope) even when the spec was reordered.
    let mut assigned = status_entry(&s, 2, AssignmentState::Assigned);
    assigned.assigned_at = Some(Time(at("2026-06-01T09:30:00Z")));
    previous.role_assignments = vec![assigned];
    let c = clocks(&s, &validated, &previous, now);
    assert_eq!(c[2].expires_at, Some(at("2026-06-01T11:30:00Z")));
    assert!(c[2].expired);
    assert_eq!(c[2].remaining(now), Some(Duration::ZERO));
}

#[test]
fn settled_entries_record_when_they_were_assigned_and_warn_once_before_the_end() {
    let now = at("2026-06-01T12:00:00Z");
    let s = spec(
        serde_json::json!({}),
        &[
            serde_json::json!({"activeFor": "30m"}),
            serde_json::json!({"expiresAt": "2026-06-03T00:00:00Z"}),
            serde_json::json!({}),
        ],
    );
    let validated = validate_grant_spec(&s).expect("valid");
    let previous = DatabricksIdentityGrantStatus::default();
    let c = clocks(&s, &validated, &previous, now);
    let mut entries: Vec<RoleAssignmentStatus> =
        (0..3).map(|i| status_entry(&s, i, AssignmentState::Assigned)).collect();
    let events = annotate(&mut entries, &c, &previous, now, HOUR);
    assert_eq!(entries[0].assigned_at.as_ref().map(|t| t.0), Some(now));
    assert_eq!(entries[0].expires_at.as_ref().map(|t| t.0), Some(at("2026-06-01T12:30:00Z")));
    assert_eq!(entries[0].reason.as_deref(), Some("ExpiringSoon"), "30 minutes left, inside the hour");
    assert_eq!(entries[1].reason.as_deref(), Some("Assigned"), "a day and a half left");
    assert_eq!(
        (entries[2].expires_at.as_ref(), entries[2].assigned_at.as_ref()),
        (None, None),
        "no lifetime, no fields"
    );
    assert_eq!(events.len(), 1);
    assert_eq!(next_expiry(&entries).map(|t| t.0), Some(at("2026-06-01T12:30:00Z")));

    // The next reconcile does not warn again.
    let previous = DatabricksIdentityGrantStatus { role_assignments: entries.clone(), ..Default::default() };
    let c = clocks(&s, &validated, &previous, now);
    let mut again: Vec<RoleAssignmentStatus> = (0..3).map(|i| status_entry(&s, i, AssignmentState::Assigned)).collect();
    assert!(annotate(&mut again, &c, &previous, now, HOUR).is_empty());
    assert_eq!(again, entries, "the same status: no write");

    // A pending entry has no assignedAt yet, so activeFor has not started.
    let mut pending = vec![status_entry(&s, 0, AssignmentState::Pending)];
    let c = clocks(&s, &validated, &DatabricksIdentityGrantStatus::default(), now);
    annotate(&mut pending, &c, &DatabricksIdentityGrantStatus::default(), now, HOUR);
    assert_eq!((pending[0].assigned_at.as_ref(), pending[0].expires_at.as_ref()), (None, None));
}

#[test]
fn the_next_change_is_the_soonest_warning_or_end() {
    let now = at("2026-06-01T12:00:00Z");
    let s = spec(serde_json::json!({}), &[serde_json::json!({}), serde_json::json!({})]);
    let mut first = status_entry(&s, 0, AssignmentState::Assigned);
    first.expires_at = Some(Time(at("2026-06-01T14:00:00Z")));
    let mut second = status_entry(&s, 1, AssignmentState::Assigned);
    second.expires_at = Some(Time(at("2026-06-01T12:10:00Z")));
    let status = DatabricksIdentityGrantStatus { role_assignments: vec![first, second.clone()], ..Default::default() };
    assert_eq!(next_change(&status, now, HOUR), Some(Duration::from_secs(600)), "the second ends in 10 minutes");
    let status = DatabricksIdentityGrantStatus {
        role_assignments: vec![status.role_assignments[0].clone()],
        ..Default::default()
    };
    assert_eq!(next_change(&status, now, HOUR), Some(HOUR), "the first's warning starts in an hour");
    second.state = AssignmentState::Expired;
    let status = DatabricksIdentityGrantStatus { role_assignments: vec![second], ..Default::default() };
    assert_eq!(next_change(&status, now, HOUR), None);
}

#[test]
fn only_assignments_this_grant_made_and_recorded_are_due_for_removal() {
    let now = at("2026-06-01T12:00:00Z");
    let s = spec(
        serde_json::json!({}),
        &[
            serde_json::json!({"expiresAt": "2026-06-01T11:59:59Z"}),
            serde_json::json!({"expiresAt": "2026-06-01T12:00:01Z"}),
            serde_json::json!({"expiresAt": "2026-06-01T11:00:00Z"}),
            serde_json::json!({"expiresAt": "2026-06-01T11:00:00Z"}),
            serde_json::json!({"expiresAt": "2026-06-02T00:00:00Z"}),
            serde_json::json!({"expiresAt": "2026-06-01T11:00:00Z"}),
        ],
    );
    let id = |rg: usize| {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg-{rg}/providers/Microsoft.Authorization/roleAssignments/1111111{rg}-1111-1111-1111-111111111111"
        )
    };
    let entry = |i: usize, state: AssignmentState, ends: &str| {
        let mut e = status_entry(&s, i, state);
        e.assignment_id = Some(id(i));
        e.expires_at = Some(Time(at(ends)));
        e
    };
    let grant: DatabricksIdentityGrant = serde_json::from_value(serde_json::json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": s,
        "status": {
            "roleAssignments": [
                entry(0, AssignmentState::Assigned, "2026-06-01T11:59:59Z"),
                entry(1, AssignmentState::Assigned, "2026-06-01T12:00:01Z"),
                entry(2, AssignmentState::Adopted, "2026-06-01T11:00:00Z"),
                entry(3, AssignmentState::Assigned, "2026-06-01T11:00:00Z"),
                // Extended in the spec a moment ago; the status has not caught up.
                entry(4, AssignmentState::Assigned, "2026-06-01T11:00:00Z"),
                // Not verified in an outage, its assignment kept: still removed at its end.
                entry(5, AssignmentState::Pending, "2026-06-01T11:00:00Z"),
            ],
            "managedAssignments": [id(0), id(1), id(4), id(5)],
        },
    }))
    .expect("grant");
    let due = due_removals(&grant, now);
    assert_eq!(due.len(), 2, "entries 0 and 5: {due:?}");
    assert_eq!(due[0].id.to_string().to_ascii_lowercase(), id(0).to_ascii_lowercase());
    assert_eq!(due[0].ends, at("2026-06-01T11:59:59Z"));
    assert_eq!(due[1].id.to_string().to_ascii_lowercase(), id(5).to_ascii_lowercase());

    assert!(is_time_bound(&grant.spec));
    let mut untimed = grant.clone();
    for ra in &mut untimed.spec.role_assignments {
        ra.expires_at = None;
    }
    assert!(!is_time_bound(&untimed.spec) && due_removals(&untimed, now).is_empty(), "no expiry, nothing due");

    let mut observing = grant.clone();
    observing.spec.management_policy = crate::api::ManagementPolicy::Observe;
    assert!(due_removals(&observing, now).is_empty(), "Observe removes nothing");
}

#[test]
fn in_place_entries_are_counted_per_window() {
    let now = at("2026-06-01T12:00:00Z");
    let s = spec(serde_json::json!({}), &[serde_json::json!({})]);
    let grant = |state: AssignmentState, ends: &str| {
        let mut e = status_entry(&s, 0, state);
        e.expires_at = Some(Time(at(ends)));
        std::sync::Arc::new(DatabricksIdentityGrant {
            metadata: Default::default(),
            spec: s.clone(),
            status: Some(DatabricksIdentityGrantStatus { role_assignments: vec![e], ..Default::default() }),
        })
    };
    let counts = expiring_counts(
        &[
            grant(AssignmentState::Assigned, "2026-06-01T12:30:00Z"),
            grant(AssignmentState::Adopted, "2026-06-01T20:00:00Z"),
            grant(AssignmentState::Assigned, "2026-06-05T12:00:00Z"),
            grant(AssignmentState::Assigned, "2026-07-01T12:00:00Z"),
            grant(AssignmentState::Expired, "2026-06-01T12:30:00Z"),
            grant(AssignmentState::Pending, "2026-06-01T12:30:00Z"),
        ],
        now,
    );
    assert_eq!(counts, [1, 2, 3]);
}

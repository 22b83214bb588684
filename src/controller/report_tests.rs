//! Table-driven tests of [`report`](super::report): what each write and removal outcome makes
//! of an entry, the records, the Events, `InSync`, `Ready` and the retry class.

use std::collections::BTreeMap;

use super::*;
use crate::api::PrincipalType;
use crate::azure::ResourceId;
use crate::controller::decide::Write;
use crate::controller::plan::{DesiredAssignment, Step};

const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

fn spec(observe: bool) -> DatabricksIdentityGrantSpec {
    serde_json::from_value(serde_json::json!({
        "identity": {"principal": {"principalId": "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb"}},
        "roleAssignments": [{"role": "Reader", "scope": format!("/subscriptions/{SUB}/resourceGroups/rg-a")}],
        "managementPolicy": if observe { "Observe" } else { "Enforce" },
    }))
    .expect("spec")
}

fn desired() -> DesiredAssignment {
    DesiredAssignment {
        index: 0,
        name: "33333333-3333-3333-3333-333333333333".into(),
        scope: ResourceId::resource_group(SUB, "rg-a"),
        role_definition_id: format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
        ),
        role_guid: "acdd72a7-3385-48ef-bd42-f606fba81ae7".parse().expect("guid"),
        principal_id: "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb".into(),
        principal_type: PrincipalType::ServicePrincipal,
        condition: None,
        description: None,
    }
}

fn decision(step: Option<Step>, removals: Vec<RoleAssignmentId>, enforce: bool) -> Decision {
    let write = step.map(|step| {
        let d = desired();
        let intent = matches!(step, Step::Create { .. })
            .then(|| RoleAssignmentId::new(d.scope.clone(), d.name.clone()).to_string());
        Write { desired: d, step, intent, check_first: false }
    });
    let managed: BTreeMap<String, String> = removals.iter().map(|id| (id.key(), id.to_string())).collect();
    Decision {
        enforce,
        principal: None,
        entries: vec![None],
        writes: write.into_iter().collect(),
        removals: if enforce { removals.clone() } else { Vec::new() },
        planned_removals: if enforce { Vec::new() } else { removals },
        intent: None,
        managed,
        creating: BTreeMap::new(),
        unmanaged: Vec::new(),
        notes: Vec::new(),
        conditions: Vec::new(),
        events: Vec::new(),
        retry: RetryClass::Resync,
        timing: Default::default(),
        expiring: Vec::new(),
        pending_elsewhere: Vec::new(),
    }
}

fn ready(report: &Report) -> (bool, Reason) {
    report.conditions.iter().find(|c| c.type_ == conditions::READY).map(|c| (c.status, c.reason)).expect("Ready")
}

fn entry_of(report: &Report) -> (AssignmentState, Reason) {
    let e = &report.status.role_assignments[0];
    (e.state, e.reason.as_deref().and_then(Reason::from_code).expect("known reason"))
}

fn reasons(report: &Report) -> Vec<Reason> {
    report.events.iter().map(|e| e.reason).collect()
}

/// Each write outcome: the entry, the Event, Ready, the retry class, and whether the write-ahead
/// record stays.
#[test]
fn write_outcomes() {
    let throttled = ArmError::Throttled { code: "TooManyRequests".into(), message: "m".into(), retry_after: None };
    let refused = ArmError::AuthorizationFailed { message: "no".into() };
    let rows = vec![
        (
            "created",
            Step::Create { drift: false },
            WriteOutcome::Written { created: true },
            (AssignmentState::Assigned, Reason::Assigned),
            vec![Reason::Created],
            (true, Reason::Ready),
            RetryClass::Resync,
            false,
        ),
        (
            "recreated after drift",
            Step::Create { drift: true },
            WriteOutcome::Written { created: true },
            (AssignmentState::Assigned, Reason::Assigned),
            vec![Reason::DriftCorrected],
            (true, Reason::Ready),
            RetryClass::Resync,
            false,
        ),
        (
            "already there (a re-PUT)",
            Step::Create { drift: false },
            WriteOutcome::Written { created: false },
            (AssignmentState::Assigned, Reason::Assigned),
            vec![],
            (true, Reason::Ready),
            RetryClass::Resync,
            false,
        ),
        (
            "updated in place",
            Step::Update,
            WriteOutcome::Written { created: false },
            (AssignmentState::Assigned, Reason::Assigned),
            vec![Reason::Updated],
            (true, Reason::Ready),
            RetryClass::Resync,
            false,
        ),
        (
            "someone else's, listed late",
            Step::Create { drift: false },
            WriteOutcome::Exists { existing: None, message: "exists".into() },
            (AssignmentState::Adopted, Reason::Adopted),
            vec![Reason::Adopted],
            (true, Reason::Ready),
            RetryClass::Resync,
            false,
        ),
        (
            "throttled",
            Step::Create { drift: false },
            WriteOutcome::Failed(throttled),
            (AssignmentState::Pending, Reason::TooManyRequests),
            vec![],
            (false, Reason::TooManyRequests),
            RetryClass::Soon(None),
            true,
        ),
        (
            "refused",
            Step::Create { drift: false },
            WriteOutcome::Failed(refused),
            (AssignmentState::Failed, Reason::AuthorizationFailed),
            vec![Reason::AssignmentFailed],
            (false, Reason::AuthorizationFailed),
            RetryClass::Slowly,
            true,
        ),
    ];
    for (name, step, outcome, entry, events, ready_is, retry, intent_kept) in rows {
        let created = matches!(&outcome, WriteOutcome::Written { created: true });
        let drift = matches!(step, Step::Create { drift: true });
        let r = report(
            &spec(false),
            &DatabricksIdentityGrantStatus::default(),
            decision(Some(step), vec![], true),
            Executed { writes: vec![outcome], removals: vec![] },
        );
        assert_eq!(entry_of(&r), entry, "{name}");
        assert_eq!(reasons(&r), events, "{name}");
        assert_eq!(ready(&r), ready_is, "{name}");
        assert_eq!(r.retry, retry, "{name}");
        assert_eq!(!r.status.creating_assignments.is_empty(), intent_kept, "{name}");
        let in_place = entry.0 == AssignmentState::Assigned;
        assert_eq!(r.status.managed_assignments.len(), usize::from(in_place), "{name}: managed only when ours");
        assert_eq!(r.drift_corrected, i64::from(created && drift), "{name}");
        assert_eq!(r.status.drift_corrections, r.drift_corrected, "{name}");
        assert_eq!(r.status.assigned.as_deref(), Some(if ready_is.0 { "1/1" } else { "0/1" }), "{name}");
    }
}

#[test]
fn removal_outcomes() {
    let stale =
        RoleAssignmentId::new(ResourceId::resource_group(SUB, "rg-old"), "44444444-4444-4444-4444-444444444444");
    let in_sync = |r: &Report| r.conditions.iter().find(|c| c.type_ == conditions::IN_SYNC).map(|c| c.reason);

    let removed = |outcome| {
        let mut d = decision(None, vec![stale.clone()], true);
        d.entries = vec![Some(entry(&spec(false), 0, AssignmentState::Assigned, Reason::Assigned, None))];
        report(
            &spec(false),
            &DatabricksIdentityGrantStatus::default(),
            d,
            Executed { writes: vec![], removals: vec![outcome] },
        )
    };
    let r = removed(RemovalOutcome::Removed { confirmed: true });
    assert_eq!(reasons(&r), vec![Reason::Deleted]);
    assert!(r.status.managed_assignments.is_empty());
    assert_eq!(ready(&r), (true, Reason::Ready));

    let r = removed(RemovalOutcome::Failed(ArmError::Transient { status: Some(500), message: "m".into() }));
    assert_eq!(ready(&r), (false, Reason::RemovalPending));
    assert_eq!(in_sync(&r), Some(Reason::OutOfSync));
    assert_eq!(r.retry, RetryClass::Soon(None));
    assert_eq!(r.status.managed_assignments, vec![stale.to_string()], "kept on record to retry");

    // A write never confirmed that turns out not to exist was not "removed": no Event.
    let mut d = decision(None, vec![stale.clone()], true);
    d.managed.clear();
    d.creating.insert(stale.key(), stale.to_string());
    d.entries = vec![Some(entry(&spec(false), 0, AssignmentState::Assigned, Reason::Assigned, None))];
    let r = report(
        &spec(false),
        &DatabricksIdentityGrantStatus::default(),
        d,
        Executed { writes: vec![], removals: vec![RemovalOutcome::Removed { confirmed: false }] },
    );
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert!(r.status.creating_assignments.is_empty());

    // Observe: reported, not removed.
    let mut d = decision(None, vec![stale], false);
    d.entries = vec![Some(entry(&spec(true), 0, AssignmentState::Planned, Reason::CreatePlanned, None))];
    let r = report(&spec(true), &DatabricksIdentityGrantStatus::default(), d, Executed::default());
    assert_eq!(in_sync(&r), Some(Reason::ChangesPlanned));
    // Observing is what the grant asked for: Ready (not Reconciling forever), with the plan.
    assert_eq!(ready(&r), (true, Reason::ChangesPlanned));
    let message = &r.conditions.iter().find(|c| c.type_ == conditions::READY).expect("Ready").message;
    assert!(message.contains("1 assignment(s) would be created or updated and 1 removed"), "{message}");

    // Observe does not hide what needs a person.
    let mut d = decision(None, vec![], false);
    d.entries = vec![
        Some(entry(&spec(true), 0, AssignmentState::Planned, Reason::CreatePlanned, None)),
        Some(entry(&spec(true), 0, AssignmentState::Failed, Reason::RoleNotFound, None)),
    ];
    let r = report(&spec(true), &DatabricksIdentityGrantStatus::default(), d, Executed::default());
    assert_eq!(ready(&r), (false, Reason::RoleNotFound));
}

#[test]
fn what_needs_a_person_speaks_for_the_grant() {
    let mut d = decision(None, vec![], true);
    d.entries = vec![
        Some(entry(&spec(false), 0, AssignmentState::Pending, Reason::TooManyRequests, None)),
        Some(entry(&spec(false), 0, AssignmentState::Denied, Reason::RoleNotAllowed, None)),
        Some(entry(&spec(false), 0, AssignmentState::Assigned, Reason::Assigned, None)),
    ];
    let r = report(&spec(false), &DatabricksIdentityGrantStatus::default(), d, Executed::default());
    assert_eq!(ready(&r), (false, Reason::RoleNotAllowed), "Stalled, not Reconciling: it cannot become Ready alone");
}

#[test]
fn an_unsettled_entry_is_pending() {
    let mut d = decision(None, vec![], true);
    d.entries = vec![None];
    let r = report(&spec(false), &DatabricksIdentityGrantStatus::default(), d, Executed::default());
    assert_eq!(entry_of(&r), (AssignmentState::Pending, Reason::Pending));
    assert_eq!(ready(&r), (false, Reason::Pending));
}

/// A reconcile that stops early (invalid spec, no credential, identity not resolved) changes
/// Ready and keeps the rest: records, and each entry's last-seen assignment and clock (a lost
/// `assignedAt` restarted `activeFor` after every outage).
#[test]
fn early_stops() {
    let time = |t: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().expect("time"));
    let mut assigned = entry(&spec(false), 0, AssignmentState::Assigned, Reason::Assigned, None);
    assigned.assignment_id =
        Some("/subscriptions/s/resourceGroups/rg-a/providers/Microsoft.Authorization/roleAssignments/a".into());
    assigned.assigned_at = Some(time("2026-06-01T10:00:00Z"));
    assigned.expires_at = Some(time("2026-06-01T11:00:00Z"));
    let previous = DatabricksIdentityGrantStatus {
        managed_assignments: vec!["kept".into()],
        drift_corrections: 3,
        assigned: Some("1/1".into()),
        role_assignments: vec![assigned.clone()],
        ..Default::default()
    };
    let kept = |r: &Report, reason: Reason| {
        let e = &r.status.role_assignments[0];
        assert_eq!(entry_of(r), (AssignmentState::Pending, reason), "not checked: {e:?}");
        assert_eq!(
            (&e.assignment_id, &e.assigned_at, &e.expires_at),
            (&assigned.assignment_id, &assigned.assigned_at, &assigned.expires_at)
        );
        assert_eq!(r.status.next_expiry, assigned.expires_at);
        assert_eq!(r.status.managed_assignments, vec!["kept".to_owned()], "what it created stays on record");
        assert_eq!(r.status.drift_corrections, 3);
    };
    let r = stopped(
        carried(&previous, Reason::InvalidSpec, "not checked"),
        Reason::InvalidSpec,
        "spec.roleAssignments[0].scope: bad".into(),
        RetryClass::Slowly,
    );
    assert_eq!(ready(&r), (false, Reason::InvalidSpec));
    assert_eq!(reasons(&r), vec![Reason::InvalidSpec]);
    kept(&r, Reason::InvalidSpec);
    assert_eq!(r.status.assigned, None);

    let e = ResolveError { reason: Reason::AzureUnavailable, message: "503".into(), retry_after: None };
    let r = identity_failed(&spec(false), &previous, &e);
    kept(&r, Reason::AzureUnavailable);
    assert_eq!(ready(&r), (false, Reason::AzureUnavailable));
    assert_eq!(r.retry, RetryClass::Soon(None));
    let identity = r.conditions.iter().find(|c| c.type_ == conditions::IDENTITY_RESOLVED).expect("IdentityResolved");
    assert!(!identity.status);

    // A new entry waits for the identity; an expired one stays as it was.
    let mut expired = assigned.clone();
    expired.state = AssignmentState::Expired;
    expired.removed_at = Some(time("2026-06-01T11:00:01Z"));
    let e = ResolveError { reason: Reason::PrincipalNotFound, message: "replicating".into(), retry_after: None };
    let r = identity_failed(&spec(false), &DatabricksIdentityGrantStatus::default(), &e);
    assert_eq!(entry_of(&r), (AssignmentState::Pending, Reason::PrincipalNotFound));
    assert_eq!(r.status.role_assignments[0].assignment_id, None);
    let previous = DatabricksIdentityGrantStatus { role_assignments: vec![expired.clone()], ..Default::default() };
    assert_eq!(identity_failed(&spec(false), &previous, &e).status.role_assignments, vec![expired]);
}

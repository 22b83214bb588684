//! Table-driven tests of [`decide`](super::decide): one row per state and reason an entry can
//! reach, and what the decision then writes, removes and reports. No server, no clients.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::api::validation::validate_grant_spec;
use crate::api::{DatabricksIdentityGrantSpec, PrincipalType};
use crate::azure::ResourceId;

const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
const PRINCIPAL: &str = "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";

fn scope(rg: &str) -> ResourceId {
    ResourceId::resource_group(SUB, rg)
}

fn spec(entries: &[(&str, &str)], observe: bool) -> DatabricksIdentityGrantSpec {
    let entries: Vec<serde_json::Value> =
        entries.iter().map(|(role, rg)| serde_json::json!({"role": role, "scope": scope(rg).to_string()})).collect();
    serde_json::from_value(serde_json::json!({
        "identity": {"accessConnector": {"resourceId": format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Databricks/accessConnectors/ac")}},
        "roleAssignments": entries,
        "managementPolicy": if observe { "Observe" } else { "Enforce" },
    }))
    .expect("spec")
}

fn principal() -> Principal {
    Principal {
        principal_id: PRINCIPAL.into(),
        principal_type: PrincipalType::ServicePrincipal,
        tenant_id: None,
        identity_resource_id: None,
    }
}

fn role(name: &str, guid: &str) -> RoleLookup {
    RoleLookup::Resolved(Arc::new(ResolvedRole {
        role_definition_id: format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
        guid: guid.parse().expect("guid"),
        role_name: name.into(),
        permissions: Vec::new(),
    }))
}

fn observed(d: &DesiredAssignment, name: &str, description: Option<&str>) -> ObservedAssignment {
    ObservedAssignment {
        description: description.map(Into::into),
        ..crate::controller::plan::tests::observed_from(d, name)
    }
}

/// A grant's world, set up per row.
struct World {
    spec: DatabricksIdentityGrantSpec,
    previous: DatabricksIdentityGrantStatus,
    principal: Option<Principal>,
    roles: Vec<RoleLookup>,
    verdicts: PolicyVerdicts,
    observed: Vec<ObservedAssignment>,
    unreadable: HashMap<String, ArmError>,
    others: OtherGrants,
    timing: Timing,
}

impl World {
    /// One Reader entry at rg-a, resolved, allowed, nothing in Azure.
    fn one(observe: bool) -> World {
        World {
            spec: spec(&[("Reader", "rg-a")], observe),
            previous: DatabricksIdentityGrantStatus::default(),
            principal: Some(principal()),
            roles: vec![role("Reader", READER)],
            verdicts: PolicyVerdicts { allowed_by: ["p".to_owned()].into(), ..Default::default() },
            observed: Vec::new(),
            unreadable: HashMap::new(),
            others: OtherGrants::default(),
            timing: Timing { clocks: vec![expiry::EntryClock::default()], ..Timing::default() },
        }
    }

    fn desired(&self) -> Vec<DesiredAssignment> {
        let validated = validate_grant_spec(&self.spec).expect("valid");
        desired_assignments(&validated, self.principal.as_ref(), &self.roles, &self.verdicts, &self.timing)
    }

    fn decide(&self) -> Decision {
        let validated = validate_grant_spec(&self.spec).expect("valid");
        let desired = self.desired();
        decide(&Inputs {
            spec: &self.spec,
            previous: &self.previous,
            enforce: validated.management_policy == crate::api::ManagementPolicy::Enforce,
            principal: self.principal.as_ref(),
            roles: &self.roles,
            verdicts: &self.verdicts,
            desired: &desired,
            observed: &self.observed,
            unreadable: &self.unreadable,
            others: &self.others,
            precedence: &Precedence { created: "2026-01-01T00:00:00Z".into(), grant: "ns/me".into() },
            timing: &self.timing,
        })
    }

    fn first_id(&self) -> RoleAssignmentId {
        let d = &self.desired()[0];
        RoleAssignmentId::new(d.scope.clone(), d.name.clone())
    }
}

fn reasons(events: &[GrantEvent]) -> Vec<Reason> {
    events.iter().map(|e| e.reason).collect()
}

fn settled(d: &Decision, index: usize) -> (AssignmentState, Reason) {
    let e = d.entries[index].as_ref().unwrap_or_else(|| panic!("entry {index} is settled: {d:#?}"));
    (e.state, e.reason.as_deref().and_then(Reason::from_code).expect("a known reason"))
}

/// Every entry state a decision settles before writing, with its reason, events and retry.
#[test]
fn entries_settled_before_any_write() {
    /// (case, Observe?, setup, expected state, reason, Events, retry class)
    type Row = (&'static str, bool, fn(&mut World), AssignmentState, Reason, Vec<Reason>, RetryClass);
    let rows: Vec<Row> = vec![
        (
            "in sync",
            false,
            |w| {
                let d = w.desired()[0].clone();
                w.observed.push(observed(&d, &d.name, None));
            },
            AssignmentState::Assigned,
            Reason::Assigned,
            vec![],
            RetryClass::Resync,
        ),
        (
            "made elsewhere: adopted, with an Event the first time",
            false,
            |w| {
                let d = w.desired()[0].clone();
                w.observed.push(observed(&d, "someone-elses", None));
            },
            AssignmentState::Adopted,
            Reason::Adopted,
            vec![Reason::Adopted],
            RetryClass::Resync,
        ),
        (
            "older grant with another condition: conflict",
            false,
            |w| {
                let name = w.desired()[0].name.clone();
                w.others.claims.push((
                    name,
                    Some("@Resource[x] StringEquals 'y'".into()),
                    "ns/older".into(),
                    "2025-01-01T00:00:00Z".into(),
                ));
            },
            AssignmentState::Failed,
            Reason::ConflictingGrant,
            vec![Reason::ConflictingGrant],
            RetryClass::Resync,
        ),
        (
            "Observe: a create is planned",
            true,
            |_| {},
            AssignmentState::Planned,
            Reason::CreatePlanned,
            vec![],
            RetryClass::Resync,
        ),
        (
            "Observe: an update is planned",
            true,
            |w| {
                let d = w.desired()[0].clone();
                w.observed.push(observed(&d, &d.name, Some("stale description")));
            },
            AssignmentState::Planned,
            Reason::UpdatePlanned,
            vec![],
            RetryClass::Resync,
        ),
        (
            "scope throttled: pending",
            false,
            |w| {
                let key = w.desired()[0].scope.normalized();
                w.unreadable.insert(
                    key,
                    ArmError::Throttled { code: "TooManyRequests".into(), message: "m".into(), retry_after: None },
                );
            },
            AssignmentState::Pending,
            Reason::TooManyRequests,
            vec![],
            RetryClass::Soon(None),
        ),
        (
            "scope gone: failed",
            false,
            |w| {
                let key = w.desired()[0].scope.normalized();
                w.unreadable
                    .insert(key, ArmError::NotFound { code: "ResourceGroupNotFound".into(), message: "m".into() });
            },
            AssignmentState::Failed,
            Reason::ScopeNotFound,
            vec![],
            RetryClass::Slowly,
        ),
        (
            "role missing: failed",
            false,
            |w| {
                w.roles[0] = RoleLookup::Failed(ResolveError {
                    reason: Reason::RoleNotFound,
                    message: "no such role".into(),
                    retry_after: None,
                });
            },
            AssignmentState::Failed,
            Reason::RoleNotFound,
            vec![Reason::RoleNotResolved],
            RetryClass::Slowly,
        ),
        (
            "role lookup throttled: pending",
            false,
            |w| {
                w.roles[0] = RoleLookup::Failed(ResolveError {
                    reason: Reason::AzureUnavailable,
                    message: "503".into(),
                    retry_after: None,
                });
            },
            AssignmentState::Pending,
            Reason::AzureUnavailable,
            vec![Reason::RoleNotResolved],
            RetryClass::Soon(None),
        ),
        (
            "denied by policy: an Event the first time",
            false,
            |w| {
                w.verdicts.denials.push((0, Reason::PrivilegedRole, "Owner is privileged".into()));
            },
            AssignmentState::Denied,
            Reason::PrivilegedRole,
            vec![Reason::PolicyDenied],
            RetryClass::Resync,
        ),
        (
            "still denied: no new Event",
            false,
            |w| {
                w.verdicts.denials.push((0, Reason::ScopeNotAllowed, "not here".into()));
                w.previous.role_assignments =
                    vec![entry(&w.spec, 0, AssignmentState::Denied, Reason::ScopeNotAllowed, None)];
            },
            AssignmentState::Denied,
            Reason::ScopeNotAllowed,
            vec![],
            RetryClass::Resync,
        ),
    ];
    for (name, observe, setup, state, reason, events, retry) in rows {
        let mut world = World::one(observe);
        setup(&mut world);
        let d = world.decide();
        assert_eq!(settled(&d, 0), (state, reason), "{name}");
        assert_eq!(reasons(&d.events), events, "{name}");
        assert_eq!(d.retry, retry, "{name}");
        assert!(d.writes.is_empty() && d.intent.is_none(), "{name}: nothing to write");
    }
}

#[test]
fn a_missing_assignment_is_written_after_recording_the_intent() {
    let world = World::one(false);
    let d = world.decide();
    assert_eq!(d.entries[0], None, "its write decides it");
    assert_eq!(d.writes.len(), 1);
    assert_eq!(d.writes[0].step, Step::Create { drift: false });
    let id = world.first_id();
    assert_eq!(d.intent, Some(vec![id.to_string()]), "recorded before the PUT");
    assert_eq!(d.writes[0].intent, Some(id.to_string()), "and settled by the write");
    assert!(d.creating.is_empty() && d.managed.is_empty());
}

#[test]
fn drift_and_updates_are_written() {
    let mut world = World::one(false);
    world.previous.managed_assignments = vec![world.first_id().to_string()];
    let d = world.decide();
    assert_eq!(d.writes[0].step, Step::Create { drift: true }, "recorded as ours and gone: drift");

    let mut world = World::one(false);
    let desired = world.desired()[0].clone();
    world.observed.push(observed(&desired, &desired.name, Some("old description")));
    let d = world.decide();
    assert_eq!(d.writes[0].step, Step::Update);
    assert_eq!(d.intent, None, "an update creates nothing to record");
}

/// A scope found gone by its list says so as a failed write there would: naming the scope.
#[test]
fn a_scope_gone_from_its_list_is_named() {
    let mut world = World::one(false);
    let id = world.first_id();
    let gone = ArmError::NotFound { code: "ResourceNotFound".into(), message: "The Resource was not found.".into() };
    world.unreadable.insert(id.scope().normalized(), gone);
    let d = world.decide();
    let message = d.entries[0].as_ref().and_then(|e| e.message.clone()).unwrap_or_default();
    assert!(message.contains(&id.scope().to_string()) && message.contains("does not exist"), "{message}");
    world.unreadable.insert(id.scope().normalized(), ArmError::Transient { status: Some(503), message: "m".into() });
    let message = world.decide().entries[0].as_ref().and_then(|e| e.message.clone()).unwrap_or_default();
    assert!(message.starts_with(&format!("cannot list assignments at {}", id.scope())), "{message}");
}

#[test]
fn an_unreadable_scope_keeps_the_intent_of_an_earlier_write() {
    let mut world = World::one(false);
    let id = world.first_id();
    world.previous.creating_assignments = vec![id.to_string()];
    world.unreadable.insert(id.scope().normalized(), ArmError::Transient { status: Some(503), message: "m".into() });
    let d = world.decide();
    assert_eq!(d.creating.values().cloned().collect::<Vec<_>>(), vec![id.to_string()]);
    assert!(d.writes.is_empty());
}

#[test]
fn what_the_grant_no_longer_wants_is_removed_released_or_planned() {
    let stale = RoleAssignmentId::new(scope("rg-old"), "11111111-1111-1111-1111-111111111111");
    let shared = RoleAssignmentId::new(scope("rg-shared"), "22222222-2222-2222-2222-222222222222");
    let mut world = World::one(false);
    world.previous.managed_assignments = vec![stale.to_string(), shared.to_string()];
    world.others.wanted.insert(shared.name().to_owned());
    let d = world.decide();
    assert_eq!(d.removals, vec![stale.clone()]);
    assert!(d.planned_removals.is_empty());
    assert!(!d.managed.contains_key(&shared.key()), "released: another grant still wants it");
    assert!(d.managed.contains_key(&stale.key()), "kept on record until its removal succeeds");

    let mut world = World::one(true);
    world.previous.managed_assignments = vec![stale.to_string()];
    let d = world.decide();
    assert!(d.removals.is_empty(), "Observe removes nothing");
    assert_eq!(d.planned_removals, vec![stale]);
}

#[test]
fn conditions_say_what_was_resolved_and_judged() {
    let condition = |d: &Decision, type_: &str| {
        d.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status, c.reason)).expect("condition")
    };
    let d = World::one(false).decide();
    assert_eq!(condition(&d, conditions::IDENTITY_RESOLVED), (true, Reason::Resolved));
    assert_eq!(condition(&d, conditions::ROLES_RESOLVED), (true, Reason::Resolved));
    assert_eq!(condition(&d, conditions::POLICY_COMPLIANT), (true, Reason::Compliant));
    assert_eq!(d.principal.as_ref().map(|p| p.principal_id.as_str()), Some(PRINCIPAL));

    // Every entry denied before Azure was asked: no principal looked up, none desired.
    let mut world = World::one(false);
    world.principal = None;
    world.roles = vec![RoleLookup::NotAsked];
    world.verdicts = PolicyVerdicts { denials: vec![(0, Reason::NoGrantPolicy, "none".into())], ..Default::default() };
    let d = world.decide();
    assert_eq!(condition(&d, conditions::IDENTITY_RESOLVED), (false, Reason::NotResolved));
    assert_eq!(condition(&d, conditions::POLICY_COMPLIANT), (false, Reason::NoGrantPolicy));
    assert_eq!(settled(&d, 0), (AssignmentState::Denied, Reason::NoGrantPolicy));

    // A governance warning is an Event when the condition's message changes, not every time.
    let mut world = World::one(false);
    world.verdicts.warnings.push("a data role on dbmanagedidentity".into());
    let d = world.decide();
    assert_eq!(condition(&d, conditions::POLICY_COMPLIANT), (true, Reason::CompliantWithWarnings));
    assert_eq!(reasons(&d.events), vec![Reason::DataRoleOnWorkspaceIdentity]);
    world.previous.conditions =
        conditions::merge(&[], &[world.verdicts.condition()], Some(1), k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    assert!(world.decide().events.is_empty());
}

#[test]
fn a_younger_grant_with_another_condition_is_noted_not_blocking() {
    let mut world = World::one(false);
    let name = world.desired()[0].name.clone();
    world.others.claims.push((name, Some("other".into()), "ns/younger".into(), "2027-01-01T00:00:00Z".into()));
    let d = world.decide();
    assert_eq!(d.writes.len(), 1, "this older grant's condition is written");
    assert_eq!(d.notes.len(), 1);
    assert!(d.notes[0].1.contains("ns/younger"), "{:?}", d.notes);
}

#[test]
fn policy_judgement_and_desired_set() {
    let world = World {
        spec: spec(&[("Reader", "rg-a"), ("Storage Blob Data Reader", "rg-b"), ("Reader", "rg-c")], false),
        roles: vec![role("Reader", READER), role("Storage Blob Data Reader", BLOB_READER), RoleLookup::NotAsked],
        verdicts: PolicyVerdicts {
            denials: vec![(1, Reason::RoleNotAllowed, "not this role".into())],
            ..Default::default()
        },
        ..World::one(false)
    };
    let desired = world.desired();
    assert_eq!(
        desired.iter().map(|d| d.index).collect::<Vec<_>>(),
        [0],
        "denied and unresolved entries are not desired"
    );
    assert_eq!(desired[0].name, assignment_name(PRINCIPAL, READER.parse().expect("guid"), &scope("rg-a")));
    let relevant = relevant_names(&desired, &DatabricksIdentityGrantStatus::default(), &[]);
    assert!(relevant.contains(&desired[0].name));
}

/// Time-bound entries: an expired entry this grant created is removed (an `Expired` Event, the
/// entry `Expired` with `removedAt`, `Ready=True` reason `Expired` once every entry has);
/// adopted, still wanted elsewhere, or in Observe, it stays and the entry says why. Nothing
/// about an expired entry is resolved or judged, and it is never written again.
#[test]
fn expired_entries_are_removed_kept_or_reported() {
    use crate::controller::report::{Executed, RemovalOutcome, report};
    let now: k8s_openapi::jiff::Timestamp = "2026-06-01T12:00:00Z".parse().expect("time");
    let ended: k8s_openapi::jiff::Timestamp = "2026-06-01T11:00:00Z".parse().expect("time");
    // Previously assigned by this grant, on record; now past its expiresAt.
    let expired_world = |observe: bool, previous_state: AssignmentState| {
        let mut w = World::one(observe);
        let id = w.first_id();
        w.spec.role_assignments[0].expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ended));
        let mut before = entry(&w.spec, 0, previous_state, Reason::Assigned, None);
        before.assignment_id = Some(id.to_string());
        w.previous.role_assignments = vec![before];
        if previous_state == AssignmentState::Assigned {
            w.previous.managed_assignments = vec![id.to_string()];
        }
        let validated = validate_grant_spec(&w.spec).expect("valid");
        w.timing = expiry::timing(&w.spec, &validated, &w.previous, now, std::time::Duration::from_secs(3600));
        assert!(w.timing.expired(0));
        (w, id)
    };
    let message = |d: &crate::api::RoleAssignmentStatus| d.message.clone().unwrap_or_default();

    // Made by this grant: removed, and reported as expired (not "no longer asks for it").
    let (w, id) = expired_world(false, AssignmentState::Assigned);
    assert!(w.desired().is_empty(), "an expired entry is not desired");
    let d = w.decide();
    assert_eq!(d.removals, vec![id.clone()]);
    assert!(d.writes.is_empty());
    let r = report(
        &w.spec,
        &w.previous,
        d,
        Executed { writes: vec![], removals: vec![RemovalOutcome::Removed { confirmed: true }] },
    );
    let e = &r.status.role_assignments[0];
    assert_eq!((e.state, e.reason.as_deref()), (AssignmentState::Expired, Some("Expired")));
    assert_eq!(e.removed_at.as_ref().map(|t| t.0), Some(now));
    assert!(r.status.managed_assignments.is_empty());
    assert_eq!(r.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec![Reason::Expired]);
    assert!(r.events[0].note.contains("3600 s late"), "removed an hour late: {}", r.events[0].note);
    let ready = r.conditions.iter().find(|c| c.type_ == conditions::READY).expect("Ready");
    assert_eq!((ready.status, ready.reason), (true, Reason::Expired));
    assert_eq!(r.status.assigned.as_deref(), Some("0/0, 1 expired"));
    assert_eq!(r.status.next_expiry, None);

    // The removal failed: the entry says so and the grant is not Ready.
    let (w, _) = expired_world(false, AssignmentState::Assigned);
    let failure = ArmError::Transient { status: Some(503), message: "busy".into() };
    let r = report(
        &w.spec,
        &w.previous,
        w.decide(),
        Executed { writes: vec![], removals: vec![RemovalOutcome::Failed(failure)] },
    );
    let e = &r.status.role_assignments[0];
    assert_eq!((e.state, e.reason.as_deref()), (AssignmentState::Expired, Some("RemovalPending")));
    assert_eq!(r.status.managed_assignments.len(), 1, "kept on record until removed");
    let ready = r.conditions.iter().find(|c| c.type_ == conditions::READY).expect("Ready");
    assert_eq!((ready.status, ready.reason), (false, Reason::RemovalPending));

    // Adopted: never removed.
    let (w, _) = expired_world(false, AssignmentState::Adopted);
    let d = w.decide();
    assert!(d.removals.is_empty());
    assert_eq!(settled(&d, 0), (AssignmentState::Expired, Reason::Expired));
    assert!(message(d.entries[0].as_ref().expect("entry")).contains("adopted"));

    // Another live grant still wants it: released, not removed.
    let (mut w, id) = expired_world(false, AssignmentState::Assigned);
    w.others.wanted.insert(id.name().to_ascii_lowercase());
    let d = w.decide();
    assert!(d.removals.is_empty());
    assert!(d.managed.is_empty(), "released from this grant's record");
    assert!(message(d.entries[0].as_ref().expect("entry")).contains("another grant"));

    // Observe: reported, not removed.
    let (w, id) = expired_world(true, AssignmentState::Assigned);
    let d = w.decide();
    assert!(d.removals.is_empty());
    assert_eq!(d.planned_removals, vec![id]);
    assert!(message(d.entries[0].as_ref().expect("entry")).contains("Observe"));
}

/// A create whose earlier write is on the write-ahead record, outcome unknown, and which a
/// lagging list does not show yet (a reconcile of a copy older than the last status write, under
/// load): the write looks first (a GET) instead of PUTting again. A create never tried does not.
/// Before, only drift looked first, and `faults::arm_errors_resets_and_eventual_consistency`
/// saw a re-PUT after converging in a loaded CI run.
#[test]
fn a_create_already_on_the_write_ahead_record_looks_before_writing() {
    let mut w = World::one(false);
    let fresh = w.decide();
    assert_eq!(fresh.writes.len(), 1);
    assert!(!fresh.writes[0].check_first, "a first create writes at once");
    w.previous.creating_assignments = vec![w.first_id().to_string()];
    let again = w.decide();
    assert_eq!(again.writes.len(), 1);
    assert_eq!(again.writes[0].step, Step::Create { drift: false }, "not drift: it may never have been made");
    assert!(again.writes[0].check_first, "an unknown outcome is looked up first");
    w.previous.creating_assignments.clear();
    w.previous.managed_assignments = vec![w.first_id().to_string()];
    assert!(w.decide().writes[0].check_first, "drift is looked up first too");
}

/// An entry whose role, identity or scope cannot be read this time keeps the assignment it last
/// saw: not removed as unwanted (a 503 on a role lookup deleted it), and its id and clock stay
/// in status while it is Pending.
#[test]
fn an_entry_not_checked_keeps_its_assignment_and_clock() {
    let mut w = World::one(false);
    let id = w.first_id();
    let d0 = w.desired()[0].clone();
    let mut assigned = entry(&w.spec, 0, AssignmentState::Assigned, Reason::Assigned, None);
    assigned.assignment_id = Some(id.to_string());
    assigned.role_definition_id = Some(d0.role_definition_id.clone());
    assigned.assigned_at =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-06-01T10:00:00Z".parse().expect("time")));
    w.previous.role_assignments = vec![assigned.clone()];
    w.previous.managed_assignments = vec![id.to_string()];
    w.observed.push(observed(&d0, &d0.name, None));

    type Setup = fn(&mut World);
    let lookups: [(&str, Setup); 2] = [
        ("role lookup failed", |w| {
            w.roles[0] = RoleLookup::Failed(ResolveError {
                reason: Reason::AzureUnavailable,
                message: "503".into(),
                retry_after: None,
            });
        }),
        ("scope unreadable", |w| {
            let key = w.desired()[0].scope.normalized();
            w.unreadable.insert(key, ArmError::Transient { status: Some(503), message: "m".into() });
        }),
    ];
    for (case, setup) in lookups {
        let mut w = World { previous: w.previous.clone(), observed: w.observed.clone(), ..World::one(false) };
        setup(&mut w);
        let d = w.decide();
        assert!(d.removals.is_empty() && d.writes.is_empty(), "{case}: nothing written or removed: {d:#?}");
        assert_eq!(settled(&d, 0), (AssignmentState::Pending, Reason::AzureUnavailable), "{case}");
        let e = d.entries[0].as_ref().expect("entry");
        assert_eq!(e.assignment_id, assigned.assignment_id, "{case}");
        assert_eq!(e.assigned_at, assigned.assigned_at, "{case}");
        assert_eq!(e.role_definition_id, assigned.role_definition_id, "{case}");
        assert!(d.managed.contains_key(&id.key()), "{case}: still on record");
    }

    // The spec no longer asks for it (another role at the scope): removed as before.
    let mut w = World { previous: w.previous.clone(), ..World::one(false) };
    w.spec = spec(&[("Storage Blob Data Reader", "rg-a")], false);
    w.roles = vec![role("Storage Blob Data Reader", BLOB_READER)];
    assert_eq!(w.decide().removals, vec![id]);
}

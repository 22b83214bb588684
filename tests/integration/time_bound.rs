//! Time-bound grants enforced by Azure PIM (`enforcement: AzurePIM`), on the ARM emulator's PIM
//! model (src/sandbox/arm/pim.rs), with Azure's clock and the controller's moved forward
//! together instead of sleeping through PIM's 5-minute minimum. Every scenario runs with a 1 h
//! resync and ends with the invariant. Operator enforcement is tested on both servers by the
//! real-API-server tier's `time_bound`, and under throttling in faults.rs.

use std::time::Duration;

use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant, Enforcement};
use dbx_identity_operator::policy::evaluate::PolicyMode;
use dbx_identity_operator::sandbox::arm::StateConfig;
use dbx_identity_operator::sandbox::arm::pim::PimConfig;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::common::*;

const HOUR: Duration = Duration::from_secs(3600);

async fn pim_harness(pim: PimConfig) -> Harness {
    let h = harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, HOUR).await;
    h.sandbox.arm.emulator.state().pim = pim;
    h
}

fn pim_grant(name: &str, h: &Harness, ends: Timestamp) -> DatabricksIdentityGrant {
    let mut g = grant(name, h.connector_identity(), json!([{"role": "Reader", "scope": rg("rg-lake")}]));
    g.spec.enforcement = Enforcement::AzurePim;
    g.spec.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ends));
    g
}

fn in_(d: Duration) -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second() + d.as_secs() as i64).expect("time")
}

fn connector(h: &Harness) -> String {
    h.sandbox.estate.access_connectors[0].principal_id.clone().expect("system-assigned")
}

fn holds(h: &Harness) -> bool {
    let p = connector(h);
    h.tuples().iter().any(|(_, _, principal)| principal.eq_ignore_ascii_case(&p))
}

fn count(h: &Harness, op: &str) -> u64 {
    h.sandbox.arm.emulator.count(op)
}

/// The grant's one entry (a Pending placeholder before the first status).
fn entry(g: &DatabricksIdentityGrant) -> dbx_identity_operator::api::RoleAssignmentStatus {
    g.status.as_ref().and_then(|s| s.role_assignments.first().cloned()).unwrap_or_else(|| {
        serde_json::from_value(json!({"role": "", "scope": "", "state": "Pending"})).expect("placeholder")
    })
}

/// PIM holds the assignment (no ordinary PUT, the assignment PIM made is neither re-PUT nor
/// unmanaged), an extension moves the schedule, reconciles and a restart change nothing, and
/// with the operator down across the end Azure ends it: the restarted operator reports it
/// Expired without a write.
#[tokio::test]
async fn azure_pim_holds_the_assignment_and_ends_it_while_the_operator_is_down() {
    let _scenario = crate::common::scenario("Time-bound", "Azure PIM: assign, extend, end while the operator is down");
    let h = pim_harness(PimConfig::default()).await;
    let ends = in_(HOUR);
    h.apply(&pim_grant("pim", &h, ends)).await;
    let g =
        h.wait_for("pim", "held by PIM", |g| is_ready(g) && entry(g).enforced_by == Some(Enforcement::AzurePim)).await;
    let status = g.status.clone().expect("status");
    assert_eq!(entry(&g).state, AssignmentState::Assigned, "{status:?}");
    assert_eq!(status.managed_schedules.len(), 1, "{status:?}");
    assert!(status.managed_assignments.is_empty() && status.unmanaged_assignments.is_empty(), "{status:?}");
    let schedules = h.sandbox.arm.emulator.state().all_schedules();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].end.as_second(), ends.as_second());
    assert!(holds(&h), "PIM's assignment is an ordinary one too");
    assert_eq!((count(&h, "PutRoleAssignment"), count(&h, "PutRoleAssignmentScheduleRequest")), (0, 1));
    h.assert_invariant(&[]).await;

    // Extended before the end: the schedule moves (AdminUpdate), nothing else is written.
    let later = in_(2 * HOUR);
    h.grants
        .patch("pim", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"expiresAt": later.to_string()}})))
        .await
        .expect("patch");
    h.wait_for("pim", "moved", |g| {
        g.status.as_ref().is_some_and(|s| s.managed_schedules.first().is_some_and(|m| m.end.0 == later))
    })
    .await;
    assert_eq!(h.sandbox.arm.emulator.state().all_schedules()[0].end.as_second(), later.as_second());
    let requests = count(&h, "PutRoleAssignmentScheduleRequest");
    assert_eq!(requests, 2);

    // plan and audit see what the operator sees: PIM's assignment is this grant's, unchanged.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut manifest = h.grants.get("pim").await.expect("get");
    manifest.status = None;
    manifest.metadata.managed_fields = None;
    std::fs::write(dir.path().join("pim.yaml"), serde_yaml_ng::to_string(&manifest).expect("yaml")).expect("write");
    let kubeconfig = h.sandbox.kubeconfig.to_str().expect("path").to_owned();
    let plan =
        ["plan", "--policy-mode", "permissive", "-f", dir.path().to_str().expect("path"), "--kubeconfig", &kubeconfig];
    let out = cli(&h, &plan).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 to create, 0 to update, 0 to adopt") && stdout.contains("1 unchanged"), "{stdout}");
    let out = cli(&h, &["audit", "--quiet", "--kubeconfig", &kubeconfig]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(&format!("managed by {NS}/pim")), "{stdout}");
    assert_eq!(count(&h, "PutRoleAssignmentScheduleRequest"), requests, "plan and audit wrote nothing");

    // Reconciles, and a restart, mid-schedule: nothing is written again.
    h.grants
        .patch("pim", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {"touched": "1"}}})))
        .await
        .expect("touch");
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.stop_controller().await;
    let replica = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(dbx_identity_operator::controller::run(replica.clone(), stopped));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&h, "PutRoleAssignmentScheduleRequest"), requests, "a restart re-requested the schedule");
    assert_eq!(count(&h, "PutRoleAssignment"), 0, "PIM's assignment was re-PUT as an ordinary one");
    let g = h.grants.get("pim").await.expect("get");
    assert!(g.status.as_ref().is_some_and(|s| s.unmanaged_assignments.is_empty()), "{:?}", g.status);

    // The operator down across the end: Azure ends it on its own.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    let past_end = Duration::from_secs((later.as_second() - Timestamp::now().as_second()) as u64 + 60);
    h.advance_clocks(past_end);
    assert!(h.sandbox.arm.emulator.state().all_schedules().is_empty());
    assert!(!holds(&h), "Azure ended the assignment at the end");
    let replica = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    replica.clock.advance(past_end);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(dbx_identity_operator::controller::run(replica, stopped));
    let g = h
        .wait_for("pim", "reported ended by Azure", |g| {
            g.status.as_ref().is_some_and(|s| s.role_assignments.iter().all(|e| e.state == AssignmentState::Expired))
        })
        .await;
    let e = entry(&g);
    assert!(e.message.as_deref().is_some_and(|m| m.contains("Azure PIM ended")), "{e:?}");
    assert!(g.status.as_ref().is_some_and(|s| s.managed_schedules.is_empty()));
    assert_eq!(count(&h, "PutRoleAssignmentScheduleRequest"), requests, "no request after the end");
    assert_eq!(count(&h, "PutRoleAssignment") + count(&h, "DeleteRoleAssignment"), 0);
    h.assert_invariant(&[]).await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    h.sandbox.shutdown().await;
}

/// Azure refuses PIM for the principal type: the entry falls back to operator enforcement
/// (a Warning Event, `enforcedBy: Operator`, an ordinary assignment), and the operator then
/// ends it on time itself.
#[tokio::test]
async fn a_pim_refusal_for_the_principal_type_falls_back_to_operator_enforcement() {
    let _scenario = crate::common::scenario("Time-bound", "Azure PIM refused: operator enforcement instead");
    let h = pim_harness(PimConfig { refused_principal_types: vec!["ServicePrincipal".into()], ..PimConfig::default() })
        .await;
    h.apply(&pim_grant("fallback", &h, in_(HOUR))).await;
    let g = h
        .wait_for("fallback", "enforced by the operator", |g| {
            is_ready(g) && entry(g).enforced_by == Some(Enforcement::Operator)
        })
        .await;
    let status = g.status.clone().expect("status");
    assert_eq!(status.managed_assignments.len(), 1, "an ordinary assignment: {status:?}");
    assert!(status.managed_schedules.is_empty());
    assert!(h.sandbox.arm.emulator.state().all_schedules().is_empty());
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), NS);
    let list = events.list(&Default::default()).await.expect("events").items;
    assert!(
        list.iter().any(|e| e.reason.as_deref() == Some("PimUnavailable") && e.type_.as_deref() == Some("Warning")),
        "{list:?}"
    );
    // The operator enforces the end: moved to a few seconds from now, it is removed on time.
    let soon = in_(Duration::from_secs(3));
    h.grants
        .patch("fallback", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"expiresAt": soon.to_string()}})))
        .await
        .expect("patch");
    h.wait_for("fallback", "expired", |g| entry(g).state == AssignmentState::Expired).await;
    let late = Timestamp::now().duration_since(soon);
    assert!(late < SignedDuration::from_secs(10), "removed {late:?} after the end");
    assert!(!holds(&h));
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// The role's PIM policy refuses a longer schedule than it allows: the entry fails with
/// `PimPolicyRefused` and no access is granted by other means.
#[tokio::test]
async fn the_roles_pim_policy_is_not_worked_around() {
    let _scenario = crate::common::scenario("Time-bound", "Azure PIM policy refuses: no access by other means");
    let h = pim_harness(PimConfig { max_duration: Some(HOUR), ..PimConfig::default() }).await;
    h.apply(&pim_grant("too-long", &h, in_(3 * HOUR))).await;
    let g = h.wait_for("too-long", "refused", |g| entry(g).reason.as_deref() == Some("PimPolicyRefused")).await;
    assert_eq!(entry(&g).state, AssignmentState::Failed);
    assert_eq!(condition(&g, "Ready").map(|c| (c.0, c.1)), Some(("False".into(), "PimPolicyRefused".into())));
    assert!(!holds(&h), "access granted around the PIM policy");
    assert_eq!(count(&h, "PutRoleAssignment"), 0);
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// Deleting the grant ends its schedule early (`AdminRemove`); within PIM's first 5 minutes
/// Azure refuses, so the finalizer stays and the removal is retried after them.
#[tokio::test]
async fn deleting_a_pim_grant_ends_its_schedule_after_pims_five_minutes() {
    let _scenario = crate::common::scenario("Time-bound", "Azure PIM: deleting the grant ends the schedule");
    let h = pim_harness(PimConfig::default()).await;
    h.apply(&pim_grant("short-lived", &h, in_(HOUR))).await;
    h.wait_for("short-lived", "held by PIM", |g| entry(g).enforced_by == Some(Enforcement::AzurePim)).await;
    h.grants.delete("short-lived", &DeleteParams::default()).await.expect("delete");
    h.wait_for("short-lived", "removal refused", |g| {
        condition(g, "Ready").is_some_and(|c| c.1 == "CleanupFailed" && c.2.contains("5 minutes"))
    })
    .await;
    assert!(holds(&h), "Azure refuses to end a schedule in its first 5 minutes");
    h.advance_clocks(Duration::from_secs(5 * 60));
    h.gone("short-lived").await;
    assert!(h.sandbox.arm.emulator.state().all_schedules().is_empty());
    assert!(!holds(&h));
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// An end moved into the past ends the PIM schedule early (`AdminRemove`, once PIM's first 5
/// minutes are over), and the entry reads Expired; Observe mode makes no PIM request at all.
#[tokio::test]
async fn an_end_moved_into_the_past_ends_the_schedule_and_observe_requests_nothing() {
    let _scenario = crate::common::scenario("Time-bound", "Azure PIM: end moved into the past; Observe");
    let h = pim_harness(PimConfig::default()).await;
    h.apply(&pim_grant("cut-short", &h, in_(HOUR))).await;
    h.wait_for("cut-short", "held by PIM", |g| entry(g).enforced_by == Some(Enforcement::AzurePim)).await;
    h.advance_clocks(Duration::from_secs(6 * 60));
    let past = h.clock.now() - SignedDuration::from_secs(60);
    h.grants
        .patch("cut-short", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"expiresAt": past.to_string()}})))
        .await
        .expect("patch");
    h.wait_for("cut-short", "expired", |g| {
        entry(g).state == AssignmentState::Expired && g.status.as_ref().is_some_and(|s| s.managed_schedules.is_empty())
    })
    .await;
    assert!(h.sandbox.arm.emulator.state().all_schedules().is_empty(), "ended early through PIM");
    assert!(!holds(&h));

    // Extended after its end: held by PIM again, with a new schedule.
    let again = h.clock.now() + SignedDuration::from_hours(1);
    h.grants
        .patch("cut-short", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"expiresAt": again.to_string()}})))
        .await
        .expect("patch");
    h.wait_for("cut-short", "held by PIM again", |g| {
        entry(g).state == AssignmentState::Assigned && entry(g).enforced_by == Some(Enforcement::AzurePim)
    })
    .await;
    assert_eq!(h.sandbox.arm.emulator.state().all_schedules().len(), 1);
    assert!(holds(&h));
    h.advance_clocks(Duration::from_secs(6 * 60));
    h.grants.delete("cut-short", &DeleteParams::default()).await.expect("delete");
    h.gone("cut-short").await;
    assert!(!holds(&h));

    let requests = count(&h, "PutRoleAssignmentScheduleRequest");
    let mut observed = pim_grant("observed", &h, in_(2 * HOUR));
    observed.spec.management_policy = dbx_identity_operator::api::ManagementPolicy::Observe;
    h.apply(&observed).await;
    let g = h.ready("observed").await;
    assert_eq!(entry(&g).state, AssignmentState::Planned);
    assert_eq!(count(&h, "PutRoleAssignmentScheduleRequest"), requests, "Observe made a PIM request");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

//! Azure changing under the operator after grants converged: identities, scopes and role
//! definitions deleted, the operator's own permission revoked at one scope, the subscription's
//! assignment limit reached. Only the grants concerned fail, each with a specific reason; the
//! rest stay Ready; each scenario ends with the invariant.

use std::time::Duration;

use crate::common::*;
use dbx_identity_operator::api::AssignmentState;
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::models::Permission;
use dbx_identity_operator::sandbox::arm::StateConfig;
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

fn state_of(g: &dbx_identity_operator::api::DatabricksIdentityGrant, i: usize) -> (AssignmentState, String, String) {
    let ra = &g.status.as_ref().expect("status").role_assignments[i];
    (ra.state, ra.reason.clone().unwrap_or_default(), ra.message.clone().unwrap_or_default())
}

/// A workspace (with its managed identity) and an access connector deleted: their grants say
/// which identity is gone and keep their record so deleting them still cleans up.
#[tokio::test]
async fn identities_deleted_under_the_operator() {
    let _scenario = crate::common::scenario("Azure changes", "workspace and access connector deleted");
    let h = harness(StateConfig::default()).await;
    let lake = json!([{"role": "Reader", "scope": rg("rg-lake")}]);
    h.apply(&grant("dev-ws", h.workspace_identity(1), lake.clone())).await;
    h.apply(&grant("uc", h.connector_identity(), lake.clone())).await;
    h.apply(&grant("prod-ws", h.workspace_identity(0), lake)).await;
    for name in ["dev-ws", "uc", "prod-ws"] {
        h.ready(name).await;
    }

    let dev = h.sandbox.estate.workspaces[1].clone();
    let connector = h.sandbox.estate.access_connectors[0].id.clone();
    {
        let mut state = h.sandbox.arm.emulator.state();
        // Deleting a workspace deletes its managed resource group and so dbmanagedidentity.
        assert!(state.delete_resource(&ResourceId::parse(&dev.id).expect("id")));
        let managed_identity = ResourceId::parse(&dev.managed_resource_group_id).expect("id").with_provider_resource(
            "Microsoft.ManagedIdentity",
            "userAssignedIdentities",
            "dbmanagedidentity",
        );
        assert!(state.delete_resource(&managed_identity));
        assert!(state.delete_resource(&ResourceId::parse(&connector).expect("id")));
    }
    for (name, reason) in [("dev-ws", "WorkspaceNotFound"), ("uc", "AccessConnectorNotFound")] {
        let g = h.wait_for(name, reason, |g| condition(g, "IdentityResolved").is_some_and(|c| c.1 == reason)).await;
        assert_eq!(condition(&g, "Ready").map(|c| c.0), Some("False".into()));
        // Azure keeps the orphaned assignment; the grant keeps it on record for its cleanup.
        assert_eq!(g.status.as_ref().expect("status").managed_assignments.len(), 1, "{name} forgot its assignment");
    }
    assert!(is_ready(&h.grants.get("prod-ws").await.expect("prod-ws")), "an unaffected grant failed");

    for name in ["dev-ws", "uc"] {
        h.grants.delete(name, &DeleteParams::default()).await.expect("delete");
        h.gone(name).await;
    }
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// A scope deleted (its assignments go with it in Azure): the entry fails naming the scope,
/// other entries stay assigned, nothing is written at the missing scope, and dropping it or
/// deleting the grant completes.
#[tokio::test]
async fn scope_deleted_under_the_operator() {
    let _scenario = crate::common::scenario("Azure changes", "scope resource deleted");
    let h = harness(StateConfig::default()).await;
    let storage = h.sandbox.estate.scopes.storage_account.clone();
    let both = json!([{"role": "Reader", "scope": storage}, {"role": "Reader", "scope": rg("rg-streaming")}]);
    h.apply(&grant("two-scopes", h.workspace_identity(1), both)).await;
    h.apply(&grant("storage-only", h.connector_identity(), json!([{"role": "Reader", "scope": storage}]))).await;
    h.ready("two-scopes").await;
    h.ready("storage-only").await;

    assert!(h.sandbox.arm.emulator.state().delete_resource(&ResourceId::parse(&storage).expect("id")));
    let g = h
        .wait_for("two-scopes", "failing at the deleted scope", |g| {
            g.status.as_ref().is_some_and(|s| s.role_assignments[0].state == AssignmentState::Failed)
        })
        .await;
    let (_, reason, message) = state_of(&g, 0);
    assert_eq!(reason, "ScopeNotFound");
    assert!(message.contains(&storage) && message.contains("does not exist"), "message {message}");
    assert_eq!(state_of(&g, 1).0, AssignmentState::Assigned);
    assert!(!h.tuples().iter().any(|t| t.1.contains("stlakeprod")), "an assignment was written at a deleted scope");

    let remaining = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": rg("rg-streaming")}]}});
    h.grants.patch("two-scopes", &PatchParams::default(), &Patch::Merge(&remaining)).await.expect("patch");
    h.wait_for("two-scopes", "Ready without the deleted scope", |g| {
        is_ready(g) && g.status.as_ref().is_some_and(|s| s.role_assignments.len() == 1)
    })
    .await;
    h.grants.delete("storage-only", &DeleteParams::default()).await.expect("delete");
    h.gone("storage-only").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// A custom role deleted (Azure first requires its assignments gone): the entry fails with
/// RoleNotFound, the grant's other entries stay, and the operator does not keep writing.
#[tokio::test]
async fn role_definition_deleted_under_the_operator() {
    let _scenario = crate::common::scenario("Azure changes", "custom role definition deleted");
    let h = harness(StateConfig::default()).await;
    let auditor = h.sandbox.arm.emulator.state().add_custom_role(
        "Lake Auditor",
        vec![Permission { actions: vec!["Microsoft.Storage/*/read".into()], ..Permission::default() }],
        vec![ResourceId::subscription(SUBSCRIPTION_ID)],
    );
    let roles =
        json!([{"role": "Lake Auditor", "scope": rg("rg-lake")}, {"role": "Reader", "scope": rg("rg-streaming")}]);
    h.apply(&grant("audit", h.workspace_identity(1), roles)).await;
    let g = h.ready("audit").await;

    assert!(!h.sandbox.arm.emulator.state().delete_custom_role(auditor), "Azure refuses while assigned");
    let assigned = g.status.as_ref().and_then(|s| s.role_assignments[0].assignment_id.clone()).expect("assigned");
    let name = assigned.rsplit('/').next().expect("name").to_owned();
    {
        let mut state = h.sandbox.arm.emulator.state();
        assert!(state.delete_out_of_band(&name));
        assert!(state.delete_custom_role(auditor));
    }
    let g = h
        // The failed write reports RoleNotFound at once; the next reconcile looks the role up
        // again and RolesResolved says so too.
        .wait_for("audit", "RoleNotFound in the entry and RolesResolved", |g| {
            g.status.as_ref().is_some_and(|s| s.role_assignments[0].reason.as_deref() == Some("RoleNotFound"))
                && condition(g, "RolesResolved").is_some_and(|c| c.1 == "RoleNotFound")
        })
        .await;
    assert_eq!(state_of(&g, 0).0, AssignmentState::Failed);
    assert!(state_of(&g, 0).2.contains("Lake Auditor"), "message does not name the role: {}", state_of(&g, 0).2);
    assert_eq!(state_of(&g, 1).0, AssignmentState::Assigned);
    assert_eq!(condition(&g, "RolesResolved").map(|c| c.1), Some("RoleNotFound".into()));
    let puts = h.sandbox.arm.emulator.count("PutRoleAssignment");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.sandbox.arm.emulator.count("PutRoleAssignment"), puts, "kept writing with a deleted role");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// The operator's User Access Administrator narrowed from the subscription to two resource
/// groups: grants at those proceed; a grant at a third fails with AuthorizationFailed naming the
/// scope, and converges once the permission is back.
#[tokio::test]
async fn permission_revoked_at_one_scope() {
    let _scenario = crate::common::scenario("Azure changes", "operator's permission revoked at one scope");
    let h = harness(StateConfig::default()).await;
    h.apply(&grant("lake-before", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("lake-before").await;

    let operator = h.sandbox.estate.operator_principal_id.clone();
    let subscription = ResourceId::subscription(SUBSCRIPTION_ID);
    let uaa = guid_of("User Access Administrator", &h);
    let reader = guid_of("Reader", &h);
    {
        let mut state = h.sandbox.arm.emulator.state();
        let own: Vec<String> =
            state.all_assignments().into_iter().filter(|a| a.3.eq_ignore_ascii_case(&operator)).map(|a| a.0).collect();
        assert_eq!(own.len(), 1, "the sandbox operator has one assignment");
        assert!(state.delete_out_of_band(&own[0]));
        state.assign_out_of_band(&subscription, reader, &operator);
        for name in ["rg-analytics", "rg-streaming"] {
            state.assign_out_of_band(&ResourceId::parse(&rg(name)).expect("rg"), uaa, &operator);
        }
    }
    let mut h = h;
    h.foreign = h
        .sandbox
        .arm
        .emulator
        .state()
        .all_assignments()
        .into_iter()
        .filter(|a| a.3 == operator)
        .map(|a| a.0)
        .collect::<std::collections::HashSet<_>>()
        .union(&h.foreign)
        .cloned()
        .collect();

    let two = json!([{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Reader", "scope": rg("rg-streaming")}]);
    h.apply(&grant("narrowed", h.workspace_identity(1), two)).await;
    h.apply(&grant("allowed", h.connector_identity(), json!([{"role": "Reader", "scope": rg("rg-streaming")}]))).await;
    h.ready("allowed").await;
    let g = h
        .wait_for("narrowed", "refused at rg-lake", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments.len() == 2
                    && s.role_assignments[0].reason.as_deref() == Some("AuthorizationFailed")
                    && s.role_assignments[1].state == AssignmentState::Assigned
            })
        })
        .await;
    assert_eq!(state_of(&g, 0).0, AssignmentState::Failed);
    assert!(state_of(&g, 0).2.contains("rg-lake"), "message does not name the scope: {}", state_of(&g, 0).2);
    // The grant that already held its assignment at rg-lake is unaffected (reads still work).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(is_ready(&h.grants.get("lake-before").await.expect("grant")), "an unaffected grant failed");

    let restored = h.sandbox.arm.emulator.state().assign_out_of_band(&subscription, uaa, &operator);
    h.foreign.insert(restored);
    h.ready("narrowed").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// The subscription's role-assignment limit reached: the assignments beyond it fail with
/// RoleAssignmentLimitExceeded, writes are retried slowly, and raising the limit converges.
#[tokio::test]
async fn subscription_assignment_limit_reached() {
    let _scenario = crate::common::scenario("Azure changes", "subscription assignment limit reached");
    let h = harness(StateConfig::default()).await;
    let existing = h.sandbox.arm.emulator.state().all_assignments().len();
    h.sandbox.arm.emulator.state().config.assignment_limit = existing + 1;
    let three = json!([
        {"role": "Reader", "scope": rg("rg-lake")},
        {"role": "Reader", "scope": rg("rg-streaming")},
        {"role": "Reader", "scope": rg("rg-security")},
    ]);
    h.apply(&grant("over-limit", h.workspace_identity(1), three)).await;
    let g = h
        .wait_for("over-limit", "at the limit", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments.len() == 3
                    && s.role_assignments.iter().filter(|r| r.state == AssignmentState::Assigned).count() == 1
                    && s.role_assignments
                        .iter()
                        .filter(|r| r.reason.as_deref() == Some("RoleAssignmentLimitExceeded"))
                        .count()
                        == 2
            })
        })
        .await;
    assert_eq!(condition(&g, "Ready").map(|c| c.0), Some("False".into()));
    assert_eq!(h.sandbox.arm.emulator.state().all_assignments().len(), existing + 1);
    // Slow retries (2 s here), not a hot loop: a few PUTs per entry over 4 s.
    let puts = h.sandbox.arm.emulator.count("PutRoleAssignment");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let more = h.sandbox.arm.emulator.count("PutRoleAssignment") - puts;
    assert!(more <= 8, "{more} PUTs in 4 s against a full subscription");

    h.sandbox.arm.emulator.state().config.assignment_limit = 4000;
    h.ready("over-limit").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
}

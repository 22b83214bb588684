//! GrantPolicy end to end (policy mode `require`): denial, partial allowance, removal when a
//! policy tightens, convergence when it loosens, relabelled namespaces, and policy status.

use std::time::Duration;

use crate::common::*;
use dbx_identity_operator::api::{AssignmentState, GrantPolicy};
use dbx_identity_operator::policy::evaluate::PolicyMode;
use dbx_identity_operator::sandbox::arm::StateConfig;
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn policy(name: &str, roles: serde_json::Value, scopes: serde_json::Value) -> GrantPolicy {
    serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"dbx-operator.io/team": "analytics"}},
            "identities": [format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**")],
            "roles": roles,
            "scopes": scopes,
        },
    }))
    .expect("policy")
}

/// Labels the test namespace as `team`'s (the policies here select `dbx-operator.io/team`).
async fn label_team(namespaces: &Api<Namespace>, team: &str) {
    let label = json!({"metadata": {"labels": {"dbx-operator.io/team": team}}});
    namespaces.patch(NS, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
}

fn lake_scope() -> String {
    format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-lake/**")
}

#[tokio::test]
async fn policies_deny_allow_partially_tighten_and_loosen() {
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Require).await;
    let client = h.sandbox.kube.emulator.client().expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let policies: Api<GrantPolicy> = Api::all(client);
    let lake = h.sandbox.estate.scopes.storage_account.clone();

    // No policy governs the namespace yet: everything is denied, nothing reaches Azure.
    h.apply(&grant(
        "g",
        h.connector_identity(),
        json!([
            {"role": "Storage Blob Data Reader", "scope": lake},
            {"role": "Owner", "scope": rg("rg-lake")},
            {"role": "Reader", "scope": rg("rg-security")},
        ]),
    ))
    .await;
    let denied =
        h.wait_for("g", "denied", |g| condition(g, "PolicyCompliant").is_some_and(|c| c.1 == "NoGrantPolicy")).await;
    assert!(denied.status.expect("status").role_assignments.iter().all(|r| r.state == AssignmentState::Denied));
    assert_eq!(h.sandbox.arm.emulator.count("PutRoleAssignment"), 0);

    // A policy for the team's label, and the label on the namespace: partial allowance.
    policies
        .create(
            &PostParams::default(),
            &policy("team", json!(["Storage Blob Data Reader", "Reader", "Owner"]), json!([lake_scope()])),
        )
        .await
        .expect("policy");
    label_team(&namespaces, "analytics").await;
    let partial = h
        .wait_for("g", "partially allowed", |g| {
            g.status.as_ref().is_some_and(|s| s.role_assignments[0].state == AssignmentState::Assigned)
        })
        .await;
    let status = partial.status.clone().expect("status");
    assert_eq!(status.role_assignments[1].state, AssignmentState::Denied);
    assert_eq!(
        status.role_assignments[1].reason.as_deref(),
        Some("PrivilegedRole"),
        "Owner is listed, but privileged roles need allowPrivilegedRoles"
    );
    assert_eq!(status.role_assignments[2].reason.as_deref(), Some("ScopeNotAllowed"));
    let compliant = condition(&partial, "PolicyCompliant").expect("condition");
    assert_eq!(compliant.0, "False");
    assert!(compliant.2.contains("PrivilegedRole") && compliant.2.contains("ScopeNotAllowed"), "{}", compliant.2);
    h.assert_invariant(&[]).await;

    // Loosen: rg-security becomes allowed too → the Reader assignment converges.
    policies
        .patch("team", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"scopes": [lake_scope(), format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-security")]}})))
        .await
        .expect("loosen");
    h.wait_for("g", "loosened", |g| {
        g.status.as_ref().is_some_and(|s| s.role_assignments[2].state == AssignmentState::Assigned)
    })
    .await;

    // Tighten: Storage Blob Data Reader is no longer allowed → the operator removes what it created.
    let before = h.tuples().len();
    policies
        .patch("team", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"roles": ["Reader", "Owner"]}})))
        .await
        .expect("tighten");
    let tightened = h
        .wait_for("g", "tightened", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments[0].state == AssignmentState::Denied && s.managed_assignments.len() == 1
            })
        })
        .await;
    assert_eq!(tightened.status.expect("status").role_assignments[0].reason.as_deref(), Some("RoleNotAllowed"));
    assert_eq!(h.tuples().len(), before - 1, "the denied assignment was removed from Azure");
    h.assert_invariant(&[]).await;

    // Relabel the namespace away from the policy: nothing is allowed any more; all removed.
    label_team(&namespaces, "someone-else").await;
    let orphaned = h
        .wait_for("g", "ungoverned", |g| condition(g, "PolicyCompliant").is_some_and(|c| c.1 == "NoGrantPolicy"))
        .await;
    assert!(orphaned.status.expect("status").managed_assignments.is_empty());
    h.assert_invariant(&[]).await;

    // Policy status counts what it governs, and says when a policy is unusable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let p = policies.get("team").await.expect("policy");
        let ready =
            p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone());
        if ready.as_deref() == Some("True") && p.status.as_ref().is_some_and(|s| s.governed_namespaces == 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "policy status not reported: {:?}", p.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A pattern CEL lets through but the operator cannot use ('**' inside a segment): the policy
    // says so in its Ready condition, naming the pattern, and allows nothing.
    let mut broken = policy("broken", json!(["Reader"]), json!([lake_scope()]));
    broken.spec.identities = vec!["/subscriptions/*/resourceGroups/rg-analytics**".into()];
    policies.create(&PostParams::default(), &broken).await.expect("accepted by admission");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let p = policies.get("broken").await.expect("policy");
        if let Some(c) = p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")) {
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidPolicy"));
            assert!(c.message.contains("rg-analytics**"), "{}", c.message);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "invalid policy status not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop().await;
}

/// The policy is asked before Azure is: an identity or scope no governing policy allows costs no
/// ARM request and is denied with the same reason whether or not it exists.
#[tokio::test]
async fn denied_identities_and_scopes_are_judged_without_asking_azure() {
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Require).await;
    let client = h.sandbox.kube.emulator.client().expect("client");
    let uc = h.sandbox.estate.access_connectors[0].id.clone();
    let only_uc: GrantPolicy = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": "uc-only"},
        "spec": {"namespaceSelector": {"matchLabels": {"dbx-operator.io/team": "analytics"}},
                 "identities": [uc], "roles": ["*"], "scopes": [lake_scope()]},
    }))
    .expect("policy");
    Api::<GrantPolicy>::all(client.clone()).create(&PostParams::default(), &only_uc).await.expect("policy");
    label_team(&Api::all(client.clone()), "analytics").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.sandbox.arm.emulator.reset_stats();

    let ghost_workspace = format!(
        "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-ghost/providers/Microsoft.Databricks/workspaces/ghost"
    );
    let vault = h.sandbox.estate.scopes.key_vault.clone();
    let ghost_vault =
        format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-ghost/providers/Microsoft.KeyVault/vaults/ghost");
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    // (grant, identity, scope, expected reason)
    let cases = [
        (
            "identity-exists",
            json!({"workspace": {"resourceId": h.sandbox.estate.workspaces[0].id}}),
            lake.clone(),
            "IdentityNotAllowed",
        ),
        ("identity-missing", json!({"workspace": {"resourceId": ghost_workspace}}), lake.clone(), "IdentityNotAllowed"),
        ("scope-exists", json!({"accessConnector": {"resourceId": uc}}), vault, "ScopeNotAllowed"),
        ("scope-missing", json!({"accessConnector": {"resourceId": uc}}), ghost_vault, "ScopeNotAllowed"),
    ];
    for (name, identity, scope, _) in &cases {
        h.apply(&grant(name, identity.clone(), json!([{"role": "Reader", "scope": scope}]))).await;
    }
    for (name, _, _, reason) in &cases {
        let g = h
            .wait_for(name, "denied", |g| {
                g.status
                    .as_ref()
                    .is_some_and(|s| s.role_assignments.first().is_some_and(|r| r.state == AssignmentState::Denied))
            })
            .await;
        let entry = &g.status.expect("status").role_assignments[0];
        assert_eq!(entry.reason.as_deref(), Some(*reason), "{name}: {entry:?}");
    }
    let requests: u64 = h.sandbox.arm.emulator.stats().values().sum();
    assert_eq!(requests, 0, "denied requests reached Azure: {:?}", h.sandbox.arm.emulator.stats());
    h.stop().await;
}

/// A restarted operator writes nothing to Kubernetes: every grant's status and each policy's
/// counts are what is on record already. (A regression guard: at this size the grant store fills
/// before the policy is first counted, so it does not reproduce the half-filled store that made
/// every start write each policy's status twice at N = 5000; the bench's restart phase does.)
#[tokio::test]
async fn a_restarted_operator_writes_nothing_to_kubernetes() {
    let _scenario = crate::common::scenario("Lifecycle", "restart: no Kubernetes writes, policy status included");
    let h = harness(StateConfig::default()).await;
    let client = h.sandbox.kube.emulator.client().expect("client");
    let policies: Api<GrantPolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &policy("team", json!(["Reader"]), json!([lake_scope()])))
        .await
        .expect("policy");
    label_team(&Api::all(client.clone()), "analytics").await;
    let names: Vec<String> = (0..12).map(|i| format!("restarted-{i}")).collect();
    for name in &names {
        h.apply(&grant(name, h.connector_identity(), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    }
    for name in &names {
        h.ready(name).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while policies.get("team").await.expect("policy").status.is_none_or(|s| s.governed_grants != 12) {
        assert!(tokio::time::Instant::now() < deadline, "the policy never counted its 12 grants");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop_controller().await;

    let before = h.sandbox.kube.emulator.requests().len();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = dbx_identity_operator::telemetry::Metrics::new();
    let restarted = tokio::spawn(dbx_identity_operator::controller::run(replica_context(&h.sandbox, metrics), stopped));
    // Every grant reconciled once (they resync every 2 s) and the policy had its grace to count.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), restarted).await;
    let writes: Vec<String> = h.sandbox.kube.emulator.requests()[before..]
        .iter()
        .filter(|r| matches!(r.verb.as_str(), "create" | "patch" | "update" | "delete"))
        .map(|r| format!("{} {}/{}", r.verb, r.resource, r.subresource))
        .collect();
    assert!(writes.is_empty(), "a restart wrote to Kubernetes: {writes:?}");
    h.stop().await;
}

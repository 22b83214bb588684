//! The operator end to end: the real kube-runtime Controller, over HTTP, against the sandbox's
//! Kubernetes and ARM emulators. Every test ends by checking the invariant: Azure's role
//! assignments are exactly those live grants want, plus adopted, foreign and retained ones.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant};
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::policy::evaluate::PolicyMode;
use dbx_identity_operator::sandbox::arm::{FaultConfig, StateConfig};
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[tokio::test]
async fn grants_converge_adopt_share_and_clean_up() {
    let h = harness(StateConfig::default()).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let vault = h.sandbox.estate.scopes.key_vault.clone();

    // Convergence: a workspace identity and an access connector.
    h.apply(&grant("kv", h.workspace_identity(0), json!([{"role": "Key Vault Secrets User", "scope": vault}]))).await;
    h.apply(&grant("lake", h.connector_identity(), json!([{"role": "Storage Blob Data Contributor", "scope": lake, "condition": "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'curated'", "conditionVersion": "2.0"}]))).await;
    let kv = h.ready("kv").await;
    let status = kv.status.expect("status");
    assert_eq!(
        status.principal.as_ref().map(|p| p.principal_id.as_str()),
        Some(h.sandbox.estate.workspaces[0].managed_identity_principal_id.as_str())
    );
    assert_eq!(status.assigned.as_deref(), Some("1/1"));
    assert_eq!(status.role_assignments[0].state, AssignmentState::Assigned);
    h.ready("lake").await;
    h.assert_invariant(&[]).await;

    // Adoption: an assignment someone else made is used and never deleted.
    let dev_principal = h.sandbox.estate.workspaces[1].managed_identity_principal_id.clone();
    let reader = guid_of("Reader", &h);
    let scope = ResourceId::parse(&rg("rg-lake")).expect("scope");
    let theirs = h.sandbox.arm.emulator.state().assign_out_of_band(&scope, reader, &dev_principal);
    let mut h = h;
    h.foreign.insert(theirs.clone());
    h.apply(&grant("adopter", h.workspace_identity(1), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    let adopter = h.ready("adopter").await;
    let entry = &adopter.status.expect("status").role_assignments[0];
    assert_eq!(entry.state, AssignmentState::Adopted);
    assert!(entry.assignment_id.as_deref().is_some_and(|id| id.ends_with(&theirs)));

    // Shared tuple: two grants want the same assignment; one Azure assignment serves both.
    let principal = h.sandbox.estate.access_connectors[1].user_assigned_identities[0].principal_id.clone();
    let shared = json!([{"role": "Storage Blob Data Reader", "scope": lake}]);
    h.apply(&grant("share-a", json!({"principal": {"principalId": principal}}), shared.clone())).await;
    h.ready("share-a").await;
    h.apply(&grant("share-b", json!({"principal": {"principalId": principal}}), shared)).await;
    h.ready("share-b").await;
    let blob_reader = guid_of("Storage Blob Data Reader", &h);
    let count = |h: &Harness| {
        h.sandbox
            .arm
            .emulator
            .state()
            .all_assignments()
            .iter()
            .filter(|a| a.2 == blob_reader && a.3 == principal)
            .count()
    };
    assert_eq!(count(&h), 1);
    h.assert_invariant(&[]).await;
    h.grants.delete("share-a", &DeleteParams::default()).await.expect("delete");
    h.gone("share-a").await;
    assert_eq!(count(&h), 1, "still wanted by share-b");
    h.grants.delete("share-b", &DeleteParams::default()).await.expect("delete");
    h.gone("share-b").await;
    assert_eq!(count(&h), 0, "removed with the last grant that wanted it");

    // Deleting the adopter leaves the adopted assignment alone.
    h.grants.delete("adopter", &DeleteParams::default()).await.expect("delete");
    h.gone("adopter").await;
    assert!(h.tuples().iter().any(|t| t.0 == theirs), "adopted assignment deleted");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

#[tokio::test]
async fn drift_heals_spec_changes_converge_and_policies_apply_on_delete() {
    let h = harness(StateConfig::default()).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    h.apply(&grant(
        "g",
        h.workspace_identity(0),
        json!([{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Storage Blob Data Reader", "scope": lake}]),
    ))
    .await;
    let g = h.ready("g").await;
    let managed = g.status.expect("status").managed_assignments;
    assert_eq!(managed.len(), 2);

    // Drift: removed behind the operator's back, restored at the next resync, and counted.
    let victim = managed[0].rsplit('/').next().expect("name").to_owned();
    assert!(h.sandbox.arm.emulator.state().delete_out_of_band(&victim));
    let healed = h.wait_for("g", "healed", |g| g.status.as_ref().is_some_and(|s| s.drift_corrections == 1)).await;
    assert!(condition(&healed, "Ready").is_some_and(|c| c.0 == "True"));
    assert!(h.tuples().iter().any(|t| t.0.eq_ignore_ascii_case(&victim)));

    // A description change updates in place; a scope change creates anew and removes the old.
    let patch = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": rg("rg-security"), "description": "moved"}, {"role": "Storage Blob Data Reader", "scope": lake}]}});
    h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let moved = h
        .wait_for("g", "moved", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(2)
                    && s.role_assignments[0].state == AssignmentState::Assigned
                    && s.managed_assignments.len() == 2
            })
        })
        .await;
    assert!(moved.status.expect("status").role_assignments[0].scope.ends_with("rg-security"));
    assert!(
        !h.tuples()
            .iter()
            .any(|t| t.1.starts_with(&rg("rg-lake").to_ascii_lowercase()) && !t.1.contains("storageaccounts")),
        "old rg-lake Reader assignment was not removed"
    );
    h.assert_invariant(&[]).await;

    // deletionPolicy Retain leaves assignments; Delete removes them.
    h.apply(&grant("kept", h.connector_identity(), json!([{"role": "Reader", "scope": rg("rg-streaming")}]))).await;
    let kept = h.ready("kept").await;
    let kept_names: Vec<String> = kept
        .status
        .expect("status")
        .managed_assignments
        .iter()
        .map(|id| id.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    h.grants
        .patch("kept", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"deletionPolicy": "Retain"}})))
        .await
        .expect("retain");
    h.wait_for("kept", "observed Retain", |g| g.status.as_ref().is_some_and(|s| s.observed_generation == Some(2)))
        .await;
    h.grants.delete("kept", &DeleteParams::default()).await.expect("delete");
    h.gone("kept").await;
    for name in &kept_names {
        assert!(h.tuples().iter().any(|t| t.0.eq_ignore_ascii_case(name)), "Retain removed {name}");
    }
    h.grants.delete("g", &DeleteParams::default()).await.expect("delete");
    h.gone("g").await;
    h.assert_invariant(&kept_names).await;
    h.stop().await;
}

/// While its creates are in flight a grant says so: the write-ahead record that precedes them
/// sets Reconciling=True (reason Pending) for the new generation, so GitOps tools see work in
/// progress rather than the previous generation's Ready.
#[tokio::test]
async fn creates_in_flight_read_as_reconciling() {
    let h = harness(StateConfig::default()).await;
    h.apply(&grant("slow", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("slow").await;
    h.sandbox
        .arm
        .emulator
        .set_faults(dbx_identity_operator::sandbox::arm::FaultConfig { latency_ms: 1500, ..Default::default() });
    let both = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": rg("rg-lake")},
                                                   {"role": "Reader", "scope": rg("rg-streaming")}]}});
    h.grants.patch("slow", &PatchParams::default(), &Patch::Merge(&both)).await.expect("patch");
    let in_flight = h
        .wait_for("slow", "Reconciling while its create is in flight", |g| {
            let current = g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation;
            current && condition(g, "Reconciling").is_some_and(|c| c.0 == "True" && c.1 == "Pending")
        })
        .await;
    let (_, _, message) = condition(&in_flight, "Reconciling").expect("Reconciling");
    assert!(message.contains("creating 1 role assignment(s)"), "{message}");
    assert_eq!(condition(&in_flight, "Ready").map(|c| c.0), Some("False".into()));
    assert_eq!(condition(&in_flight, "Stalled").map(|c| c.0), Some("False".into()));
    h.sandbox.arm.emulator.set_faults(dbx_identity_operator::sandbox::arm::FaultConfig::default());
    let done = h.ready("slow").await;
    assert_eq!(condition(&done, "Reconciling").map(|c| c.0), Some("False".into()));
    h.assert_invariant(&[]).await;
    h.stop().await;
}

#[tokio::test]
async fn observe_mode_plans_without_writing() {
    let h = harness(StateConfig::default()).await;
    let mut g = grant("watcher", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]));
    g.spec.management_policy = dbx_identity_operator::api::ManagementPolicy::Observe;
    h.apply(&g).await;
    let observed = h
        .wait_for("watcher", "planned", |g| {
            g.status
                .as_ref()
                .is_some_and(|s| s.role_assignments.first().is_some_and(|r| r.state == AssignmentState::Planned))
        })
        .await;
    assert_eq!(condition(&observed, "InSync").map(|c| c.1), Some("ChangesPlanned".into()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.sandbox.arm.emulator.count("PutRoleAssignment"), 0, "Observe wrote to Azure");
    // Switching to Enforce applies the plan.
    h.grants
        .patch("watcher", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"managementPolicy": "Enforce"}})))
        .await
        .expect("enforce");
    h.ready("watcher").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
}

#[tokio::test]
async fn every_error_class_is_reported_and_others_proceed() {
    let _scenario = crate::common::scenario(
        "Faults: ARM",
        "error classes reported, others proceed (incl. PrincipalNotFound while replicating)",
    );
    let h = harness(StateConfig {
        replication_delay: Duration::from_secs(60),
        replication_delay_with_type: Duration::from_secs(3),
        ..StateConfig::default()
    })
    .await;

    // Invalid spec (CEL cannot see it: a resource id that is not a role definition): no Azure call.
    h.sandbox.arm.emulator.reset_stats();
    h.apply(&grant("invalid", h.workspace_identity(0), json!([{"role": rg("rg-lake"), "scope": rg("rg-lake")}]))).await;
    let invalid =
        h.wait_for("invalid", "refused", |g| condition(g, "Ready").is_some_and(|c| c.1 == "InvalidSpec")).await;
    assert!(condition(&invalid, "Ready").is_some_and(|c| c.2.contains("role must be a role name")));
    assert_eq!(h.sandbox.arm.emulator.count("GetWorkspace"), 0);

    // A missing workspace, a missing role, and a scope the operator may not assign at.
    let missing_ws = h.sandbox.estate.workspaces[0].id.replace("dbw-analytics-prod", "dbw-gone");
    h.apply(&grant(
        "no-ws",
        json!({"workspace": {"resourceId": missing_ws}}),
        json!([{"role": "Reader", "scope": rg("rg-lake")}]),
    ))
    .await;
    let no_ws = h
        .wait_for("no-ws", "WorkspaceNotFound", |g| {
            condition(g, "IdentityResolved").is_some_and(|c| c.1 == "WorkspaceNotFound")
        })
        .await;
    assert_eq!(condition(&no_ws, "Ready").map(|c| c.0), Some("False".into()));

    let foreign_rg = ResourceId::resource_group("0d7d4a3c-1111-4222-8333-944455566677", "rg-x");
    h.sandbox.arm.emulator.state().add_resource_group(&foreign_rg);
    h.apply(&grant(
        "partial",
        h.workspace_identity(1),
        json!([
            {"role": "Reader", "scope": rg("rg-lake")},
            {"role": "No Such Role", "scope": rg("rg-lake")},
            {"role": "Reader", "scope": foreign_rg.to_string()},
        ]),
    ))
    .await;
    let partial = h
        .wait_for("partial", "partially assigned", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments.len() == 3
                    && s.role_assignments[0].state == AssignmentState::Assigned
                    && s.role_assignments[2].state == AssignmentState::Failed
            })
        })
        .await;
    let status = partial.status.clone().expect("status");
    assert_eq!(status.role_assignments[1].reason.as_deref(), Some("RoleNotFound"));
    assert_eq!(status.role_assignments[2].reason.as_deref(), Some("AuthorizationFailed"));
    assert!(status.role_assignments[2].message.as_deref().is_some_and(|m| m.contains("does not have authorization")));
    assert_eq!(condition(&partial, "RolesResolved").map(|c| c.1), Some("RoleNotFound".into()));
    assert_eq!(status.assigned.as_deref(), Some("1/3"));

    // A brand-new identity: PrincipalNotFound while Entra replicates, then converges.
    let uai = ResourceId::resource_group(SUBSCRIPTION_ID, "rg-analytics").with_provider_resource(
        "Microsoft.ManagedIdentity",
        "userAssignedIdentities",
        "id-new",
    );
    let (principal, _) = h.sandbox.arm.emulator.state().create_user_assigned_identity(&uai, Duration::ZERO);
    h.apply(&grant(
        "fresh",
        json!({"principal": {"principalId": principal}}),
        json!([{"role": "Reader", "scope": rg("rg-lake")}]),
    ))
    .await;
    h.wait_for("fresh", "waiting for replication", |g| {
        g.status.as_ref().is_some_and(|s| {
            s.role_assignments.first().is_some_and(|r| {
                r.reason.as_deref() == Some("PrincipalNotFound") && r.state == AssignmentState::Pending
            })
        })
    })
    .await;
    h.ready("fresh").await;
    h.assert_invariant(&[]).await;

    // Cleanup waits for Azure: the finalizer stays while ARM fails, and the condition says why.
    h.sandbox.arm.emulator.set_faults(FaultConfig { error_rate: 1.0, ..FaultConfig::default() });
    h.grants.delete("fresh", &DeleteParams::default()).await.expect("delete");
    let stuck =
        h.wait_for("fresh", "CleanupFailed", |g| condition(g, "Ready").is_some_and(|c| c.1 == "CleanupFailed")).await;
    assert!(stuck.metadata.deletion_timestamp.is_some());
    // A grant looked at during the outage still accounts for what it holds (before the fix its
    // entry dropped the assignment id, and a failed role lookup planned a DELETE: CI, stop 34).
    h.wait_for("partial", "not checked in the outage", |g| {
        g.status.as_ref().is_some_and(|s| {
            s.role_assignments.first().is_some_and(|r| r.reason.as_deref() == Some("AzureUnavailable"))
        })
    })
    .await;
    h.assert_invariant(&[]).await;
    h.sandbox.arm.emulator.set_faults(FaultConfig::default());
    h.gone("fresh").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
}

#[tokio::test]
async fn conflicts_unmanaged_assignments_events_and_throttling() {
    let h = harness(StateConfig::default()).await;
    // Tight write budget: every write beyond the first two waits for Retry-After.
    h.sandbox.arm.emulator.set_throttling(dbx_identity_operator::sandbox::arm::ThrottleConfig {
        writes: dbx_identity_operator::sandbox::arm::throttle::Bucket { burst: 2.0, per_second: 2.0 },
        ..Default::default()
    });
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let principal = h.sandbox.estate.workspaces[1].managed_identity_principal_id.clone();
    let identity = json!({"principal": {"principalId": principal}});
    let with = |c: &str| json!([{"role": "Storage Blob Data Reader", "scope": lake, "condition": format!("@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals '{c}'"), "conditionVersion": "2.0"}, {"role": "Reader", "scope": rg("rg-lake")}, {"role": "Reader", "scope": rg("rg-streaming")}]);
    h.apply(&grant("older", identity.clone(), with("curated"))).await;
    h.ready("older").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have one-second resolution
    h.apply(&grant("younger", identity, with("raw"))).await;
    let younger = h
        .wait_for("younger", "in conflict", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments.first().is_some_and(|r| r.reason.as_deref() == Some("ConflictingGrant"))
            })
        })
        .await;
    let entry = &younger.status.expect("status").role_assignments[0];
    assert_eq!(entry.state, AssignmentState::Failed);
    assert!(entry.message.as_deref().is_some_and(|m| m.contains("team-analytics/older")));
    let older = h
        .wait_for("older", "reporting the conflict", |g| {
            g.status.as_ref().is_some_and(|s| {
                s.role_assignments[0].message.as_deref().is_some_and(|m| m.contains("team-analytics/younger"))
            })
        })
        .await;
    assert_eq!(
        older.status.expect("status").role_assignments[0].state,
        AssignmentState::Assigned,
        "the older grant keeps its assignment"
    );
    // Azure holds the older grant's condition.
    let conditions: Vec<Option<String>> = h
        .sandbox
        .arm
        .emulator
        .state()
        .all_assignments()
        .into_iter()
        .filter(|a| a.3 == principal && a.1.to_string().ends_with("stlakeprod"))
        .map(|a| a.4)
        .collect();
    assert_eq!(conditions.len(), 1);
    assert!(conditions[0].as_deref().is_some_and(|c| c.contains("curated")));

    // An assignment of the principal no grant declares is reported, not touched.
    let contributor = guid_of("Storage Blob Data Contributor", &h);
    let mut h = h;
    let foreign = h.sandbox.arm.emulator.state().assign_out_of_band(
        &ResourceId::parse(&lake).expect("scope"),
        contributor,
        &principal,
    );
    h.foreign.insert(foreign.clone());
    let reported = h
        .wait_for("older", "reporting the unmanaged assignment", |g| {
            g.status
                .as_ref()
                .is_some_and(|s| s.unmanaged_assignments.iter().any(|u| u.assignment_id.ends_with(&foreign)))
        })
        .await;
    let unmanaged = &reported.status.expect("status").unmanaged_assignments;
    assert!(unmanaged.iter().any(|u| u.role_definition_id.ends_with(&contributor.to_string())));
    assert!(h.tuples().iter().any(|t| t.0 == foreign), "the operator removed an assignment it does not own");

    // Throttling cost retries, not correctness: both grants hold every other assignment.
    h.wait_for("younger", "otherwise assigned", |g| {
        g.status.as_ref().is_some_and(|s| s.assigned.as_deref() == Some("2/3"))
    })
    .await;
    // The write budget bit: writes drew 429s, or the pacer held them back to stay under it.
    let (_, text) = http_get(&h.metrics_url).await;
    let held = metric(&text, "dbx_identity_operator_arm_paced_requests_total{bucket=\"writes\"}");
    assert!(
        held > 0.0 || h.sandbox.arm.emulator.stats().contains_key(&("PutRoleAssignment".to_owned(), 429)),
        "the test did not throttle"
    );

    // Events tell the story.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), NS);
    let reasons: HashSet<String> =
        events.list(&Default::default()).await.expect("events").items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains("ConflictingGrant"), "no ConflictingGrant event in {reasons:?}");
    // What the spec asked for is in status and the log, not an Event (issue 24).
    assert!(!reasons.contains("Created"), "a Created event in {reasons:?}");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

#[tokio::test]
async fn only_the_watched_namespaces_are_reconciled() {
    let h = harness_watching(StateConfig::default(), vec!["platform".into()]).await;
    let client = h.sandbox.kube.emulator.client().expect("client");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "platform"}})).expect("ns"))
        .await
        .expect("ns");
    let platform: Api<DatabricksIdentityGrant> = Api::namespaced(client, "platform");
    platform
        .create(
            &PostParams::default(),
            &grant("watched", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}])),
        )
        .await
        .expect("create");
    h.apply(&grant("ignored", h.workspace_identity(1), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let g = platform.get("watched").await.expect("get");
        if g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the watched namespace was not reconciled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a (wrongly) all-namespace controller ample time to have touched it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ignored = h.grants.get("ignored").await.expect("get");
    // Untouched: only the CRD's status default (observedGeneration 0), no finalizer.
    let untouched = ignored.status.as_ref().is_none_or(|s| s.conditions.is_empty() && s.observed_generation == Some(0));
    assert!(untouched && ignored.metadata.finalizers.is_none(), "a grant outside --namespace was touched: {ignored:?}");
    h.stop().await;
}

async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_and_health_endpoints_report_a_run() {
    let h = harness(StateConfig::default()).await;
    let (status, _) = http_get(&format!("{}/healthz", h.health_url)).await;
    assert_eq!(status, 200);
    h.apply(&grant("m", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("m").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ready, _) = http_get(&format!("{}/readyz", h.health_url)).await;
        let (_, text) = http_get(&h.metrics_url).await;
        if ready == 200
            && metric(&text, "dbx_identity_operator_grants{health=\"Ready\",ready=\"True\",reason=\"Ready\"}") >= 1.0
        {
            assert!(metric(&text, "dbx_identity_operator_reconciles_total{result=\"ok\"}") >= 1.0, "{text}");
            assert!(
                metric(
                    &text,
                    "dbx_identity_operator_arm_requests_total{operation=\"PutRoleAssignment\",status=\"201\"}"
                ) >= 1.0,
                "{text}"
            );
            assert!(metric(&text, "dbx_identity_operator_managed_role_assignments") >= 1.0, "{text}");
            assert!(text.contains("dbx_identity_operator_arm_request_duration_seconds_bucket"), "{text}");
            assert_eq!(metric(&text, "dbx_identity_operator_leader"), 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics did not reflect the run:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    h.stop().await;
}

/// A reconcile working from a copy of the grant older than the stored one (a store one event
/// behind, or a second replica) must not write its status over the newer one: the status patch
/// carries the resourceVersion it read, gets 409, and the reconcile runs again on the latest.
/// Written, the stale status would list the assignment generation 2 created as adopted, not
/// managed, and deleting the grant would leave it in Azure.
#[tokio::test]
async fn a_reconcile_from_a_stale_copy_does_not_overwrite_a_newer_status() {
    let h = harness(StateConfig::default()).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    h.apply(&grant("g", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("g").await;

    // The copy a watch one event behind holds: generation 2's spec, generation 1's status.
    let patch = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Storage Blob Data Reader", "scope": lake}]}});
    let stale = h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    assert_eq!(stale.status.as_ref().map(|s| s.managed_assignments.len()), Some(1));
    let newer = h
        .wait_for("g", "at generation 2", |g| {
            g.status.as_ref().is_some_and(|s| s.observed_generation == Some(2) && s.managed_assignments.len() == 2)
        })
        .await;
    h.stop_controller().await;

    let ctx = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    let action = dbx_identity_operator::controller::reconcile::reconcile(std::sync::Arc::new(stale), ctx)
        .await
        .expect("a stale read is not an error");
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(1)), "not rerun soon");

    let after = h.grants.get("g").await.expect("get");
    assert_eq!(after.metadata.resource_version, newer.metadata.resource_version, "the stale reconcile wrote");
    let status = after.status.expect("status");
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.managed_assignments, newer.status.expect("status").managed_assignments);
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// A grant's own credential is an isolation boundary: what the operator's identity resolved and
/// listed is never handed to a credential that may not read it.
#[tokio::test]
async fn a_grant_credential_sees_only_what_it_may_read() {
    let _scenario = crate::common::scenario("Security", "per-grant credentials: caches never cross credentials");
    let h = harness(StateConfig::default()).await;
    let ws = h.workspace_identity(0);
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    // The operator's identity resolves the workspace and lists the scope (both now cached).
    h.apply(&grant("operator-view", ws.clone(), json!([{"role": "Reader", "scope": lake}]))).await;
    h.ready("operator-view").await;

    // A service principal with no role anywhere: it may read nothing.
    let (client_id, principal) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    h.sandbox.arm.emulator.register_app_with_secret(&client_id, "no-rights", &principal);
    h.sandbox.arm.emulator.state().add_principal(&principal, Duration::from_secs(86_400));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), NS);
    let secret = serde_json::from_value(json!({"metadata": {"name": "no-rights"},
        "stringData": {"tenantId": h.sandbox.estate.tenant_id, "clientId": client_id, "clientSecret": "no-rights"}}))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("secret");
    let mut own = grant("own-credential", ws, json!([{"role": "Reader", "scope": lake}]));
    own.spec.azure_credential_ref = serde_json::from_value(json!({"name": "no-rights"})).expect("ref");
    h.apply(&own).await;
    // Every status written on the way must come from the grant's own credential: the principal
    // the operator's identity resolved (cached for the harness's 2 s TTL) never appears.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let g = h.grants.get("own-credential").await.expect("get");
        if let Some(status) = &g.status {
            assert!(
                status.principal.is_none(),
                "the operator's answer leaked to another credential: {:?}",
                status.principal
            );
        }
        if condition(&g, "IdentityResolved").is_some_and(|c| c.0 == "False" && c.1 == "AuthorizationFailed") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not refused in time: {:?}", g.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// Deleting a namespace can take a grant's credential Secret before the grant: the finalizer is
/// released (the namespace does not hang in Terminating) and the assignments stay in Azure, said
/// in an Event and the log; the operator's own identity is never used in the Secret's place.
#[tokio::test]
async fn a_namespace_deleted_with_its_credential_secret_does_not_hang() {
    let h = harness(StateConfig::default()).await;
    let client = h.sandbox.kube.emulator.client().expect("client");
    let (client_id, principal) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    h.sandbox.arm.emulator.register_app_with_secret(&client_id, "team-secret", &principal);
    {
        let mut state = h.sandbox.arm.emulator.state();
        state.add_principal(&principal, Duration::from_secs(86_400));
        let uaa = state.role_guid_by_name("User Access Administrator").expect("role");
        state.assign_out_of_band(&ResourceId::subscription(SUBSCRIPTION_ID), uaa, &principal);
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let secret = serde_json::from_value(json!({"metadata": {"name": "team-sp"},
        "stringData": {"tenantId": h.sandbox.estate.tenant_id, "clientId": client_id, "clientSecret": "team-secret"}}))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("secret");
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let mut g =
        grant("own-credential", h.connector_identity(), json!([{"role": "Storage Blob Data Reader", "scope": lake}]));
    g.spec.azure_credential_ref = serde_json::from_value(json!({"name": "team-sp"})).expect("ref");
    h.apply(&g).await;
    h.ready("own-credential").await;
    let before = h.tuples().len();

    Api::<Namespace>::all(client.clone()).delete(NS, &DeleteParams::default()).await.expect("delete namespace");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while Api::<Namespace>::all(client.clone()).get(NS).await.is_ok() {
        let stuck = h.grants.get("own-credential").await.ok().and_then(|g| g.status);
        assert!(tokio::time::Instant::now() < deadline, "the namespace hangs in Terminating: {stuck:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.tuples().len(), before, "the assignment stays in Azure (no credential was left to remove it)");
    h.stop().await;
}

/// An operator restarted right after creating assignments finds ARM's lists still without them
/// (lists lag behind writes; the new process does not remember its writes). That is not drift:
/// a GET per missing assignment says so, and the restart writes nothing to Azure or to the grant.
#[tokio::test]
async fn a_restart_while_lists_lag_behind_recent_writes_writes_nothing() {
    let h = harness(StateConfig { list_lag: Duration::from_secs(5), ..StateConfig::default() }).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let spec = json!([{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Storage Blob Data Reader", "scope": lake}]);
    h.apply(&grant("g", h.workspace_identity(0), spec)).await;
    let ready = h.ready("g").await;
    h.stop_controller().await;
    let emulator = &h.sandbox.arm.emulator;
    let (puts, gets) = (emulator.count("PutRoleAssignment"), emulator.count("GetRoleAssignment"));

    // A new process: empty caches, no memory of its own writes; the lists still lag.
    let ctx = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    dbx_identity_operator::controller::reconcile::reconcile(std::sync::Arc::new(ready.clone()), ctx)
        .await
        .expect("reconcile");
    assert_eq!(emulator.count("PutRoleAssignment"), puts, "assignments re-PUT after a restart");
    assert_eq!(emulator.count("GetRoleAssignment"), gets + 2, "one GET per assignment the list lacked");
    let after = h.grants.get("g").await.expect("get");
    assert_eq!(after.metadata.resource_version, ready.metadata.resource_version, "the restart wrote the grant");
    h.stop().await;
}

/// Issue 24: a grant's first convergence is two Kubernetes writes, the finalizer with the
/// write-ahead record of its creations (one metadata patch), then its status; the outcome the
/// spec asked for is in status and the log, not an Event. Resync 1 h, so nothing else writes.
#[tokio::test]
async fn a_first_convergence_is_two_kubernetes_writes() {
    let h =
        harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, Duration::from_secs(3600)).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let from = h.sandbox.kube.emulator.requests().len();
    let spec = json!([{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Storage Blob Data Reader", "scope": lake}]);
    h.apply(&grant("g", h.workspace_identity(0), spec)).await;
    let ready = h.ready("g").await;
    // Let any late write land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<String> = h
        .sandbox
        .kube
        .emulator
        .requests()
        .iter()
        .skip(from)
        .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch") && r.resource != "grantpolicies")
        .map(|r| format!("{} {}/{}", r.verb, r.resource, r.subresource))
        .collect();
    assert_eq!(
        writes,
        [
            "create databricksidentitygrants/",
            "patch databricksidentitygrants/",
            "patch databricksidentitygrants/status"
        ],
        "the bench's create, then the operator's two writes"
    );
    assert_eq!(ready.status.as_ref().map(|s| s.managed_assignments.len()), Some(2));
    assert!(ready.finalizers().iter().any(|f| f == "identity.dbx-operator.io/cleanup"));
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// Issue 24: after the first convergence, a change that creates nothing (a removal, an edited
/// description) is one Kubernetes write, its status. A change that creates is two: the
/// write-ahead record of the creations goes into status before the PUT (the crash safety the
/// kill loop checks), then the outcome. Resync 1 h, so nothing else writes.
#[tokio::test]
async fn a_change_is_one_kubernetes_write_or_two_when_it_creates() {
    let h =
        harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, Duration::from_secs(3600)).await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let reader = json!({"role": "Reader", "scope": rg("rg-lake")});
    let blob = json!({"role": "Storage Blob Data Reader", "scope": lake});
    h.apply(&grant("g", h.connector_identity(), json!([reader, blob]))).await;
    h.ready("g").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let change = |entries: serde_json::Value, generation: i64, managed: usize| {
        let h = &h;
        async move {
            let from = h.sandbox.kube.emulator.requests().len();
            let patch = json!({"spec": {"roleAssignments": entries}});
            h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
            h.wait_for("g", "the change applied", |g| {
                g.status.as_ref().is_some_and(|s| {
                    s.observed_generation == Some(generation) && s.managed_assignments.len() == managed
                }) && is_ready(g)
            })
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            h.sandbox.kube.emulator.requests()[from..]
                .iter()
                .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch") && r.resource != "grantpolicies")
                .map(|r| format!("{} {}/{}", r.verb, r.resource, r.subresource))
                .collect::<Vec<String>>()
        }
    };
    let removal = change(json!([reader]), 2, 1).await;
    assert_eq!(
        removal,
        ["patch databricksidentitygrants/", "patch databricksidentitygrants/status"],
        "the test's spec patch, then one status write"
    );
    let described = json!([{"role": "Reader", "scope": rg("rg-lake"), "description": "audited"}]);
    let update = change(described.clone(), 3, 1).await;
    assert_eq!(update, ["patch databricksidentitygrants/", "patch databricksidentitygrants/status"]);
    let mut added = described.as_array().cloned().unwrap_or_default();
    added.push(blob);
    let creation = change(serde_json::Value::Array(added), 4, 2).await;
    assert_eq!(
        creation,
        [
            "patch databricksidentitygrants/",
            "patch databricksidentitygrants/status",
            "patch databricksidentitygrants/status"
        ],
        "the test's spec patch, the write-ahead record, the outcome"
    );
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// The crash the write-ahead record is for, on a grant's first creation: the PUT landed, the
/// status write did not, and the spec then stopped wanting the assignment. The record (in the
/// annotation written with the finalizer) makes the next reconcile remove it; without it the
/// assignment would stay in Azure with no record naming it.
#[tokio::test]
async fn a_first_creation_interrupted_before_its_status_is_removed_when_no_longer_wanted() {
    let h =
        harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, Duration::from_secs(3600)).await;
    h.stop_controller().await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    h.apply(&grant("g", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    let ctx = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    let fresh = h.grants.get("g").await.expect("get");
    let status_before = fresh.status.clone();
    dbx_identity_operator::controller::reconcile::reconcile(std::sync::Arc::new(fresh), ctx.clone())
        .await
        .expect("reconcile");
    let created: Vec<String> = h.sandbox.arm.emulator.state().all_assignments().into_iter().map(|a| a.0).collect();
    let first = h.grants.get("g").await.expect("get");
    let id = first.status.as_ref().and_then(|s| s.managed_assignments.first().cloned()).expect("recorded");
    assert!(created.iter().any(|n| id.ends_with(n.as_str())), "{id} not in Azure");

    // As if the status write had not happened: the status as it was before.
    let mut rolled_back = first.clone();
    rolled_back.status = status_before.clone();
    h.grants.replace_status("g", &PostParams::default(), &rolled_back).await.expect("roll the status back");
    // The spec no longer wants it.
    let changed = json!({"spec": {"roleAssignments": [{"role": "Storage Blob Data Reader", "scope": lake}]}});
    h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&changed)).await.expect("edit");
    let crashed = h.grants.get("g").await.expect("get");
    assert_eq!(crashed.status, status_before);
    let ctx = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
    dbx_identity_operator::controller::reconcile::reconcile(std::sync::Arc::new(crashed), ctx)
        .await
        .expect("reconcile");
    let names: Vec<String> = h.sandbox.arm.emulator.state().all_assignments().into_iter().map(|a| a.0).collect();
    assert!(!names.iter().any(|n| id.ends_with(n.as_str())), "{id} stayed in Azure with no record naming it");
    let after = h.grants.get("g").await.expect("get");
    let status = after.status.expect("status");
    assert_eq!(status.managed_assignments.len(), 1);
    assert!(!status.managed_assignments.contains(&id) && !status.creating_assignments.contains(&id));
    h.stop().await;
}

/// The same crash on a later change, the case that makes a creating change two Kubernetes
/// writes (issue 24): the PUT landed, the status write after it was lost, and the spec then
/// stopped wanting the assignment. Whatever was on record when the last status write was due
/// (here the `creatingAssignments` written before the PUT) must let the next process remove it;
/// a change recorded only after its PUT (one write) leaves it in Azure with no record naming it.
#[tokio::test]
async fn a_change_interrupted_before_its_status_is_removed_when_no_longer_wanted() {
    let h =
        harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, Duration::from_secs(3600)).await;
    h.stop_controller().await;
    let lake = h.sandbox.estate.scopes.storage_account.clone();
    let reader = json!({"role": "Reader", "scope": rg("rg-lake")});
    h.apply(&grant("g", h.workspace_identity(0), json!([reader]))).await;
    let reconcile_as_a_new_process = |g: DatabricksIdentityGrant| {
        let ctx = replica_context(&h.sandbox, dbx_identity_operator::telemetry::Metrics::new());
        dbx_identity_operator::controller::reconcile::reconcile(std::sync::Arc::new(g), ctx)
    };
    reconcile_as_a_new_process(h.grants.get("g").await.expect("get")).await.expect("first reconcile");
    let in_azure = || -> Vec<String> {
        h.sandbox.arm.emulator.state().all_assignments().into_iter().map(|a| a.0.to_ascii_lowercase()).collect()
    };
    let before = in_azure();
    let first = h.grants.get("g").await.expect("get").status.expect("status").managed_assignments;
    assert_eq!(first.len(), 1, "the grant's first assignment");

    // A change that creates, with every version of the grant its reconcile writes.
    let added = json!({"spec": {"roleAssignments": [reader, {"role": "Storage Blob Data Reader", "scope": lake}]}});
    let edited = h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&added)).await.expect("edit");
    let mut watch = h
        .grants
        .watch(&WatchParams::default(), &edited.resource_version().expect("resourceVersion"))
        .await
        .expect("watch")
        .boxed();
    reconcile_as_a_new_process(edited.clone()).await.expect("the change");
    let mut versions = vec![edited];
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
        if let Ok(WatchEvent::Modified(g)) = event {
            versions.push(g);
        }
    }
    let created: Vec<String> = in_azure().into_iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(created.len(), 1, "the change's PUT landed: {created:?}");

    // A crash right before the last status write: the status as it was stored then.
    let [.., at_crash, _outcome] = versions.as_slice() else { panic!("no status write recorded the change") };
    let mut crashed = h.grants.get("g").await.expect("get");
    crashed.status = at_crash.status.clone();
    h.grants.replace_status("g", &PostParams::default(), &crashed).await.expect("roll the outcome back");
    // The spec stops wanting it before any process records the outcome.
    let back = json!({"spec": {"roleAssignments": [reader]}});
    let g = h.grants.patch("g", &PatchParams::default(), &Patch::Merge(&back)).await.expect("edit");
    reconcile_as_a_new_process(g).await.expect("reconcile");
    assert_eq!(in_azure(), before, "{created:?} stayed in Azure with no record naming it");
    let status = h.grants.get("g").await.expect("get").status.expect("status");
    assert!(status.creating_assignments.is_empty() && status.managed_assignments == first, "{status:?}");
    h.stop().await;
}

/// Many grants at once: each is one status write. The reconcile that kube-runtime runs for the
/// finalizer's own watch event often started from that copy, before the store had the status
/// just written, and wrote the same status again (refused with 409: still a write, for about a
/// quarter of the grants of the converge bench). Resync 1 h.
#[tokio::test]
async fn grants_applied_at_once_are_written_once_each() {
    let h =
        harness_resyncing(StateConfig::default(), Vec::new(), PolicyMode::Permissive, Duration::from_secs(3600)).await;
    let scopes = [
        rg("rg-lake"),
        rg("rg-analytics"),
        rg("rg-streaming"),
        rg("rg-security"),
        h.sandbox.estate.scopes.storage_account.clone(),
        h.sandbox.estate.scopes.key_vault.clone(),
    ];
    let roles = ["Reader", "Storage Blob Data Reader", "Key Vault Secrets User", "Storage Blob Data Contributor"];
    let from = h.sandbox.kube.emulator.requests().len();
    let mut names = Vec::new();
    for (i, (role, scope)) in roles.iter().flat_map(|r| scopes.iter().map(move |s| (r, s))).enumerate() {
        let name = format!("g{i:02}");
        h.apply(&grant(&name, h.workspace_identity(0), json!([{"role": role, "scope": scope}]))).await;
        names.push(name);
    }
    for name in &names {
        h.ready(name).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |subresource: &str| {
        h.sandbox
            .kube
            .emulator
            .requests()
            .iter()
            .skip(from)
            .filter(|r| r.verb == "patch" && r.resource == "databricksidentitygrants" && r.subresource == subresource)
            .count()
    };
    assert_eq!(count(""), names.len(), "one finalizer write per grant");
    assert_eq!(count("status"), names.len(), "one status write per grant");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

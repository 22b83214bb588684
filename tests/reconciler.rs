//! The operator end to end: the real kube-runtime Controller, over HTTP, against the sandbox's
//! Kubernetes and ARM emulators. Every test ends by checking the invariant: Azure's role
//! assignments are exactly those live grants want, plus adopted, foreign and retained ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant};
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::client::{ArmClient, client_options};
use dbx_identity_operator::azure::credentials::{ArmClients, AuthMode, AzureSettings, client_secret};
use dbx_identity_operator::controller::{self, Context, ControllerSettings};
use dbx_identity_operator::sandbox::arm::{FaultConfig, StateConfig};
use dbx_identity_operator::sandbox::estate::{OPERATOR_CLIENT_ID, SUBSCRIPTION_ID, TENANT_ID};
use dbx_identity_operator::sandbox::{self, Sandbox, SandboxOptions};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SECRET: &str = "reconciler-test-secret";
const NS: &str = "team-analytics";

struct Harness {
    sandbox: Sandbox,
    grants: Api<DatabricksIdentityGrant>,
    stop: tokio::sync::watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    /// Assignment names created outside the operator (seeded, adopted, tampered).
    foreign: HashSet<String>,
}

async fn harness(state: StateConfig) -> Harness {
    harness_watching(state, Vec::new()).await
}

async fn harness_watching(state: StateConfig, namespaces: Vec<String>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().to_owned());
    options.arm_state = state;
    options.arm_faults = FaultConfig::default();
    let sandbox = sandbox::start(options).await.expect("sandbox");
    sandbox.arm.emulator.register_app_with_secret(OPERATOR_CLIENT_ID, SECRET, &sandbox.estate.operator_principal_id);
    let settings = AzureSettings {
        arm_endpoint: sandbox.arm.url().to_owned(),
        ca_file: Some(sandbox.arm.ca_file.clone()),
        auth: AuthMode::ClientSecret,
        authority_host: Some(sandbox.arm.url().to_owned()),
    };
    let credential = client_secret(&settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");
    // Production retry timings (seconds of backoff) would only slow these behaviour tests down.
    let fast_retry = RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(50),
        max_retries: 2,
        max_delay: azure_core::time::Duration::seconds(2),
        ..Default::default()
    });
    let operator = ArmClient::new(
        sandbox.arm.url(),
        credential,
        client_options(Some(&sandbox.arm.ca_file), fast_retry).expect("options"),
    )
    .expect("client");
    let client = sandbox.kube.emulator.client().expect("kube client");
    let ctx = Arc::new(Context::new(
        client.clone(),
        ArmClients::new(settings, operator),
        ControllerSettings {
            resync_interval: Duration::from_secs(2),
            slow_retry: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(2),
            namespaces,
            ..ControllerSettings::default()
        },
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(controller::run(ctx, stopped));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns"))
        .await
        .expect("namespace");
    let foreign = sandbox.arm.emulator.state().all_assignments().into_iter().map(|a| a.0).collect();
    Harness { grants: Api::namespaced(client, NS), sandbox, stop, controller, _dir: dir, foreign }
}

fn grant(name: &str, identity: serde_json::Value, assignments: serde_json::Value) -> DatabricksIdentityGrant {
    serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": name},
        "spec": {"identity": identity, "roleAssignments": assignments},
    }))
    .expect("grant")
}

fn rg(name: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{name}")
}

impl Harness {
    fn workspace_identity(&self, i: usize) -> serde_json::Value {
        json!({"workspace": {"resourceId": self.sandbox.estate.workspaces[i].id}})
    }

    fn connector_identity(&self) -> serde_json::Value {
        json!({"accessConnector": {"resourceId": self.sandbox.estate.access_connectors[0].id}})
    }

    async fn apply(&self, g: &DatabricksIdentityGrant) {
        self.grants.create(&PostParams::default(), g).await.expect("create grant");
    }

    /// Polls until `check` holds for the grant (10 s).
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&DatabricksIdentityGrant) -> bool,
    ) -> DatabricksIdentityGrant {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(g) = self.grants.get(name).await
                && check(&g)
            {
                return g;
            }
            if tokio::time::Instant::now() > deadline {
                let g = self.grants.get(name).await.ok();
                panic!(
                    "{name}: not {what} in time; status: {}",
                    serde_json::to_string_pretty(&g.and_then(|g| g.status)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self, name: &str) -> DatabricksIdentityGrant {
        self.wait_for(name, "Ready", |g| condition(g, "Ready").is_some_and(|c| c.0 == "True")).await
    }

    async fn gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.grants.get(name).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "{name} was not deleted in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn tuples(&self) -> Vec<(String, String, String)> {
        self.sandbox
            .arm
            .emulator
            .state()
            .all_assignments()
            .into_iter()
            .map(|(name, scope, role, principal, _)| (name, format!("{}|{}", scope.normalized(), role), principal))
            .collect()
    }

    /// Azure = what live grants hold (Assigned/Adopted) ∪ foreign ∪ `retained`; no tuple twice.
    async fn assert_invariant(&self, retained: &[String]) {
        let live = self.grants.list(&Default::default()).await.expect("list").items;
        let mut wanted: HashSet<String> = HashSet::new();
        for g in &live {
            for ra in g.status.iter().flat_map(|s| &s.role_assignments) {
                if matches!(ra.state, AssignmentState::Assigned | AssignmentState::Adopted)
                    && let Some(id) = &ra.assignment_id
                {
                    wanted.insert(id.rsplit('/').next().unwrap_or_default().to_ascii_lowercase());
                }
            }
        }
        let azure = self.tuples();
        let mut seen = HashSet::new();
        for (name, tuple, principal) in &azure {
            assert!(seen.insert(format!("{tuple}|{principal}")), "duplicate assignment for {tuple} {principal}");
            let known = wanted.contains(name)
                || self.foreign.contains(name)
                || retained.iter().any(|r| r.eq_ignore_ascii_case(name));
            assert!(known, "assignment {name} ({tuple}) is in Azure but no live grant wants it");
        }
        let names: HashSet<&String> = azure.iter().map(|(n, _, _)| n).collect();
        for w in &wanted {
            assert!(names.contains(w), "a live grant reports {w} but Azure does not have it");
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.controller).await;
        self.sandbox.shutdown().await;
    }
}

fn condition(g: &DatabricksIdentityGrant, type_: &str) -> Option<(String, String, String)> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn guid_of(role_name: &str, h: &Harness) -> uuid::Uuid {
    h.sandbox.arm.emulator.state().role_guid_by_name(role_name).expect("role")
}

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
    assert!(
        h.sandbox.arm.emulator.stats().contains_key(&("PutRoleAssignment".to_owned(), 429)),
        "the test did not throttle"
    );

    // Events tell the story.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), NS);
    let reasons: HashSet<String> =
        events.list(&Default::default()).await.expect("events").items.into_iter().filter_map(|e| e.reason).collect();
    for reason in ["Created", "ConflictingGrant"] {
        assert!(reasons.contains(reason), "no {reason} event in {reasons:?}");
    }
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
    assert!(
        ignored.status.is_none() && ignored.metadata.finalizers.is_none(),
        "a grant outside --namespace was touched"
    );
    h.stop().await;
}

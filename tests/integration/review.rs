//! `audit`, `import` and `plan` (the read-only commands), as a user runs them: the binary
//! against the sandbox, with the operator reconciling in the same sandbox. Every test checks the
//! commands wrote nothing to Azure (the ARM emulator's PUT/DELETE counters).

use std::path::Path;
use std::process::Output;

use std::time::Duration;

use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant};
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::policy::evaluate::PolicyMode;
use dbx_identity_operator::sandbox::arm::StateConfig;
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::{Harness, NS, cli, grant, guid_of, harness_with, rg, yaml_documents, yaml_files};

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// ARM writes so far (PUT and DELETE of role assignments, whatever their answer).
fn arm_writes(h: &Harness) -> u64 {
    let e = &h.sandbox.arm.emulator;
    e.count("PutRoleAssignment") + e.count("DeleteRoleAssignment")
}

fn assign(h: &Harness, scope: &str, role: &str, principal: &str) -> String {
    let guid = guid_of(role, h);
    h.sandbox.arm.emulator.state().assign_out_of_band(&ResourceId::parse(scope).expect("scope"), guid, principal)
}

fn storage(h: &Harness) -> String {
    h.sandbox.estate.scopes.storage_account.clone()
}

/// Assignments made by hand before the operator: a data role on a workspace's managed identity,
/// a connector's Reader at a group and again below it, and Owner on the subscription.
fn brownfield(h: &Harness) -> Vec<String> {
    let estate = &h.sandbox.estate;
    let mi = estate.workspaces[0].managed_identity_principal_id.clone();
    let connector = estate.access_connectors[0].principal_id.clone().expect("system-assigned");
    vec![
        assign(h, &storage(h), "Storage Blob Data Contributor", &mi),
        assign(h, &rg("rg-lake"), "Reader", &connector),
        assign(h, &storage(h), "Reader", &connector),
        assign(h, &format!("/subscriptions/{SUBSCRIPTION_ID}"), "Owner", &connector),
    ]
}

async fn apply_documents(h: &Harness, dir: &Path) -> Vec<String> {
    let client = h.sandbox.kube.emulator.client().expect("client");
    let mut grants = Vec::new();
    for file in yaml_files(dir) {
        for doc in yaml_documents(&file) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let object: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
            if kind == "DatabricksIdentityGrant" {
                let ar = ApiResource::erase::<DatabricksIdentityGrant>(&());
                Api::<DynamicObject>::namespaced_with(client.clone(), NS, &ar)
                    .create(&PostParams::default(), &object)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                grants.push(doc["metadata"]["name"].as_str().unwrap_or_default().to_owned());
            } else {
                let ar = ApiResource::erase::<dbx_identity_operator::api::GrantPolicy>(&());
                Api::<DynamicObject>::all_with(client.clone(), &ar)
                    .create(&PostParams::default(), &object)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
        }
    }
    grants
}

fn entries_all(g: &DatabricksIdentityGrant, state: AssignmentState) -> bool {
    let generation_seen = g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation;
    let entries = g.status.iter().flat_map(|s| &s.role_assignments).collect::<Vec<_>>();
    generation_seen && !entries.is_empty() && entries.iter().all(|e| e.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_manifests_change_nothing_in_observe_and_enforce_adopts() {
    let _scenario = crate::common::scenario("Brownfield", "import → Observe → Enforce adopts, zero ARM writes");
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Require).await;
    let hand_made = brownfield(&h);
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("imported");
    let out = cli(&h, &["import", "--quiet", "--namespace", NS, "--out", out_dir.to_str().expect("path")]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("imported 3 role assignment(s) into 2 grant(s)"), "{stderr}");
    assert!(stderr.contains("1 privileged left out"), "{stderr}");
    let connector_file = std::fs::read_to_string(out_dir.join("ac-unity-catalog.yaml")).expect("connector grant");
    assert!(
        connector_file.contains("#   - Owner at /subscriptions/"),
        "privileged listed in a comment:\n{connector_file}"
    );
    assert!(!connector_file.contains("role: Owner"), "privileged not imported:\n{connector_file}");

    let writes_before = arm_writes(&h);
    let grants = apply_documents(&h, &out_dir).await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    for name in &grants {
        let g = h.wait_for(name, "Adopted in Observe", |g| entries_all(g, AssignmentState::Adopted)).await;
        assert!(crate::common::is_ready(&g), "{name}: {:?}", g.status);
    }
    assert_eq!(arm_writes(&h), writes_before, "Observe wrote to Azure");

    // A person flips one grant to Enforce: the operator adopts, it does not create.
    let enforced = "ac-unity-catalog";
    h.grants
        .patch(enforced, &PatchParams::default(), &Patch::Merge(json!({"spec": {"managementPolicy": "Enforce"}})))
        .await
        .expect("patch");
    let g = h.wait_for(enforced, "Adopted under Enforce", |g| entries_all(g, AssignmentState::Adopted)).await;
    assert!(crate::common::is_ready(&g));
    tokio::time::sleep(Duration::from_secs(3)).await; // a resync later, still nothing written
    assert_eq!(arm_writes(&h), writes_before, "Enforce re-created adopted assignments");
    h.assert_invariant(&hand_made).await;

    // The cluster now manages what was imported: audit names each grant, plan has nothing to do.
    let kubeconfig = h.sandbox.kubeconfig.to_str().expect("path").to_owned();
    let out = cli(&h, &["audit", "--quiet", "--kubeconfig", &kubeconfig, "-o", "json"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("audit JSON");
    let owners: Vec<(String, String)> = report["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .flat_map(|i| i["assignments"].as_array().cloned().unwrap_or_default())
        .map(|a| (a["role"].as_str().unwrap_or_default().to_owned(), a["ownership"].to_string()))
        .collect();
    let adopted = owners.iter().filter(|(_, o)| o.contains("\"adopted\"")).count();
    assert_eq!(adopted, 3, "{owners:?}");
    assert!(owners.iter().any(|(role, o)| role == "Owner" && o.contains("\"unmanaged\"")), "{owners:?}");
    let out = cli(&h, &["plan", "-f", out_dir.to_str().expect("path"), "--kubeconfig", &kubeconfig]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "nothing to do once adopted:\n{stdout}{stderr}");
    assert!(
        stdout.contains("0 to create, 0 to update, 0 to adopt, 0 to remove; 0 denied, 0 error(s); 3 unchanged"),
        "{stdout}"
    );
    assert_eq!(arm_writes(&h), writes_before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_classifies_flags_and_exit_codes() {
    let _scenario = crate::common::scenario("Brownfield", "audit: ownership, flags, partial failure, exit codes");
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Permissive).await;
    brownfield(&h);
    // The operator manages one assignment for the user-assigned identity, which is then deleted
    // in Azure: its assignment stays, orphaned.
    let data_identity = h.sandbox.estate.access_connectors[1].user_assigned_identities[0].clone();
    let shared = h.sandbox.estate.access_connectors[1].id.clone();
    h.apply(&grant(
        "shared-data",
        json!({"accessConnector": {"resourceId": shared, "userAssignedIdentityId": data_identity.id}}),
        json!([{"role": "Storage Blob Data Reader", "scope": storage(&h)}]),
    ))
    .await;
    h.ready("shared-data").await;
    h.apply(&grant("analytics", h.connector_identity(), json!([{"role": "Reader", "scope": rg("rg-streaming")}])))
        .await;
    h.ready("analytics").await;
    let writes_before = arm_writes(&h);
    let kubeconfig = h.sandbox.kubeconfig.to_str().expect("path").to_owned();

    let out = cli(&h, &["audit", "--quiet", "--kubeconfig", &kubeconfig]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let line = |needle: &str| stdout.lines().find(|l| l.contains(needle)).unwrap_or_default().to_owned();
    assert!(line("Storage Blob Data Contributor").contains("data-role-on-workspace-identity"), "{stdout}");
    assert!(line("Owner").contains("privileged,broad-scope"), "{stdout}");
    assert!(line("stlakeprod  ! duplicate").contains("Reader"), "Reader under a group that has it:\n{stdout}");
    assert!(line("rg-streaming").contains("managed by team-analytics/analytics"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with(
            "1 subscription(s), 4 identities, 6 role assignments: 2 managed, 0 adopted, 4 unmanaged; 3 flagged; 0 problem(s)"
        ),
        "summary line last:\n{stdout}"
    );

    // Without --quiet, progress goes to stderr only; --resource-group narrows the identities.
    let out = cli(&h, &["audit", "--resource-group", "rg-lake"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("reading subscription {SUBSCRIPTION_ID} (1/1)")), "{stderr}");
    assert!(!stdout.contains("reading subscription"), "{stdout}");
    assert!(stdout.trim_end().ends_with("1 subscription(s), 0 identities, 0 role assignments: 0 managed, 0 adopted, 0 unmanaged; 0 flagged; 0 problem(s)"), "no workspace or connector in rg-lake:\n{stdout}");
    let out = cli(&h, &["audit", "--quiet", "--resource-group", "rg-analytics"]).await;
    assert!(text(&out).0.contains("4 identities, 6 role assignments"), "{:?}", text(&out));

    let out = cli(&h, &["audit", "--quiet", "--fail-on", "flagged"]).await;
    assert_eq!(out.status.code(), Some(3), "flagged → 3: {:?}", text(&out));
    // Without the cluster, the operator's own assignments are still recognised by their names.
    assert!(text(&out).0.lines().any(|l| l.contains("rg-streaming") && l.contains("operator-named")));

    // The identity is deleted in Azure: its assignment points at a missing principal.
    h.sandbox.arm.emulator.state().delete_resource(&ResourceId::parse(&data_identity.id).expect("id"));
    let out = cli(&h, &["audit", "--quiet", "--kubeconfig", &kubeconfig, "-o", "markdown"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("## identity gone (was team-analytics/shared-data's) (gone)"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("Storage Blob Data Reader") && l.contains("orphaned")), "{stdout}");

    // Bad input: a clear message and exit 1; an unreadable subscription is reported and the rest
    // still shown.
    let out = cli(&h, &["audit", "--subscription", "not-a-subscription"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("--subscription 'not-a-subscription' is not a subscription id (a GUID)"),
        "{:?}",
        text(&out)
    );
    let unknown = "00000000-1111-4222-8333-444444444444";
    let out = cli(&h, &["audit", "--quiet", "--subscription", unknown, "--subscription", SUBSCRIPTION_ID]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("problem: subscription {unknown}: cannot list workspaces")), "{stdout}");
    assert!(stdout.contains("ac-unity-catalog"), "the readable subscription is still reported:\n{stdout}");
    assert!(stderr.contains("audit incomplete"), "{stderr}");
    let out = cli(&h, &["audit", "--kubeconfig", "/nonexistent/kubeconfig"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot read kubeconfig /nonexistent/kubeconfig"), "{:?}", text(&out));
    assert_eq!(arm_writes(&h), writes_before, "audit wrote to Azure");
    h.stop().await;
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("path").to_owned()
}

fn grant_yaml(name: &str, identity: &Value, entries: &Value) -> String {
    serde_yaml_ng::to_string(&json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"identity": identity, "roleAssignments": entries},
    }))
    .expect("yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reports_what_enforce_would_do_with_terraform_exit_codes() {
    let _scenario = crate::common::scenario("Brownfield", "plan: create/adopt/remove/denied, exit 0/1/2");
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Permissive).await;
    brownfield(&h);
    let connector = h.connector_identity();
    h.apply(&grant("lake", connector.clone(), json!([{"role": "Reader", "scope": rg("rg-streaming")}]))).await;
    h.ready("lake").await;
    let writes_before = arm_writes(&h);
    let kubeconfig = h.sandbox.kubeconfig.to_str().expect("path").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");

    // Unchanged against the cluster: 0.
    let same = write(
        dir.path(),
        "same.yaml",
        &grant_yaml("lake", &connector, &json!([{"role": "Reader", "scope": rg("rg-streaming")}])),
    );
    let permissive = ["--policy-mode", "permissive"];
    let out = cli(&h, &[&["plan", "-f", &same, "--kubeconfig", &kubeconfig][..], &permissive].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains("unchanged Reader at"), "{:?}", text(&out));

    // The pull request swaps the entry: remove what the grant made, adopt a hand-made one,
    // create a new one: 2.
    let changed = write(
        dir.path(),
        "changed.yaml",
        &grant_yaml(
            "lake",
            &connector,
            &json!([{"role": "Reader", "scope": rg("rg-lake")}, {"role": "Storage Blob Data Reader", "scope": rg("rg-lake")}]),
        ),
    );
    let out =
        cli(&h, &[&["plan", "-f", &changed, "--kubeconfig", &kubeconfig, "-o", "json"][..], &permissive].concat())
            .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let plan: Value = serde_json::from_str(&stdout).expect("plan JSON");
    let actions: Vec<&str> =
        plan["grants"][0]["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["adopt", "create", "remove"], "{stdout}");
    assert!(plan["grants"][0]["live"].as_bool().unwrap_or(false));
    // Without the cluster, nothing is known to remove.
    let out = cli(&h, &[&["plan", "-f", &changed, "-o", "json"][..], &permissive].concat()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out).0.contains("\"action\": \"remove\""), "{:?}", text(&out));

    // A policy in the same pull request denies Owner: 1, with the policy's reason.
    let policy = write(
        dir.path(),
        "policy.yaml",
        &format!(
            "apiVersion: identity.dbx-operator.io/v1alpha1\nkind: GrantPolicy\nmetadata: {{name: lake}}\nspec:\n  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {NS}}}}}\n  identities: ['/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**']\n  roles: ['*']\n  scopes: ['/subscriptions/*/resourceGroups/rg-lake/**']\n"
        ),
    );
    let owner = write(
        dir.path(),
        "owner.yaml",
        &grant_yaml("owner", &connector, &json!([{"role": "Owner", "scope": rg("rg-lake")}])),
    );
    let out = cli(&h, &["plan", "-f", &owner, "-f", &policy]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("! denied    Owner at") && stdout.contains("PrivilegedRole"), "{stdout}");
    // The same grant in a namespace no policy governs (policy mode require): denied as well.
    let out = cli(&h, &["plan", "-f", &same]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));

    // A scope that does not exist: that entry cannot be planned (1), the others still are.
    let missing = write(
        dir.path(),
        "missing.yaml",
        &grant_yaml(
            "missing",
            &connector,
            &json!([{"role": "Reader", "scope": rg("rg-gone")}, {"role": "Reader", "scope": rg("rg-lake")}]),
        ),
    );
    let out = cli(&h, &[&["plan", "-f", &missing][..], &permissive].concat()).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("! error     Reader at") && stdout.contains("rg-gone"), "{stdout}");
    assert!(stdout.contains("= adopt     Reader at"), "{stdout}");

    // A manifest that does not validate: file, object and field named; nothing planned.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &grant_yaml("bad", &connector, &json!([{"role": "Reader", "scope": "/subscriptions/nope"}])),
    );
    let out = cli(&h, &["plan", "-f", &bad]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{bad}: DatabricksIdentityGrant {NS}/bad: spec.roleAssignments[0].scope")),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    let junk = write(dir.path(), "junk.yaml", "kind: [unclosed\n");
    let out = cli(&h, &["plan", "-f", &junk]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains(&format!("{junk}: not YAML")), "{:?}", text(&out));
    let out = cli(&h, &["plan", "-f", "/nonexistent/dir"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("/nonexistent/dir"), "{:?}", text(&out));
    assert_eq!(arm_writes(&h), writes_before, "plan wrote to Azure");
    h.stop().await;
}

#[tokio::test]
async fn the_read_only_pipeline_refuses_writes_before_they_leave() {
    let h = harness_with(StateConfig::default(), Vec::new(), PolicyMode::Permissive).await;
    h.stop_controller().await;
    let (mut settings, credential) = h.sandbox.in_process_operator(crate::common::SECRET).expect("credential");
    settings.arm_policies.push(std::sync::Arc::new(dbx_identity_operator::review::ReadOnly));
    let arm = dbx_identity_operator::azure::credentials::arm_client(
        h.sandbox.arm.url(),
        credential,
        &settings,
        azure_core::http::RetryOptions::none(),
    )
    .expect("client");
    let scope = ResourceId::parse(&rg("rg-lake")).expect("scope");
    assert!(arm.list_role_assignments_at_scope(&scope).await.is_ok(), "reads pass");
    let before = arm_writes(&h);
    let put = arm
        .create_role_assignment(
            &scope,
            "11111111-2222-4333-8444-555555555555",
            dbx_identity_operator::azure::models::RoleAssignmentProperties {
                role_definition_id:
                    "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7".into(),
                principal_id: h.sandbox.estate.workspaces[0].managed_identity_principal_id.clone(),
                ..Default::default()
            },
        )
        .await;
    assert!(put.is_err_and(|e| e.to_string().contains("read-only command: refused PUT")));
    assert!(arm.delete_role_assignment(&scope, "11111111-2222-4333-8444-555555555555").await.is_err());
    assert_eq!(arm_writes(&h), before, "the requests reached the emulator");
    h.stop().await;
}

//! Junk in every field of both kinds: through the API server (admission answers 422) and past
//! it (a cluster without admission: the reconciler must refuse it with a specific status, and
//! nothing reaches Azure). Messages quote at most a little of the input, so a 1 MB id never
//! becomes a 1 MB status.

use crate::common::*;
use dbx_identity_operator::api::{DatabricksIdentityGrant, GrantPolicy};
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use dbx_identity_operator::sandbox::kube::KubeEmulatorHandle;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

/// Longest status message a junk object may produce.
const MAX_MESSAGE: usize = 16 * 1024;

struct Junk {
    what: &'static str,
    /// The field the error must name.
    field: &'static str,
    spec: Value,
}

fn valid_grant_spec(h: &Harness) -> Value {
    json!({
        "identity": h.workspace_identity(0),
        "roleAssignments": [{"role": "Reader", "scope": rg("rg-lake")}],
    })
}

fn with(base: &Value, pointer: &str, value: Value) -> Value {
    let mut spec = base.clone();
    if let Some(slot) = spec.pointer_mut(pointer) {
        *slot = value;
    } else {
        panic!("{pointer} is not in {base}");
    }
    spec
}

/// Values of the right JSON type that no valid grant holds.
fn typed_grant_junk(h: &Harness) -> Vec<Junk> {
    let base = valid_grant_spec(h);
    let megabyte = "a".repeat(1 << 20);
    let workspace = h.sandbox.estate.workspaces[0].id.clone();
    let many: Vec<Value> = (0..10_000).map(|i| json!({"role": "Reader", "scope": rg(&format!("rg-{i}"))})).collect();
    vec![
        Junk {
            what: "1 MB scope",
            field: "spec.roleAssignments[0].scope",
            spec: with(&base, "/roleAssignments/0/scope", json!(format!("{}/{megabyte}", rg("rg-lake")))),
        },
        Junk {
            what: "1 MB role name",
            field: "spec.roleAssignments[0].role",
            spec: with(&base, "/roleAssignments/0/role", json!(megabyte)),
        },
        Junk {
            what: "1 MB description",
            field: "spec.roleAssignments[0].description",
            spec: with(
                &base,
                "/roleAssignments/0",
                json!({"role": "Reader", "scope": rg("rg-lake"), "description": megabyte}),
            ),
        },
        Junk {
            what: "10,000 role assignments",
            field: "spec.roleAssignments",
            spec: with(&base, "/roleAssignments", json!(many)),
        },
        Junk {
            what: "NUL byte in the workspace id",
            field: "spec.identity.workspace.resourceId",
            spec: with(
                &base,
                "/identity/workspace/resourceId",
                json!(workspace.replace("rg-analytics", "rg-analytics\u{0}")),
            ),
        },
        Junk {
            what: "Cyrillic look-alike in the workspace id",
            field: "spec.identity.workspace.resourceId",
            spec: with(
                &base,
                "/identity/workspace/resourceId",
                json!(workspace.replace("rg-analytics", "rg-\u{430}nalytics")),
            ),
        },
        Junk {
            what: "full-width slash in the scope",
            field: "spec.roleAssignments[0].scope",
            spec: with(
                &base,
                "/roleAssignments/0/scope",
                json!(rg("rg-lake").replace("/resourceGroups", "\u{ff0f}resourceGroups")),
            ),
        },
        Junk {
            what: "non-GUID principal id",
            field: "spec.identity.principal.principalId",
            spec: with(
                &base,
                "/identity",
                json!({"principal": {"principalId": "0d7d4a3c-1111-4222-8333-94445556667Z"}}),
            ),
        },
        Junk {
            what: "principal id with look-alike digits",
            field: "spec.identity.principal.principalId",
            spec: with(
                &base,
                "/identity",
                json!({"principal": {"principalId": "0d7d4a3c-1111-4222-8333-94445556667\u{0661}"}}),
            ),
        },
        Junk {
            what: "non-GUID subscription in the scope",
            field: "spec.roleAssignments[0].scope",
            spec: with(&base, "/roleAssignments/0/scope", json!("/subscriptions/not-a-guid/resourceGroups/rg-lake")),
        },
        Junk {
            what: "syntactically wrong ABAC condition",
            field: "spec.roleAssignments[0].condition",
            spec: with(
                &base,
                "/roleAssignments/0",
                json!({
                    "role": "Storage Blob Data Reader", "scope": rg("rg-lake"),
                    "condition": "((!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'}) OR",
                    "conditionVersion": "2.0",
                }),
            ),
        },
        Junk {
            what: "ABAC condition without a version",
            field: "spec.roleAssignments[0].conditionVersion",
            spec: with(
                &base,
                "/roleAssignments/0",
                json!({
                    "role": "Storage Blob Data Reader", "scope": rg("rg-lake"),
                    "condition": "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'x'",
                }),
            ),
        },
        Junk {
            what: "role as a non-role-definition id",
            field: "spec.roleAssignments[0].role",
            spec: with(&base, "/roleAssignments/0/role", json!(rg("rg-lake"))),
        },
        Junk {
            what: "two identities at once",
            field: "spec.identity",
            spec: with(
                &base,
                "/identity",
                json!({
                    "workspace": {"resourceId": workspace},
                    "principal": {"principalId": "0d7d4a3c-1111-4222-8333-944455566677"},
                }),
            ),
        },
        Junk {
            what: "1 MB credential Secret name",
            field: "spec.azureCredentialRef.name",
            spec: {
                let mut s = base.clone();
                s["azureCredentialRef"] = json!({"name": "a".repeat(1 << 20)});
                s
            },
        },
    ]
}

/// Values of the wrong JSON type: only admission can stop these.
fn wrongly_typed_grant_junk(h: &Harness) -> Vec<Junk> {
    let base = valid_grant_spec(h);
    vec![
        Junk {
            what: "roleAssignments is a string",
            field: "spec.roleAssignments",
            spec: with(&base, "/roleAssignments", json!("Reader")),
        },
        Junk { what: "identity is a number", field: "spec.identity", spec: with(&base, "/identity", json!(5)) },
        Junk {
            what: "scope is a list",
            field: "spec.roleAssignments[0].scope",
            spec: with(&base, "/roleAssignments/0/scope", json!([rg("rg-lake")])),
        },
        Junk {
            what: "deletionPolicy is a number",
            field: "spec.deletionPolicy",
            spec: {
                let mut s = base.clone();
                s["deletionPolicy"] = json!(7);
                s
            },
        },
        Junk {
            what: "deletionPolicy is not one of the values",
            field: "spec.deletionPolicy",
            spec: {
                let mut s = base.clone();
                s["deletionPolicy"] = json!("Shred");
                s
            },
        },
    ]
}

fn valid_policy_spec() -> Value {
    json!({
        "namespaceSelector": {"matchLabels": {"team": "analytics"}},
        "identities": [format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-analytics/**")],
        "roles": ["Reader"],
        "scopes": [format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-lake/**")],
    })
}

fn typed_policy_junk() -> Vec<Junk> {
    let base = valid_policy_spec();
    let many: Vec<Value> = (0..10_000).map(|i| json!(format!("/subscriptions/*/resourceGroups/rg-{i}/**"))).collect();
    vec![
        Junk {
            what: "1 MB scope pattern",
            field: "spec.scopes[0]",
            spec: with(&base, "/scopes/0", json!(format!("/{}", "a".repeat(1 << 20)))),
        },
        Junk {
            what: "10,000 identity patterns",
            field: "spec.identities",
            spec: with(&base, "/identities", json!(many)),
        },
        Junk {
            what: "NUL byte in a pattern",
            field: "spec.identities[0]",
            spec: with(&base, "/identities/0", json!("/subscriptions/*/resourceGroups/rg\u{0}/**")),
        },
        Junk {
            what: "'**' inside a segment",
            field: "spec.scopes[0]",
            spec: with(&base, "/scopes/0", json!("/subscriptions/*/resourceGroups/rg-**")),
        },
        Junk {
            what: "role with surrounding spaces",
            field: "spec.roles[0]",
            spec: with(&base, "/roles/0", json!(" Owner")),
        },
        Junk { what: "no roles", field: "spec.roles", spec: with(&base, "/roles", json!([])) },
        Junk {
            what: "label selector operator junk",
            field: "spec.namespaceSelector",
            spec: with(
                &base,
                "/namespaceSelector",
                json!({"matchExpressions": [{"key": "team", "operator": "Near", "values": ["x"]}]}),
            ),
        },
    ]
}

fn wrongly_typed_policy_junk() -> Vec<Junk> {
    let base = valid_policy_spec();
    vec![
        Junk {
            what: "identities is a string",
            field: "spec.identities",
            spec: with(&base, "/identities", json!("/subscriptions/**")),
        },
        Junk {
            what: "allowPrivilegedRoles is a string",
            field: "spec.allowPrivilegedRoles",
            spec: {
                let mut s = base.clone();
                s["allowPrivilegedRoles"] = json!("yes");
                s
            },
        },
    ]
}

fn raw_api<K: kube::Resource<DynamicType = ()>>(h: &Harness, namespaced: bool) -> Api<DynamicObject> {
    let client = h.sandbox.kube.emulator.client().expect("client");
    let resource = ApiResource::erase::<K>(&());
    if namespaced { Api::namespaced_with(client, NS, &resource) } else { Api::all_with(client, &resource) }
}

fn object<K: kube::Resource<DynamicType = ()>>(name: &str, spec: &Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("object")
}

fn set_admission(emulator: &KubeEmulatorHandle, on: bool) {
    emulator.emulator.store().admission = on;
}

fn azure_writes(h: &Harness) -> u64 {
    let arm = &h.sandbox.arm.emulator;
    arm.count("PutRoleAssignment") + arm.count("DeleteRoleAssignment")
}

#[tokio::test]
async fn junk_through_the_api_server_is_refused_with_the_field_named() {
    let _scenario = crate::common::scenario("Bad input", "junk in every field through admission: 422 naming the field");
    let h = harness(Default::default()).await;
    let grants = raw_api::<DatabricksIdentityGrant>(&h, true);
    let policies = raw_api::<GrantPolicy>(&h, false);
    h.sandbox.arm.emulator.reset_stats();

    let mut refused = 0;
    let mut accepted = Vec::new();
    let (typed, wrongly_typed) = (typed_grant_junk(&h), wrongly_typed_grant_junk(&h));
    for (i, junk) in typed.iter().chain(&wrongly_typed).enumerate() {
        let name = format!("junk-{i}");
        match grants.create(&PostParams::default(), &object::<DatabricksIdentityGrant>(&name, &junk.spec)).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {}", junk.what, status.message);
                assert!(
                    status.message.contains(junk.field.split('[').next().unwrap_or(junk.field)),
                    "{}: the refusal does not name {}: {}",
                    junk.what,
                    junk.field,
                    &status.message[..status.message.len().min(400)]
                );
                assert!(status.message.len() < MAX_MESSAGE, "{}: a {}-byte refusal", junk.what, status.message.len());
                refused += 1;
            }
            Err(other) => panic!("{}: {other}", junk.what),
            // Admission cannot see everything (e.g. whether a condition parses): the reconciler must.
            Ok(_) => accepted.push((name, junk)),
        }
    }
    for junk in wrongly_typed_policy_junk().iter().chain(&typed_policy_junk()) {
        let result = policies.create(&PostParams::default(), &object::<GrantPolicy>("junk", &junk.spec)).await;
        match result {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{}: {}", junk.what, status.message),
            Err(other) => panic!("{}: {other}", junk.what),
            Ok(_) => {
                let policies: Api<GrantPolicy> = Api::all(h.sandbox.kube.emulator.client().expect("client"));
                wait_for_invalid_policy(&policies, "junk", junk).await;
                policies.delete("junk", &Default::default()).await.expect("delete");
            }
        }
    }
    assert!(refused >= wrongly_typed.len(), "every wrongly typed grant is refused");
    for (name, junk) in &accepted {
        let g = h
            .wait_for(name, "refused as InvalidSpec", |g| condition(g, "Ready").is_some_and(|c| c.1 == "InvalidSpec"))
            .await;
        let message = condition(&g, "Ready").map(|c| c.2).unwrap_or_default();
        assert!(message.contains(junk.field), "{}: {message}", junk.what);
    }
    assert_eq!(azure_writes(&h), 0, "junk reached Azure");
    assert_eq!(h.sandbox.arm.emulator.count("GetWorkspace"), 0, "junk was resolved against Azure");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

async fn wait_for_invalid_policy(policies: &Api<GrantPolicy>, name: &str, junk: &Junk) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let p = policies.get(name).await.expect("policy");
        let ready = p.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready");
        if let Some(c) = ready.filter(|c| c.reason == "InvalidPolicy") {
            assert!(c.message.contains(junk.field), "{}: {}", junk.what, c.message);
            assert!(c.message.len() < MAX_MESSAGE, "{}: a {}-byte message", junk.what, c.message.len());
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}: policy not reported invalid: {:?}", junk.what, p.status);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// As on a cluster whose CRD lost its schema or CEL rules: everything is stored, so the
/// reconciler is the only line of defence.
#[tokio::test]
async fn junk_past_admission_gets_a_specific_status_and_never_an_azure_write() {
    let _scenario = crate::common::scenario("Bad input", "junk past admission: specific status, no Azure write");
    let h = harness(Default::default()).await;
    set_admission(&h.sandbox.kube, false);
    let grants = raw_api::<DatabricksIdentityGrant>(&h, true);
    h.sandbox.arm.emulator.reset_stats();

    // One 1 MB field and the 10,000-entry list go through the whole controller; every field's
    // huge value is covered by `every_junk_spec_is_refused_naming_its_field` (the same
    // validation, without a debug build re-serialising megabytes on every watch event).
    let junk: Vec<Junk> =
        typed_grant_junk(&h).into_iter().filter(|j| !j.what.starts_with("1 MB") || j.what == "1 MB scope").collect();
    for (i, j) in junk.iter().enumerate() {
        grants
            .create(&PostParams::default(), &object::<DatabricksIdentityGrant>(&format!("junk-{i}"), &j.spec))
            .await
            .unwrap_or_else(|e| panic!("{}: stored without admission: {e}", j.what));
    }
    // A valid grant among them is not starved.
    h.apply(&grant("valid", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    for (i, j) in junk.iter().enumerate() {
        let g = h
            .wait_for(&format!("junk-{i}"), "refused as InvalidSpec", |g| {
                condition(g, "Ready").is_some_and(|c| c.1 == "InvalidSpec")
            })
            .await;
        let message = condition(&g, "Ready").map(|c| c.2).unwrap_or_default();
        assert!(message.contains(j.field), "{}: the status does not name {}: {message}", j.what, j.field);
        assert!(message.len() < MAX_MESSAGE, "{}: a {}-byte status message", j.what, message.len());
        assert!(g.status.iter().all(|s| s.role_assignments.is_empty()), "{}: planned assignments", j.what);
    }
    h.ready("valid").await;
    assert_eq!(azure_writes(&h), 1, "only the valid grant's assignment is written");

    let policies: Api<GrantPolicy> = Api::all(h.sandbox.kube.emulator.client().expect("client"));
    let raw_policies = raw_api::<GrantPolicy>(&h, false);
    for (i, j) in
        typed_policy_junk().iter().filter(|j| !j.what.starts_with("1 MB") && !j.what.starts_with("10,000")).enumerate()
    {
        let name = format!("junk-{i}");
        raw_policies
            .create(&PostParams::default(), &object::<GrantPolicy>(&name, &j.spec))
            .await
            .unwrap_or_else(|e| panic!("{}: stored without admission: {e}", j.what));
        wait_for_invalid_policy(&policies, &name, j).await;
    }
    h.assert_invariant(&[]).await;
    h.stop().await;
}

/// The validation the reconciler runs, over every junk spec including the huge ones.
#[tokio::test]
async fn every_junk_spec_is_refused_naming_its_field() {
    let _scenario = crate::common::scenario("Bad input", "every junk spec refused by validation, naming its field");
    use dbx_identity_operator::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
    let h = harness(Default::default()).await;
    for j in typed_grant_junk(&h).iter().chain(&wrongly_typed_grant_junk(&h)) {
        let message = validate_grant_spec_json(&j.spec).map(|_| ()).expect_err(j.what).to_string();
        assert!(message.contains(j.field), "{}: does not name {}: {message}", j.what, j.field);
        assert!(message.len() < MAX_MESSAGE, "{}: a {}-byte message", j.what, message.len());
    }
    for j in typed_policy_junk().iter().chain(&wrongly_typed_policy_junk()) {
        let message = validate_policy_spec_json(&j.spec).map(|_| ()).expect_err(j.what).to_string();
        assert!(message.contains(j.field), "{}: does not name {}: {message}", j.what, j.field);
        assert!(message.len() < MAX_MESSAGE, "{}: a {}-byte message", j.what, message.len());
    }
    h.stop().await;
}

/// The Ready condition `(reason, message)` of an object read untyped.
async fn raw_ready(api: &Api<DynamicObject>, name: &str) -> Option<(String, String)> {
    let object = api.get(name).await.ok()?;
    let ready = object.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
    Some((ready["reason"].as_str()?.to_owned(), ready["message"].as_str()?.to_owned()))
}

async fn wait_for_raw_reason(api: &Api<DynamicObject>, name: &str, reason: &str, junk: &Junk) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let ready = raw_ready(api, name).await;
        if let Some((_, message)) = ready.as_ref().filter(|r| r.0 == reason) {
            assert!(message.contains(junk.field), "{}: the status does not name {}: {message}", junk.what, junk.field);
            assert!(message.len() < MAX_MESSAGE, "{}: a {}-byte message", junk.what, message.len());
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}: not reported as {reason}: {ready:?}", junk.what);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Wrongly typed objects stored without admission cannot be decoded as the Rust types. One of
/// them must not stall the operator (a typed watch fails every list it appears in): each is
/// reported by name, the rest keep working, and deleting one still cleans up.
#[tokio::test]
async fn wrongly_typed_objects_past_admission_are_reported_and_stall_nothing() {
    let _scenario =
        crate::common::scenario("Bad input", "wrongly typed objects past admission: reported, nothing stalls");
    let h = harness(Default::default()).await;
    h.apply(&grant("kept", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("kept").await;
    let kept_assignments = h.tuples().len();
    set_admission(&h.sandbox.kube, false);
    h.sandbox.arm.emulator.reset_stats();

    let (raw_grants, raw_policies) = (raw_api::<DatabricksIdentityGrant>(&h, true), raw_api::<GrantPolicy>(&h, false));
    let grant_junk = wrongly_typed_grant_junk(&h);
    for (i, j) in grant_junk.iter().enumerate() {
        raw_grants
            .create(&PostParams::default(), &object::<DatabricksIdentityGrant>(&format!("typed-junk-{i}"), &j.spec))
            .await
            .unwrap_or_else(|e| panic!("{}: stored without admission: {e}", j.what));
    }
    let policy_junk = wrongly_typed_policy_junk();
    for (i, j) in policy_junk.iter().enumerate() {
        raw_policies
            .create(&PostParams::default(), &object::<GrantPolicy>(&format!("typed-junk-{i}"), &j.spec))
            .await
            .unwrap_or_else(|e| panic!("{}: stored without admission: {e}", j.what));
    }
    // A grant applied after the junk is reconciled: the watches did not stall.
    h.apply(&grant("after", h.workspace_identity(1), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("after").await;
    for (i, j) in grant_junk.iter().enumerate() {
        wait_for_raw_reason(&raw_grants, &format!("typed-junk-{i}"), "InvalidSpec", j).await;
    }
    for (i, j) in policy_junk.iter().enumerate() {
        wait_for_raw_reason(&raw_policies, &format!("typed-junk-{i}"), "InvalidPolicy", j).await;
    }
    assert_eq!(azure_writes(&h), 1, "only the valid grant's assignment is written");

    // A working grant edited into junk: refused, and what it created stays.
    let mut kept = raw_grants.get("kept").await.expect("kept");
    kept.data["spec"]["identity"] = json!(5);
    raw_grants.replace("kept", &PostParams::default(), &kept).await.expect("stored without admission");
    let junk = Junk { what: "identity edited into a number", field: "spec.identity", spec: Value::Null };
    wait_for_raw_reason(&raw_grants, "kept", "InvalidSpec", &junk).await;
    assert_eq!(h.tuples().len(), kept_assignments + 1, "the junk edit removed an assignment");
    assert_eq!(azure_writes(&h), 1);

    // Deleted while unreadable: its readable deletionPolicy (the default, Delete) is honoured and
    // the finalizer is removed, so the object goes.
    raw_grants.delete("kept", &Default::default()).await.expect("delete");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while raw_grants.get_opt("kept").await.expect("get").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the unreadable grant's finalizer was never removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(h.tuples().len(), kept_assignments, "its assignment was not removed");
    h.assert_invariant(&[]).await;
    h.stop().await;
}

//! Contract check: the ARM emulator's response bodies, and the request bodies our client sends,
//! validated against the JSON schemas in Azure's official OpenAPI specs.
//!
//! The specs live outside the repository (`../shared/azure/specs`, or `DBX_AZURE_SPECS`), so
//! these tests are ignored by default and `.ci/run` runs them with `--ignored`; run by hand:
//! `cargo test --test integration -- --ignored contract::`. A missing specs directory fails loudly.
//!
//! Schemas are taken from each operation's declared response (or body parameter) in `paths`,
//! with `$ref`s resolved across files as the specs' README describes. Extensible enums
//! (`x-ms-enum.modelAsString`) are opened up, as Azure's clients treat them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbx_identity_operator::azure::client::{ArmClient, arm_retry, client_options};
use dbx_identity_operator::azure::credentials::client_secret;
use dbx_identity_operator::azure::models::RoleAssignmentProperties;
use dbx_identity_operator::azure::{ArmError, ResourceId};
use dbx_identity_operator::sandbox::arm::{self, ArmEmulatorConfig, StateConfig};
use dbx_identity_operator::sandbox::estate::{self, OPERATOR_CLIENT_ID, SUBSCRIPTION_ID, TENANT_ID};
use serde_json::{Value, json};

const SECRET: &str = "contract-secret";

fn specs_dir() -> PathBuf {
    let dir = std::env::var_os("DBX_AZURE_SPECS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/azure/specs"));
    assert!(
        dir.join("Microsoft.Authorization").is_dir(),
        "Azure REST specs not found at {} — set DBX_AZURE_SPECS to the specs directory (CI has ../shared/azure/specs)",
        dir.display()
    );
    dir
}

struct Specs {
    root: PathBuf,
    files: HashMap<PathBuf, Value>,
    /// `$ref`s that point outside the copied specs (replaced by `{}`), for the report.
    unresolved: Vec<String>,
}

impl Specs {
    fn load(&mut self, path: &Path) -> Option<Value> {
        if let Some(v) = self.files.get(path) {
            return Some(v.clone());
        }
        let text = std::fs::read_to_string(path).ok()?;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.files.insert(path.to_owned(), value.clone());
        Some(value)
    }

    /// Maps a `$ref` file part, relative to `from`, onto the copied layout.
    fn ref_file(&self, from: &Path, file: &str) -> PathBuf {
        if let Some(at) = file.find("common-types/resource-management/") {
            return self.root.join(&file[at..]);
        }
        let mut path = from.parent().unwrap_or(Path::new("")).to_path_buf();
        for part in file.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    path.pop();
                }
                p => path.push(p),
            }
        }
        path
    }

    /// Inlines `$ref`s. `stack` holds the references being expanded; a recursive type (an
    /// error's `details` are errors) is cut after two levels with an open schema.
    fn resolve(&mut self, file: &Path, value: &Value, stack: &mut Vec<String>) -> Value {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    let (ref_file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
                    let target_file = if ref_file.is_empty() { file.to_owned() } else { self.ref_file(file, ref_file) };
                    let key = format!("{}#{pointer}", target_file.display());
                    if stack.iter().filter(|k| **k == key).count() >= 2 {
                        return json!({});
                    }
                    let Some(doc) = self.load(&target_file) else {
                        self.unresolved.push(reference.to_owned());
                        return json!({});
                    };
                    let target = doc.pointer(pointer).cloned().or_else(|| {
                        // The stored v3/types.json spells `systemData` as `SystemData`.
                        let (parent, name) = pointer.rsplit_once('/')?;
                        doc.pointer(parent)?
                            .as_object()?
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone())
                    });
                    let Some(target) = target else {
                        self.unresolved.push(reference.to_owned());
                        return json!({});
                    };
                    stack.push(key);
                    let resolved = self.resolve(&target_file, &target, stack);
                    stack.pop();
                    return resolved;
                }
                let extensible =
                    map.get("x-ms-enum").and_then(|e| e.get("modelAsString")).and_then(Value::as_bool) == Some(true);
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    if k == "discriminator" || (k == "enum" && extensible) || k == "example" || k == "x-ms-examples" {
                        continue;
                    }
                    out.insert(k.clone(), self.resolve(file, v, stack));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.resolve(file, v, stack)).collect()),
            other => other.clone(),
        }
    }

    /// The resolved schema of an operation's response (`status`) or, with `status = "body"`,
    /// of its body parameter. `path_suffix` picks the path template.
    fn operation_schema(&mut self, spec: &str, path_suffix: &str, method: &str, status: &str) -> Value {
        let file = self.root.join(spec);
        let doc = self.load(&file).unwrap_or_else(|| panic!("{} missing", file.display()));
        let paths = doc["paths"].as_object().expect("paths");
        let (_, op) = paths
            .iter()
            .find(|(p, ops)| p.ends_with(path_suffix) && ops.get(method).is_some())
            .unwrap_or_else(|| panic!("{spec}: no {method} on a path ending in {path_suffix}"));
        let schema = if status == "body" {
            // Parameters may themselves be `$ref`s to shared parameter definitions.
            let parameters = self.resolve(&file, &op[method]["parameters"], &mut Vec::new());
            let body =
                parameters.as_array().and_then(|ps| ps.iter().find(|p| p["in"] == "body")).map(|p| p["schema"].clone());
            return body.unwrap_or_else(|| panic!("{spec} {path_suffix}: no body parameter"));
        } else {
            op[method]["responses"][status]["schema"].clone()
        };
        assert!(!schema.is_null(), "{spec} {method} {path_suffix} {status}: no schema");
        self.resolve(&file, &schema, &mut Vec::new())
    }
}

/// Which schema: (spec file, path-template suffix, method, status or "body").
type SchemaRef<'a> = (&'a str, &'a str, &'a str, &'a str);

fn check(specs: &mut Specs, what: &str, schema_of: SchemaRef<'_>, body: &Value) -> Vec<String> {
    let (spec, path, method, status) = schema_of;
    let schema = specs.operation_schema(spec, path, method, status);
    let validator = jsonschema::draft4::new(&schema).unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"));
    validator.iter_errors(body).map(|e| format!("{what}: {} at {}", e, e.instance_path())).collect()
}

const RA: &str = "Microsoft.Authorization/2022-04-01/authorization-RoleAssignmentsCalls.json";
const RD: &str = "Microsoft.Authorization/2022-04-01/authorization-RoleDefinitionsCalls.json";
const DBW: &str = "Microsoft.Databricks/2026-01-01/databricks.json";
const DBAC: &str = "Microsoft.Databricks/2026-01-01/accessconnector.json";
const MSI: &str = "Microsoft.ManagedIdentity/2026-05-31/ManagedIdentity.json";
const PIM_REQ: &str = "Microsoft.Authorization/2020-10-01/RoleAssignmentScheduleRequest.json";
const PIM_SCH: &str = "Microsoft.Authorization/2020-10-01/RoleAssignmentSchedule.json";
const PIM_INST: &str = "Microsoft.Authorization/2020-10-01/RoleAssignmentScheduleInstance.json";

#[tokio::test]
#[ignore = "needs the Azure REST specs (../shared/azure/specs); .ci/run runs it"]
async fn emulator_responses_and_client_requests_match_the_azure_specs() {
    let mut specs = Specs { root: specs_dir(), files: HashMap::new(), unresolved: Vec::new() };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ArmEmulatorConfig::new(TENANT_ID, dir.path().to_owned());
    config.state = StateConfig { page_size: 2, ..StateConfig::default() };
    let arm = arm::start(config).await.expect("start");
    let estate = estate::seed(&mut arm.emulator.state(), 0);
    let settings = arm.client_secret_settings(&estate.operator_principal_id, SECRET);
    let credential = client_secret(&settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");

    // Drive the client through every operation so the emulator sees our real request bodies.
    let client = ArmClient::new(
        arm.url(),
        credential.clone(),
        client_options(Some(&arm.ca_file), arm_retry()).expect("options"),
    )
    .expect("client");
    let lake = ResourceId::parse(&estate.scopes.storage_account).expect("scope");
    let principal = estate.access_connectors[0].principal_id.clone().expect("principal");
    let reader = format!(
        "/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleDefinitions/2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
    );
    let name = "11111111-2222-4333-8444-555555555555";
    let properties = RoleAssignmentProperties {
        role_definition_id: reader.clone(),
        principal_id: principal.clone(),
        principal_type: Some("ServicePrincipal".into()),
        description: Some("contract".into()),
        condition: Some(
            "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'curated'".into(),
        ),
        condition_version: Some("2.0".into()),
        ..Default::default()
    };
    client.create_role_assignment(&lake, name, properties).await.expect("create");
    let err = client
        .create_role_assignment(
            &lake,
            "not-a-guid",
            RoleAssignmentProperties {
                role_definition_id: reader.clone(),
                principal_id: principal.clone(),
                ..Default::default()
            },
        )
        .await
        .expect_err("invalid name");
    assert!(matches!(err, ArmError::InvalidRequest { .. }));

    // Raw bodies: the typed client drops fields, the contract covers all of them.
    let token = credential
        .get_token(&[&format!("{}/.default", arm.url())], None)
        .await
        .expect("token")
        .token
        .secret()
        .to_owned();
    let pem = std::fs::read(&arm.ca_file).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("http");
    let get = |path: String, api: &'static str| {
        let (http, token, base) = (http.clone(), token.clone(), arm.url().to_owned());
        async move {
            let url = if path.contains('?') {
                format!("{base}{path}&api-version={api}")
            } else {
                format!("{base}{path}?api-version={api}")
            };
            let response = http.get(url).bearer_auth(token).send().await.expect("send");
            let status = response.status().as_u16();
            (status, serde_json::from_slice::<Value>(&response.bytes().await.expect("body")).unwrap_or(Value::Null))
        }
    };

    let ws = &estate.workspaces[0].id;
    let mi = format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/dbmanagedidentity",
        estate.workspaces[0].managed_resource_group_id
    );
    let assignments = format!("{lake}/providers/Microsoft.Authorization/roleAssignments");
    let cases: Vec<(&str, SchemaRef<'_>, (u16, Value))> = vec![
        ("GET workspace", (DBW, "/workspaces/{workspaceName}", "get", "200"), get(ws.clone(), "2026-01-01").await),
        (
            "GET workspace 404",
            (DBW, "/workspaces/{workspaceName}", "get", "default"),
            get(ws.replace("dbw-analytics-prod", "nope"), "2026-01-01").await,
        ),
        (
            "GET access connector (system)",
            (DBAC, "/accessConnectors/{connectorName}", "get", "200"),
            get(estate.access_connectors[0].id.clone(), "2026-01-01").await,
        ),
        (
            "GET access connector (user-assigned)",
            (DBAC, "/accessConnectors/{connectorName}", "get", "200"),
            get(estate.access_connectors[1].id.clone(), "2026-01-01").await,
        ),
        (
            "GET user-assigned identity",
            (MSI, "/userAssignedIdentities/{resourceName}", "get", "200"),
            get(mi.clone(), "2026-05-31").await,
        ),
        (
            "GET user-assigned identity 404",
            (MSI, "/userAssignedIdentities/{resourceName}", "get", "default"),
            get(mi.replace("dbmanagedidentity", "nope"), "2026-05-31").await,
        ),
        (
            "GET role definition",
            (RD, "/roleDefinitions/{roleDefinitionId}", "get", "200"),
            get(reader.clone(), "2022-04-01").await,
        ),
        (
            "LIST role definitions by name",
            (RD, "/{scope}/providers/Microsoft.Authorization/roleDefinitions", "get", "200"),
            get(
                format!("{lake}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName%20eq%20'Reader'"),
                "2022-04-01",
            )
            .await,
        ),
        (
            "LIST role definitions (first page)",
            (RD, "/{scope}/providers/Microsoft.Authorization/roleDefinitions", "get", "200"),
            get(format!("{lake}/providers/Microsoft.Authorization/roleDefinitions"), "2022-04-01").await,
        ),
        (
            "GET role assignment",
            (RA, "/roleAssignments/{roleAssignmentName}", "get", "200"),
            get(format!("{assignments}/{name}"), "2022-04-01").await,
        ),
        (
            "GET role assignment 404",
            (RA, "/roleAssignments/{roleAssignmentName}", "get", "default"),
            get(format!("{assignments}/99999999-2222-4333-8444-555555555555"), "2022-04-01").await,
        ),
        (
            "LIST role assignments atScope()",
            (RA, "/{scope}/providers/Microsoft.Authorization/roleAssignments", "get", "200"),
            get(format!("{assignments}?$filter=atScope()"), "2022-04-01").await,
        ),
        (
            "LIST workspaces by subscription (first page)",
            (DBW, "/subscriptions/{subscriptionId}/providers/Microsoft.Databricks/workspaces", "get", "200"),
            get(format!("/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Databricks/workspaces"), "2026-01-01").await,
        ),
        (
            "LIST workspaces by resource group",
            (DBW, "/resourceGroups/{resourceGroupName}/providers/Microsoft.Databricks/workspaces", "get", "200"),
            get(
                format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces"),
                "2026-01-01",
            )
            .await,
        ),
        (
            "LIST access connectors by subscription",
            (DBAC, "/subscriptions/{subscriptionId}/providers/Microsoft.Databricks/accessConnectors", "get", "200"),
            get(format!("/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Databricks/accessConnectors"), "2026-01-01")
                .await,
        ),
        (
            "LIST user-assigned identities by subscription",
            (MSI, "/subscriptions/{subscriptionId}/providers/Microsoft.ManagedIdentity/userAssignedIdentities", "get", "200"),
            get(
                format!("/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities"),
                "2026-05-31",
            )
            .await,
        ),
        (
            "LIST role assignments (no filter)",
            (RA, "/{scope}/providers/Microsoft.Authorization/roleAssignments", "get", "200"),
            get(format!("/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleAssignments"), "2022-04-01")
                .await,
        ),
        (
            "LIST role assignments by principal",
            (RA, "/{scope}/providers/Microsoft.Authorization/roleAssignments", "get", "200"),
            get(format!("{assignments}?$filter=principalId%20eq%20'{principal}'"), "2022-04-01").await,
        ),
    ];
    let mut failures = Vec::new();

    // Azure PIM: the request body the operator sends (AdminAssign, AfterDateTime), the emulator's
    // answer, and the schedule and instance lists.
    let end = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(2);
    let pim_body = json!({"properties": dbx_identity_operator::azure::models::ScheduleRequestProperties {
        principal_type: Some("ServicePrincipal".into()),
        justification: Some("contract".into()),
        ..dbx_identity_operator::azure::models::ScheduleRequestProperties::ending_at(
            "AdminAssign",
            &principal,
            &reader,
            &end.to_string(),
        )
    }});
    let pim_scope = estate.scopes.resource_group.clone();
    let request_url = format!(
        "{}{pim_scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/22222222-3333-4444-8555-666666666666?api-version=2020-10-01",
        arm.url()
    );
    let response = http.put(request_url).bearer_auth(&token).json(&pim_body).send().await.expect("send");
    assert_eq!(response.status().as_u16(), 201);
    let answer: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
    failures.extend(check(
        &mut specs,
        "PIM request body",
        (PIM_REQ, "/roleAssignmentScheduleRequests/{roleAssignmentScheduleRequestName}", "put", "body"),
        &pim_body,
    ));
    failures.extend(check(
        &mut specs,
        "PIM request answer",
        (PIM_REQ, "/roleAssignmentScheduleRequests/{roleAssignmentScheduleRequestName}", "put", "201"),
        &answer,
    ));
    let filter = format!("?$filter=principalId%20eq%20'{principal}'");
    for (what, spec, suffix, path) in [
        ("LIST PIM schedules", PIM_SCH, "/roleAssignmentSchedules", "roleAssignmentSchedules"),
        ("LIST PIM instances", PIM_INST, "/roleAssignmentScheduleInstances", "roleAssignmentScheduleInstances"),
    ] {
        let (status, body) =
            get(format!("{pim_scope}/providers/Microsoft.Authorization/{path}{filter}"), "2020-10-01").await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["value"].as_array().map(Vec::len), Some(1), "{what}: {body}");
        failures.extend(check(&mut specs, what, (spec, suffix, "get", "200"), &body));
    }
    let broken = check(
        &mut specs,
        "broken PIM schedule",
        (PIM_SCH, "/roleAssignmentSchedules", "get", "200"),
        &json!({"value": [{"properties": {"status": 5, "startDateTime": []}}]}),
    );
    assert!(!broken.is_empty(), "the PIM schedule schema accepted a broken body: resolution failed");
    // The operator's client reads the list it validated.
    let listed =
        client.list_role_assignment_schedules(&ResourceId::parse(&pim_scope).expect("scope"), &principal).await;
    assert_eq!(listed.expect("schedules").len(), 1);

    for (what, schema, (status, body)) in &cases {
        let expected_ok = schema.3 != "default";
        assert_eq!((200..300).contains(status), expected_ok, "{what}: status {status}, body {body}");
        failures.extend(check(&mut specs, what, *schema, body));
    }
    // Every PUT body the client sent, and the emulator's answers to them.
    let put_bodies = arm.emulator.put_bodies();
    assert_eq!(put_bodies.len(), 2);
    for body in &put_bodies {
        failures.extend(check(
            &mut specs,
            "client PUT body",
            (RA, "/roleAssignments/{roleAssignmentName}", "put", "body"),
            body,
        ));
    }
    let (_, created) = get(format!("{assignments}/{name}"), "2022-04-01").await;
    failures.extend(check(
        &mut specs,
        "PUT response",
        (RA, "/roleAssignments/{roleAssignmentName}", "put", "201"),
        &created,
    ));

    // The schemas are not vacuous: a body missing required parts fails.
    let broken =
        check(&mut specs, "broken workspace", (DBW, "/workspaces/{workspaceName}", "get", "200"), &json!({"id": 5}));
    assert!(!broken.is_empty(), "the Workspace schema accepted a broken body: resolution failed");

    println!(
        "contract: {} response kinds and {} request bodies checked; $refs outside the copied specs: {:?}",
        cases.len() + 1,
        put_bodies.len(),
        {
            let mut u = specs.unresolved.clone();
            u.sort();
            u.dedup();
            u
        }
    );
    assert!(failures.is_empty(), "contract violations:\n{}", failures.join("\n"));
    drop(tokio::time::sleep(Duration::ZERO));
    arm.shutdown().await;
}

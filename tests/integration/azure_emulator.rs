//! The Azure layer end to end: the real `ArmClient` and azure_identity credentials against the
//! HTTPS ARM emulator. Each test starts its own emulator on a free port.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use dbx_identity_operator::azure::client::{ArmClient, client_options};
use dbx_identity_operator::azure::credentials::{AzureSettings, client_secret, workload_identity};
use dbx_identity_operator::azure::models::RoleAssignmentProperties;
use dbx_identity_operator::azure::{ArmError, ResourceId};
use dbx_identity_operator::sandbox::arm::throttle::{Bucket, ThrottleConfig};
use dbx_identity_operator::sandbox::arm::tokens::service_account_token;
use dbx_identity_operator::sandbox::arm::{self, ArmEmulatorConfig, ArmEmulatorHandle, FaultConfig, StateConfig};
use dbx_identity_operator::sandbox::estate::{self, Estate, OPERATOR_CLIENT_ID, SUBSCRIPTION_ID, TENANT_ID};

const SECRET: &str = "sandbox-operator-secret";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";

struct Fixture {
    arm: ArmEmulatorHandle,
    estate: Estate,
    settings: AzureSettings,
    _dir: tempfile::TempDir,
}

async fn fixture_with(state: StateConfig, throttling: ThrottleConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ArmEmulatorConfig::new(TENANT_ID, dir.path().to_owned());
    config.state = state;
    config.throttling = throttling;
    let arm = arm::start(config).await.expect("start emulator");
    let estate = estate::seed(&mut arm.emulator.state(), 0);
    let settings = arm.client_secret_settings(&estate.operator_principal_id, SECRET);
    Fixture { arm, estate, settings, _dir: dir }
}

async fn fixture() -> Fixture {
    fixture_with(StateConfig::default(), ThrottleConfig::default()).await
}

fn fast_retry(max_retries: u32) -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(50),
        max_retries,
        max_delay: azure_core::time::Duration::seconds(5),
        ..Default::default()
    })
}

impl Fixture {
    fn client_with(&self, retry: RetryOptions) -> ArmClient {
        let credential = client_secret(&self.settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");
        ArmClient::new(self.arm.url(), credential, client_options(Some(&self.arm.ca_file), retry).expect("options"))
            .expect("client")
    }

    fn client(&self) -> ArmClient {
        self.client_with(fast_retry(3))
    }

    fn no_retry_client(&self) -> ArmClient {
        self.client_with(RetryOptions::none())
    }

    fn lake(&self) -> ResourceId {
        ResourceId::parse(&self.estate.scopes.storage_account).expect("scope")
    }

    fn uc_principal(&self) -> String {
        self.estate.access_connectors[0].principal_id.clone().expect("system-assigned")
    }
}

fn role_id(guid: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}

fn props(role: &str, principal: &str) -> RoleAssignmentProperties {
    RoleAssignmentProperties {
        role_definition_id: role_id(role),
        principal_id: principal.to_owned(),
        principal_type: Some("ServicePrincipal".into()),
        ..Default::default()
    }
}

fn name() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn resolves_workspaces_access_connectors_and_identities() {
    let f = fixture().await;
    let client = f.client();
    let ws = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    let workspace = client.get_workspace(&ws).await.expect("workspace");
    assert_eq!(workspace.properties.managed_resource_group_id, f.estate.workspaces[0].managed_resource_group_id);
    let linked = workspace.properties.access_connector.expect("linked connector");
    assert_eq!(linked.id, f.estate.access_connectors[0].id);

    let managed_rg = ResourceId::parse(&workspace.properties.managed_resource_group_id).expect("rg");
    let mi =
        managed_rg.with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", "dbmanagedidentity");
    let identity = client.get_user_assigned_identity(&mi).await.expect("dbmanagedidentity");
    assert_eq!(identity.properties.principal_id, f.estate.workspaces[0].managed_identity_principal_id);
    assert_eq!(identity.properties.tenant_id, TENANT_ID);

    let connector = client.get_access_connector(&ResourceId::parse(&linked.id).expect("id")).await.expect("connector");
    assert_eq!(connector.identity.expect("identity").principal_id, Some(f.uc_principal()));
    let shared = client
        .get_access_connector(&ResourceId::parse(&f.estate.access_connectors[1].id).expect("id"))
        .await
        .expect("shared");
    let shared_identity = shared.identity.expect("identity");
    assert_eq!(shared_identity.kind, "UserAssigned");
    let (uai_id, uai) = shared_identity.user_assigned_identities.iter().next().expect("one user-assigned identity");
    assert!(uai_id.ends_with("/id-dbx-data"));
    assert_eq!(
        uai.principal_id.as_deref(),
        Some(f.estate.access_connectors[1].user_assigned_identities[0].principal_id.as_str())
    );

    let missing = ws.to_string().replace("dbw-analytics-prod", "dbw-nope");
    let err = client.get_workspace(&ResourceId::parse(&missing).expect("id")).await.expect_err("missing");
    assert!(matches!(&err, ArmError::NotFound { code, .. } if code == "ResourceNotFound"), "{err:?}");
    let no_rg = ResourceId::parse(&ws.to_string().replace("rg-analytics", "rg-gone")).expect("id");
    let err = client.get_workspace(&no_rg).await.expect_err("missing rg");
    assert!(matches!(&err, ArmError::NotFound { code, .. } if code == "ResourceGroupNotFound"), "{err:?}");
}

#[tokio::test]
async fn finds_role_definitions_by_name_and_id() {
    let f = fixture().await;
    let client = f.client();
    let found = client.find_role_definitions(&f.lake(), "Storage Blob Data Reader").await.expect("list");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, BLOB_READER);
    assert!(!found[0].properties.permissions[0].data_actions.is_empty());
    assert!(client.find_role_definitions(&f.lake(), "No Such Role").await.expect("list").is_empty());
    // A quote in the name is escaped, not an injection.
    assert!(client.find_role_definitions(&f.lake(), "x' or roleName eq 'Owner").await.expect("list").is_empty());
    let by_id = client.get_role_definition(&ResourceId::parse(&role_id(READER)).expect("id")).await.expect("get");
    assert_eq!(by_id.properties.role_name, "Reader");
    let err = client
        .get_role_definition(&ResourceId::parse(&role_id("00000000-0000-0000-0000-000000000001")).expect("id"))
        .await
        .expect_err("unknown role");
    assert!(matches!(err, ArmError::RoleDefinitionDoesNotExist { .. }), "{err:?}");
}

#[tokio::test]
async fn role_assignment_lifecycle_matches_azure() {
    let f = fixture().await;
    let client = f.client();
    let scope = f.lake();
    let n = name();
    let created =
        client.create_role_assignment(&scope, &n, props(BLOB_READER, &f.uc_principal())).await.expect("create");
    assert_eq!(created.name, n);
    assert_eq!(created.properties.principal_type.as_deref(), Some("ServicePrincipal"));
    assert_eq!(created.properties.scope.as_deref(), Some(scope.to_string().as_str()));

    // Idempotent re-PUT, then an in-place update of the condition and description.
    client.create_role_assignment(&scope, &n, props(BLOB_READER, &f.uc_principal())).await.expect("same body");
    let mut changed = props(BLOB_READER, &f.uc_principal());
    changed.condition =
        Some("@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'curated'".into());
    changed.condition_version = Some("2.0".into());
    changed.description = Some("curated only".into());
    let updated = client.create_role_assignment(&scope, &n, changed).await.expect("update");
    assert_eq!(updated.properties.description.as_deref(), Some("curated only"));
    assert_eq!(
        client.get_role_assignment(&scope, &n).await.expect("get").properties.condition_version.as_deref(),
        Some("2.0")
    );

    let at_scope = client.list_role_assignments_at_scope(&scope).await.expect("list");
    assert!(at_scope.iter().any(|a| a.name == n));
    // Inherited: the operator's subscription-level assignment shows at the resource.
    assert!(at_scope.iter().any(|a| a.properties.principal_id == f.estate.operator_principal_id));
    let mine = client
        .list_role_assignments_for_principal(&ResourceId::subscription(SUBSCRIPTION_ID), &f.uc_principal())
        .await
        .expect("by principal");
    assert_eq!(mine.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), [n.as_str()]);

    assert!(client.delete_role_assignment(&scope, &n).await.expect("delete"));
    assert!(!client.delete_role_assignment(&scope, &n).await.expect("already gone"));
    let err = client.get_role_assignment(&scope, &n).await.expect_err("gone");
    assert!(matches!(&err, ArmError::NotFound { code, .. } if code == "RoleAssignmentNotFound"), "{err:?}");
}

#[tokio::test]
async fn every_assignment_error_kind_is_typed() {
    let f =
        fixture_with(StateConfig { assignment_limit: 3, ..StateConfig::default() }, ThrottleConfig::default()).await;
    let client = f.client();
    let scope = f.lake();
    let first = name();
    client.create_role_assignment(&scope, &first, props(BLOB_READER, &f.uc_principal())).await.expect("create");

    // Same (principal, role, scope) under another name, even with a condition.
    let mut with_condition = props(BLOB_READER, &f.uc_principal());
    with_condition.condition = Some("@Resource[x:name] StringEquals 'a'".into());
    with_condition.condition_version = Some("2.0".into());
    let err = client.create_role_assignment(&scope, &name(), with_condition).await.expect_err("exists");
    assert!(matches!(err, ArmError::RoleAssignmentExists { .. }), "{err:?}");
    assert!(!err.is_retryable());

    // Re-PUT of an existing name for another principal.
    let other = f.estate.workspaces[0].managed_identity_principal_id.clone();
    let err = client.create_role_assignment(&scope, &first, props(BLOB_READER, &other)).await.expect_err("update");
    assert!(matches!(err, ArmError::RoleAssignmentUpdateNotPermitted { .. }), "{err:?}");

    let err = client.create_role_assignment(&scope, "not-a-guid", props(READER, &other)).await.expect_err("name");
    assert!(matches!(&err, ArmError::InvalidRequest { code, .. } if code == "InvalidRoleAssignmentId"), "{err:?}");

    let unknown = uuid::Uuid::new_v4().to_string();
    let err = f
        .no_retry_client()
        .create_role_assignment(&scope, &name(), props(READER, &unknown))
        .await
        .expect_err("principal");
    assert!(matches!(err, ArmError::PrincipalNotFound { .. }), "{err:?}");
    assert!(err.is_retryable(), "replication may still catch up");

    let err = client
        .create_role_assignment(&scope, &name(), props("00000000-0000-0000-0000-000000000001", &other))
        .await
        .expect_err("role");
    assert!(matches!(err, ArmError::RoleDefinitionDoesNotExist { .. }), "{err:?}");

    let mut bad_condition = props(READER, &other);
    bad_condition.condition = Some("(unbalanced".into());
    bad_condition.condition_version = Some("2.0".into());
    let err = client.create_role_assignment(&scope, &name(), bad_condition).await.expect_err("condition");
    assert!(matches!(&err, ArmError::InvalidRequest { code, .. } if code == "InvalidCondition"), "{err:?}");

    let gone = ResourceId::parse(&scope.to_string().replace("stlakeprod", "stnothere")).expect("id");
    let err = client.create_role_assignment(&gone, &name(), props(READER, &other)).await.expect_err("scope");
    assert!(matches!(&err, ArmError::NotFound { code, .. } if code == "ResourceNotFound"), "{err:?}");

    // Another subscription the operator has no rights in.
    let foreign = ResourceId::resource_group("0d7d4a3c-1111-4222-8333-944455566677", "rg-x");
    f.arm.emulator.state().add_resource_group(&foreign);
    let err = client.create_role_assignment(&foreign, &name(), props(READER, &other)).await.expect_err("403");
    assert!(matches!(err, ArmError::AuthorizationFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("Microsoft.Authorization/roleAssignments/write"), "{err}");

    // The limit counts the operator's own seeded assignment: 3 in all.
    client.create_role_assignment(&scope, &name(), props(READER, &other)).await.expect("third");
    let err =
        client.create_role_assignment(&scope, &name(), props(READER, &f.uc_principal())).await.expect_err("limit");
    assert!(matches!(err, ArmError::RoleAssignmentLimitExceeded { .. }), "{err:?}");
}

#[tokio::test]
async fn transient_failures_and_throttling_are_typed_when_retries_run_out() {
    let f = fixture_with(
        StateConfig::default(),
        ThrottleConfig { reads: Bucket { burst: 1.0, per_second: 0.2 }, ..ThrottleConfig::default() },
    )
    .await;
    let client = f.no_retry_client();
    let ws = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    client.get_workspace(&ws).await.expect("first read fits the bucket");
    let err = client.get_workspace(&ws).await.expect_err("throttled");
    assert!(matches!(err, ArmError::Throttled { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));

    f.arm.emulator.set_throttling(ThrottleConfig::default());
    f.arm.emulator.set_faults(FaultConfig { error_rate: 1.0, ..FaultConfig::default() });
    let err = client.get_workspace(&ws).await.expect_err("500");
    assert!(matches!(err, ArmError::Transient { status: Some(500), .. }), "{err:?}");
    f.arm.emulator.set_faults(FaultConfig { reset_rate: 1.0, ..FaultConfig::default() });
    let err = client.get_workspace(&ws).await.expect_err("reset");
    assert!(err.is_retryable(), "{err:?}");
    f.arm.emulator.set_faults(FaultConfig::default());
    client.get_workspace(&ws).await.expect("healthy again");
}

#[tokio::test]
async fn a_throttled_burst_completes_with_no_more_requests_than_needed() {
    let f = fixture_with(
        StateConfig::default(),
        ThrottleConfig { writes: Bucket { burst: 2.0, per_second: 1.0 }, ..ThrottleConfig::default() },
    )
    .await;
    let client = f.client_with(fast_retry(5));
    let scope = f.lake();
    let principals: Vec<String> = f.estate.workspaces.iter().map(|w| w.managed_identity_principal_id.clone()).collect();
    let started = std::time::Instant::now();
    for principal in principals.iter().chain([&f.uc_principal()]) {
        for role in [READER, BLOB_READER] {
            client.create_role_assignment(&scope, &name(), props(role, principal)).await.expect("eventually created");
        }
    }
    let stats = f.arm.emulator.stats();
    let created = stats.get(&("PutRoleAssignment".to_owned(), 201)).copied().unwrap_or(0);
    let throttled = stats.get(&("PutRoleAssignment".to_owned(), 429)).copied().unwrap_or(0);
    assert_eq!(created, 6);
    // Two fit the burst; each of the other four waits Retry-After once, and is then allowed.
    assert!(throttled <= 4, "{throttled} throttled responses for 4 writes over the burst");
    assert!(started.elapsed() >= Duration::from_secs(3), "Retry-After was not honoured");
}

#[tokio::test]
async fn lists_follow_every_page_and_refuse_foreign_next_links() {
    let _scenario = crate::common::scenario("Security", "nextLink to another host never followed");
    let f = fixture_with(StateConfig { page_size: 2, ..StateConfig::default() }, ThrottleConfig::default()).await;
    let client = f.client();
    let scope = f.lake();
    for principal in f.estate.workspaces.iter().map(|w| w.managed_identity_principal_id.clone()) {
        for role in [READER, BLOB_READER] {
            client.create_role_assignment(&scope, &name(), props(role, &principal)).await.expect("create");
        }
    }
    f.arm.emulator.reset_stats();
    let all = client.list_role_assignments_at_scope(&scope).await.expect("list");
    assert_eq!(all.len(), 5, "4 created + the operator's inherited one");
    assert_eq!(f.arm.emulator.count("ListRoleAssignments"), 3);

    // A nextLink to another host is not followed: the bearer token would go with it.
    f.arm.emulator.set_faults(FaultConfig {
        next_link_origin: Some("https://attacker.example".into()),
        ..FaultConfig::default()
    });
    f.arm.emulator.reset_stats();
    let err = client.list_role_assignments_at_scope(&scope).await.expect_err("foreign link");
    assert!(matches!(&err, ArmError::Other { code, .. } if code == "ForeignNextLink"), "{err:?}");
    assert!(err.to_string().contains("https://attacker.example"), "{err}");
    assert_eq!(f.arm.emulator.count("ListRoleAssignments"), 1);
}

#[tokio::test]
async fn new_principals_and_new_assignments_take_time_to_show() {
    let f = fixture_with(
        StateConfig {
            replication_delay: Duration::from_secs(30),
            replication_delay_with_type: Duration::from_millis(600),
            list_lag: Duration::from_millis(600),
            ..StateConfig::default()
        },
        ThrottleConfig::default(),
    )
    .await;
    let client = f.no_retry_client();
    let scope = f.lake();
    let id = ResourceId::resource_group(SUBSCRIPTION_ID, "rg-analytics").with_provider_resource(
        "Microsoft.ManagedIdentity",
        "userAssignedIdentities",
        "id-brand-new",
    );
    let (principal, _) = f.arm.emulator.state().create_user_assigned_identity(&id, Duration::ZERO);
    let err = client.create_role_assignment(&scope, &name(), props(READER, &principal)).await.expect_err("young");
    assert!(matches!(err, ArmError::PrincipalNotFound { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n = name();
    client.create_role_assignment(&scope, &n, props(READER, &principal)).await.expect("replicated");
    let listed = client.list_role_assignments_at_scope(&scope).await.expect("list");
    assert!(!listed.iter().any(|a| a.name == n), "visible before the list lag");
    assert!(client.get_role_assignment(&scope, &n).await.is_ok(), "GET sees it at once");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listed = client.list_role_assignments_at_scope(&scope).await.expect("list");
    assert!(listed.iter().any(|a| a.name == n));

    // Deleting the identity leaves its assignment behind, pointing at a missing principal.
    assert!(f.arm.emulator.state().delete_resource(&id));
    let listed = client.list_role_assignments_for_principal(&scope, &principal).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(client.get_user_assigned_identity(&id).await.is_err());
}

#[tokio::test]
async fn workload_identity_authenticates_with_a_federated_token_file() {
    let f = fixture().await;
    let principal = f.estate.operator_principal_id.clone();
    f.arm.emulator.register_app_with_federation(
        "7e1d2c3b-4a59-4687-8b9c-0d1e2f3a4b5c",
        "system:serviceaccount:dbx:operator",
        &principal,
    );
    let token_file = f._dir.path().join("token");
    std::fs::write(&token_file, service_account_token("system:serviceaccount:dbx:operator", Duration::from_secs(600)))
        .expect("write");
    let credential = workload_identity(
        &f.settings,
        Some((TENANT_ID.into(), "7e1d2c3b-4a59-4687-8b9c-0d1e2f3a4b5c".into(), token_file.clone())),
    )
    .expect("credential");
    let client =
        ArmClient::new(f.arm.url(), credential, client_options(Some(&f.arm.ca_file), fast_retry(0)).expect("options"))
            .expect("client");
    client.get_workspace(&ResourceId::parse(&f.estate.workspaces[0].id).expect("id")).await.expect("authenticated");

    // A token for another service account is refused by Entra: no token, no ARM call.
    std::fs::write(&token_file, service_account_token("system:serviceaccount:other:sa", Duration::from_secs(600)))
        .expect("write");
    let credential = workload_identity(
        &f.settings,
        Some((TENANT_ID.into(), "7e1d2c3b-4a59-4687-8b9c-0d1e2f3a4b5c".into(), token_file)),
    )
    .expect("credential");
    let client =
        ArmClient::new(f.arm.url(), credential, client_options(Some(&f.arm.ca_file), fast_retry(0)).expect("options"))
            .expect("client");
    let err =
        client.get_workspace(&ResourceId::parse(&f.estate.workspaces[0].id).expect("id")).await.expect_err("refused");
    assert!(matches!(err, ArmError::Unauthenticated { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_unauthenticated_and_arm_refuses_missing_tokens() {
    let f = fixture().await;
    let credential = client_secret(&f.settings, TENANT_ID, OPERATOR_CLIENT_ID, "wrong").expect("credential");
    let client =
        ArmClient::new(f.arm.url(), credential, client_options(Some(&f.arm.ca_file), fast_retry(0)).expect("options"))
            .expect("client");
    let err = client.get_workspace(&ResourceId::parse(&f.estate.workspaces[0].id).expect("id")).await.expect_err("401");
    assert!(matches!(err, ArmError::Unauthenticated { .. }), "{err:?}");
    assert!(err.to_string().contains("AADSTS7000215"), "{err}");
    assert!(!err.to_string().contains("wrong"), "the secret leaked into the error: {err}");

    // Without a bearer token ARM answers 401 with a WWW-Authenticate challenge.
    let pem = std::fs::read(&f.arm.ca_file).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let response = http
        .get(format!("{}{}?api-version=2026-01-01", f.arm.url(), f.estate.workspaces[0].id))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 401);
    assert!(
        response.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer "))
    );
    let response = http
        .get(format!("{}{}?api-version=2026-01-01", f.arm.url(), f.estate.workspaces[0].id))
        .bearer_auth("not.a-real.token")
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn the_client_refuses_plain_http_endpoints() {
    let f = fixture().await;
    let credential: Arc<dyn azure_core::credentials::TokenCredential> =
        client_secret(&f.settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");
    let err = ArmClient::new("http://127.0.0.1:1", credential, client_options(None, fast_retry(0)).expect("options"))
        .expect_err("http");
    assert!(err.to_string().contains("must use https"), "{err}");
}

async fn send_json(request: reqwest::RequestBuilder, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response =
        request.header("content-type", "application/json").body(body.to_string()).send().await.expect("send");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn admin_http(f: &Fixture) -> reqwest::Client {
    let pem = std::fs::read(&f.arm.ca_file).expect("ca");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client")
}

#[tokio::test]
async fn the_admin_api_changes_the_estate_and_injects_faults_at_runtime() {
    let f = fixture().await;
    let http = admin_http(&f);
    let client = f.client();
    let base = f.arm.url().to_owned();

    // Create a resource group, a plain resource and an identity; assign out of band; tamper.
    let rg = ResourceId::resource_group(SUBSCRIPTION_ID, "rg-new");
    let vault = rg.with_provider_resource("Microsoft.KeyVault", "vaults", "kv-new");
    for id in [&rg, &vault] {
        let (status, _) =
            send_json(http.post(format!("{base}/_emulator/resources")), serde_json::json!({"id": id.to_string()}))
                .await;
        assert_eq!(status, 201);
    }
    let uai = rg.with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", "id-new");
    let (_, created) = send_json(
        http.post(format!("{base}/_emulator/identities")),
        serde_json::json!({"id": uai.to_string(), "replicated": true}),
    )
    .await;
    let principal = created["principalId"].as_str().expect("principal").to_owned();
    assert_eq!(client.get_user_assigned_identity(&uai).await.expect("identity").properties.principal_id, principal);
    let (_, assigned) = send_json(
        http.post(format!("{base}/_emulator/role-assignments")),
        serde_json::json!({"scope": vault.to_string(), "roleDefinitionId": role_id(READER), "principalId": principal}),
    )
    .await;
    let out_of_band = assigned["name"].as_str().expect("name").to_owned();
    assert_eq!(client.get_role_assignment(&vault, &out_of_band).await.expect("get").properties.principal_id, principal);
    let r = http.delete(format!("{base}/_emulator/role-assignments/{out_of_band}")).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(client.get_role_assignment(&vault, &out_of_band).await.is_err());
    let r = http.delete(format!("{base}/_emulator/resources?id={uai}")).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(matches!(client.get_user_assigned_identity(&uai).await, Err(ArmError::NotFound { .. })));

    // PIM's knobs and the clock: a schedule ends when the clock passes its end.
    let (status, _) = send_json(
        http.put(format!("{base}/_emulator/pim")),
        serde_json::json!({"refusedPrincipalTypes": ["Group"], "maxDuration": 7200}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(f.arm.emulator.state().pim.max_duration, Some(Duration::from_secs(7200)));
    let end = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1);
    client
        .put_schedule_request(
            &vault,
            "33333333-4444-4555-8666-777777777777",
            dbx_identity_operator::azure::models::ScheduleRequestProperties::ending_at(
                "AdminAssign",
                &principal,
                &role_id(READER),
                &end.to_string(),
            ),
        )
        .await
        .expect("AdminAssign");
    assert_eq!(client.list_role_assignment_schedules(&vault, &principal).await.expect("list").len(), 1);
    let (status, now) =
        send_json(http.post(format!("{base}/_emulator/clock")), serde_json::json!({"advanceSeconds": 3601})).await;
    assert_eq!(status, 200, "{now}");
    assert!(client.list_role_assignment_schedules(&vault, &principal).await.expect("list").is_empty(), "ended");
    assert!(
        client
            .list_role_assignments(&vault)
            .await
            .expect("list")
            .iter()
            .all(|a| a.properties.principal_id != principal)
    );

    // Latency, set through the API, slows every ARM call.
    let (status, _) =
        send_json(http.put(format!("{base}/_emulator/faults")), serde_json::json!({"latencyMs": 300})).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    client
        .get_user_assigned_identity(&rg.with_provider_resource(
            "Microsoft.ManagedIdentity",
            "userAssignedIdentities",
            "x",
        ))
        .await
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (status, _) =
        send_json(http.put(format!("{base}/_emulator/faults")), serde_json::json!({"latencyMs": "slow"})).await;
    assert_eq!(status, 400, "bad fault config is refused");

    let stats: serde_json::Value = serde_json::from_slice(
        &http.get(format!("{base}/_emulator/stats")).send().await.expect("send").bytes().await.expect("body"),
    )
    .expect("json");
    let rows = stats["requests"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["operation"] == "GetUserAssignedIdentity"
            && r["status"] == 404
            && r["count"].as_u64() >= Some(1))
    );
}

#[tokio::test]
async fn a_token_endpoint_outage_fails_calls_until_it_ends() {
    let f = fixture().await;
    f.arm.emulator.set_faults(FaultConfig { token_outage: true, ..FaultConfig::default() });
    let client = f.client_with(fast_retry(1));
    let ws = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    let err = client.get_workspace(&ws).await.expect_err("no token");
    assert!(matches!(err, ArmError::Unauthenticated { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(f.arm.emulator.count("GetWorkspace"), 0, "no ARM call without a token");
    f.arm.emulator.set_faults(FaultConfig::default());
    client.get_workspace(&ws).await.expect("tokens again");
}

#[tokio::test]
async fn hostile_responses_are_errors_never_panics_or_hangs() {
    let _scenario = crate::common::scenario(
        "Bad input",
        "hostile ARM responses: truncated, wrong types, missing fields, 200 with error, endless pages",
    );
    use dbx_identity_operator::sandbox::arm::HostileResponse;
    let f = fixture_with(StateConfig::default(), ThrottleConfig { enabled: false, ..ThrottleConfig::default() }).await;
    let client = f.no_retry_client();
    let workspace = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    for mode in [
        HostileResponse::TruncatedJson,
        HostileResponse::WrongTypes,
        HostileResponse::MissingFields,
        HostileResponse::ErrorBodyWith200,
        HostileResponse::EndlessPagination,
    ] {
        f.arm.emulator.set_faults(FaultConfig { hostile: Some(mode), ..FaultConfig::default() });
        let bounded = Duration::from_secs(60);
        let list = tokio::time::timeout(bounded, client.list_role_assignments_at_scope(&f.lake()))
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the list did not finish within {bounded:?}"));
        let expected_code =
            if mode == HostileResponse::EndlessPagination { "EndlessPagination" } else { "InvalidResponse" };
        match list {
            Err(e) => assert_eq!(e.code(), expected_code, "{mode:?}: {e}"),
            Ok(items) => panic!("{mode:?}: a mangled list was accepted ({} items)", items.len()),
        }
        if mode == HostileResponse::EndlessPagination {
            continue;
        }
        let get = tokio::time::timeout(bounded, client.get_workspace(&workspace)).await.expect("no hang");
        // Missing properties on a GET read as defaults (Azure omits empty ones); the rest fail.
        if mode != HostileResponse::MissingFields {
            let e = get.expect_err(&format!("{mode:?}: a mangled workspace was accepted"));
            assert_eq!(e.code(), "InvalidResponse", "{mode:?}: {e}");
            assert!(!e.to_string().is_empty());
        }
        // A fresh principal each time: the server did create the earlier ones.
        let principal = uuid::Uuid::new_v4().to_string();
        f.arm.emulator.state().add_principal(&principal, Duration::from_secs(86_400));
        let put =
            tokio::time::timeout(bounded, client.put_role_assignment(&f.lake(), &name(), props(READER, &principal)))
                .await
                .expect("no hang");
        let e = put.expect_err(&format!("{mode:?}: a mangled PUT response was accepted"));
        assert_eq!(e.code(), "InvalidResponse", "{mode:?}: {e}");
    }
    // The endless list stopped at the page cap rather than running on.
    assert!(f.arm.emulator.count("ListRoleAssignments") <= 1000 + 10);
}

#[tokio::test]
async fn hostile_throttling_headers_are_ignored_or_capped_never_a_panic() {
    let _scenario = crate::common::scenario(
        "Bad input",
        "hostile throttling headers: -inf/NaN/1e300 remaining, a 2^64 s Retry-After",
    );
    use dbx_identity_operator::sandbox::arm::HostileResponse;
    let f = fixture_with(StateConfig::default(), ThrottleConfig { enabled: false, ..ThrottleConfig::default() }).await;
    f.arm
        .emulator
        .set_faults(FaultConfig { hostile: Some(HostileResponse::RateLimitHeaders), ..FaultConfig::default() });
    // The production pacer in the pipeline, without retries: every other answer is a 429.
    let client = {
        let credential = client_secret(&f.settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");
        let mut options = client_options(Some(&f.arm.ca_file), RetryOptions::none()).expect("options");
        options.per_try_policies.push(std::sync::Arc::new(dbx_identity_operator::azure::pacing::PacingPolicy::new()));
        ArmClient::new(f.arm.url(), credential, options).expect("client")
    };
    let workspace = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        // A 429 holds the bucket for at most MAX_RETRY_AFTER (5 min) — never 2^64 s, never a
        // panic; each call here either answers or is refused at once.
        let (client, workspace) = (client.clone(), workspace.clone());
        let call = async move {
            let limit = dbx_identity_operator::azure::pacing::MAX_RETRY_AFTER + Duration::from_secs(30);
            tokio::time::timeout(limit, client.get_workspace(&workspace)).await
        };
        match tokio::spawn(call).await {
            Ok(Ok(result)) => outcomes.push(result.map(|_| ()).map_err(|e| e.code().to_owned())),
            Ok(Err(_)) => panic!("a call hung on a hostile Retry-After"),
            Err(join) => panic!("the client panicked on hostile throttling headers: {join}"),
        }
        if outcomes.last().is_some_and(Result::is_err) {
            break;
        }
    }
    assert!(outcomes.iter().any(Result::is_ok), "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o.as_ref().is_err_and(|c| c.contains("Throttl") || c.contains("TooMany"))),
        "{outcomes:?}"
    );
}

/// Azure's own tools send other api-versions than the operator pins: the emulator serves each
/// stable version Azure serves for the type, shaped for that version, and refuses the rest as
/// ARM does, naming the versions it serves. (`.ci/sdk_workflow.py` drives the official Python
/// SDKs through the same paths.)
#[tokio::test]
async fn serves_the_api_versions_azure_tools_send() {
    let f = fixture().await;
    let pem = std::fs::read(&f.arm.ca_file).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", OPERATOR_CLIENT_ID.to_owned()),
        ("client_secret", SECRET.to_owned()),
        ("scope", format!("{}/.default", f.arm.url())),
    ])
    .expect("form");
    let response = http
        .post(format!("{}/{TENANT_ID}/oauth2/v2.0/token", f.arm.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await;
    let token: serde_json::Value = response.expect("token response").json().await.expect("json");
    let token = token["access_token"].as_str().expect("a token").to_owned();
    let get = |path: String, version: &str| {
        let request = http.get(format!("{}{path}?api-version={version}", f.arm.url())).bearer_auth(&token);
        async move {
            let response = request.send().await.expect("response");
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let ws = &f.estate.workspaces[0];
    let identity = format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/dbmanagedidentity",
        ws.managed_resource_group_id
    );
    // azure-mgmt-msi 7.1 and `az identity`.
    for version in ["2024-11-30", "2023-01-31", "2026-05-31"] {
        let (status, body) = get(identity.clone(), version).await;
        assert_eq!(status, 200, "{version}: {body}");
        assert_eq!(body["properties"]["principalId"], ws.managed_identity_principal_id, "{version}");
    }
    // A workspace read at a version before the default Access Connector link has no such field.
    let (status, current) = get(ws.id.clone(), "2026-01-01").await;
    assert_eq!(status, 200);
    assert!(current["properties"]["accessConnector"]["id"].is_string(), "{current}");
    let (status, old) = get(ws.id.clone(), "2023-02-01").await;
    assert_eq!(status, 200);
    assert!(old["properties"].get("accessConnector").is_none(), "{old}");
    assert_eq!(old["properties"]["managedResourceGroupId"], current["properties"]["managedResourceGroupId"]);
    // Anything else: ARM's refusal, listing what it serves.
    let (status, refused) = get(identity, "2021-09-30-preview").await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["code"], "InvalidApiVersionParameter");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("'2021-09-30-preview'") && message.contains("2024-11-30"), "{message}");
}

/// Grants sharing an identity and a role, reconciled at once (a restart runs 16 at a time),
/// cost one lookup each, not one per grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_identity_or_role_read_azure_once() {
    use dbx_identity_operator::api::validation::ValidatedIdentity;
    use dbx_identity_operator::azure::RoleRef;
    use dbx_identity_operator::controller::resolve::Resolver;
    let f = fixture().await;
    let arm = f.client();
    let resolver = Resolver::new(Duration::from_secs(600));
    let workspace = ResourceId::parse(&f.estate.workspaces[0].id).expect("id");
    let identity = ValidatedIdentity::WorkspaceManagedIdentity { workspace };
    let scope = ResourceId::parse(&f.estate.scopes.storage_account).expect("scope");
    let reader = RoleRef::parse("Reader").expect("role");
    f.arm.emulator.reset_stats();
    let lookups = (0..16).map(|_| async {
        let principal = resolver.principal(&arm, &identity).await.expect("principal");
        let role = resolver.role(&arm, &reader, &scope).await.expect("role");
        (principal.principal_id, role.role_name.clone())
    });
    let results = futures::future::join_all(lookups).await;
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!(f.arm.emulator.count("GetWorkspace"), 1);
    assert_eq!(f.arm.emulator.count("GetUserAssignedIdentity"), 1);
    assert_eq!(f.arm.emulator.count("ListRoleDefinitions"), 1);
}

//! HTTP for the ARM emulator: token endpoints, ARM routes, and the `/_emulator/` admin API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use rand::Rng;
use serde_json::{Value, json};

use super::api_versions::Versioned;
use super::state::{ArmFailure, AssignmentFilter};
use super::throttle::{Draw, ProviderThrottled, RequestClass, ThrottleConfig};
use super::{Emulator, FaultConfig, HostileResponse, lock};
use crate::azure::resource_id::ResourceId;

type Shared = Arc<Emulator>;

pub fn router(emulator: Shared) -> Router {
    Router::new()
        .route("/msi/token", get(managed_identity_token))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/_emulator/stats", get(admin_stats))
        .route("/_emulator/faults", put(admin_faults))
        .route("/_emulator/throttling", put(admin_throttling))
        .route("/_emulator/identities", post(admin_create_identity))
        .route("/_emulator/resources", post(admin_create_resource).delete(admin_delete_resource))
        .route("/_emulator/role-assignments", post(admin_create_assignment))
        .route("/_emulator/role-assignments/{name}", delete(admin_delete_assignment))
        .route("/_emulator/expire-tokens", post(admin_expire_tokens))
        .route("/_emulator/clock", post(admin_clock))
        .route("/_emulator/pim", put(admin_pim))
        .fallback(arm)
        .with_state(emulator)
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body.to_string()).into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

fn failure(f: &ArmFailure) -> Response {
    json_response(f.status, &f.body())
}

// ----- token endpoints -----

fn token_outage(emulator: &Emulator) -> Option<Response> {
    lock(&emulator.faults).token_outage.then(|| {
        json_response(503, &json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again.", "error_codes": [90033]}))
    })
}

async fn managed_identity_token(
    State(emulator): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(outage) = token_outage(&emulator) {
        emulator.record("Token", 503);
        return outage;
    }
    let configured = lock(&emulator.managed_identity).clone();
    let sent = headers.get("x-identity-header").and_then(|v| v.to_str().ok());
    let Some((secret, principal)) = configured.filter(|(secret, _)| Some(secret.as_str()) == sent) else {
        emulator.record("Token", 401);
        return json_response(
            401,
            &json!({"statusCode": 401, "message": "Unauthorized: missing or wrong X-IDENTITY-HEADER"}),
        );
    };
    let _ = secret;
    let Some(resource) = query.get("resource") else {
        emulator.record("Token", 400);
        return json_response(400, &json!({"statusCode": 400, "message": "resource is required"}));
    };
    // A user-assigned identity chosen by client_id / object_id / msi_res_id is not modelled:
    // the endpoint serves its one (system-assigned) identity, like a pod with one identity.
    if query.contains_key("client_id") || query.contains_key("object_id") || query.contains_key("msi_res_id") {
        emulator.record("Token", 400);
        return json_response(
            400,
            &json!({"statusCode": 400, "message": "The requested identity has not been assigned to this resource."}),
        );
    }
    let tenant = emulator.state().tenant_id.clone();
    let (token, lifetime) = lock(&emulator.tokens).issue(&tenant, &principal, resource);
    let expires_on = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + lifetime)
        .unwrap_or_default();
    emulator.record("Token", 200);
    json_response(
        200,
        &json!({"access_token": token, "expires_on": expires_on.to_string(), "resource": resource, "token_type": "Bearer"}),
    )
}

async fn entra_token(State(emulator): State<Shared>, Path(tenant): Path<String>, body: Bytes) -> Response {
    if let Some(outage) = token_outage(&emulator) {
        emulator.record("Token", 503);
        return outage;
    }
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let entra_error = |status: u16, error: &str, description: String, code: i32| {
        json_response(
            status,
            &json!({"error": error, "error_description": description, "error_codes": [code], "timestamp": "", "trace_id": uuid::Uuid::new_v4().to_string(), "correlation_id": uuid::Uuid::new_v4().to_string()}),
        )
    };
    let our_tenant = emulator.state().tenant_id.clone();
    if !tenant.eq_ignore_ascii_case(&our_tenant) {
        emulator.record("Token", 400);
        return entra_error(400, "invalid_request", format!("AADSTS90002: Tenant '{tenant}' not found."), 90002);
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        emulator.record("Token", 400);
        return entra_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.".into(),
            70003,
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let scope = form.get("scope").cloned().unwrap_or_default();
    let audience = scope.trim_end_matches("/.default").to_owned();
    let result = lock(&emulator.tokens).authenticate_client(
        &client_id,
        form.get("client_secret").map(String::as_str),
        form.get("client_assertion").map(String::as_str),
    );
    match result {
        Ok(principal) => {
            let (token, lifetime) = lock(&emulator.tokens).issue(&our_tenant, &principal, &audience);
            emulator.record("Token", 200);
            json_response(
                200,
                &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
            )
        }
        Err((status, error, description, code)) => {
            emulator.record("Token", status);
            entra_error(status, error, description, code)
        }
    }
}

// ----- ARM -----

/// What an ARM request asks for.
enum ArmOperation {
    GetWorkspace(ResourceId),
    GetAccessConnector(ResourceId),
    GetUserAssignedIdentity(ResourceId),
    GetRoleDefinition(ResourceId, String),
    ListRoleDefinitions(ResourceId),
    ListRoleAssignments(ResourceId),
    GetRoleAssignment(ResourceId, String),
    PutRoleAssignment(ResourceId, String),
    DeleteRoleAssignment(ResourceId, String),
    /// `GET /subscriptions`.
    ListSubscriptions,
    /// `GET {subscription or resource group}/providers/{type}`: workspaces, Access Connectors
    /// or user-assigned identities.
    ListResources(ResourceId, ListedType),
    /// PIM (see `pim.rs`).
    PutScheduleRequest(ResourceId, String),
    GetScheduleRequest(ResourceId, String),
    ListSchedules(ResourceId),
    ListScheduleInstances(ResourceId),
}

/// A resource type listed by subscription or resource group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListedType {
    Workspaces,
    AccessConnectors,
    UserAssignedIdentities,
}

impl ListedType {
    const ALL: [(ListedType, &'static str); 3] = [
        (ListedType::Workspaces, "/providers/microsoft.databricks/workspaces"),
        (ListedType::AccessConnectors, "/providers/microsoft.databricks/accessconnectors"),
        (ListedType::UserAssignedIdentities, "/providers/microsoft.managedidentity/userassignedidentities"),
    ];

    fn resource_type(self) -> &'static str {
        match self {
            ListedType::Workspaces => "Microsoft.Databricks/workspaces",
            ListedType::AccessConnectors => "Microsoft.Databricks/accessConnectors",
            ListedType::UserAssignedIdentities => "Microsoft.ManagedIdentity/userAssignedIdentities",
        }
    }
}

impl ArmOperation {
    fn name(&self) -> &'static str {
        match self {
            ArmOperation::GetWorkspace(_) => "GetWorkspace",
            ArmOperation::GetAccessConnector(_) => "GetAccessConnector",
            ArmOperation::GetUserAssignedIdentity(_) => "GetUserAssignedIdentity",
            ArmOperation::GetRoleDefinition(..) => "GetRoleDefinition",
            ArmOperation::ListRoleDefinitions(_) => "ListRoleDefinitions",
            ArmOperation::ListRoleAssignments(_) => "ListRoleAssignments",
            ArmOperation::GetRoleAssignment(..) => "GetRoleAssignment",
            ArmOperation::PutRoleAssignment(..) => "PutRoleAssignment",
            ArmOperation::DeleteRoleAssignment(..) => "DeleteRoleAssignment",
            ArmOperation::ListSubscriptions => "ListSubscriptions",
            ArmOperation::ListResources(_, ListedType::Workspaces) => "ListWorkspaces",
            ArmOperation::ListResources(_, ListedType::AccessConnectors) => "ListAccessConnectors",
            ArmOperation::ListResources(_, ListedType::UserAssignedIdentities) => "ListUserAssignedIdentities",
            ArmOperation::PutScheduleRequest(..) => "PutRoleAssignmentScheduleRequest",
            ArmOperation::GetScheduleRequest(..) => "GetRoleAssignmentScheduleRequest",
            ArmOperation::ListSchedules(_) => "ListRoleAssignmentSchedules",
            ArmOperation::ListScheduleInstances(_) => "ListRoleAssignmentScheduleInstances",
        }
    }

    /// The resource provider that serves the request (behind ARM), for its own limits.
    fn provider(&self) -> Option<&'static str> {
        match self {
            ArmOperation::ListSubscriptions => None,
            ArmOperation::GetWorkspace(_)
            | ArmOperation::GetAccessConnector(_)
            | ArmOperation::ListResources(_, ListedType::Workspaces | ListedType::AccessConnectors) => {
                Some("Microsoft.Databricks")
            }
            ArmOperation::GetUserAssignedIdentity(_)
            | ArmOperation::ListResources(_, ListedType::UserAssignedIdentities) => Some("Microsoft.ManagedIdentity"),
            _ => Some("Microsoft.Authorization"),
        }
    }

    /// The subscription whose throttling buckets the request draws from (`None`: tenant-level).
    fn subscription(&self) -> Option<&str> {
        let scope = match self {
            ArmOperation::ListSubscriptions => return None,
            ArmOperation::ListResources(s, _) => s,
            ArmOperation::GetWorkspace(s)
            | ArmOperation::GetAccessConnector(s)
            | ArmOperation::GetUserAssignedIdentity(s)
            | ArmOperation::GetRoleDefinition(s, _)
            | ArmOperation::ListRoleDefinitions(s)
            | ArmOperation::ListRoleAssignments(s)
            | ArmOperation::GetRoleAssignment(s, _)
            | ArmOperation::PutRoleAssignment(s, _)
            | ArmOperation::DeleteRoleAssignment(s, _)
            | ArmOperation::PutScheduleRequest(s, _)
            | ArmOperation::GetScheduleRequest(s, _)
            | ArmOperation::ListSchedules(s)
            | ArmOperation::ListScheduleInstances(s) => s,
        };
        scope.subscription_id()
    }

    fn versioned(&self) -> Versioned {
        match self {
            ArmOperation::GetWorkspace(_) => Versioned::Workspace,
            ArmOperation::GetAccessConnector(_) => Versioned::AccessConnector,
            ArmOperation::GetUserAssignedIdentity(_) => Versioned::UserAssignedIdentity,
            ArmOperation::GetRoleDefinition(..) | ArmOperation::ListRoleDefinitions(_) => Versioned::RoleDefinition,
            ArmOperation::ListSubscriptions => Versioned::Subscription,
            ArmOperation::ListResources(_, ListedType::Workspaces) => Versioned::Workspace,
            ArmOperation::ListResources(_, ListedType::AccessConnectors) => Versioned::AccessConnector,
            ArmOperation::ListResources(_, ListedType::UserAssignedIdentities) => Versioned::UserAssignedIdentity,
            ArmOperation::PutScheduleRequest(..)
            | ArmOperation::GetScheduleRequest(..)
            | ArmOperation::ListSchedules(_)
            | ArmOperation::ListScheduleInstances(_) => Versioned::Pim,
            _ => Versioned::RoleAssignment,
        }
    }

    fn class(&self) -> RequestClass {
        match self {
            ArmOperation::PutRoleAssignment(..) | ArmOperation::PutScheduleRequest(..) => RequestClass::Write,
            ArmOperation::DeleteRoleAssignment(..) => RequestClass::Delete,
            _ => RequestClass::Read,
        }
    }
}

const ASSIGNMENTS: &str = "/providers/microsoft.authorization/roleassignments";
const DEFINITIONS: &str = "/providers/microsoft.authorization/roledefinitions";
const SCHEDULE_REQUESTS: &str = "/providers/microsoft.authorization/roleassignmentschedulerequests";
const SCHEDULES: &str = "/providers/microsoft.authorization/roleassignmentschedules";
const INSTANCES: &str = "/providers/microsoft.authorization/roleassignmentscheduleinstances";

fn parse_operation(method: &Method, path: &str) -> Result<ArmOperation, ArmFailure> {
    let invalid =
        |e: String| ArmFailure::new(400, "InvalidResourceId", format!("The resource id '{path}' is invalid: {e}"));
    let lower = path.to_ascii_lowercase();
    let scope_of = |cut: usize| ResourceId::parse(&path[..cut]).map_err(|e| invalid(e.to_string()));
    if *method == Method::GET && lower.trim_end_matches('/') == "/subscriptions" {
        return Ok(ArmOperation::ListSubscriptions);
    }
    for (listed, suffix) in ListedType::ALL {
        if *method == Method::GET && lower.ends_with(suffix) {
            let within = scope_of(path.len() - suffix.len())?;
            if !within.sections().is_empty() || within.subscription_id().is_none() {
                return Err(invalid("lists by type are served per subscription or resource group".into()));
            }
            return Ok(ArmOperation::ListResources(within, listed));
        }
    }
    for (suffix, instances) in [(SCHEDULES, false), (INSTANCES, true)] {
        if lower.ends_with(suffix) && *method == Method::GET {
            let scope = scope_of(path.len() - suffix.len())?;
            return Ok(if instances {
                ArmOperation::ListScheduleInstances(scope)
            } else {
                ArmOperation::ListSchedules(scope)
            });
        }
    }
    if let Some(at) = lower.rfind(&format!("{SCHEDULE_REQUESTS}/")) {
        let name = &path[at + SCHEDULE_REQUESTS.len() + 1..];
        if !name.contains('/') && !name.is_empty() {
            let scope = scope_of(at)?;
            return match method.clone() {
                Method::PUT => Ok(ArmOperation::PutScheduleRequest(scope, name.to_owned())),
                Method::GET => Ok(ArmOperation::GetScheduleRequest(scope, name.to_owned())),
                _ => Err(ArmFailure::new(405, "MethodNotAllowed", format!("{method} is not supported on '{path}'."))),
            };
        }
    }
    for (suffix, is_assignment) in [(ASSIGNMENTS, true), (DEFINITIONS, false)] {
        if lower.ends_with(suffix) && *method == Method::GET {
            let scope = scope_of(path.len() - suffix.len())?;
            return Ok(if is_assignment {
                ArmOperation::ListRoleAssignments(scope)
            } else {
                ArmOperation::ListRoleDefinitions(scope)
            });
        }
        if let Some(at) = lower.rfind(&format!("{suffix}/")) {
            let name = &path[at + suffix.len() + 1..];
            if name.contains('/') || name.is_empty() {
                continue;
            }
            let scope = scope_of(at)?;
            return match (is_assignment, method.clone()) {
                (true, Method::GET) => Ok(ArmOperation::GetRoleAssignment(scope, name.to_owned())),
                (true, Method::PUT) => Ok(ArmOperation::PutRoleAssignment(scope, name.to_owned())),
                (true, Method::DELETE) => Ok(ArmOperation::DeleteRoleAssignment(scope, name.to_owned())),
                (false, Method::GET) => Ok(ArmOperation::GetRoleDefinition(scope, name.to_owned())),
                _ => Err(ArmFailure::new(405, "MethodNotAllowed", format!("{method} is not supported on '{path}'."))),
            };
        }
    }
    let id = ResourceId::parse(path).map_err(|e| invalid(e.to_string()))?;
    if *method != Method::GET {
        return Err(ArmFailure::new(405, "MethodNotAllowed", format!("The emulator serves only GET on '{path}'.")));
    }
    if id.is_type("Microsoft.Databricks/workspaces") {
        Ok(ArmOperation::GetWorkspace(id))
    } else if id.is_type("Microsoft.Databricks/accessConnectors") {
        Ok(ArmOperation::GetAccessConnector(id))
    } else if id.is_type("Microsoft.ManagedIdentity/userAssignedIdentities") {
        Ok(ArmOperation::GetUserAssignedIdentity(id))
    } else {
        Err(ArmFailure::new(
            404,
            "NoRegisteredProviderFound",
            format!("The emulator does not serve resources of type '{}'.", id.resource_type()),
        ))
    }
}

fn unauthorized(emulator: &Emulator, code: &str, message: &str) -> Response {
    let tenant = emulator.state().tenant_id.clone();
    let mut response = json_response(401, &json!({"error": {"code": code, "message": message}}));
    let challenge = format!(
        "Bearer authorization_uri=\"{}/{tenant}\", error=\"invalid_token\", error_description=\"{message}\"",
        emulator.base_url
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

/// A response whose body fails after the headers: the client sees the connection cut.
fn connection_reset() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn arm(State(emulator): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let faults = emulator.faults();
    let (fail, reset, jitter) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(faults.error_rate.clamp(0.0, 1.0)),
            rng.random_bool(faults.reset_rate.clamp(0.0, 1.0)),
            if faults.jitter_ms > 0 { rng.random_range(0..=faults.jitter_ms) } else { 0 },
        )
    };
    if faults.latency_ms + jitter > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms + jitter)).await;
    }

    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let claims = match lock(&emulator.tokens).verify(authorization, &emulator.base_url) {
        Ok(claims) => claims,
        Err(e) => {
            emulator.record("Unauthenticated", 401);
            return unauthorized(&emulator, e.code, &e.message);
        }
    };

    let path = uri.path();
    let query: HashMap<String, String> =
        uri.query().map(|q| serde_urlencoded::from_str(q).unwrap_or_default()).unwrap_or_default();
    let operation = match parse_operation(&method, path) {
        Ok(op) => op,
        Err(f) => {
            emulator.record("Invalid", f.status);
            return failure(&f);
        }
    };
    let op_name = operation.name();
    let respond = |status: u16, response: Response| {
        emulator.record(op_name, status);
        response
    };
    let versioned = operation.versioned();
    let version = match query.get("api-version") {
        None => {
            return respond(
                400,
                failure(&ArmFailure::new(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )),
            );
        }
        Some(v) if !versioned.accepts(v) => {
            return respond(
                400,
                failure(&ArmFailure::new(400, "InvalidApiVersionParameter", versioned.unsupported_message(v))),
            );
        }
        Some(v) => v.to_ascii_lowercase(),
    };

    let class = operation.class();
    let bucket_key = operation.subscription().unwrap_or("tenant").to_owned();
    let remaining = match lock(&emulator.throttle).draw(&bucket_key, class) {
        Draw::Allowed { remaining } => remaining,
        Draw::Throttled { retry_after } => {
            let mut response = failure(&ArmFailure::new(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type. For more information, see https://aka.ms/armthrottling",
            ));
            response.headers_mut().insert("retry-after", HeaderValue::from(retry_after.as_secs()));
            response.headers_mut().insert(class.header(), HeaderValue::from(0u64));
            return respond(429, response);
        }
    };
    // ARM routed it: the resource provider's own limit, if it has one (no remaining count warns
    // of it; the 429 names the limit and the window).
    let provider_refusal = operation
        .provider()
        .and_then(|provider| lock(&emulator.throttle).draw_provider(provider, &bucket_key, &claims.oid).err());
    if let Some(refused) = provider_refusal {
        let mut response = failure(&ArmFailure::new(429, ProviderThrottled::CODE, refused.message()));
        response.headers_mut().insert("retry-after", HeaderValue::from(refused.retry_after.as_secs()));
        response.headers_mut().insert(class.header(), HeaderValue::from(remaining));
        return respond(429, response);
    }
    if fail {
        return respond(
            500,
            failure(&ArmFailure::new(
                500,
                "InternalServerError",
                "Encountered internal server error. Please try again.",
            )),
        );
    }
    if reset {
        emulator.record(op_name, 0);
        return connection_reset();
    }

    let caller = claims.oid;
    let link_origin = faults.next_link_origin.clone().unwrap_or_else(|| emulator.base_url.clone());
    let result = {
        let mut state = emulator.state();
        // PIM schedules end on the emulator's clock, whoever asks next.
        state.end_schedules();
        match &operation {
            ArmOperation::GetWorkspace(id) => state
                .authorize(&caller, id, "Microsoft.Databricks/workspaces/read")
                .and_then(|()| state.workspace(id))
                .map(|b| (200, b)),
            ArmOperation::GetAccessConnector(id) => state
                .authorize(&caller, id, "Microsoft.Databricks/accessConnectors/read")
                .and_then(|()| state.access_connector(id))
                .map(|b| (200, b)),
            ArmOperation::GetUserAssignedIdentity(id) => state
                .authorize(&caller, id, "Microsoft.ManagedIdentity/userAssignedIdentities/read")
                .and_then(|()| state.user_assigned_identity(id))
                .map(|b| (200, b)),
            ArmOperation::GetRoleDefinition(scope, guid) => state.role_definition(scope, guid).map(|b| (200, b)),
            ArmOperation::ListSubscriptions => {
                let items = state.subscriptions_readable_by(&caller);
                Ok((200, page(&link_origin, path, &query, items, state.config.page_size)))
            }
            ArmOperation::ListResources(within, listed) => state
                .authorize(&caller, within, &format!("{}/read", listed.resource_type()))
                .and_then(|()| state.list_resources(within, listed.resource_type()))
                .map(|items| (200, page(&link_origin, path, &query, items, state.config.page_size))),
            ArmOperation::ListRoleDefinitions(scope) => {
                let name = query.get("$filter").and_then(|f| parse_role_name_filter(f));
                state
                    .role_definitions(scope, name.as_deref())
                    .map(|items| (200, page(&link_origin, path, &query, items, state.config.page_size)))
            }
            ArmOperation::ListRoleAssignments(scope) => {
                match parse_assignment_filter(query.get("$filter").map(String::as_str)) {
                    Ok(filter) => state
                        .authorize(&caller, scope, "Microsoft.Authorization/roleAssignments/read")
                        .and_then(|()| state.list_assignments(scope, &filter))
                        .map(|items| (200, page(&link_origin, path, &query, items, state.config.page_size))),
                    Err(f) => Err(f),
                }
            }
            ArmOperation::GetRoleAssignment(scope, name) => state.get_assignment(scope, name).map(|b| (200, b)),
            ArmOperation::PutRoleAssignment(scope, name) => match serde_json::from_slice::<Value>(&body) {
                Ok(value) => {
                    emulator.record_put_body(value.clone());
                    state.put_assignment(&caller, scope, name, &value)
                }
                Err(e) => Err(ArmFailure::new(
                    400,
                    "InvalidRequestContent",
                    format!("The request content was invalid and could not be deserialized: {e}"),
                )),
            },
            ArmOperation::DeleteRoleAssignment(scope, name) => {
                state.delete_assignment(&caller, scope, name).map(|found| match found {
                    Some(body) => (200, body),
                    None => (204, Value::Null),
                })
            }
            ArmOperation::PutScheduleRequest(scope, name) => match serde_json::from_slice::<Value>(&body) {
                Ok(value) => state.put_schedule_request(&caller, scope, name, &value),
                Err(e) => Err(ArmFailure::new(
                    400,
                    "InvalidRequestContent",
                    format!("The request content was invalid and could not be deserialized: {e}"),
                )),
            },
            ArmOperation::GetScheduleRequest(_, name) => state.get_schedule_request(name).map(|b| (200, b)),
            ArmOperation::ListSchedules(scope) | ArmOperation::ListScheduleInstances(scope) => {
                let instances = matches!(operation, ArmOperation::ListScheduleInstances(_));
                match parse_assignment_filter(query.get("$filter").map(String::as_str)) {
                    Ok(filter) => {
                        let principal = match &filter {
                            AssignmentFilter::Principal(p) => Some(p.as_str()),
                            _ => None,
                        };
                        state
                            .authorize(&caller, scope, "Microsoft.Authorization/roleAssignments/read")
                            .and_then(|()| state.list_schedules(scope, principal, instances))
                            .map(|items| (200, page(&link_origin, path, &query, items, state.config.page_size)))
                    }
                    Err(f) => Err(f),
                }
            }
        }
    };
    let result = result.map(|(status, mut body)| {
        versioned.shape(&version, &mut body);
        (status, body)
    });
    let mut response = match result {
        Ok((204, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((status, body)) => match faults.hostile {
            Some(mode) => hostile_response(mode, status, body, &link_origin, path, &query),
            None => json_response(status, &body),
        },
        Err(f) => failure(&f),
    };
    if faults.hostile == Some(HostileResponse::RateLimitHeaders) {
        response = hostile_rate_limit_headers(response, class.header());
    } else {
        response.headers_mut().insert(class.header(), HeaderValue::from(remaining));
    }
    let status = response.status().as_u16();
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("x-ms-request-id", id);
    }
    respond(status, response)
}

/// `roleName eq 'Name'` (quotes doubled inside the literal).
fn parse_role_name_filter(filter: &str) -> Option<String> {
    let rest = filter.trim().strip_prefix("roleName eq '")?.strip_suffix('\'')?;
    Some(rest.replace("''", "'"))
}

fn parse_assignment_filter(filter: Option<&str>) -> Result<AssignmentFilter, ArmFailure> {
    let Some(filter) = filter.map(str::trim) else {
        return Ok(AssignmentFilter::None);
    };
    if filter.eq_ignore_ascii_case("atScope()") {
        return Ok(AssignmentFilter::AtScope);
    }
    if let Some(id) = filter.strip_prefix("principalId eq '").and_then(|r| r.strip_suffix('\'')) {
        return Ok(AssignmentFilter::Principal(id.to_owned()));
    }
    Err(ArmFailure::new(
        400,
        "UnsupportedQuery",
        format!(
            "The filter '{filter}' is not supported. Supported filters are either 'atScope()' or 'principalId eq '{{value}}''."
        ),
    ))
}

/// One page of `items` from `$skipToken` on, with a `nextLink` when more remain.
fn page(origin: &str, path: &str, query: &HashMap<String, String>, items: Vec<Value>, page_size: usize) -> Value {
    let skip: usize = query.get("$skipToken").and_then(|s| s.parse().ok()).unwrap_or(0);
    let size = page_size.max(1);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(size).collect();
    let mut body = json!({"value": value});
    if skip + size < total {
        let mut next: Vec<(String, String)> =
            query.iter().filter(|(k, _)| k.as_str() != "$skipToken").map(|(k, v)| (k.clone(), v.clone())).collect();
        next.sort();
        next.push(("$skipToken".into(), (skip + size).to_string()));
        let encoded = serde_urlencoded::to_string(&next).unwrap_or_default();
        body["nextLink"] = json!(format!("{origin}{path}?{encoded}"));
    }
    body
}

/// Mangles a successful response the way `mode` says.
fn hostile_response(
    mode: HostileResponse,
    status: u16,
    body: Value,
    origin: &str,
    path: &str,
    query: &HashMap<String, String>,
) -> Response {
    fn strings_to_numbers(v: &mut Value) {
        match v {
            Value::String(_) => *v = json!(42),
            Value::Array(items) => items.iter_mut().for_each(strings_to_numbers),
            Value::Object(map) => map.values_mut().for_each(strings_to_numbers),
            _ => {}
        }
    }
    match mode {
        HostileResponse::TruncatedJson => {
            let text = body.to_string();
            let cut: String = text.chars().take(text.chars().count() / 2).collect();
            let mut response = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), cut).into_response();
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
            response
        }
        HostileResponse::WrongTypes => {
            let mut body = body;
            strings_to_numbers(&mut body);
            json_response(status, &body)
        }
        HostileResponse::MissingFields => {
            let mut body = body;
            if let Some(map) = body.as_object_mut() {
                map.remove("properties");
                map.remove("value");
            }
            json_response(status, &body)
        }
        HostileResponse::ErrorBodyWith200 => json_response(
            200,
            &json!({"error": {"code": "InternalServerError", "message": "Encountered internal server error."}}),
        ),
        // Headers only (see hostile_rate_limit_headers).
        HostileResponse::RateLimitHeaders => json_response(status, &body),
        HostileResponse::EndlessPagination => {
            if body.get("value").is_none() {
                return json_response(status, &body);
            }
            let skip: u64 = query.get("$skipToken").and_then(|s| s.parse().ok()).unwrap_or(0);
            let mut next: Vec<(String, String)> =
                query.iter().filter(|(k, _)| k.as_str() != "$skipToken").map(|(k, v)| (k.clone(), v.clone())).collect();
            next.push(("$skipToken".into(), (skip + 1).to_string()));
            let encoded = serde_urlencoded::to_string(&next).unwrap_or_default();
            json_response(status, &json!({"value": [], "nextLink": format!("{origin}{path}?{encoded}")}))
        }
    }
}

/// Junk throttling headers (see [`HostileResponse::RateLimitHeaders`]), in turn.
fn hostile_rate_limit_headers(mut response: Response, header: &'static str) -> Response {
    static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let turn = TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if turn % 2 == 1 {
        response = failure(&ArmFailure::new(429, "TooManyRequests", "throttled (hostile Retry-After)"));
        response.headers_mut().insert("retry-after", HeaderValue::from_static("18446744073709551615"));
    }
    let junk = ["-inf", "-1e300", "NaN", "1e300"][turn / 2 % 4];
    response.headers_mut().insert(header, HeaderValue::from_static(junk));
    response
}

// ----- admin API -----

async fn admin_stats(State(emulator): State<Shared>) -> Response {
    let requests: Vec<Value> = emulator
        .stats()
        .into_iter()
        .map(|((operation, status), count)| json!({"operation": operation, "status": status, "count": count}))
        .collect();
    json_response(200, &json!({"requests": requests}))
}

async fn admin_faults(State(emulator): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultConfig>(&body) {
        Ok(faults) => {
            emulator.set_faults(faults.clone());
            json_response(200, &serde_json::to_value(faults).unwrap_or(Value::Null))
        }
        Err(e) => json_response(400, &json!({"error": {"code": "InvalidFaults", "message": e.to_string()}})),
    }
}

async fn admin_throttling(State(emulator): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<ThrottleConfig>(&body) {
        Ok(config) => {
            emulator.set_throttling(config.clone());
            json_response(200, &serde_json::to_value(config).unwrap_or(Value::Null))
        }
        Err(e) => json_response(400, &json!({"error": {"code": "InvalidThrottling", "message": e.to_string()}})),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateIdentity {
    id: String,
    /// Create the principal as already replicated (no PrincipalNotFound window).
    #[serde(default)]
    replicated: bool,
}

async fn admin_create_identity(State(emulator): State<Shared>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<CreateIdentity>(&body) {
        Ok(r) => r,
        Err(e) => return json_response(400, &json!({"error": {"code": "InvalidRequest", "message": e.to_string()}})),
    };
    match ResourceId::parse(&request.id) {
        Ok(id) if id.is_type("Microsoft.ManagedIdentity/userAssignedIdentities") => {
            let age = if request.replicated { Duration::from_secs(86_400) } else { Duration::ZERO };
            let (principal_id, client_id) = emulator.state().create_user_assigned_identity(&id, age);
            json_response(201, &json!({"id": id.to_string(), "principalId": principal_id, "clientId": client_id}))
        }
        Ok(id) => json_response(
            400,
            &json!({"error": {"code": "InvalidRequest", "message": format!("'{id}' is not a user-assigned identity id")}}),
        ),
        Err(e) => json_response(400, &json!({"error": {"code": "InvalidResourceId", "message": e.to_string()}})),
    }
}

fn admin_error(code: &str, message: impl std::fmt::Display) -> Response {
    json_response(400, &json!({"error": {"code": code, "message": message.to_string()}}))
}

#[derive(serde::Deserialize)]
struct CreateResource {
    id: String,
}

/// Creates a resource group, or a plain resource (storage account, key vault …) and its group.
async fn admin_create_resource(State(emulator): State<Shared>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<CreateResource>(&body) {
        Ok(r) => r,
        Err(e) => return admin_error("InvalidRequest", e),
    };
    let id = match ResourceId::parse(&request.id) {
        Ok(id) => id,
        Err(e) => return admin_error("InvalidResourceId", e),
    };
    let mut state = emulator.state();
    if id.sections().is_empty() && id.resource_group_name().is_some() {
        state.add_resource_group(&id);
    } else if id.sections().is_empty() {
        return admin_error("InvalidRequest", "give a resource group or resource id");
    } else {
        state.add_resource(&id, super::ResourceKind::Generic);
    }
    json_response(201, &json!({"id": id.to_string()}))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateAssignment {
    scope: String,
    role_definition_id: String,
    principal_id: String,
}

/// Creates a role assignment out of band (no permission, principal or duplicate checks), as
/// another administrator might.
async fn admin_create_assignment(State(emulator): State<Shared>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<CreateAssignment>(&body) {
        Ok(r) => r,
        Err(e) => return admin_error("InvalidRequest", e),
    };
    let scope = match ResourceId::parse(&request.scope) {
        Ok(id) => id,
        Err(e) => return admin_error("InvalidResourceId", e),
    };
    let guid = ResourceId::parse(&request.role_definition_id)
        .ok()
        .and_then(|id| crate::azure::guid::parse_guid(id.name()))
        .or_else(|| crate::azure::guid::parse_guid(&request.role_definition_id));
    let Some(guid) = guid else {
        return admin_error("InvalidRoleDefinitionId", "roleDefinitionId must be a GUID or a roleDefinitions id");
    };
    let name = emulator.state().assign_out_of_band(&scope, guid, &request.principal_id);
    json_response(201, &json!({"name": name}))
}

async fn admin_delete_resource(
    State(emulator): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = query.get("id").and_then(|i| ResourceId::parse(i).ok()) else {
        return json_response(
            400,
            &json!({"error": {"code": "InvalidResourceId", "message": "?id=<ARM id> is required"}}),
        );
    };
    if emulator.state().delete_resource(&id) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

async fn admin_delete_assignment(State(emulator): State<Shared>, Path(name): Path<String>) -> Response {
    if emulator.state().delete_out_of_band(&name) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// `POST /_emulator/clock {"advanceSeconds": N}`: moves the emulator's clock (PIM schedules end
/// on it) forward; answers the new time.
async fn admin_clock(State(emulator): State<Shared>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Advance {
        advance_seconds: u64,
    }
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) => {
            let mut state = emulator.state();
            state.advance_clock(std::time::Duration::from_secs(a.advance_seconds));
            json_response(200, &json!({"now": state.now().to_string()}))
        }
        Err(e) => json_response(400, &json!({"error": {"code": "InvalidClock", "message": e.to_string()}})),
    }
}

/// `PUT /_emulator/pim`: PIM's licence, refused principal types and policy maximum.
async fn admin_pim(State(emulator): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<super::pim::PimConfig>(&body) {
        Ok(config) => {
            emulator.state().pim = config.clone();
            json_response(200, &serde_json::to_value(config).unwrap_or(Value::Null))
        }
        Err(e) => json_response(400, &json!({"error": {"code": "InvalidPim", "message": e.to_string()}})),
    }
}

async fn admin_expire_tokens(State(emulator): State<Shared>) -> Response {
    emulator.expire_tokens();
    StatusCode::OK.into_response()
}

//! `ArmClient`: every ARM call the operator makes, on azure_core's `Pipeline` (its retry policy
//! honours `Retry-After` on 429/503; its bearer-token policy attaches a token for
//! `<arm-endpoint>/.default`).
//!
//! Endpoints and trust are configurable because sovereign clouds, private endpoints,
//! TLS-inspecting proxies and the sandbox emulator all differ from public Azure; the extra CA
//! bundle applies to ARM calls and to the credential's token requests alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Method, Pipeline, PipelineSendOptions, RawResponse, Request,
    RetryOptions, Transport, Url,
};
use serde::de::DeserializeOwned;

use super::RoleAssignmentId;
use super::error::ArmError;
use super::models::*;
use super::resource_id::ResourceId;

/// A policy and the ones after it.
pub type PolicyChain<'a> = (&'a Arc<dyn Policy>, &'a [Arc<dyn Policy>]);

/// The policy after `this` in a pipeline and the ones after it: what a pass-through policy
/// (metrics, pacing, read-only) hands the request to. A pipeline always ends in its transport,
/// so an empty rest is a wiring mistake, reported rather than panicked on.
pub fn next_policy<'a>(this: &str, next: &'a [Arc<dyn Policy>]) -> Result<PolicyChain<'a>, azure_core::Error> {
    next.split_first().ok_or_else(|| {
        azure_core::Error::with_message(
            azure_core::error::ErrorKind::Other,
            format!("{this} must not be the last policy"),
        )
    })
}

/// Public Azure's ARM endpoint.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";

/// Most pages followed for one list; a server that never stops paginating is an error.
const MAX_PAGES: usize = 1000;

/// Errors setting up Azure access (not ARM call failures: those are [`ArmError`]).
#[derive(Debug, thiserror::Error)]
pub enum AzureSetupError {
    #[error("cannot read CA bundle {path}: {source}")]
    ReadCa { path: PathBuf, source: std::io::Error },
    #[error("CA bundle {path} holds no usable PEM certificate: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("invalid ARM endpoint '{endpoint}': {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot create the {kind} credential: {message}")]
    Credential { kind: &'static str, message: String },
}

/// Builds azure_core `ClientOptions` whose transport trusts the extra CA bundle (if any), with
/// azure_core's exponential retry. Used for both ARM and credential pipelines.
pub fn client_options(ca_file: Option<&Path>, retry: RetryOptions) -> Result<ClientOptions, AzureSetupError> {
    let mut builder = reqwest::ClientBuilder::new()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        // ARM does not redirect; following one could carry the bearer token elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| AzureSetupError::ReadCa { path: path.to_owned(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| AzureSetupError::BadCa { path: path.to_owned(), message: e.to_string() })?;
        if certs.is_empty() {
            return Err(AzureSetupError::BadCa { path: path.to_owned(), message: "no certificates found".into() });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder.build().map_err(|e| AzureSetupError::HttpClient(e.to_string()))?;
    Ok(ClientOptions { transport: Some(Transport::new(Arc::new(http))), retry, ..Default::default() })
}

/// The retry policy for ARM: exponential from 500 ms, at most 4 retries, capped at 30 s per
/// wait; a longer `Retry-After` still wins (azure_core waits the larger of the two).
pub fn arm_retry() -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(500),
        max_retries: 4,
        max_delay: azure_core::time::Duration::seconds(30),
        ..Default::default()
    })
}

/// Talks to ARM.
#[derive(Clone)]
pub struct ArmClient {
    endpoint: Url,
    pipeline: Pipeline,
    /// Whose answers this client gets ([`OPERATOR_CREDENTIAL`] or a grant's service principal):
    /// caches of what Azure said are kept per credential, so one credential never sees what only
    /// another may read.
    credential_key: Arc<str>,
    /// What this client's pacer knows, when it has one (the operator's pipeline does).
    pacer: Option<super::pacing::PacerView>,
}

/// [`ArmClient::credential_key`] of the operator's own identity.
pub const OPERATOR_CREDENTIAL: &str = "operator";

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient").field("endpoint", &self.endpoint.as_str()).finish_non_exhaustive()
    }
}

impl ArmClient {
    /// A client for `endpoint` authenticating with `credential` (token scope
    /// `<endpoint>/.default`).
    pub fn new(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
    ) -> Result<Self, AzureSetupError> {
        let endpoint = Url::parse(endpoint)
            .map_err(|e| AzureSetupError::Endpoint { endpoint: endpoint.to_owned(), message: e.to_string() })?;
        if endpoint.scheme() != "https" {
            return Err(AzureSetupError::Endpoint {
                endpoint: endpoint.to_string(),
                message: "must use https (bearer tokens are never sent in clear text)".into(),
            });
        }
        let scope = format!("{}/.default", endpoint.as_str().trim_end_matches('/'));
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [scope]));
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        Ok(ArmClient { endpoint, pipeline, credential_key: Arc::from(OPERATOR_CREDENTIAL), pacer: None })
    }

    /// The same client, labelled as authenticating with another credential than the operator's.
    pub fn with_credential_key(mut self, key: &str) -> Self {
        self.credential_key = Arc::from(key);
        self
    }

    /// Whose answers this client gets (see the field); the key of per-credential caches.
    pub fn credential_key(&self) -> &str {
        &self.credential_key
    }

    /// The same client, knowing what `pacer` (a policy in its pipeline) knows.
    pub fn with_pacer(mut self, pacer: super::pacing::PacerView) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// Microsoft.Authorization's own limit for `scope`'s subscription while this client has spent
    /// its budget (see [`super::pacing::PaceBook::provider_busy`]): a read that can wait should,
    /// since each one costs a write its slot.
    pub fn authorization_busy(
        &self,
        scope: &ResourceId,
    ) -> Option<(super::pacing::ProviderKey, super::pacing::ProviderBusy)> {
        self.pacer.as_ref()?.busy(&RoleAssignmentId::collection_at(scope))
    }

    /// When [`Self::authorization_busy`]'s spell began: cache entries fresh then stay usable
    /// (`controller::resolve::still_usable`).
    pub fn authorization_busy_since(&self, scope: &ResourceId) -> Option<std::time::Instant> {
        self.authorization_busy(scope).map(|(_, busy)| busy.since)
    }

    /// Whether this is the operator's own identity (whose answers every grant may share).
    pub fn is_operator(&self) -> bool {
        &*self.credential_key == OPERATOR_CREDENTIAL
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    fn url(&self, path: &str, api_version: &str, filter: Option<&str>) -> Result<Url, ArmError> {
        let mut url = self.endpoint.join(path).map_err(|e| ArmError::Other {
            status: 0,
            code: "InvalidUrl".into(),
            message: format!("cannot build a URL for '{path}': {e}"),
        })?;
        url.query_pairs_mut().append_pair("api-version", api_version);
        if let Some(filter) = filter {
            url.query_pairs_mut().append_pair("$filter", filter);
        }
        Ok(url)
    }

    async fn send(&self, method: Method, url: Url, body: Option<Vec<u8>>) -> Result<RawResponse, ArmError> {
        let mut request = Request::new(url, method);
        request.insert_header("accept", "application/json");
        if let Some(body) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(body);
        }
        let options = PipelineSendOptions { skip_checks: true, ..Default::default() };
        match self.pipeline.send(&Context::new(), &mut request, Some(options)).await {
            Ok(response) => Ok(response),
            Err(e) => Err(classify_transport_error(&e)),
        }
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, url: Url, body: Option<Vec<u8>>) -> Result<T, ArmError> {
        let response = self.send(method, url, body).await?;
        parse(response)
    }

    /// GET a workspace.
    pub async fn get_workspace(&self, id: &ResourceId) -> Result<Workspace, ArmError> {
        self.call(Method::Get, self.url(&id.to_string(), api_version::DATABRICKS, None)?, None).await
    }

    /// GET an Access Connector.
    pub async fn get_access_connector(&self, id: &ResourceId) -> Result<AccessConnector, ArmError> {
        self.call(Method::Get, self.url(&id.to_string(), api_version::DATABRICKS, None)?, None).await
    }

    /// GET a user-assigned managed identity.
    pub async fn get_user_assigned_identity(&self, id: &ResourceId) -> Result<UserAssignedIdentity, ArmError> {
        self.call(Method::Get, self.url(&id.to_string(), api_version::MANAGED_IDENTITY, None)?, None).await
    }

    /// GET a role definition by its full id.
    pub async fn get_role_definition(&self, id: &ResourceId) -> Result<RoleDefinition, ArmError> {
        self.call(Method::Get, self.url(&id.to_string(), api_version::AUTHORIZATION, None)?, None).await
    }

    /// Role definitions visible at `scope` whose name is exactly `role_name`.
    pub async fn find_role_definitions(
        &self,
        scope: &ResourceId,
        role_name: &str,
    ) -> Result<Vec<RoleDefinition>, ArmError> {
        // OData string literals escape a quote by doubling it.
        let filter = format!("roleName eq '{}'", role_name.replace('\'', "''"));
        let path = format!("{scope}/providers/Microsoft.Authorization/roleDefinitions");
        self.list(self.url(&path, api_version::AUTHORIZATION, Some(&filter))?).await
    }

    /// Subscriptions the credential can read, every page.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ArmError> {
        self.list(self.url("/subscriptions", api_version::SUBSCRIPTIONS, None)?).await
    }

    /// Workspaces in a subscription or resource group, every page.
    pub async fn list_workspaces(&self, within: &ResourceId) -> Result<Vec<Workspace>, ArmError> {
        let path = format!("{within}/providers/Microsoft.Databricks/workspaces");
        self.list(self.url(&path, api_version::DATABRICKS, None)?).await
    }

    /// Access Connectors in a subscription or resource group, every page.
    pub async fn list_access_connectors(&self, within: &ResourceId) -> Result<Vec<AccessConnector>, ArmError> {
        let path = format!("{within}/providers/Microsoft.Databricks/accessConnectors");
        self.list(self.url(&path, api_version::DATABRICKS, None)?).await
    }

    /// User-assigned managed identities in a subscription or resource group, every page.
    pub async fn list_user_assigned_identities(
        &self,
        within: &ResourceId,
    ) -> Result<Vec<UserAssignedIdentity>, ArmError> {
        let path = format!("{within}/providers/Microsoft.ManagedIdentity/userAssignedIdentities");
        self.list(self.url(&path, api_version::MANAGED_IDENTITY, None)?).await
    }

    /// Every role definition visible at `scope` (built-in and custom), every page.
    pub async fn list_role_definitions(&self, scope: &ResourceId) -> Result<Vec<RoleDefinition>, ArmError> {
        let path = format!("{scope}/providers/Microsoft.Authorization/roleDefinitions");
        self.list(self.url(&path, api_version::AUTHORIZATION, None)?).await
    }

    /// Every role assignment at, above and below `scope` (no filter), every page: for a
    /// subscription, all of its assignments in one paged read.
    pub async fn list_role_assignments(&self, scope: &ResourceId) -> Result<Vec<RoleAssignment>, ArmError> {
        let path = RoleAssignmentId::collection_at(scope);
        self.list(self.url(&path, api_version::AUTHORIZATION, None)?).await
    }

    /// Role assignments at `scope` itself and above it (`atScope()`), every page.
    pub async fn list_role_assignments_at_scope(&self, scope: &ResourceId) -> Result<Vec<RoleAssignment>, ArmError> {
        let path = RoleAssignmentId::collection_at(scope);
        self.list(self.url(&path, api_version::AUTHORIZATION, Some("atScope()"))?).await
    }

    /// Role assignments of one principal at and below/above `scope`, every page.
    pub async fn list_role_assignments_for_principal(
        &self,
        scope: &ResourceId,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignment>, ArmError> {
        let path = RoleAssignmentId::collection_at(scope);
        let filter = format!("principalId eq '{}'", principal_id.replace('\'', "''"));
        self.list(self.url(&path, api_version::AUTHORIZATION, Some(&filter))?).await
    }

    /// GET one role assignment.
    pub async fn get_role_assignment(&self, scope: &ResourceId, name: &str) -> Result<RoleAssignment, ArmError> {
        let path = RoleAssignmentId::new(scope.clone(), name).to_string();
        self.call(Method::Get, self.url(&path, api_version::AUTHORIZATION, None)?, None).await
    }

    /// PUT a role assignment under the caller-chosen GUID `name`.
    pub async fn create_role_assignment(
        &self,
        scope: &ResourceId,
        name: &str,
        properties: RoleAssignmentProperties,
    ) -> Result<RoleAssignment, ArmError> {
        self.put_role_assignment(scope, name, properties).await.map(|(assignment, _)| assignment)
    }

    /// PUT a role assignment; the flag is true when Azure created it (201) rather than found
    /// it already there (200, an idempotent re-PUT or an in-place update).
    pub async fn put_role_assignment(
        &self,
        scope: &ResourceId,
        name: &str,
        properties: RoleAssignmentProperties,
    ) -> Result<(RoleAssignment, bool), ArmError> {
        let path = RoleAssignmentId::new(scope.clone(), name).to_string();
        let body = serde_json::to_vec(&RoleAssignmentCreate { properties }).map_err(|e| ArmError::Other {
            status: 0,
            code: "SerializationFailed".into(),
            message: e.to_string(),
        })?;
        let response = self.send(Method::Put, self.url(&path, api_version::AUTHORIZATION, None)?, Some(body)).await?;
        let created = u16::from(response.status()) == 201;
        parse(response).map(|assignment| (assignment, created))
    }

    /// PUT a PIM role assignment schedule request (`AdminAssign`, `AdminUpdate`, `AdminRemove`).
    pub async fn put_schedule_request(
        &self,
        scope: &ResourceId,
        name: &str,
        properties: ScheduleRequestProperties,
    ) -> Result<ScheduleRequest, ArmError> {
        let path = format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}");
        let body = serde_json::to_vec(&serde_json::json!({ "properties": properties }))
            .map_err(|e| ArmError::Other { status: 0, code: "SerializationFailed".into(), message: e.to_string() })?;
        self.call(Method::Put, self.url(&path, api_version::PIM, None)?, Some(body)).await
    }

    /// The principal's active PIM assignments at, above and below `scope`.
    pub async fn list_role_assignment_schedules(
        &self,
        scope: &ResourceId,
        principal_id: &str,
    ) -> Result<Vec<RoleAssignmentSchedule>, ArmError> {
        let path = format!("{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules");
        let filter = format!("principalId eq '{}'", principal_id.replace('\'', "''"));
        self.list(self.url(&path, api_version::PIM, Some(&filter))?).await
    }

    /// DELETE a role assignment. `Ok(false)` when it was already gone (204).
    pub async fn delete_role_assignment(&self, scope: &ResourceId, name: &str) -> Result<bool, ArmError> {
        let path = RoleAssignmentId::new(scope.clone(), name).to_string();
        let response = self.send(Method::Delete, self.url(&path, api_version::AUTHORIZATION, None)?, None).await?;
        match u16::from(response.status()) {
            200 => Ok(true),
            204 | 404 => Ok(false),
            status => Err(error_from(status, &response)),
        }
    }

    /// Follows `nextLink` until the last page. A `nextLink` to another host is refused: the
    /// pipeline would send our bearer token there.
    async fn list<T: DeserializeOwned>(&self, first: Url) -> Result<Vec<T>, ArmError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(ArmError::Other {
                    status: 200,
                    code: "EndlessPagination".into(),
                    message: format!("more than {MAX_PAGES} pages; giving up"),
                });
            }
            let page: ListResult<T> = self.call(Method::Get, url, None).await?;
            items.extend(page.value);
            if let Some(link) = page.next_link {
                let link_url = Url::parse(&link).map_err(|e| ArmError::Other {
                    status: 200,
                    code: "InvalidNextLink".into(),
                    message: format!("nextLink '{link}' is not a URL: {e}"),
                })?;
                if link_url.origin() != self.endpoint.origin() {
                    return Err(ArmError::Other {
                        status: 200,
                        code: "ForeignNextLink".into(),
                        message: format!(
                            "nextLink points to {} instead of {}; not followed",
                            link_url.origin().ascii_serialization(),
                            self.endpoint.origin().ascii_serialization()
                        ),
                    });
                }
                next = Some(link_url);
            }
        }
        Ok(items)
    }
}

fn retry_after(response: &RawResponse) -> Option<Duration> {
    response
        .headers()
        .get_optional_str(&azure_core::http::headers::RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn error_from(status: u16, response: &RawResponse) -> ArmError {
    ArmError::from_response(status, response.body(), retry_after(response))
}

fn parse<T: DeserializeOwned>(response: RawResponse) -> Result<T, ArmError> {
    let status = u16::from(response.status());
    if !(200..300).contains(&status) {
        return Err(error_from(status, &response));
    }
    serde_json::from_slice(response.body()).map_err(|e| {
        // A 200 carrying ARM's error shape is still an error, and says which.
        let as_error = ArmError::from_response(500, response.body(), None);
        ArmError::Other {
            status,
            code: "InvalidResponse".into(),
            message: format!("cannot read ARM's response: {e}; body: {}", as_error.message()),
        }
    })
}

/// The error and its sources as one line: azure_core's top-level text often hides the cause
/// (Entra's AADSTS code, the TLS or DNS failure) in the chain.
fn full_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Maps a pipeline error (no usable response) to an `ArmError`.
fn classify_transport_error(e: &azure_core::Error) -> ArmError {
    use azure_core::error::ErrorKind;
    let message = full_message(e);
    match e.kind() {
        ErrorKind::Credential => ArmError::Unauthenticated { message },
        ErrorKind::HttpResponse { status, .. } => ArmError::Transient { status: Some(u16::from(*status)), message },
        _ => ArmError::Transient { status: None, message },
    }
}

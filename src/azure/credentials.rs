//! Azure credentials from azure_identity, chosen by `--azure-auth`.
//!
//! - `workload-identity`: AKS workload identity (federated token file; `AZURE_CLIENT_ID`,
//!   `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`).
//! - `managed-identity`: App Service endpoint (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`) or IMDS.
//! - `client-secret`: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
//! - `cli`: developer tools (Azure CLI, Azure Developer CLI).
//! - `auto`: workload identity when its environment is present (the AKS default), otherwise
//!   managed identity, then developer tools — the first that yields a token is kept.
//!
//! Every credential's token requests go through the same transport as ARM calls, so the extra
//! CA bundle applies to them too. Secrets are held in azure_core's `Secret`, which never prints.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::ClientOptions;
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use super::client::{ArmClient, AzureSetupError, arm_retry, client_options};

/// How the operator authenticates to Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    Auto,
    WorkloadIdentity,
    ManagedIdentity,
    ClientSecret,
    Cli,
}

/// Where and how to reach Azure.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// ARM endpoint, e.g. `https://management.azure.com`.
    pub arm_endpoint: String,
    /// Extra PEM CA bundle trusted for ARM and token requests.
    pub ca_file: Option<PathBuf>,
    pub auth: AuthMode,
    /// Entra authority host; `None` is public Azure (`run` fills it from `AZURE_AUTHORITY_HOST`).
    pub authority_host: Option<String>,
    /// Extra per-try pipeline policies for ARM clients (metrics).
    pub arm_policies: Vec<Arc<dyn azure_core::http::policies::Policy>>,
    /// Told of each request the pacer held (metrics).
    pub pacing_observer: Option<Arc<dyn super::pacing::PacingObserver>>,
}

/// An ARM client for `endpoint` with the operator's pipeline: the CA bundle, `retry`, pacing
/// from ARM's throttling headers (one pacer per client, i.e. per principal, as ARM meters
/// them; the client keeps a view of it) and the extra policies. `run` uses ARM's retry policy;
/// tests and the demo pass shorter waits.
pub fn arm_client(
    endpoint: &str,
    credential: Arc<dyn TokenCredential>,
    settings: &AzureSettings,
    retry: azure_core::http::RetryOptions,
) -> Result<ArmClient, AzureSetupError> {
    let mut options = client_options(settings.ca_file.as_deref(), retry)?;
    let pacer = super::pacing::PacingPolicy::observed_by(settings.pacing_observer.clone());
    let view = pacer.view();
    options.per_try_policies.push(Arc::new(pacer));
    options.per_try_policies.extend(settings.arm_policies.iter().cloned());
    Ok(ArmClient::new(endpoint, credential, options)?.with_pacer(view))
}

fn options(settings: &AzureSettings) -> Result<ClientOptions, AzureSetupError> {
    let mut options = client_options(settings.ca_file.as_deref(), arm_retry())?;
    if let Some(host) = &settings.authority_host {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = host.clone();
        options.cloud = Some(Arc::new(CloudConfiguration::Custom(custom)));
    }
    Ok(options)
}

fn setup_error(kind: &'static str) -> impl Fn(azure_core::Error) -> AzureSetupError {
    move |e| AzureSetupError::Credential { kind, message: e.to_string() }
}

fn env_present(names: &[&str]) -> bool {
    names.iter().all(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty()))
}

/// The operator's own credential for `settings.auth`.
pub fn operator_credential(settings: &AzureSettings) -> Result<Arc<dyn TokenCredential>, AzureSetupError> {
    match settings.auth {
        AuthMode::WorkloadIdentity => workload_identity(settings, None),
        AuthMode::ManagedIdentity => managed_identity(settings),
        AuthMode::ClientSecret => {
            let var = |name: &str| {
                std::env::var(name).map_err(|_| AzureSetupError::Credential {
                    kind: "client-secret",
                    message: format!("{name} is not set"),
                })
            };
            client_secret(settings, &var("AZURE_TENANT_ID")?, &var("AZURE_CLIENT_ID")?, &var("AZURE_CLIENT_SECRET")?)
        }
        AuthMode::Cli => {
            Ok(DeveloperToolsCredential::new(None).map_err(setup_error("developer tools"))? as Arc<dyn TokenCredential>)
        }
        AuthMode::Auto => {
            if env_present(&["AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"]) {
                return workload_identity(settings, None);
            }
            let managed = managed_identity(settings)?;
            let developer: Arc<dyn TokenCredential> =
                DeveloperToolsCredential::new(None).map_err(setup_error("developer tools"))?;
            Ok(Arc::new(FirstThatWorks::new(vec![("managed identity", managed), ("developer tools", developer)])))
        }
    }
}

/// Workload identity with explicit values (`None` fields come from the environment).
pub fn workload_identity(
    settings: &AzureSettings,
    explicit: Option<(String, String, PathBuf)>,
) -> Result<Arc<dyn TokenCredential>, AzureSetupError> {
    let (tenant_id, client_id, token_file_path) = match explicit {
        Some((t, c, f)) => (Some(t), Some(c), Some(f)),
        None => (None, None, None),
    };
    let options = WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options: options(settings)? },
        client_id,
        tenant_id,
        token_file_path,
    };
    Ok(WorkloadIdentityCredential::new(Some(options)).map_err(setup_error("workload identity"))?)
}

/// Managed identity (system-assigned; the App Service endpoint when `IDENTITY_ENDPOINT` is set).
pub fn managed_identity(settings: &AzureSettings) -> Result<Arc<dyn TokenCredential>, AzureSetupError> {
    let options = ManagedIdentityCredentialOptions { client_options: options(settings)?, ..Default::default() };
    Ok(ManagedIdentityCredential::new(Some(options)).map_err(setup_error("managed identity"))?)
}

/// A client-secret credential.
pub fn client_secret(
    settings: &AzureSettings,
    tenant_id: &str,
    client_id: &str,
    secret: &str,
) -> Result<Arc<dyn TokenCredential>, AzureSetupError> {
    let options = ClientSecretCredentialOptions { client_options: options(settings)? };
    Ok(ClientSecretCredential::new(tenant_id, client_id.to_owned(), Secret::new(secret.to_owned()), Some(options))
        .map_err(setup_error("client-secret"))?)
}

/// Tries credentials in order; the first that yields a token is used from then on.
#[derive(Debug)]
struct FirstThatWorks {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
    chosen: Mutex<Option<usize>>,
}

impl FirstThatWorks {
    fn new(sources: Vec<(&'static str, Arc<dyn TokenCredential>)>) -> Self {
        FirstThatWorks { sources, chosen: Mutex::new(None) }
    }
}

#[async_trait::async_trait]
impl TokenCredential for FirstThatWorks {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let chosen = *self.chosen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = chosen {
            return self.sources[i].1.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (i, (name, source)) in self.sources.iter().enumerate() {
            match source.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    *self.chosen.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                    return Ok(token);
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!("no credential worked ({})", failures.join("; ")),
        ))
    }
}

/// The operator's ARM client plus clients for grants' `azureCredentialRef` Secrets, cached by
/// the Secret's content so a rotated secret gets a new credential and an unchanged one reuses
/// its token cache.
pub struct ArmClients {
    settings: AzureSettings,
    operator: ArmClient,
    by_secret: Mutex<HashMap<u64, ArmClient>>,
}

impl ArmClients {
    pub fn new(settings: AzureSettings, operator: ArmClient) -> Self {
        ArmClients { settings, operator, by_secret: Mutex::new(HashMap::new()) }
    }

    /// The client using the operator's own identity.
    pub fn operator(&self) -> &ArmClient {
        &self.operator
    }

    /// A client authenticating with a grant's client credential.
    pub fn for_client_secret(
        &self,
        tenant_id: &str,
        client_id: &str,
        secret: &str,
    ) -> Result<ArmClient, AzureSetupError> {
        let mut hasher = DefaultHasher::new();
        (tenant_id, client_id, secret).hash(&mut hasher);
        let key = hasher.finish();
        let mut cache = self.by_secret.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(&key) {
            return Ok(client.clone());
        }
        let credential = client_secret(&self.settings, tenant_id, client_id, secret)?;
        let client = arm_client(&self.settings.arm_endpoint, credential, &self.settings, arm_retry())?
            .with_credential_key(&format!("sp:{}/{}", tenant_id.to_ascii_lowercase(), client_id.to_ascii_lowercase()));
        cache.insert(key, client.clone());
        Ok(client)
    }
}

/// Builds the operator's ARM client from settings.
pub fn operator_client(settings: &AzureSettings) -> Result<ArmClient, AzureSetupError> {
    let credential = operator_credential(settings)?;
    arm_client(&settings.arm_endpoint, credential, settings, arm_retry())
}

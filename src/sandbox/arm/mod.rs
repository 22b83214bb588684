//! An HTTPS emulator of the Azure Resource Manager APIs the operator calls, plus Entra's token
//! endpoint and App Service's managed-identity endpoint. Tests, the demo and the benchmarks run
//! the operator against it exactly as against Azure: same client, same credentials, only the
//! endpoints differ.
//!
//! - `state.rs`: the estate and ARM's rules (role assignments, permissions, existence).
//! - `tokens.rs`: token issuing and checking.
//! - `throttle.rs`: per-subscription token buckets.
//! - `routes.rs`: HTTP (ARM routes, token endpoints, the `/_emulator/` admin API).
//! - `tls.rs`: the throw-away CA.

pub mod api_versions;
pub mod pim;
pub mod roles;
mod routes;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use state::{ArmState, ResourceKind, StateConfig};
use throttle::Throttle;
pub use throttle::{ProviderLimit, ProviderScope, ThrottleConfig};
use tokens::{App, TokenIssuer};

/// Injected faults, changeable at runtime (`PUT /_emulator/faults`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultConfig {
    /// Added to every ARM request.
    pub latency_ms: u64,
    /// Uniform extra latency in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Share of ARM requests answered 500 (0.0–1.0).
    pub error_rate: f64,
    /// Share of ARM requests whose connection is cut mid-response (0.0–1.0).
    pub reset_rate: f64,
    /// Token endpoints answer 503.
    pub token_outage: bool,
    /// Hostile pagination: `nextLink`s point to this origin (e.g. `https://attacker.example`)
    /// instead of the emulator's, as a compromised or buggy server might.
    pub next_link_origin: Option<String>,
    /// Successful ARM responses are mangled this way (a broken proxy, a buggy API version).
    pub hostile: Option<HostileResponse>,
}

/// Ways a server (or something between) can answer badly with a success status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HostileResponse {
    /// The body is cut off halfway.
    TruncatedJson,
    /// Every string in the body becomes a number.
    WrongTypes,
    /// `properties` (and `value` of lists) are missing.
    MissingFields,
    /// Status 200 carrying ARM's error shape.
    ErrorBodyWith200,
    /// Lists never end: every page is empty and links to another page.
    EndlessPagination,
    /// The throttling headers are junk: `x-ms-ratelimit-remaining-*` is `-inf`, `-1e300`,
    /// `NaN` or `1e300` in turn, and every other response is a 429 whose `Retry-After` is
    /// 2^64 − 1 seconds (a broken or hostile proxy).
    RateLimitHeaders,
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct ArmEmulatorConfig {
    pub tenant_id: String,
    pub state: StateConfig,
    pub throttling: ThrottleConfig,
    pub faults: FaultConfig,
    pub token_lifetime: Duration,
    /// 0 picks a free port.
    pub port: u16,
    /// Where to write the CA certificate (`arm-ca.pem`).
    pub dir: PathBuf,
}

impl ArmEmulatorConfig {
    /// Defaults: no delays, Azure's throttling, one-hour tokens, a free port.
    pub fn new(tenant_id: &str, dir: PathBuf) -> Self {
        ArmEmulatorConfig {
            tenant_id: tenant_id.to_owned(),
            state: StateConfig::default(),
            throttling: ThrottleConfig::default(),
            faults: FaultConfig::default(),
            token_lifetime: Duration::from_secs(3600),
            port: 0,
            dir,
        }
    }
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// The running emulator's shared state.
#[derive(Debug)]
pub struct Emulator {
    /// `https://127.0.0.1:<port>`; also the ARM token audience.
    pub base_url: String,
    state: Mutex<ArmState>,
    tokens: Mutex<TokenIssuer>,
    throttle: Mutex<Throttle>,
    faults: Mutex<FaultConfig>,
    stats: Mutex<BTreeMap<(String, u16), u64>>,
    /// The most recent role-assignment PUT bodies, as sent (contract checks, secret scans).
    put_bodies: Mutex<std::collections::VecDeque<serde_json::Value>>,
    /// `(header secret, principal id)` of the App Service managed-identity endpoint.
    managed_identity: Mutex<Option<(String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Emulator {
    /// The estate, for seeding and for assertions.
    pub fn state(&self) -> MutexGuard<'_, ArmState> {
        lock(&self.state)
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        *lock(&self.faults) = faults;
    }

    pub fn faults(&self) -> FaultConfig {
        lock(&self.faults).clone()
    }

    pub fn set_throttling(&self, config: ThrottleConfig) {
        let mut t = lock(&self.throttle);
        t.config = config;
        t.reset();
    }

    /// Request counts by `(operation, status)`.
    pub fn stats(&self) -> BTreeMap<(String, u16), u64> {
        lock(&self.stats).clone()
    }

    /// Total requests for `operation` (any status).
    pub fn count(&self, operation: &str) -> u64 {
        lock(&self.stats).iter().filter(|((op, _), _)| op == operation).map(|(_, n)| n).sum()
    }

    pub fn reset_stats(&self) {
        lock(&self.stats).clear();
    }

    /// Registers an application with a client secret that authenticates as `principal_id`
    /// (which is added to the directory, already replicated).
    pub fn register_app_with_secret(&self, client_id: &str, secret: &str, principal_id: &str) {
        self.register_app(client_id, Some(secret.to_owned()), Vec::new(), principal_id)
    }

    /// Registers an application trusting service-account tokens of `subject` (workload
    /// identity's federated credential) that authenticates as `principal_id`.
    pub fn register_app_with_federation(&self, client_id: &str, subject: &str, principal_id: &str) {
        self.register_app(
            client_id,
            None,
            vec![(tokens::SANDBOX_OIDC_ISSUER.to_owned(), subject.to_owned())],
            principal_id,
        )
    }

    fn register_app(
        &self,
        client_id: &str,
        secret: Option<String>,
        federated: Vec<(String, String)>,
        principal_id: &str,
    ) {
        lock(&self.state).add_principal(principal_id, Duration::from_secs(86_400));
        lock(&self.tokens).apps.insert(
            client_id.to_ascii_lowercase(),
            App { principal_id: principal_id.to_ascii_lowercase(), secret, federated },
        );
    }

    /// Makes `principal_id` the identity of the App Service managed-identity endpoint; returns
    /// `(IDENTITY_ENDPOINT, IDENTITY_HEADER)`.
    pub fn enable_managed_identity_endpoint(&self, principal_id: &str) -> (String, String) {
        let header = Uuid::new_v4().simple().to_string();
        *lock(&self.managed_identity) = Some((header.clone(), principal_id.to_ascii_lowercase()));
        (format!("{}/msi/token", self.base_url), header)
    }

    /// Expires every issued token (tests of token refresh).
    pub fn expire_tokens(&self) {
        lock(&self.tokens).expire_all();
    }

    /// The most recent role-assignment PUT bodies (at most 100), oldest first.
    pub fn put_bodies(&self) -> Vec<serde_json::Value> {
        lock(&self.put_bodies).iter().cloned().collect()
    }

    fn record_put_body(&self, body: serde_json::Value) {
        let mut bodies = lock(&self.put_bodies);
        if bodies.len() == 100 {
            bodies.pop_front();
        }
        bodies.push_back(body);
    }

    fn record(&self, operation: &str, status: u16) {
        *lock(&self.stats).entry((operation.to_owned(), status)).or_default() += 1;
    }
}

/// A running emulator; shut it down with [`ArmEmulatorHandle::shutdown`] (dropping it stops
/// serving too, without waiting).
pub struct ArmEmulatorHandle {
    pub emulator: Arc<Emulator>,
    /// PEM file of the CA that signed the server certificate.
    pub ca_file: PathBuf,
    server: axum_server::Handle<std::net::SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl ArmEmulatorHandle {
    pub fn url(&self) -> &str {
        &self.emulator.base_url
    }

    /// Settings for an operator that authenticates here with a client secret: registers the
    /// operator's application (`estate::OPERATOR_CLIENT_ID`) for `principal_id` and points
    /// ARM, Entra and the CA at this emulator. (The managed-identity endpoint needs process
    /// environment variables, which in-process callers cannot share.)
    pub fn client_secret_settings(&self, principal_id: &str, secret: &str) -> crate::azure::credentials::AzureSettings {
        self.emulator.register_app_with_secret(super::estate::OPERATOR_CLIENT_ID, secret, principal_id);
        crate::azure::credentials::AzureSettings {
            arm_endpoint: self.url().to_owned(),
            ca_file: Some(self.ca_file.clone()),
            auth: crate::azure::credentials::AuthMode::ClientSecret,
            authority_host: Some(self.url().to_owned()),
            arm_policies: Vec::new(),
            pacing_observer: None,
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to 2 s), waits for the server.
    pub async fn shutdown(mut self) {
        self.server.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = (&mut self.task).await;
    }
}

impl Drop for ArmEmulatorHandle {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// Starts the emulator on loopback.
pub async fn start(config: ArmEmulatorConfig) -> Result<ArmEmulatorHandle, EmulatorError> {
    let material = tls::generate()?;
    std::fs::create_dir_all(&config.dir)
        .map_err(|source| EmulatorError::Io { what: format!("create {}", config.dir.display()), source })?;
    let ca_file = config.dir.join("arm-ca.pem");
    std::fs::write(&ca_file, &material.ca_pem)
        .map_err(|source| EmulatorError::Io { what: format!("write {}", ca_file.display()), source })?;

    let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))
        .map_err(|source| EmulatorError::Io { what: format!("listen on 127.0.0.1:{}", config.port), source })?;
    let addr =
        listener.local_addr().map_err(|source| EmulatorError::Io { what: "read the bound address".into(), source })?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        material.server_cert_pem.into_bytes(),
        material.server_key_pem.into_bytes(),
    )
    .await
    .map_err(|source| EmulatorError::Io { what: "load the server certificate".into(), source })?;

    let emulator = Arc::new(Emulator {
        base_url: format!("https://127.0.0.1:{}", addr.port()),
        state: Mutex::new(ArmState::new(&config.tenant_id, config.state)),
        tokens: Mutex::new(TokenIssuer::new(config.token_lifetime)),
        throttle: Mutex::new(Throttle::new(config.throttling)),
        faults: Mutex::new(config.faults),
        stats: Mutex::new(BTreeMap::new()),
        put_bodies: Mutex::new(std::collections::VecDeque::new()),
        managed_identity: Mutex::new(None),
    });
    let app = routes::router(emulator.clone());
    let server = axum_server::Handle::new();
    let serve = axum_server::from_tcp_rustls(listener, tls)
        .map_err(|source| EmulatorError::Io { what: "serve".into(), source })?
        .handle(server.clone())
        .serve(app.into_make_service());
    let task = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "ARM emulator stopped");
        }
    });
    Ok(ArmEmulatorHandle { emulator, ca_file, server, task })
}

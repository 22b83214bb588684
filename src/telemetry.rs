//! Prometheus metrics, the ARM pipeline policy that feeds them, and the HTTP endpoints for
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::azure::pacing::{BucketClass, PacingObserver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmLabels {
    pub operation: String,
    /// HTTP status, or `error` when no response came back.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// Which of `Ready`, `Reconciling` and `Stalled` is True; `Unknown` before the first
    /// status.
    pub health: String,
    /// `True`, `False` or `Unknown` (no status yet).
    pub ready: String,
    /// The Ready condition's reason (a [`crate::api::Reason`] code; empty without one).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    /// ARM's throttling bucket: `reads`, `writes` or `deletes`.
    pub bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    /// `1h`, `24h` or `7d`.
    pub within: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric the operator exports (prefix `dbx_identity_operator_`).
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub arm_requests: Family<ArmLabels, Counter>,
    pub arm_request_duration: HistogramFamily<OperationLabels>,
    pub arm_throttled: Counter,
    /// Requests the pacer held back, by ARM bucket.
    pub arm_paced_requests: Family<BucketLabels, Counter>,
    /// Time requests spent held by the pacer, by ARM bucket.
    pub arm_pacing_delay: Family<BucketLabels, Counter<f64, AtomicU64>>,
    pub drift_corrections: Counter,
    pub managed_role_assignments: Gauge,
    pub grants: Family<ReadyLabels, Gauge>,
    pub assignments_expiring: Family<WindowLabels, Gauge>,
    pub expiry_removals: Counter,
    pub leader: Gauge,
    pub status_writes: Counter,
    /// Set once the controller's caches are filled (readiness).
    pub ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("dbx_identity_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        let reconcile_duration = latency_histogram();
        registry.register("reconcile_duration_seconds", "Time per reconcile", reconcile_duration.clone());
        let arm_requests = Family::<ArmLabels, Counter>::default();
        registry.register(
            "arm_requests",
            "ARM HTTP requests (each retry counts) by operation and status",
            arm_requests.clone(),
        );
        let arm_request_duration: HistogramFamily<OperationLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "arm_request_duration_seconds",
            "ARM request latency by operation",
            arm_request_duration.clone(),
        );
        let arm_throttled = Counter::default();
        registry.register("arm_throttled_responses", "ARM 429 responses", arm_throttled.clone());
        let arm_paced_requests = Family::<BucketLabels, Counter>::default();
        let arm_pacing_delay = Family::<BucketLabels, Counter<f64, AtomicU64>>::default();
        for class in [BucketClass::Reads, BucketClass::Writes, BucketClass::Deletes] {
            let labels = BucketLabels { bucket: class.name().into() };
            arm_paced_requests.get_or_create(&labels).inc_by(0);
            arm_pacing_delay.get_or_create(&labels).inc_by(0.0);
        }
        registry.register(
            "arm_paced_requests",
            "ARM requests held back by the pacer (ARM's bucket nearly empty, or a 429's Retry-After), by bucket",
            arm_paced_requests.clone(),
        );
        registry.register(
            "arm_pacing_delay_seconds",
            "Time ARM requests spent held back by the pacer, by bucket",
            arm_pacing_delay.clone(),
        );
        let drift_corrections = Counter::default();
        registry.register(
            "drift_corrections",
            "Assignments recreated after removal outside the operator",
            drift_corrections.clone(),
        );
        let managed_role_assignments = Gauge::default();
        registry.register(
            "managed_role_assignments",
            "Role assignments the operator's grants own",
            managed_role_assignments.clone(),
        );
        let grants = Family::<ReadyLabels, Gauge>::default();
        // Present from the start, so alerts on them work before the first grant exists.
        for (health, ready) in
            [("Ready", "True"), ("Reconciling", "False"), ("Stalled", "False"), ("Unknown", "Unknown")]
        {
            let labels = ReadyLabels { health: health.into(), ready: ready.into(), reason: String::new() };
            grants.get_or_create(&labels).set(0);
        }
        registry.register(
            "grants",
            "Grants by health (Ready, Reconciling or Stalled), Ready condition and its reason",
            grants.clone(),
        );
        let assignments_expiring = Family::<WindowLabels, Gauge>::default();
        for (within, _) in crate::controller::expiry::EXPIRING_WINDOWS {
            assignments_expiring.get_or_create(&WindowLabels { within: within.into() }).set(0);
        }
        registry.register(
            "assignments_expiring",
            "Role assignments in place whose access ends within the window (expiresAt / activeFor)",
            assignments_expiring.clone(),
        );
        let expiry_removals = Counter::default();
        registry.register(
            "expiry_removals",
            "Role assignments removed by the expiry sweeper when their access ended",
            expiry_removals.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 when this replica reconciles", leader.clone());
        let status_writes = Counter::default();
        registry.register("status_writes", "Grant status writes to the Kubernetes API", status_writes.clone());
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "Build information", build);
        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_duration,
            arm_requests,
            arm_request_duration,
            arm_throttled,
            arm_paced_requests,
            arm_pacing_delay,
            drift_corrections,
            managed_role_assignments,
            grants,
            assignments_expiring,
            expiry_removals,
            leader,
            status_writes,
            ready: AtomicBool::new(false),
        })
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn observe_reconcile(&self, ok: bool, started: Instant) {
        self.reconciles.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" }.into() }).inc();
        self.reconcile_duration.observe(started.elapsed().as_secs_f64());
    }
}

/// Names an ARM request by what it does (no ids in labels: bounded cardinality).
pub fn arm_operation(method: &str, path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let last = |suffix: &str| lower.ends_with(suffix);
    match method {
        "PUT" if lower.contains("/roleassignmentschedulerequests/") => "PutRoleAssignmentScheduleRequest",
        "GET" if last("/providers/microsoft.authorization/roleassignmentschedules") => "ListRoleAssignmentSchedules",
        "PUT" if lower.contains("/roleassignments/") => "PutRoleAssignment",
        "DELETE" if lower.contains("/roleassignments/") => "DeleteRoleAssignment",
        "GET" if last("/providers/microsoft.authorization/roleassignments") => "ListRoleAssignments",
        "GET" if lower.contains("/roleassignments/") => "GetRoleAssignment",
        "GET" if last("/providers/microsoft.authorization/roledefinitions") => "ListRoleDefinitions",
        "GET" if lower.contains("/roledefinitions/") => "GetRoleDefinition",
        "GET" if lower.contains("/microsoft.databricks/workspaces/") => "GetWorkspace",
        "GET" if lower.contains("/microsoft.databricks/accessconnectors/") => "GetAccessConnector",
        "GET" if lower.contains("/microsoft.managedidentity/userassignedidentities/") => "GetUserAssignedIdentity",
        _ => "Other",
    }
}

impl PacingObserver for Metrics {
    fn held(&self, class: BucketClass, waited: Duration) {
        let labels = BucketLabels { bucket: class.name().into() };
        self.arm_paced_requests.get_or_create(&labels).inc();
        self.arm_pacing_delay.get_or_create(&labels).inc_by(waited.as_secs_f64());
    }
}

/// azure_core pipeline policy recording every ARM HTTP attempt.
#[derive(Debug)]
pub struct ArmMetricsPolicy {
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Policy for ArmMetricsPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let operation = arm_operation(request.method().as_ref(), request.url().path());
        let started = Instant::now();
        let (first, rest) = crate::azure::client::next_policy("ArmMetricsPolicy", next)?;
        let result = first.send(ctx, request, rest).await;
        let status = match &result {
            Ok(response) => u16::from(response.status()).to_string(),
            Err(_) => "error".to_owned(),
        };
        if status == "429" {
            self.metrics.arm_throttled.inc();
        }
        self.metrics.arm_requests.get_or_create(&ArmLabels { operation: operation.into(), status }).inc();
        self.metrics
            .arm_request_duration
            .get_or_create(&OperationLabels { operation: operation.into() })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

/// Serves `/metrics` on `addr`; returns the bound address (port 0 picks a free one).
pub async fn serve_metrics(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    serve(addr, Router::new().route("/metrics", get(metrics)).with_state(m)).await
}

/// Serves `/healthz` (the process is alive) and `/readyz` (caches synced; a standby replica is
/// ready too) on `addr`.
pub async fn serve_health(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    serve(addr, Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(m)).await
}

async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "telemetry server stopped");
        }
    });
    Ok(bound)
}

/// How the operator writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the tracing subscriber on stderr (RUST_LOG filters; default info). Colours only
/// when stderr is a terminal, so piped and collected logs carry no escape codes.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    install_logging(format, std::io::stderr().is_terminal(), std::io::stderr);
}

/// Installs the tracing subscriber writing to `file` (plain text, no colours).
pub fn init_logging_to_file(file: std::fs::File) {
    install_logging(LogFormat::Text, false, std::sync::Mutex::new(file));
}

fn install_logging<W>(format: LogFormat, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_arm_operations_without_ids() {
        assert_eq!(
            arm_operation("PUT", "/subscriptions/x/providers/Microsoft.Authorization/roleAssignments/abc"),
            "PutRoleAssignment"
        );
        assert_eq!(
            arm_operation("GET", "/subscriptions/x/resourceGroups/r/providers/Microsoft.Authorization/roleAssignments"),
            "ListRoleAssignments"
        );
        assert_eq!(
            arm_operation("GET", "/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions"),
            "ListRoleDefinitions"
        );
        assert_eq!(
            arm_operation("GET", "/subscriptions/x/resourceGroups/r/providers/Microsoft.Databricks/workspaces/w"),
            "GetWorkspace"
        );
        assert_eq!(arm_operation("POST", "/whatever"), "Other");
    }

    #[test]
    fn renders_every_metric_family() {
        let m = Metrics::new();
        m.observe_reconcile(true, Instant::now());
        m.arm_requests.get_or_create(&ArmLabels { operation: "GetWorkspace".into(), status: "200".into() }).inc();
        let text = m.render();
        for name in [
            "reconciles_total",
            "reconcile_duration_seconds",
            "arm_requests_total",
            "arm_throttled_responses_total",
            "arm_paced_requests_total",
            "arm_pacing_delay_seconds_total",
            "drift_corrections_total",
            "managed_role_assignments",
            "grants",
            "assignments_expiring",
            "expiry_removals_total",
            "leader",
            "build_info",
        ] {
            assert!(text.contains(&format!("dbx_identity_operator_{name}")), "{name} missing:\n{text}");
        }
        assert!(text.contains("operation=\"GetWorkspace\",status=\"200\""), "{text}");
    }
}

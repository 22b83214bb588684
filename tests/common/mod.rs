//! Shared harness for end-to-end tests: the sandbox emulators plus the real Controller.
#![allow(dead_code)]

pub mod control_plane;
pub mod health;
pub mod observability;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant, DatabricksIdentityGrantStatus};
use dbx_identity_operator::azure::credentials::ArmClients;
use dbx_identity_operator::azure::credentials::arm_client;
use dbx_identity_operator::controller::{self, Context, ControllerSettings};
use dbx_identity_operator::policy::evaluate::PolicyMode;
use dbx_identity_operator::sandbox::arm::{FaultConfig, StateConfig};
use dbx_identity_operator::sandbox::estate::SUBSCRIPTION_ID;
use dbx_identity_operator::sandbox::{self, Sandbox, SandboxOptions};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;

pub const SECRET: &str = "reconciler-test-secret";
pub const NS: &str = "team-analytics";

pub struct Harness {
    pub sandbox: Sandbox,
    pub grants: Api<DatabricksIdentityGrant>,
    stop: tokio::sync::watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    /// Assignment names created outside the operator (seeded, adopted, tampered).
    pub foreign: HashSet<String>,
    pub metrics_url: String,
    pub health_url: String,
    /// The controller's clock (moved with the emulator's by [`Harness::advance_clocks`]).
    pub clock: dbx_identity_operator::controller::clock::Clock,
}

pub async fn harness(state: StateConfig) -> Harness {
    harness_with(state, Vec::new(), PolicyMode::Permissive).await
}

pub async fn harness_watching(state: StateConfig, namespaces: Vec<String>) -> Harness {
    harness_with(state, namespaces, PolicyMode::Permissive).await
}

/// `policy_mode`: the reconciler tests use Permissive (they are about reconciliation);
/// the policy tests use Require.
pub async fn harness_with(state: StateConfig, namespaces: Vec<String>, policy_mode: PolicyMode) -> Harness {
    harness_resyncing(state, namespaces, policy_mode, Duration::from_secs(2)).await
}

/// A harness whose grants resync every `resync` (what must happen "within seconds" is tested
/// with a long one, so a resync cannot stand in for it).
pub async fn harness_resyncing(
    state: StateConfig,
    namespaces: Vec<String>,
    policy_mode: PolicyMode,
    resync: Duration,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().to_owned());
    options.arm_state = state;
    options.arm_faults = FaultConfig::default();
    let sandbox = sandbox::start(options).await.expect("sandbox");
    let (settings, credential) = sandbox.in_process_operator(SECRET).expect("operator credential");
    let metrics = dbx_identity_operator::telemetry::Metrics::new();
    // Production retry timings (seconds of backoff) would only slow these behaviour tests down.
    let fast_retry = RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(50),
        max_retries: 2,
        max_delay: azure_core::time::Duration::seconds(2),
        ..Default::default()
    });
    // The operator's own pipeline (pacing included), with quicker retries.
    let mut settings = settings;
    settings.arm_policies =
        vec![Arc::new(dbx_identity_operator::telemetry::ArmMetricsPolicy { metrics: metrics.clone() })];
    settings.pacing_observer = Some(metrics.clone());
    let operator = arm_client(sandbox.arm.url(), credential, &settings, fast_retry).expect("client");
    let metrics_addr = dbx_identity_operator::telemetry::serve_metrics(([127, 0, 0, 1], 0).into(), metrics.clone())
        .await
        .expect("metrics");
    let health_addr = dbx_identity_operator::telemetry::serve_health(([127, 0, 0, 1], 0).into(), metrics.clone())
        .await
        .expect("health");
    let client = sandbox.kube.emulator.client().expect("kube client");
    let ctx = Arc::new(Context::new(
        client.clone(),
        ArmClients::new(settings, operator),
        ControllerSettings {
            resync_interval: resync,
            slow_retry: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(2),
            namespaces,
            policy_mode,
            ..ControllerSettings::default()
        },
        metrics,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clock = ctx.clock.clone();
    let controller = tokio::spawn(controller::run(ctx, stopped));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns"))
        .await
        .expect("namespace");
    let foreign = sandbox.arm.emulator.state().all_assignments().into_iter().map(|a| a.0).collect();
    Harness {
        grants: Api::namespaced(client, NS),
        sandbox,
        stop,
        controller,
        _dir: dir,
        foreign,
        metrics_url: format!("http://{metrics_addr}/metrics"),
        health_url: format!("http://{health_addr}"),
        clock,
    }
}

pub fn grant(name: &str, identity: serde_json::Value, assignments: serde_json::Value) -> DatabricksIdentityGrant {
    serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": name},
        "spec": {"identity": identity, "roleAssignments": assignments},
    }))
    .expect("grant")
}

pub fn rg(name: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{name}")
}

impl Harness {
    pub fn workspace_identity(&self, i: usize) -> serde_json::Value {
        json!({"workspace": {"resourceId": self.sandbox.estate.workspaces[i].id}})
    }

    pub fn connector_identity(&self) -> serde_json::Value {
        json!({"accessConnector": {"resourceId": self.sandbox.estate.access_connectors[0].id}})
    }

    pub async fn apply(&self, g: &DatabricksIdentityGrant) {
        self.grants.create(&PostParams::default(), g).await.expect("create grant");
    }

    /// Polls until `check` holds for the grant (10 s).
    pub async fn wait_for(
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

    /// Waits for Ready=True at the grant's current generation (a Ready left from an earlier
    /// generation does not count).
    pub async fn ready(&self, name: &str) -> DatabricksIdentityGrant {
        self.wait_for(name, "Ready", is_ready).await
    }

    pub async fn gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.grants.get(name).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "{name} was not deleted in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn tuples(&self) -> Vec<(String, String, String)> {
        self.sandbox
            .arm
            .emulator
            .state()
            .all_assignments()
            .into_iter()
            .map(|(name, scope, role, principal, _)| (name, format!("{}|{}", scope.normalized(), role), principal))
            .collect()
    }

    /// Moves Azure's (the emulator's) clock and the controller's forward together.
    pub fn advance_clocks(&self, by: Duration) {
        self.sandbox.arm.emulator.state().advance_clock(by);
        self.clock.advance(by);
    }

    /// Azure = what live grants hold (Assigned/Adopted, Pending entries' last-seen assignments
    /// while Azure cannot be read, and the assignments their Azure PIM schedules carry) ∪
    /// foreign ∪ `retained`; no tuple twice; every Assigned/Adopted one is in Azure.
    pub async fn assert_invariant(&self, retained: &[String]) {
        let live = self.statuses().await;
        let mut wanted: HashSet<String> = HashSet::new();
        let mut by_pim: HashSet<String> = HashSet::new();
        for status in &live {
            for s in &status.managed_schedules {
                let scope = dbx_identity_operator::azure::ResourceId::parse(&s.scope).expect("scope");
                let role = s.role_definition_id.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
                by_pim.insert(format!("{}|{role}|{}", scope.normalized(), s.principal_id.to_ascii_lowercase()));
            }
        }
        let mut unchecked: HashSet<String> = HashSet::new();
        for status in &live {
            for ra in &status.role_assignments {
                let name = ra
                    .assignment_id
                    .as_deref()
                    .map(|id| id.rsplit('/').next().unwrap_or_default().to_ascii_lowercase());
                match (ra.state, name) {
                    (AssignmentState::Assigned | AssignmentState::Adopted, Some(name)) => wanted.insert(name),
                    (AssignmentState::Pending, Some(name)) => unchecked.insert(name),
                    _ => false,
                };
            }
        }
        let azure = self.tuples();
        let mut seen = HashSet::new();
        for (name, tuple, principal) in &azure {
            assert!(seen.insert(format!("{tuple}|{principal}")), "duplicate assignment for {tuple} {principal}");
            let known = wanted.contains(name)
                || unchecked.contains(name)
                || by_pim.contains(&format!("{tuple}|{}", principal.to_ascii_lowercase()))
                || self.foreign.contains(name)
                || retained.iter().any(|r| r.eq_ignore_ascii_case(name));
            assert!(
                known,
                "assignment {name} ({tuple}, principal {principal}) is in Azure but no live grant wants it; statuses of that principal's grants: {:#?}",
                live.iter()
                    .filter(|s| s.principal.as_ref().is_some_and(|p| p.principal_id.eq_ignore_ascii_case(principal)))
                    .collect::<Vec<_>>()
            );
        }
        let names: HashSet<&String> = azure.iter().map(|(n, _, _)| n).collect();
        for w in &wanted {
            assert!(names.contains(w), "a live grant reports {w} but Azure does not have it");
        }
        self.assert_no_secrets_in_api().await;
    }

    /// Stops the harness's own controller (tests that run their own replicas).
    pub async fn stop_controller(&self) {
        let _ = self.stop.send(true);
        for _ in 0..100 {
            if self.controller.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.controller).await;
        self.sandbox.shutdown().await;
    }
}

/// Ready=True, judged at the grant's current generation.
pub fn is_ready(g: &DatabricksIdentityGrant) -> bool {
    let observed = g.status.as_ref().and_then(|s| s.observed_generation);
    observed == g.metadata.generation && condition(g, "Ready").is_some_and(|c| c.0 == "True")
}

pub fn condition(g: &DatabricksIdentityGrant, type_: &str) -> Option<(String, String, String)> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Runs the operator's binary against the harness's sandbox (async: the emulators serve from
/// this runtime meanwhile).
pub async fn cli(h: &Harness, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dbx-identity-operator"))
        .args(args)
        .envs(h.sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run the binary")
}

pub fn guid_of(role_name: &str, h: &Harness) -> uuid::Uuid {
    h.sandbox.arm.emulator.state().role_guid_by_name(role_name).expect("role")
}

/// A second, independent operator context against the same sandbox (another replica).
pub fn replica_context(sandbox: &Sandbox, metrics: Arc<dbx_identity_operator::telemetry::Metrics>) -> Arc<Context> {
    let (settings, credential) = sandbox.in_process_operator(SECRET).expect("operator credential");
    let operator = arm_client(sandbox.arm.url(), credential, &settings, RetryOptions::none()).expect("client");
    let client = sandbox.kube.emulator.client().expect("kube client");
    Arc::new(Context::new(
        client,
        ArmClients::new(settings, operator),
        ControllerSettings {
            resync_interval: Duration::from_secs(2),
            policy_mode: PolicyMode::Permissive,
            ..ControllerSettings::default()
        },
        metrics,
    ))
}

// ---------- scenario records (docs/reliability.md) and the secret scan ----------

/// What must never appear in a log line, a status or an Event.
const SECRET_NEEDLES: [(&str, &str); 3] =
    [("the operator's client secret", SECRET), ("an Authorization header", "Bearer "), ("a JWT (token)", "eyJ")];

static LEAKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static LINES_SCANNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every formatted log line passes through here; lines holding a secret are kept (redacted).
struct ScanningWriter;

impl std::io::Write for ScanningWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LINES_SCANNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let leaks = secrets_in(&String::from_utf8_lossy(buf));
        if !leaks.is_empty() {
            LEAKS.lock().unwrap_or_else(|p| p.into_inner()).extend(leaks);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What secrets a log line holds: one entry per kind found, naming it, with the line redacted.
pub fn secrets_in(line: &str) -> Vec<String> {
    SECRET_NEEDLES
        .iter()
        .filter(|(_, needle)| line.contains(needle))
        .map(|(what, needle)| format!("{what}: {}", line.replace(needle, "<REDACTED>")))
        .collect()
}

/// Sends every log event of this test binary (the operator's, azure_core's, kube's …) through
/// the secret scan, at trace level for the crates that handle credentials.
pub fn scan_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,dbx_identity_operator=trace,azure_core=trace,azure_identity=trace,kube_client=trace,hyper=info,hyper_util=info,h2=info,rustls=info,tower=info,mio=info,tokio=info,runtime=info",
        );
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| ScanningWriter).try_init();
    });
}

/// Log lines scanned so far.
pub fn lines_scanned() -> u64 {
    LINES_SCANNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Log lines so far that held a secret (redacted).
pub fn leaked_in_logs() -> Vec<String> {
    LEAKS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One reliability scenario: started at the top of a test, recorded (pass or fail, duration,
/// runs so far) under `target/tmp/reliability/` when the test ends; `.ci/reliability_report.py`
/// turns the records into docs/reliability.md. A scenario during which a secret reached the
/// logs fails.
pub struct Scenario {
    group: &'static str,
    name: &'static str,
    started: std::time::Instant,
}

pub fn scenario(group: &'static str, name: &'static str) -> Scenario {
    scan_logs();
    Scenario { group, name, started: std::time::Instant::now() }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let leaks = leaked_in_logs();
        let passed = !std::thread::panicking() && leaks.is_empty();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
        let file = dir.join(format!("{}--{}.json", self.group, self.name).replace(['/', ' '], "_"));
        let previous: serde_json::Value =
            std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| json!({}));
        let count = |key: &str| previous[key].as_u64().unwrap_or(0);
        let record = json!({
            "group": self.group,
            "scenario": self.name,
            "runs": count("runs") + 1,
            "passed": count("passed") + u64::from(passed),
            "failed": count("failed") + u64::from(!passed),
            "lastResult": if passed { "pass" } else { "FAIL" },
            "lastSeconds": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&file, serde_json::to_vec_pretty(&record).unwrap_or_default());
        if !std::thread::panicking() && !leaks.is_empty() {
            panic!("secrets reached the logs:\n{}", leaks.join("\n"));
        }
    }
}

impl Harness {
    /// Every grant's status, read untyped: a grant stored with a junk spec (admission off) still
    /// counts.
    pub async fn statuses(&self) -> Vec<DatabricksIdentityGrantStatus> {
        let client = self.sandbox.kube.emulator.client().expect("client");
        let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<DatabricksIdentityGrant>(&()));
        let grants = api.list(&Default::default()).await.expect("grants").items;
        grants
            .iter()
            .filter_map(|g| g.data.get("status"))
            .map(|s| serde_json::from_value(s.clone()).expect("the operator writes readable statuses"))
            .collect()
    }

    /// No secret in any grant's status or in any Event.
    pub async fn assert_no_secrets_in_api(&self) {
        let client = self.sandbox.kube.emulator.client().expect("client");
        let statuses = self.statuses().await;
        let events =
            Api::<k8s_openapi::api::events::v1::Event>::all(client).list(&Default::default()).await.expect("events");
        let text = format!(
            "{}\n{}",
            serde_json::to_string(&statuses).unwrap_or_default(),
            serde_json::to_string(&events.items).unwrap_or_default()
        );
        for (what, needle) in SECRET_NEEDLES {
            assert!(!text.contains(needle), "{what} appears in a status or an Event");
        }
    }
}

// ---------- manifests on disk (examples, fixtures) ----------

/// The YAML documents of a file, as JSON values (empty documents skipped).
pub fn yaml_documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml_ng::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(value).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The `.yaml` files of a directory, sorted.
pub fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

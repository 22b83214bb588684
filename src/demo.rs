//! `dbx-identity-operator demo`: the sandbox, the controller and `examples/` in one process,
//! playing scenarios with a line of narration each and a live status table, then a summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::api::{DatabricksIdentityGrant, GrantPolicy};
use crate::azure::ResourceId;
use crate::azure::client::arm_retry;
use crate::azure::credentials::ArmClients;
use crate::azure::credentials::arm_client;
use crate::controller::{self, Context, ControllerSettings};
use crate::sandbox::estate::SUBSCRIPTION_ID;
use crate::sandbox::{self, Sandbox, SandboxOptions, arm};

/// The examples, compiled in so the demo runs from any directory.
const EXAMPLES: [(&str, &str); 5] = [
    ("00-namespace-team-analytics.yaml", include_str!("../examples/00-namespace-team-analytics.yaml")),
    ("10-grantpolicy-team-analytics.yaml", include_str!("../examples/10-grantpolicy-team-analytics.yaml")),
    (
        "20-workspace-managed-identity-keyvault.yaml",
        include_str!("../examples/20-workspace-managed-identity-keyvault.yaml"),
    ),
    ("30-access-connector-storage-abac.yaml", include_str!("../examples/30-access-connector-storage-abac.yaml")),
    (
        "40-access-connector-user-assigned-eventhub.yaml",
        include_str!("../examples/40-access-connector-user-assigned-eventhub.yaml"),
    ),
];
const NS: &str = "team-analytics";
const DEMO_SECRET: &str = "demo-operator-secret";

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("Azure client: {0}")]
    Azure(#[from] crate::azure::client::AzureSetupError),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot build the Kubernetes client: {0}")]
    KubeClient(String),
    #[error("example {file}: {message}")]
    Example { file: &'static str, message: String },
    #[error("scenario '{scenario}' did not finish within {seconds} s: {detail}")]
    Timeout { scenario: &'static str, seconds: u64, detail: String },
    #[error("cannot create a working directory: {0}")]
    Dir(std::io::Error),
    #[error("audit: {0}")]
    Audit(String),
}

struct Demo {
    sandbox: Sandbox,
    grants: Api<DatabricksIdentityGrant>,
    table: BTreeMap<String, String>,
    started: Instant,
    /// Colours the health column (a terminal without `NO_COLOR`); piped output stays plain.
    colour: bool,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Demo {
    fn clock(&self) -> String {
        format!("[{:>5.1}s]", self.started.elapsed().as_secs_f64())
    }

    /// Prints the rows of the status table that changed.
    async fn refresh(&mut self) {
        let Ok(list) = self.grants.list(&Default::default()).await else { return };
        let mut now = BTreeMap::new();
        for g in list.items {
            let status = g.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            let health = controller::conditions::health_of(&status.conditions).unwrap_or("-");
            let shown = format!("{health:<11}");
            let shown = match (self.colour, health) {
                (false, _) | (_, "-") => shown,
                (true, "Ready") => format!("\x1b[32m{shown}\x1b[0m"),
                (true, "Reconciling") => format!("\x1b[33m{shown}\x1b[0m"),
                (true, _) => format!("\x1b[31m{shown}\x1b[0m"),
            };
            let row = format!(
                "{:<30} {shown} {:<22} {:<9} {:<6} {}",
                g.metadata.name.clone().unwrap_or_default(),
                ready.map_or("-", |c| c.reason.as_str()),
                status.assigned.clone().unwrap_or_else(|| "-".into()),
                status.drift_corrections,
                if g.metadata.deletion_timestamp.is_some() { "deleting" } else { "" },
            );
            now.insert(g.metadata.name.clone().unwrap_or_default(), row);
        }
        for (name, row) in &now {
            if self.table.get(name) != Some(row) {
                say(&format!("{}   {row}", self.clock()));
            }
        }
        for name in self.table.keys().filter(|n| !now.contains_key(*n)) {
            say(&format!("{}   {name:<30} (gone)", self.clock()));
        }
        self.table = now;
    }

    /// Waits until `done` holds, printing table changes; fails after `limit`.
    async fn until<F, Fut>(&mut self, scenario: &'static str, limit: Duration, mut done: F) -> Result<(), DemoError>
    where
        F: FnMut(Api<DatabricksIdentityGrant>) -> Fut,
        Fut: std::future::Future<Output = Result<bool, String>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            self.refresh().await;
            match done(self.grants.clone()).await {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
                Ok(false) => {
                    return Err(DemoError::Timeout {
                        scenario,
                        seconds: limit.as_secs(),
                        detail: "condition not reached".into(),
                    });
                }
                Err(detail) => return Err(DemoError::Timeout { scenario, seconds: limit.as_secs(), detail }),
            }
        }
    }
}

async fn ready(api: &Api<DatabricksIdentityGrant>, name: &str) -> Result<bool, String> {
    let g = api.get(name).await.map_err(|e| e.to_string())?;
    Ok(g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True")
        && g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation)
}

async fn apply_examples(client: &kube::Client) -> Result<(), DemoError> {
    for (file, text) in EXAMPLES {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| DemoError::Example { file, message: e.to_string() })?;
            let bad = |e: serde_json::Error| DemoError::Example { file, message: e.to_string() };
            match value["kind"].as_str() {
                Some("Namespace") => {
                    Api::<Namespace>::all(client.clone())
                        .create(&PostParams::default(), &serde_json::from_value(value).map_err(bad)?)
                        .await?;
                }
                Some("GrantPolicy") => {
                    Api::<GrantPolicy>::all(client.clone())
                        .create(&PostParams::default(), &serde_json::from_value(value).map_err(bad)?)
                        .await?;
                }
                Some("DatabricksIdentityGrant") => {
                    Api::<DatabricksIdentityGrant>::namespaced(client.clone(), NS)
                        .create(&PostParams::default(), &serde_json::from_value(value).map_err(bad)?)
                        .await?;
                }
                other => return Err(DemoError::Example { file, message: format!("unexpected kind {other:?}") }),
            }
        }
    }
    Ok(())
}

/// Runs the demo; with `keep`, leaves everything running for kubectl until Ctrl-C. Logs go to
/// a file whose path it prints (to stderr with `verbose`), so stdout is the story alone.
pub async fn run(keep: bool, verbose: bool) -> Result<(), DemoError> {
    use std::io::IsTerminal;
    let log_file = if verbose {
        crate::telemetry::init_logging(crate::telemetry::LogFormat::Text);
        None
    } else {
        let path = std::env::temp_dir().join(format!("dbx-identity-operator-demo-{}.log", std::process::id()));
        crate::telemetry::init_logging_to_file(std::fs::File::create(&path).map_err(DemoError::Dir)?);
        Some(path)
    };
    let dir = tempfile_dir()?;
    let mut options = SandboxOptions::new(dir.clone());
    // Faster than the sandbox default so the story fits in well under a minute, same shape.
    options.arm_state = arm::StateConfig {
        replication_delay: Duration::from_secs(60),
        replication_delay_with_type: Duration::from_secs(4),
        list_lag: Duration::from_millis(500),
        ..arm::StateConfig::default()
    };
    options.arm_faults = arm::FaultConfig { latency_ms: 15, jitter_ms: 10, ..arm::FaultConfig::default() };
    let sandbox = sandbox::start(options).await?;
    let (settings, credential) = sandbox.in_process_operator(DEMO_SECRET)?;
    let operator = arm_client(sandbox.arm.url(), credential, &settings, arm_retry())?;
    let client = sandbox.kube.emulator.client().map_err(|e| DemoError::KubeClient(e.to_string()))?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        ArmClients::new(settings, operator),
        ControllerSettings {
            resync_interval: Duration::from_secs(3),
            cache_ttl: Duration::from_secs(3),
            ..ControllerSettings::default()
        },
        crate::telemetry::Metrics::new(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let controller_task = tokio::spawn(controller::run(ctx.clone(), stopped));

    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut demo = Demo {
        grants: Api::namespaced(client.clone(), NS),
        sandbox,
        table: BTreeMap::new(),
        started: Instant::now(),
        colour,
    };
    say(&format!(
        "dbx-identity-operator demo — Kubernetes API {} · Azure ARM {}",
        demo.sandbox.kube.url(),
        demo.sandbox.arm.url()
    ));
    let logs = log_file.as_ref().map_or("stderr (--verbose)".to_owned(), |p| p.display().to_string());
    say(&format!("Operator and emulator logs: {logs}\n"));
    say(&format!("{:>8}   {:<30} {:<11} {:<22} {:<9} {:<6}", "", "GRANT", "HEALTH", "REASON", "ASSIGNED", "DRIFT"));
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let examples = ["analytics-prod-keyvault", "unity-catalog-lake-curated", "streaming-telemetry-receiver"];

    // 1. Initial convergence.
    let t = Instant::now();
    say(&format!(
        "{} ▶ Applying examples/: a team namespace, its GrantPolicy and three grants — workspace identity, access connector, user-assigned identity.",
        demo.clock()
    ));
    apply_examples(&client).await?;
    demo.until("initial convergence", Duration::from_secs(30), |api| async move {
        for name in examples {
            if !ready(&api, name).await? {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    timings.push(("initial convergence", t.elapsed()));

    // 2. Drift.
    let t = Instant::now();
    let lake = demo.grants.get("unity-catalog-lake-curated").await?;
    let victim = lake
        .status
        .as_ref()
        .and_then(|s| s.managed_assignments.first())
        .and_then(|id| crate::azure::RoleAssignmentId::parse(id))
        .map(|id| id.name().to_owned())
        .unwrap_or_default();
    say(&format!(
        "{} ▶ Someone deletes the Unity Catalog connector's assignment in the portal ({victim}); the next resync restores it.",
        demo.clock()
    ));
    demo.sandbox.arm.emulator.state().delete_out_of_band(&victim);
    demo.until("drift healed", Duration::from_secs(20), |api| async move {
        let g = api.get("unity-catalog-lake-curated").await.map_err(|e| e.to_string())?;
        Ok(g.status.is_some_and(|s| s.drift_corrections >= 1))
    })
    .await?;
    timings.push(("drift healed", t.elapsed()));

    // 3. A brand-new identity.
    let t = Instant::now();
    let analytics = ResourceId::resource_group(SUBSCRIPTION_ID, "rg-analytics");
    let uai = analytics.with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", "id-ingest");
    let connector = analytics.with_provider_resource("Microsoft.Databricks", "accessConnectors", "ac-ingest");
    {
        let mut state = demo.sandbox.arm.emulator.state();
        state.create_user_assigned_identity(&uai, Duration::ZERO);
        state.add_resource(
            &connector,
            arm::ResourceKind::AccessConnector { system_principal: None, user_assigned: vec![uai.clone()] },
        );
    }
    say(&format!(
        "{} ▶ A new Access Connector with a new identity (id-ingest) is granted at once: Entra has not replicated it yet (PrincipalNotFound); the operator backs off and converges.",
        demo.clock()
    ));
    let fresh: DatabricksIdentityGrant = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant", "metadata": {"name": "ingest-reader"},
        "spec": {"identity": {"accessConnector": {"resourceId": connector.to_string(), "userAssignedIdentityId": uai.to_string()}}, "roleAssignments": [{"role": "Storage Blob Data Reader", "scope": demo.sandbox.estate.scopes.storage_account}]},
    }))
    .map_err(|e| DemoError::Example { file: "ingest-reader", message: e.to_string() })?;
    demo.grants.create(&PostParams::default(), &fresh).await?;
    demo.until(
        "new identity converged",
        Duration::from_secs(30),
        |api| async move { ready(&api, "ingest-reader").await },
    )
    .await?;
    timings.push(("new identity", t.elapsed()));

    // 4. Spec change.
    let t = Instant::now();
    say(&format!(
        "{} ▶ The Key Vault grant also needs Reader on the vault: the spec gains a second role.",
        demo.clock()
    ));
    let vault = demo.sandbox.estate.scopes.key_vault.clone();
    let patch = json!({"spec": {"roleAssignments": [
        {"role": "Key Vault Secrets User", "scope": vault, "description": "dbw-analytics-prod reads secret-scope secrets"},
        {"role": "Reader", "scope": vault},
    ]}});
    demo.grants.patch("analytics-prod-keyvault", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    demo.until("spec change", Duration::from_secs(20), |api| async move {
        let g = api.get("analytics-prod-keyvault").await.map_err(|e| e.to_string())?;
        Ok(ready(&api, "analytics-prod-keyvault").await? && g.status.and_then(|s| s.assigned).as_deref() == Some("2/2"))
    })
    .await?;
    timings.push(("spec change", t.elapsed()));

    // 5. Guardrails.
    let t = Instant::now();
    say(&format!(
        "{} ▶ The team tries to make its connector Owner of the lake: the GrantPolicy denies it (Owner is not an allowed role — and privileged roles would need allowPrivilegedRoles) and nothing reaches Azure.",
        demo.clock()
    ));
    let greedy: DatabricksIdentityGrant = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant", "metadata": {"name": "lake-owner"},
        "spec": {"identity": {"accessConnector": {"resourceId": demo.sandbox.estate.access_connectors[0].id}}, "roleAssignments": [{"role": "Owner", "scope": demo.sandbox.estate.scopes.resource_group}]},
    }))
    .map_err(|e| DemoError::Example { file: "lake-owner", message: e.to_string() })?;
    demo.grants.create(&PostParams::default(), &greedy).await?;
    demo.until("denied by policy", Duration::from_secs(20), |api| async move {
        let g = api.get("lake-owner").await.map_err(|e| e.to_string())?;
        Ok(g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "PolicyCompliant" && c.status == "False"))
    })
    .await?;
    let owner_guid = demo.sandbox.arm.emulator.state().role_guid_by_name("Owner");
    let leaked = demo
        .sandbox
        .arm
        .emulator
        .state()
        .all_assignments()
        .iter()
        .any(|a| Some(a.2) == owner_guid && a.1.to_string().ends_with("rg-lake"));
    if leaked {
        return Err(DemoError::Timeout {
            scenario: "guardrails",
            seconds: 20,
            detail: "an Owner assignment reached Azure".into(),
        });
    }
    timings.push(("guardrails", t.elapsed()));

    // 6. Deletion.
    let t = Instant::now();
    let owned: Vec<String> =
        demo.grants.get("unity-catalog-lake-curated").await?.status.map(|s| s.managed_assignments).unwrap_or_default();
    say(&format!(
        "{} ▶ The Unity Catalog grant is deleted (deletionPolicy: Delete): its {} assignment(s) are removed from Azure before the grant goes.",
        demo.clock(),
        owned.len()
    ));
    demo.grants.delete("unity-catalog-lake-curated", &DeleteParams::default()).await?;
    demo.until("deletion", Duration::from_secs(20), |api| async move {
        Ok(api.get("unity-catalog-lake-curated").await.is_err())
    })
    .await?;
    let remaining = demo.sandbox.arm.emulator.state().all_assignments();
    let leaked: Vec<&String> = owned
        .iter()
        .filter(|id| remaining.iter().any(|a| id.to_ascii_lowercase().ends_with(&a.0.to_ascii_lowercase())))
        .collect();
    if !leaked.is_empty() {
        return Err(DemoError::Timeout {
            scenario: "deletion",
            seconds: 20,
            detail: format!("assignments still in Azure: {leaked:?}"),
        });
    }
    timings.push(("deletion", t.elapsed()));
    demo.refresh().await;

    // Summary.
    say("\nSummary");
    for (scenario, took) in &timings {
        say(&format!("  {scenario:<22} {:>6.1} s", took.as_secs_f64()));
    }
    say("  ARM requests by operation and status:");
    for ((operation, status), count) in demo.sandbox.arm.emulator.stats() {
        say(&format!("    {operation:<26} {status:>3}  {count}"));
    }
    say(&format!("  Azure role assignments now: {}", demo.sandbox.arm.emulator.state().all_assignments().len()));
    audit_summary(&demo.sandbox, &client).await?;
    say(&format!("  total {:.1} s", demo.started.elapsed().as_secs_f64()));
    if let Some(path) = &log_file {
        say(&format!("  logs: {}", path.display()));
    }

    if keep {
        say(&format!(
            "\n--keep: still running. export KUBECONFIG={}; kubectl get dbgrant -A. Ctrl-C stops.",
            demo.sandbox.kubeconfig.display()
        ));
        let _ = tokio::signal::ctrl_c().await;
    }
    // The controller (and its watches) stops before the emulators it talks to.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), controller_task).await;
    demo.sandbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What `dbx-identity-operator audit --kubeconfig …` reports now (read-only; after the ARM
/// statistics above, so those are the operator's alone).
async fn audit_summary(sandbox: &sandbox::Sandbox, client: &kube::Client) -> Result<(), DemoError> {
    use crate::review::{Progress, ReadOnly, audit, discover};
    let (mut settings, credential) = sandbox.in_process_operator(DEMO_SECRET)?;
    settings.arm_policies.push(Arc::new(ReadOnly));
    let arm = arm_client(sandbox.arm.url(), credential, &settings, arm_retry())?;
    let query = discover::EstateQuery {
        subscriptions: vec![crate::sandbox::estate::SUBSCRIPTION_ID.into()],
        resource_groups: Vec::new(),
    };
    let estate = discover::discover(&arm, &query, &Progress::new(true)).await.map_err(DemoError::Audit)?;
    let cluster = crate::review::read_cluster(client).await.map_err(DemoError::Audit)?;
    let report = audit::classify(&estate, &audit::ClusterRecords::from_grants(&cluster.grants));
    say("  `audit` now (who holds what, read-only):");
    for identity in report.identities.iter().filter(|i| !i.assignments.is_empty()) {
        for a in &identity.assignments {
            let scope = a.scope.rsplit('/').next().unwrap_or_default();
            let flags = a.flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(",");
            let flags = if flags.is_empty() { String::new() } else { format!("  ! {flags}") };
            say(&format!("    {:<38} {:<30} {:<18} {}{flags}", identity.label, a.role, scope, a.ownership.label()));
        }
    }
    say(&format!("    {}", report.summary_line()));
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf, DemoError> {
    let dir = std::env::temp_dir().join(format!("dbx-identity-operator-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(DemoError::Dir)?;
    Ok(dir)
}

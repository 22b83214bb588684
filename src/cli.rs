//! Command-line interface. Each subcommand listed here works; later features add theirs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{self, CrdError};
use crate::azure::client::AzureSetupError;
use crate::azure::credentials::{ArmClients, AuthMode, AzureSettings, operator_client};
use crate::controller::{self, ControllerSettings};
#[cfg(feature = "sandbox")]
use crate::sandbox::{self, SandboxError, SandboxOptions};
pub use crate::telemetry::{LogFormat, init_logging};

#[derive(Debug, Parser)]
#[command(
    name = "dbx-identity-operator",
    version,
    about = "Grants Azure RBAC roles to Azure Databricks identities, declaratively"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML (what `crds/` holds).
    Crd {
        /// Instead of printing, write one file per CRD into this directory (e.g. `crds/`).
        #[arg(long, value_name = "DIR")]
        write_dir: Option<PathBuf>,
    },
    #[cfg(feature = "sandbox")]
    /// Play the operator's story on the embedded sandbox (about 20 s): convergence, drift,
    /// a new identity, a spec change, a deletion — then a summary.
    Demo {
        /// Keep the sandbox and controller running afterwards, for kubectl, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Write the operator's and the emulators' logs to stderr instead of a log file.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run the operator: reconcile DatabricksIdentityGrants against Azure until SIGTERM/Ctrl-C.
    Run(Box<RunArgs>),
    #[cfg(feature = "sandbox")]
    /// Run the Kubernetes and Azure emulators with a seeded estate until Ctrl-C.
    Sandbox {
        /// Where to write `kubeconfig`, `azure.env` and `estate.json`.
        #[arg(long, value_name = "DIR", default_value = "sandbox")]
        dir: PathBuf,
        /// Seed for the estate's principal ids (the same seed gives the same estate).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Port of the ARM emulator (HTTPS); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        arm_port: u16,
        /// Port of the Kubernetes emulator (HTTP); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        kube_port: u16,
    },
    /// Read-only: list every role assignment of the Azure Databricks identities in some
    /// subscriptions, who manages it, and what to look at (privileged, data role on a
    /// workspace's managed identity, broad scope, orphaned, duplicate).
    Audit(Box<AuditArgs>),
    /// Read-only: write DatabricksIdentityGrant manifests (managementPolicy Observe) that
    /// reproduce the existing role assignments, and GrantPolicies that allow exactly them.
    Import(Box<ImportArgs>),
    /// Read-only: what Enforce would do for the grants in some manifests (for pull-request
    /// checks). Exit 0: no changes, 2: changes, 1: errors or denials.
    Plan(Box<PlanArgs>),
    /// Print the operator's version.
    Version,
}

/// How to reach Azure (shared by `run` and the read-only commands).
#[derive(Debug, Clone, clap::Args)]
pub struct AzureArgs {
    /// ARM endpoint (sovereign clouds, private endpoints, the sandbox emulator).
    #[arg(long, env = "DBX_ARM_ENDPOINT", default_value = crate::azure::client::DEFAULT_ARM_ENDPOINT)]
    pub arm_endpoint: String,
    /// Extra PEM CA bundle trusted for ARM and Entra token requests.
    #[arg(long, env = "DBX_AZURE_CA_FILE")]
    pub azure_ca_file: Option<PathBuf>,
    /// How to authenticate to Azure.
    #[arg(long, env = "DBX_AZURE_AUTH", value_enum, default_value = "auto")]
    pub azure_auth: AuthMode,
}

/// Which part of Azure `audit` and `import` read.
#[derive(Debug, clap::Args)]
pub struct EstateArgs {
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Subscription id to read (repeatable); default: every subscription the credential can list.
    #[arg(long = "subscription", value_name = "ID")]
    pub subscriptions: Vec<String>,
    /// Only identities in this resource group (repeatable).
    #[arg(long = "resource-group", value_name = "NAME")]
    pub resource_groups: Vec<String>,
    /// A cluster whose grants say which assignments they manage (read only).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Exit 3 when any assignment is flagged.
    Flagged,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub estate: EstateArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: AuditFormat,
    /// Exit 3 when any assignment is flagged (for scheduled checks).
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub estate: EstateArgs,
    /// Namespace of the grants written.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Write one file per grant (and grantpolicies.yaml) into this directory instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Manifest file or directory (repeatable): grants, GrantPolicies, Namespaces.
    #[arg(long = "filename", short = 'f', value_name = "FILE|DIR", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Add the cluster's live grants, policies and namespaces (read only), so removals and
    /// shared assignments are planned as the operator would.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// As the operator's `--policy-mode`: `permissive` lets namespaces no policy governs grant
    /// anything.
    #[arg(long, value_enum, default_value = "require")]
    pub policy_mode: crate::policy::evaluate::PolicyMode,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: PlanFormat,
}

/// Flags of `run`. Each reads an environment variable too, so `azure.env` from the sandbox
/// (or a Helm chart's env) configures it.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub azure: AzureArgs,
    /// How often each grant is compared with Azure (e.g. 30s, 10m, 1h).
    #[arg(long, env = "DBX_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: std::time::Duration,
    /// How often every scope in use is listed to find assignments changed or removed in Azure
    /// (default: the resync interval). One ARM read per scope per interval.
    #[arg(long, env = "DBX_DRIFT_CHECK_INTERVAL", value_parser = parse_duration)]
    pub drift_check_interval: Option<std::time::Duration>,
    /// How long before a time-bound entry's access ends it reads `ExpiringSoon`, with an Event.
    #[arg(long, env = "DBX_EXPIRY_WARNING", default_value = "1h", value_parser = parse_duration)]
    pub expiry_warning: std::time::Duration,
    /// Grants reconciled at once.
    #[arg(long, env = "DBX_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: u16,
    /// In-flight ARM requests per subscription.
    #[arg(long, env = "DBX_MAX_ARM_REQUESTS_PER_SUBSCRIPTION", default_value_t = 8)]
    pub max_arm_requests_per_subscription: usize,
    /// Namespace to watch (repeatable); default all.
    #[arg(long = "namespace", env = "DBX_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// `require`: a namespace no GrantPolicy governs gets nothing. `permissive`: ungoverned
    /// namespaces may grant anything (for trying the operator out only).
    #[arg(long, env = "DBX_POLICY_MODE", value_enum, default_value = "require")]
    pub policy_mode: crate::policy::evaluate::PolicyMode,
    /// Elect a leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "DBX_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "DBX_LEASE_NAME", default_value = "dbx-identity-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the release namespace in Helm).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long a lease lasts without renewal (e.g. 15s).
    #[arg(long, env = "DBX_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "DBX_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    #[arg(long, env = "DBX_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: std::net::SocketAddr,
    /// Log format.
    #[arg(long, env = "DBX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses `90`, `90s`, `500ms`, `15m`, `2h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration such as 30s, 10m or 1h"))?;
    let millis = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("'{text}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if millis == 0 {
        return Err("a duration must be longer than zero".into());
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// Errors a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Crd(#[from] CrdError),
    #[cfg(feature = "sandbox")]
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Azure(#[from] AzureSetupError),
    #[error("cannot reach Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot listen for metrics or health checks: {0}")]
    Listen(#[source] std::io::Error),
    #[error(transparent)]
    Election(#[from] controller::ElectionError),
    #[cfg(feature = "sandbox")]
    #[error("demo: {0}")]
    Demo(#[from] crate::demo::DemoError),
    /// A read-only command could not do its work (the message says what and why).
    #[error("{0}")]
    Review(String),
}

/// Exit code of a successful command run (failures exit 1).
pub type ExitStatus = u8;

/// Runs a command; `Ok` carries the exit code (0, or a command's own: `plan` 2 for changes,
/// `audit --fail-on flagged` 3).
pub async fn run(cli: Cli) -> Result<ExitStatus, CliError> {
    match cli.command {
        Command::Audit(args) => crate::review::commands::audit(*args).await,
        Command::Import(args) => crate::review::commands::import(*args).await,
        Command::Plan(args) => crate::review::commands::plan(*args).await,
        other => run_other(other).await.map(|()| 0),
    }
}

async fn run_other(command: Command) -> Result<(), CliError> {
    match command {
        Command::Crd { write_dir: None } => print(&api::crds_yaml()?),
        Command::Crd { write_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).map_err(|source| CliError::WriteFile { path: dir.clone(), source })?;
            for (file, yaml) in api::crd_documents()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml).map_err(|source| CliError::WriteFile { path, source })?;
            }
            Ok(())
        }
        Command::Run(args) => run_operator(*args).await,
        #[cfg(feature = "sandbox")]
        Command::Demo { keep, verbose } => Ok(crate::demo::run(keep, verbose).await?),
        #[cfg(feature = "sandbox")]
        Command::Sandbox { dir, seed, arm_port, kube_port } => {
            let signals = ShutdownSignals::install()?;
            let mut options = SandboxOptions::new(dir);
            options.seed = seed;
            options.arm_port = arm_port;
            options.kube_port = kube_port;
            let sandbox = sandbox::start(options).await?;
            print(&sandbox_banner(&sandbox))?;
            signals.wait().await;
            print("shutting down\n")?;
            sandbox.shutdown().await;
            Ok(())
        }
        Command::Version => print(&format!("dbx-identity-operator {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Audit(_) | Command::Import(_) | Command::Plan(_) => Ok(()),
    }
}

async fn run_operator(args: RunArgs) -> Result<(), CliError> {
    let signals = ShutdownSignals::install()?;
    init_logging(args.log_format);
    let metrics = crate::telemetry::Metrics::new();
    crate::telemetry::serve_metrics(args.metrics_addr, metrics.clone()).await.map_err(CliError::Listen)?;
    crate::telemetry::serve_health(args.health_addr, metrics.clone()).await.map_err(CliError::Listen)?;
    let settings = AzureSettings {
        arm_policies: vec![std::sync::Arc::new(crate::telemetry::ArmMetricsPolicy { metrics: metrics.clone() })],
        pacing_observer: Some(metrics.clone()),
        ..args.azure.settings()
    };
    let arm = ArmClients::new(settings.clone(), operator_client(&settings)?);
    let client = kube::Client::try_default().await?;
    let ctx = std::sync::Arc::new(controller::Context::new(
        client,
        arm,
        ControllerSettings {
            resync_interval: args.resync_interval,
            drift_check_interval: args.drift_check_interval,
            expiry_warning: args.expiry_warning,
            max_concurrent_reconciles: args.max_concurrent_reconciles,
            max_arm_requests_per_subscription: args.max_arm_requests_per_subscription,
            namespaces: args.namespaces,
            policy_mode: args.policy_mode,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "dbx-identity-operator".into()),
            ..ControllerSettings::default()
        },
        metrics,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutdown requested");
        let _ = stop.send(true);
    });
    let result = if args.leader_election {
        let election = controller::LeaderElection {
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            identity: std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("dbx-identity-operator-{}", std::process::id())),
            lease_duration: args.lease_duration,
        };
        controller::run_with_leader_election(ctx, election, stopped).await.map_err(CliError::from)
    } else {
        controller::run(ctx, stopped).await;
        Ok(())
    };
    signals.abort();
    result
}

#[cfg(feature = "sandbox")]
fn sandbox_banner(sandbox: &sandbox::Sandbox) -> String {
    let dir = sandbox.kubeconfig.parent().map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        "sandbox ready\n  Kubernetes API  {}\n  Azure ARM       {}\n  files           {dir}/kubeconfig, {dir}/azure.env, {dir}/estate.json\n\n\
         Use it:\n  export KUBECONFIG={dir}/kubeconfig\n  kubectl apply -f examples/\n  kubectl get dbgrant -A -w\n\n\
         Ctrl-C stops the sandbox.\n",
        sandbox.kube.url(),
        sandbox.arm.url(),
    )
}

/// SIGINT (Ctrl-C) and SIGTERM handlers. Installed before anything announces readiness, so a
/// signal that arrives right after "ready" is handled, not fatal.
pub struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> Result<Self, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).map_err(CliError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(CliError::Signals)?,
        })
    }

    /// Waits for either signal.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

impl AzureArgs {
    /// Azure settings from the flags, without extra pipeline policies.
    pub fn settings(&self) -> AzureSettings {
        AzureSettings {
            arm_endpoint: self.arm_endpoint.clone(),
            ca_file: self.azure_ca_file.clone(),
            auth: self.azure_auth,
            // Sovereign clouds and the sandbox: the Entra host client-secret and workload-identity
            // credentials use (azure_identity does not read this variable itself).
            authority_host: std::env::var("AZURE_AUTHORITY_HOST").ok().filter(|h| !h.is_empty()),
            arm_policies: Vec::new(),
            pacing_observer: None,
        }
    }
}

pub(crate) fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Stdout)
}

//! Audit benchmark: an estate of Databricks identities and their role assignments, read by
//! `audit` (lists per subscription) and, for comparison, by resolving each identity the way a
//! reconcile does and listing each principal's assignments (one GET or two plus one list per
//! identity). The ARM emulator runs in this process with Azure's read bucket (250, refilled at
//! 25/s) and request latency.
//!
//! ```text
//! cargo bench --bench audit -- [--identities 500] [--assignments 5000] [--latency-ms 40]
//! ```
//!
//! Prints a markdown table (docs/benchmarks.md keeps the last full run).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dbx_identity_operator::api::validation::ValidatedIdentity;
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::client::{ArmClient, arm_retry};
use dbx_identity_operator::azure::credentials::{arm_client, client_secret};
use dbx_identity_operator::azure::models::WorkspaceAccessConnector;
use dbx_identity_operator::controller::resolve::Resolver;
use dbx_identity_operator::review::audit::{ClusterRecords, classify};
use dbx_identity_operator::review::discover::{EstateQuery, discover};
use dbx_identity_operator::review::{Progress, ReadOnly};
use dbx_identity_operator::sandbox::arm::{
    self, ArmEmulatorConfig, ArmEmulatorHandle, FaultConfig, ResourceKind, StateConfig, ThrottleConfig,
};
use dbx_identity_operator::sandbox::estate::{self, OPERATOR_CLIENT_ID, SUBSCRIPTION_ID, TENANT_ID};

#[derive(Parser, Debug)]
#[command(about = "Audit an estate of Databricks identities against the sandbox and report ARM reads and time")]
struct Options {
    /// Identities: half workspaces (their dbmanagedidentity), half Access Connectors.
    #[arg(long, default_value_t = 500)]
    identities: usize,
    /// Role assignments, spread evenly over the identities.
    #[arg(long, default_value_t = 5000)]
    assignments: usize,
    /// ARM emulator latency per request.
    #[arg(long, default_value_t = 40)]
    latency_ms: u64,
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// Added by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const SECRET: &str = "audit-bench";

struct Row {
    strategy: &'static str,
    seconds: f64,
    reads: u64,
    throttled: u64,
    by_operation: BTreeMap<String, u64>,
    found: (usize, usize),
}

fn reads(stats: &BTreeMap<(String, u16), u64>) -> (u64, u64, BTreeMap<String, u64>) {
    let (mut total, mut throttled, mut by) = (0, 0, BTreeMap::new());
    for ((operation, status), n) in stats {
        if operation == "Token" {
            continue;
        }
        total += n;
        if *status == 429 {
            throttled += n;
        }
        *by.entry(operation.clone()).or_insert(0) += n;
    }
    (total, throttled, by)
}

/// Seeds `identities` identities and `assignments` assignments into the emulator's estate.
fn seed(state: &mut arm::ArmState, identities: usize, assignments: usize) -> Vec<ValidatedIdentity> {
    let old = Duration::from_secs(86_400);
    let rg = |name: &str| ResourceId::resource_group(SUBSCRIPTION_ID, name);
    let reader = state.role_guid_by_name("Reader").expect("Reader");
    let blob = state.role_guid_by_name("Storage Blob Data Reader").expect("blob role");
    let groups: Vec<ResourceId> = (0..50).map(|i| rg(&format!("rg-data-{i}"))).collect();
    for g in &groups {
        state.add_resource_group(g);
    }
    let mut principals = Vec::new();
    let mut validated = Vec::new();
    for i in 0..identities {
        let principal = uuid::Uuid::new_v4().to_string();
        state.add_principal(&principal, old);
        if i % 2 == 0 {
            let managed = rg(&format!("rg-dbw-{i}-managed"));
            state.add_resource_group(&managed);
            let mi = managed.with_provider_resource(
                "Microsoft.ManagedIdentity",
                "userAssignedIdentities",
                "dbmanagedidentity",
            );
            state.add_resource(
                &mi,
                ResourceKind::UserAssignedIdentity {
                    principal_id: principal.clone(),
                    client_id: uuid::Uuid::new_v4().to_string(),
                },
            );
            let ws = rg("rg-dbw").with_provider_resource("Microsoft.Databricks", "workspaces", &format!("dbw-{i}"));
            state.add_resource(
                &ws,
                ResourceKind::Workspace {
                    managed_resource_group: managed,
                    access_connector: None::<WorkspaceAccessConnector>,
                },
            );
            validated.push(ValidatedIdentity::WorkspaceManagedIdentity { workspace: ws });
        } else {
            let ac =
                rg("rg-dbw").with_provider_resource("Microsoft.Databricks", "accessConnectors", &format!("ac-{i}"));
            state.add_resource(
                &ac,
                ResourceKind::AccessConnector { system_principal: Some(principal.clone()), user_assigned: vec![] },
            );
            validated.push(ValidatedIdentity::AccessConnector { connector: ac, user_assigned_identity: None });
        }
        principals.push(principal);
    }
    for n in 0..assignments {
        let principal = &principals[n % principals.len()];
        let scope = &groups[(n / principals.len()) % groups.len()];
        state.assign_out_of_band(scope, if n % 3 == 0 { blob } else { reader }, principal);
    }
    validated
}

async fn client(arm: &ArmEmulatorHandle, operator: &str) -> ArmClient {
    let mut settings = arm.client_secret_settings(operator, SECRET);
    settings.arm_policies.push(Arc::new(ReadOnly));
    let credential = client_secret(&settings, TENANT_ID, OPERATOR_CLIENT_ID, SECRET).expect("credential");
    arm_client(arm.url(), credential, &settings, arm_retry()).expect("client")
}

async fn run(options: &Options) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ArmEmulatorConfig::new(TENANT_ID, dir.path().to_owned());
    config.state = StateConfig { assignment_limit: usize::MAX, ..StateConfig::default() };
    config.throttling = ThrottleConfig::default();
    config.faults =
        FaultConfig { latency_ms: options.latency_ms, jitter_ms: options.jitter_ms, ..FaultConfig::default() };
    let arm = arm::start(config).await.expect("emulator");
    let (operator, identities) = {
        let mut state = arm.emulator.state();
        let estate = estate::seed(&mut state, 0);
        (estate.operator_principal_id, seed(&mut state, options.identities, options.assignments))
    };
    let mut rows = Vec::new();

    // audit: lists per subscription.
    let audit_client = client(&arm, &operator).await;
    arm.emulator.set_throttling(ThrottleConfig::default());
    arm.emulator.reset_stats();
    let started = Instant::now();
    let query = EstateQuery { subscriptions: vec![SUBSCRIPTION_ID.into()], resource_groups: Vec::new() };
    let estate = discover(&audit_client, &query, &Progress::new(true)).await.expect("discover");
    let report = classify(&estate, &ClusterRecords::default());
    let seconds = started.elapsed().as_secs_f64();
    let (total, throttled, by_operation) = reads(&arm.emulator.stats());
    rows.push(Row {
        strategy: "audit (lists per subscription)",
        seconds,
        reads: total,
        throttled,
        by_operation,
        found: (report.summary.identities, report.summary.assignments),
    });

    // Per identity, as a reconcile resolves one: GETs, then the principal's assignments.
    let per_identity = client(&arm, &operator).await;
    arm.emulator.set_throttling(ThrottleConfig::default());
    arm.emulator.reset_stats();
    let resolver = Resolver::new(Duration::from_secs(3600));
    let started = Instant::now();
    let subscription = ResourceId::subscription(SUBSCRIPTION_ID);
    let (mut found_identities, mut found_assignments) = (0, 0);
    for identity in &identities {
        let principal = resolver.principal(&per_identity, identity).await.expect("principal");
        found_identities += 1;
        found_assignments += per_identity
            .list_role_assignments_for_principal(&subscription, &principal.principal_id)
            .await
            .expect("list")
            .len();
    }
    let seconds = started.elapsed().as_secs_f64();
    let (total, throttled, by_operation) = reads(&arm.emulator.stats());
    rows.push(Row {
        strategy: "per identity (GETs + list by principal)",
        seconds,
        reads: total,
        throttled,
        by_operation,
        found: (found_identities, found_assignments),
    });
    rows
}

fn main() {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    let rows = runtime.block_on(run(&options));
    println!(
        "Audit of {} identities and {} role assignments, one subscription; ARM read bucket 250 + 25/s, latency {}±{} ms, page size 100.\n",
        options.identities, options.assignments, options.latency_ms, options.jitter_ms
    );
    println!(
        "| strategy | identities, assignments found | ARM reads | 429s | time (s) | floor at 25 reads/s past the burst (s) | reads by operation |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    for row in rows {
        let floor = (row.reads as f64 - 250.0).max(0.0) / 25.0;
        let by = row.by_operation.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", ");
        println!(
            "| {} | {}, {} | {} | {} | {:.1} | {:.1} | {by} |",
            row.strategy, row.found.0, row.found.1, row.reads, row.throttled, row.seconds, floor
        );
    }
}

//! Scale benchmark: how close to ARM's throttling floor the operator converges N grants, and
//! what it costs when nothing changes.
//!
//! The sandbox emulators run in this process; the operator runs as a separate process (the
//! real binary with `run`), so its memory and CPU are measured alone from /proc.
//!
//! ```text
//! cargo bench --bench converge -- [--grants 100,1000,5000] [--throttle-scale 1] \
//!     [--latency-ms 40] [--jitter-ms 10] [--resync-interval 30s] [--no-throttling]
//! ```
//!
//! Writes a markdown table to stdout, and JSON plus a PNG chart under `target/bench/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use dbx_identity_operator::sandbox::arm::{FaultConfig, ProviderLimit, ThrottleConfig};
use dbx_identity_operator::sandbox::kube::KubeFaults;
use dbx_identity_operator::sandbox::workload::{
    self, GrantPlan, ScopeKind, ready_for_current_generation, roles_for, stored_grants,
};
use dbx_identity_operator::sandbox::{self, Sandbox, SandboxOptions};
use kube::api::{Api, Patch, PatchParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::Serialize;
use serde_json::{Value, json};

#[path = "converge/peers.rs"]
mod peers;

const OPERATOR: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");

#[derive(Parser, Debug, Clone)]
#[command(about = "Converge N grants against the sandbox and report time, requests and memory")]
struct Options {
    /// Grant counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    grants: Vec<usize>,
    /// Distinct scopes; default N/10.
    #[arg(long)]
    scopes: Option<usize>,
    /// Multiplies every throttling bucket's size and refill rate (and so divides the floor).
    #[arg(long, default_value_t = 1.0)]
    throttle_scale: f64,
    /// Turns ARM throttling off.
    #[arg(long)]
    no_throttling: bool,
    /// A second throttling profile: Microsoft.Authorization's own limit behind ARM, as
    /// `LIMIT/SECONDS` (Azure/alzlib#168 saw `120/60`), a fixed window answered with 429
    /// `ResourceRequestsThrottled` and no header warning of it (scaled by `--throttle-scale`).
    #[arg(long, value_name = "LIMIT/SECONDS", value_parser = parse_provider_limit)]
    provider_limit: Option<(u32, u64)>,
    /// ARM emulator latency per request.
    #[arg(long, default_value_t = 40)]
    latency_ms: u64,
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// The operator's resync interval (the steady-state phase lasts one).
    #[arg(long, default_value = "30s", value_parser = dbx_identity_operator::cli::parse_duration)]
    resync_interval: Duration,
    /// Gives up on a phase after this long.
    #[arg(long, default_value = "3600s", value_parser = dbx_identity_operator::cli::parse_duration)]
    phase_timeout: Duration,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where JSON, chart and operator logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Cold convergence under faults: 5% ARM 500s, 2% cut connections, 2% Kubernetes API errors
    /// and every 5 s the Kubernetes watches cut. Checks afterwards that no tuple is assigned
    /// twice and every assignment is on some grant's record.
    #[arg(long)]
    faults: bool,
    /// Runs the operator under this command (e.g. `heaptrack -o target/bench/heap`) to profile it.
    #[arg(long)]
    wrap: Option<String>,
    /// The operator binary to measure (default: the one `cargo bench` built, with the sandbox
    /// feature); e.g. the image's build, `--no-default-features --features jemalloc`.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Also run the peers on the same estate and throttling (a scripted CLI loop, a blind-PUT
    /// controller), each on a fresh sandbox, and print them next to the operator.
    #[arg(long)]
    peers: bool,
    /// Added by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_provider_limit(text: &str) -> Result<(u32, u64), String> {
    let (limit, seconds) =
        text.split_once('/').ok_or_else(|| format!("'{text}': expected LIMIT/SECONDS, e.g. 120/60"))?;
    let limit: u32 = limit.trim().parse().map_err(|_| format!("'{limit}' is not a request count"))?;
    let seconds: u64 =
        seconds.trim().trim_end_matches('s').parse().map_err(|_| format!("'{seconds}' is not seconds"))?;
    if limit == 0 || seconds == 0 {
        return Err("the limit and the window must be above zero".into());
    }
    Ok((limit, seconds))
}

// ---------- measurement helpers ----------

type Stats = BTreeMap<(String, u16), u64>;

#[derive(Debug, Default, Clone, Serialize)]
struct Requests {
    reads: u64,
    writes: u64,
    deletes: u64,
    throttled: u64,
    errors: u64,
    /// By operation (any status).
    by_operation: BTreeMap<String, u64>,
}

fn requests_between(before: &Stats, after: &Stats) -> Requests {
    let mut r = Requests::default();
    for ((operation, status), n) in after {
        let n = n - before.get(&(operation.clone(), *status)).copied().unwrap_or(0);
        if n == 0 || operation == "Token" {
            continue;
        }
        *r.by_operation.entry(operation.clone()).or_default() += n;
        if *status == 429 {
            r.throttled += n;
        } else if *status >= 500 || *status == 0 {
            r.errors += n;
        }
        if operation.starts_with("Put") {
            r.writes += n;
        } else if operation.starts_with("Delete") {
            r.deletes += n;
        } else {
            r.reads += n;
        }
    }
    r
}

/// Kubernetes writes (not GET/LIST/WATCH) logged since `from`, minus `own` made by the bench.
fn kube_writes_since(sandbox: &Sandbox, from: usize, own: usize) -> usize {
    kube_writes_by_target(sandbox, from).values().sum::<usize>().saturating_sub(own)
}

/// Kubernetes writes since `from` by `verb resource[/subresource]` (e.g. `patch
/// databricksidentitygrants/status`, `create events`, `update leases`).
fn kube_writes_by_target(sandbox: &Sandbox, from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in sandbox.kube.emulator.requests().iter().skip(from) {
        if matches!(r.verb.as_str(), "get" | "list" | "watch") {
            continue;
        }
        let target = if r.subresource.is_empty() {
            format!("{} {}", r.verb, r.resource)
        } else {
            format!("{} {}/{}", r.verb, r.resource, r.subresource)
        };
        *out.entry(target).or_insert(0) += 1;
    }
    out
}

fn kube_log_len(sandbox: &Sandbox) -> usize {
    sandbox.kube.emulator.requests().len()
}

/// Ready at the current generation.
fn ready_and_current(grant: &Value) -> bool {
    ready_for_current_generation(grant).is_some_and(|(status, _)| status == "True")
}

/// No tuple twice in Azure, and every assignment not seeded is on some grant's record.
fn check_invariant(sandbox: &Sandbox, seeded: &std::collections::HashSet<String>) -> Result<(), String> {
    let recorded: std::collections::HashSet<String> = stored_grants(sandbox)
        .iter()
        .flat_map(|g| g.pointer("/status/managedAssignments").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|id| id.as_str().and_then(|id| id.rsplit('/').next()).map(str::to_ascii_lowercase))
        .collect();
    let mut tuples = std::collections::HashSet::new();
    for (name, scope, role, principal, _) in sandbox.arm.emulator.state().all_assignments() {
        if !tuples.insert(format!("{}|{role}|{principal}", scope.normalized())) {
            return Err(format!("invariant: tuple of {name} assigned twice"));
        }
        if !seeded.contains(&name) && !recorded.contains(&name.to_ascii_lowercase()) {
            return Err(format!("invariant: {name} at {scope} is on no grant's record"));
        }
    }
    Ok(())
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if done() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("{what}: not done after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Peak RSS (VmHWM) and current RSS in bytes, and CPU seconds (user + system) of a process.
fn process_usage(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hwm_kib = kib("VmHWM:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY-free: sysconf is not exposed without libc; Linux's USER_HZ is 100.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (hwm_kib * 1024, kib("VmRSS:") * 1024, cpu)
}

// ---------- the run for one N ----------

#[derive(Debug, Default, Clone, Serialize)]
struct Row {
    grants: usize,
    scopes: usize,
    identities: usize,
    unique_assignments: usize,
    throttle_scale: f64,
    cold_seconds: f64,
    floor_seconds: f64,
    efficiency: f64,
    cold_requests: Requests,
    steady_period_seconds: f64,
    steady_requests: Requests,
    steady_kube_writes: usize,
    drift_deleted: usize,
    drift_seconds: f64,
    drift_requests: Requests,
    churn_grants: usize,
    churn_seconds: f64,
    churn_requests: Requests,
    cold_kube_writes: usize,
    /// Cold Kubernetes writes by `verb resource[/subresource]`.
    cold_kube_writes_by: BTreeMap<String, usize>,
    peak_rss_bytes: u64,
    final_rss_bytes: u64,
    bytes_per_grant: f64,
    cpu_seconds: f64,
    /// SIGTERM and a new process: until every grant was reconciled once.
    restart_seconds: f64,
    restart_requests: Requests,
    restart_kube_writes: usize,
    restart_kube_writes_by: BTreeMap<String, usize>,
    /// The restart's reads (at their bound) beyond the read bucket's burst, at its refill rate.
    restart_floor_seconds: f64,
    /// SIGTERM to the leader of two replicas: until the standby has reconciled every grant.
    failover_seconds: f64,
    failover_requests: Requests,
    failover_kube_writes_by: BTreeMap<String, usize>,
    /// Churn: Kubernetes writes by the operator (the bench's own spec patches not counted).
    churn_kube_writes: usize,
    churn_kube_writes_by: BTreeMap<String, usize>,
    /// Scopes + identity GETs + distinct (role, scope): what a restart should read at most.
    restart_read_bound: usize,
}

/// The least time Azure's limits allow: reads and writes beyond each burst at the refill rate,
/// and Microsoft.Authorization's requests beyond its first window at one window per `limit`
/// (the largest of these), plus one grant's chain of dependent requests.
fn throttling_floor(throttle: &ThrottleConfig, reads: f64, writes: f64, authorization: f64, latency: Duration) -> f64 {
    let chain = 4.0 * latency.as_secs_f64();
    if !throttle.enabled {
        return chain;
    }
    let beyond = |n: f64, b: dbx_identity_operator::sandbox::arm::throttle::Bucket| {
        if b.per_second > 0.0 { ((n - b.burst).max(0.0)) / b.per_second } else { 0.0 }
    };
    let provider = throttle
        .providers
        .iter()
        .filter(|p| p.provider.eq_ignore_ascii_case("Microsoft.Authorization"))
        .map(|p| ((authorization - f64::from(p.limit)).max(0.0) / f64::from(p.limit)).ceil() * p.window_seconds as f64)
        .fold(0.0, f64::max);
    beyond(reads, throttle.reads).max(beyond(writes, throttle.writes)).max(provider) + chain
}

struct Operator {
    child: Child,
}

impl Operator {
    fn start(sandbox: &Sandbox, options: &Options, log: &Path) -> Result<Self, String> {
        Self::start_on(sandbox, options, log, 0, options.resync_interval, &[])
    }

    /// With `/metrics` on `metrics_port` (0: any), resyncing every `resync`, with `extra`
    /// arguments to `run`.
    fn start_on(
        sandbox: &Sandbox,
        options: &Options,
        log: &Path,
        metrics_port: u16,
        resync: Duration,
        extra: &[&str],
    ) -> Result<Self, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let binary = options.operator.as_deref().unwrap_or(Path::new(OPERATOR));
        let mut command = match &options.wrap {
            Some(wrap) => {
                let mut parts = wrap.split_whitespace();
                let mut command = Command::new(parts.next().unwrap_or("env"));
                command.args(parts).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["run", "--health-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--resync-interval")
            .arg(format!("{}ms", resync.as_millis()))
            .args(extra)
            .envs(sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", &sandbox.kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Operator { child })
    }

    fn usage(&self) -> (u64, u64, f64) {
        process_usage(self.child.id())
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the operator exited: {status}")),
            Err(e) => Err(format!("cannot check the operator: {e}")),
        }
    }
}

impl Drop for Operator {
    /// SIGTERM first, so a profiler wrapping the operator (--wrap) can write its data.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sandbox every run starts from: the options' latency and throttling.
async fn start_sandbox(options: &Options, dir: &Path) -> Result<(Sandbox, ThrottleConfig), String> {
    let mut sandbox_options = SandboxOptions::new(dir.to_owned());
    sandbox_options.arm_faults =
        FaultConfig { latency_ms: options.latency_ms, jitter_ms: options.jitter_ms, ..FaultConfig::default() };
    let throttle = if options.no_throttling {
        ThrottleConfig { enabled: false, ..ThrottleConfig::default() }
    } else {
        let providers = options
            .provider_limit
            .map(|(limit, window_seconds)| ProviderLimit { limit, window_seconds, ..ProviderLimit::authorization() })
            .into_iter()
            .collect();
        ThrottleConfig { providers, ..ThrottleConfig::default() }.scaled(options.throttle_scale)
    };
    sandbox_options.throttling = throttle.clone();
    let sandbox = sandbox::start(sandbox_options).await.map_err(|e| e.to_string())?;
    Ok((sandbox, throttle))
}

/// Runs the peers on fresh sandboxes with the same estate (seed) as the operator's run.
async fn run_peers(n: usize, options: &Options) -> Result<Vec<peers::PeerRow>, String> {
    let mut rows = Vec::new();
    for peer in [peers::Peer::Script, peers::Peer::BlindPut] {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (sandbox, _) = start_sandbox(options, dir.path()).await?;
        let scopes = options.scopes.unwrap_or((n / 10).max(1));
        let workload = workload::build(&sandbox, n, scopes, options.seed);
        let row = peers::run(peer, &sandbox, &workload, options.resync_interval, options.phase_timeout).await;
        sandbox.shutdown().await;
        rows.push(row?);
    }
    Ok(rows)
}

async fn run_one(n: usize, options: &Options) -> Result<Row, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (sandbox, throttle) = start_sandbox(options, dir.path()).await?;
    let scopes = options.scopes.unwrap_or((n / 10).max(1));
    let workload = workload::build(&sandbox, n, scopes, options.seed);
    let client = sandbox.kube.emulator.client().map_err(|e| e.to_string())?;

    // Namespaces, the policy allowing them, then every grant (before the operator starts, so
    // the clock measures the operator alone).
    workload.create(&sandbox, client.clone()).await.map_err(|e| e.to_string())?;

    // 1. Cold convergence.
    std::fs::create_dir_all(&options.out).map_err(|e| e.to_string())?;
    let log = options.out.join(format!("operator-{n}.log"));
    let seeded: std::collections::HashSet<String> =
        sandbox.arm.emulator.state().all_assignments().into_iter().map(|(name, ..)| name).collect();
    let fault_driver = options.faults.then(|| workload::start_faults(&sandbox));
    let stats0 = sandbox.arm.emulator.stats();
    let kube0 = kube_log_len(&sandbox);
    let mut operator = Operator::start(&sandbox, options, &log)?;
    let started = Instant::now();
    loop {
        let grants = stored_grants(&sandbox);
        if grants.len() == n && grants.iter().all(ready_and_current) {
            break;
        }
        operator.check_alive()?;
        if started.elapsed() > options.phase_timeout {
            let ready = grants.iter().filter(|g| ready_and_current(g)).count();
            return Err(format!(
                "cold convergence: {ready}/{n} ready after {:?}; see {}",
                options.phase_timeout,
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cold = started.elapsed();
    if let Some(driver) = fault_driver {
        driver.abort();
        sandbox.arm.emulator.set_faults(FaultConfig {
            latency_ms: options.latency_ms,
            jitter_ms: options.jitter_ms,
            ..FaultConfig::default()
        });
        sandbox.kube.emulator.set_faults(KubeFaults::default());
    }
    let stats1 = sandbox.arm.emulator.stats();
    let cold_requests = requests_between(&stats0, &stats1);
    let cold_kube_writes = kube_writes_since(&sandbox, kube0, 0);
    let cold_kube_writes_by = kube_writes_by_target(&sandbox, kube0);
    let latency = Duration::from_millis(options.latency_ms);
    let floor = estate_floor(&throttle, &workload, &sandbox, latency, Writes::Included);

    // 2. Steady state: one full resync period with nothing changed.
    let period = options.resync_interval;
    let kube1 = kube_log_len(&sandbox);
    tokio::time::sleep(period).await;
    operator.check_alive()?;
    let stats2 = sandbox.arm.emulator.stats();
    let steady_requests = requests_between(&stats1, &stats2);
    let steady_kube_writes = kube_writes_since(&sandbox, kube1, 0);

    // 3. Drift: 1% of the assignments deleted out of band.
    let mut rng = StdRng::seed_from_u64(options.seed.wrapping_add(n as u64));
    let deleted: Vec<String> = {
        let mut state = sandbox.arm.emulator.state();
        let managed: Vec<String> = state
            .all_assignments()
            .into_iter()
            .filter(|(_, scope, _, _, _)| {
                scope.resource_group_name().is_some_and(|rg| rg.starts_with("rg-data") || rg.starts_with("rg-project"))
            })
            .map(|(name, ..)| name)
            .collect();
        let count = (managed.len() / 100).max(1);
        let chosen: Vec<String> = managed.choose_multiple(&mut rng, count).cloned().collect();
        for name in &chosen {
            state.delete_out_of_band(name);
        }
        chosen
    };
    let drift_time = wait_until("drift healing", options.phase_timeout, || {
        let state = sandbox.arm.emulator.state();
        let names: std::collections::HashSet<String> =
            state.all_assignments().into_iter().map(|(name, ..)| name).collect();
        deleted.iter().all(|d| names.contains(d))
    })
    .await?;
    // Let in-flight status patches land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats3 = sandbox.arm.emulator.stats();
    let drift_requests = requests_between(&stats2, &stats3);

    // 4. Churn: 10% of grants get a changed spec (one assignment replaced by another role).
    let churned: Vec<&GrantPlan> = workload.grants.choose_multiple(&mut rng, (n / 10).max(1)).collect();
    let kube3 = kube_log_len(&sandbox);
    for plan in &churned {
        let mut assignments = plan.assignments.clone();
        let (scope, kind) = workload.scopes.choose(&mut rng).cloned().unwrap_or((String::new(), ScopeKind::Storage));
        let role = roles_for(kind)
            .into_iter()
            .find(|r| !assignments.iter().any(|(ar, s)| ar == r && *s == scope))
            .unwrap_or("Reader");
        assignments.pop();
        assignments.push((role.to_owned(), scope));
        let api: Api<dbx_identity_operator::api::DatabricksIdentityGrant> =
            Api::namespaced(client.clone(), &plan.namespace);
        let patch = json!({"spec": {"roleAssignments": workload::assignments_json(&assignments)}});
        api.patch(&plan.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("churn {}: {e}", plan.name))?;
    }
    let churn_time = wait_until("churn", options.phase_timeout, || {
        let grants = stored_grants(&sandbox);
        grants.len() == n && grants.iter().all(ready_and_current)
    })
    .await?;
    let stats4 = sandbox.arm.emulator.stats();
    let churn_requests = requests_between(&stats3, &stats4);
    // Let the last status patches land; the bench's own spec patches are not the operator's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let churn_kube_writes = kube_writes_since(&sandbox, kube3, churned.len());
    let mut churn_kube_writes_by = kube_writes_by_target(&sandbox, kube3);
    if let Some(own) = churn_kube_writes_by.get_mut("patch databricksidentitygrants") {
        *own = own.saturating_sub(churned.len());
    }

    check_invariant(&sandbox, &seeded)?;

    // 5. Resources for the whole run.
    operator.check_alive()?;
    let (peak_rss, final_rss, cpu) = operator.usage();

    // 6. Restart: SIGTERM, then a new process, until it has reconciled every grant once. The
    // new process resyncs at the operator's default interval: with the bench's short one, a
    // restart longer than the interval lists its scopes again before it has checked every grant.
    drop(operator);
    let stats5 = sandbox.arm.emulator.stats();
    let kube5 = kube_log_len(&sandbox);
    let port = free_port()?;
    let mut restarted = Operator::start_on(
        &sandbox,
        options,
        &options.out.join(format!("operator-{n}-restart.log")),
        port,
        DEFAULT_RESYNC,
        &[],
    )?;
    let restart_seconds = until_reconciled(&mut restarted, port, n, options.phase_timeout).await?;
    // Let the last reconciles' writes (if any) land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_requests = requests_between(&stats5, &sandbox.arm.emulator.stats());
    let restart_kube_writes = kube_writes_since(&sandbox, kube5, 0);
    let restart_kube_writes_by = kube_writes_by_target(&sandbox, kube5);
    drop(restarted);

    // 7. Leader failover: two replicas with leader election; the leader, having reconciled
    // every grant, gets SIGTERM (a rolling update), and the standby takes over.
    let election = ["--leader-election", "--lease-namespace", "default"];
    let (port_a, port_b) = (free_port()?, free_port()?);
    let mut leader = Operator::start_on(
        &sandbox,
        options,
        &options.out.join(format!("operator-{n}-leader.log")),
        port_a,
        DEFAULT_RESYNC,
        &election,
    )?;
    until_reconciled(&mut leader, port_a, n, options.phase_timeout).await?;
    let mut standby = Operator::start_on(
        &sandbox,
        options,
        &options.out.join(format!("operator-{n}-standby.log")),
        port_b,
        DEFAULT_RESYNC,
        &election,
    )?;
    // The standby is up and waiting for the lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats6 = sandbox.arm.emulator.stats();
    let kube6 = kube_log_len(&sandbox);
    drop(leader);
    let failover_seconds = until_reconciled(&mut standby, port_b, n, options.phase_timeout).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failover_requests = requests_between(&stats6, &sandbox.arm.emulator.stats());
    let failover_kube_writes_by = kube_writes_by_target(&sandbox, kube6);
    drop(standby);
    let restart_floor_seconds = estate_floor(&throttle, &workload, &sandbox, latency, Writes::None);
    sandbox.shutdown().await;
    Ok(Row {
        grants: n,
        scopes: workload.scopes.len(),
        identities: workload.identities,
        unique_assignments: workload.unique_tuples,
        throttle_scale: if options.no_throttling { 0.0 } else { options.throttle_scale },
        cold_seconds: cold.as_secs_f64(),
        floor_seconds: floor,
        efficiency: floor / cold.as_secs_f64(),
        cold_requests,
        steady_period_seconds: period.as_secs_f64(),
        steady_requests,
        steady_kube_writes,
        drift_deleted: deleted.len(),
        drift_seconds: drift_time.as_secs_f64(),
        drift_requests,
        churn_grants: churned.len(),
        churn_seconds: churn_time.as_secs_f64(),
        churn_requests,
        cold_kube_writes,
        cold_kube_writes_by,
        peak_rss_bytes: peak_rss,
        final_rss_bytes: final_rss,
        bytes_per_grant: peak_rss as f64 / n as f64,
        cpu_seconds: cpu,
        restart_seconds,
        restart_requests,
        restart_kube_writes,
        restart_kube_writes_by,
        restart_floor_seconds,
        failover_seconds,
        failover_requests,
        failover_kube_writes_by,
        churn_kube_writes,
        churn_kube_writes_by,
        restart_read_bound: restart_read_bound(&workload),
    })
}

/// Reads a restart needs at most: each scope listed once, each identity resolved once and each
/// (role, scope) looked up once.
fn restart_read_bound(workload: &workload::Workload) -> usize {
    workload.scopes.len() + identity_reads(workload) + workload.role_lookups.values().sum::<usize>()
}

/// GETs resolving the estate's identities: a workspace's managed identity is two (the workspace,
/// then the identity), an access connector one.
fn identity_reads(workload: &workload::Workload) -> usize {
    let identities: std::collections::BTreeMap<String, bool> =
        workload.grants.iter().map(|g| (g.identity.to_string(), g.identity.get("workspace").is_some())).collect();
    identities.values().map(|workspace| if *workspace { 2 } else { 1 }).sum()
}

/// The operator's default `--resync-interval`, which the restart and failover phases use.
const DEFAULT_RESYNC: Duration = Duration::from_secs(600);

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Seconds until the operator on `port` has reconciled `n` grants (successfully).
async fn until_reconciled(operator: &mut Operator, port: u16, n: usize, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/metrics");
    loop {
        if reconciled(&url).await >= n as f64 {
            return Ok(started.elapsed().as_secs_f64());
        }
        operator.check_alive()?;
        if started.elapsed() > timeout {
            return Err(format!("fewer than {n} reconciles after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a floor counts the estate's writes (cold) or only its reads (a restart).
#[derive(Clone, Copy, PartialEq)]
enum Writes {
    Included,
    None,
}

/// The estate's floor: each subscription's buckets bound it separately (the slowest counts).
/// Identity reads land on the sandbox's own subscription; role lookups (one per role and scope,
/// as the restart bound counts them) on the scope's; Microsoft.Authorization serves the scope
/// lists, the role lookups and the writes.
fn estate_floor(
    throttle: &ThrottleConfig,
    workload: &workload::Workload,
    sandbox: &Sandbox,
    latency: Duration,
    writes: Writes,
) -> f64 {
    let home = sandbox.estate.subscription_id.to_ascii_lowercase();
    workload
        .per_subscription
        .iter()
        .map(|(subscription, (assignments, scopes))| {
            let roles = workload.role_lookups.get(subscription).copied().unwrap_or(0);
            let identities = if *subscription == home { identity_reads(workload) } else { 0 };
            let writes = if writes == Writes::Included { *assignments } else { 0 };
            throttling_floor(
                throttle,
                (scopes + roles + identities) as f64,
                writes as f64,
                (scopes + roles + writes) as f64,
                latency,
            )
        })
        .fold(0.0, f64::max)
}

/// `reconciles_total{result="ok"}` of a running operator (0 until it answers).
async fn reconciled(url: &str) -> f64 {
    let Ok(response) = reqwest::get(url).await else { return 0.0 };
    let Ok(text) = response.text().await else { return 0.0 };
    text.lines()
        .filter(|l| l.starts_with("dbx_identity_operator_reconciles_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------- output ----------

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn table(rows: &[Row], options: &Options) -> String {
    let mut out = String::new();
    let throttling = match (options.no_throttling, options.provider_limit) {
        (true, _) => "off".to_owned(),
        (false, None) => format!("Azure's buckets × {}", options.throttle_scale),
        (false, Some((limit, seconds))) => format!(
            "Azure's buckets and Microsoft.Authorization's own limit of {limit} per {seconds} s (fixed window, no warning header), × {}",
            options.throttle_scale
        ),
    };
    out.push_str(&format!(
        "ARM latency {} ± {} ms · throttling {throttling} · resync interval {:?}{}\n\n",
        options.latency_ms,
        options.jitter_ms,
        options.resync_interval,
        if options.faults {
             " · cold phase under faults (5% ARM 500s, 2% cut connections, 2% Kubernetes API errors, watches cut every 5 s)"
        } else {
            ""
        }
    ));
    out.push_str("| N | scopes | assignments | cold (s) | floor (s) | efficiency | cold ARM reads / writes / 429 | K8s writes cold | steady ARM reads / writes | steady K8s writes | drift healed (s) | drift ARM reads / writes | churn (s) | churn ARM reads / writes | peak / final RSS (MiB) | bytes/grant | CPU (s) |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} / {} / {} | {} | {} / {} | {} | {} in {:.1} | {} / {} | {:.1} | {} / {} | {:.1} / {:.1} | {:.0} | {:.1} |\n",
            r.grants,
            r.scopes,
            r.unique_assignments,
            r.cold_seconds,
            r.floor_seconds,
            r.efficiency,
            r.cold_requests.reads,
            r.cold_requests.writes,
            r.cold_requests.throttled,
            r.cold_kube_writes,
            r.steady_requests.reads,
            r.steady_requests.writes + r.steady_requests.deletes,
            r.steady_kube_writes,
            r.drift_deleted,
            r.drift_seconds,
            r.drift_requests.reads,
            r.drift_requests.writes,
            r.churn_seconds,
            r.churn_requests.reads,
            r.churn_requests.writes + r.churn_requests.deletes,
            mib(r.peak_rss_bytes),
            mib(r.final_rss_bytes),
            r.bytes_per_grant,
            r.cpu_seconds,
        ));
    }
    out.push_str("\nRestart and failover (until every grant was reconciled once; both at the default resync interval of 10 min). Restart: SIGTERM, a new process. Failover: two replicas with leader election, SIGTERM to the leader:\n\n| N | phase | time (s) | floor at the read bucket (s) | ARM reads (bound: scopes + identity GETs + distinct role at scope) | ARM writes | 429s | K8s writes |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let failover_writes: usize = r.failover_kube_writes_by.values().sum();
        for (phase, seconds, req, writes) in [
            ("restart", r.restart_seconds, &r.restart_requests, r.restart_kube_writes),
            ("failover", r.failover_seconds, &r.failover_requests, failover_writes),
        ] {
            out.push_str(&format!(
                "| {} | {phase} | {:.1} | {:.1} | {} ({}) | {} | {} | {} |\n",
                r.grants,
                seconds,
                r.restart_floor_seconds,
                req.reads,
                r.restart_read_bound,
                req.writes + req.deletes,
                req.throttled,
                writes,
            ));
        }
    }
    out.push_str("\nKubernetes writes by the operator (per grant: cold over N, churn over the changed grants):\n\n| N | phase | writes | per grant | by request |\n|---|---|---|---|---|\n");
    for r in rows {
        for (phase, total, per, by) in [
            ("cold", r.cold_kube_writes, r.grants, &r.cold_kube_writes_by),
            ("churn", r.churn_kube_writes, r.churn_grants, &r.churn_kube_writes_by),
            ("restart", r.restart_kube_writes, r.grants, &r.restart_kube_writes_by),
            ("failover", r.failover_kube_writes_by.values().sum(), r.grants, &r.failover_kube_writes_by),
        ] {
            let ops: Vec<String> = by.iter().filter(|(_, n)| **n > 0).map(|(op, n)| format!("{op} {n}")).collect();
            out.push_str(&format!(
                "| {} | {phase} | {total} | {:.2} | {} |\n",
                r.grants,
                total as f64 / per.max(1) as f64,
                ops.join(", ")
            ));
        }
    }
    out.push_str("\nARM requests by operation:\n\n| N | phase | requests |\n|---|---|---|\n");
    for r in rows {
        for (phase, req) in [
            ("cold", &r.cold_requests),
            ("steady", &r.steady_requests),
            ("drift", &r.drift_requests),
            ("churn", &r.churn_requests),
            ("restart", &r.restart_requests),
            ("failover", &r.failover_requests),
        ] {
            let ops: Vec<String> = req.by_operation.iter().map(|(op, n)| format!("{op} {n}")).collect();
            out.push_str(&format!("| {} | {phase} | {} |\n", r.grants, ops.join(", ")));
        }
    }
    out
}

fn chart(rows: &[Row], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "cannot register the chart font".to_owned())?;
    let root = BitMapBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(550);
    let max_n = rows.iter().map(|r| r.grants).max().unwrap_or(1) as f64 * 1.05;
    let max_t = rows.iter().map(|r| r.cold_seconds.max(r.floor_seconds)).fold(1.0, f64::max) * 1.1;
    let mut time = ChartBuilder::on(&left)
        .caption("Cold convergence vs throttling floor", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_n, 0f64..max_t)
        .map_err(|e| e.to_string())?;
    time.configure_mesh().x_desc("grants").y_desc("seconds").draw().map_err(|e| e.to_string())?;
    time.draw_series(LineSeries::new(rows.iter().map(|r| (r.grants as f64, r.cold_seconds)), BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("measured")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    time.draw_series(rows.iter().map(|r| Circle::new((r.grants as f64, r.cold_seconds), 4, BLUE.filled())))
        .map_err(|e| e.to_string())?;
    time.draw_series(LineSeries::new(rows.iter().map(|r| (r.grants as f64, r.floor_seconds)), RED.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("throttling floor")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    time.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| e.to_string())?;

    let max_r = rows
        .iter()
        .map(|r| (r.cold_requests.reads + r.cold_requests.writes + r.cold_requests.deletes) as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let mut requests = ChartBuilder::on(&right)
        .caption("ARM requests to converge", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_n, 0f64..max_r)
        .map_err(|e| e.to_string())?;
    requests.configure_mesh().x_desc("grants").y_desc("requests").draw().map_err(|e| e.to_string())?;
    for (label, color, value) in [
        ("writes (PUT)", BLUE, Box::new(|r: &Row| r.cold_requests.writes as f64) as Box<dyn Fn(&Row) -> f64>),
        ("reads", GREEN, Box::new(|r: &Row| r.cold_requests.reads as f64)),
        ("assignments needed", RED, Box::new(|r: &Row| r.unique_assignments as f64)),
    ] {
        requests
            .draw_series(LineSeries::new(rows.iter().map(|r| (r.grants as f64, value(r))), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    requests.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn main() {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    let mut peer_tables = String::new();
    for &n in &options.grants {
        eprintln!("converge: N = {n} …");
        match runtime.block_on(run_one(n, &options)) {
            Ok(row) => {
                eprintln!(
                    "converge: N = {n}: cold {:.1} s (floor {:.1} s, efficiency {:.2}), peak RSS {:.1} MiB",
                    row.cold_seconds,
                    row.floor_seconds,
                    row.efficiency,
                    mib(row.peak_rss_bytes)
                );
                if options.peers {
                    eprintln!("converge: N = {n}: peers …");
                    match runtime.block_on(run_peers(n, &options)) {
                        Ok(peer_rows) => peer_tables.push_str(&peers::table(n, &row, &peer_rows)),
                        Err(e) => {
                            eprintln!("converge: N = {n}: peers failed: {e}");
                            std::process::exit(1);
                        }
                    }
                }
                rows.push(row);
            }
            Err(e) => {
                eprintln!("converge: N = {n} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let report = table(&rows, &options) + &peer_tables;
    println!("{report}");
    let write = || -> Result<(), String> {
        std::fs::create_dir_all(&options.out).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(&json!({
            "options": {"grants": options.grants, "throttleScale": options.throttle_scale, "throttling": !options.no_throttling,
                        "providerLimit": options.provider_limit.map(|(limit, seconds)| json!({"limit": limit, "windowSeconds": seconds})),
                        "latencyMs": options.latency_ms, "jitterMs": options.jitter_ms, "resyncIntervalSeconds": options.resync_interval.as_secs_f64()},
            "rows": rows,
        }))
        .map_err(|e| e.to_string())?;
        std::fs::write(options.out.join("converge.json"), json).map_err(|e| e.to_string())?;
        std::fs::write(options.out.join("converge.md"), &report).map_err(|e| e.to_string())?;
        chart(&rows, &options.out.join("converge.png"))
    };
    if let Err(e) = write() {
        eprintln!("converge: cannot write the report: {e}");
        std::process::exit(1);
    }
    eprintln!("converge: wrote {}", options.out.join("converge.{json,md,png}").display());
}

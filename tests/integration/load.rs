//! Long (run by the second CI step, `cargo test --test integration -- --ignored load::`): 5000 grants applied
//! at once while ARM and the Kubernetes API fail under the operator, the real binary running as
//! a separate process. Every grant must reach its final state — Ready, or refused with its
//! specific reason — the invariant must hold, and the operator's memory must stay within the
//! scale benchmark's bound (see `RELEASE_FILE_RSS_MIB` for how a test build is held to it). `DBX_LOAD_OPERATOR=<path>` runs another build of the operator (the
//! release binary, to measure what ships).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbx_identity_operator::sandbox::arm::ThrottleConfig;
use dbx_identity_operator::sandbox::workload::{self, GrantPlan, ready_for_current_generation, stored_grants};
use dbx_identity_operator::sandbox::{self, SandboxOptions};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");
const GRANTS: usize = 5000;
/// The scale benchmark's memory bound at N = 5000 (docs/benchmarks.md), for the release build.
const PEAK_RSS_BOUND_MIB: f64 = 80.0;
/// File-backed resident memory (code pages, mostly) of the release build in this test, measured
/// with `DBX_LOAD_OPERATOR=target/release/dbx-identity-operator`. The test build's code is larger
/// (about 21 MiB resident: no LTO, less optimisation), so the test holds the part that grows with
/// the grants — anonymous memory: heap and stacks, the same in both builds within
/// about 1.5 MiB — to the bound less the release build's code.
const RELEASE_FILE_RSS_MIB: f64 = 16.6;
const DEADLINE: Duration = Duration::from_secs(900);

/// The operator process; killed when dropped, so a failing test leaves none behind.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of a live process's /proc status (`VmHWM:` peak resident, `RssAnon:`, `RssFile:`), in MiB.
fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc status"));
    kib / 1024.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmHWM:")
}

fn key(grant: &Value) -> String {
    format!(
        "{}/{}",
        grant.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default(),
        grant.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: the second CI step runs it"]
async fn five_thousand_grants_at_once_under_faults() {
    let _scenario = crate::common::scenario("Load", "5000 grants applied at once under faults (long)");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().to_owned());
    // Throttling scaled ×10, as the benchmark's load run: the faults, not the buckets, set the
    // pace (at ×1 the buckets alone take 200 s for this many writes).
    options.throttling = ThrottleConfig::default().scaled(10.0);
    let sandbox = sandbox::start(options).await.expect("sandbox");
    let client = sandbox.kube.emulator.client().expect("client");
    let plan = workload::build(&sandbox, GRANTS, GRANTS / 10, 11);
    plan.create(&sandbox, client.clone()).await.expect("workload");

    // Among them, grants that must end refused rather than Ready: Owner is outside the policy,
    // and an access connector that does not exist.
    let scope = plan.scopes[0].0.clone();
    let owner = |i: usize| GrantPlan {
        namespace: plan.grants[i].namespace.clone(),
        name: format!("owner-{i}"),
        identity: plan.grants[i].identity.clone(),
        principal: plan.grants[i].principal.clone(),
        assignments: vec![("Owner".to_owned(), scope.clone())],
    };
    let missing_connector = |i: usize| GrantPlan {
        namespace: plan.grants[i].namespace.clone(),
        name: format!("no-connector-{i}"),
        identity: json!({"accessConnector": {"resourceId": format!(
            "/subscriptions/{}/resourceGroups/rg-dbx-0/providers/Microsoft.Databricks/accessConnectors/ac-gone-{i}",
            sandbox.estate.subscription_id
        )}}),
        principal: String::new(),
        assignments: vec![("Reader".to_owned(), scope.clone())],
    };
    let refused: Vec<(GrantPlan, &str)> = (0..25)
        .map(|i| (owner(i), "RoleNotAllowed"))
        .chain((0..25).map(|i| (missing_connector(i), "AccessConnectorNotFound")))
        .collect();
    for (grant, _) in &refused {
        let api: kube::Api<dbx_identity_operator::api::DatabricksIdentityGrant> =
            kube::Api::namespaced(client.clone(), &grant.namespace);
        api.create(&Default::default(), &serde_json::from_value(grant.object()).expect("grant"))
            .await
            .expect("create refused grant");
    }
    let expected: HashMap<String, (&str, &str)> = plan
        .grants
        .iter()
        .map(|g| (format!("{}/{}", g.namespace, g.name), ("True", "")))
        .chain(refused.iter().map(|(g, reason)| (format!("{}/{}", g.namespace, g.name), ("False", *reason))))
        .collect();
    let seeded: HashSet<String> =
        sandbox.arm.emulator.state().all_assignments().into_iter().map(|(name, ..)| name).collect();

    // The benchmark's `--faults`, whose memory bound this test holds the operator to. (A 410
    // relist of all 5000 grants holds two copies of the cache for a moment; that case is the 410
    // scenario in tests/integration/faults.rs, at a smaller scale.)
    let faults = workload::start_faults(&sandbox);
    let log = dir.path().join("operator.log");
    let mut operator = Operator(
        Command::new(std::env::var("DBX_LOAD_OPERATOR").unwrap_or_else(|_| BIN.to_owned()))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--resync-interval", "60s"])
            .envs(sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", &sandbox.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start operator"),
    );

    let started = Instant::now();
    let mut peak_mib: f64 = 0.0;
    let mut peak_anon_mib: f64 = 0.0;
    let mut code_mib: f64 = 0.0;
    let mut next_report = Duration::ZERO;
    let final_states = loop {
        assert!(matches!(operator.0.try_wait(), Ok(None)), "the operator exited; see {}", log.display());
        peak_mib = peak_mib.max(peak_rss_mib(operator.0.id()));
        peak_anon_mib = peak_anon_mib.max(proc_status_mib(operator.0.id(), "RssAnon:"));
        code_mib = code_mib.max(proc_status_mib(operator.0.id(), "RssFile:"));
        let grants = stored_grants(&sandbox);
        let states: HashMap<String, Option<(String, String)>> =
            grants.iter().map(|g| (key(g), ready_for_current_generation(g))).collect();
        let unsettled: Vec<&String> = expected
            .iter()
            .filter(|(k, (status, reason))| match states.get(*k) {
                Some(Some((s, r))) => s != status || (!reason.is_empty() && r != reason),
                _ => true,
            })
            .map(|(k, _)| k)
            .collect();
        if unsettled.is_empty() {
            break states;
        }
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(30);
            eprintln!(
                "load: {:>4} s, {} of {} grants final, operator peak RSS {peak_mib:.1} MiB (anonymous \
                 {peak_anon_mib:.1}, code and other files {code_mib:.1})",
                started.elapsed().as_secs(),
                expected.len() - unsettled.len(),
                expected.len(),
            );
        }
        if started.elapsed() > DEADLINE {
            let sample: Vec<String> =
                unsettled.iter().take(5).map(|k| format!("{k}: {:?}", states.get(*k).cloned().flatten())).collect();
            panic!("{} of {} grants starved after {DEADLINE:?}, e.g. {sample:?}", unsettled.len(), expected.len());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let converged = started.elapsed();
    faults.abort();
    peak_mib = peak_mib.max(peak_rss_mib(operator.0.id()));
    peak_anon_mib = peak_anon_mib.max(proc_status_mib(operator.0.id(), "RssAnon:"));
    drop(operator);
    let stats = sandbox.arm.emulator.stats();
    let count = |pred: &dyn Fn(&str, u16) -> bool| -> u64 {
        stats.iter().filter(|((op, status), _)| pred(op, *status)).map(|(_, n)| n).sum()
    };
    let failed = count(&|op, status| op != "Token" && (status >= 500 || status == 0));
    println!(
        "{} grants final in {:.1} s under faults ({failed} ARM requests failed by injection); operator peak RSS \
         {peak_mib:.1} MiB, of it anonymous {peak_anon_mib:.1} MiB and files {code_mib:.1} MiB",
        final_states.len(),
        converged.as_secs_f64()
    );
    assert!(failed > 0, "no ARM fault was injected: the test proves less");

    // The invariant: Azure holds exactly the seeded assignments plus every tuple the Ready grants
    // want, each once, each on the record of a grant that reports it; refused grants hold nothing.
    let (in_azure, wanted) = {
        let state = sandbox.arm.emulator.state();
        let guid = |role: &str| state.role_guid_by_name(role).unwrap_or_else(|| panic!("role {role}"));
        let wanted: HashSet<(String, uuid::Uuid, String)> = plan
            .grants
            .iter()
            .flat_map(|g| {
                g.assignments
                    .iter()
                    .map(|(role, scope)| (scope.to_ascii_lowercase(), guid(role), g.principal.to_ascii_lowercase()))
            })
            .collect();
        (state.all_assignments(), wanted)
    };
    let grants = stored_grants(&sandbox);
    let reported: HashSet<String> = grants
        .iter()
        .flat_map(|g| g.pointer("/status/roleAssignments").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter(|ra| ra["state"] == "Assigned" || ra["state"] == "Adopted")
        .filter_map(|ra| ra["assignmentId"].as_str().and_then(|id| id.rsplit('/').next()).map(str::to_ascii_lowercase))
        .collect();
    let mut held: HashSet<(String, uuid::Uuid, String)> = HashSet::new();
    let mut names: HashSet<String> = HashSet::new();
    for (name, scope, role, principal, _) in in_azure {
        let tuple = (scope.normalized().to_ascii_lowercase(), role, principal.to_ascii_lowercase());
        assert!(held.insert(tuple.clone()), "tuple {tuple:?} assigned twice");
        names.insert(name.to_ascii_lowercase());
        if seeded.contains(&name) {
            continue;
        }
        assert!(wanted.contains(&tuple), "{name} {tuple:?} is in Azure but no grant wants it");
        assert!(reported.contains(&name.to_ascii_lowercase()), "{name} {tuple:?} is on no grant's status");
    }
    let missing: Vec<_> = wanted.iter().filter(|t| !held.contains(*t)).take(5).collect();
    assert!(missing.is_empty(), "Ready grants want tuples Azure does not hold, e.g. {missing:?}");
    let dangling: Vec<_> = reported.iter().filter(|n| !names.contains(*n)).take(5).collect();
    assert!(dangling.is_empty(), "statuses report assignments Azure does not have, e.g. {dangling:?}");

    // No secret reached the operator's log, a status or an Event.
    let logged = std::fs::read_to_string(&log).expect("operator log");
    let events = {
        let store = sandbox.kube.emulator.store();
        store.find_type("events.k8s.io", "v1", "events").map(|ty| store.list(&ty, None)).unwrap_or_default()
    };
    assert!(!events.is_empty(), "the operator published no Event: the secret scan below proves less");
    let stored = serde_json::to_string(&(&grants, &events)).expect("grants and events");
    for (what, needle) in [("an Authorization header", "Bearer "), ("a JWT (token)", "eyJ")] {
        assert!(!logged.contains(needle), "{what} in the operator's log");
        assert!(!stored.contains(needle), "{what} in a grant's status or an Event");
    }
    assert!(
        peak_anon_mib + RELEASE_FILE_RSS_MIB <= PEAK_RSS_BOUND_MIB,
        "operator peak anonymous memory {peak_anon_mib:.1} MiB plus the release build's {RELEASE_FILE_RSS_MIB} MiB \
         of code is over the benchmark's bound of {PEAK_RSS_BOUND_MIB} MiB (total peak RSS of this build: \
         {peak_mib:.1} MiB)"
    );
    sandbox.shutdown().await;
}

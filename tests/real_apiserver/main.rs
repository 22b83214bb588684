//! The real-API-server tier: the CRDs, the examples, the invalid fixtures, the chart and the
//! operator (as the chart's ServiceAccount, under real RBAC) on a real kube-apiserver + etcd
//! (`tests/common/control_plane.rs`), and the same operator scenarios against the Kubernetes
//! emulator, with the same assertions, so every run measures the emulator against the real thing.
//!
//! One control plane for the whole binary (a custom test main, so it is started once and
//! stopped through its handles when the run ends, whatever failed). Without `KUBEBUILDER_ASSETS`
//! the real cases are not run and one line says so; under `CI=true` that is a failure.
//!
//! `cargo test --test real_apiserver -- FILTER` runs the cases whose name contains FILTER.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod chart;
mod cluster;
mod scenarios;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::control_plane::{ControlPlane, StartError};

pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A case: a name and what it runs, on one server.
pub struct Case {
    pub name: String,
    pub run: Box<dyn FnOnce() -> CaseFuture + Send>,
    pub timeout: Duration,
}

impl Case {
    pub fn new<F: Future<Output = ()> + Send + 'static>(
        name: impl Into<String>,
        timeout: Duration,
        run: impl FnOnce() -> F + Send + 'static,
    ) -> Case {
        Case { name: name.into(), run: Box::new(move || Box::pin(run())), timeout }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).cloned().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--list") {
        for name in scenarios::names().into_iter().chain(admission::names()).chain(chart::names()) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if flag("--ignored") {
        // Nothing here is ignored-by-default; the long suites are elsewhere.
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(filters))
}

async fn run(filters: Vec<String>) -> ExitCode {
    let started = Instant::now();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let mut cases: Vec<Case> = Vec::new();
    let mut not_run: Option<String> = None;

    let wants_real = scenarios::names()
        .iter()
        .chain(&admission::names())
        .chain(&chart::names())
        .any(|n| n.starts_with("real/") && selected(n));
    let plane = if wants_real {
        match ControlPlane::start().await {
            Ok(plane) => Some(Arc::new(plane)),
            Err(e @ StartError::NotConfigured) => {
                not_run = Some(format!("real-API-server tier not run: {e}"));
                None
            }
            Err(StartError::Failed(why)) => {
                eprintln!("real-API-server tier: the control plane did not start: {why}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let real = match &plane {
        Some(plane) => match cluster::RealCluster::prepare(plane.clone()).await {
            Ok(real) => Some(Arc::new(real)),
            Err(e) => {
                eprintln!("real-API-server tier: cannot prepare the control plane (CRDs, chart RBAC): {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if let Some(real) = &real {
        cases.extend(admission::cases(real.clone()));
    }
    cases.extend(scenarios::cases(real.clone()));
    if let Some(real) = &real {
        cases.extend(chart::cases(real.clone()));
    }
    let total = cases.len();
    cases.retain(|c| selected(&c.name));
    let filtered = total - cases.len();

    let (mut passed, mut failed) = (0usize, Vec::new());
    println!("\nrunning {} tests", cases.len());
    for case in cases {
        let case_started = Instant::now();
        let handle = tokio::spawn((case.run)());
        let outcome = match tokio::time::timeout(case.timeout, handle).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(join)) => {
                Err(if join.is_panic() { "panicked (message above)".to_owned() } else { join.to_string() })
            }
            Err(_) => Err(format!("timed out after {:?}", case.timeout)),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({:.1} s)", case.name, case_started.elapsed().as_secs_f64());
            }
            Err(why) => {
                println!("test {} ... FAILED: {why}", case.name);
                failed.push(case.name);
            }
        }
    }
    drop(real);
    drop(plane);
    if let Some(line) = &not_run {
        println!("{line}");
    }
    if !failed.is_empty() {
        println!("\nfailures:\n    {}", failed.join("\n    "));
    }
    let ok = failed.is_empty() && !(ci && not_run.is_some());
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        if ok { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if ci && not_run.is_some() {
        eprintln!(
            "CI=true: the real-API-server tier must run (set KUBEBUILDER_ASSETS; .ci/run points it at ../shared/kube/bin)"
        );
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

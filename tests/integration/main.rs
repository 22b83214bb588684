//! The integration tests: one binary (each module used to be its own, and each linked the whole
//! crate). Modules by what they exercise:
//!
//! - the public surface: `api` (CRDs, examples, refusals), `chart`, `demo`, `run_binary`,
//!   `sandbox_kubectl`, `rbac` (the chart's RBAC against what the binary does);
//! - the layers: `azure_emulator` (ArmClient and credentials against the ARM emulator),
//!   `contract` (emulator and client against the Azure REST specs), `kube_emulator`;
//! - the operator end to end on the sandbox: `reconciler`, `policy`, `azure_changes`,
//!   `bad_input`, `faults`, `leader_election`, `log_scan`;
//! - long reliability suites, `#[ignore]`d and run by `.ci/run`'s second step: `kill_loop`, `load`
//!   (`cargo test --test integration -- --ignored kill_loop::`).
//!
//! The managed-identity flow sets process environment variables, so it keeps its own binary
//! (`tests/azure_managed_identity.rs`); the real-API-server tier has its own main
//! (`tests/real_apiserver/`).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod azure_changes;
mod azure_emulator;
mod bad_input;
mod chart;
mod contract;
mod demo;
mod faults;
mod kill_loop;
mod kube_emulator;
mod leader_election;
mod load;
mod log_scan;
mod policy;
mod rbac;
mod reconciler;
mod review;
mod run_binary;
mod sandbox_kubectl;
mod time_bound;

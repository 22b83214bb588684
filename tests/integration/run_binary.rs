//! The real `run` binary against the sandbox, configured the way a user does it (azure.env +
//! kubeconfig): it converges a grant, never logs a secret (even at trace level), and on SIGTERM
//! finishes, releases its Lease and exits cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbx_identity_operator::api::DatabricksIdentityGrant;
use dbx_identity_operator::sandbox::{self, SandboxOptions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_converges_logs_no_secrets_and_stops_gracefully_on_sigterm() {
    let _scenario = crate::common::scenario("Security", "no secret in trace-level logs of the binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().to_owned());
    options.arm_state = dbx_identity_operator::sandbox::arm::StateConfig::default();
    options.arm_faults = Default::default();
    let sandbox = sandbox::start(options).await.expect("sandbox");
    let client = sandbox.kube.emulator.client().expect("client");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("ns"))
        .await
        .expect("namespace");

    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--leader-election",
            "--lease-namespace",
            "default",
            "--lease-duration",
            "5s",
            "--policy-mode",
            "permissive",
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--resync-interval",
            "2s",
        ])
        .envs(sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBECONFIG", &sandbox.kubeconfig)
        .env("RUST_LOG", "trace")
        .env("POD_NAME", "operator-0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start operator");

    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team");
    let grant: DatabricksIdentityGrant = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant", "metadata": {"name": "g"},
        "spec": {"identity": {"workspace": {"resourceId": sandbox.estate.workspaces[0].id}}, "roleAssignments": [{"role": "Reader", "scope": sandbox.estate.scopes.resource_group}]},
    }))
    .expect("grant");
    grants.create(&PostParams::default(), &grant).await.expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = grants.get("g").await.expect("get");
        if g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True") {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "operator exited early: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "not converged: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = leases.get("dbx-identity-operator").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("operator-0"));

    // SIGTERM: in-flight work finishes, the lease is released, the process exits 0.
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the operator did not stop within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(exit.success(), "exit {exit}: {logs}");
    let holder = leases.get("dbx-identity-operator").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, None, "the lease was not released");

    // No secret in any log line: the managed-identity header secret, bearer tokens, JWTs.
    assert!(logs.lines().count() > 50, "trace logging produced too little to be a meaningful check");
    let header_secret =
        sandbox.env.iter().find(|(k, _)| k == "IDENTITY_HEADER").map(|(_, v)| v.clone()).expect("header");
    // Every token the emulator issues is base64url JSON, so it starts with "eyJ".
    for (what, needle) in [
        ("IDENTITY_HEADER value", header_secret.as_str()),
        ("a bearer token", "Bearer "),
        ("a JWT-shaped token", "eyJ"),
    ] {
        assert!(!logs.contains(needle), "{what} appears in the logs");
    }
    for line in logs.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not a JSON log line: {line}");
    }
    sandbox.shutdown().await;
}

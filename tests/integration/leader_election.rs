//! Two replicas with leader election against the sandbox: only the leader reconciles; when it
//! shuts down it releases the Lease and the standby takes over.

use std::time::Duration;

use crate::common::*;
use dbx_identity_operator::controller::{ElectionError, LeaderElection, lead_with, run_with_leader_election};
use dbx_identity_operator::sandbox::arm::StateConfig;
use dbx_identity_operator::telemetry::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

fn reconciles(m: &Metrics) -> f64 {
    m.render()
        .lines()
        .find(|l| l.starts_with("dbx_identity_operator_reconciles_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn leader(m: &Metrics) -> bool {
    m.render().lines().any(|l| l == "dbx_identity_operator_leader 1")
}

/// Two replicas with leader election on `lease`, each with its own context and metrics; A leads
/// before B starts, so the roles are known.
struct Replicas {
    a_metrics: std::sync::Arc<Metrics>,
    b_metrics: std::sync::Arc<Metrics>,
    stop_a: tokio::sync::watch::Sender<bool>,
    stop_b: tokio::sync::watch::Sender<bool>,
    replica_a: tokio::task::JoinHandle<Result<(), ElectionError>>,
    replica_b: tokio::task::JoinHandle<Result<(), ElectionError>>,
}

/// Stops a replica and expects it to end cleanly within 10 s (releasing its Lease).
async fn stop_cleanly(
    stop: &tokio::sync::watch::Sender<bool>,
    replica: tokio::task::JoinHandle<Result<(), ElectionError>>,
) {
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), replica)
        .await
        .expect("stopped in time")
        .expect("join")
        .expect("clean stop");
}

async fn two_replicas(h: &Harness, lease: &str, lease_duration: Duration) -> Replicas {
    let (a_metrics, b_metrics) = (Metrics::new(), Metrics::new());
    let (a, b) = (replica_context(&h.sandbox, a_metrics.clone()), replica_context(&h.sandbox, b_metrics.clone()));
    let election = |identity: &str| LeaderElection {
        lease_name: lease.into(),
        lease_namespace: "default".into(),
        identity: identity.into(),
        lease_duration,
    };
    let (stop_a, stopped_a) = tokio::sync::watch::channel(false);
    let replica_a = tokio::spawn(run_with_leader_election(a, election("replica-a"), stopped_a));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leader(&a_metrics) {
        assert!(tokio::time::Instant::now() < deadline, "replica A never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop_b, stopped_b) = tokio::sync::watch::channel(false);
    let replica_b = tokio::spawn(run_with_leader_election(b, election("replica-b"), stopped_b));
    Replicas { a_metrics, b_metrics, stop_a, stop_b, replica_a, replica_b }
}

#[tokio::test]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    let _scenario = crate::common::scenario("Faults: process", "leader election: graceful handover");
    // The harness's own controller is stopped first: this test runs its own two replicas.
    let h = harness(StateConfig::default()).await;
    let _ = h.stop_controller().await;
    let Replicas { a_metrics, b_metrics, stop_a, stop_b, replica_a, replica_b } =
        two_replicas(&h, "dbx-identity-operator", Duration::from_secs(3)).await;

    h.apply(&grant("one", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("one").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reconciles(&a_metrics) >= 1.0);
    assert_eq!(reconciles(&b_metrics), 0.0, "the standby reconciled");
    assert!(!leader(&b_metrics));
    let lease: Api<Lease> = Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), "default");
    let holder = lease.get("dbx-identity-operator").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-a"));

    // A shuts down gracefully: it releases the lease and B leads and reconciles new work.
    stop_cleanly(&stop_a, replica_a).await;
    h.apply(&grant("two", h.workspace_identity(1), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("two").await;
    assert!(leader(&b_metrics), "B did not take over");
    assert!(reconciles(&b_metrics) >= 1.0);
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), replica_b).await;
    h.stop().await;
}

#[tokio::test]
async fn a_leader_whose_controllers_stop_releases_the_lease_and_fails() {
    let _scenario = crate::common::scenario(
        "Faults: process",
        "leader election: controllers stop while leading (no zombie leader)",
    );
    let h = harness(StateConfig::default()).await;
    let _ = h.stop_controller().await;
    let metrics = Metrics::new();
    let ctx = replica_context(&h.sandbox, metrics.clone());
    let election = LeaderElection {
        lease_name: "zombie".into(),
        lease_namespace: "default".into(),
        identity: "replica-z".into(),
        lease_duration: Duration::from_secs(3),
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    // The work ends the way a panicking reconcile ends the controller task.
    let work = |_ctx, _stop| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        panic!("a reconcile panicked (test)");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(15), lead_with(ctx, election, stopped, work))
        .await
        .expect("the replica kept leading after its controllers stopped (zombie leader)");
    assert!(matches!(&outcome, Err(ElectionError::ControllersStopped(why)) if why.contains("panicked")), "{outcome:?}");
    assert!(!leader(&metrics), "still reports leading");
    let lease: Api<Lease> = Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), "default");
    let holder = lease.get("zombie").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert!(holder.as_deref().is_none_or(str::is_empty), "the lease is still held by {holder:?}");
    h.stop().await;
}

/// A leader that shuts down releases its Lease, and the standby leads within seconds — not at
/// the Lease's expiry (30 s here, so the expiry cannot stand in for the handover).
#[tokio::test]
async fn a_released_lease_is_taken_over_within_seconds() {
    let _scenario = crate::common::scenario("Faults: process", "leader election: released lease taken over at once");
    let h = harness(StateConfig::default()).await;
    let _ = h.stop_controller().await;
    let Replicas { b_metrics, stop_a, stop_b, replica_a, replica_b, .. } =
        two_replicas(&h, "handover", Duration::from_secs(30)).await;
    // B has found the Lease held and gone to wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!leader(&b_metrics));

    stop_cleanly(&stop_a, replica_a).await;
    let released = std::time::Instant::now();
    while !leader(&b_metrics) {
        assert!(released.elapsed() < Duration::from_secs(5), "B did not lead within 5 s of the release");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the standby led {:?} after the leader released the Lease", released.elapsed());
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), replica_b).await;
    h.stop().await;
}

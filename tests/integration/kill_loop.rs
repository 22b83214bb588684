//! Long (run by the second CI step, `cargo test --test integration -- --ignored kill_loop::`): the real
//! binary SIGKILLed at random points, including between an Azure write and the status patch
//! that records it (a new grant's first creation, and a converged grant's change), 50 times over
//! a changing workload; then two replicas with the leader SIGKILLed mid-work. Each ends with every
//! grant in its final state and the invariant.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use dbx_identity_operator::sandbox::arm::{FaultConfig, StateConfig};
use dbx_identity_operator::sandbox::kube::KubeFaults;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rand::{Rng, SeedableRng};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");

/// The real binary against the sandbox; `identity` names a leader-election replica, `None`
/// runs a single replica without election.
/// An operator process; killed when dropped, so a failing test leaves none behind.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(h: &Harness, identity: Option<&str>, log: &std::path::Path) -> Replica {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    let election: &[&str] = match identity {
        Some(_) => &["--leader-election", "--lease-namespace", "default", "--lease-duration", "3s"],
        None => &[],
    };
    let child = Command::new(BIN)
        .arg("run")
        .args(election)
        .args(["--policy-mode", "permissive", "--resync-interval", "3s", "--namespace", NS])
        .args(["--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--log-format", "json"])
        .envs(h.sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBECONFIG", &h.sandbox.kubeconfig)
        .env("RUST_LOG", "info")
        .env("POD_NAME", identity.unwrap_or("operator-0"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start operator");
    Replica(child)
}

fn sigkill(replica: &mut Replica) {
    let _ = replica.0.kill(); // SIGKILL on Unix: no shutdown path runs.
    let _ = replica.0.wait();
}

/// Assignment names in Azure that no grant records yet: the operator wrote them and was
/// killed before the status patch that records them.
async fn unrecorded(h: &Harness) -> usize {
    unrecorded_tuples(h).await.len()
}

/// The unrecorded assignments themselves: (name, "scope|role", principal).
async fn unrecorded_tuples(h: &Harness) -> Vec<(String, String, String)> {
    let recorded: std::collections::HashSet<String> = h
        .grants
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g.status.iter().flat_map(|s| s.managed_assignments.clone()))
        .filter_map(|id| id.rsplit('/').next().map(str::to_ascii_lowercase))
        .collect();
    h.tuples().into_iter().filter(|(name, _, _)| !h.foreign.contains(name) && !recorded.contains(name)).collect()
}

/// A grant created by the loop (its principal is its own) that has converged, with the scopes
/// its principal holds in Azure: changed, it goes through the change path (the write-ahead
/// record in status, then the outcome), not a first creation's.
async fn converged_of_its_own(
    h: &Harness,
    live: &[String],
    principals: &std::collections::HashMap<String, String>,
) -> Option<(String, String, Vec<String>)> {
    for name in live.iter().rev() {
        let Some(principal) = principals.get(name) else { continue };
        let Ok(g) = h.grants.get(name).await else { continue };
        let converged = g.status.as_ref().is_some_and(|s| {
            s.observed_generation == g.metadata.generation
                && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if converged {
            let held = scopes_held(h, principal);
            return Some((name.clone(), principal.clone(), held));
        }
    }
    None
}

/// The scopes at which `principal` holds an assignment in Azure.
fn scopes_held(h: &Harness, principal: &str) -> Vec<String> {
    h.tuples()
        .into_iter()
        .filter(|(_, _, p)| p.eq_ignore_ascii_case(principal))
        .map(|(_, tuple, _)| tuple.split('|').next().unwrap_or_default().to_owned())
        .collect()
}

fn scopes() -> [String; 4] {
    [rg("rg-lake"), rg("rg-analytics"), rg("rg-streaming"), rg("rg-security")]
}

fn roles_at(rng: &mut impl Rng) -> serde_json::Value {
    let scopes = scopes();
    let n = rng.random_range(1..=3);
    let picked: Vec<serde_json::Value> =
        (0..n).map(|i| json!({"role": "Reader", "scope": scopes[(i + rng.random_range(0..4)) % 4]})).collect();
    // Same scope twice would be a duplicate entry: keep the first of each.
    let mut seen = std::collections::HashSet::new();
    json!(picked.into_iter().filter(|p| seen.insert(p["scope"].to_string())).collect::<Vec<_>>())
}

async fn settle(h: &Harness, live: &[String], deleted: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in deleted {
        while h.grants.get(name).await.is_ok() {
            assert!(Instant::now() < deadline, "{name} was never deleted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for name in live {
        loop {
            let g = h.grants.get(name).await.expect("grant");
            let spec_len = g.spec.role_assignments.len();
            let settled = g.status.as_ref().is_some_and(|s| {
                s.observed_generation == g.metadata.generation
                    && s.role_assignments.len() == spec_len
                    && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if settled {
                break;
            }
            assert!(Instant::now() < deadline, "{name} never settled: {:?}", g.status);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: the second CI step runs it"]
async fn sigkill_fifty_times_over_a_live_workload() {
    let _scenario = crate::common::scenario("Faults: process", "SIGKILL x50 over a live workload (long)");
    let h = harness(StateConfig::default()).await;
    h.stop_controller().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("operator.log");
    // Slow ARM and a slower API server widen the window between a PUT and its status patch.
    h.sandbox.arm.emulator.set_faults(FaultConfig { latency_ms: 60, jitter_ms: 40, ..FaultConfig::default() });
    h.sandbox.kube.emulator.set_faults(KubeFaults { latency_ms: 50, ..KubeFaults::default() });
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    let identities = [h.workspace_identity(0), h.workspace_identity(1), h.connector_identity()];

    let mut live: Vec<String> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    for i in 0..12 {
        let name = format!("kill-{i}");
        h.apply(&grant(&name, identities[i % 3].clone(), roles_at(&mut rng))).await;
        live.push(name);
    }
    let first_new = live.len();
    // The loop's own grants, each with a principal of its own: name → principal.
    let mut principals = std::collections::HashMap::new();
    let (mut kills, mut mid_write, mut moved_unrecorded, mut deleted_unrecorded) = (0, 0, 0, 0);
    let (mut aimed_changes, mut changed_unrecorded) = (0, 0);
    for round in 0..50 {
        let before: std::collections::HashSet<String> = h.tuples().into_iter().map(|t| t.0).collect();
        // Every fourth round the spec change is aimed at a converged grant and adds a scope its
        // principal does not hold, so it creates through the change path.
        let aimed = if round % 4 == 3 { converged_of_its_own(&h, &live, &principals).await } else { None };
        let mut child = spawn(&h, None, &log);
        // Change the workload while this incarnation runs: a new grant, a spec change, and
        // every other round a deletion.
        let name = format!("kill-{}", first_new + round);
        // A fresh identity (already replicated in Entra), so the grant has new tuples to write.
        let uai = dbx_identity_operator::azure::ResourceId::parse(&rg("rg-analytics"))
            .expect("rg")
            .with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", &name);
        let (principal, _) =
            h.sandbox.arm.emulator.state().create_user_assigned_identity(&uai, Duration::from_secs(86_400));
        h.apply(&grant(&name, json!({"principal": {"principalId": principal}}), roles_at(&mut rng))).await;
        live.push(name.clone());
        principals.insert(name.clone(), principal.clone());
        let (changed, roles) = match &aimed {
            Some((changed, _, held)) => {
                let fresh = scopes().into_iter().find(|s| !held.iter().any(|h| h.eq_ignore_ascii_case(s)));
                let fresh = fresh.expect("a grant holds at most three of the four scopes");
                (changed.clone(), json!([{"role": "Reader", "scope": fresh}]))
            }
            None => (live[rng.random_range(0..live.len())].clone(), roles_at(&mut rng)),
        };
        let patch = json!({"spec": {"roleAssignments": roles}});
        h.grants.patch(&changed, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        if round % 2 == 1 && live.len() > 4 {
            let name = live.remove(rng.random_range(0..live.len()));
            if aimed.is_some() && name == changed {
                live.push(name);
            } else {
                h.grants.delete(&name, &DeleteParams::default()).await.expect("delete");
                deleted.push(name);
            }
        }
        if let Some((_, aimed_principal, _)) = &aimed {
            // Targeted: right after the change's assignment lands in Azure, before the status
            // patch recording it can.
            aimed_changes += 1;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !h.tuples().iter().any(|t| !before.contains(&t.0) && t.2.eq_ignore_ascii_case(aimed_principal))
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else if round % 2 == 0 {
            // Targeted: right after a new assignment lands in Azure, before the status patch can.
            let deadline = Instant::now() + Duration::from_secs(10);
            while h.tuples().iter().all(|t| before.contains(&t.0)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            // Anywhere from start-up to mid-convergence.
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_500))).await;
        }
        sigkill(&mut child);
        kills += 1;
        if unrecorded(&h).await > 0 {
            mid_write += 1;
            // The grant just written stops wanting what it has in Azure before any incarnation
            // records it: deleted, or moved to a scope it does not hold yet.
            let held = scopes_held(&h, &principal);
            let elsewhere = scopes().into_iter().find(|s| !held.iter().any(|h| h.eq_ignore_ascii_case(s)));
            match elsewhere {
                Some(scope) if round % 4 == 2 => {
                    let patch = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": scope}]}});
                    h.grants.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
                    moved_unrecorded += 1;
                }
                _ if round % 4 == 0 && live.contains(&name) => {
                    live.retain(|l| *l != name);
                    h.grants.delete(&name, &DeleteParams::default()).await.expect("delete");
                    deleted.push(name.clone());
                    deleted_unrecorded += 1;
                }
                _ => {}
            }
        }
        if let Some((changed, aimed_principal, _)) = &aimed {
            // The changed grant stops wanting its change's assignment before any incarnation
            // records it: the same scope, another role.
            let lost = unrecorded_tuples(&h).await.into_iter().find(|t| t.2.eq_ignore_ascii_case(aimed_principal));
            if let Some((_, tuple, _)) = lost {
                let scope = tuple.split('|').next().unwrap_or_default();
                let roles = json!([{"role": "Storage Blob Data Reader", "scope": scope}]);
                let patch = json!({"spec": {"roleAssignments": roles}});
                h.grants.patch(changed, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
                changed_unrecorded += 1;
            }
        }
    }
    assert_eq!(kills, 50);

    h.sandbox.arm.emulator.set_faults(FaultConfig::default());
    h.sandbox.kube.emulator.set_faults(KubeFaults::default());
    let mut child = spawn(&h, None, &log);
    settle(&h, &live, &deleted).await;
    sigkill(&mut child);
    h.assert_invariant(&[]).await;
    println!(
        "50 SIGKILLs, {mid_write} between an Azure write and the status patch recording it; then \
         {moved_unrecorded} such grants moved to another scope, {deleted_unrecorded} deleted; \
         {changed_unrecorded} of {aimed_changes} changes of converged grants changed again before \
         their creation was recorded"
    );
    assert!(mid_write > 0, "no kill landed between an Azure write and its status patch: the test proves less");
    assert!(
        moved_unrecorded > 0 && deleted_unrecorded > 0,
        "no grant changed or went before its write was recorded: the test proves less"
    );
    assert!(
        changed_unrecorded > 0,
        "no converged grant's change was killed before its status patch ({aimed_changes} aimed): the test proves less"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: the second CI step runs it"]
async fn leader_sigkilled_mid_work_standby_finishes() {
    let _scenario = crate::common::scenario("Faults: process", "leader SIGKILLed mid-work, standby finishes (long)");
    let h = harness(StateConfig::default()).await;
    h.stop_controller().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("operator.log");
    h.sandbox.arm.emulator.set_faults(FaultConfig { latency_ms: 80, jitter_ms: 40, ..FaultConfig::default() });
    let mut a = spawn(&h, Some("replica-a"), &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = spawn(&h, Some("replica-b"), &log);
    let leases: Api<Lease> = Api::namespaced(h.sandbox.kube.emulator.client().expect("client"), "default");
    let holder = leases.get("dbx-identity-operator").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-a"));

    let identities = [h.workspace_identity(0), h.workspace_identity(1), h.connector_identity()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let names: Vec<String> = (0..20).map(|i| format!("leader-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        h.apply(&grant(name, identities[i % 3].clone(), roles_at(&mut rng))).await;
    }
    // Mid-work: killed as soon as the leader's first writes land.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.sandbox.arm.emulator.count("PutRoleAssignment") < 3 {
        assert!(Instant::now() < deadline, "the leader never started writing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigkill(&mut a);
    let ready_at_kill = h
        .grants
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|g| g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True"))
        .count();
    assert!(ready_at_kill < names.len(), "the leader finished before it was killed");

    settle(&h, &names, &[]).await;
    let holder = leases.get("dbx-identity-operator").await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-b"), "the standby did not take over");
    sigkill(&mut b);
    h.assert_invariant(&[]).await;
    h.stop().await;
}

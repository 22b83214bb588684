//! Peers side by side, on the same emulator, estate and throttling: what the operator's
//! numbers are worth next to what teams run instead.
//!
//! - **Scripted loop** (a team's script around the Azure CLI): every run, per grant, resolves
//!   the identity (`az databricks workspace show` + `az identity show`, or the connector), and
//!   per assignment looks the role up by name, GETs the assignment by its name and PUTs it when
//!   missing; re-run every resync interval, one request at a time.
//! - **Blind PUT per sync** (the behaviour Azure Service Operator documents: each resource is
//!   PUT to Azure every sync period, `AZURE_SYNC_PERIOD`): one PUT per assignment every period,
//!   eight at a time, role and principal given by id.
//!
//! Both use azure_core's retry (which honours `Retry-After`), as the CLI and ASO's SDK do, and no
//! pacer. Neither removes anything, so only creation, steady cost and drift healing compare.

use std::time::{Duration, Instant};

use dbx_identity_operator::azure::ArmClient;
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::client::{arm_retry, client_options};
use dbx_identity_operator::azure::models::RoleAssignmentProperties;
use dbx_identity_operator::controller::plan::assignment_name;
use dbx_identity_operator::controller::resolve::managed_identity_id;
use dbx_identity_operator::sandbox::Sandbox;
use dbx_identity_operator::sandbox::workload::Workload;
use futures::StreamExt;
use serde::Serialize;

use super::{Requests, requests_between};

const SECRET: &str = "peer-baseline";

/// Which peer.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Script,
    BlindPut,
}

impl Peer {
    pub fn label(self) -> &'static str {
        match self {
            Peer::Script => "scripted loop (CLI: GET by name, PUT if missing, every resync)",
            Peer::BlindPut => "blind PUT per resource per sync (ASO's documented behaviour)",
        }
    }
}

/// One peer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    pub approach: &'static str,
    pub cold_seconds: f64,
    pub cold_requests: Requests,
    pub steady_reads_per_hour: f64,
    pub steady_writes_per_hour: f64,
    pub steady_throttled: u64,
    pub drift_deleted: usize,
    pub drift_seconds: f64,
}

/// One wanted assignment, resolved the way each peer has it.
#[derive(Debug, Clone)]
struct Tuple {
    identity: serde_json::Value,
    principal: String,
    role_name: String,
    role_definition_id: String,
    role_guid: uuid::Uuid,
    scope: ResourceId,
}

fn tuples(sandbox: &Sandbox, workload: &Workload) -> Result<Vec<Tuple>, String> {
    let state = sandbox.arm.emulator.state();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for grant in &workload.grants {
        for (role, scope) in &grant.assignments {
            let guid = state.role_guid_by_name(role).ok_or_else(|| format!("role {role} unknown"))?;
            let scope = ResourceId::parse(scope).map_err(|e| e.to_string())?;
            let sub = scope.subscription_id().unwrap_or_default().to_owned();
            if seen.insert((grant.principal.to_ascii_lowercase(), guid, scope.normalized())) {
                out.push(Tuple {
                    identity: grant.identity.clone(),
                    principal: grant.principal.clone(),
                    role_name: role.clone(),
                    role_definition_id: format!(
                        "/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
                    ),
                    role_guid: guid,
                    scope,
                });
            }
        }
    }
    Ok(out)
}

fn properties(t: &Tuple) -> RoleAssignmentProperties {
    RoleAssignmentProperties {
        role_definition_id: t.role_definition_id.clone(),
        principal_id: t.principal.clone(),
        principal_type: Some("ServicePrincipal".into()),
        ..Default::default()
    }
}

/// One run of the script: per identity its lookups, per assignment role lookup, GET, PUT if missing.
async fn script_pass(arm: &ArmClient, tuples: &[Tuple]) {
    let mut resolved_this_run = std::collections::HashSet::new();
    for t in tuples {
        if resolved_this_run.insert(t.identity.to_string()) {
            if let Some(ws) = t.identity.pointer("/workspace/resourceId").and_then(|v| v.as_str()) {
                if let Ok(id) = ResourceId::parse(ws)
                    && let Ok(workspace) = arm.get_workspace(&id).await
                    && let Ok(mi) = managed_identity_id(&id, &workspace)
                {
                    let _ = arm.get_user_assigned_identity(&mi).await;
                }
            } else if let Some(ac) = t.identity.pointer("/accessConnector/resourceId").and_then(|v| v.as_str())
                && let Ok(id) = ResourceId::parse(ac)
            {
                let _ = arm.get_access_connector(&id).await;
            }
        }
        let _ = arm.find_role_definitions(&t.scope, &t.role_name).await;
        let name = assignment_name(&t.principal, t.role_guid, &t.scope);
        if arm.get_role_assignment(&t.scope, &name).await.is_err() {
            let _ = arm.create_role_assignment(&t.scope, &name, properties(t)).await;
        }
    }
}

/// One sync of the blind-PUT controller: every assignment PUT, eight at a time.
async fn blind_pass(arm: &ArmClient, tuples: &[Tuple]) {
    futures::stream::iter(tuples.iter().map(|t| async move {
        let name = assignment_name(&t.principal, t.role_guid, &t.scope);
        let _ = arm.put_role_assignment(&t.scope, &name, properties(t)).await;
    }))
    .buffer_unordered(8)
    .collect::<Vec<()>>()
    .await;
}

async fn pass(peer: Peer, arm: &ArmClient, tuples: &[Tuple]) {
    match peer {
        Peer::Script => script_pass(arm, tuples).await,
        Peer::BlindPut => blind_pass(arm, tuples).await,
    }
}

fn missing(sandbox: &Sandbox, tuples: &[Tuple]) -> usize {
    let present: std::collections::HashSet<String> = sandbox
        .arm
        .emulator
        .state()
        .all_assignments()
        .into_iter()
        .map(|(name, ..)| name.to_ascii_lowercase())
        .collect();
    tuples
        .iter()
        .filter(|t| !present.contains(&assignment_name(&t.principal, t.role_guid, &t.scope).to_ascii_lowercase()))
        .count()
}

/// Runs `peer` against a prepared sandbox and workload: cold (passes until everything exists),
/// one steady sync, and drift (1% deleted out of band, healed at the next syncs).
pub async fn run(
    peer: Peer,
    sandbox: &Sandbox,
    workload: &Workload,
    period: Duration,
    timeout: Duration,
) -> Result<PeerRow, String> {
    let (settings, credential) = sandbox.in_process_operator(SECRET).map_err(|e| e.to_string())?;
    let options = client_options(settings.ca_file.as_deref(), arm_retry()).map_err(|e| e.to_string())?;
    let arm = ArmClient::new(sandbox.arm.url(), credential, options).map_err(|e| e.to_string())?;
    let tuples = tuples(sandbox, workload)?;

    let stats0 = sandbox.arm.emulator.stats();
    let started = Instant::now();
    loop {
        pass(peer, &arm, &tuples).await;
        if missing(sandbox, &tuples) == 0 {
            break;
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{}: {} assignments still missing after {timeout:?}",
                peer.label(),
                missing(sandbox, &tuples)
            ));
        }
    }
    let cold_seconds = started.elapsed().as_secs_f64();
    let stats1 = sandbox.arm.emulator.stats();

    // Steady: one sync with nothing changed, scaled to an hour of syncs.
    let sync_started = Instant::now();
    pass(peer, &arm, &tuples).await;
    let stats2 = sandbox.arm.emulator.stats();
    let steady = requests_between(&stats1, &stats2);
    let per_hour = 3600.0 / period.as_secs_f64().max(sync_started.elapsed().as_secs_f64());

    // Drift: 1% deleted right after a sync; healed by the syncs that follow, one per period.
    let deleted: Vec<String> = {
        let mut state = sandbox.arm.emulator.state();
        let names: Vec<String> =
            tuples.iter().step_by(100).map(|t| assignment_name(&t.principal, t.role_guid, &t.scope)).collect();
        for name in &names {
            state.delete_out_of_band(name);
        }
        names
    };
    let deleted_at = Instant::now();
    let mut next_sync = sync_started + period;
    while missing(sandbox, &tuples) > 0 {
        if deleted_at.elapsed() > timeout {
            return Err(format!("{}: drift not healed after {timeout:?}", peer.label()));
        }
        tokio::time::sleep_until(next_sync.into()).await;
        next_sync += period;
        pass(peer, &arm, &tuples).await;
    }
    let drift_seconds = deleted_at.elapsed().as_secs_f64();
    Ok(PeerRow {
        approach: peer.label(),
        cold_seconds,
        cold_requests: requests_between(&stats0, &stats1),
        steady_reads_per_hour: steady.reads as f64 * per_hour,
        steady_writes_per_hour: (steady.writes + steady.deletes) as f64 * per_hour,
        steady_throttled: steady.throttled,
        drift_deleted: deleted.len(),
        drift_seconds,
    })
}

/// The comparison table: the operator's row and the peers'.
pub fn table(n: usize, ours: &super::Row, peers: &[PeerRow]) -> String {
    let mut out = format!(
        "\nPeers side by side (N = {n}, same emulator, estate and throttling; steady costs are per hour at the resync interval):\n\n\
         | approach | cold (s) | cold ARM reads / writes / 429 | steady ARM reads / writes per hour | drift healed (s) |\n|---|---|---|---|---|\n"
    );
    let per_hour = 3600.0 / ours.steady_period_seconds.max(1.0);
    out.push_str(&format!(
        "| dbx-identity-operator | {:.1} | {} / {} / {} | {:.0} / {:.0} | {} in {:.1} |\n",
        ours.cold_seconds,
        ours.cold_requests.reads,
        ours.cold_requests.writes,
        ours.cold_requests.throttled,
        ours.steady_requests.reads as f64 * per_hour,
        (ours.steady_requests.writes + ours.steady_requests.deletes) as f64 * per_hour,
        ours.drift_deleted,
        ours.drift_seconds,
    ));
    for p in peers {
        out.push_str(&format!(
            "| {} | {:.1} | {} / {} / {} | {:.0} / {:.0} | {} in {:.1} |\n",
            p.approach,
            p.cold_seconds,
            p.cold_requests.reads,
            p.cold_requests.writes,
            p.cold_requests.throttled,
            p.steady_reads_per_hour,
            p.steady_writes_per_hour,
            p.drift_deleted,
            p.drift_seconds,
        ));
    }
    out
}

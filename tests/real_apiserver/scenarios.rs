//! Operator scenarios written once and run against both servers (the real kube-apiserver and
//! the Kubernetes emulator) with the same assertions. The operator is the real binary, running
//! as the chart's ServiceAccount with leader election on a Lease; triggers are tested with
//! `--resync-interval 1h`, so a resync cannot stand in for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dbx_identity_operator::api::{AssignmentState, DatabricksIdentityGrant, GrantPolicy};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::Case;
use crate::cluster::{Env, Operator, RealCluster, Server, create_namespace, wait_until};

const SCENARIOS: [&str; 7] = [
    "lifecycle",
    "policy_triggers",
    "drift_healed",
    "two_replicas",
    "gitops_health",
    "brownfield_import",
    "time_bound",
];
/// Deadline for what must happen "within seconds".
const SECONDS: Duration = Duration::from_secs(10);
const LABEL: &str = "dbx-operator.io/scenario";

pub fn names() -> Vec<String> {
    let mut names: Vec<String> =
        ["real", "emulator"].iter().flat_map(|s| SCENARIOS.iter().map(move |n| format!("{s}/{n}"))).collect();
    names.push("real/chart_rbac_exact".into());
    names
}

pub fn cases(real: Option<Arc<RealCluster>>) -> Vec<Case> {
    let mut servers = vec![Server::Emulator];
    if let Some(real) = &real {
        servers.insert(0, Server::Real(real.clone()));
    }
    let mut cases = Vec::new();
    let t = Duration::from_secs(150);
    for server in servers {
        let label = server.label();
        let s = server.clone();
        cases.push(Case::new(format!("{label}/lifecycle"), t, move || lifecycle(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/policy_triggers"), t, move || policy_triggers(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/drift_healed"), t, move || drift_healed(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/two_replicas"), t, move || two_replicas(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/gitops_health"), t, move || gitops_health(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/brownfield_import"), t, move || brownfield_import(s)));
        let s = server.clone();
        cases.push(Case::new(format!("{label}/time_bound"), t, move || time_bound(s)));
    }
    if let Some(real) = real {
        cases.push(Case::new("real/chart_rbac_exact", Duration::from_secs(30), move || chart_rbac_exact(real)));
    }
    cases
}

// ---------- helpers shared by the scenarios ----------

fn grant(name: &str, spec: Value) -> DatabricksIdentityGrant {
    serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("grant")
}

fn condition<'a>(
    g: &'a DatabricksIdentityGrant,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    g.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn current(g: &DatabricksIdentityGrant) -> bool {
    g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation
}

fn describe(g: &DatabricksIdentityGrant) -> String {
    serde_json::to_string(&g.status).unwrap_or_default()
}

/// Waits until the grant's Ready condition has `status` (and `reason`, if given) at its
/// current generation.
async fn ready_is(
    api: &Api<DatabricksIdentityGrant>,
    name: &str,
    status: &str,
    reason: Option<&str>,
    within: Duration,
) {
    wait_until(&format!("{name} Ready={status} {reason:?}"), within, || async {
        let g = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&g, "Ready") {
            Some(c) if current(&g) && c.status == status && reason.is_none_or(|r| c.reason == r) => Ok(()),
            _ => Err(describe(&g)),
        }
    })
    .await;
}

async fn gone(api: &Api<DatabricksIdentityGrant>, name: &str, within: Duration) {
    wait_until(&format!("{name} deleted"), within, || async {
        match api.get(name).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Ok(g) => Err(format!("still there: {}", describe(&g))),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

async fn holds_within(env: &Env, principal: &str, role: &str, scope: &str, expected: bool, within: Duration) {
    wait_until(&format!("{principal} holds {role} at {scope} == {expected}"), within, || async {
        if env.holds(principal, role, scope) == expected { Ok(()) } else { Err(format!("{:?}", env.assignments())) }
    })
    .await;
}

fn policy_object(env: &Env, name: &str, roles: &[&str], extra_identities: &[String]) -> GrantPolicy {
    let sub = &env.sandbox.estate.subscription_id;
    let mut identities = vec![format!("/subscriptions/{sub}/**")];
    identities.extend(extra_identities.iter().cloned());
    serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": name},
        "spec": {"namespaceSelector": {"matchLabels": {LABEL: env.id}},
                 "identities": identities, "roles": roles, "scopes": [format!("/subscriptions/{sub}/**")]},
    }))
    .expect("policy")
}

async fn policy(env: &Env, name: &str, roles: &[&str], extra_identities: &[String]) -> GrantPolicy {
    let p = policy_object(env, name, roles, extra_identities);
    Api::<GrantPolicy>::all(env.admin.clone()).create(&PostParams::default(), &p).await.expect("create policy")
}

async fn team_namespace(env: &Env) -> String {
    let ns = format!("{}-team", env.id).replace('_', "-");
    create_namespace(&env.admin, &ns, BTreeMap::from([(LABEL.to_owned(), env.id.clone())])).await.expect("namespace");
    ns
}

async fn metric(op: &Operator, series: &str) -> f64 {
    op.metric(series).await.unwrap_or(0.0)
}

const LEADER: &str = "dbx_identity_operator_leader";
const RECONCILED: &str = "dbx_identity_operator_reconciles_total{result=\"ok\"}";

/// How kstatus (Flux) and the chart's Argo CD check judge each of the scenario's grants and
/// policies as they stand, checked against the conditions: once the generation is observed
/// exactly one of Ready / Reconciling / Stalled is True, and both tools read it the same way.
async fn gitops_agrees(env: &Env) {
    use crate::common::health::{argocd, kstatus};
    let grants: Api<DatabricksIdentityGrant> = Api::all(env.admin.clone());
    let policies: Api<GrantPolicy> = Api::all(env.admin.clone());
    let mut objects: Vec<Value> = Vec::new();
    for g in grants.list(&Default::default()).await.expect("grants").items {
        if g.metadata.namespace.as_deref().is_some_and(|ns| ns.starts_with(&env.id)) {
            objects.push(serde_json::to_value(&g).expect("json"));
        }
    }
    for p in policies.list(&Default::default()).await.expect("policies").items {
        if p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&env.id)) {
            objects.push(serde_json::to_value(&p).expect("json"));
        }
    }
    assert!(!objects.is_empty(), "nothing to judge");
    for obj in &objects {
        let name = format!("{}/{}", obj["kind"], obj["metadata"]["name"]);
        let (argo, message) = argocd(obj).unwrap_or_else(|e| panic!("{name}: the Lua check failed: {e}"));
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        if obj.pointer("/status/observedGeneration") != obj.pointer("/metadata/generation") {
            assert_eq!((kstatus(obj), argo.as_str()), ("InProgress", "Progressing"), "{name}: {obj}");
            continue;
        }
        let true_of = |t: &str| {
            obj.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
        };
        let summary: Vec<&str> = ["Ready", "Reconciling", "Stalled"].into_iter().filter(|t| true_of(t)).collect();
        assert_eq!(summary.len(), 1, "{name}: exactly one of Ready/Reconciling/Stalled must be True: {obj}");
        let observe = obj.pointer("/spec/managementPolicy") == Some(&json!("Observe"));
        let expected = match summary[0] {
            "Ready" if observe && !true_of("InSync") => ("Current", "Suspended"),
            "Ready" => ("Current", "Healthy"),
            "Reconciling" => ("InProgress", "Progressing"),
            _ => ("Failed", "Degraded"),
        };
        assert_eq!((kstatus(obj), argo.as_str()), expected, "{name} ({message}): {obj}");
    }
}

/// The object as a GitOps tool reads it.
async fn as_json(api: &Api<DatabricksIdentityGrant>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.expect("get")).expect("json")
}

// ---------- the scenarios ----------

/// Convergence for each identity kind, a tuple shared by two grants, a spec change, Observe,
/// Retain, Delete through the finalizer, a policy denial, an invalid spec (its repeated Warning
/// folded into a series), and a grant using its own credential Secret.
async fn lifecycle(server: Server) {
    let env = Env::new(server, "lifecycle").await;
    let estate = env.sandbox.estate.clone();
    let sc = &estate.scopes;
    let ns = team_namespace(&env).await;
    let bare_principal = estate.workspaces[1].managed_identity_principal_id.clone();
    policy(
        &env,
        &env.id,
        &["Reader", "Storage Blob Data Reader", "Key Vault Secrets User"],
        &[format!("/principals/{bare_principal}")],
    )
    .await;
    // A credential Secret for a grant that uses its own service principal.
    let (client_id, sp_principal) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    env.sandbox.arm.emulator.register_app_with_secret(&client_id, "team-secret", &sp_principal);
    {
        let mut state = env.sandbox.arm.emulator.state();
        let uaa = state.role_guid_by_name("User Access Administrator").expect("role");
        let scope = dbx_identity_operator::azure::ResourceId::subscription(&estate.subscription_id);
        state.assign_out_of_band(&scope, uaa, &sp_principal);
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "team-sp"},
        "stringData": {"tenantId": estate.tenant_id, "clientId": client_id, "clientSecret": "team-secret"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(env.admin.clone(), &ns).create(&PostParams::default(), &secret).await.expect("secret");

    let operator = env.operator("replica-0", &[&ns], &["--resync-interval", "1h"]);
    let api = env.grants(&ns);
    let pp = PostParams::default();
    let ws0 = &estate.workspaces[0];
    let uc = &estate.access_connectors[0];
    let shared = &estate.access_connectors[1];
    let uai = &shared.user_assigned_identities[0];
    let uc_principal = uc.principal_id.clone().expect("system identity");
    // (grant, spec, principal that must end up holding the role, role, scope)
    let kinds = [
        (
            "ws-mi",
            json!({"workspace": {"resourceId": ws0.id}}),
            ws0.managed_identity_principal_id.clone(),
            "Reader",
            &sc.resource_group,
        ),
        (
            "ws-ac",
            json!({"workspace": {"resourceId": ws0.id, "source": "AccessConnector"}}),
            uc_principal.clone(),
            "Storage Blob Data Reader",
            &sc.storage_account,
        ),
        (
            "ac-system",
            json!({"accessConnector": {"resourceId": uc.id}}),
            uc_principal.clone(),
            "Key Vault Secrets User",
            &sc.key_vault,
        ),
        (
            "ac-uai",
            json!({"accessConnector": {"resourceId": shared.id, "userAssignedIdentityId": uai.id}}),
            uai.principal_id.clone(),
            "Reader",
            &sc.event_hub_namespace,
        ),
        (
            "principal",
            json!({"principal": {"principalId": bare_principal}}),
            bare_principal.clone(),
            "Reader",
            &sc.key_vault,
        ),
    ];
    for (name, identity, _, role, scope) in &kinds {
        let spec = json!({"identity": identity, "roleAssignments": [{"role": role, "scope": scope}]});
        api.create(&pp, &grant(name, spec)).await.expect("create");
    }
    let own = json!({"identity": {"accessConnector": {"resourceId": uc.id}}, "azureCredentialRef": {"name": "team-sp"},
                     "roleAssignments": [{"role": "Storage Blob Data Reader", "scope": sc.storage_account}]});
    api.create(&pp, &grant("own-credential", own)).await.expect("create");
    for (name, _, principal, role, scope) in &kinds {
        ready_is(&api, name, "True", None, Duration::from_secs(30)).await;
        assert!(env.holds(principal, role, scope), "{name}: {principal} does not hold {role} at {scope}");
    }
    ready_is(&api, "own-credential", "True", None, Duration::from_secs(30)).await;

    // A tuple two grants want stays until the last one goes.
    let ws1 = &estate.workspaces[1];
    for name in ["share-a", "share-b"] {
        let spec = json!({"identity": {"workspace": {"resourceId": ws1.id}},
                          "roleAssignments": [{"role": "Reader", "scope": sc.storage_account}]});
        api.create(&pp, &grant(name, spec)).await.expect("create");
        ready_is(&api, name, "True", None, SECONDS).await;
    }
    let ws1_principal = &ws1.managed_identity_principal_id;
    api.delete("share-a", &DeleteParams::default()).await.expect("delete");
    gone(&api, "share-a", SECONDS).await;
    assert!(env.holds(ws1_principal, "Reader", &sc.storage_account), "the shared tuple went with the first grant");
    api.delete("share-b", &DeleteParams::default()).await.expect("delete");
    gone(&api, "share-b", SECONDS).await;
    holds_within(&env, ws1_principal, "Reader", &sc.storage_account, false, SECONDS).await;

    // A spec change moves the assignment.
    let patch = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": sc.storage_account}]}});
    api.patch("ws-mi", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    ready_is(&api, "ws-mi", "True", None, SECONDS).await;
    holds_within(&env, &ws0.managed_identity_principal_id, "Reader", &sc.resource_group, false, SECONDS).await;
    assert!(env.holds(&ws0.managed_identity_principal_id, "Reader", &sc.storage_account));

    // Observe: planned, nothing written.
    let before = env.sandbox.arm.emulator.state().all_assignments().len();
    let spec = json!({"identity": {"workspace": {"resourceId": ws0.id}}, "managementPolicy": "Observe",
                      "roleAssignments": [{"role": "Key Vault Secrets User", "scope": sc.key_vault}]});
    api.create(&pp, &grant("observe", spec)).await.expect("create");
    wait_until("observe: Planned", SECONDS, || async {
        let g = api.get("observe").await.map_err(|e| e.to_string())?;
        let planned = g.status.iter().flat_map(|s| &s.role_assignments).any(|r| r.state == AssignmentState::Planned);
        if planned && current(&g) { Ok(()) } else { Err(describe(&g)) }
    })
    .await;
    assert_eq!(env.sandbox.arm.emulator.state().all_assignments().len(), before, "Observe wrote to Azure");

    // Retain leaves the assignment; Delete (the default, through the finalizer) removes it.
    let spec = json!({"identity": {"workspace": {"resourceId": ws1.id}}, "deletionPolicy": "Retain",
                      "roleAssignments": [{"role": "Storage Blob Data Reader", "scope": sc.storage_account}]});
    api.create(&pp, &grant("retain", spec)).await.expect("create");
    ready_is(&api, "retain", "True", None, SECONDS).await;
    api.delete("retain", &DeleteParams::default()).await.expect("delete");
    gone(&api, "retain", SECONDS).await;
    assert!(env.holds(ws1_principal, "Storage Blob Data Reader", &sc.storage_account), "Retain removed it");
    api.delete("ac-system", &DeleteParams::default()).await.expect("delete");
    gone(&api, "ac-system", SECONDS).await;
    assert!(!env.holds(&uc_principal, "Key Vault Secrets User", &sc.key_vault), "Delete left it in Azure");

    // A policy denial: never created.
    let spec = json!({"identity": {"workspace": {"resourceId": ws0.id}},
                      "roleAssignments": [{"role": "Owner", "scope": sc.resource_group}]});
    api.create(&pp, &grant("owner", spec)).await.expect("create");
    wait_until("owner: denied", SECONDS, || async {
        let g = api.get("owner").await.map_err(|e| e.to_string())?;
        let denied = g.status.iter().flat_map(|s| &s.role_assignments).any(|r| r.state == AssignmentState::Denied);
        let compliant = condition(&g, "PolicyCompliant").map(|c| c.status.as_str());
        if denied && compliant == Some("False") && current(&g) { Ok(()) } else { Err(describe(&g)) }
    })
    .await;
    assert!(!env.holds(&ws0.managed_identity_principal_id, "Owner", &sc.resource_group));

    // An invalid spec (past admission: a scope where the role goes) is reported; a repeat of
    // the same Warning bumps the Event's series.
    let spec = json!({"identity": {"workspace": {"resourceId": ws0.id}},
                      "roleAssignments": [{"role": sc.resource_group, "scope": sc.resource_group}]});
    api.create(&pp, &grant("invalid", spec)).await.expect("create");
    ready_is(&api, "invalid", "False", Some("InvalidSpec"), SECONDS).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.admin.clone(), &ns);
    let touch = json!({"metadata": {"annotations": {"example.com/touched": "1"}}});
    api.patch("invalid", &PatchParams::default(), &Patch::Merge(&touch)).await.expect("touch");
    wait_until("the repeated InvalidSpec Event", SECONDS, || async {
        let list = events.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
        let invalid: Vec<_> = list.iter().filter(|e| e.reason.as_deref() == Some("InvalidSpec")).collect();
        let series = invalid.iter().any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2));
        if invalid.len() == 1 && series { Ok(()) } else { Err(format!("{invalid:?}")) }
    })
    .await;
    gitops_agrees(&env).await;

    // SIGTERM: in-flight work finishes, the Lease is released, the process exits 0.
    let log = operator.log.clone();
    let exit = operator.stop().await;
    assert!(
        exit.is_some_and(|e| e.success()),
        "the operator did not stop cleanly on SIGTERM ({exit:?}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A GrantPolicy narrowed, widened, deleted and re-created under the same name, and the
/// namespace relabelled: each re-judges the grant within seconds with a 1 h resync, removing
/// what is no longer allowed.
async fn policy_triggers(server: Server) {
    let env = Env::new(server, "policy_triggers").await;
    let estate = env.sandbox.estate.clone();
    let ns = team_namespace(&env).await;
    policy(&env, &env.id, &["Reader"], &[]).await;
    let _operator = env.operator("replica-0", &[&ns], &["--resync-interval", "1h"]);
    let api = env.grants(&ns);
    let (ws, rg) = (&estate.workspaces[0], &estate.scopes.resource_group);
    let principal = &ws.managed_identity_principal_id;
    let spec =
        json!({"identity": {"workspace": {"resourceId": ws.id}}, "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("g", spec)).await.expect("create");
    ready_is(&api, "g", "True", None, Duration::from_secs(30)).await;
    assert!(env.holds(principal, "Reader", rg));

    let policies: Api<GrantPolicy> = Api::all(env.admin.clone());
    let roles = |roles: &[&str]| json!({"spec": {"roles": roles}});
    // Narrowed: Reader no longer allowed.
    policies
        .patch(&env.id, &PatchParams::default(), &Patch::Merge(&roles(&["Storage Blob Data Reader"])))
        .await
        .expect("narrow");
    holds_within(&env, principal, "Reader", rg, false, SECONDS).await;
    ready_is(&api, "g", "False", None, SECONDS).await;
    // Widened again.
    policies.patch(&env.id, &PatchParams::default(), &Patch::Merge(&roles(&["Reader"]))).await.expect("widen");
    ready_is(&api, "g", "True", None, SECONDS).await;
    holds_within(&env, principal, "Reader", rg, true, SECONDS).await;
    // Deleted: nothing governs the namespace.
    policies.delete(&env.id, &DeleteParams::default()).await.expect("delete policy");
    holds_within(&env, principal, "Reader", rg, false, SECONDS).await;
    ready_is(&api, "g", "False", None, SECONDS).await;
    // Re-created under the same name (generation 1 again).
    policy(&env, &env.id, &["Reader"], &[]).await;
    ready_is(&api, "g", "True", None, SECONDS).await;
    holds_within(&env, principal, "Reader", rg, true, SECONDS).await;
    // The namespace relabelled out of the policy, then back.
    let namespaces: Api<Namespace> = Api::all(env.admin.clone());
    let label = |v: &str| json!({"metadata": {"labels": {LABEL: v}}});
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label("elsewhere"))).await.expect("relabel");
    holds_within(&env, principal, "Reader", rg, false, SECONDS).await;
    ready_is(&api, "g", "False", None, SECONDS).await;
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label(&env.id))).await.expect("relabel back");
    ready_is(&api, "g", "True", None, SECONDS).await;
    holds_within(&env, principal, "Reader", rg, true, SECONDS).await;
    gitops_agrees(&env).await;
}

/// An assignment deleted out of band is re-created within seconds and counted
/// (`driftCorrections`): the scope refresher (`--drift-check-interval 2s`) wakes the grant, not
/// the resync (1 h).
async fn drift_healed(server: Server) {
    let env = Env::new(server, "drift_healed").await;
    let estate = env.sandbox.estate.clone();
    let ns = team_namespace(&env).await;
    policy(&env, &env.id, &["Reader"], &[]).await;
    let _operator = env.operator("replica-0", &[&ns], &["--resync-interval", "1h", "--drift-check-interval", "2s"]);
    let api = env.grants(&ns);
    let (ws, rg) = (&estate.workspaces[0], &estate.scopes.resource_group);
    let spec =
        json!({"identity": {"workspace": {"resourceId": ws.id}}, "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("g", spec)).await.expect("create");
    ready_is(&api, "g", "True", None, Duration::from_secs(30)).await;
    let principal = &ws.managed_identity_principal_id;
    let name = env
        .assignments()
        .into_iter()
        .find(|(_, _, _, p)| p.eq_ignore_ascii_case(principal))
        .map(|a| a.0)
        .expect("the grant's assignment");
    // Several drift checks after the grant last reconciled: the refresher must still list the
    // grant's scope though no grant has read it since (grants read it once per resync).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(env.sandbox.arm.emulator.state().delete_out_of_band(&name));
    holds_within(&env, principal, "Reader", rg, true, SECONDS).await;
    wait_until("driftCorrections counted", SECONDS, || async {
        let g = api.get("g").await.map_err(|e| e.to_string())?;
        if g.status.as_ref().is_some_and(|s| s.drift_corrections >= 1) { Ok(()) } else { Err(describe(&g)) }
    })
    .await;
    gitops_agrees(&env).await;
}

/// Two replicas: exactly one leads and reconciles, both are ready; the leader SIGKILLed, the
/// other takes over and finishes the work. A replica that cannot reach the API server is not
/// ready.
async fn two_replicas(server: Server) {
    let env = Env::new(server, "two_replicas").await;
    let estate = env.sandbox.estate.clone();
    let ns = team_namespace(&env).await;
    policy(&env, &env.id, &["Reader"], &[]).await;
    let mut replicas = vec![
        env.operator("replica-a", &[&ns], &["--resync-interval", "1h"]),
        env.operator("replica-b", &[&ns], &["--resync-interval", "1h"]),
    ];
    wait_until("one leader, both ready", Duration::from_secs(30), || async {
        let mut leaders = 0.0;
        let mut ready = Vec::new();
        for r in &replicas {
            leaders += metric(r, LEADER).await;
            ready.push(r.readyz().await);
        }
        if leaders == 1.0 && ready.iter().all(|r| *r == Some(200)) {
            Ok(())
        } else {
            Err(format!("leaders {leaders}, readyz {ready:?}"))
        }
    })
    .await;
    let api = env.grants(&ns);
    let rg = &estate.scopes.resource_group;
    let spec = |i: usize| json!({"identity": {"workspace": {"resourceId": estate.workspaces[i].id}}, "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("one", spec(0))).await.expect("create");
    ready_is(&api, "one", "True", None, Duration::from_secs(30)).await;
    let mut leader = None;
    for (i, r) in replicas.iter().enumerate() {
        if metric(r, LEADER).await == 1.0 {
            leader = Some(i);
            assert!(metric(r, RECONCILED).await >= 1.0, "the leader did not reconcile");
        } else {
            assert_eq!(metric(r, RECONCILED).await, 0.0, "the standby reconciled");
            assert_eq!(r.readyz().await, Some(200), "the standby is not ready");
        }
    }
    let leader = leader.expect("a leader");
    replicas[leader].kill();
    let survivor = &replicas[1 - leader];
    api.create(&PostParams::default(), &grant("two", spec(1))).await.expect("create");
    ready_is(&api, "two", "True", None, Duration::from_secs(40)).await;
    assert_eq!(metric(survivor, LEADER).await, 1.0, "the survivor does not lead");
    assert!(env.holds(&estate.workspaces[1].managed_identity_principal_id, "Reader", rg));

    // A replica whose API server is unreachable is alive but not ready.
    let closed = crate::cluster::free_port();
    let kubeconfig = env.dir.path().join("unreachable-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{closed}\nusers:\n- name: x\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: x, user: x}}\ncurrent-context: x\n"),
    )
    .expect("kubeconfig");
    let mut cut_off = env.operator_with_kubeconfig("cut-off", &[&ns], &["--resync-interval", "1h"], &kubeconfig);
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Some(exit) = cut_off.exited() {
        panic!("the cut-off replica exited ({exit}) instead of reporting not ready: {}", cut_off.log_text());
    }
    assert_eq!(cut_off.readyz().await, Some(503), "a replica that cannot reach the API server reports ready");
    gitops_agrees(&env).await;
}

/// Every request the operator's ServiceAccount made on the real server was allowed by the
/// chart's RBAC (no 403), and every verb the chart grants was used (least privilege).
async fn chart_rbac_exact(real: Arc<RealCluster>) {
    let requests = real.operator_requests();
    assert!(requests.len() > 20, "too few operator requests in the audit log: {}", requests.len());
    let forbidden: Vec<String> = requests
        .iter()
        .filter(|r| r.4 == 403)
        .map(|(verb, group, resource, ns, _)| format!("{verb} {group}/{resource} in '{ns}'"))
        .collect();
    assert!(forbidden.is_empty(), "the chart's RBAC refused the operator:\n{}", forbidden.join("\n"));
    let mut unused = Vec::new();
    for doc in crate::cluster::chart_rbac().expect("rbac") {
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        if !requests.iter().any(|r| r.0 == verb && r.1 == group && r.2 == resource) {
                            unused.push(format!("{verb} {group}/{resource}"));
                        }
                    }
                }
            }
        }
    }
    assert!(unused.is_empty(), "the chart grants what the operator never used:\n{}", unused.join("\n"));
}

/// Each health a grant can have, reached by a real reconcile and judged by kstatus's algorithm
/// and by the chart's Argo CD checks; `kubectl wait --for=condition=Ready` returns when a grant
/// converges; a spec change the operator has not judged yet reads as in progress.
async fn gitops_health(server: Server) {
    use crate::common::health::{argocd, kstatus};
    let env = Env::new(server, "gitops_health").await;
    let estate = env.sandbox.estate.clone();
    let sc = &estate.scopes;
    let ns = team_namespace(&env).await;
    // A principal Entra never heard of: Azure answers PrincipalNotFound, retried on its own.
    let ghost = uuid::Uuid::new_v4().to_string();
    policy(&env, &env.id, &["Reader"], &[format!("/principals/{ghost}")]).await;
    let mut broken = policy_object(&env, &format!("{}-broken", env.id), &["Reader"], &[]);
    broken.spec.identities = vec!["/subscriptions/*/resourceGroups/rg-x**".into()];
    Api::<GrantPolicy>::all(env.admin.clone()).create(&PostParams::default(), &broken).await.expect("admitted");
    let api = env.grants(&ns);
    let pp = PostParams::default();
    // Before the operator has ever looked at it, a new grant reads as not yet observed (the
    // CRD's status default), so kstatus does not call it Current on the strength of no status.
    let fresh = json!({"identity": {"workspace": {"resourceId": estate.workspaces[0].id}},
                       "roleAssignments": [{"role": "Reader", "scope": sc.storage_account}]});
    let created = api.create(&pp, &grant("fresh", fresh)).await.expect("create");
    let obj = serde_json::to_value(&created).expect("json");
    assert_eq!(obj.pointer("/status/observedGeneration"), Some(&json!(0)), "create response: {obj}");
    let obj = as_json(&api, "fresh").await;
    assert_eq!(obj.pointer("/status/observedGeneration"), Some(&json!(0)), "{obj}");
    assert_eq!((kstatus(&obj), argocd(&obj).expect("lua").0.as_str()), ("InProgress", "Progressing"), "{obj}");
    let policies: Api<GrantPolicy> = Api::all(env.admin.clone());
    let obj = serde_json::to_value(policies.get(&env.id).await.expect("policy")).expect("json");
    assert_eq!(kstatus(&obj), "InProgress", "a policy nobody has judged yet: {obj}");
    let operator = env.operator("replica-0", &[&ns], &["--resync-interval", "1h"]);
    ready_is(&api, "fresh", "True", None, SECONDS).await;
    let ws0 = &estate.workspaces[0];
    let workspace = json!({"workspace": {"resourceId": ws0.id}});
    let grants = [
        (
            "healthy",
            json!({"identity": workspace, "roleAssignments": [{"role": "Reader", "scope": sc.resource_group}]}),
        ),
        (
            "progressing",
            json!({"identity": {"principal": {"principalId": ghost}},
                   "roleAssignments": [{"role": "Reader", "scope": sc.resource_group}]}),
        ),
        (
            "degraded",
            json!({"identity": workspace, "roleAssignments": [{"role": "Owner", "scope": sc.resource_group}]}),
        ),
        (
            "suspended",
            json!({"identity": workspace, "managementPolicy": "Observe",
                   "roleAssignments": [{"role": "Reader", "scope": sc.key_vault}]}),
        ),
    ];
    api.create(&pp, &grant("healthy", grants[0].1.clone())).await.expect("create");
    // Started before the grant converges: it must return when it does.
    let wait = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["wait", "--for=condition=Ready", "dbgrant/healthy", "-n", &ns, "--timeout=30s"])
        .output();
    let waited = wait.await.expect("kubectl");
    assert!(
        waited.status.success(),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));
    for (name, spec) in &grants[1..] {
        api.create(&pp, &grant(name, spec.clone())).await.expect("create");
    }
    let expectations = [
        ("healthy", "Ready", "Ready", "Current", "Healthy"),
        ("progressing", "Reconciling", "PrincipalNotFound", "InProgress", "Progressing"),
        ("degraded", "Stalled", "RoleNotAllowed", "Failed", "Degraded"),
        ("suspended", "Ready", "ChangesPlanned", "Current", "Suspended"),
    ];
    for (name, type_, reason, ks, argo) in expectations {
        wait_until(&format!("{name}: {type_}=True ({reason})"), SECONDS, || async {
            let g = api.get(name).await.map_err(|e| e.to_string())?;
            match condition(&g, type_) {
                Some(c) if current(&g) && c.status == "True" && c.reason == reason => Ok(()),
                _ => Err(describe(&g)),
            }
        })
        .await;
        let obj = as_json(&api, name).await;
        assert_eq!(kstatus(&obj), ks, "{name}: {obj}");
        assert_eq!(argocd(&obj).expect("lua").0, argo, "{name}: {obj}");
    }
    for (name, ks, argo) in [
        (env.id.clone(), "Current", "Healthy"),
        (broken.metadata.name.clone().unwrap_or_default(), "Failed", "Degraded"),
    ] {
        wait_until(&format!("policy {name} judged"), SECONDS, || async {
            let p = policies.get(&name).await.map_err(|e| e.to_string())?;
            let obj = serde_json::to_value(&p).map_err(|e| e.to_string())?;
            let judged = (kstatus(&obj), argocd(&obj)?.0);
            if judged == (ks, argo.to_owned()) { Ok(()) } else { Err(format!("{judged:?}: {obj}")) }
        })
        .await;
    }
    gitops_agrees(&env).await;

    // Every metric (and label matched on) the chart's dashboard and alerts query is exported.
    let (code, scrape) = crate::cluster::http_get(&operator.metrics).await.expect("scrape");
    assert_eq!(code, 200);
    assert!(crate::common::observability::chart_queries().len() >= 15, "the dashboard lost its panels");
    let missing = crate::common::observability::unexported(&scrape);
    assert!(missing.is_empty(), "{missing:#?}\n{scrape}");

    // A spec change nobody has judged yet (the operator is stopped) is in progress for both.
    let exit = operator.stop().await;
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    let patch = json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": sc.storage_account}]}});
    api.patch("healthy", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    let obj = as_json(&api, "healthy").await;
    assert_eq!(kstatus(&obj), "InProgress", "{obj}");
    assert_eq!(argocd(&obj).expect("lua").0, "Progressing", "{obj}");
}

/// The read-only commands against this server: `import` writes manifests for hand-made
/// assignments; the server admits them, its `kubernetes.io/metadata.name` label lets the
/// imported policies select the namespace, and the operator (Observe, then Enforce) adopts
/// everything without one ARM write; `plan` then has nothing to do and `audit` names the grants.
async fn brownfield_import(server: Server) {
    let env = Env::new(server, "brownfield_import").await;
    let estate = env.sandbox.estate.clone();
    let connector = estate.access_connectors[0].principal_id.clone().expect("system-assigned");
    {
        let mut state = env.sandbox.arm.emulator.state();
        for (scope, role, principal) in [
            (&estate.scopes.resource_group, "Reader", &connector),
            (&estate.scopes.storage_account, "Storage Blob Data Reader", &connector),
            (
                &estate.scopes.storage_account,
                "Storage Blob Data Reader",
                &estate.workspaces[0].managed_identity_principal_id,
            ),
        ] {
            let guid = state.role_guid_by_name(role).expect("role");
            state.assign_out_of_band(
                &dbx_identity_operator::azure::ResourceId::parse(scope).expect("scope"),
                guid,
                principal,
            );
        }
    }
    let ns = format!("{}-data", env.id);
    create_namespace(&env.admin, &ns, BTreeMap::new()).await.expect("namespace");
    // Async: the emulators serve from this runtime while the command runs.
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dbx-identity-operator"))
            .args(args)
            .envs(env.sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("KUBECONFIG")
            .output()
    };
    let out_dir = env.dir.path().join("imported");
    let out = run(&["import", "-q", "--namespace", &ns, "--out", out_dir.to_str().expect("path")]).await.expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let writes = |env: &Env| {
        let e = &env.sandbox.arm.emulator;
        e.count("PutRoleAssignment") + e.count("DeleteRoleAssignment")
    };
    // Applied as a person would: the server admits every document.
    let mut names = Vec::new();
    for file in crate::common::yaml_files(&out_dir) {
        for doc in crate::common::yaml_documents(&file) {
            if doc["kind"] == "GrantPolicy" {
                let policy: GrantPolicy = serde_json::from_value(doc).expect("policy");
                Api::<GrantPolicy>::all(env.admin.clone())
                    .create(&PostParams::default(), &policy)
                    .await
                    .expect("admitted");
            } else {
                let grant: DatabricksIdentityGrant = serde_json::from_value(doc).expect("grant");
                names.push(grant.metadata.name.clone().unwrap_or_default());
                env.grants(&ns).create(&PostParams::default(), &grant).await.expect("admitted");
            }
        }
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let operator = env.operator("replica-0", &[&ns], &["--resync-interval", "1h"]);
    let api = env.grants(&ns);
    let all_adopted = |api: Api<DatabricksIdentityGrant>, name: String| async move {
        let g = api.get(&name).await.map_err(|e| e.to_string())?;
        let status = g.status.unwrap_or_default();
        let adopted = status.observed_generation == g.metadata.generation
            && !status.role_assignments.is_empty()
            && status.role_assignments.iter().all(|e| e.state == AssignmentState::Adopted);
        if adopted { Ok(()) } else { Err(format!("{:?}", status.role_assignments)) }
    };
    for name in &names {
        wait_until(&format!("{name} adopted in Observe"), SECONDS, || all_adopted(api.clone(), name.clone())).await;
    }
    api.patch(&names[0], &PatchParams::default(), &Patch::Merge(&json!({"spec": {"managementPolicy": "Enforce"}})))
        .await
        .expect("patch");
    wait_until("adopted under Enforce", SECONDS, || all_adopted(api.clone(), names[0].clone())).await;
    assert_eq!(writes(&env), 0, "the import's grants wrote to Azure");

    let kubeconfig = env.admin_kubeconfig.to_str().expect("path").to_owned();
    let out = run(&["plan", "-f", out_dir.to_str().expect("path"), "--kubeconfig", &kubeconfig]).await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("; 3 unchanged."), "{stdout}");
    let out = run(&["audit", "-q", "--kubeconfig", &kubeconfig]).await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.matches(&format!("adopted by {ns}/")).count(), 3, "{stdout}");
    assert_eq!(writes(&env), 0);
    gitops_agrees(&env).await;
    let exit = operator.stop().await;
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
}

/// Time-bound access, with `--resync-interval 1h` so only the expiry timer can act:
/// - a GrantPolicy's `maxDuration` denies an entry without an expiry;
/// - an entry is removed within seconds of its `expiresAt` and reads `Expired` (the grant
///   `Ready=True` with reason `Expired`, an `Expired` Event);
/// - extended after its end it is assigned again; extended a moment before its end, nothing is
///   removed;
/// - with the operator down across an end, the assignment is removed on start and the Event
///   says how late.
async fn time_bound(server: Server) {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let env = Env::new(server, "time_bound").await;
    let estate = env.sandbox.estate.clone();
    let ns = team_namespace(&env).await;
    let mut limited = policy_object(&env, &env.id, &["Reader"], &[]);
    limited.spec.max_duration = Some("1h".into());
    Api::<GrantPolicy>::all(env.admin.clone()).create(&PostParams::default(), &limited).await.expect("policy");
    let resync = ["--resync-interval", "1h"];
    let operator = env.operator("replica-0", &[&ns], &resync);
    let api = env.grants(&ns);
    let (ws, rg) = (&estate.workspaces[0], &estate.scopes.resource_group);
    let principal = ws.managed_identity_principal_id.clone();
    let in_seconds = |s: i64| Timestamp::from_second(Timestamp::now().as_second() + s).expect("time");
    let set_end = |end: Timestamp| {
        let api = api.clone();
        async move {
            api.patch(
                "backfill",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"expiresAt": end.to_string()}})),
            )
            .await
            .expect("patch");
        }
    };
    let next_expiry_is = |end: Timestamp| {
        let api = api.clone();
        async move {
            wait_until(&format!("nextExpiry {end}"), SECONDS, || async {
                let g = api.get("backfill").await.map_err(|e| e.to_string())?;
                let next = g.status.as_ref().and_then(|s| s.next_expiry.as_ref()).map(|t| t.0);
                if current(&g) && next == Some(end) { Ok(()) } else { Err(describe(&g)) }
            })
            .await;
        }
    };

    let forever =
        json!({"identity": {"workspace": {"resourceId": ws.id}}, "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("forever", forever)).await.expect("create");
    ready_is(&api, "forever", "False", Some("DurationNotAllowed"), SECONDS).await;

    // activeFor counts from the first assignment, recorded in status, and survives a restart.
    let window = json!({"identity": {"accessConnector": {"resourceId": estate.access_connectors[0].id}},
                        "activeFor": "10m", "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("window", window)).await.expect("create");
    ready_is(&api, "window", "True", Some("Ready"), SECONDS).await;
    let window_clock = |g: &DatabricksIdentityGrant| {
        let e = &g.status.as_ref().expect("status").role_assignments[0];
        (e.assigned_at.as_ref().map(|t| t.0), e.expires_at.as_ref().map(|t| t.0))
    };
    let (assigned_at, window_end) = window_clock(&api.get("window").await.expect("get"));
    assert_eq!(window_end, assigned_at.map(|a| a + SignedDuration::from_mins(10)), "activeFor from assignedAt");
    wait_until("the expiring gauge counts the window", SECONDS, || async {
        let n = metric(&operator, "dbx_identity_operator_assignments_expiring{within=\"1h\"}").await;
        if n >= 1.0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;

    let end = in_seconds(8);
    let spec = json!({"identity": {"workspace": {"resourceId": ws.id}}, "expiresAt": end.to_string(),
                      "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("backfill", spec)).await.expect("create");
    ready_is(&api, "backfill", "True", Some("Ready"), SECONDS).await;
    let g = api.get("backfill").await.expect("get");
    let entry = &g.status.as_ref().expect("status").role_assignments[0];
    assert_eq!(entry.reason.as_deref(), Some("ExpiringSoon"), "within the 1 h warning: {}", describe(&g));
    assert_eq!(entry.expires_at.as_ref().map(|t| t.0), Some(end));
    assert!(env.holds(&principal, "Reader", rg));
    holds_within(&env, &principal, "Reader", rg, false, Duration::from_secs(8) + SECONDS).await;
    let late = Timestamp::now().duration_since(end);
    assert!(late <= SignedDuration::from_secs(4), "removed {late:?} after expiresAt");
    ready_is(&api, "backfill", "True", Some("Expired"), SECONDS).await;
    let g = api.get("backfill").await.expect("get");
    let entry = &g.status.as_ref().expect("status").role_assignments[0];
    assert_eq!(entry.state, AssignmentState::Expired, "{}", describe(&g));
    assert!(entry.removed_at.is_some(), "{}", describe(&g));
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.admin.clone(), &ns);
    let expired_events = || async {
        let list = events.list(&Default::default()).await.expect("events").items;
        list.into_iter().filter(|e| e.reason.as_deref() == Some("Expired")).filter_map(|e| e.note).collect::<Vec<_>>()
    };
    assert_eq!(expired_events().await.len(), 1, "{:?}", expired_events().await);

    // Extended after its end: assigned again.
    let end = in_seconds(1800);
    set_end(end).await;
    holds_within(&env, &principal, "Reader", rg, true, SECONDS).await;
    ready_is(&api, "backfill", "True", Some("Ready"), SECONDS).await;

    // Extended a moment before its end: the status still shows the old end when it passes.
    let soon = in_seconds(6);
    set_end(soon).await;
    next_expiry_is(soon).await;
    set_end(end).await;
    tokio::time::sleep(Duration::from_secs(
        soon.as_second().saturating_sub(Timestamp::now().as_second()).max(0) as u64 + 3,
    ))
    .await;
    assert!(env.holds(&principal, "Reader", rg), "an extension written before the end was undone");
    next_expiry_is(end).await;

    // Azure PIM holds an entry: its status (enforcedBy, managedSchedules) survives the server's
    // schema, and no ordinary assignment is made.
    let pim = json!({"identity": {"workspace": {"resourceId": estate.workspaces[1].id}}, "enforcement": "AzurePIM",
                     "expiresAt": in_seconds(3600).to_string(), "justification": "quarterly vendor access",
                     "roleAssignments": [{"role": "Reader", "scope": rg}]});
    api.create(&PostParams::default(), &grant("vendor", pim)).await.expect("create");
    ready_is(&api, "vendor", "True", Some("Ready"), SECONDS).await;
    let g = api.get("vendor").await.expect("get");
    let status = g.status.clone().expect("status");
    assert_eq!(
        status.role_assignments[0].enforced_by,
        Some(dbx_identity_operator::api::Enforcement::AzurePim),
        "{}",
        describe(&g)
    );
    assert_eq!(status.managed_schedules.len(), 1, "{}", describe(&g));
    assert!(status.managed_assignments.is_empty() && status.unmanaged_assignments.is_empty(), "{}", describe(&g));
    assert_eq!(env.sandbox.arm.emulator.state().all_schedules().len(), 1);

    // The operator down across an end: removed on start, and the Event says how late.
    let end = in_seconds(4);
    set_end(end).await;
    next_expiry_is(end).await;
    assert!(operator.stop().await.is_some_and(|e| e.success()));
    tokio::time::sleep(Duration::from_secs(4 + 17)).await;
    assert!(env.holds(&principal, "Reader", rg), "nothing may remove it while the operator is down");
    let _operator = env.operator("replica-1", &[&ns], &resync);
    holds_within(&env, &principal, "Reader", rg, false, SECONDS).await;
    ready_is(&api, "backfill", "True", Some("Expired"), SECONDS).await;
    assert_eq!(
        window_clock(&api.get("window").await.expect("get")),
        (assigned_at, window_end),
        "kept across the restart"
    );
    wait_until("an Expired Event saying how late", SECONDS, || async {
        let notes = expired_events().await;
        if notes.iter().any(|n| n.contains(" s late")) { Ok(()) } else { Err(format!("{notes:?}")) }
    })
    .await;
    gitops_agrees(&env).await;
}

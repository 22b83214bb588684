//! A realistic estate of N grants, for the scale benchmark (`benches/converge.rs`) and the
//! reliability suite's load test (`tests/integration/load.rs`): Azure seeded with workspaces, access
//! connectors, scopes across several subscriptions and custom roles, and the grants, namespaces
//! and GrantPolicy that ask for roles there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, PostParams};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::Sandbox;
use super::arm::state::ResourceKind;
use crate::api::{DatabricksIdentityGrant, GrantPolicy};
use crate::azure::ResourceId;
use crate::azure::models::Permission;

const GROUP: &str = "identity.dbx-operator.io";
/// Grants are spread over this many namespaces, all labelled for the workload's policy.
pub const NAMESPACES: usize = 10;
const TEAM_LABEL: &str = "dbx-operator.io/team";
const NAMESPACE_PREFIX: &str = "team-";

/// One grant to create: its identity block and role assignments.
#[derive(Debug, Clone)]
pub struct GrantPlan {
    pub namespace: String,
    pub name: String,
    pub identity: Value,
    /// The principal behind `identity` (to count distinct tuples).
    pub principal: String,
    /// (role, scope) pairs.
    pub assignments: Vec<(String, String)>,
}

impl GrantPlan {
    /// The grant as a Kubernetes object.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": "DatabricksIdentityGrant",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "identity": self.identity,
                "roleAssignments": assignments_json(&self.assignments),
            }
        })
    }
}

/// `spec.roleAssignments` for (role, scope) pairs.
pub fn assignments_json(assignments: &[(String, String)]) -> Value {
    Value::Array(assignments.iter().map(|(role, scope)| json!({"role": role, "scope": scope})).collect())
}

/// The planned grants and what they add up to in Azure.
pub struct Workload {
    pub grants: Vec<GrantPlan>,
    pub scopes: Vec<(String, ScopeKind)>,
    /// Distinct (principal, role, scope): the PUTs convergence needs.
    pub unique_tuples: usize,
    /// Distinct tuples and scopes per subscription (each has its own throttling buckets).
    pub per_subscription: BTreeMap<String, (usize, usize)>,
    pub identities: usize,
    pub role_names: BTreeSet<String>,
    /// Distinct (role, scope) per subscription: roles are looked up by name where they are used
    /// (a custom role is visible only within its assignable scopes), one read each.
    pub role_lookups: BTreeMap<String, usize>,
}

/// What a scope is, and so which roles make sense there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScopeKind {
    Storage,
    Vault,
    ResourceGroup,
}

const CUSTOM_ROLES: [(&str, ScopeKind); 3] = [
    ("Lakehouse Curated Writer", ScopeKind::Storage),
    ("Vault Certificate Reader", ScopeKind::Vault),
    ("Data Platform Observer", ScopeKind::ResourceGroup),
];

/// Roles a platform team would grant at a scope of this kind.
pub fn roles_for(kind: ScopeKind) -> Vec<&'static str> {
    match kind {
        ScopeKind::Storage => {
            vec!["Storage Blob Data Reader", "Storage Blob Data Contributor", "Lakehouse Curated Writer"]
        }
        ScopeKind::Vault => vec!["Key Vault Secrets User", "Key Vault Reader", "Vault Certificate Reader"],
        ScopeKind::ResourceGroup => vec!["Reader", "Data Platform Observer"],
    }
}

/// Seeds Azure with workspaces, connectors, scopes and custom roles, and plans N grants:
/// identities split between workspace identities and access connectors, 1–3 assignments each,
/// 20% of grants sharing a tuple with an earlier grant.
pub fn build(sandbox: &Sandbox, n: usize, scopes: usize, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let sub = sandbox.estate.subscription_id.clone();
    let mut state = sandbox.arm.emulator.state();
    let rg = |name: String| ResourceId::resource_group(&sub, &name);
    let old = Duration::from_secs(86_400);

    // Azure allows 4000 role assignments per subscription, so a large estate's data lives in
    // several: one data subscription per 1500 grants (about 2650 assignments), the first being
    // the sandbox's. The operator holds User Access Administrator in each.
    let data_subscriptions: Vec<String> = std::iter::once(sub.clone())
        .chain(
            (1..n.div_ceil(1500))
                .map(|k| uuid::Uuid::from_u128(0x6f1c7d2e_0000_4000_8000_000000000000 + k as u128).to_string()),
        )
        .collect();
    let uaa = state.role_guid_by_name("User Access Administrator");
    for extra in &data_subscriptions[1..] {
        state.add_subscription(extra);
        if let Some(uaa) = uaa {
            state.assign_out_of_band(&ResourceId::subscription(extra), uaa, &sandbox.estate.operator_principal_id);
        }
    }

    // Scopes across 10 resource groups per data subscription.
    let mut scope_list = Vec::new();
    for i in 0..scopes {
        let data_sub = &data_subscriptions[i % data_subscriptions.len()];
        let rg = |name: String| ResourceId::resource_group(data_sub, &name);
        let group = rg(format!("rg-data-{}", i % 10));
        let (id, kind) = match i % 20 {
            0..=11 => (
                group.with_provider_resource("Microsoft.Storage", "storageAccounts", &format!("stlake{i:05}")),
                ScopeKind::Storage,
            ),
            12..=16 => (
                group.with_provider_resource("Microsoft.KeyVault", "vaults", &format!("kv-team-{i:05}")),
                ScopeKind::Vault,
            ),
            _ => (rg(format!("rg-project-{i:05}")), ScopeKind::ResourceGroup),
        };
        if kind == ScopeKind::ResourceGroup {
            state.add_resource_group(&id);
        } else {
            state.add_resource(&id, ResourceKind::Generic);
        }
        scope_list.push((id.to_string(), kind));
    }
    for (name, kind) in CUSTOM_ROLES {
        let data_actions = match kind {
            ScopeKind::Storage => vec!["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*".to_owned()],
            ScopeKind::Vault => vec!["Microsoft.KeyVault/vaults/certificates/read".to_owned()],
            ScopeKind::ResourceGroup => vec![],
        };
        let actions = vec!["*/read".to_owned()];
        state.add_custom_role(
            name,
            vec![Permission { actions, data_actions, ..Permission::default() }],
            data_subscriptions.iter().map(|s| ResourceId::subscription(s)).collect(),
        );
    }

    // Identities: workspaces (dbmanagedidentity) and access connectors (system- or
    // user-assigned), about one per five grants.
    let mut identities: Vec<(Value, String)> = Vec::new();
    let count = (n / 5).max(4);
    for i in 0..count {
        let group = rg(format!("rg-dbx-{}", i % 5));
        let principal = uuid::Uuid::new_v4().to_string();
        state.add_principal(&principal, old);
        if i % 3 == 0 {
            let managed_rg = rg(format!("rg-dbw-{i:05}-managed"));
            let mi = managed_rg.with_provider_resource(
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
            let ws = group.with_provider_resource("Microsoft.Databricks", "workspaces", &format!("dbw-{i:05}"));
            state.add_resource(
                &ws,
                ResourceKind::Workspace { managed_resource_group: managed_rg, access_connector: None },
            );
            identities.push((json!({"workspace": {"resourceId": ws.to_string()}}), principal));
        } else if i % 3 == 1 {
            let ac = group.with_provider_resource("Microsoft.Databricks", "accessConnectors", &format!("ac-{i:05}"));
            state.add_resource(
                &ac,
                ResourceKind::AccessConnector { system_principal: Some(principal.clone()), user_assigned: vec![] },
            );
            identities.push((json!({"accessConnector": {"resourceId": ac.to_string()}}), principal));
        } else {
            let uai = group.with_provider_resource(
                "Microsoft.ManagedIdentity",
                "userAssignedIdentities",
                &format!("id-ac-{i:05}"),
            );
            state.add_resource(
                &uai,
                ResourceKind::UserAssignedIdentity {
                    principal_id: principal.clone(),
                    client_id: uuid::Uuid::new_v4().to_string(),
                },
            );
            let ac = group.with_provider_resource("Microsoft.Databricks", "accessConnectors", &format!("ac-{i:05}"));
            state.add_resource(
                &ac,
                ResourceKind::AccessConnector { system_principal: None, user_assigned: vec![uai.clone()] },
            );
            identities.push((
                json!({"accessConnector": {"resourceId": ac.to_string(), "userAssignedIdentityId": uai.to_string()}}),
                principal,
            ));
        }
    }
    drop(state);

    let mut grants: Vec<GrantPlan> = Vec::with_capacity(n);
    for i in 0..n {
        let shared_with = (i > 0 && rng.random_bool(0.2)).then(|| rng.random_range(0..i));
        let (identity, principal) = match shared_with {
            Some(j) => (grants[j].identity.clone(), grants[j].principal.clone()),
            None => identities.choose(&mut rng).cloned().unwrap_or((Value::Null, String::new())),
        };
        let mut assignments: Vec<(String, String)> = Vec::new();
        if let Some(j) = shared_with
            && let Some(tuple) = grants[j].assignments.first()
        {
            assignments.push(tuple.clone());
        }
        let wanted = rng.random_range(1..=3usize).max(assignments.len());
        while assignments.len() < wanted {
            let (scope, kind) = scope_list.choose(&mut rng).cloned().unwrap_or((String::new(), ScopeKind::Storage));
            let role = roles_for(kind).choose(&mut rng).copied().unwrap_or("Reader").to_owned();
            if !assignments.iter().any(|(r, s)| *r == role && *s == scope) {
                assignments.push((role, scope));
            }
        }
        grants.push(GrantPlan {
            namespace: format!("{NAMESPACE_PREFIX}{}", i % NAMESPACES),
            name: format!("grant-{i:05}"),
            identity,
            principal,
            assignments,
        });
    }
    let unique: BTreeSet<(String, String, String)> = grants
        .iter()
        .flat_map(|g| g.assignments.iter().map(|(r, s)| (g.principal.clone(), r.clone(), s.to_ascii_lowercase())))
        .collect();
    let role_names = grants.iter().flat_map(|g| g.assignments.iter().map(|(r, _)| r.clone())).collect();
    let used_identities: BTreeSet<&String> = grants.iter().map(|g| &g.principal).collect();
    let subscription_of = |scope: &str| scope.split('/').nth(2).unwrap_or_default().to_ascii_lowercase();
    let mut per_subscription: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, _, scope) in &unique {
        per_subscription.entry(subscription_of(scope)).or_default().0 += 1;
    }
    for (scope, _) in &scope_list {
        per_subscription.entry(subscription_of(scope)).or_default().1 += 1;
    }
    let role_scopes: BTreeSet<(String, String)> = grants
        .iter()
        .flat_map(|g| g.assignments.iter().map(|(r, s)| (r.to_ascii_lowercase(), s.to_ascii_lowercase())))
        .collect();
    let mut role_lookups: BTreeMap<String, usize> = BTreeMap::new();
    for (_, scope) in &role_scopes {
        *role_lookups.entry(subscription_of(scope)).or_default() += 1;
    }
    Workload {
        unique_tuples: unique.len(),
        per_subscription,
        identities: used_identities.len(),
        grants,
        scopes: scope_list,
        role_names,
        role_lookups,
    }
}

/// Every grant in the Kubernetes emulator's store, read directly (no HTTP, so polling for
/// convergence adds nothing to the API server's load the operator sees).
pub fn stored_grants(sandbox: &Sandbox) -> Vec<Value> {
    let store = sandbox.kube.emulator.store();
    match store.find_type(GROUP, "v1alpha1", "databricksidentitygrants") {
        Some(ty) => store.list(&ty, None),
        None => Vec::new(),
    }
}

/// `Ready`'s status and reason, if the grant's status judges its current generation.
pub fn ready_for_current_generation(grant: &Value) -> Option<(String, String)> {
    let generation = grant.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = grant.pointer("/status/observedGeneration").and_then(Value::as_i64);
    if generation.is_none() || generation != observed {
        return None;
    }
    let ready = grant.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((ready["status"].as_str()?.to_owned(), ready["reason"].as_str()?.to_owned()))
}

/// The load-under-faults mix the benchmark's `--faults` and the load test share, until aborted:
/// 5% ARM 500s, 2% cut connections, 2% Kubernetes 500s, every watch cut every 5 s.
pub fn start_faults(sandbox: &Sandbox) -> tokio::task::JoinHandle<()> {
    let mut faults = sandbox.arm.emulator.faults();
    faults.error_rate = 0.05;
    faults.reset_rate = 0.02;
    sandbox.arm.emulator.set_faults(faults);
    let kube = sandbox.kube.emulator.clone();
    kube.set_faults(super::kube::KubeFaults { fail_rate: 0.02, fail_status: 500, ..Default::default() });
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            kube.drop_watches();
        }
    })
}

/// Errors creating a workload's objects in the Kubernetes emulator.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot build {what}: {source}")]
    Object { what: String, source: serde_json::Error },
    #[error("cannot create {what}: {source}")]
    Create { what: String, source: kube::Error },
}

fn object<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> Result<T, WorkloadError> {
    serde_json::from_value(value).map_err(|source| WorkloadError::Object { what: what.to_owned(), source })
}

impl Workload {
    /// The GrantPolicy that allows the workload: its namespaces, identities in the sandbox's
    /// subscription, its roles, at scopes in its subscriptions.
    pub fn policy(&self, sandbox: &Sandbox) -> Value {
        json!({
            "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "GrantPolicy", "metadata": {"name": "workload"},
            "spec": {
                "namespaceSelector": {"matchLabels": {TEAM_LABEL: "workload"}},
                "identities": [format!("/subscriptions/{}/**", sandbox.estate.subscription_id)],
                "roles": self.role_names.iter().collect::<Vec<_>>(),
                "scopes": self.per_subscription.keys().map(|s| format!("/subscriptions/{s}/**")).collect::<Vec<_>>(),
                "maxRoleAssignmentsPerGrant": 10,
            }
        })
    }

    /// Creates the namespaces, the policy and every grant (32 requests at a time).
    pub async fn create(&self, sandbox: &Sandbox, client: kube::Client) -> Result<(), WorkloadError> {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        for i in 0..NAMESPACES {
            let name = format!("{NAMESPACE_PREFIX}{i}");
            let ns = object(&name, json!({"metadata": {"name": name, "labels": {TEAM_LABEL: "workload"}}}))?;
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .map_err(|source| WorkloadError::Create { what: format!("namespace {name}"), source })?;
        }
        let policies: Api<GrantPolicy> = Api::all(client.clone());
        policies
            .create(&PostParams::default(), &object("policy", self.policy(sandbox))?)
            .await
            .map_err(|source| WorkloadError::Create { what: "policy".to_owned(), source })?;
        let created = futures::stream::iter(self.grants.iter().map(|plan| {
            let client = client.clone();
            async move {
                let api: Api<DatabricksIdentityGrant> = Api::namespaced(client, &plan.namespace);
                let grant = object(&plan.name, plan.object())?;
                api.create(&PostParams::default(), &grant)
                    .await
                    .map(|_| ())
                    .map_err(|source| WorkloadError::Create { what: format!("grant {}", plan.name), source })
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<Result<(), WorkloadError>>>()
        .await;
        created.into_iter().collect()
    }
}

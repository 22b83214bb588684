//! The sandbox's seeded Azure estate: one subscription with a Databricks platform in it. The
//! ids equal those in `examples/`, so the examples apply as-is; principal ids derive from a seed
//! (UUID v5), so every start with the same seed gives the same estate.

use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::arm::{ArmState, ResourceKind};
use crate::azure::ResourceId;
use crate::azure::models::WorkspaceAccessConnector;

pub const TENANT_ID: &str = "9b1f3c2a-7d4e-4f5a-8b6c-1d2e3f4a5b6c";
pub const SUBSCRIPTION_ID: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
/// Client id of the operator's own application (for client-secret and workload-identity runs).
pub const OPERATOR_CLIENT_ID: &str = "4a7c1e2b-8d3f-4b6a-9e5c-7f1d2a3b4c5d";

/// What `estate.json` describes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estate {
    pub subscription_id: String,
    pub tenant_id: String,
    pub operator_principal_id: String,
    pub workspaces: Vec<WorkspaceInfo>,
    pub access_connectors: Vec<AccessConnectorInfo>,
    pub scopes: Scopes,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    pub id: String,
    pub managed_resource_group_id: String,
    pub managed_identity_principal_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_connector_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessConnectorInfo {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    pub user_assigned_identities: Vec<IdentityInfo>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    pub id: String,
    pub principal_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scopes {
    pub resource_group: String,
    pub storage_account: String,
    pub key_vault: String,
    pub event_hub_namespace: String,
}

fn derived(seed: u64, what: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("dbx-identity-operator/{seed}/{what}").as_bytes()).to_string()
}

fn rg(name: &str) -> ResourceId {
    ResourceId::resource_group(SUBSCRIPTION_ID, name)
}

/// Seeds `state` and returns the estate. Seeded principals are already replicated.
pub fn seed(state: &mut ArmState, seed: u64) -> Estate {
    let old = Duration::from_secs(86_400);
    state.add_subscription(SUBSCRIPTION_ID);
    for name in ["rg-analytics", "rg-lake", "rg-security", "rg-streaming"] {
        state.add_resource_group(&rg(name));
    }
    let storage = rg("rg-lake").with_provider_resource("Microsoft.Storage", "storageAccounts", "stlakeprod");
    let vault = rg("rg-security").with_provider_resource("Microsoft.KeyVault", "vaults", "kv-analytics-prod");
    let hubs = rg("rg-streaming").with_provider_resource("Microsoft.EventHub", "namespaces", "evhns-telemetry");
    for id in [&storage, &vault, &hubs] {
        state.add_resource(id, ResourceKind::Generic);
    }

    // Access connectors: one system-assigned, one carrying a user-assigned identity.
    let uc = rg("rg-analytics").with_provider_resource("Microsoft.Databricks", "accessConnectors", "ac-unity-catalog");
    let uc_principal = derived(seed, "ac-unity-catalog");
    state.add_principal(&uc_principal, old);
    state.add_resource(
        &uc,
        ResourceKind::AccessConnector { system_principal: Some(uc_principal.clone()), user_assigned: vec![] },
    );
    let shared = rg("rg-analytics").with_provider_resource("Microsoft.Databricks", "accessConnectors", "ac-shared");
    let data_identity =
        rg("rg-analytics").with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", "id-dbx-data");
    let data_principal = derived(seed, "id-dbx-data");
    state.add_principal(&data_principal, old);
    state.add_resource(
        &data_identity,
        ResourceKind::UserAssignedIdentity {
            principal_id: data_principal.clone(),
            client_id: derived(seed, "id-dbx-data/client"),
        },
    );
    state.add_resource(
        &shared,
        ResourceKind::AccessConnector { system_principal: None, user_assigned: vec![data_identity.clone()] },
    );

    // Workspaces, each with a managed resource group holding dbmanagedidentity.
    let mut workspaces = Vec::new();
    for (name, linked) in [("dbw-analytics-prod", Some(&uc)), ("dbw-analytics-dev", None)] {
        let managed_rg = rg(&format!("rg-{name}-managed"));
        state.add_resource_group(&managed_rg);
        let identity = managed_rg.with_provider_resource(
            "Microsoft.ManagedIdentity",
            "userAssignedIdentities",
            "dbmanagedidentity",
        );
        let principal = derived(seed, &format!("{name}/dbmanagedidentity"));
        state.add_principal(&principal, old);
        state.add_resource(
            &identity,
            ResourceKind::UserAssignedIdentity {
                principal_id: principal.clone(),
                client_id: derived(seed, &format!("{name}/client")),
            },
        );
        let ws = rg("rg-analytics").with_provider_resource("Microsoft.Databricks", "workspaces", name);
        let access_connector = linked.map(|ac| WorkspaceAccessConnector {
            id: ac.to_string(),
            identity_type: "SystemAssigned".into(),
            user_assigned_identity_id: None,
        });
        state.add_resource(
            &ws,
            ResourceKind::Workspace { managed_resource_group: managed_rg.clone(), access_connector },
        );
        workspaces.push(WorkspaceInfo {
            id: ws.to_string(),
            managed_resource_group_id: managed_rg.to_string(),
            managed_identity_principal_id: principal,
            access_connector_id: linked.map(ToString::to_string),
        });
    }

    // The operator may assign roles in the subscription (User Access Administrator).
    let operator = derived(seed, "operator");
    state.add_principal(&operator, old);
    if let Some(uaa) = state.role_guid_by_name("User Access Administrator") {
        state.assign_out_of_band(&ResourceId::subscription(SUBSCRIPTION_ID), uaa, &operator);
    }

    Estate {
        subscription_id: SUBSCRIPTION_ID.into(),
        tenant_id: TENANT_ID.into(),
        operator_principal_id: operator,
        workspaces,
        access_connectors: vec![
            AccessConnectorInfo {
                id: uc.to_string(),
                principal_id: Some(uc_principal),
                user_assigned_identities: vec![],
            },
            AccessConnectorInfo {
                id: shared.to_string(),
                principal_id: None,
                user_assigned_identities: vec![IdentityInfo {
                    id: data_identity.to_string(),
                    principal_id: data_principal,
                }],
            },
        ],
        scopes: Scopes {
            resource_group: rg("rg-lake").to_string(),
            storage_account: storage.to_string(),
            key_vault: vault.to_string(),
            event_hub_namespace: hubs.to_string(),
        },
    }
}

//! The api-versions the emulator accepts for each resource type, and how a response differs by
//! version, so Azure's own tools (the official SDKs and the Azure CLI send versions other than
//! the ones the operator pins) work against the sandbox.
//!
//! Azure serves every resource type at several stable api-versions and answers any other with
//! `400 InvalidApiVersionParameter` naming the supported ones. The lists below are the stable
//! versions of Azure's template reference for each type
//! (learn.microsoft.com/azure/templates/microsoft.managedidentity/userassignedidentities,
//! …/microsoft.databricks/workspaces, …/microsoft.databricks/accessconnectors,
//! …/microsoft.authorization/roleassignments and …/roledefinitions; subscriptions: the
//! Subscriptions - List REST reference, learn.microsoft.com/rest/api/resources/subscriptions/list),
//! newest first; the first is
//! the one the operator pins ([`crate::azure::models::api_version`]), whose responses the
//! contract check validates against `../shared/azure/specs`. Versions the current SDKs send:
//! azure-mgmt-msi 7.1 `2024-11-30`, azure-mgmt-authorization 4.0 `2022-04-01`,
//! azure-mgmt-databricks 3.0 `2026-01-01`; the Azure CLI's `az identity` `2023-01-31`.

use serde_json::Value;

use crate::azure::models::api_version;

/// What an ARM request is about, for versioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioned {
    Workspace,
    AccessConnector,
    UserAssignedIdentity,
    RoleDefinition,
    RoleAssignment,
    /// `GET /subscriptions` (Microsoft.Resources).
    Subscription,
    /// PIM's schedule requests, schedules and instances.
    Pim,
}

impl Versioned {
    /// The stable api-versions Azure accepts, newest (the operator's pin) first.
    pub fn accepted(self) -> &'static [&'static str] {
        match self {
            Versioned::Workspace => &[api_version::DATABRICKS, "2024-05-01", "2023-02-01", "2018-04-01"],
            Versioned::AccessConnector => &[api_version::DATABRICKS, "2024-05-01", "2023-05-01"],
            Versioned::UserAssignedIdentity => {
                &[api_version::MANAGED_IDENTITY, "2024-11-30", "2023-01-31", "2018-11-30"]
            }
            Versioned::RoleDefinition | Versioned::RoleAssignment => &[api_version::AUTHORIZATION, "2015-07-01"],
            Versioned::Subscription => &[api_version::SUBSCRIPTIONS, "2022-01-01", "2021-01-01", "2020-01-01"],
            Versioned::Pim => &[api_version::PIM],
        }
    }

    /// Whether `version` is one of [`Self::accepted`] (ARM compares case-insensitively).
    pub fn accepts(self, version: &str) -> bool {
        self.accepted().iter().any(|v| v.eq_ignore_ascii_case(version))
    }

    /// ARM's message for a version it does not serve, listing the ones it does.
    pub fn unsupported_message(self, version: &str) -> String {
        format!("The api-version '{version}' is invalid. The supported versions are '{}'.", self.accepted().join(","))
    }

    /// Removes from a response body (a resource or a list page) what `version` does not have.
    /// A user-assigned identity's `tenantId`, `principalId` and `clientId` are in every version.
    pub fn shape(self, version: &str, body: &mut Value) {
        if let Some(items) = body.get_mut("value").and_then(Value::as_array_mut) {
            for item in items {
                self.shape_one(version, item);
            }
        } else {
            self.shape_one(version, body);
        }
    }

    fn shape_one(self, version: &str, item: &mut Value) {
        let older = |than: &str| version < than;
        let Some(properties) = item.get_mut("properties").and_then(Value::as_object_mut) else { return };
        match self {
            // The default Access Connector link came with 2024-05-01, serverless compute modes later.
            Versioned::Workspace => {
                if older("2024-05-01") {
                    properties.remove("accessConnector");
                }
                if older(api_version::DATABRICKS) {
                    properties.remove("computeMode");
                }
            }
            // 2015-07-01 knows a role assignment as role, principal and scope only.
            Versioned::RoleAssignment if older("2018-01-01") => {
                properties.retain(|k, _| matches!(k.as_str(), "roleDefinitionId" | "principalId" | "scope"));
            }
            // Data actions came after 2015-07-01.
            Versioned::RoleDefinition if older("2018-01-01") => {
                for permission in properties.get_mut("permissions").and_then(Value::as_array_mut).into_iter().flatten()
                {
                    if let Some(p) = permission.as_object_mut() {
                        p.remove("dataActions");
                        p.remove("notDataActions");
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_operators_pins_and_the_sdks_versions_are_accepted() {
        assert_eq!(Versioned::UserAssignedIdentity.accepted()[0], api_version::MANAGED_IDENTITY);
        assert!(Versioned::UserAssignedIdentity.accepts("2024-11-30"), "azure-mgmt-msi 7.1");
        assert!(Versioned::UserAssignedIdentity.accepts("2023-01-31"), "az identity");
        assert!(Versioned::RoleAssignment.accepts("2022-04-01"));
        assert!(Versioned::Workspace.accepts("2026-01-01"));
        assert!(!Versioned::UserAssignedIdentity.accepts("2021-09-30-preview"), "previews are not modelled");
        assert!(!Versioned::RoleAssignment.accepts("2010-01-01"));
        let message = Versioned::RoleAssignment.unsupported_message("2010-01-01");
        assert_eq!(
            message,
            "The api-version '2010-01-01' is invalid. The supported versions are '2022-04-01,2015-07-01'."
        );
    }

    #[test]
    fn older_versions_lose_what_they_do_not_have() {
        let workspace = json!({"properties": {"managedResourceGroupId": "m", "accessConnector": {"id": "a"}, "computeMode": "Hybrid"}});
        let mut old = workspace.clone();
        Versioned::Workspace.shape("2023-02-01", &mut old);
        assert_eq!(old, json!({"properties": {"managedResourceGroupId": "m"}}));
        let mut current = workspace.clone();
        Versioned::Workspace.shape(api_version::DATABRICKS, &mut current);
        assert_eq!(current, workspace);

        let mut page = json!({"value": [{"properties": {"roleDefinitionId": "r", "principalId": "p", "scope": "s",
                                                        "principalType": "ServicePrincipal", "condition": "c"}}]});
        Versioned::RoleAssignment.shape("2015-07-01", &mut page);
        assert_eq!(
            page,
            json!({"value": [{"properties": {"roleDefinitionId": "r", "principalId": "p", "scope": "s"}}]})
        );
    }
}

//! The parts of ARM's resource bodies the operator reads and writes, shaped as in the REST
//! specs (`../shared/azure/specs`): unknown fields are ignored, optional ones are `Option`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// api-versions, pinned to the specs the contract check validates against.
pub mod api_version {
    pub const AUTHORIZATION: &str = "2022-04-01";
    pub const DATABRICKS: &str = "2026-01-01";
    pub const MANAGED_IDENTITY: &str = "2026-05-31";
    /// `Microsoft.Resources` subscriptions (list only: which subscriptions an audit covers).
    pub const SUBSCRIPTIONS: &str = "2022-12-01";
    /// PIM for Azure resource roles (`roleAssignmentScheduleRequests`, `…Schedules`, `…Instances`).
    pub const PIM: &str = "2020-10-01";
}

/// One entry of `GET /subscriptions` (Microsoft.Resources).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub subscription_id: String,
    #[serde(default)]
    pub display_name: String,
    /// `Enabled`, `Warned`, `PastDue`, `Disabled` or `Deleted`.
    #[serde(default)]
    pub state: String,
}

/// `Microsoft.Databricks/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub properties: WorkspaceProperties,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceProperties {
    /// The resource group Azure manages for the workspace; `dbmanagedidentity` lives there.
    #[serde(default)]
    pub managed_resource_group_id: String,
    /// The workspace's default Access Connector, if one is linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_connector: Option<WorkspaceAccessConnector>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceAccessConnector {
    pub id: String,
    /// `SystemAssigned` or `UserAssigned`.
    pub identity_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_identity_id: Option<String>,
}

/// `Microsoft.Databricks/accessConnectors`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessConnector {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ManagedServiceIdentity>,
}

/// ARM's common `ManagedServiceIdentity` (common-types v3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedServiceIdentity {
    /// `None`, `SystemAssigned`, `UserAssigned` or `SystemAssigned,UserAssigned`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Keyed by the identity's ARM id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_assigned_identities: BTreeMap<String, UserAssignedIdentityRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserAssignedIdentityRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// `Microsoft.ManagedIdentity/userAssignedIdentities`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserAssignedIdentity {
    pub id: String,
    pub name: String,
    pub properties: UserAssignedIdentityProperties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserAssignedIdentityProperties {
    pub principal_id: String,
    pub client_id: String,
    pub tenant_id: String,
}

/// `Microsoft.Authorization/roleDefinitions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    pub id: String,
    /// The GUID.
    pub name: String,
    pub properties: RoleDefinitionProperties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionProperties {
    pub role_name: String,
    /// `BuiltInRole` or `CustomRole`.
    #[serde(rename = "type", default)]
    pub role_type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

/// `Microsoft.Authorization/roleAssignments`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    pub id: String,
    /// The GUID name.
    pub name: String,
    pub properties: RoleAssignmentProperties,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub role_definition_id: String,
    pub principal_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_version: Option<String>,
}

/// The body of a role-assignment PUT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleAssignmentCreate {
    pub properties: RoleAssignmentProperties,
}

/// ARM's list envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResult<T> {
    /// Required: a "list" without it is a broken response, not an empty list (reading it as
    /// empty would look like every assignment vanished).
    pub value: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// A PIM role assignment schedule request (`roleAssignmentScheduleRequests`, api-version
/// 2020-10-01): the body of a PUT and the answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRequestProperties {
    pub principal_id: String,
    pub role_definition_id: String,
    /// `AdminAssign`, `AdminUpdate`, `AdminRemove`, …
    pub request_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_info: Option<ScheduleInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_version: Option<String>,
    /// In the answer: `Provisioned`, `Revoked`, `PendingApproval`, …
    #[serde(default, skip_serializing)]
    pub status: Option<String>,
    /// In the answer: the schedule it made or changed.
    #[serde(default, skip_serializing)]
    pub target_role_assignment_schedule_id: Option<String>,
}

impl ScheduleRequestProperties {
    /// A request of `request_type` (`AdminAssign`, `AdminUpdate`) for an assignment that ends at
    /// `end` (RFC 3339), as the operator sends it.
    pub fn ending_at(request_type: &str, principal_id: &str, role_definition_id: &str, end: &str) -> Self {
        ScheduleRequestProperties {
            principal_id: principal_id.to_owned(),
            role_definition_id: role_definition_id.to_owned(),
            request_type: request_type.to_owned(),
            schedule_info: Some(ScheduleInfo {
                start_date_time: None,
                expiration: Some(ScheduleExpiration {
                    kind: "AfterDateTime".into(),
                    end_date_time: Some(end.to_owned()),
                    duration: None,
                }),
            }),
            ..Default::default()
        }
    }
}

/// When a PIM assignment starts and ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<ScheduleExpiration>,
}

/// `AfterDateTime` (with `endDateTime`), `AfterDuration` (with an ISO 8601 `duration`) or
/// `NoExpiration`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleExpiration {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleRequest {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub properties: ScheduleRequestProperties,
}

/// An active PIM assignment (`roleAssignmentSchedules`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleAssignmentSchedule {
    pub id: String,
    pub name: String,
    pub properties: RoleAssignmentScheduleProperties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentScheduleProperties {
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub role_definition_id: Option<String>,
    #[serde(default)]
    pub principal_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub start_date_time: Option<String>,
    #[serde(default)]
    pub end_date_time: Option<String>,
    /// The request that made (or last changed) it.
    #[serde(default)]
    pub role_assignment_schedule_request_id: Option<String>,
}

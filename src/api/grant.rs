//! `DatabricksIdentityGrant`: the Azure roles one Databricks identity must hold.
//!
//! Doc comments on fields become the CRD's descriptions (`kubectl explain dbgrant.spec…`), so
//! they are written for the person writing the manifest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::*;

/// The roles an Azure Databricks identity must hold, and where. The operator creates, keeps
/// and removes the matching Azure role assignments and reports them in status.
// kube takes one `printcolumn(...)` per column; clippy mistakes the repeats for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "identity.dbx-operator.io",
    version = "v1alpha1",
    kind = "DatabricksIdentityGrant",
    namespaced,
    shortname = "dbgrant",
    shortname = "dbgrants",
    category = "dbx",
    status = "DatabricksIdentityGrantStatus",
    derive = "PartialEq",
    doc = "Azure role assignments that an Azure Databricks identity (a workspace's managed identity, an Access Connector, or any principal) must hold.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Principal", type_ = "string", json_path = ".status.principal.principalId"),
    printcolumn(name = "Assigned", type_ = "string", json_path = ".status.assigned"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.nextExpiry"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(LIFETIME_EXCLUSIVE_RULE).message(LIFETIME_EXCLUSIVE_MSG),
    validation = Rule::new(PIM_NEEDS_EXPIRY_RULE).message(PIM_NEEDS_EXPIRY_MSG)
)]
pub struct DatabricksIdentityGrantSpec {
    /// The Azure identity that receives the roles. Set exactly one of `workspace`,
    /// `accessConnector` or `principal`.
    pub identity: IdentitySource,

    /// The roles the identity must hold and where (1 to 100 entries). Each (role, scope) pair
    /// may appear once: Azure allows one assignment per principal, role and scope.
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = Rule::new(UNIQUE_ROLE_SCOPE_RULE).message(UNIQUE_ROLE_SCOPE_MSG))]
    pub role_assignments: Vec<RoleAssignmentSpec>,

    /// What happens to the Azure role assignments this grant created when the grant is
    /// deleted. `Delete` (default) removes them; `Retain` leaves them in Azure.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Enforce` (default) makes Azure match the spec. `Observe` only computes and reports
    /// what would change (assignment state `Planned`) and never writes to Azure.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// Optional Secret in the grant's namespace holding a client credential (`tenantId`,
    /// `clientId`, `clientSecret`) to use for this grant instead of the operator's own Azure
    /// identity. Needs the operator to be installed with credential references enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_credential_ref: Option<SecretRef>,

    /// When every entry's access ends (RFC 3339, e.g. `2026-12-31T18:00:00Z`), unless the entry
    /// sets its own `expiresAt` or `activeFor`. At that time the operator removes the
    /// assignments it created (within seconds, not at the next resync); the entries then read
    /// `Expired`. A past time means expired. Editing it to a later time extends access, and
    /// assigns an expired entry again. At most one of `expiresAt` and `activeFor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// How long each entry's access lasts from when the entry was first assigned (recorded in
    /// `status.roleAssignments[].assignedAt`), unless the entry sets its own `expiresAt` or
    /// `activeFor`: a duration of at least `5m` in the units `h`, `m` and `s`, e.g. `48h` or
    /// `2h30m`. At most one of `expiresAt` and `activeFor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(ACTIVE_FOR_MSG))]
    pub active_for: Option<String>,

    /// Who ends time-bound access. `Operator` (default): the operator removes each assignment
    /// at its end (within seconds; after a restart, at once). `AzurePIM`: each entry is made an
    /// active assignment through Azure Privileged Identity Management
    /// (`roleAssignmentScheduleRequests`) with the entry's end, so Azure ends access on time even
    /// while the operator is down; every entry then needs an expiry. Where Azure refuses PIM
    /// (no licence, or not for this principal type) the entry falls back to `Operator`, with a
    /// Warning Event and a note in its status; where the role's PIM policy refuses the request
    /// (e.g. a longer duration than it allows) the entry fails with reason `PimPolicyRefused`.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// Why the access is needed, sent to Azure PIM with each request (`AzurePIM` only; default:
    /// the grant's namespace and name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub justification: Option<String>,
}

/// Who ends time-bound access.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Enforcement {
    #[default]
    Operator,
    #[serde(rename = "AzurePIM")]
    AzurePim,
}

/// Which Azure identity receives the roles. Exactly one field must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(IDENTITY_EXACTLY_ONE_RULE).message(IDENTITY_EXACTLY_ONE_MSG))]
pub struct IdentitySource {
    /// An identity belonging to an Azure Databricks workspace: its built-in managed identity
    /// (`dbmanagedidentity`) or the Access Connector the workspace links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceIdentity>,

    /// A standalone Access Connector (`Microsoft.Databricks/accessConnectors`), the identity
    /// Databricks recommends for data access (Unity Catalog, storage, Key Vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_connector: Option<AccessConnectorIdentity>,

    /// Any other Entra principal, named by object id (escape hatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalIdentity>,
}

/// A workspace's identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceIdentity {
    /// ARM id of the workspace:
    /// `/subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.Databricks/workspaces/<name>`.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(WORKSPACE_ID_RULE).message(WORKSPACE_ID_MSG))]
    pub resource_id: String,

    /// Which of the workspace's identities: `ManagedIdentity` (default), the built-in
    /// user-assigned identity `dbmanagedidentity` in the workspace's managed resource group;
    /// or `AccessConnector`, the Access Connector linked in the workspace's
    /// `properties.accessConnector`.
    #[serde(default)]
    pub source: WorkspaceIdentityKind,
}

/// Which identity of a workspace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WorkspaceIdentityKind {
    #[default]
    ManagedIdentity,
    AccessConnector,
}

/// An Access Connector's identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessConnectorIdentity {
    /// ARM id of the Access Connector:
    /// `/subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.Databricks/accessConnectors/<name>`.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(ACCESS_CONNECTOR_ID_RULE).message(ACCESS_CONNECTOR_ID_MSG))]
    pub resource_id: String,

    /// ARM id of one of the connector's user-assigned identities
    /// (`…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`). When set, that
    /// identity receives the roles; when omitted, the connector's system-assigned identity does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(USER_ASSIGNED_ID_RULE).message(USER_ASSIGNED_ID_MSG))]
    pub user_assigned_identity_id: Option<String>,
}

/// A principal named directly.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalIdentity {
    /// Entra object id of the principal (a GUID). For a service principal this is the
    /// enterprise application's object id, not the app (client) id.
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(PRINCIPAL_ID_RULE).message(PRINCIPAL_ID_MSG))]
    pub principal_id: String,

    /// Kind of principal: `ServicePrincipal` (default; managed identities are service
    /// principals), `Group` or `User`. Sent to Azure with each assignment.
    #[serde(default)]
    pub principal_type: PrincipalType,
}

/// Kind of Entra principal, as Azure's role-assignment API names it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PrincipalType {
    #[default]
    ServicePrincipal,
    Group,
    User,
}

/// One role the identity must hold at one scope.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(CONDITION_NEEDS_VERSION_RULE).message(CONDITION_NEEDS_VERSION_MSG),
    validation = Rule::new(VERSION_NEEDS_CONDITION_RULE).message(VERSION_NEEDS_CONDITION_MSG),
    validation = Rule::new(LIFETIME_EXCLUSIVE_RULE).message(LIFETIME_EXCLUSIVE_MSG)
)]
pub struct RoleAssignmentSpec {
    /// The role: a display name (`Storage Blob Data Contributor`), a role-definition GUID
    /// (`ba92f5b4-2d11-453d-a403-e96b0029c9fe`), or a full roleDefinitionId. Custom roles are
    /// looked up at the scope, so a custom role must be assignable there.
    #[schemars(length(max = MAX_ROLE_LEN))]
    #[x_kube(validation = Rule::new(ROLE_NOT_EMPTY_RULE).message(ROLE_INVALID_MSG))]
    pub role: String,

    /// Where the role applies: an ARM id of a management group
    /// (`/providers/Microsoft.Management/managementGroups/<id>`), a subscription, a resource
    /// group, or a resource (storage account, key vault, container …).
    #[schemars(length(max = MAX_SCOPE_LEN))]
    #[x_kube(
        validation = Rule::new(SCOPE_ROOT_RULE).message(SCOPE_ROOT_MSG),
        validation = Rule::new(NO_DOTDOT_RULE).message(SCOPE_DOTDOT_MSG),
        validation = Rule::new(NO_EMPTY_SEGMENT_RULE).message(SCOPE_EMPTY_SEGMENT_MSG),
        validation = Rule::new(NO_TRAILING_SLASH_RULE).message(SCOPE_TRAILING_SLASH_MSG)
    )]
    pub scope: String,

    /// Optional Azure ABAC condition narrowing the assignment, e.g. to one blob container.
    /// Requires `conditionVersion: "2.0"`. Changing it updates the assignment in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub condition: Option<String>,

    /// Version of the condition language; Azure accepts only `"2.0"`. Required with `condition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub condition_version: Option<String>,

    /// Optional description stored on the Azure role assignment (shown in the portal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// When this entry's access ends (RFC 3339); overrides the grant's `expiresAt` /
    /// `activeFor`. At that time the operator removes the assignment if it created it (an
    /// adopted assignment, or one another grant still wants, stays and the entry says so). A
    /// past time means expired; a later time extends, and assigns an expired entry again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// How long this entry's access lasts from when it was first assigned; overrides the
    /// grant's `expiresAt` / `activeFor`. At least `5m`, in the units `h`, `m` and `s`
    /// (`30m`, `48h`, `2h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(ACTIVE_FOR_MSG))]
    pub active_for: Option<String>,
}

/// What deleting the grant does to its Azure role assignments.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Whether the operator changes Azure or only reports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    #[default]
    Enforce,
    Observe,
}

/// A Secret in the grant's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret. It must hold the keys `tenantId`, `clientId` and `clientSecret`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(CREDENTIAL_NAME_RULE).message(CREDENTIAL_NAME_MSG))]
    pub name: String,
}

/// Observed state of a grant, written only by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabricksIdentityGrantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The Entra principal the identity resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalStatus>,

    /// One entry per `spec.roleAssignments` entry, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<RoleAssignmentStatus>,

    /// Assignments in place out of those desired, e.g. `2/3` (the `Assigned` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,

    /// ARM ids of the role assignments this grant created and still owns: removed from Azure
    /// when the grant stops wanting them (unless another grant wants them too) and, under
    /// `deletionPolicy: Delete`, when the grant is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_assignments: Vec<String>,

    /// ARM ids of role assignments the operator is creating for this grant: recorded before
    /// the write, so an operator stopped between the write and this status update cannot leave
    /// an assignment behind that no grant records. Treated like `managedAssignments` when the
    /// grant no longer wants them or is deleted; an id leaves this list when its assignment
    /// is created (then it is in `managedAssignments`) or no longer wanted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creating_assignments: Vec<String>,

    /// Role assignments the principal holds at the grant's scopes that no grant declares and the
    /// operator did not make (what a grant deleted with `deletionPolicy: Retain` left, `audit`
    /// lists). Reported, never touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmanaged_assignments: Vec<UnmanagedAssignment>,

    /// Standard conditions: `Ready`, `IdentityResolved`, `RolesResolved`, `PolicyCompliant`
    /// and `InSync`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// When the operator last compared the grant with Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// How many times an assignment was found missing or changed in Azure and restored.
    #[serde(default)]
    pub drift_corrections: i64,

    /// The soonest `expiresAt` among entries not yet expired (the `Expires` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<Time>,

    /// Azure PIM schedules this grant made (`enforcement: AzurePIM`): ended early through PIM
    /// when the grant stops wanting them or is deleted; Azure ends them at their end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_schedules: Vec<ManagedSchedule>,
}

/// An Azure PIM schedule a grant made.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSchedule {
    /// ARM id of the `roleAssignmentSchedules` resource.
    pub schedule_id: String,
    /// Its scope.
    pub scope: String,
    /// Its roleDefinitionId.
    pub role_definition_id: String,
    /// Its principal.
    pub principal_id: String,
    /// When Azure ends it.
    pub end: Time,
}

/// The resolved principal.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalStatus {
    /// Entra object id.
    pub principal_id: String,
    /// `ServicePrincipal`, `Group` or `User`.
    pub principal_type: PrincipalType,
    /// Entra tenant of the principal, when Azure reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// ARM id of the managed identity (or connector) the principal belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_resource_id: Option<String>,
}

/// State of one desired role assignment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentStatus {
    /// The role as written in the spec.
    pub role: String,
    /// The roleDefinitionId the role resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definition_id: Option<String>,
    /// The scope as written in the spec.
    pub scope: String,
    /// ARM id of the Azure role assignment, once it exists. Kept while the entry is `Pending`
    /// because Azure could not be read (the assignment last seen; not removed meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_id: Option<String>,
    /// `Assigned` (created by this operator and present), `Adopted` (already existed; never
    /// deleted by the operator), `Pending` (being created, waiting to retry, or not checked
    /// while Azure cannot be read: then `assignmentId` and `assignedAt` stay), `Planned`
    /// (Observe mode: would be created), `Denied` (refused by a GrantPolicy), `Failed`, or
    /// `Expired` (past its `expiresAt`: no longer wanted; the message says whether its
    /// assignment was removed).
    pub state: AssignmentState,
    /// Machine-readable reason for the state, e.g. `PrincipalNotFound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail, including Azure's error code and message when Azure refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the entry's access ends, resolved from `expiresAt` or `activeFor` (the entry's or
    /// the grant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the entry was first in place (kept across restarts and extensions; `activeFor`
    /// counts from it). Recorded only for entries with an expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Time>,
    /// When the operator removed the expired entry's assignment from Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Time>,
    /// Who ends this entry's access: `AzurePIM` once Azure PIM holds it, `Operator` when it is
    /// enforced by the operator (the default, or PIM's fallback; the message says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_by: Option<Enforcement>,
}

/// Lifecycle state of one desired assignment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignmentState {
    Assigned,
    Adopted,
    Pending,
    Planned,
    Denied,
    Failed,
    Expired,
}

/// A role assignment of the principal that no grant declares.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedAssignment {
    /// ARM id of the assignment.
    pub assignment_id: String,
    /// Its roleDefinitionId.
    pub role_definition_id: String,
    /// Its scope.
    pub scope: String,
}

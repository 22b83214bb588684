//! `GrantPolicy`: which namespaces may grant which roles to which identities at which scopes.
//!
//! The operator's own Azure identity can assign roles, so without policies any namespace that
//! may create a grant could use it to give itself Owner. Evaluation lives in `crate::policy`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::*;

/// Who may grant what. A grant is allowed an assignment when at least one GrantPolicy
/// selecting the grant's namespace allows its identity, role and scope, and no rule denies it.
// kube takes one `printcolumn(...)` per column; clippy mistakes the repeats for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "identity.dbx-operator.io",
    version = "v1alpha1",
    kind = "GrantPolicy",
    shortname = "grantpolicy",
    shortname = "grantpolicies",
    category = "dbx",
    status = "GrantPolicyStatus",
    derive = "PartialEq",
    doc = "Guardrails for DatabricksIdentityGrants: which namespaces may assign which Azure roles to which identities at which scopes.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Namespaces", type_ = "integer", json_path = ".status.governedNamespaces"),
    printcolumn(name = "Grants", type_ = "integer", json_path = ".status.governedGrants"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GrantPolicySpec {
    /// Namespaces this policy governs, by label. `{}` selects every namespace.
    pub namespace_selector: LabelSelector,

    /// Identities that may receive roles: glob patterns over ARM ids (of the workspace, the
    /// Access Connector, or the user-assigned identity). `*` matches within one path segment,
    /// `**` any number of segments; patterns are anchored at both ends and compared
    /// case-insensitively. Example:
    /// `/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new(PATTERN_ROOT_RULE).message(PATTERN_ROOT_MSG),
        validation = Rule::new(PATTERN_SHAPE_RULE).message(PATTERN_SHAPE_MSG)
    )]
    pub identities: Vec<BoundedString>,

    /// Roles that may be assigned: role names, role-definition GUIDs or full
    /// roleDefinitionIds (compared by GUID once resolved, so aliases cannot slip through), or
    /// `*` for any role that is not privileged.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(POLICY_ROLES_RULE).message(POLICY_ROLE_INVALID_MSG))]
    pub roles: Vec<BoundedString>,

    /// Scopes where roles may be assigned: glob patterns over ARM ids, as for `identities`.
    /// Example: `/subscriptions/<guid>/resourceGroups/rg-lake/**`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new(PATTERN_ROOT_RULE).message(PATTERN_ROOT_MSG),
        validation = Rule::new(PATTERN_SHAPE_RULE).message(PATTERN_SHAPE_MSG)
    )]
    pub scopes: Vec<BoundedString>,

    /// Allow privileged roles: Owner, User Access Administrator, Role Based Access Control
    /// Administrator, and any role whose permissions include `*`, `Microsoft.Authorization/*`
    /// or `Microsoft.Authorization/roleAssignments/write`. Default `false`.
    #[serde(default)]
    pub allow_privileged_roles: bool,

    /// Data-plane roles (roles with `dataActions`) on a workspace's built-in managed identity
    /// (`dbmanagedidentity`), which is meant for control-plane use; Access Connectors are meant
    /// for data access. `Allow`, `Warn` (default: allowed, with a Warning event and condition
    /// message) or `Deny`.
    #[serde(default)]
    pub workspace_managed_identity_data_roles: DataRolePolicy,

    /// Most role assignments one grant in a governed namespace may hold (1 to 100, default 20).
    #[serde(default = "default_max_role_assignments_per_grant")]
    #[schemars(range(min = 1, max = 100))]
    pub max_role_assignments_per_grant: i32,

    /// Longest access this policy allows: every allowed entry must expire (`expiresAt` or
    /// `activeFor`, its own or the grant's) at most this long after the operator judges it
    /// (for `activeFor`, its duration). An entry without an expiry, or with a longer one, is
    /// denied with reason `DurationNotAllowed`. At least `5m`, in the units `h`, `m` and `s`
    /// (`8h`, `720h`). Unset: access without end is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(MAX_DURATION_MSG))]
    pub max_duration: Option<String>,
}

/// A string of at most 1024 characters (keeps the API server's CEL cost estimate bounded).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct BoundedString(#[schemars(length(max = 1024))] pub String);

impl std::ops::Deref for BoundedString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for BoundedString {
    fn from(s: &str) -> Self {
        BoundedString(s.to_owned())
    }
}

/// Default for `maxRoleAssignmentsPerGrant`.
pub fn default_max_role_assignments_per_grant() -> i32 {
    20
}

/// How data-plane roles on a workspace's managed identity are treated.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataRolePolicy {
    Allow,
    #[default]
    Warn,
    Deny,
}

/// Observed state of a GrantPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrantPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is False when the policy cannot be used (e.g. an invalid pattern, named in the
    /// message); an unusable policy allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of namespaces the selector matches.
    #[serde(default)]
    pub governed_namespaces: i32,
    /// Number of grants in those namespaces.
    #[serde(default)]
    pub governed_grants: i32,
}

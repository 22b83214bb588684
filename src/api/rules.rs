//! Admission rules shared by the CRD schema (as `x-kubernetes-validations` CEL rules) and the
//! Rust validator in [`super::validation`].
//!
//! Each rule's message is written once, here, so a user sees the same words whether the API
//! server refused the manifest or the controller did (old clusters without CEL, objects written
//! before a rule existed). The Rust validator appends specifics (the offending value, the parse
//! error) after the shared message.

/// Longest ARM id or scope accepted in a spec (keeps CEL cost estimates bounded).
pub const MAX_ID_LEN: u32 = 1024;
/// Longest `role` value (a name, a GUID or a full roleDefinitionId; the longest real one, a
/// roleDefinitionId at a management group, is about 200 characters).
///
/// This and [`MAX_SCOPE_LEN`] bound the API server's *estimated* cost of the duplicate
/// (role, scope) rule, which is quadratic in the entries: kube-apiserver 1.36 refuses the CRD
/// with 512/1024 ("exceeds budget by factor of 1.9x") and accepts 256/512 with 100 entries.
/// `tests/real_apiserver` installs the CRDs on a real API server, so a change that breaks the
/// budget fails there.
pub const MAX_ROLE_LEN: u32 = 256;
/// Longest `scope` (an ARM id; real ones, down to a blob container, stay under 300 characters).
pub const MAX_SCOPE_LEN: u32 = 512;
/// Longest ABAC condition; Azure's own limit is in the same range.
pub const MAX_CONDITION_LEN: u32 = 8192;
/// Longest assignment description.
pub const MAX_DESCRIPTION_LEN: u32 = 1024;
/// Most role assignments one grant may ask for.
pub const MAX_ROLE_ASSIGNMENTS: u32 = 100;
/// Most entries in one GrantPolicy list.
pub const MAX_POLICY_ENTRIES: u32 = 256;

// Regular expressions are RE2-compatible (the API server's CEL) and `regex`-compatible (ours).

macro_rules! arm_id_rule {
    ($provider_and_type:literal) => {
        concat!(
            "self.matches('^(?i)/subscriptions/",
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "/resourceGroups/[^/]+/providers/",
            $provider_and_type,
            "/[^/]+$')"
        )
    };
}

pub const IDENTITY_EXACTLY_ONE_RULE: &str =
    "(has(self.workspace) ? 1 : 0) + (has(self.accessConnector) ? 1 : 0) + (has(self.principal) ? 1 : 0) == 1";
pub const IDENTITY_EXACTLY_ONE_MSG: &str = "identity must set exactly one of workspace, accessConnector or principal";

pub const WORKSPACE_ID_RULE: &str = arm_id_rule!("Microsoft\\\\.Databricks/workspaces");
pub const WORKSPACE_ID_MSG: &str = "workspace.resourceId must be an Azure Databricks workspace id: /subscriptions/<subscription-guid>/resourceGroups/<group>/providers/Microsoft.Databricks/workspaces/<name>";

pub const ACCESS_CONNECTOR_ID_RULE: &str = arm_id_rule!("Microsoft\\\\.Databricks/accessConnectors");
pub const ACCESS_CONNECTOR_ID_MSG: &str = "accessConnector.resourceId must be an Access Connector id: /subscriptions/<subscription-guid>/resourceGroups/<group>/providers/Microsoft.Databricks/accessConnectors/<name>";

pub const USER_ASSIGNED_ID_RULE: &str = arm_id_rule!("Microsoft\\\\.ManagedIdentity/userAssignedIdentities");
pub const USER_ASSIGNED_ID_MSG: &str = "accessConnector.userAssignedIdentityId must be a user-assigned identity id: /subscriptions/<subscription-guid>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>";

pub const PRINCIPAL_ID_RULE: &str =
    concat!("self.matches('^", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "$')");
pub const PRINCIPAL_ID_MSG: &str =
    "principal.principalId must be an Entra object id (a GUID such as 00000000-0000-0000-0000-000000000000)";

pub const ROLE_ASSIGNMENTS_COUNT_MSG: &str = "roleAssignments must have between 1 and 100 entries";

pub const UNIQUE_ROLE_SCOPE_RULE: &str = "self.all(x, self.exists_one(y, y.role.lowerAscii() == x.role.lowerAscii() && y.scope.lowerAscii() == x.scope.lowerAscii()))";
pub const UNIQUE_ROLE_SCOPE_MSG: &str = "roleAssignments must not repeat a (role, scope) pair: Azure allows one assignment per principal, role and scope, whatever its condition";

pub const ROLE_NOT_EMPTY_RULE: &str = "self.size() > 0";
pub const ROLE_INVALID_MSG: &str = "role must be a role name, a role-definition GUID or a full roleDefinitionId";

pub const CONDITION_NEEDS_VERSION_RULE: &str =
    "!has(self.condition) || (has(self.conditionVersion) && self.conditionVersion == '2.0')";
pub const CONDITION_NEEDS_VERSION_MSG: &str = "a condition requires conditionVersion \"2.0\"";

pub const VERSION_NEEDS_CONDITION_RULE: &str = "!has(self.conditionVersion) || has(self.condition)";
pub const VERSION_NEEDS_CONDITION_MSG: &str = "conditionVersion is set but there is no condition";

pub const CONDITION_INVALID_MSG: &str = "condition is not a well-formed ABAC condition";

pub const SCOPE_ROOT_RULE: &str = "self.lowerAscii().startsWith('/subscriptions/') || self.lowerAscii().startsWith('/providers/microsoft.management/managementgroups/')";
pub const SCOPE_ROOT_MSG: &str =
    "scope must start with /subscriptions/ or /providers/Microsoft.Management/managementGroups/";

pub const NO_DOTDOT_RULE: &str = "!self.contains('..')";
pub const SCOPE_DOTDOT_MSG: &str = "scope must not contain '..'";

pub const NO_EMPTY_SEGMENT_RULE: &str = "!self.contains('//')";
pub const SCOPE_EMPTY_SEGMENT_MSG: &str = "scope must not contain '//'";

pub const NO_TRAILING_SLASH_RULE: &str = "!self.endsWith('/')";
pub const SCOPE_TRAILING_SLASH_MSG: &str = "scope must not end with '/'";

pub const SCOPE_INVALID_MSG: &str = "scope must be a valid Azure resource id";

pub const LIFETIME_EXCLUSIVE_RULE: &str = "!(has(self.expiresAt) && has(self.activeFor))";
pub const LIFETIME_EXCLUSIVE_MSG: &str = "set at most one of expiresAt and activeFor";

/// Longest duration string (`activeFor`, `maxDuration`).
pub const MAX_DURATION_LEN: u32 = 32;
/// Shortest `activeFor` or `maxDuration`: Azure PIM's shortest schedule, and long enough that
/// a grant is not removed before it has converged.
pub const MIN_DURATION_SECONDS: u64 = 300;
// The pattern admits exactly what `validation::parse_duration` parses, and CEL's `duration()`
// parses a superset of it, so the API server and the controller agree on every value.
pub const DURATION_RULE: &str = "self.matches('^([0-9]{1,9}(h|m|s))+$') && duration(self) >= duration('5m')";
pub const ACTIVE_FOR_MSG: &str =
    "activeFor must be a duration of at least 5m written with the units h, m and s, e.g. 30m, 48h or 2h30m";
pub const MAX_DURATION_MSG: &str =
    "maxDuration must be a duration of at least 5m written with the units h, m and s, e.g. 8h or 720h";

pub const PIM_NEEDS_EXPIRY_RULE: &str = "!has(self.enforcement) || self.enforcement != 'AzurePIM' || has(self.expiresAt) || has(self.activeFor) || self.roleAssignments.all(r, has(r.expiresAt) || has(r.activeFor))";
pub const PIM_NEEDS_EXPIRY_MSG: &str =
    "enforcement AzurePIM needs an expiry: set expiresAt or activeFor on the grant or on every entry";

pub const CREDENTIAL_NAME_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')";
pub const CREDENTIAL_NAME_MSG: &str = "azureCredentialRef.name must be a Secret name (lower-case DNS subdomain)";

// GrantPolicy

pub const PATTERN_ROOT_RULE: &str = "self.all(p, p.startsWith('/'))";
pub const PATTERN_ROOT_MSG: &str = "patterns must start with '/'";
pub const PATTERN_SHAPE_RULE: &str = "self.all(p, !p.contains('..') && !p.contains('//') && !p.endsWith('/'))";
pub const PATTERN_SHAPE_MSG: &str = "patterns must not contain '..' or '//' or end with '/'";
pub const PATTERN_INVALID_MSG: &str =
    "patterns must be ARM id globs ('*' within a segment, '**' for any number of segments)";

pub const POLICY_ROLES_RULE: &str = "self.all(r, r.size() > 0)";
pub const POLICY_ROLE_INVALID_MSG: &str =
    "roles entries must be '*', a role name, a role-definition GUID or a full roleDefinitionId";

pub const MAX_PER_GRANT_MSG: &str = "maxRoleAssignmentsPerGrant must be between 1 and 100";

//! Validation of grant and policy specs into `Validated…` types.
//!
//! The CRD schema's CEL rules reject most bad manifests at admission, but admission rules can
//! be missing (old clusters, objects stored before a rule existed) and CEL cannot parse ARM ids
//! or role references. The controller therefore validates every object again here before it
//! acts, and works only with the parsed, normalised values this module returns.
//!
//! Every problem is collected (not just the first), each with the field path and the same
//! message the matching CEL rule gives (see [`super::rules`]), followed by specifics.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::grant::*;
use super::policy::*;
use super::rules::*;
use crate::azure::condition::{CONDITION_VERSION, check_condition};
use crate::azure::guid::parse_guid;
use crate::azure::{ResourceId, ResourceIdError, RoleRef};
use crate::policy::glob::{Glob, GlobError};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.roleAssignments[1].scope`.
    pub field: String,
    pub message: String,
}

/// Every problem found in one object. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }
}

/// Errors reported per object; more are counted, not listed, so junk cannot make a status huge.
const MAX_REPORTED_ERRORS: usize = 20;

#[derive(Default)]
struct Collector(Vec<FieldError>, usize);

impl Collector {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < MAX_REPORTED_ERRORS {
            self.0.push(FieldError { field: field.into(), message: message.into() });
        } else {
            self.1 += 1;
        }
    }

    fn into_errors(mut self) -> ValidationErrors {
        if self.1 > 0 {
            self.0.push(FieldError { field: "spec".into(), message: format!("and {} more errors", self.1) });
        }
        ValidationErrors(self.0)
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(self.into_errors()) }
    }
}

/// The identity a grant names, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatedIdentity {
    /// The workspace's built-in `dbmanagedidentity`.
    WorkspaceManagedIdentity { workspace: ResourceId },
    /// The Access Connector the workspace links in `properties.accessConnector`.
    WorkspaceAccessConnector { workspace: ResourceId },
    /// A standalone Access Connector: its system-assigned identity, or the named user-assigned one.
    AccessConnector { connector: ResourceId, user_assigned_identity: Option<ResourceId> },
    /// A principal given by object id.
    Principal { principal_id: Uuid, principal_type: PrincipalType },
}

impl ValidatedIdentity {
    /// The ARM id a GrantPolicy's `identities` patterns are matched against: the workspace,
    /// the connector, or the named user-assigned identity. A bare principal has none.
    pub fn policy_resource_id(&self) -> Option<&ResourceId> {
        match self {
            ValidatedIdentity::WorkspaceManagedIdentity { workspace }
            | ValidatedIdentity::WorkspaceAccessConnector { workspace } => Some(workspace),
            ValidatedIdentity::AccessConnector { connector, user_assigned_identity } => {
                Some(user_assigned_identity.as_ref().unwrap_or(connector))
            }
            ValidatedIdentity::Principal { .. } => None,
        }
    }
}

/// An ABAC condition that passed the shape check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbacCondition {
    pub expression: String,
    pub version: String,
}

/// When an entry's access ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// At this time (`expiresAt`).
    Until(Timestamp),
    /// This long after the entry was first assigned (`activeFor`).
    For(Duration),
}

/// One desired role assignment, parsed.
#[derive(Debug, Clone)]
pub struct ValidatedRoleAssignment {
    pub role: RoleRef,
    pub scope: ResourceId,
    pub condition: Option<AbacCondition>,
    pub description: Option<String>,
    /// The entry's own lifetime, else the grant's; `None`: access without end.
    pub lifetime: Option<Lifetime>,
}

/// A grant spec that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedGrant {
    pub identity: ValidatedIdentity,
    pub role_assignments: Vec<ValidatedRoleAssignment>,
    pub deletion_policy: DeletionPolicy,
    pub management_policy: ManagementPolicy,
    /// Name of the credential Secret in the grant's namespace, if any.
    pub credential_secret: Option<String>,
    /// Who ends time-bound access.
    pub enforcement: Enforcement,
    pub justification: Option<String>,
}

/// Deserializes a spec from JSON (e.g. an object read without admission), reporting type
/// errors with their field path, then validates it.
pub fn validate_grant_spec_json(spec: &serde_json::Value) -> Result<ValidatedGrant, ValidationErrors> {
    validate_grant_spec(&from_json::<DatabricksIdentityGrantSpec>(spec)?)
}

/// Deserializes a GrantPolicy spec from JSON, then validates it.
pub fn validate_policy_spec_json(spec: &serde_json::Value) -> Result<ValidatedPolicy, ValidationErrors> {
    validate_policy_spec(&from_json::<GrantPolicySpec>(spec)?)
}

fn from_json<T: DeserializeOwned>(spec: &serde_json::Value) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_owned() } else { format!("spec.{path}") };
        ValidationErrors(vec![FieldError { field, message: e.into_inner().to_string() }])
    })
}

fn id_error(shared: &str, value: &str, e: &ResourceIdError) -> String {
    format!("{shared}; '{}' {e}", truncate(value))
}

/// Quotes at most 120 characters of user input in messages (a 1 MB id must not become a 1 MB
/// status message).
fn truncate(value: &str) -> String {
    const MAX: usize = 120;
    // Control characters (NUL, escape sequences) are shown escaped, never written to a status.
    let shown: String = value
        .chars()
        .take(MAX)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() { c.escape_default().collect() } else { vec![c] };
            escaped
        })
        .collect();
    if value.chars().nth(MAX).is_some() { format!("{shown}…") } else { shown }
}

fn typed_id(c: &mut Collector, field: &str, value: &str, resource_type: &str, shared: &str) -> Option<ResourceId> {
    match ResourceId::parse(value).and_then(|id| id.expect_type(resource_type).map(|()| id)) {
        Ok(id) if id.resource_group_name().is_some() && id.sections().len() == 1 => Some(id),
        Ok(_) => {
            c.push(field, format!("{shared}; '{}' is not in a resource group", truncate(value)));
            None
        }
        Err(e) => {
            c.push(field, id_error(shared, value, &e));
            None
        }
    }
}

/// Validates a grant spec.
pub fn validate_grant_spec(spec: &DatabricksIdentityGrantSpec) -> Result<ValidatedGrant, ValidationErrors> {
    let mut c = Collector::default();
    let identity = validate_identity(&mut c, &spec.identity);

    let count = spec.role_assignments.len();
    if count == 0 || count > MAX_ROLE_ASSIGNMENTS as usize {
        c.push("spec.roleAssignments", format!("{ROLE_ASSIGNMENTS_COUNT_MSG}; it has {count}"));
    }
    // Entries of an over-long list are not examined: the duplicate check is quadratic.
    let examined = if count > MAX_ROLE_ASSIGNMENTS as usize { &[][..] } else { &spec.role_assignments[..] };
    let grant_lifetime = validate_lifetime(&mut c, "spec", spec.expires_at.as_ref(), spec.active_for.as_deref());
    let mut assignments: Vec<ValidatedRoleAssignment> = Vec::with_capacity(examined.len());
    for (i, ra) in examined.iter().enumerate() {
        if let Some(mut valid) = validate_role_assignment(&mut c, &format!("spec.roleAssignments[{i}]"), ra) {
            valid.lifetime = valid.lifetime.or(grant_lifetime);
            // Duplicates by meaning: a name and a GUID of one role are caught when resolved.
            if let Some(first) =
                assignments.iter().position(|a| a.role.same_role(&valid.role) && a.scope == valid.scope)
            {
                c.push(
                    format!("spec.roleAssignments[{i}]"),
                    format!("{UNIQUE_ROLE_SCOPE_MSG}; it repeats entry {first} ({} at {})", valid.role, valid.scope),
                );
            }
            assignments.push(valid);
        }
    }

    if spec.enforcement == Enforcement::AzurePim {
        for (i, ra) in assignments.iter().enumerate() {
            if ra.lifetime.is_none() {
                c.push(format!("spec.roleAssignments[{i}]"), PIM_NEEDS_EXPIRY_MSG);
            }
        }
    }
    if let Some(j) = &spec.justification
        && j.chars().count() > 500
    {
        c.push(
            "spec.justification",
            format!("justification is {} characters long; the limit is 500", j.chars().count()),
        );
    }

    let credential_secret = spec.azure_credential_ref.as_ref().map(|r| r.name.clone());
    if let Some(name) = &credential_secret
        && !is_dns_subdomain(name)
    {
        c.push("spec.azureCredentialRef.name", format!("{CREDENTIAL_NAME_MSG}; got '{}'", truncate(name)));
    }

    // validate_identity pushed an error whenever it returned None.
    let Some(identity) = identity else {
        return Err(c.into_errors());
    };
    c.finish(ValidatedGrant {
        identity,
        role_assignments: assignments,
        deletion_policy: spec.deletion_policy,
        management_policy: spec.management_policy,
        credential_secret,
        enforcement: spec.enforcement,
        justification: spec.justification.clone(),
    })
}

fn validate_identity(c: &mut Collector, source: &IdentitySource) -> Option<ValidatedIdentity> {
    let set = [source.workspace.is_some(), source.access_connector.is_some(), source.principal.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        c.push("spec.identity", IDENTITY_EXACTLY_ONE_MSG);
        return None;
    }
    if let Some(ws) = &source.workspace {
        let workspace = typed_id(
            c,
            "spec.identity.workspace.resourceId",
            &ws.resource_id,
            "Microsoft.Databricks/workspaces",
            WORKSPACE_ID_MSG,
        )?;
        return Some(match ws.source {
            WorkspaceIdentityKind::ManagedIdentity => ValidatedIdentity::WorkspaceManagedIdentity { workspace },
            WorkspaceIdentityKind::AccessConnector => ValidatedIdentity::WorkspaceAccessConnector { workspace },
        });
    }
    if let Some(ac) = &source.access_connector {
        let connector = typed_id(
            c,
            "spec.identity.accessConnector.resourceId",
            &ac.resource_id,
            "Microsoft.Databricks/accessConnectors",
            ACCESS_CONNECTOR_ID_MSG,
        );
        let user_assigned_identity = match &ac.user_assigned_identity_id {
            None => None,
            Some(uai) => Some(typed_id(
                c,
                "spec.identity.accessConnector.userAssignedIdentityId",
                uai,
                "Microsoft.ManagedIdentity/userAssignedIdentities",
                USER_ASSIGNED_ID_MSG,
            )?),
        };
        return Some(ValidatedIdentity::AccessConnector { connector: connector?, user_assigned_identity });
    }
    let p = source.principal.as_ref()?;
    match parse_guid(&p.principal_id) {
        Some(principal_id) => Some(ValidatedIdentity::Principal { principal_id, principal_type: p.principal_type }),
        None => {
            c.push(
                "spec.identity.principal.principalId",
                format!("{PRINCIPAL_ID_MSG}; got '{}'", truncate(&p.principal_id)),
            );
            None
        }
    }
}

fn validate_role_assignment(
    c: &mut Collector,
    field: &str,
    ra: &RoleAssignmentSpec,
) -> Option<ValidatedRoleAssignment> {
    let before = c.0.len();
    let role = match RoleRef::parse(&ra.role) {
        Ok(role) => Some(role),
        Err(e) => {
            c.push(format!("{field}.role"), format!("{ROLE_INVALID_MSG}; '{}' {e}", truncate(&ra.role)));
            None
        }
    };
    let scope = validate_scope(c, &format!("{field}.scope"), &ra.scope);

    let condition = match (&ra.condition, &ra.condition_version) {
        (None, None) => None,
        (None, Some(_)) => {
            c.push(format!("{field}.conditionVersion"), VERSION_NEEDS_CONDITION_MSG);
            None
        }
        (Some(_), None) => {
            c.push(format!("{field}.conditionVersion"), CONDITION_NEEDS_VERSION_MSG);
            None
        }
        (Some(expression), Some(version)) => {
            if version != CONDITION_VERSION {
                c.push(
                    format!("{field}.conditionVersion"),
                    format!("{CONDITION_NEEDS_VERSION_MSG}; got '{}'", truncate(version)),
                );
            }
            if let Err(e) = check_condition(expression, MAX_CONDITION_LEN as usize) {
                c.push(format!("{field}.condition"), format!("{CONDITION_INVALID_MSG}; it {e}"));
            }
            Some(AbacCondition { expression: expression.clone(), version: version.clone() })
        }
    };

    // The schema's maxLength, for objects that did not pass admission (old clusters, junk).
    for (name, value, max) in [("role", &ra.role, MAX_ROLE_LEN), ("scope", &ra.scope, MAX_SCOPE_LEN)] {
        let len = value.chars().count();
        if len > max as usize {
            c.push(format!("{field}.{name}"), format!("{name} is {len} characters long; the limit is {max}"));
        }
    }

    if let Some(description) = &ra.description {
        let len = description.chars().count();
        if len > MAX_DESCRIPTION_LEN as usize {
            c.push(
                format!("{field}.description"),
                format!("description is {len} characters long; the limit is {MAX_DESCRIPTION_LEN}"),
            );
        } else if let Some(ch) = description.chars().find(|ch| ch.is_control() && !matches!(ch, '\n' | '\t')) {
            c.push(format!("{field}.description"), format!("description contains the control character {ch:?}"));
        }
    }

    let lifetime = validate_lifetime(c, field, ra.expires_at.as_ref(), ra.active_for.as_deref());

    if c.0.len() != before {
        return None;
    }
    Some(ValidatedRoleAssignment {
        role: role?,
        scope: scope?,
        condition,
        description: ra.description.clone(),
        lifetime,
    })
}

/// `expiresAt` / `activeFor` at one level (`spec` or an entry): at most one, and a duration the
/// CEL rule admits too.
fn validate_lifetime(
    c: &mut Collector,
    field: &str,
    expires_at: Option<&Time>,
    active_for: Option<&str>,
) -> Option<Lifetime> {
    match (expires_at, active_for) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            c.push(field, LIFETIME_EXCLUSIVE_MSG);
            None
        }
        (Some(at), None) => Some(Lifetime::Until(at.0)),
        (None, Some(text)) => match parse_duration(text) {
            Ok(d) if d.as_secs() >= MIN_DURATION_SECONDS => Some(Lifetime::For(d)),
            Ok(_) => {
                c.push(format!("{field}.activeFor"), format!("{ACTIVE_FOR_MSG}; got '{}'", truncate(text)));
                None
            }
            Err(e) => {
                c.push(format!("{field}.activeFor"), format!("{ACTIVE_FOR_MSG}; '{}' {e}", truncate(text)));
                None
            }
        },
    }
}

/// Parses the duration syntax the CRD admits (`DURATION_RULE`): one or more `<digits><unit>`
/// with the units `h`, `m` and `s`, e.g. `48h` or `2h30m`. A subset of Go's (and CEL's)
/// durations, so both sides of admission read a value the same way.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.len() > MAX_DURATION_LEN as usize {
        return Err(format!("is longer than {MAX_DURATION_LEN} characters"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            other => return Err(format!("has '{other}' where a digit or a unit (h, m, s) belongs")),
        };
        if digits.is_empty() || digits.len() > 9 {
            return Err("needs 1 to 9 digits before each unit".into());
        }
        let n: u64 = digits.parse().map_err(|_| "has a number that is too large".to_owned())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or("is too long")?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err("ends without a unit (h, m, s)".into());
    }
    Ok(Duration::from_secs(total))
}

/// Validates a scope with the same rule order and messages as the CEL rules, then parses it.
fn validate_scope(c: &mut Collector, field: &str, scope: &str) -> Option<ResourceId> {
    let lower = scope.to_ascii_lowercase();
    let shown = truncate(scope);
    if !(lower.starts_with("/subscriptions/") || lower.starts_with("/providers/microsoft.management/managementgroups/"))
    {
        c.push(field, format!("{SCOPE_ROOT_MSG}; got '{shown}'"));
        return None;
    }
    let mut shape_ok = true;
    for (bad, msg) in [
        (scope.contains(".."), SCOPE_DOTDOT_MSG),
        (scope.contains("//"), SCOPE_EMPTY_SEGMENT_MSG),
        (scope.ends_with('/'), SCOPE_TRAILING_SLASH_MSG),
    ] {
        if bad {
            c.push(field, format!("{msg}; got '{shown}'"));
            shape_ok = false;
        }
    }
    if !shape_ok {
        return None;
    }
    match ResourceId::parse(scope) {
        Ok(id) if id.is_assignable_scope() => Some(id),
        Ok(id) => {
            c.push(field, format!("{SCOPE_INVALID_MSG}; '{shown}' is a {} id, not a scope", id.resource_type()));
            None
        }
        Err(e) => {
            c.push(field, id_error(SCOPE_INVALID_MSG, scope, &e));
            None
        }
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A role entry of a GrantPolicy.
#[derive(Debug, Clone)]
pub enum RolePattern {
    /// `*`: any role that is not privileged.
    AnyRole,
    Role(RoleRef),
}

/// A GrantPolicy spec that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedPolicy {
    pub namespace_selector: LabelSelector,
    pub identities: Vec<Glob>,
    pub roles: Vec<RolePattern>,
    pub scopes: Vec<Glob>,
    pub allow_privileged_roles: bool,
    pub workspace_managed_identity_data_roles: DataRolePolicy,
    pub max_role_assignments_per_grant: usize,
    /// Longest access allowed; `None`: no limit.
    pub max_duration: Option<Duration>,
}

/// Validates a GrantPolicy spec.
pub fn validate_policy_spec(spec: &GrantPolicySpec) -> Result<ValidatedPolicy, ValidationErrors> {
    let mut c = Collector::default();
    validate_selector(&mut c, &spec.namespace_selector);
    let identities = validate_patterns(&mut c, "spec.identities", &spec.identities);
    let scopes = validate_patterns(&mut c, "spec.scopes", &spec.scopes);

    if spec.roles.is_empty() || spec.roles.len() > MAX_POLICY_ENTRIES as usize {
        c.push(
            "spec.roles",
            format!("roles must have between 1 and {MAX_POLICY_ENTRIES} entries; it has {}", spec.roles.len()),
        );
    }
    let mut roles = Vec::new();
    for (i, role) in spec.roles.iter().enumerate() {
        if &**role == "*" {
            roles.push(RolePattern::AnyRole);
            continue;
        }
        match RoleRef::parse(role) {
            Ok(r) => roles.push(RolePattern::Role(r)),
            Err(e) => {
                c.push(format!("spec.roles[{i}]"), format!("{POLICY_ROLE_INVALID_MSG}; '{}' {e}", truncate(role)))
            }
        }
    }

    let max = spec.max_role_assignments_per_grant;
    if !(1..=MAX_ROLE_ASSIGNMENTS as i32).contains(&max) {
        c.push("spec.maxRoleAssignmentsPerGrant", format!("{MAX_PER_GRANT_MSG}; got {max}"));
    }
    let max_duration = spec.max_duration.as_deref().and_then(|text| match parse_duration(text) {
        Ok(d) if d.as_secs() >= MIN_DURATION_SECONDS => Some(d),
        Ok(_) => {
            c.push("spec.maxDuration", format!("{MAX_DURATION_MSG}; got '{}'", truncate(text)));
            None
        }
        Err(e) => {
            c.push("spec.maxDuration", format!("{MAX_DURATION_MSG}; '{}' {e}", truncate(text)));
            None
        }
    });
    c.finish(ValidatedPolicy {
        namespace_selector: spec.namespace_selector.clone(),
        identities,
        roles,
        scopes,
        allow_privileged_roles: spec.allow_privileged_roles,
        workspace_managed_identity_data_roles: spec.workspace_managed_identity_data_roles,
        max_role_assignments_per_grant: usize::try_from(max).unwrap_or(0),
        max_duration,
    })
}

fn validate_patterns(c: &mut Collector, field: &str, patterns: &[BoundedString]) -> Vec<Glob> {
    if patterns.is_empty() || patterns.len() > MAX_POLICY_ENTRIES as usize {
        c.push(field, format!("must have between 1 and {MAX_POLICY_ENTRIES} entries; it has {}", patterns.len()));
        return Vec::new();
    }
    let mut globs = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        match Glob::parse(p) {
            Ok(g) => globs.push(g),
            Err(e) => {
                let shared = match e {
                    GlobError::MissingLeadingSlash => PATTERN_ROOT_MSG,
                    GlobError::TrailingSlash | GlobError::EmptySegment | GlobError::DotSegment => PATTERN_SHAPE_MSG,
                    _ => PATTERN_INVALID_MSG,
                };
                c.push(format!("{field}[{i}]"), format!("{shared}; '{}' {e}", truncate(p)))
            }
        }
    }
    globs
}

fn validate_selector(c: &mut Collector, selector: &LabelSelector) {
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("spec.namespaceSelector.matchExpressions[{i}]");
        let has_values = expr.values.as_ref().is_some_and(|v| !v.is_empty());
        match expr.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                c.push(field, format!("operator {} needs at least one value", expr.operator))
            }
            "Exists" | "DoesNotExist" if has_values => {
                c.push(field, format!("operator {} takes no values", expr.operator))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                c.push(field, format!("operator must be In, NotIn, Exists or DoesNotExist; got '{}'", truncate(other)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

    fn spec(identity: serde_json::Value, assignments: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"identity": identity, "roleAssignments": assignments})
    }

    fn ws() -> serde_json::Value {
        serde_json::json!({"workspace": {"resourceId": format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Databricks/workspaces/w")}})
    }

    fn rg_scope() -> String {
        format!("/subscriptions/{SUB}/resourceGroups/rg-lake")
    }

    #[test]
    fn a_good_spec_validates_into_parsed_values() {
        let v = validate_grant_spec_json(&spec(ws(), serde_json::json!([{"role": "Reader", "scope": rg_scope()}])))
            .expect("valid");
        assert!(matches!(v.identity, ValidatedIdentity::WorkspaceManagedIdentity { .. }));
        assert_eq!(v.role_assignments[0].scope.resource_group_name(), Some("rg-lake"));
        assert_eq!(v.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(v.management_policy, ManagementPolicy::Enforce);
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let bad = spec(
            serde_json::json!({"principal": {"principalId": "nope"}}),
            serde_json::json!([
                {"role": "", "scope": "/subscriptions/x/"},
                {"role": "Reader", "scope": rg_scope(), "condition": "(a"},
            ]),
        );
        let errs = validate_grant_spec_json(&bad).expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.identity.principal.principalId",
                "spec.roleAssignments[0].role",
                "spec.roleAssignments[0].scope",
                "spec.roleAssignments[1].conditionVersion",
            ]
        );
    }

    #[test]
    fn durations_are_the_subset_of_go_syntax_the_crd_admits() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("48h"), Ok(172_800));
        assert_eq!(secs("2h30m"), Ok(9000));
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("1h1h"), Ok(7200), "Go and CEL add repeated units");
        for bad in ["", "5", "2d", "1.5h", "-5m", "h", "5 m", "1234567890h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // The CRD's pattern admits exactly these shapes (`regex` comes with the sandbox).
        #[cfg(feature = "sandbox")]
        {
            let pattern = regex::Regex::new("^([0-9]{1,9}(h|m|s))+$").expect("regex");
            for text in ["48h", "2h30m", "90s", "1h1h", "", "5", "2d", "1.5h", "-5m", "1234567890h"] {
                assert_eq!(pattern.is_match(text), parse_duration(text).is_ok(), "{text:?}");
            }
        }
    }

    #[test]
    fn lifetimes_take_one_field_per_level_and_at_least_five_minutes() {
        let bad = serde_json::json!({
            "identity": ws(),
            "expiresAt": "2026-01-01T00:00:00Z",
            "activeFor": "1h",
            "roleAssignments": [
                {"role": "Reader", "scope": rg_scope(), "activeFor": "4m"},
                {"role": "Reader", "scope": format!("{}-2", rg_scope()), "activeFor": "2days"},
            ],
        });
        let errs = validate_grant_spec_json(&bad).expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec", "spec.roleAssignments[0].activeFor", "spec.roleAssignments[1].activeFor"]);
        assert!(errs.0[0].message.contains(LIFETIME_EXCLUSIVE_MSG));
        assert!(errs.0[1].message.contains("at least 5m"), "{}", errs.0[1].message);

        let good = serde_json::json!({
            "identity": ws(),
            "activeFor": "48h",
            "roleAssignments": [
                {"role": "Reader", "scope": rg_scope()},
                {"role": "Reader", "scope": format!("{}-2", rg_scope()), "expiresAt": "2026-01-01T00:00:00Z"},
            ],
        });
        let v = validate_grant_spec_json(&good).expect("valid");
        assert_eq!(v.role_assignments[0].lifetime, Some(Lifetime::For(Duration::from_secs(172_800))));
        assert_eq!(
            v.role_assignments[1].lifetime,
            Some(Lifetime::Until("2026-01-01T00:00:00Z".parse().expect("time"))),
            "the entry's own wins"
        );
        let policy = |d: &str| {
            validate_policy_spec_json(&serde_json::json!({
                "namespaceSelector": {}, "identities": ["/**"], "roles": ["*"], "scopes": ["/**"], "maxDuration": d,
            }))
        };
        assert_eq!(policy("8h").expect("valid").max_duration, Some(Duration::from_secs(28_800)));
        assert!(policy("1m").expect_err("too short").0[0].field == "spec.maxDuration");
    }

    #[test]
    fn duplicates_are_found_by_meaning_not_spelling() {
        let owner = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
        let bad = spec(
            ws(),
            serde_json::json!([
                {"role": owner, "scope": rg_scope()},
                {"role": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}", owner.to_uppercase()), "scope": rg_scope().to_uppercase().replace("SUBSCRIPTIONS", "subscriptions")},
            ]),
        );
        let errs = validate_grant_spec_json(&bad).expect_err("dup");
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].message.starts_with(UNIQUE_ROLE_SCOPE_MSG), "{errs}");
    }

    #[test]
    fn wrong_types_and_unknown_enum_values_name_the_field() {
        let errs = validate_grant_spec_json(&serde_json::json!({"identity": ws(), "roleAssignments": "Reader"}))
            .expect_err("type");
        assert_eq!(errs.0[0].field, "spec.roleAssignments");
        let mut s = spec(ws(), serde_json::json!([{"role": "Reader", "scope": rg_scope()}]));
        s["deletionPolicy"] = "Orphan".into();
        let errs = validate_grant_spec_json(&s).expect_err("enum");
        assert_eq!(errs.0[0].field, "spec.deletionPolicy");
        assert!(errs.0[0].message.contains("unknown variant `Orphan`, expected `Delete` or `Retain`"), "{errs}");
    }

    #[test]
    fn huge_input_is_refused_with_a_short_message() {
        let huge = format!("/subscriptions/{SUB}/resourceGroups/{}", "a".repeat(1_000_000));
        let errs = validate_grant_spec_json(&spec(ws(), serde_json::json!([{"role": "Reader", "scope": huge}])))
            .expect_err("huge");
        assert!(errs.to_string().len() < 500, "{}", errs.to_string().len());
    }

    #[test]
    fn policy_validation_compiles_patterns_and_roles() {
        let p = validate_policy_spec_json(&serde_json::json!({
            "namespaceSelector": {"matchLabels": {"team": "a"}},
            "identities": ["/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**"],
            "roles": ["Storage Blob Data Reader", "*"],
            "scopes": [format!("/subscriptions/{SUB}/resourceGroups/rg-lake/**")],
        }))
        .expect("valid policy");
        assert_eq!(p.max_role_assignments_per_grant, 20);
        assert_eq!(p.workspace_managed_identity_data_roles, DataRolePolicy::Warn);
        assert!(!p.allow_privileged_roles);

        let errs = validate_policy_spec_json(&serde_json::json!({
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["a"]}]},
            "identities": ["/subscriptions/**/x/"],
            "roles": [" Owner"],
            "scopes": [],
            "maxRoleAssignmentsPerGrant": 0,
        }))
        .expect_err("invalid policy");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.namespaceSelector.matchExpressions[0]",
                "spec.identities[0]",
                "spec.scopes",
                "spec.roles[0]",
                "spec.maxRoleAssignmentsPerGrant",
            ]
        );
    }
}

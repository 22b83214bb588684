//! GrantPolicy evaluation: may this grant hold this role assignment? Pure: the inputs are
//! already resolved and normalised (identity and scope as parsed `ResourceId`s, the role as its
//! definition with GUID and permissions), so aliases and spellings cannot slip through.
//!
//! An assignment is allowed when at least one governing policy allows it as a whole: its
//! identity, role and scope patterns match, and that policy's rules on privileged roles, data
//! roles on a workspace's managed identity, and assignments per grant do not deny it.

use crate::api::Reason;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use uuid::Uuid;

use crate::api::DataRolePolicy;
use crate::api::validation::{RolePattern, ValidatedPolicy};
use crate::azure::models::Permission;
use crate::azure::permissions::{ROLE_ASSIGNMENT_WRITE, has_data_actions, permits_action};
use crate::azure::{ResourceId, RoleRef};

/// Whether namespaces no policy governs may grant anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    /// A namespace no GrantPolicy governs gets nothing (the default).
    Require,
    /// Ungoverned namespaces are allowed everything; governed ones follow their policies. For
    /// trying the operator out only.
    Permissive,
}

/// Owner, User Access Administrator, Role Based Access Control Administrator.
const PRIVILEGED_BUILTINS: [Uuid; 3] = [
    Uuid::from_u128(0x8e3af657_a8ff_443c_a75c_2fe8c4bcb635),
    Uuid::from_u128(0x18d7d88d_d35e_4fb5_a5c3_7773c20a72d9),
    Uuid::from_u128(0xf58310d9_a9f6_439a_9e8d_f62e7b41a168),
];

/// A role as evaluation sees it.
#[derive(Debug, Clone)]
pub struct RoleFacts<'a> {
    pub guid: Uuid,
    pub name: &'a str,
    pub permissions: &'a [Permission],
}

impl RoleFacts<'_> {
    /// Privileged: the well-known administrator roles, or any role whose actions include `*` or
    /// `Microsoft.Authorization/*` literally, or that can write role assignments — judged from
    /// permissions, so a renamed custom copy of Owner is still privileged.
    pub fn is_privileged(&self) -> bool {
        PRIVILEGED_BUILTINS.contains(&self.guid)
            || self
                .permissions
                .iter()
                .flat_map(|p| &p.actions)
                .any(|a| a == "*" || a.eq_ignore_ascii_case("Microsoft.Authorization/*"))
            || permits_action(self.permissions, ROLE_ASSIGNMENT_WRITE)
    }
}

/// One assignment to judge.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The ARM id identity patterns are matched against (`ValidatedIdentity::policy_resource_id`),
    /// or for a bare principal `/principals/<object-id>`.
    pub identity: String,
    /// The identity is a workspace's built-in `dbmanagedidentity`.
    pub workspace_managed_identity: bool,
    pub role: RoleFacts<'a>,
    pub scope: &'a ResourceId,
    /// 0-based position among the grant's assignments (for `maxRoleAssignmentsPerGrant`).
    pub position: usize,
    /// Access left until the entry expires (for `maxDuration`); `None`: access without end.
    pub remaining: Option<std::time::Duration>,
}

/// The outcome for one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed { by: String, warning: Option<String> },
    Denied { reason: Reason, message: String },
}

/// A policy that governs the grant's namespace.
#[derive(Debug, Clone)]
pub struct Governing<'a> {
    pub name: &'a str,
    pub policy: &'a ValidatedPolicy,
}

fn role_matches(pattern: &RolePattern, role: &RoleFacts<'_>) -> bool {
    match pattern {
        RolePattern::AnyRole => true,
        RolePattern::Role(RoleRef::Name(name)) => name.eq_ignore_ascii_case(role.name),
        RolePattern::Role(other) => other.guid() == Some(role.guid),
    }
}

/// Judges one assignment against the governing policies.
pub fn evaluate(governing: &[Governing<'_>], mode: PolicyMode, request: &Request<'_>) -> Verdict {
    if governing.is_empty() {
        return match mode {
            PolicyMode::Permissive => Verdict::Allowed {
                by: "(permissive mode: no GrantPolicy governs this namespace)".into(),
                warning: None,
            },
            PolicyMode::Require => Verdict::Denied {
                reason: Reason::NoGrantPolicy,
                message: "no GrantPolicy governs this namespace, and the operator requires one".into(),
            },
        };
    }
    let scope = request.scope.to_string();
    // The denial from the policy that came closest, for a message that helps.
    let mut best: Option<(Reason, String)> = None;
    for g in governing {
        let p = g.policy;
        let denial = if !p.identities.iter().any(|glob| glob.matches(&request.identity)) {
            Some((
                Reason::IdentityNotAllowed,
                format!("identity {} matches none of GrantPolicy {}'s identities", request.identity, g.name),
            ))
        } else if !p.roles.iter().any(|r| role_matches(r, &request.role)) {
            Some((
                Reason::RoleNotAllowed,
                format!(
                    "role {} ({}) is not among GrantPolicy {}'s roles",
                    request.role.name, request.role.guid, g.name
                ),
            ))
        } else if !p.scopes.iter().any(|glob| glob.matches(&scope)) {
            Some((Reason::ScopeNotAllowed, format!("scope {scope} matches none of GrantPolicy {}'s scopes", g.name)))
        } else if request.role.is_privileged() && !p.allow_privileged_roles {
            Some((
                Reason::PrivilegedRole,
                format!(
                    "role {} can grant access or control everything; GrantPolicy {} does not set allowPrivilegedRoles",
                    request.role.name, g.name
                ),
            ))
        } else if request.workspace_managed_identity
            && has_data_actions(request.role.permissions)
            && p.workspace_managed_identity_data_roles == DataRolePolicy::Deny
        {
            Some((
                Reason::DataRoleOnWorkspaceIdentity,
                format!(
                    "role {} grants data access, and GrantPolicy {} denies data roles on a workspace's managed identity: use an Access Connector",
                    request.role.name, g.name
                ),
            ))
        } else if let Some(denial) = duration_denial(p, request, g.name) {
            Some(denial)
        } else if request.position >= p.max_role_assignments_per_grant {
            Some((
                Reason::TooManyAssignments,
                format!(
                    "GrantPolicy {} allows {} role assignments per grant; this is number {}",
                    g.name,
                    p.max_role_assignments_per_grant,
                    request.position + 1
                ),
            ))
        } else {
            None
        };
        match denial {
            None => {
                let warning = (request.workspace_managed_identity && has_data_actions(request.role.permissions) && p.workspace_managed_identity_data_roles == DataRolePolicy::Warn).then(|| {
                    format!("role {} grants data access to the workspace's managed identity (dbmanagedidentity), which is meant for control-plane use; prefer an Access Connector for data access", request.role.name)
                });
                return Verdict::Allowed { by: g.name.to_owned(), warning };
            }
            Some(d) => {
                if best.as_ref().is_none_or(|b| d.0 > b.0) {
                    best = Some(d);
                }
            }
        }
    }
    let (reason, message) = best.unwrap_or((Reason::NoGrantPolicy, "no GrantPolicy allows it".into()));
    Verdict::Denied { reason, message }
}

/// `maxDuration`: an entry without an expiry, or with more access left than the policy allows.
fn duration_denial(p: &ValidatedPolicy, request: &Request<'_>, policy: &str) -> Option<(Reason, String)> {
    let max = p.max_duration?;
    let shown = |d: std::time::Duration| format!("{}m", d.as_secs().div_ceil(60));
    match request.remaining {
        None => Some((
            Reason::DurationNotAllowed,
            format!(
                "GrantPolicy {policy} allows access for at most {} (maxDuration); set expiresAt or activeFor on the entry or the grant",
                shown(max)
            ),
        )),
        Some(left) if left > max => Some((
            Reason::DurationNotAllowed,
            format!(
                "GrantPolicy {policy} allows access for at most {} (maxDuration); this entry asks for {}",
                shown(max),
                shown(left)
            ),
        )),
        Some(_) => None,
    }
}

/// Judges what can be judged before anything is read from Azure: whether some governing policy
/// matches both the identity (its ARM id, or `/principals/<id>`) and the scope, compared on the
/// parsed ids. `Some` is a denial that needs no Azure call — and reads the same whether or not
/// the identity or scope exists, so a namespace cannot probe what the operator's identity can
/// read. `None` means "resolve the role, then [`evaluate`] the whole assignment".
pub fn prejudge(
    governing: &[Governing<'_>],
    mode: PolicyMode,
    identity: &str,
    scope: &ResourceId,
) -> Option<(Reason, String)> {
    if governing.is_empty() {
        return match mode {
            PolicyMode::Permissive => None,
            PolicyMode::Require => Some((
                Reason::NoGrantPolicy,
                "no GrantPolicy governs this namespace, and the operator requires one".into(),
            )),
        };
    }
    let scope_text = scope.to_string();
    let identity_ok = |p: &ValidatedPolicy| p.identities.iter().any(|glob| glob.matches(identity));
    let scope_ok = |p: &ValidatedPolicy| p.scopes.iter().any(|glob| glob.matches(&scope_text));
    if governing.iter().any(|g| identity_ok(g.policy) && scope_ok(g.policy)) {
        return None;
    }
    let names = governing.iter().map(|g| g.name).collect::<Vec<_>>().join(", ");
    Some(if governing.iter().any(|g| identity_ok(g.policy)) {
        (
            Reason::ScopeNotAllowed,
            format!("scope {scope_text} matches none of the scopes of GrantPolicy {names} that allow this identity"),
        )
    } else {
        (
            Reason::IdentityNotAllowed,
            format!("identity {identity} matches none of the identities of GrantPolicy {names}"),
        )
    })
}

/// Whether a label selector selects a namespace with these labels (`{}` selects all).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // Validation refuses other operators; an unknown one selects nothing.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validation::validate_policy_spec_json;
    use serde_json::json;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const OTHER_SUB: &str = "0d7d4a3c-1111-4222-8333-944455566677";
    const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const BLOB_READER: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";

    fn policy(extra: serde_json::Value) -> ValidatedPolicy {
        let mut spec = json!({
            "namespaceSelector": {"matchLabels": {"team": "analytics"}},
            "identities": [format!("/subscriptions/{SUB}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**")],
            "roles": ["Reader", "Storage Blob Data Reader", OWNER, format!("/subscriptions/{OTHER_SUB}/providers/Microsoft.Authorization/roleDefinitions/{OWNER}")],
            "scopes": [format!("/subscriptions/{SUB}/resourceGroups/rg-lake/**")],
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        validate_policy_spec_json(&spec).expect("policy")
    }

    fn perms(actions: &[&str], data: &[&str]) -> Vec<Permission> {
        vec![Permission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            data_actions: data.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }]
    }

    struct Case {
        what: &'static str,
        identity: String,
        workspace_mi: bool,
        role: (&'static str, &'static str, Vec<Permission>),
        scope: String,
        position: usize,
        remaining: Option<std::time::Duration>,
        policy: serde_json::Value,
        expect: Result<bool, Reason>, // Ok(warned) or the denial
    }

    fn ws() -> String {
        format!("/subscriptions/{SUB}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces/w1")
    }

    fn lake(rest: &str) -> String {
        format!("/subscriptions/{SUB}/resourceGroups/rg-lake{rest}")
    }

    #[test]
    fn rules_and_bypass_attempts() {
        let reader = || (READER, "Reader", perms(&["*/read"], &[]));
        let blob = || {
            (
                BLOB_READER,
                "Storage Blob Data Reader",
                perms(
                    &["Microsoft.Storage/storageAccounts/blobServices/containers/read"],
                    &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
                ),
            )
        };
        let owner = || (OWNER, "Owner", perms(&["*"], &[]));
        let cases = vec![
            Case {
                what: "allowed",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Ok(false),
            },
            Case {
                what: "resource inside the scope",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake("/providers/Microsoft.Storage/storageAccounts/x"),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Ok(false),
            },
            Case {
                what: "identity in an unlisted resource group",
                identity: ws().replace("rg-analytics", "rg-other"),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::IdentityNotAllowed),
            },
            Case {
                what: "case variants of the identity are the same identity",
                identity: ws().to_uppercase().replace("SUBSCRIPTIONS", "subscriptions"),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Ok(false),
            },
            Case {
                what: "role not listed",
                identity: ws(),
                workspace_mi: false,
                role: ("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor", perms(&["*"], &[])),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::RoleNotAllowed),
            },
            Case {
                what: "scope outside",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-security"),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::ScopeNotAllowed),
            },
            Case {
                what: "rg-lake-evil is not rg-lake",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-lake-evil"),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::ScopeNotAllowed),
            },
            Case {
                what: "case variant of the scope",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake("").to_uppercase().replace("SUBSCRIPTIONS", "subscriptions"),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Ok(false),
            },
            Case {
                what: "Owner by name",
                identity: ws(),
                workspace_mi: false,
                role: owner(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::PrivilegedRole),
            },
            Case {
                what: "Owner listed by GUID and by another subscription's full id",
                identity: ws(),
                workspace_mi: false,
                role: owner(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"roles": [OWNER, format!("/subscriptions/{OTHER_SUB}/providers/Microsoft.Authorization/roleDefinitions/{OWNER}")]}),
                expect: Err(Reason::PrivilegedRole),
            },
            Case {
                what: "Owner allowed when the policy says so",
                identity: ws(),
                workspace_mi: false,
                role: owner(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"allowPrivilegedRoles": true}),
                expect: Ok(false),
            },
            Case {
                what: "custom role with Microsoft.Authorization/*",
                identity: ws(),
                workspace_mi: false,
                role: (
                    "11111111-2222-4333-8444-555555555555",
                    "Harmless Helper",
                    perms(&["Microsoft.Authorization/*"], &[]),
                ),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"roles": ["*"]}),
                expect: Err(Reason::PrivilegedRole),
            },
            Case {
                what: "custom role that can write assignments through a wildcard",
                identity: ws(),
                workspace_mi: false,
                role: (
                    "11111111-2222-4333-8444-555555555556",
                    "Writer",
                    perms(&["Microsoft.Authorization/roleAssignments/*"], &[]),
                ),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"roles": ["*"]}),
                expect: Err(Reason::PrivilegedRole),
            },
            Case {
                what: "'*' allows ordinary roles",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"roles": ["*"]}),
                expect: Ok(false),
            },
            Case {
                what: "maxDuration denies an entry without an expiry",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"maxDuration": "8h"}),
                expect: Err(Reason::DurationNotAllowed),
            },
            Case {
                what: "maxDuration denies an expiry further away than it",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: Some(std::time::Duration::from_secs(8 * 3600 + 1)),
                policy: json!({"maxDuration": "8h"}),
                expect: Err(Reason::DurationNotAllowed),
            },
            Case {
                what: "maxDuration allows an expiry within it",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: Some(std::time::Duration::from_secs(8 * 3600)),
                policy: json!({"maxDuration": "8h"}),
                expect: Ok(false),
            },
            Case {
                what: "data role on dbmanagedidentity warns by default",
                identity: ws(),
                workspace_mi: true,
                role: blob(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Ok(true),
            },
            Case {
                what: "data role on dbmanagedidentity denied",
                identity: ws(),
                workspace_mi: true,
                role: blob(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"workspaceManagedIdentityDataRoles": "Deny"}),
                expect: Err(Reason::DataRoleOnWorkspaceIdentity),
            },
            Case {
                what: "data role on dbmanagedidentity allowed",
                identity: ws(),
                workspace_mi: true,
                role: blob(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"workspaceManagedIdentityDataRoles": "Allow"}),
                expect: Ok(false),
            },
            Case {
                what: "data role on an access connector is fine",
                identity: ws(),
                workspace_mi: false,
                role: blob(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"workspaceManagedIdentityDataRoles": "Deny"}),
                expect: Ok(false),
            },
            Case {
                what: "too many assignments",
                identity: ws(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 2,
                remaining: None,
                policy: json!({"maxRoleAssignmentsPerGrant": 2}),
                expect: Err(Reason::TooManyAssignments),
            },
            Case {
                what: "a bare principal needs a /principals/ pattern",
                identity: "/principals/0b3d4a1e-6c2f-4e8a-9d7b-5f1a2c3e4d6b".into(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({}),
                expect: Err(Reason::IdentityNotAllowed),
            },
            Case {
                what: "…and is allowed by one",
                identity: "/principals/0b3d4a1e-6c2f-4e8a-9d7b-5f1a2c3e4d6b".into(),
                workspace_mi: false,
                role: reader(),
                scope: lake(""),
                position: 0,
                remaining: None,
                policy: json!({"identities": ["/principals/*"]}),
                expect: Ok(false),
            },
        ];
        for case in cases {
            let p = policy(case.policy.clone());
            let scope = ResourceId::parse(&case.scope).expect(case.what);
            let guid = Uuid::parse_str(case.role.0).expect("guid");
            let request = Request {
                identity: ResourceId::parse(&case.identity).map(|id| id.to_string()).unwrap_or(case.identity.clone()),
                workspace_managed_identity: case.workspace_mi,
                role: RoleFacts { guid, name: case.role.1, permissions: &case.role.2 },
                scope: &scope,
                position: case.position,
                remaining: case.remaining,
            };
            let verdict = evaluate(&[Governing { name: "team", policy: &p }], PolicyMode::Require, &request);
            match (&verdict, case.expect) {
                (Verdict::Allowed { warning, .. }, Ok(warned)) => {
                    assert_eq!(warning.is_some(), warned, "{}", case.what)
                }
                (Verdict::Denied { reason, .. }, Err(expected)) => assert_eq!(*reason, expected, "{}", case.what),
                (got, want) => panic!("{}: got {got:?}, expected {want:?}", case.what),
            }
        }
    }

    #[test]
    fn scopes_that_try_path_tricks_never_validate() {
        // `..`, `//`, `%2F` and a trailing slash are refused by the parser before any policy
        // sees them: a grant carrying them is InvalidSpec, never allowed.
        for scope in [
            lake("/../rg-security"),
            format!("/subscriptions/{SUB}//resourceGroups/rg-lake"),
            lake("%2F..%2Frg-security"),
            lake("/"),
        ] {
            assert!(ResourceId::parse(&scope).is_err(), "{scope}");
        }
    }

    #[test]
    fn the_prejudgement_needs_identity_and_scope_from_one_policy() {
        let a = policy(
            json!({"identities": [format!("{}/**", "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-analytics")], "scopes": [lake("/**")]}),
        );
        let governing = [Governing { name: "a", policy: &a }];
        let scope = |s: &str| ResourceId::parse(s).expect("scope");
        let inside = scope(&lake("/providers/Microsoft.Storage/storageAccounts/st"));
        let outside = scope("/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-secret");
        assert_eq!(prejudge(&governing, PolicyMode::Require, &ws(), &inside), None);
        assert_eq!(
            prejudge(&governing, PolicyMode::Require, &ws(), &outside).map(|d| d.0),
            Some(Reason::ScopeNotAllowed)
        );
        assert_eq!(
            prejudge(&governing, PolicyMode::Require, "/principals/00000000-0000-0000-0000-000000000001", &inside)
                .map(|d| d.0),
            Some(Reason::IdentityNotAllowed)
        );
        assert_eq!(prejudge(&[], PolicyMode::Require, &ws(), &inside).map(|d| d.0), Some(Reason::NoGrantPolicy));
        assert_eq!(prejudge(&[], PolicyMode::Permissive, &ws(), &inside), None);
        // Whatever passes here is still judged whole by `evaluate` once the role is resolved.
    }

    #[test]
    fn without_policies_require_denies_and_permissive_allows() {
        let scope = ResourceId::parse(&lake("")).expect("scope");
        let p = perms(&["*/read"], &[]);
        let request = Request {
            identity: ws(),
            workspace_managed_identity: false,
            role: RoleFacts { guid: Uuid::nil(), name: "Reader", permissions: &p },
            scope: &scope,
            position: 0,
            remaining: None,
        };
        assert!(matches!(
            evaluate(&[], PolicyMode::Require, &request),
            Verdict::Denied { reason: Reason::NoGrantPolicy, .. }
        ));
        assert!(matches!(evaluate(&[], PolicyMode::Permissive, &request), Verdict::Allowed { .. }));
    }

    #[test]
    fn one_policy_must_allow_the_whole_assignment() {
        // Policy A allows the identity and role but not the scope; B the scope but not the role.
        let a = policy(json!({"scopes": [format!("/subscriptions/{SUB}/resourceGroups/rg-security/**")]}));
        let b = policy(json!({"roles": ["Storage Blob Data Reader"]}));
        let scope = ResourceId::parse(&lake("")).expect("scope");
        let p = perms(&["*/read"], &[]);
        let request = Request {
            identity: ws(),
            workspace_managed_identity: false,
            role: RoleFacts { guid: Uuid::parse_str(READER).expect("guid"), name: "Reader", permissions: &p },
            scope: &scope,
            position: 0,
            remaining: None,
        };
        let verdict = evaluate(
            &[Governing { name: "a", policy: &a }, Governing { name: "b", policy: &b }],
            PolicyMode::Require,
            &request,
        );
        assert!(matches!(verdict, Verdict::Denied { reason: Reason::ScopeNotAllowed, .. }), "{verdict:?}");
    }

    #[test]
    fn label_selectors_select_namespaces() {
        let labels: BTreeMap<String, String> = [("team".to_owned(), "analytics".to_owned())].into();
        let selector: LabelSelector = serde_json::from_value(json!({"matchLabels": {"team": "analytics"}, "matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]})).expect("selector");
        assert!(selects(&selector, &labels));
        assert!(selects(&LabelSelector::default(), &labels), "{{}} selects everything");
        let other: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["platform"]}]}),
        )
        .expect("selector");
        assert!(!selects(&other, &labels));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const IDENTITY_PATTERNS: [&str; 4] = [
            "/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/**",
            "/subscriptions/*/resourceGroups/rg-analytics/providers/Microsoft.Databricks/accessConnectors/*",
            "/subscriptions/*/resourceGroups/rg-*/**",
            "/principals/*",
        ];
        const SCOPE_PATTERNS: [&str; 4] = [
            "/subscriptions/*/resourceGroups/rg-lake/**",
            "/subscriptions/*/resourceGroups/rg-lake",
            "/subscriptions/*/resourceGroups/*/providers/Microsoft.KeyVault/vaults/*",
            "/subscriptions/*/**",
        ];
        const ROLE_PATTERNS: [&str; 4] = ["*", "Reader", READER, OWNER];
        const IDENTITIES: [&str; 4] = [
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-analytics/providers/Microsoft.Databricks/accessConnectors/ac1",
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces/w1",
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-analytics-evil/providers/Microsoft.Databricks/accessConnectors/ac1",
            "/principals/0d7d4a3c-1111-4222-8333-944455566677",
        ];
        const SCOPES: [&str; 4] = [
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-lake",
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-lake-evil/providers/Microsoft.Storage/storageAccounts/s1",
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-vault/providers/Microsoft.KeyVault/vaults/kv1",
            "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f",
        ];

        /// A random policy from small pattern universes, so matches and misses both occur often.
        fn policy_spec() -> impl Strategy<Value = serde_json::Value> {
            (
                prop::sample::subsequence(IDENTITY_PATTERNS.to_vec(), 1..=4),
                prop::sample::subsequence(ROLE_PATTERNS.to_vec(), 1..=4),
                prop::sample::subsequence(SCOPE_PATTERNS.to_vec(), 1..=4),
                any::<bool>(),
                prop::sample::select(vec!["Allow", "Warn", "Deny"]),
                1u32..4,
            )
                .prop_map(|(identities, roles, scopes, privileged, data, max)| {
                    json!({
                        "namespaceSelector": {},
                        "identities": identities,
                        "roles": roles,
                        "scopes": scopes,
                        "allowPrivilegedRoles": privileged,
                        "workspaceManagedIdentityDataRoles": data,
                        "maxRoleAssignmentsPerGrant": max,
                    })
                })
        }

        /// (guid, name, actions, dataActions)
        fn role() -> impl Strategy<Value = (&'static str, &'static str, Vec<Permission>)> {
            prop::sample::select(vec![
                (READER, "Reader", perms(&["*/read"], &[])),
                (OWNER, "Owner", perms(&["*"], &[])),
                (
                    BLOB_READER,
                    "Storage Blob Data Reader",
                    perms(&["Microsoft.Storage/*/read"], &["Microsoft.Storage/*/read"]),
                ),
                // A renamed custom copy of Owner: privileged by its permissions.
                ("11111111-2222-4333-8444-555555555555", "Reader", perms(&["Microsoft.Authorization/*"], &[])),
            ])
        }

        /// Flips the ASCII case of the characters chosen by `mask`.
        fn recase(text: &str, mask: u64) -> String {
            text.chars()
                .enumerate()
                .map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect()
        }

        /// An independent statement of "this one policy allows this request".
        fn allows(p: &ValidatedPolicy, r: &Request<'_>) -> bool {
            let privileged = r.role.is_privileged();
            p.identities.iter().any(|g| g.matches(&r.identity))
                && p.roles.iter().any(|pattern| match pattern {
                    RolePattern::AnyRole => true,
                    RolePattern::Role(RoleRef::Name(n)) => n.eq_ignore_ascii_case(r.role.name),
                    RolePattern::Role(other) => other.guid() == Some(r.role.guid),
                })
                && p.scopes.iter().any(|g| g.matches(&r.scope.to_string()))
                && (!privileged || p.allow_privileged_roles)
                && !(r.workspace_managed_identity
                    && has_data_actions(r.role.permissions)
                    && p.workspace_managed_identity_data_roles == DataRolePolicy::Deny)
                && r.position < p.max_role_assignments_per_grant
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn verdict_is_the_union_of_policies_and_ignores_order_and_case(
                specs in prop::collection::vec(policy_spec(), 0..4),
                identity in prop::sample::select(IDENTITIES.to_vec()),
                scope in prop::sample::select(SCOPES.to_vec()),
                (guid, name, permissions) in role(),
                workspace_managed_identity in any::<bool>(),
                position in 0usize..4,
                mask in any::<u64>(),
                mode in prop::sample::select(vec![PolicyMode::Require, PolicyMode::Permissive]),
            ) {
                let policies: Vec<ValidatedPolicy> = specs
                    .iter()
                    .map(|s| validate_policy_spec_json(s).map_err(|e| TestCaseError::fail(e.to_string())))
                    .collect::<Result<_, _>>()?;
                let names: Vec<String> = (0..policies.len()).map(|i| format!("p{i}")).collect();
                let governing: Vec<Governing<'_>> =
                    policies.iter().zip(&names).map(|(policy, name)| Governing { name, policy }).collect();
                let scope_id = ResourceId::parse(scope).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let guid = Uuid::parse_str(guid).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let request = Request {
                    identity: identity.to_owned(),
                    workspace_managed_identity,
                    role: RoleFacts { guid, name, permissions: &permissions },
                    scope: &scope_id,
                    position,
                    remaining: None,
                };
                let verdict = evaluate(&governing, mode, &request);
                let allowed = matches!(verdict, Verdict::Allowed { .. });

                if governing.is_empty() {
                    prop_assert_eq!(allowed, mode == PolicyMode::Permissive);
                    return Ok(());
                }
                // Allowed exactly when some policy allows it on its own, and by that policy.
                prop_assert_eq!(allowed, policies.iter().any(|p| allows(p, &request)));
                if let Verdict::Allowed { by, .. } = &verdict {
                    let i = names.iter().position(|n| n == by).ok_or_else(|| TestCaseError::fail("unknown policy"))?;
                    prop_assert!(allows(&policies[i], &request));
                }
                // Privileged roles only ever pass a policy that opts in.
                if allowed && request.role.is_privileged() {
                    prop_assert!(policies.iter().any(|p| p.allow_privileged_roles));
                }
                // Order of policies does not change the outcome.
                let reversed: Vec<Governing<'_>> = governing.iter().rev().cloned().collect();
                prop_assert_eq!(matches!(evaluate(&reversed, mode, &request), Verdict::Allowed { .. }), allowed);
                // Spelling the ids in another case does not change it either.
                let recased_scope = ResourceId::parse(&recase(scope, mask)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let recased = Request { identity: recase(identity, !mask), scope: &recased_scope, ..request.clone() };
                prop_assert_eq!(matches!(evaluate(&governing, mode, &recased), Verdict::Allowed { .. }), allowed);
                // Adding a policy never takes an allowance away.
                if allowed {
                    let deny_all = validate_policy_spec_json(&json!({
                        "namespaceSelector": {}, "identities": ["/nothing"], "roles": ["Reader"], "scopes": ["/nothing"],
                    })).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let mut more = governing.clone();
                    more.push(Governing { name: "deny-all", policy: &deny_all });
                    let still = matches!(evaluate(&more, mode, &request), Verdict::Allowed { .. });
                    prop_assert!(still, "adding a policy took an allowance away");
                }
            }
        }
    }
}

//! `import`: manifests that reproduce what exists. One DatabricksIdentityGrant per identity
//! (split past 100 entries), `managementPolicy: Observe` so applying them writes nothing to
//! Azure until a person flips them to `Enforce` (then the operator adopts, never re-creates),
//! and GrantPolicies that allow exactly those tuples. Privileged assignments are left out of
//! both, listed in comments for a person to decide. Pure: built from the audit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::audit::{AuditReport, AuditedAssignment, Ownership};
use super::discover::{Estate, role_guid};
use crate::api::{DatabricksIdentityGrantSpec, ManagementPolicy, RoleAssignmentSpec};

/// Most entries a grant may hold (the CRD's limit).
const MAX_ENTRIES: usize = 100;

/// One file's worth: a grant, or the policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    /// File name under `--out`.
    pub file: String,
    /// YAML, with comments.
    pub yaml: String,
}

/// What `import` produced.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub grants: Vec<Manifest>,
    pub policies: Manifest,
    /// Assignments imported, and privileged ones left out.
    pub imported: usize,
    pub left_out: usize,
}

/// A Kubernetes object name from a label: lower-case alphanumerics and '-', at most 63.
pub fn object_name(label: &str) -> String {
    let mut name = String::new();
    for c in label.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() { "identity".into() } else { name }
}

/// The role as a manifest names it: its name when exactly one definition carries it, else its
/// GUID (names are looked up at the scope; an ambiguous one would stop the grant).
fn role_reference(estate: &Estate, a: &AuditedAssignment) -> String {
    let guid = role_guid(&a.role_definition_id).unwrap_or_default();
    match estate.roles.get(&guid) {
        Some(role) if estate.role_name_counts.get(&role.role_name.to_ascii_lowercase()) == Some(&1) => {
            role.role_name.clone()
        }
        _ => guid,
    }
}

fn yaml(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

fn comment_block(out: &mut String, title: &str, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "# {title}");
    for line in lines {
        let _ = writeln!(out, "#   - {line}");
    }
}

/// Builds the manifests for `namespace` from an audit of `estate`.
pub fn manifests(estate: &Estate, report: &AuditReport, namespace: &str) -> Imported {
    let mut imported = Imported::default();
    let mut used_names = BTreeSet::new();
    let mut policies = String::new();
    for (identity, discovered) in report.identities.iter().filter_map(|audited| {
        let discovered = estate.identities.iter().find(|d| d.principal.principal_id == audited.principal_id)?;
        Some((audited, discovered))
    }) {
        // What no grant manages yet; privileged ones are for a person to decide.
        let unclaimed: Vec<&AuditedAssignment> = identity
            .assignments
            .iter()
            .filter(|a| matches!(a.ownership, Ownership::Unmanaged | Ownership::OperatorNamed))
            .collect();
        let (privileged, wanted): (Vec<&AuditedAssignment>, Vec<&AuditedAssignment>) =
            unclaimed.into_iter().partition(|a| a.privileged);
        let left_out: Vec<String> =
            privileged.iter().map(|a| format!("{} at {} ({})", a.role, a.scope, a.assignment_id)).collect();
        imported.left_out += left_out.len();
        if wanted.is_empty() {
            if !left_out.is_empty() {
                let _ = writeln!(policies, "# {}: only privileged assignments, none imported:", identity.label);
                comment_block(&mut policies, "left out:", &left_out);
                policies.push('\n');
            }
            continue;
        }
        let base = object_name(&identity.label);
        for (part, chunk) in wanted.chunks(MAX_ENTRIES).enumerate() {
            let mut name = if part == 0 { base.clone() } else { format!("{base}-{}", part + 1) };
            while !used_names.insert(name.clone()) {
                name.push_str("-x");
            }
            let entries: Vec<RoleAssignmentSpec> = chunk
                .iter()
                .map(|a| RoleAssignmentSpec {
                    role: role_reference(estate, a),
                    scope: a.scope.clone(),
                    condition: a.condition.clone(),
                    condition_version: a.condition.as_ref().and(a.condition_version.clone()),
                    description: a.description.clone(),
                    expires_at: None,
                    active_for: None,
                })
                .collect();
            imported.imported += entries.len();
            let spec = DatabricksIdentityGrantSpec {
                identity: discovered.source.clone(),
                role_assignments: entries.clone(),
                deletion_policy: Default::default(),
                management_policy: ManagementPolicy::Observe,
                azure_credential_ref: None,
                expires_at: None,
                active_for: None,
                enforcement: Default::default(),
                justification: None,
            };
            let grant = json!({
                "apiVersion": "identity.dbx-operator.io/v1alpha1",
                "kind": "DatabricksIdentityGrant",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            });
            let mut text = format!(
                "# Imported by `dbx-identity-operator import`: the role assignments {} ({}) holds today.\n\
                 # Observe writes nothing to Azure; set managementPolicy: Enforce to manage them (existing\n\
                 # assignments are adopted, never re-created or deleted).\n",
                identity.label, identity.principal_id
            );
            if part == 0 {
                comment_block(
                    &mut text,
                    "Privileged assignments left out (decide, then add them here and allow them in a GrantPolicy with allowPrivilegedRoles: true):",
                    &left_out,
                );
            }
            text.push_str(&yaml(&grant));
            imported.grants.push(Manifest { file: format!("{name}.yaml"), yaml: text });
            policies.push_str(&policy_documents(
                &name,
                namespace,
                &discovered.policy_id.to_string(),
                &entries,
                part == 0,
                &left_out,
            ));
        }
    }
    imported.policies = Manifest { file: "grantpolicies.yaml".into(), yaml: policies };
    imported
}

/// GrantPolicies allowing exactly the grant's (role, scope) pairs for its identity: roles that
/// share the same scopes go in one policy (a policy allows every role at every scope it lists).
fn policy_documents(
    grant: &str,
    namespace: &str,
    identity: &str,
    entries: &[RoleAssignmentSpec],
    first: bool,
    left_out: &[String],
) -> String {
    let mut scopes_by_role: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in entries {
        scopes_by_role.entry(e.role.as_str()).or_default().insert(e.scope.as_str());
    }
    let mut roles_by_scopes: BTreeMap<BTreeSet<&str>, Vec<&str>> = BTreeMap::new();
    for (role, scopes) in scopes_by_role {
        roles_by_scopes.entry(scopes).or_default().push(role);
    }
    let mut out = String::new();
    let several = roles_by_scopes.len() > 1;
    for (i, (scopes, roles)) in roles_by_scopes.into_iter().enumerate() {
        let name = if several { format!("import-{grant}-{}", i + 1) } else { format!("import-{grant}") };
        let policy = json!({
            "apiVersion": "identity.dbx-operator.io/v1alpha1",
            "kind": "GrantPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "identities": [identity],
                "roles": roles,
                "scopes": scopes.into_iter().collect::<Vec<_>>(),
                "maxRoleAssignmentsPerGrant": entries.len().max(1),
            },
        });
        out.push_str("---\n");
        let _ = writeln!(out, "# Allows grant {namespace}/{grant} exactly what it imported.");
        if first && i == 0 {
            comment_block(&mut out, "Privileged, not allowed (allowPrivilegedRoles is false):", left_out);
        }
        out.push_str(&yaml(&policy));
    }
    out
}

/// Every manifest as one multi-document stream (stdout).
pub fn stream(imported: &Imported) -> String {
    let mut out = String::new();
    for grant in &imported.grants {
        out.push_str("---\n");
        out.push_str(&grant.yaml);
    }
    out.push_str(&imported.policies.yaml);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
    use crate::azure::ResourceId;
    use crate::azure::models::{Permission, RoleAssignment, RoleAssignmentProperties};
    use crate::controller::resolve::{Principal, ResolvedRole};
    use crate::policy::evaluate::{Governing, PolicyMode, Request, RoleFacts, Verdict, evaluate, selects};
    use crate::review::audit::{ClusterRecords, classify};
    use crate::review::discover::{DiscoveredIdentity, IdentityKind};

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const PRINCIPAL: &str = "25061450-61e9-5c58-9446-93716ad5974c";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
    const BLOB: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
    const CUSTOM_A: &str = "11111111-0000-4000-8000-000000000001";
    const CUSTOM_B: &str = "11111111-0000-4000-8000-000000000002";

    fn rg(name: &str) -> String {
        format!("/subscriptions/{SUB}/resourceGroups/{name}")
    }

    fn role(guid: &str, name: &str, actions: &[&str]) -> (String, Arc<ResolvedRole>) {
        let permissions =
            vec![Permission { actions: actions.iter().map(|a| a.to_string()).collect(), ..Permission::default() }];
        let role = ResolvedRole {
            role_definition_id: format!(
                "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
            ),
            guid: crate::azure::guid::parse_guid(guid).expect("guid"),
            role_name: name.into(),
            permissions,
        };
        (guid.into(), Arc::new(role))
    }

    fn assignment(n: usize, guid: &str, scope: &str) -> RoleAssignment {
        let name = format!("00000000-0000-4000-8000-{n:012}");
        RoleAssignment {
            id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name,
            properties: RoleAssignmentProperties {
                scope: Some(scope.into()),
                role_definition_id: format!(
                    "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
                ),
                principal_id: PRINCIPAL.into(),
                ..Default::default()
            },
        }
    }

    fn estate(assignments: Vec<RoleAssignment>) -> Estate {
        let connector =
            ResourceId::parse(&format!("{}/providers/Microsoft.Databricks/accessConnectors/ac-uc", rg("rg-analytics")))
                .expect("id");
        let roles: HashMap<String, Arc<ResolvedRole>> = [
            role(READER, "Reader", &["*/read"]),
            role(OWNER, "Owner", &["*"]),
            role(BLOB, "Storage Blob Data Reader", &["Microsoft.Storage/storageAccounts/blobServices/containers/read"]),
            // Two custom roles with one name: manifests must name them by GUID.
            role(CUSTOM_A, "Lake Auditor", &["*/read"]),
            role(CUSTOM_B, "Lake Auditor", &["*/read"]),
        ]
        .into_iter()
        .collect();
        let mut role_name_counts = HashMap::new();
        for r in roles.values() {
            *role_name_counts.entry(r.role_name.to_ascii_lowercase()).or_default() += 1;
        }
        Estate {
            subscriptions: vec![SUB.into()],
            identities: vec![DiscoveredIdentity {
                kind: IdentityKind::AccessConnectorSystemAssigned,
                source: crate::api::IdentitySource {
                    access_connector: Some(crate::api::AccessConnectorIdentity {
                        resource_id: connector.to_string(),
                        user_assigned_identity_id: None,
                    }),
                    ..Default::default()
                },
                policy_id: connector,
                principal: Principal {
                    principal_id: PRINCIPAL.into(),
                    principal_type: crate::api::PrincipalType::ServicePrincipal,
                    tenant_id: None,
                    identity_resource_id: None,
                },
                label: "ac-uc".into(),
                linked_by: Vec::new(),
            }],
            assignments,
            roles,
            role_name_counts,
            ..Estate::default()
        }
    }

    fn documents(text: &str) -> Vec<serde_json::Value> {
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect()
    }

    #[test]
    fn imported_grants_validate_and_their_policies_allow_exactly_them() {
        let estate = estate(vec![
            assignment(1, READER, &rg("rg-lake")),
            assignment(2, READER, &rg("rg-raw")),
            assignment(3, BLOB, &rg("rg-lake")),
            assignment(4, CUSTOM_A, &rg("rg-lake")),
            assignment(5, OWNER, &format!("/subscriptions/{SUB}")),
        ]);
        let report = classify(&estate, &ClusterRecords::default());
        let imported = manifests(&estate, &report, "data");
        assert_eq!((imported.imported, imported.left_out, imported.grants.len()), (4, 1, 1));
        let grant = &documents(&imported.grants[0].yaml)[0];
        let validated = validate_grant_spec_json(&grant["spec"]).expect("the operator accepts the grant");
        assert_eq!(grant["spec"]["managementPolicy"], "Observe");
        let roles: Vec<&str> = grant["spec"]["roleAssignments"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["role"].as_str())
            .collect();
        assert!(roles.contains(&CUSTOM_A), "an ambiguous name is written as the GUID: {roles:?}");
        assert!(!roles.contains(&"Owner"), "privileged left out: {roles:?}");
        assert!(imported.grants[0].yaml.contains("#   - Owner at /subscriptions/"), "{}", imported.grants[0].yaml);

        let policies: Vec<_> = documents(&imported.policies.yaml)
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    validate_policy_spec_json(&p["spec"]).expect("policy validates"),
                )
            })
            .collect();
        let labels = [("kubernetes.io/metadata.name".to_owned(), "data".to_owned())].into_iter().collect();
        assert!(policies.iter().all(|(_, p)| selects(&p.namespace_selector, &labels)));
        let governing: Vec<Governing<'_>> = policies.iter().map(|(name, policy)| Governing { name, policy }).collect();
        let judge = |guid: &str, scope: &str| {
            let r = &estate.roles[guid];
            let scope = ResourceId::parse(scope).expect("scope");
            let request = Request {
                identity: validated.identity.policy_resource_id().expect("id").to_string(),
                workspace_managed_identity: false,
                role: RoleFacts { guid: r.guid, name: &r.role_name, permissions: &r.permissions },
                scope: &scope,
                position: 0,
                remaining: None,
            };
            matches!(evaluate(&governing, PolicyMode::Require, &request), Verdict::Allowed { .. })
        };
        for (guid, scope) in
            [(READER, rg("rg-lake")), (READER, rg("rg-raw")), (BLOB, rg("rg-lake")), (CUSTOM_A, rg("rg-lake"))]
        {
            assert!(judge(guid, &scope), "imported {guid} at {scope} must be allowed");
        }
        // Reader is held at two groups, the blob role at one: the policies do not lend it the other.
        assert!(!judge(BLOB, &rg("rg-raw")), "a tuple that was not imported is allowed");
        assert!(!judge(OWNER, &format!("/subscriptions/{SUB}")), "privileged allowed");
    }

    #[test]
    fn grants_split_at_one_hundred_entries_and_names_are_valid() {
        let estate = estate((0..150).map(|n| assignment(n, READER, &rg(&format!("rg-{n}")))).collect());
        let report = classify(&estate, &ClusterRecords::default());
        let imported = manifests(&estate, &report, "data");
        let sizes: Vec<usize> = imported
            .grants
            .iter()
            .map(|g| documents(&g.yaml)[0]["spec"]["roleAssignments"].as_array().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, [100, 50]);
        assert_eq!(imported.grants[1].file, "ac-uc-2.yaml");
        assert_eq!(object_name("dbw-analytics-prod (dbmanagedidentity)"), "dbw-analytics-prod-dbmanagedidentity");
        assert_eq!(object_name("Ac_Shared (ID.Data)"), "ac-shared-id-data");
        assert_eq!(object_name("***"), "identity");
        assert!(object_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn what_a_grant_already_manages_is_not_imported_again() {
        let estate = estate(vec![assignment(1, READER, &rg("rg-lake")), assignment(2, BLOB, &rg("rg-lake"))]);
        let mut cluster = ClusterRecords::default();
        cluster.owners.insert(
            estate.assignments[0].id.to_ascii_lowercase(),
            crate::review::audit::Ownership::Managed { grant: "data/lake".into() },
        );
        let imported = manifests(&estate, &classify(&estate, &cluster), "data");
        assert_eq!(imported.imported, 1);
        assert!(!imported.grants[0].yaml.contains("role: Reader\n"), "{}", imported.grants[0].yaml);
    }
}

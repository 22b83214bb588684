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
                })
                .collect();
            imported.imported += entries.len();
            let spec = DatabricksIdentityGrantSpec {
                identity: discovered.source.clone(),
                role_assignments: entries.clone(),
                deletion_policy: Default::default(),
                management_policy: ManagementPolicy::Observe,
                azure_credential_ref: None,
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

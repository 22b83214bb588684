//! `audit`: who holds what. Each role assignment of each discovered identity, classified by who
//! manages it and flagged with what a reviewer should look at. Classification is pure
//! ([`classify`]); the flags reuse the GrantPolicy analysis ([`RoleFacts::is_privileged`],
//! [`has_data_actions`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::discover::{Estate, IdentityKind, Problem};
use crate::api::{AssignmentState, DatabricksIdentityGrant};
use crate::azure::models::RoleAssignment;
use crate::azure::permissions::has_data_actions;
use crate::azure::{ResourceId, RoleAssignmentId};
use crate::controller::plan::assignment_name;
use crate::policy::evaluate::RoleFacts;

/// Who manages an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Ownership {
    /// Created by a grant, which removes it when it no longer wants it.
    Managed { grant: String },
    /// Existed before a grant wanted it; the grant uses it and never deletes it.
    Adopted { grant: String },
    /// Named the way the operator names its assignments, but no grant read from a cluster
    /// claims it (no `--kubeconfig`, or its grant is gone).
    OperatorNamed,
    /// Made by hand, Terraform, a script: no grant knows it.
    Unmanaged,
}

impl Ownership {
    /// As the table shows it.
    pub fn label(&self) -> String {
        match self {
            Ownership::Managed { grant } => format!("managed by {grant}"),
            Ownership::Adopted { grant } => format!("adopted by {grant}"),
            Ownership::OperatorNamed => "operator-named".into(),
            Ownership::Unmanaged => "unmanaged".into(),
        }
    }
}

/// What a reviewer should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// Owner, User Access Administrator, or any role that can write role assignments (the
    /// GrantPolicy definition of privileged).
    Privileged,
    /// A data-plane role on a workspace's `dbmanagedidentity`, which is meant for the control
    /// plane (Access Connectors are for data access).
    DataRoleOnWorkspaceIdentity,
    /// Assigned at a subscription or management group.
    BroadScope,
    /// The identity it was made for is gone; the assignment points at a missing principal.
    Orphaned,
    /// The same role is also held at a parent scope, so this one adds nothing.
    Duplicate,
}

impl Flag {
    pub fn code(self) -> &'static str {
        match self {
            Flag::Privileged => "privileged",
            Flag::DataRoleOnWorkspaceIdentity => "data-role-on-workspace-identity",
            Flag::BroadScope => "broad-scope",
            Flag::Orphaned => "orphaned",
            Flag::Duplicate => "duplicate",
        }
    }
}

/// One assignment, classified.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditedAssignment {
    pub assignment_id: String,
    pub role: String,
    pub role_definition_id: String,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub ownership: Ownership,
    pub flags: Vec<Flag>,
    /// Privileged (also in `flags`), kept apart for `import`.
    #[serde(skip)]
    pub privileged: bool,
}

/// One identity and what it holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditedIdentity {
    /// `None`: the identity is gone (its assignments are orphaned).
    pub kind: Option<IdentityKind>,
    pub label: String,
    /// ARM id of the workspace, connector or user-assigned identity (empty when gone).
    pub resource_id: String,
    pub principal_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linked_by_workspaces: Vec<String>,
    pub assignments: Vec<AuditedAssignment>,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub subscriptions: usize,
    pub identities: usize,
    pub assignments: usize,
    pub managed: usize,
    pub adopted: usize,
    pub unmanaged: usize,
    pub flagged: usize,
    pub problems: usize,
}

/// The whole audit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    pub summary: Summary,
    pub identities: Vec<AuditedIdentity>,
    pub problems: Vec<Problem>,
}

/// What the cluster's grants say about assignments: id (lower case) → ownership; and the
/// principals grants resolved (lower case), with the grant.
#[derive(Debug, Default)]
pub struct ClusterRecords {
    pub owners: HashMap<String, Ownership>,
    pub principals: HashMap<String, String>,
    /// Assignments Azure PIM made for grants (`managedSchedules`), by tuple ([`tuple_key`]):
    /// PIM names them itself, so they are known by principal, role and scope.
    pub by_tuple: HashMap<String, Ownership>,
}

/// `scope|role GUID|principal`, normalised, for [`ClusterRecords::by_tuple`].
pub fn tuple_key(scope: &str, role_definition_id: &str, principal_id: &str) -> String {
    let scope =
        crate::azure::ResourceId::parse(scope).map(|s| s.normalized()).unwrap_or_else(|_| scope.to_ascii_lowercase());
    let role = role_definition_id.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
    format!("{scope}|{role}|{}", principal_id.to_ascii_lowercase())
}

impl ClusterRecords {
    /// From the grants' records (status, and a first creation's write-ahead annotation):
    /// `managedAssignments`/`creatingAssignments` are managed, entries `Adopted` name the
    /// assignment they use.
    pub fn from_grants(grants: &[DatabricksIdentityGrant]) -> Self {
        let mut records = ClusterRecords::default();
        for grant in grants {
            let key = crate::controller::grant_key(grant);
            let status = crate::controller::intent::recorded(grant);
            for id in status.managed_assignments.iter().chain(&status.creating_assignments) {
                records.owners.insert(id.to_ascii_lowercase(), Ownership::Managed { grant: key.clone() });
            }
            for entry in &status.role_assignments {
                if entry.state == AssignmentState::Adopted
                    && let Some(id) = &entry.assignment_id
                {
                    records.owners.entry(id.to_ascii_lowercase()).or_insert(Ownership::Adopted { grant: key.clone() });
                }
            }
            for s in &status.managed_schedules {
                records.by_tuple.insert(
                    tuple_key(&s.scope, &s.role_definition_id, &s.principal_id),
                    Ownership::Managed { grant: key.clone() },
                );
            }
            if let Some(p) = &status.principal {
                records.principals.insert(p.principal_id.to_ascii_lowercase(), key.clone());
            }
        }
        records
    }
}

/// Classifies every assignment of every discovered identity, and the orphaned ones (pure).
pub fn classify(estate: &Estate, cluster: &ClusterRecords) -> AuditReport {
    let live: HashSet<&str> = estate
        .identities
        .iter()
        .map(|i| i.principal.principal_id.as_str())
        .chain(estate.live_principals.iter().map(String::as_str))
        .collect();
    let mut by_principal: HashMap<String, Vec<&RoleAssignment>> = HashMap::new();
    for a in &estate.assignments {
        by_principal.entry(a.properties.principal_id.to_ascii_lowercase()).or_default().push(a);
    }
    let mut identities = Vec::new();
    for identity in &estate.identities {
        let held = by_principal.get(&identity.principal.principal_id).map(Vec::as_slice).unwrap_or_default();
        let workspace_mi = identity.kind == IdentityKind::WorkspaceManagedIdentity;
        identities.push(AuditedIdentity {
            kind: Some(identity.kind),
            label: identity.label.clone(),
            resource_id: identity.policy_id.to_string(),
            principal_id: identity.principal.principal_id.clone(),
            linked_by_workspaces: identity.linked_by.clone(),
            assignments: audited(estate, cluster, held, workspace_mi, false),
        });
    }
    // Orphans: assignments of principals no live identity has, known to have been Databricks
    // identities — one of their assignments named by the operator's scheme, or a grant in the
    // cluster resolved them.
    // (Hand-made assignments of a deleted identity look like any other principal's without
    // Microsoft Graph, which the operator does not call.)
    let mut orphans: BTreeMap<String, Vec<&RoleAssignment>> = BTreeMap::new();
    for (principal, held) in &by_principal {
        if live.contains(principal.as_str()) {
            continue;
        }
        // One assignment named by the operator shows the principal was a grant's identity: then
        // all its assignments are orphaned.
        if cluster.principals.contains_key(principal) || held.iter().any(|a| operator_named(a)) {
            orphans.insert(principal.clone(), held.clone());
        }
    }
    for (principal, held) in orphans {
        let label = match cluster.principals.get(&principal) {
            Some(grant) => format!("identity gone (was {grant}'s)"),
            None => "identity gone".to_owned(),
        };
        identities.push(AuditedIdentity {
            kind: None,
            label,
            resource_id: String::new(),
            principal_id: principal,
            linked_by_workspaces: Vec::new(),
            assignments: audited(estate, cluster, &held, false, true),
        });
    }
    let mut summary = Summary {
        subscriptions: estate.subscriptions.len(),
        identities: estate.identities.len(),
        problems: estate.problems.len(),
        ..Summary::default()
    };
    for a in identities.iter().flat_map(|i| &i.assignments) {
        summary.assignments += 1;
        match a.ownership {
            Ownership::Managed { .. } => summary.managed += 1,
            Ownership::Adopted { .. } => summary.adopted += 1,
            Ownership::OperatorNamed | Ownership::Unmanaged => summary.unmanaged += 1,
        }
        if !a.flags.is_empty() {
            summary.flagged += 1;
        }
    }
    AuditReport { summary, identities, problems: estate.problems.clone() }
}

/// Whether the assignment carries the name the operator gives (principal, role, scope).
fn operator_named(a: &RoleAssignment) -> bool {
    let (Some(guid), Some(scope)) = (
        super::discover::role_guid(&a.properties.role_definition_id).and_then(|g| crate::azure::guid::parse_guid(&g)),
        assignment_scope(a),
    ) else {
        return false;
    };
    assignment_name(&a.properties.principal_id, guid, &scope).eq_ignore_ascii_case(&a.name)
}

fn assignment_scope(a: &RoleAssignment) -> Option<ResourceId> {
    match &a.properties.scope {
        Some(scope) => ResourceId::parse(scope).ok(),
        None => RoleAssignmentId::parse(&a.id).map(|id| id.scope().clone()),
    }
}

/// Whether `parent`'s assignment reaches `child`: by id below a subscription; above one, by
/// the subscriptions whose lists held it as inherited.
fn covers(estate: &Estate, assignment: &RoleAssignment, parent: &ResourceId, child: &ResourceId) -> bool {
    match (parent.subscription_id(), child.subscription_id()) {
        (Some(_), _) => parent.contains(child),
        (None, Some(sub)) => estate
            .inherited_by
            .get(&assignment.id.to_ascii_lowercase())
            .is_some_and(|subs| subs.iter().any(|s| s.eq_ignore_ascii_case(sub))),
        (None, None) => parent.contains(child),
    }
}

fn audited(
    estate: &Estate,
    cluster: &ClusterRecords,
    held: &[&RoleAssignment],
    workspace_mi: bool,
    orphaned: bool,
) -> Vec<AuditedAssignment> {
    let scoped: Vec<(&RoleAssignment, Option<ResourceId>)> = held.iter().map(|a| (*a, assignment_scope(a))).collect();
    let mut out: Vec<AuditedAssignment> = scoped
        .iter()
        .map(|(a, scope)| {
            let role = estate.role_of(a);
            let facts = role.map(|r| RoleFacts { guid: r.guid, name: &r.role_name, permissions: &r.permissions });
            let privileged = facts.as_ref().is_some_and(RoleFacts::is_privileged);
            let mut flags = Vec::new();
            if privileged {
                flags.push(Flag::Privileged);
            }
            if workspace_mi && role.is_some_and(|r| has_data_actions(&r.permissions)) {
                flags.push(Flag::DataRoleOnWorkspaceIdentity);
            }
            if scope.as_ref().is_some_and(|s| s.sections().is_empty() && s.resource_group_name().is_none()) {
                flags.push(Flag::BroadScope);
            }
            if orphaned {
                flags.push(Flag::Orphaned);
            }
            let guid = super::discover::role_guid(&a.properties.role_definition_id);
            let duplicate = scoped.iter().any(|(other, other_scope)| {
                !std::ptr::eq(*other, *a)
                    && super::discover::role_guid(&other.properties.role_definition_id) == guid
                    && other.properties.condition.is_none()
                    && match (other_scope, scope) {
                        (Some(parent), Some(child)) => parent != child && covers(estate, other, parent, child),
                        _ => false,
                    }
            });
            if duplicate {
                flags.push(Flag::Duplicate);
            }
            let by_pim = || {
                let scope = a.properties.scope.as_deref().unwrap_or_default();
                cluster.by_tuple.get(&tuple_key(scope, &a.properties.role_definition_id, &a.properties.principal_id))
            };
            let ownership = cluster
                .owners
                .get(&a.id.to_ascii_lowercase())
                .or_else(by_pim)
                .cloned()
                .unwrap_or_else(|| if operator_named(a) { Ownership::OperatorNamed } else { Ownership::Unmanaged });
            AuditedAssignment {
                assignment_id: a.id.clone(),
                role: role
                    .map_or_else(|| format!("unknown role {}", guid.unwrap_or_default()), |r| r.role_name.clone()),
                role_definition_id: a.properties.role_definition_id.clone(),
                scope: scope.as_ref().map_or_else(|| a.properties.scope.clone().unwrap_or_default(), |s| s.to_string()),
                condition: a.properties.condition.clone(),
                condition_version: a.properties.condition_version.clone(),
                description: a.properties.description.clone(),
                ownership,
                flags,
                privileged,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.scope.to_ascii_lowercase(), &a.role).cmp(&(b.scope.to_ascii_lowercase(), &b.role)));
    out
}

impl AuditReport {
    /// The one-line summary.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        format!(
            "{} subscription(s), {} identities, {} role assignments: {} managed, {} adopted, {} unmanaged; {} flagged; {} problem(s)",
            s.subscriptions, s.identities, s.assignments, s.managed, s.adopted, s.unmanaged, s.flagged, s.problems
        )
    }

    /// A readable table, grouped by identity.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for identity in &self.identities {
            let kind = identity.kind.map_or("gone", IdentityKind::describe);
            let _ = writeln!(out, "{}  [{kind}]  principal {}", identity.label, identity.principal_id);
            if !identity.resource_id.is_empty() {
                let _ = writeln!(out, "  {}", identity.resource_id);
            }
            if !identity.linked_by_workspaces.is_empty() {
                let _ = writeln!(out, "  default connector of: {}", identity.linked_by_workspaces.join(", "));
            }
            if identity.assignments.is_empty() {
                let _ = writeln!(out, "  (no role assignments)");
            }
            let width = identity.assignments.iter().map(|a| a.role.len()).max().unwrap_or(0).max(4);
            let owner_width = identity.assignments.iter().map(|a| a.ownership.label().len()).max().unwrap_or(0);
            for a in &identity.assignments {
                let flags = a.flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(",");
                let condition = if a.condition.is_some() { " (with condition)" } else { "" };
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:<owner_width$}  {}{condition}{}",
                    a.role,
                    a.ownership.label(),
                    a.scope,
                    if flags.is_empty() { String::new() } else { format!("  ! {flags}") },
                );
            }
            out.push('\n');
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem: {}: {}", p.subject, p.message);
        }
        let _ = writeln!(out, "{}", self.summary_line());
        out
    }

    /// A markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Role assignments of Azure Databricks identities\n\n");
        let _ = writeln!(out, "{}\n", self.summary_line());
        for identity in &self.identities {
            let kind = identity.kind.map_or("gone", IdentityKind::describe);
            let _ = writeln!(out, "## {} ({kind})\n", identity.label);
            let _ = write!(out, "Principal `{}`", identity.principal_id);
            if !identity.resource_id.is_empty() {
                let _ = write!(out, ", resource `{}`", identity.resource_id);
            }
            out.push_str("\n\n");
            if identity.assignments.is_empty() {
                out.push_str("No role assignments.\n\n");
                continue;
            }
            out.push_str("| Role | Scope | Owner | Flags |\n|---|---|---|---|\n");
            for a in &identity.assignments {
                let flags = a.flags.iter().map(|f| f.code()).collect::<Vec<_>>().join(", ");
                let _ = writeln!(out, "| {} | `{}` | {} | {} |", a.role, a.scope, a.ownership.label(), flags);
            }
            out.push('\n');
        }
        if !self.problems.is_empty() {
            out.push_str("## Problems\n\n");
            for p in &self.problems {
                let _ = writeln!(out, "- {}: {}", p.subject, p.message);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::azure::models::{Permission, RoleAssignmentProperties};
    use crate::controller::resolve::ResolvedRole;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const GONE: &str = "99999999-0000-4000-8000-000000000009";

    fn assignment(name: &str, scope: &str, principal: &str, condition: Option<&str>) -> RoleAssignment {
        RoleAssignment {
            id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name: name.into(),
            properties: RoleAssignmentProperties {
                scope: Some(scope.into()),
                role_definition_id: format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
                principal_id: principal.into(),
                condition: condition.map(Into::into),
                ..Default::default()
            },
        }
    }

    fn estate(assignments: Vec<RoleAssignment>) -> Estate {
        let reader = ResolvedRole {
            role_definition_id: format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
            guid: crate::azure::guid::parse_guid(READER).expect("guid"),
            role_name: "Reader".into(),
            permissions: vec![Permission { actions: vec!["*/read".into()], ..Permission::default() }],
        };
        Estate {
            subscriptions: vec![SUB.into()],
            assignments,
            roles: [(READER.to_owned(), Arc::new(reader))].into_iter().collect(),
            ..Estate::default()
        }
    }

    #[test]
    fn broad_scopes_duplicates_and_orphans() {
        let mg = "/providers/Microsoft.Management/managementGroups/platform";
        let group = format!("/subscriptions/{SUB}/resourceGroups/rg-lake");
        let account = format!("{group}/providers/Microsoft.Storage/storageAccounts/st");
        let scope = ResourceId::parse(&account).expect("scope");
        let guid = crate::azure::guid::parse_guid(READER).expect("guid");
        let operator_named = assignment_name(GONE, guid, &scope);
        let mut estate = estate(vec![
            assignment("00000000-0000-4000-8000-000000000001", mg, GONE, None),
            // Below a condition-free Reader at the management group: adds nothing.
            assignment("00000000-0000-4000-8000-000000000002", &group, GONE, None),
            assignment(&operator_named, &account, GONE, None),
            // Someone else's principal, not known to be a Databricks identity: not reported.
            assignment("00000000-0000-4000-8000-000000000004", &account, "88888888-0000-4000-8000-000000000008", None),
        ]);
        // The subscription's list held the management group's assignment: it is inherited there.
        estate.inherited_by.insert(
            format!("{mg}/providers/Microsoft.Authorization/roleAssignments/00000000-0000-4000-8000-000000000001")
                .to_ascii_lowercase(),
            [SUB.to_owned()].into_iter().collect(),
        );
        let report = classify(&estate, &ClusterRecords::default());
        assert_eq!(report.identities.len(), 1, "{report:#?}");
        let gone = &report.identities[0];
        assert_eq!((gone.kind, gone.label.as_str()), (None, "identity gone"));
        assert_eq!(gone.assignments.len(), 3, "every assignment of an orphaned principal, once one is known");
        let flags = |scope: &str| {
            gone.assignments.iter().find(|a| a.scope.eq_ignore_ascii_case(scope)).map(|a| a.flags.clone()).expect(scope)
        };
        assert_eq!(flags(mg), [Flag::BroadScope, Flag::Orphaned]);
        assert_eq!(flags(&group), [Flag::Orphaned, Flag::Duplicate]);
        assert_eq!(flags(&account), [Flag::Orphaned, Flag::Duplicate]);
        let at_account = gone.assignments.iter().find(|a| a.scope == account).expect("account");
        assert_eq!(at_account.ownership, Ownership::OperatorNamed);
        assert_eq!(report.summary.flagged, 3);

        // A parent assignment with a condition grants less: the child is no duplicate.
        let estate_with_condition = super::tests::estate(vec![
            assignment("00000000-0000-4000-8000-000000000001", &group, GONE, Some("@Resource[x] StringEquals 'y'")),
            assignment(&operator_named, &account, GONE, None),
        ]);
        let cluster = ClusterRecords {
            principals: [(GONE.to_owned(), "data/lake".to_owned())].into_iter().collect(),
            ..ClusterRecords::default()
        };
        let report = classify(&estate_with_condition, &cluster);
        assert_eq!(report.identities[0].label, "identity gone (was data/lake's)");
        assert!(report.identities[0].assignments.iter().all(|a| !a.flags.contains(&Flag::Duplicate)));

        // An assignment Azure PIM made for a grant (named by Azure) is that grant's.
        let pim_made = assignment("00000000-0000-4000-8000-000000000009", &account, GONE, None);
        let cluster = ClusterRecords {
            by_tuple: [(
                tuple_key(&account, &pim_made.properties.role_definition_id, GONE),
                Ownership::Managed { grant: "data/vendor".into() },
            )]
            .into_iter()
            .collect(),
            principals: [(GONE.to_owned(), "data/vendor".to_owned())].into_iter().collect(),
            ..ClusterRecords::default()
        };
        let report = classify(&super::tests::estate(vec![pim_made]), &cluster);
        assert_eq!(report.identities[0].assignments[0].ownership, Ownership::Managed { grant: "data/vendor".into() });
    }
}

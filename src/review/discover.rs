//! Discovery for `audit` and `import`: every Azure Databricks workspace and Access Connector in
//! the subscriptions asked for, each identity the operator knows behind them, the role
//! assignments those principals hold, and the roles they name.
//!
//! Lists, not GETs: per subscription one paged list each of workspaces, Access Connectors,
//! user-assigned identities, role definitions and role assignments (the last without a filter:
//! every assignment at, above and below the subscription). An estate of 500 identities and 5000
//! assignments costs tens of reads instead of thousands (docs/benchmarks.md, `benches/audit.rs`).
//! Identities are derived from the listed bodies with the operator's own resolution
//! ([`crate::controller::resolve`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::Progress;
use crate::api::{AccessConnectorIdentity, IdentitySource, WorkspaceIdentity, WorkspaceIdentityKind};
use crate::azure::models::{AccessConnector, RoleAssignment, UserAssignedIdentity, Workspace};
use crate::azure::{ArmClient, ArmError, ResourceId};
use crate::controller::resolve::{
    Principal, ResolvedRole, linked_connector, managed_identity_id, principal_of_connector, principal_of_user_assigned,
    resolved,
};

/// What to discover.
#[derive(Debug, Clone, Default)]
pub struct EstateQuery {
    /// Subscription ids; empty: every subscription the credential can list.
    pub subscriptions: Vec<String>,
    /// Only identities in these resource groups (names; empty: all).
    pub resource_groups: Vec<String>,
}

/// Which identity of a workspace or connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum IdentityKind {
    /// A workspace's built-in `dbmanagedidentity`.
    WorkspaceManagedIdentity,
    /// An Access Connector's system-assigned identity.
    AccessConnectorSystemAssigned,
    /// A user-assigned identity an Access Connector carries.
    AccessConnectorUserAssigned,
}

impl IdentityKind {
    pub fn describe(self) -> &'static str {
        match self {
            IdentityKind::WorkspaceManagedIdentity => "workspace managed identity",
            IdentityKind::AccessConnectorSystemAssigned => "Access Connector, system-assigned",
            IdentityKind::AccessConnectorUserAssigned => "Access Connector, user-assigned",
        }
    }
}

/// One identity found.
#[derive(Debug, Clone)]
pub struct DiscoveredIdentity {
    pub kind: IdentityKind,
    /// How a grant names it (what `import` writes).
    pub source: IdentitySource,
    /// What GrantPolicy `identities` patterns are matched against.
    pub policy_id: ResourceId,
    pub principal: Principal,
    /// Short name for tables: the workspace or connector (and user-assigned identity).
    pub label: String,
    /// Workspaces that link this identity's connector as their default (`properties.accessConnector`).
    pub linked_by: Vec<String>,
}

/// Something that could not be read; the rest of the report stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// What it concerns (a subscription, a workspace …).
    pub subject: String,
    pub message: String,
}

/// Everything discovered.
#[derive(Debug, Default)]
pub struct Estate {
    /// Subscriptions read (at least in part).
    pub subscriptions: Vec<String>,
    pub identities: Vec<DiscoveredIdentity>,
    /// Every role assignment listed, once each (by id).
    pub assignments: Vec<RoleAssignment>,
    /// Role definitions by GUID (lower case).
    pub roles: HashMap<String, Arc<ResolvedRole>>,
    /// How many definitions carry each role name (lower case): a name is only used in
    /// manifests when exactly one does.
    pub role_name_counts: HashMap<String, usize>,
    /// Assignments above subscriptions (management groups, tenant root), by id (lower case):
    /// the subscriptions whose lists held them, i.e. those they are inherited by (their ids do
    /// not show the hierarchy).
    pub inherited_by: HashMap<String, std::collections::BTreeSet<String>>,
    /// Every principal a listed identity has, in or out of the resource-group filter (lower
    /// case): none of their assignments is orphaned.
    pub live_principals: std::collections::HashSet<String>,
    pub problems: Vec<Problem>,
}

impl Estate {
    /// The role an assignment names, when known.
    pub fn role_of(&self, assignment: &RoleAssignment) -> Option<&Arc<ResolvedRole>> {
        self.roles.get(&role_guid(&assignment.properties.role_definition_id)?)
    }
}

/// The lower-case GUID at the end of a roleDefinitionId.
pub fn role_guid(role_definition_id: &str) -> Option<String> {
    let last = role_definition_id.rsplit('/').next()?;
    crate::azure::guid::parse_guid(last).map(|g| g.to_string())
}

/// One subscription's lists.
struct Reading {
    subscription: String,
    workspaces: Result<Vec<Workspace>, ArmError>,
    connectors: Result<Vec<AccessConnector>, ArmError>,
    user_assigned: Result<Vec<UserAssignedIdentity>, ArmError>,
    definitions: Result<Vec<crate::azure::models::RoleDefinition>, ArmError>,
    assignments: Result<Vec<RoleAssignment>, ArmError>,
}

/// Subscriptions to read: those asked for, or every one the credential can list (`Disabled`
/// and `Deleted` ones skipped: ARM refuses reads there).
pub async fn subscriptions(arm: &ArmClient, query: &EstateQuery) -> Result<Vec<String>, String> {
    if !query.subscriptions.is_empty() {
        return Ok(query.subscriptions.iter().map(|s| s.to_ascii_lowercase()).collect());
    }
    let listed = arm.list_subscriptions().await.map_err(|e| {
        format!("cannot list the subscriptions this credential can read ({e}); name them with --subscription")
    })?;
    let usable: Vec<String> = listed
        .into_iter()
        .filter(|s| !matches!(s.state.as_str(), "Disabled" | "Deleted"))
        .map(|s| s.subscription_id.to_ascii_lowercase())
        .collect();
    if usable.is_empty() {
        return Err("this credential can read no enabled subscription; name one with --subscription".into());
    }
    Ok(usable)
}

/// Reads the estate. Each subscription's reads run concurrently through the operator's paced
/// pipeline; a subscription that cannot be read is a [`Problem`], the others are still read.
pub async fn discover(arm: &ArmClient, query: &EstateQuery, progress: &Progress) -> Result<Estate, String> {
    let subscriptions = subscriptions(arm, query).await?;
    let mut readings = Vec::new();
    for (i, subscription) in subscriptions.iter().enumerate() {
        progress.say(&format!("reading subscription {subscription} ({}/{})", i + 1, subscriptions.len()));
        readings.push(read_subscription(arm, subscription).await);
    }
    let mut estate = assemble(readings, &query.resource_groups);
    resolve_missing_roles(arm, &mut estate).await;
    progress.done(&format!(
        "read {} subscription(s): {} identities, {} role assignments",
        estate.subscriptions.len(),
        estate.identities.len(),
        estate.assignments.len()
    ));
    Ok(estate)
}

async fn read_subscription(arm: &ArmClient, subscription: &str) -> Reading {
    let sub = ResourceId::subscription(subscription);
    // Every workspace and connector of the subscription, even with a resource-group filter (it is
    // one list either way): an identity outside the filter is still alive, and must not make its
    // assignments look orphaned.
    let (workspaces, connectors, user_assigned, definitions, assignments) = tokio::join!(
        arm.list_workspaces(&sub),
        arm.list_access_connectors(&sub),
        arm.list_user_assigned_identities(&sub),
        arm.list_role_definitions(&sub),
        arm.list_role_assignments(&sub),
    );
    Reading { subscription: subscription.to_owned(), workspaces, connectors, user_assigned, definitions, assignments }
}

/// Puts the subscriptions' lists together (pure).
fn assemble(readings: Vec<Reading>, resource_groups: &[String]) -> Estate {
    let mut estate = Estate::default();
    let mut by_principal: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen_assignments = std::collections::HashSet::new();
    let mut user_assigned: HashMap<String, UserAssignedIdentity> = HashMap::new();
    let mut workspaces = Vec::new();
    let mut connectors = Vec::new();
    for reading in readings {
        let sub = reading.subscription.clone();
        let mut problem = |what: &str, e: &ArmError| {
            estate.problems.push(Problem { subject: format!("subscription {sub}"), message: format!("{what}: {e}") })
        };
        let mut any = false;
        match reading.workspaces {
            Ok(list) => {
                any = true;
                workspaces.extend(list);
            }
            Err(e) => problem("cannot list workspaces", &e),
        }
        match reading.connectors {
            Ok(list) => {
                any = true;
                connectors.extend(list);
            }
            Err(e) => problem("cannot list Access Connectors", &e),
        }
        match reading.user_assigned {
            Ok(list) => {
                for uai in list {
                    if let Ok(id) = ResourceId::parse(&uai.id) {
                        user_assigned.insert(id.normalized(), uai);
                    }
                }
            }
            Err(e) => problem("cannot list user-assigned identities", &e),
        }
        match reading.definitions {
            Ok(list) => {
                for def in list {
                    let name = def.properties.role_name.to_ascii_lowercase();
                    if let Some(role) = resolved(def) {
                        let guid = role.guid.to_string();
                        if !estate.roles.contains_key(&guid) {
                            *estate.role_name_counts.entry(name).or_default() += 1;
                            estate.roles.insert(guid, Arc::new(role));
                        }
                    }
                }
            }
            Err(e) => problem("cannot list role definitions", &e),
        }
        match reading.assignments {
            Ok(list) => {
                any = true;
                for a in list {
                    let key = a.id.to_ascii_lowercase();
                    let above = a.properties.scope.as_deref().and_then(|s| ResourceId::parse(s).ok());
                    if above.is_some_and(|s| s.subscription_id().is_none()) {
                        estate.inherited_by.entry(key.clone()).or_default().insert(reading.subscription.clone());
                    }
                    if seen_assignments.insert(key) {
                        estate.assignments.push(a);
                    }
                }
            }
            Err(e) => problem("cannot list role assignments", &e),
        }
        if any {
            estate.subscriptions.push(reading.subscription);
        }
    }
    for uai in user_assigned.values() {
        estate.live_principals.insert(uai.properties.principal_id.to_ascii_lowercase());
    }
    for identity in connectors.iter().filter_map(|ac| ac.identity.as_ref()) {
        let principals = identity.user_assigned_identities.values().filter_map(|u| u.principal_id.as_deref());
        for principal in identity.principal_id.as_deref().into_iter().chain(principals) {
            estate.live_principals.insert(principal.to_ascii_lowercase());
        }
    }
    let in_filter = |id: &ResourceId| {
        resource_groups.is_empty()
            || id.resource_group_name().is_some_and(|rg| resource_groups.iter().any(|f| f.eq_ignore_ascii_case(rg)))
    };
    let mut add = |estate: &mut Estate, identity: DiscoveredIdentity| {
        match by_principal.get(&identity.principal.principal_id) {
            // One principal behind two resources (a user-assigned identity on two connectors):
            // listed once, under the first.
            Some(&at) => estate.identities[at].linked_by.extend(identity.linked_by),
            None => {
                by_principal.insert(identity.principal.principal_id.clone(), estate.identities.len());
                estate.identities.push(identity);
            }
        }
    };
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    for ws in &workspaces {
        let Ok(id) = ResourceId::parse(&ws.id) else { continue };
        if !in_filter(&id) {
            continue;
        }
        if ws.properties.access_connector.is_some()
            && let Ok((connector, _)) = linked_connector(&id, ws)
        {
            links.entry(connector.normalized()).or_default().push(id.name().to_owned());
        }
        let found = managed_identity_id(&id, ws).and_then(|mi| match user_assigned.get(&mi.normalized()) {
            Some(uai) => Ok(principal_of_user_assigned(&mi, uai)),
            None => Err(crate::controller::resolve::ResolveError {
                reason: crate::api::Reason::NoManagedIdentity,
                message: format!("its dbmanagedidentity {mi} is not among the subscription's user-assigned identities"),
                retry_after: None,
            }),
        });
        match found {
            Ok(principal) => add(
                &mut estate,
                DiscoveredIdentity {
                    kind: IdentityKind::WorkspaceManagedIdentity,
                    source: IdentitySource {
                        workspace: Some(WorkspaceIdentity {
                            resource_id: id.to_string(),
                            source: WorkspaceIdentityKind::ManagedIdentity,
                        }),
                        ..IdentitySource::default()
                    },
                    policy_id: id.clone(),
                    principal,
                    label: format!("{} (dbmanagedidentity)", id.name()),
                    linked_by: Vec::new(),
                },
            ),
            Err(e) => estate.problems.push(Problem { subject: format!("workspace {id}"), message: e.message }),
        }
    }
    for ac in &connectors {
        let Ok(id) = ResourceId::parse(&ac.id) else { continue };
        if !in_filter(&id) {
            continue;
        }
        let linked_by = links.get(&id.normalized()).cloned().unwrap_or_default();
        let identity = ac.identity.as_ref();
        if identity.and_then(|i| i.principal_id.as_deref()).is_some_and(|p| !p.is_empty())
            && let Ok(principal) = principal_of_connector(&id, ac, None)
        {
            add(
                &mut estate,
                DiscoveredIdentity {
                    kind: IdentityKind::AccessConnectorSystemAssigned,
                    source: IdentitySource {
                        access_connector: Some(AccessConnectorIdentity {
                            resource_id: id.to_string(),
                            user_assigned_identity_id: None,
                        }),
                        ..IdentitySource::default()
                    },
                    policy_id: id.clone(),
                    principal,
                    label: id.name().to_owned(),
                    linked_by: linked_by.clone(),
                },
            );
        }
        for uai in identity.map(|i| i.user_assigned_identities.keys().collect::<Vec<_>>()).unwrap_or_default() {
            let Ok(uai_id) = ResourceId::parse(uai) else { continue };
            match principal_of_connector(&id, ac, Some(&uai_id)) {
                Ok(principal) => add(
                    &mut estate,
                    DiscoveredIdentity {
                        kind: IdentityKind::AccessConnectorUserAssigned,
                        source: IdentitySource {
                            access_connector: Some(AccessConnectorIdentity {
                                resource_id: id.to_string(),
                                user_assigned_identity_id: Some(uai_id.to_string()),
                            }),
                            ..IdentitySource::default()
                        },
                        policy_id: uai_id.clone(),
                        principal,
                        label: format!("{} ({})", id.name(), uai_id.name()),
                        linked_by: linked_by.clone(),
                    },
                ),
                Err(e) => {
                    estate.problems.push(Problem { subject: format!("access connector {id}"), message: e.message })
                }
            }
        }
    }
    estate.identities.sort_by(|a, b| (a.kind, &a.label).cmp(&(b.kind, &b.label)));
    estate
}

/// Roles assignments name that the subscription lists did not hold (a management group's
/// custom role, an unreadable list): one GET each.
async fn resolve_missing_roles(arm: &ArmClient, estate: &mut Estate) {
    // One GET per GUID: the same role is named from a subscription and a management group alike.
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    for a in estate.assignments.iter().filter(|a| estate.role_of(a).is_none()) {
        let id = &a.properties.role_definition_id;
        missing.entry(role_guid(id).unwrap_or_else(|| id.to_ascii_lowercase())).or_insert_with(|| id.clone());
    }
    for id in missing.into_values() {
        let Ok(parsed) = ResourceId::parse(&id) else { continue };
        match arm.get_role_definition(&parsed).await {
            Ok(def) => {
                if let Some(role) = resolved(def) {
                    estate.roles.insert(role.guid.to_string(), Arc::new(role));
                }
            }
            Err(e) => {
                estate.problems.push(Problem { subject: format!("role definition {id}"), message: e.to_string() })
            }
        }
    }
}

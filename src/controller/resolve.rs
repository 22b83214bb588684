//! Resolution through ARM, cached: a grant's identity to an Entra principal, a role reference to
//! a role definition at a scope, and the role assignments at a scope (one list per scope per
//! resync, shared by every grant).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::api::validation::ValidatedIdentity;
use crate::api::{PrincipalType, Reason};
use crate::azure::models::{
    AccessConnector, Permission, RoleAssignment, RoleDefinition, UserAssignedIdentity, Workspace,
};
use crate::azure::role_ref::ROLE_DEFINITION_TYPE;
use crate::azure::{ArmClient, ArmError, ResourceId, RoleRef};

/// The Entra principal behind a grant's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub principal_id: String,
    pub principal_type: PrincipalType,
    pub tenant_id: Option<String>,
    /// The managed identity or connector it belongs to.
    pub identity_resource_id: Option<String>,
}

/// Why an identity or a role did not resolve: the reason (which says whether retrying helps)
/// and a message naming what was looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ResolveError {
    pub reason: Reason,
    pub message: String,
    /// How long Azure asked to wait, when it said.
    pub retry_after: Option<Duration>,
}

impl ResolveError {
    /// An ARM failure looking up `what`: a 404 is `not_found`, the rest as ARM's error says.
    fn from_arm(not_found: Reason, what: &str, e: &ArmError) -> Self {
        let reason = match e {
            ArmError::NotFound { .. } => not_found,
            ArmError::AuthorizationFailed { .. } => Reason::AuthorizationFailed,
            e if e.is_retryable() => Reason::AzureUnavailable,
            _ => Reason::AzureError,
        };
        ResolveError { reason, message: format!("{what}: {e}"), retry_after: e.retry_after() }
    }

    /// Azure answered, and what was looked for is not there.
    fn missing(reason: Reason, message: String) -> Self {
        ResolveError { reason, message, retry_after: None }
    }

    /// Retrying may help (throttling, outages), unlike a missing workspace.
    pub fn retryable(&self) -> bool {
        self.reason.retryable()
    }
}

/// A resolved role.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRole {
    pub role_definition_id: String,
    pub guid: Uuid,
    pub role_name: String,
    pub permissions: Vec<Permission>,
}

struct Entry<T> {
    at: Instant,
    value: T,
}

/// TTL caches shared by all reconciles.
pub struct Resolver {
    ttl: Duration,
    identities: Mutex<HashMap<String, Entry<Principal>>>,
    roles: Mutex<HashMap<String, Entry<Arc<ResolvedRole>>>>,
    /// One copy per role definition: the same built-in role resolved at 500 scopes shares it.
    definitions: Mutex<HashMap<String, std::sync::Weak<ResolvedRole>>>,
    /// Lookups on their way, by cache key: grants asking for the same identity or role at once
    /// wait for the one lookup instead of each reading Azure (a restart reconciles 16 grants at
    /// a time, many sharing identities and roles).
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whether a cache entry read at `at` may still answer at `now`: within `ttl`, or — while the
/// provider that would read it again has spent its budget (`busy_since`, asked only past `ttl`) —
/// when it was still fresh as that spell began. A cold start under a provider's limit outlasts
/// any TTL; reading again then costs a write its slot, for an answer our own writes cannot have
/// changed (they update the caches). What others change meanwhile is found by the scope
/// refresher, at its reduced share, or once the spell ends.
pub fn still_usable(at: Instant, now: Instant, ttl: Duration, busy_since: impl FnOnce() -> Option<Instant>) -> bool {
    now.saturating_duration_since(at) < ttl || busy_since().is_some_and(|since| at + ttl > since)
}

fn get_fresh<T: Clone>(
    map: &Mutex<HashMap<String, Entry<T>>>,
    key: &str,
    ttl: Duration,
    busy_since: impl FnOnce() -> Option<Instant>,
) -> Option<T> {
    let (at, value) = {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(key)?;
        (entry.at, entry.value.clone())
    };
    still_usable(at, Instant::now(), ttl, busy_since).then_some(value)
}

fn put<T>(map: &Mutex<HashMap<String, Entry<T>>>, key: String, value: T) {
    map.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Entry { at: Instant::now(), value });
}

impl Resolver {
    pub fn new(ttl: Duration) -> Self {
        Resolver {
            ttl,
            identities: Mutex::default(),
            roles: Mutex::default(),
            definitions: Mutex::default(),
            in_flight: Mutex::default(),
        }
    }

    /// The gate of one lookup: held while it reads Azure.
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    /// Drops a gate nobody else holds or waits for.
    fn release(&self, key: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // This one and the map's: nobody else has it.
        if Arc::strong_count(&gate) <= 2 {
            in_flight.remove(key);
        }
    }

    /// Forgets a cached identity, for every credential (e.g. after PrincipalNotFound for a
    /// deleted identity).
    pub fn forget_identity(&self, identity: &ValidatedIdentity) {
        let prefix = format!("{}@", identity_key(identity));
        self.identities.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| !k.starts_with(&prefix));
    }

    /// Forgets every cached lookup that resolved to this role definition (e.g. after Azure
    /// answered a write with RoleDefinitionDoesNotExist): the next reconcile looks it up again
    /// and reports RoleNotFound through `RolesResolved`, instead of writing with it until the
    /// cache expires.
    pub fn forget_role_definition(&self, role_definition_id: &str) {
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| !e.value.role_definition_id.eq_ignore_ascii_case(role_definition_id));
    }

    /// Cached per credential (`arm`'s): a grant with its own credential never gets an answer
    /// only the operator's identity (or another grant's) could read.
    pub async fn principal(&self, arm: &ArmClient, identity: &ValidatedIdentity) -> Result<Principal, ResolveError> {
        let key = format!("{}@{}", identity_key(identity), arm.credential_key());
        if let Some(p) = get_fresh(&self.identities, &key, self.ttl, || None) {
            return Ok(p);
        }
        let gate = self.gate(&key);
        let resolved = {
            let _one_lookup = gate.lock().await;
            match get_fresh(&self.identities, &key, self.ttl, || None) {
                Some(p) => Ok(p),
                None => {
                    resolve_identity(arm, identity).await.inspect(|p| put(&self.identities, key.clone(), p.clone()))
                }
            }
        };
        self.release(&key, gate);
        resolved
    }

    pub async fn role(
        &self,
        arm: &ArmClient,
        role: &RoleRef,
        scope: &ResourceId,
    ) -> Result<Arc<ResolvedRole>, ResolveError> {
        // Built-in GUIDs are global; names and custom roles are looked up where they are used.
        let key = match role {
            RoleRef::Name(name) => format!("name|{}|{}", name.to_ascii_lowercase(), scope.normalized()),
            other => format!(
                "guid|{}|{}",
                other.guid().unwrap_or_default(),
                scope.subscription_id().unwrap_or("tenant").to_ascii_lowercase()
            ),
        } + "@"
            + arm.credential_key();
        let busy_since = || arm.authorization_busy_since(scope);
        if let Some(r) = get_fresh(&self.roles, &key, self.ttl, busy_since) {
            return Ok(r);
        }
        let gate = self.gate(&key);
        let resolved = {
            let _one_lookup = gate.lock().await;
            match get_fresh(&self.roles, &key, self.ttl, busy_since) {
                Some(r) => Ok(r),
                None => resolve_role(arm, role, scope).await.map(|r| {
                    let r = self.shared(r);
                    put(&self.roles, key.clone(), r.clone());
                    r
                }),
            }
        };
        self.release(&key, gate);
        resolved
    }

    /// The cached copy of an identical definition, or this one (then cached).
    fn shared(&self, resolved: ResolvedRole) -> Arc<ResolvedRole> {
        let mut definitions = self.definitions.lock().unwrap_or_else(|p| p.into_inner());
        let id = resolved.role_definition_id.to_ascii_lowercase();
        if let Some(existing) = definitions.get(&id).and_then(std::sync::Weak::upgrade)
            && *existing == resolved
        {
            return existing;
        }
        if definitions.len() > 1024 {
            definitions.retain(|_, d| d.strong_count() > 0);
        }
        let resolved = Arc::new(resolved);
        definitions.insert(id, Arc::downgrade(&resolved));
        resolved
    }
}

fn identity_key(identity: &ValidatedIdentity) -> String {
    match identity {
        ValidatedIdentity::WorkspaceManagedIdentity { workspace } => format!("ws-mi|{}", workspace.normalized()),
        ValidatedIdentity::WorkspaceAccessConnector { workspace } => format!("ws-ac|{}", workspace.normalized()),
        ValidatedIdentity::AccessConnector { connector, user_assigned_identity } => format!(
            "ac|{}|{}",
            connector.normalized(),
            user_assigned_identity.as_ref().map(ResourceId::normalized).unwrap_or_default()
        ),
        ValidatedIdentity::Principal { principal_id, .. } => format!("p|{principal_id}"),
    }
}

async fn resolve_identity(arm: &ArmClient, identity: &ValidatedIdentity) -> Result<Principal, ResolveError> {
    match identity {
        ValidatedIdentity::Principal { principal_id, principal_type } => Ok(Principal {
            principal_id: principal_id.to_string(),
            principal_type: *principal_type,
            tenant_id: None,
            identity_resource_id: None,
        }),
        ValidatedIdentity::WorkspaceManagedIdentity { workspace } => {
            let ws = arm.get_workspace(workspace).await.map_err(|e| {
                ResolveError::from_arm(Reason::WorkspaceNotFound, &format!("workspace {workspace}"), &e)
            })?;
            let id = managed_identity_id(workspace, &ws)?;
            let uai = arm.get_user_assigned_identity(&id).await.map_err(|e| {
                ResolveError::from_arm(
                    Reason::NoManagedIdentity,
                    &format!("dbmanagedidentity of workspace {workspace} ({id})"),
                    &e,
                )
            })?;
            Ok(principal_of_user_assigned(&id, &uai))
        }
        ValidatedIdentity::WorkspaceAccessConnector { workspace } => {
            let ws = arm.get_workspace(workspace).await.map_err(|e| {
                ResolveError::from_arm(Reason::WorkspaceNotFound, &format!("workspace {workspace}"), &e)
            })?;
            let (connector, user_assigned) = linked_connector(workspace, &ws)?;
            connector_principal(arm, &connector, user_assigned.as_ref()).await
        }
        ValidatedIdentity::AccessConnector { connector, user_assigned_identity } => {
            connector_principal(arm, connector, user_assigned_identity.as_ref()).await
        }
    }
}

/// The ARM id of a workspace's built-in `dbmanagedidentity`, in its managed resource group.
/// Pure: `resolve_identity` and the read-only commands (`audit`, `import`, `plan`) share it.
pub fn managed_identity_id(workspace: &ResourceId, ws: &Workspace) -> Result<ResourceId, ResolveError> {
    let managed_rg = ResourceId::parse(&ws.properties.managed_resource_group_id).map_err(|e| {
        ResolveError::missing(
            Reason::NoManagedIdentity,
            format!(
                "workspace {workspace} reports managed resource group '{}': {e}",
                ws.properties.managed_resource_group_id
            ),
        )
    })?;
    Ok(managed_rg.with_provider_resource("Microsoft.ManagedIdentity", "userAssignedIdentities", DBMANAGEDIDENTITY))
}

/// Name of the user-assigned identity Azure Databricks creates in each workspace's managed
/// resource group.
pub const DBMANAGEDIDENTITY: &str = "dbmanagedidentity";

/// The principal of a user-assigned identity (`id`), from its GET or list body.
pub fn principal_of_user_assigned(id: &ResourceId, uai: &UserAssignedIdentity) -> Principal {
    Principal {
        principal_id: uai.properties.principal_id.to_ascii_lowercase(),
        principal_type: PrincipalType::ServicePrincipal,
        tenant_id: Some(uai.properties.tenant_id.clone()),
        identity_resource_id: Some(id.to_string()),
    }
}

/// The Access Connector a workspace links (`properties.accessConnector`), and the
/// user-assigned identity it names when the link is `UserAssigned`.
pub fn linked_connector(
    workspace: &ResourceId,
    ws: &Workspace,
) -> Result<(ResourceId, Option<ResourceId>), ResolveError> {
    let Some(link) = &ws.properties.access_connector else {
        return Err(ResolveError::missing(
            Reason::NoLinkedAccessConnector,
            format!("workspace {workspace} links no Access Connector (properties.accessConnector)"),
        ));
    };
    let connector = ResourceId::parse(&link.id).map_err(|e| {
        ResolveError::missing(Reason::AccessConnectorNotFound, format!("workspace links '{}': {e}", link.id))
    })?;
    let user_assigned = match link
        .user_assigned_identity_id
        .as_deref()
        .filter(|_| link.identity_type.eq_ignore_ascii_case("UserAssigned"))
    {
        Some(uai) => Some(ResourceId::parse(uai).map_err(|e| {
            ResolveError::missing(
                Reason::AccessConnectorHasNoIdentity,
                format!("workspace names user-assigned identity '{uai}': {e}"),
            )
        })?),
        None => None,
    };
    Ok((connector, user_assigned))
}

async fn connector_principal(
    arm: &ArmClient,
    connector: &ResourceId,
    user_assigned: Option<&ResourceId>,
) -> Result<Principal, ResolveError> {
    let ac = arm.get_access_connector(connector).await.map_err(|e| {
        ResolveError::from_arm(Reason::AccessConnectorNotFound, &format!("access connector {connector}"), &e)
    })?;
    principal_of_connector(connector, &ac, user_assigned)
}

/// The principal of an Access Connector's system-assigned identity, or of the user-assigned
/// identity `user_assigned` it carries, from the connector's GET or list body.
pub fn principal_of_connector(
    connector: &ResourceId,
    ac: &AccessConnector,
    user_assigned: Option<&ResourceId>,
) -> Result<Principal, ResolveError> {
    let identity = ac.identity.as_ref().ok_or_else(|| {
        ResolveError::missing(
            Reason::AccessConnectorHasNoIdentity,
            format!("access connector {connector} has no managed identity"),
        )
    })?;
    let (principal, resource) = match user_assigned {
        Some(uai) => {
            let entry = identity
                .user_assigned_identities
                .iter()
                .find(|(id, _)| ResourceId::parse(id).is_ok_and(|id| id == *uai));
            let Some((_, entry)) = entry else {
                return Err(ResolveError::missing(
                    Reason::UserAssignedIdentityNotAttached,
                    format!("access connector {connector} does not carry user-assigned identity {uai}"),
                ));
            };
            (entry.principal_id.clone(), uai.to_string())
        }
        None => (identity.principal_id.clone(), connector.to_string()),
    };
    let principal = principal.filter(|p| !p.is_empty()).ok_or_else(|| {
        ResolveError::missing(
            Reason::AccessConnectorHasNoIdentity,
            format!(
                "access connector {connector} reports no principalId for {}",
                user_assigned.map_or("its system-assigned identity".to_owned(), |u| u.to_string())
            ),
        )
    })?;
    Ok(Principal {
        principal_id: principal.to_ascii_lowercase(),
        principal_type: PrincipalType::ServicePrincipal,
        tenant_id: identity.tenant_id.clone(),
        identity_resource_id: Some(resource),
    })
}

fn role_error(role: &RoleRef, e: &ArmError) -> ResolveError {
    let mut error = ResolveError::from_arm(Reason::RoleNotFound, &format!("role '{role}'"), e);
    if matches!(e, ArmError::RoleDefinitionDoesNotExist { .. }) {
        error.reason = Reason::RoleNotFound;
    }
    error
}

/// A role definition as the resolver keeps it (`None` when its name is not a GUID).
pub fn resolved(def: RoleDefinition) -> Option<ResolvedRole> {
    let guid = crate::azure::guid::parse_guid(&def.name)?;
    Some(ResolvedRole {
        role_definition_id: def.id,
        guid,
        role_name: def.properties.role_name,
        permissions: def.properties.permissions,
    })
}

async fn resolve_role(arm: &ArmClient, role: &RoleRef, scope: &ResourceId) -> Result<ResolvedRole, ResolveError> {
    let not_found = |detail: String| ResolveError::missing(Reason::RoleNotFound, format!("role '{role}' {detail}"));
    match role {
        RoleRef::Name(name) => {
            let found = arm.find_role_definitions(scope, name).await.map_err(|e| match e {
                // Roles are looked up by name at the scope: a 404 there means the scope is gone.
                ArmError::NotFound { .. } => ResolveError::missing(
                    Reason::ScopeNotFound,
                    format!("scope {scope} does not exist (looking up role '{role}' there): {e}"),
                ),
                e => role_error(role, &e),
            })?;
            match found.len() {
                0 => Err(not_found(format!("does not exist at scope {scope}"))),
                1 => found
                    .into_iter()
                    .next()
                    .and_then(resolved)
                    .ok_or_else(|| not_found("came back without a GUID".into())),
                n => Err(ResolveError::missing(
                    Reason::AmbiguousRole,
                    format!("{n} role definitions are named '{name}' at {scope}; name the role by GUID"),
                )),
            }
        }
        RoleRef::Guid(guid) => {
            let base = match scope.subscription_id() {
                Some(sub) => ResourceId::subscription(sub),
                None => ResourceId::parse(&format!(
                    "/providers/Microsoft.Management/managementGroups/{}",
                    scope.management_group().unwrap_or_default()
                ))
                .map_err(|e| not_found(e.to_string()))?,
            };
            let id = base.with_provider_resource("Microsoft.Authorization", "roleDefinitions", &guid.to_string());
            let def = arm.get_role_definition(&id).await.map_err(|e| role_error(role, &e))?;
            resolved(def).ok_or_else(|| not_found("came back without a GUID".into()))
        }
        RoleRef::DefinitionId { id, .. } => {
            debug_assert!(id.is_type(ROLE_DEFINITION_TYPE));
            let def = arm.get_role_definition(id).await.map_err(|e| role_error(role, &e))?;
            resolved(def).ok_or_else(|| not_found("came back without a GUID".into()))
        }
    }
}

/// A scope's cached list, plus our own recent writes: ARM's lists lag behind writes for a
/// moment, and a fresh list missing our own new assignment is not drift.
struct ScopeList {
    at: Instant,
    /// The scope as Azure spells it in this list's entries.
    scope: String,
    /// Compacted (see [`compact`]).
    assignments: Vec<RoleAssignment>,
    own_writes: HashMap<String, (Instant, RoleAssignment)>,
}

/// The assignments of an `atScope()` list made at exactly `scope` (the list also holds every
/// assignment above it; plans compare exact scopes only).
pub fn at_exactly(scope: &ResourceId, listed: Vec<RoleAssignment>) -> Vec<RoleAssignment> {
    listed
        .into_iter()
        .filter(|a| a.properties.scope.as_deref().and_then(|s| ResourceId::parse(s).ok()).is_some_and(|s| s == *scope))
        .collect()
}

/// One scope's cached list; the async lock makes concurrent grants wait for a single read.
type ScopeSlot = Arc<tokio::sync::Mutex<Option<ScopeList>>>;

/// How long our own PUT is assumed to be on its way into list results.
const OWN_WRITE_GRACE: Duration = Duration::from_secs(60);

/// What a list compares by: everything a grant's plan looks at (every entry has the list's scope),
/// so an out-of-band edit of any of it wakes the grants at the next refresh.
fn fingerprint(list: &[RoleAssignment]) -> std::collections::BTreeSet<String> {
    list.iter()
        .map(|a| {
            let p = &a.properties;
            // Debug-quoted free text: a `|` inside a condition or description cannot make two
            // different assignments print alike.
            format!(
                "{}|{}|{}|{:?}|{:?}|{:?}",
                a.name.to_ascii_lowercase(),
                p.role_definition_id.to_ascii_lowercase(),
                p.principal_id.to_ascii_lowercase(),
                p.condition,
                p.condition_version,
                p.description
            )
        })
        .collect()
}

fn id_at(scope: &str, name: &str) -> String {
    crate::azure::RoleAssignmentId::format(scope, name)
}

/// A cached entry without its `id` and `properties.scope` when those are just the list's scope
/// (as they almost always are): two long strings per assignment, megabytes at 9000 assignments.
/// Lossless: anything spelled otherwise is kept. [`expand`] restores them.
fn compact(scope: &str, mut a: RoleAssignment) -> RoleAssignment {
    if a.properties.scope.as_deref() == Some(scope) {
        a.properties.scope = None;
        if a.id == id_at(scope, &a.name) {
            a.id = String::new();
        }
    }
    a
}

fn expand(scope: &str, a: &RoleAssignment) -> RoleAssignment {
    let mut a = a.clone();
    if a.properties.scope.is_none() {
        if a.id.is_empty() {
            a.id = id_at(scope, &a.name);
        }
        a.properties.scope = Some(scope.to_owned());
    }
    a
}

/// Role assignments per scope, shared by every grant. The controller's scope refresher lists
/// each scope in use once per resync interval ([`ScopeAssignments::due`],
/// [`ScopeAssignments::refresh`]); grants read the cache and list only when it is older than
/// `ttl` (the refresher fell behind or cannot read the scope) — or, while the provider's own
/// limit is spent, older ([`still_usable`]). Our own writes update the cache.
pub struct ScopeAssignments {
    ttl: Duration,
    scopes: Mutex<HashMap<String, ScopeEntry>>,
}

struct ScopeEntry {
    scope: ResourceId,
    /// Last time a grant read it.
    used: Instant,
    /// Last time the refresher listed it (successfully or not).
    refreshed: Option<Instant>,
    slot: ScopeSlot,
}

impl ScopeAssignments {
    pub fn new(ttl: Duration) -> Self {
        ScopeAssignments { ttl, scopes: Mutex::default() }
    }

    fn slot(&self, scope: &ResourceId) -> ScopeSlot {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = scopes.entry(scope.normalized()).or_insert_with(|| ScopeEntry {
            scope: scope.clone(),
            used: Instant::now(),
            refreshed: None,
            slot: ScopeSlot::default(),
        });
        entry.used = Instant::now();
        entry.slot.clone()
    }

    /// Lists `scope`. Our own recent writes the list does not show are checked one by one with a
    /// GET (consistent, unlike lists): still there means the list lags, gone means drift. While
    /// the provider's limit is spent they are taken as lagging unchecked (each GET would cost a
    /// write its slot); a list after [`OWN_WRITE_GRACE`] settles them.
    async fn read(
        arm: &ArmClient,
        scope: &ResourceId,
        cached: &Option<ScopeList>,
    ) -> Result<(Vec<RoleAssignment>, Vec<String>), ArmError> {
        let check_own_writes = arm.authorization_busy(scope).is_none();
        // ARM's atScope() list also holds every assignment above the scope (its resource group's,
        // the subscription's), repeated in the list of each scope below. Plans compare exact
        // scopes only, so only those are kept: at 5000 grants the repeats were megabytes.
        let fresh = at_exactly(scope, arm.list_role_assignments_at_scope(scope).await?);
        let mut lagging = Vec::new();
        for (name, (at, _)) in cached.iter().flat_map(|c| &c.own_writes) {
            if at.elapsed() >= OWN_WRITE_GRACE || fresh.iter().any(|a| a.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            if !check_own_writes {
                lagging.push(name.clone());
                continue;
            }
            match arm.get_role_assignment(scope, name).await {
                Err(ArmError::NotFound { .. }) => {}
                Ok(_) | Err(_) => lagging.push(name.clone()),
            }
        }
        Ok((fresh, lagging))
    }

    /// Stores a fresh list plus our own writes it lags behind. Returns whether it differs from
    /// what was cached.
    fn store(
        slot: &mut Option<ScopeList>,
        listed: &ResourceId,
        fresh: Vec<RoleAssignment>,
        lagging: &[String],
    ) -> bool {
        let now = Instant::now();
        let (previous, mut own) = slot.take().map(|s| (s.assignments, s.own_writes)).unwrap_or_default();
        own.retain(|name, (at, _)| {
            now.duration_since(*at) < OWN_WRITE_GRACE
                && (lagging.contains(name) || fresh.iter().any(|a| a.name.eq_ignore_ascii_case(name)))
        });
        let scope = fresh.first().and_then(|a| a.properties.scope.clone()).unwrap_or_else(|| listed.to_string());
        let mut assignments: Vec<RoleAssignment> = fresh.into_iter().map(|a| compact(&scope, a)).collect();
        for name in lagging {
            if let Some((_, assignment)) = own.get(name) {
                assignments.push(compact(&scope, assignment.clone()));
            }
        }
        assignments.shrink_to_fit();
        let changed = fingerprint(&previous) != fingerprint(&assignments);
        *slot = Some(ScopeList { at: now, scope, assignments, own_writes: own });
        changed
    }

    fn expanded(list: &ScopeList) -> Vec<RoleAssignment> {
        list.assignments.iter().map(|a| expand(&list.scope, a)).collect()
    }

    /// Assignments at exactly `scope`; at most one ARM list per scope per TTL, even when many
    /// grants ask at once.
    ///
    /// Only the operator's identity shares this cache: a grant with its own credential lists the
    /// scope with that credential each time, so it sees exactly what that credential may read.
    pub async fn list(&self, arm: &ArmClient, scope: &ResourceId) -> Result<Vec<RoleAssignment>, ArmError> {
        if !arm.is_operator() {
            return Ok(at_exactly(scope, arm.list_role_assignments_at_scope(scope).await?));
        }
        let slot = self.slot(scope);
        let mut guard = slot.lock().await;
        // While Microsoft.Authorization's own limit is spent, a list fresh when that began is
        // used rather than a write's slot; the scope refresher still checks, at its share.
        let usable =
            |e: &&ScopeList| still_usable(e.at, Instant::now(), self.ttl, || arm.authorization_busy_since(scope));
        if let Some(entry) = guard.as_ref().filter(usable) {
            return Ok(Self::expanded(entry));
        }
        let (fresh, lagging) = Self::read(arm, scope, &guard).await?;
        Self::store(&mut guard, scope, fresh, &lagging);
        Ok(guard.as_ref().map(Self::expanded).unwrap_or_default())
    }

    /// Scopes in use (a grant read them within `in_use_for`) whose list is at least `period`
    /// old, oldest first. `in_use_for` must span the grants' own rhythm (two resyncs): with a
    /// drift check shorter than the resync, a scope is still in use between two reconciles.
    pub fn due(&self, period: Duration, in_use_for: Duration) -> Vec<ResourceId> {
        let now = Instant::now();
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.retain(|_, e| now.duration_since(e.used) < in_use_for);
        let mut due: Vec<(Duration, ResourceId)> = scopes
            .values()
            .filter_map(|e| {
                // A scope the refresher could not read is left to the grants for a period.
                if e.refreshed.is_some_and(|at| now.duration_since(at) < period) {
                    return None;
                }
                let age = e.slot.try_lock().ok()?.as_ref().map_or(Duration::MAX, |l| now.duration_since(l.at));
                (age >= period).then(|| (age, e.scope.clone()))
            })
            .collect();
        due.sort_by_key(|d| std::cmp::Reverse(d.0));
        due.into_iter().map(|(_, scope)| scope).collect()
    }

    /// Lists `scope` again; `Ok(true)` when Azure no longer matches the cache (drift, someone
    /// else's change), so the grants there should reconcile. On error the cached list is
    /// dropped, so the grants there list it themselves (perhaps with their own credential).
    pub async fn refresh(&self, arm: &ArmClient, scope: &ResourceId) -> Result<bool, ArmError> {
        let slot = {
            let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
            match scopes.get_mut(&scope.normalized()) {
                Some(e) => {
                    e.refreshed = Some(Instant::now());
                    e.slot.clone()
                }
                None => return Ok(false),
            }
        };
        let mut guard = slot.lock().await;
        match Self::read(arm, scope, &guard).await {
            Ok((fresh, lagging)) => Ok(Self::store(&mut guard, scope, fresh, &lagging)),
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }

    /// The cached assignment named `name` at `scope`, without reading Azure.
    pub async fn cached(&self, scope: &ResourceId, name: &str) -> Option<RoleAssignment> {
        let slot = self.slot(scope);
        let guard = slot.lock().await;
        let list = guard.as_ref()?;
        list.assignments.iter().find(|a| a.name.eq_ignore_ascii_case(name)).map(|a| expand(&list.scope, a))
    }

    /// Records our own PUT in the cached list.
    pub async fn record_put(&self, scope: &ResourceId, assignment: RoleAssignment) {
        let slot = self.slot(scope);
        let mut guard = slot.lock().await;
        if let Some(entry) = guard.as_mut() {
            entry.assignments.retain(|a| !a.name.eq_ignore_ascii_case(&assignment.name));
            entry.own_writes.insert(assignment.name.to_ascii_lowercase(), (Instant::now(), assignment.clone()));
            entry.assignments.push(compact(&entry.scope, assignment));
        }
    }

    /// Records our own DELETE in the cached list.
    pub async fn record_delete(&self, scope: &ResourceId, name: &str) {
        let slot = self.slot(scope);
        let mut guard = slot.lock().await;
        if let Some(entry) = guard.as_mut() {
            entry.assignments.retain(|a| !a.name.eq_ignore_ascii_case(name));
            entry.own_writes.remove(&name.to_ascii_lowercase());
        }
    }

    /// Drops the cached list so the next reconcile reads Azure again.
    pub async fn invalidate(&self, scope: &ResourceId) {
        *self.slot(scope).lock().await = None;
    }
}

#[cfg(test)]
mod scope_cache_tests {
    use super::*;
    use crate::azure::models::RoleAssignmentProperties;

    #[test]
    fn a_busy_provider_keeps_entries_fresh_when_its_spell_began() {
        let ttl = Duration::from_secs(60);
        let read = Instant::now();
        let at = |secs| read + Duration::from_secs(secs);
        let never = || -> Option<Instant> { panic!("the pacer was asked about a fresh entry") };
        assert!(still_usable(read, at(59), ttl, never), "within the TTL, without asking the pacer");
        assert!(!still_usable(read, at(60), ttl, || None), "past it, with the provider idle");
        // Busy since 30 s after the read: the entry was fresh then, so it answers for the spell,
        // however long it lasts.
        assert!(still_usable(read, at(3600), ttl, || Some(at(30))));
        // Busy only since the entry had expired: read it again (once; that copy then holds).
        assert!(!still_usable(read, at(120), ttl, || Some(at(61))));
        assert!(still_usable(at(121), at(3600), ttl, || Some(at(61))));
    }

    #[test]
    fn the_fingerprint_sees_every_field_the_plan_compares() {
        let base = assignment("a");
        type Edit = fn(&mut RoleAssignmentProperties);
        let edits: [(&str, Edit); 4] = [
            ("description", |p| p.description = Some("edited in the portal".into())),
            ("conditionVersion", |p| p.condition_version = Some("1.0".into())),
            ("condition", |p| p.condition = Some("@Resource[x] StringEquals 'y'".into())),
            ("principal", |p| p.principal_id = "q".into()),
        ];
        for (what, edit) in edits {
            let mut edited = base.clone();
            edit(&mut edited.properties);
            assert_ne!(
                fingerprint(std::slice::from_ref(&base)),
                fingerprint(&[edited]),
                "an edit of {what} goes unseen"
            );
        }
        assert_eq!(fingerprint(std::slice::from_ref(&base)), fingerprint(&[base]));
    }

    fn assignment(name: &str) -> RoleAssignment {
        RoleAssignment {
            id: format!("/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/{name}"),
            name: name.into(),
            properties: RoleAssignmentProperties {
                role_definition_id: "r".into(),
                principal_id: "p".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_fresh_list_reports_changes_and_keeps_own_writes_it_lags_behind() {
        let mut slot = None;
        let scope = ResourceId::parse("/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f").expect("scope");
        let store = |slot: &mut Option<ScopeList>, fresh, lagging: &[String]| {
            ScopeAssignments::store(slot, &scope, fresh, lagging)
        };
        assert!(store(&mut slot, vec![assignment("a")], &[]), "first list is a change");
        assert!(!store(&mut slot, vec![assignment("a")], &[]), "same list, no change");
        // Our own PUT of "b", not yet in lists, confirmed by GET (lagging): kept, no change.
        if let Some(list) = slot.as_mut() {
            list.assignments.push(assignment("b"));
            list.own_writes.insert("b".into(), (Instant::now(), assignment("b")));
        }
        assert!(!store(&mut slot, vec![assignment("a")], &["b".into()]));
        assert_eq!(slot.as_ref().map(|l| l.assignments.len()), Some(2));
        // GET said it is gone: drift, reported as a change, and forgotten.
        assert!(store(&mut slot, vec![assignment("a")], &[]));
        assert_eq!(slot.as_ref().map(|l| (l.assignments.len(), l.own_writes.len())), Some((1, 0)));
        // Someone else's new assignment is a change.
        assert!(store(&mut slot, vec![assignment("a"), assignment("c")], &[]));
    }

    #[test]
    fn cached_entries_are_compacted_losslessly() {
        let scope = "/subscriptions/s/resourceGroups/rg";
        let usual = RoleAssignment {
            id: id_at(scope, "a"),
            name: "a".into(),
            properties: RoleAssignmentProperties { scope: Some(scope.into()), ..assignment("a").properties },
        };
        let compacted = compact(scope, usual.clone());
        assert!(compacted.id.is_empty() && compacted.properties.scope.is_none(), "{compacted:?}");
        assert_eq!(expand(scope, &compacted), usual);
        // Spelled otherwise than the list's scope: kept as it came.
        let mut odd = usual.clone();
        odd.properties.scope = Some(scope.to_uppercase());
        assert_eq!(expand(scope, &compact(scope, odd.clone())), odd);
        let mut odd_id = usual.clone();
        odd_id.id = odd_id.id.to_uppercase();
        assert_eq!(expand(scope, &compact(scope, odd_id.clone())), odd_id);
    }

    #[test]
    fn scopes_come_due_once_per_period_and_unused_ones_are_dropped() {
        let cache = ScopeAssignments::new(Duration::from_secs(60));
        let scope =
            ResourceId::parse("/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg").expect("id");
        let slot = cache.slot(&scope);
        assert_eq!(
            cache.due(Duration::from_secs(10), Duration::from_secs(20)),
            vec![scope.clone()],
            "never listed: due"
        );
        if let Ok(mut guard) = slot.try_lock() {
            ScopeAssignments::store(&mut guard, &scope, Vec::new(), &[]);
        }
        let (period, in_use_for) = (Duration::from_millis(100), Duration::from_millis(500));
        assert!(cache.due(period, in_use_for).is_empty(), "just listed: not due");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(cache.due(period, in_use_for), vec![scope.clone()], "a period later: due again");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(cache.due(period, in_use_for), vec![scope], "unread for two periods but within in_use_for: kept");
        std::thread::sleep(Duration::from_millis(300));
        assert!(cache.due(period, in_use_for).is_empty(), "no grant read it within in_use_for: dropped");
        assert!(cache.scopes.lock().map(|s| s.is_empty()).unwrap_or(false));
    }
}

#[cfg(test)]
mod resolver_tests {
    use super::*;

    fn role(id: &str) -> Arc<ResolvedRole> {
        Arc::new(ResolvedRole {
            role_definition_id: id.into(),
            guid: Uuid::nil(),
            role_name: "Lake Auditor".into(),
            permissions: Vec::new(),
        })
    }

    #[test]
    fn a_deleted_role_definition_is_forgotten_under_every_key() {
        let resolver = Resolver::new(Duration::from_secs(600));
        let gone = "/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/aaaa";
        put(&resolver.roles, "name|lake auditor|/subscriptions/s@op".into(), role(gone));
        put(&resolver.roles, "guid|aaaa|s@team".into(), role(gone));
        put(
            &resolver.roles,
            "name|reader|/subscriptions/s@op".into(),
            role("/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/bbbb"),
        );
        resolver.forget_role_definition(&gone.to_uppercase());
        let keys: Vec<String> = resolver.roles.lock().expect("roles").keys().cloned().collect();
        assert_eq!(keys, ["name|reader|/subscriptions/s@op"]);
    }
}

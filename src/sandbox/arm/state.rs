//! The emulated Azure estate and ARM's rules for it, without HTTP: what exists, who may do
//! what, and how role assignments behave (names, uniqueness, updates, replication delay,
//! list lag, limits). The HTTP layer in `routes.rs` only parses requests and renders answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::roles::builtin_roles;
use crate::azure::condition::{CONDITION_VERSION, check_condition};
use crate::azure::guid::parse_guid;
use crate::azure::models::{Permission, RoleAssignmentProperties, WorkspaceAccessConnector};
use crate::azure::permissions::permits_action;
use crate::azure::resource_id::{ResourceId, Root};

/// An ARM error answer: status, code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ArmFailure {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ArmFailure { status, code: code.to_owned(), message: message.into() }
    }

    /// ARM's error body.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

pub type ArmResult<T> = Result<T, ArmFailure>;

/// Behaviour knobs of the estate.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// A principal younger than this is not found when an assignment omits `principalType`.
    pub replication_delay: Duration,
    /// …and younger than this when `principalType` is sent (Azure then skips most of the wait).
    pub replication_delay_with_type: Duration,
    /// New assignments appear in list results only after this long.
    pub list_lag: Duration,
    /// Most role assignments per subscription.
    pub assignment_limit: usize,
    /// Items per list page.
    pub page_size: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            replication_delay: Duration::ZERO,
            replication_delay_with_type: Duration::ZERO,
            list_lag: Duration::ZERO,
            assignment_limit: 4000,
            page_size: 100,
        }
    }
}

#[derive(Debug, Clone)]
struct Principal {
    created: Instant,
}

/// What a resource is, beyond its id.
#[derive(Debug, Clone)]
pub enum ResourceKind {
    /// Any other resource (storage account, key vault, event hub namespace …).
    Generic,
    Workspace {
        managed_resource_group: ResourceId,
        access_connector: Option<WorkspaceAccessConnector>,
    },
    AccessConnector {
        system_principal: Option<String>,
        user_assigned: Vec<ResourceId>,
    },
    UserAssignedIdentity {
        principal_id: String,
        client_id: String,
    },
}

#[derive(Debug, Clone)]
struct Resource {
    id: ResourceId,
    kind: ResourceKind,
}

#[derive(Debug, Clone)]
struct RoleDefinition {
    guid: Uuid,
    role_name: String,
    description: String,
    custom: bool,
    permissions: Vec<Permission>,
    /// Empty for built-in roles (assignable everywhere).
    assignable_scopes: Vec<ResourceId>,
}

#[derive(Debug, Clone)]
struct Assignment {
    name: String,
    scope: ResourceId,
    /// `scope.normalized()`, kept because lists and authorization compare it against every
    /// assignment (formatting ids there made the emulator the bottleneck at 5000 grants).
    scope_key: String,
    role_guid: Uuid,
    principal_id: String,
    principal_type: Option<String>,
    description: Option<String>,
    condition: Option<String>,
    condition_version: Option<String>,
    created: Instant,
    created_on: String,
    updated_on: String,
    created_by: String,
    updated_by: String,
}

/// Filter of a role-assignment list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentFilter {
    /// No filter: at, above and below the scope.
    None,
    /// `atScope()`: at and above the scope.
    AtScope,
    /// `principalId eq '…'`: that principal's, at, above and below.
    Principal(String),
}

/// The whole estate.
#[derive(Debug)]
pub struct ArmState {
    pub tenant_id: String,
    pub config: StateConfig,
    subscriptions: BTreeSet<String>,
    management_groups: BTreeSet<String>,
    resource_groups: BTreeSet<String>,
    resources: BTreeMap<String, Resource>,
    principals: HashMap<String, Principal>,
    roles: Vec<RoleDefinition>,
    assignments: BTreeMap<String, Assignment>,
    /// PIM's behaviour (see `pim.rs`).
    pub pim: super::pim::PimConfig,
    /// Active PIM schedules by name, and every schedule request answered, by name.
    pub(super) schedules: BTreeMap<String, super::pim::Schedule>,
    pub(super) schedule_requests: BTreeMap<String, Value>,
    /// How far the emulator's clock is ahead of the wall clock.
    pub(super) clock_offset: k8s_openapi::jiff::SignedDuration,
}

/// `outer` is `inner` or an ancestor of it; both are normalised ids (see `ResourceId::contains`).
fn contains_key(outer: &str, inner: &str) -> bool {
    inner.len() >= outer.len()
        && inner.starts_with(outer)
        && (inner.len() == outer.len() || inner.as_bytes()[outer.len()] == b'/')
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn not_found_for(id: &ResourceId) -> ArmFailure {
    let rg = id.resource_group_name().unwrap_or_default();
    ArmFailure::new(
        404,
        "ResourceNotFound",
        format!("The Resource '{}/{}' under resource group '{rg}' was not found.", id.resource_type(), id.name()),
    )
}

impl ArmState {
    pub fn new(tenant_id: &str, config: StateConfig) -> Self {
        let roles = builtin_roles()
            .iter()
            .filter_map(|r| {
                Some(RoleDefinition {
                    guid: parse_guid(&r.name)?,
                    role_name: r.role_name.clone(),
                    description: r.description.clone(),
                    custom: false,
                    permissions: r.permissions.clone(),
                    assignable_scopes: Vec::new(),
                })
            })
            .collect();
        ArmState {
            tenant_id: tenant_id.to_owned(),
            config,
            subscriptions: BTreeSet::new(),
            management_groups: BTreeSet::new(),
            resource_groups: BTreeSet::new(),
            resources: BTreeMap::new(),
            principals: HashMap::new(),
            roles,
            assignments: BTreeMap::new(),
            pim: Default::default(),
            schedules: BTreeMap::new(),
            schedule_requests: BTreeMap::new(),
            clock_offset: k8s_openapi::jiff::SignedDuration::ZERO,
        }
    }

    // ----- estate administration (seeding, the admin API, tests) -----

    pub fn add_subscription(&mut self, subscription_id: &str) {
        self.subscriptions.insert(subscription_id.to_ascii_lowercase());
    }

    pub fn add_management_group(&mut self, name: &str) {
        self.management_groups.insert(name.to_ascii_lowercase());
    }

    pub fn add_resource_group(&mut self, id: &ResourceId) {
        if let Some(sub) = id.subscription_id() {
            self.add_subscription(sub);
        }
        self.resource_groups.insert(id.normalized());
    }

    /// Registers a principal in the directory, created now (`age` back-dates it, so seeded
    /// principals are already replicated).
    pub fn add_principal(&mut self, principal_id: &str, age: Duration) {
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.principals.insert(principal_id.to_ascii_lowercase(), Principal { created });
    }

    pub fn remove_principal(&mut self, principal_id: &str) {
        self.principals.remove(&principal_id.to_ascii_lowercase());
    }

    pub fn add_resource(&mut self, id: &ResourceId, kind: ResourceKind) {
        if let (Some(sub), Some(rg)) = (id.subscription_id(), id.resource_group_name()) {
            self.add_resource_group(&ResourceId::resource_group(sub, rg));
        }
        self.resources.insert(id.normalized(), Resource { id: id.clone(), kind });
    }

    /// Creates a user-assigned identity with a fresh principal (created now, so it is subject
    /// to the replication delay). Returns `(principal_id, client_id)`.
    pub fn create_user_assigned_identity(&mut self, id: &ResourceId, age: Duration) -> (String, String) {
        let principal_id = Uuid::new_v4().to_string();
        let client_id = Uuid::new_v4().to_string();
        self.add_principal(&principal_id, age);
        self.add_resource(
            id,
            ResourceKind::UserAssignedIdentity { principal_id: principal_id.clone(), client_id: client_id.clone() },
        );
        (principal_id, client_id)
    }

    /// Deletes a resource as Azure does: role assignments at or below it go with it (they are
    /// its extension resources); its identities' principals leave the directory, but their
    /// role assignments elsewhere stay, pointing at a missing principal.
    pub fn delete_resource(&mut self, id: &ResourceId) -> bool {
        let key = id.normalized();
        let Some(resource) = self.resources.remove(&key) else {
            return false;
        };
        self.resources.retain(|child, _| !contains_key(&key, child));
        self.assignments.retain(|_, a| !contains_key(&key, &a.scope_key));
        self.schedules.retain(|_, s| !contains_key(&key, &s.scope.normalized()));
        match resource.kind {
            ResourceKind::UserAssignedIdentity { principal_id, .. } => self.remove_principal(&principal_id),
            ResourceKind::AccessConnector { system_principal: Some(p), .. } => self.remove_principal(&p),
            _ => {}
        }
        true
    }

    /// Adds a custom role; returns its GUID.
    pub fn add_custom_role(
        &mut self,
        role_name: &str,
        permissions: Vec<Permission>,
        assignable_scopes: Vec<ResourceId>,
    ) -> Uuid {
        let guid = Uuid::new_v4();
        self.roles.push(RoleDefinition {
            guid,
            role_name: role_name.to_owned(),
            description: format!("Custom role {role_name}"),
            custom: true,
            permissions,
            assignable_scopes,
        });
        guid
    }

    /// Deletes a custom role definition. Like Azure, refuses built-in roles and roles that
    /// still have assignments (RoleDefinitionHasAssignments): returns whether it was deleted.
    pub fn delete_custom_role(&mut self, guid: Uuid) -> bool {
        if self.assignments.values().any(|a| a.role_guid == guid) {
            return false;
        }
        let before = self.roles.len();
        self.roles.retain(|r| !(r.custom && r.guid == guid));
        self.roles.len() != before
    }

    pub fn role_guid_by_name(&self, role_name: &str) -> Option<Uuid> {
        self.roles.iter().find(|r| r.role_name.eq_ignore_ascii_case(role_name)).map(|r| r.guid)
    }

    /// Creates an assignment directly, bypassing every check (seeding, out-of-band changes).
    pub fn assign_out_of_band(&mut self, scope: &ResourceId, role_guid: Uuid, principal_id: &str) -> String {
        let name = Uuid::new_v4().to_string();
        let now = now_rfc3339();
        let created = Instant::now().checked_sub(self.config.list_lag).unwrap_or_else(Instant::now);
        self.assignments.insert(
            name.clone(),
            Assignment {
                name: name.clone(),
                scope: scope.clone(),
                scope_key: scope.normalized(),
                role_guid,
                principal_id: principal_id.to_ascii_lowercase(),
                principal_type: Some("ServicePrincipal".into()),
                description: None,
                condition: None,
                condition_version: None,
                created,
                created_on: now.clone(),
                updated_on: now,
                created_by: "out-of-band".into(),
                updated_by: "out-of-band".into(),
            },
        );
        name
    }

    /// Deletes an assignment directly (drift tests). True when it existed.
    pub fn delete_out_of_band(&mut self, name: &str) -> bool {
        self.assignments.remove(&name.to_ascii_lowercase()).is_some()
    }

    /// Every assignment as `(name, scope, role GUID, principal, condition)`, for invariant checks.
    pub fn all_assignments(&self) -> Vec<(String, ResourceId, Uuid, String, Option<String>)> {
        self.assignments
            .values()
            .map(|a| (a.name.clone(), a.scope.clone(), a.role_guid, a.principal_id.clone(), a.condition.clone()))
            .collect()
    }

    // ----- ARM semantics -----

    /// 404 unless the scope (and the resource it names, if any) exists.
    pub fn check_scope_exists(&self, scope: &ResourceId) -> ArmResult<()> {
        match scope.root() {
            Root::Tenant => {}
            Root::ManagementGroup { name } => {
                if !self.management_groups.contains(&name.to_ascii_lowercase()) {
                    return Err(ArmFailure::new(
                        404,
                        "ManagementGroupNotFound",
                        format!("Management group '{name}' not found."),
                    ));
                }
            }
            Root::Subscription { subscription_id } | Root::ResourceGroup { subscription_id, .. } => {
                if !self.subscriptions.contains(&subscription_id.to_ascii_lowercase()) {
                    return Err(ArmFailure::new(
                        404,
                        "SubscriptionNotFound",
                        format!("The subscription '{subscription_id}' could not be found."),
                    ));
                }
            }
        }
        if let (Some(sub), Some(rg)) = (scope.subscription_id(), scope.resource_group_name())
            && !self.resource_groups.contains(&ResourceId::resource_group(sub, rg).normalized())
        {
            return Err(ArmFailure::new(
                404,
                "ResourceGroupNotFound",
                format!("Resource group '{rg}' could not be found."),
            ));
        }
        // The top-level resource named by the first provider section must exist; child
        // resources (containers, secrets …) are taken to exist with their parent.
        if let Some(section) = scope.sections().first()
            && let Some((ty, name)) = section.resources.first()
        {
            if scope.subscription_id().is_none() {
                return Ok(());
            }
            let top = root_id(scope).with_provider_resource(&section.namespace, ty, name);
            if !self.resources.contains_key(&top.normalized()) {
                return Err(not_found_for(&top));
            }
        }
        Ok(())
    }

    /// 403 unless `caller` holds, at or above `scope`, a role allowing `action`.
    pub fn authorize(&self, caller: &str, scope: &ResourceId, action: &str) -> ArmResult<()> {
        let caller_lower = caller.to_ascii_lowercase();
        let scope_key = scope.normalized();
        let allowed = self.assignments.values().any(|a| {
            a.principal_id == caller_lower
                && contains_key(&a.scope_key, &scope_key)
                && self.roles.iter().any(|r| r.guid == a.role_guid && permits_action(&r.permissions, action))
        });
        if allowed {
            Ok(())
        } else {
            Err(ArmFailure::new(
                403,
                "AuthorizationFailed",
                format!(
                    "The client '{caller}' with object id '{caller}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
                ),
            ))
        }
    }

    fn resource(&self, id: &ResourceId, expected_type: &str) -> ArmResult<&Resource> {
        self.check_scope_exists(&root_id(id))?;
        match self.resources.get(&id.normalized()) {
            Some(r) if r.id.is_type(expected_type) => Ok(r),
            _ => Err(not_found_for(id)),
        }
    }

    /// GET body of a workspace.
    pub fn workspace(&self, id: &ResourceId) -> ArmResult<Value> {
        let r = self.resource(id, "Microsoft.Databricks/workspaces")?;
        let ResourceKind::Workspace { managed_resource_group, access_connector } = &r.kind else {
            return Err(not_found_for(id));
        };
        let mut properties = json!({
            "managedResourceGroupId": managed_resource_group.to_string(),
            "computeMode": "Hybrid",
            "provisioningState": "Succeeded",
        });
        if let Some(ac) = access_connector {
            properties["accessConnector"] = serde_json::to_value(ac).unwrap_or(Value::Null);
        }
        Ok(json!({
            "id": r.id.to_string(), "name": r.id.name(), "type": "Microsoft.Databricks/workspaces",
            "location": "westeurope", "sku": {"name": "premium"}, "properties": properties,
        }))
    }

    /// GET body of an Access Connector.
    pub fn access_connector(&self, id: &ResourceId) -> ArmResult<Value> {
        let r = self.resource(id, "Microsoft.Databricks/accessConnectors")?;
        let ResourceKind::AccessConnector { system_principal, user_assigned } = &r.kind else {
            return Err(not_found_for(id));
        };
        let mut uais = serde_json::Map::new();
        for uai in user_assigned {
            let entry = match self.resources.get(&uai.normalized()).map(|u| &u.kind) {
                Some(ResourceKind::UserAssignedIdentity { principal_id, client_id }) => {
                    json!({"principalId": principal_id, "clientId": client_id})
                }
                _ => json!({}),
            };
            uais.insert(uai.to_string(), entry);
        }
        let kind = match (system_principal.is_some(), !user_assigned.is_empty()) {
            (true, true) => "SystemAssigned,UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        };
        let mut identity = json!({"type": kind});
        if let Some(p) = system_principal {
            identity["principalId"] = json!(p);
            identity["tenantId"] = json!(self.tenant_id);
        }
        if !uais.is_empty() {
            identity["userAssignedIdentities"] = Value::Object(uais);
        }
        Ok(json!({
            "id": r.id.to_string(), "name": r.id.name(), "type": "Microsoft.Databricks/accessConnectors",
            "location": "westeurope", "identity": identity, "properties": {"provisioningState": "Succeeded"},
        }))
    }

    /// GET body of a user-assigned identity.
    pub fn user_assigned_identity(&self, id: &ResourceId) -> ArmResult<Value> {
        let r = self.resource(id, "Microsoft.ManagedIdentity/userAssignedIdentities")?;
        let ResourceKind::UserAssignedIdentity { principal_id, client_id } = &r.kind else {
            return Err(not_found_for(id));
        };
        Ok(json!({
            "id": r.id.to_string(), "name": r.id.name(), "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": "westeurope",
            "properties": {"tenantId": self.tenant_id, "principalId": principal_id, "clientId": client_id},
        }))
    }

    /// `GET /subscriptions`: the subscriptions where `caller` holds any role (at, above or below
    /// the subscription), as Azure lists those the caller can see.
    pub fn subscriptions_readable_by(&self, caller: &str) -> Vec<Value> {
        let caller = caller.to_ascii_lowercase();
        self.subscriptions
            .iter()
            .filter(|sub| {
                let key = ResourceId::subscription(sub).normalized();
                self.assignments.values().any(|a| {
                    a.principal_id == caller && (contains_key(&a.scope_key, &key) || contains_key(&key, &a.scope_key))
                })
            })
            .map(|sub| {
                json!({
                    "id": format!("/subscriptions/{sub}"), "subscriptionId": sub, "tenantId": self.tenant_id,
                    "displayName": format!("sandbox {sub}"), "state": "Enabled",
                    "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
                    "authorizationSource": "RoleBased",
                })
            })
            .collect()
    }

    /// The resources of `resource_type` inside a subscription or resource group (GET bodies).
    pub fn list_resources(&self, within: &ResourceId, resource_type: &str) -> ArmResult<Vec<Value>> {
        self.check_scope_exists(within)?;
        let key = within.normalized();
        Ok(self
            .resources
            .values()
            .filter(|r| r.id.is_type(resource_type) && contains_key(&key, &r.id.normalized()))
            .filter_map(|r| match r.kind {
                ResourceKind::Workspace { .. } => self.workspace(&r.id).ok(),
                ResourceKind::AccessConnector { .. } => self.access_connector(&r.id).ok(),
                ResourceKind::UserAssignedIdentity { .. } => self.user_assigned_identity(&r.id).ok(),
                ResourceKind::Generic => None,
            })
            .collect())
    }

    fn role_visible_at(role: &RoleDefinition, scope: &ResourceId) -> bool {
        !role.custom || role.assignable_scopes.iter().any(|s| s.contains(scope))
    }

    fn role_definition_json(&self, role: &RoleDefinition, scope: &ResourceId) -> Value {
        json!({
            "id": role_definition_id(scope, role.guid),
            "name": role.guid.to_string(),
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": role.role_name,
                "type": if role.custom { "CustomRole" } else { "BuiltInRole" },
                "description": role.description,
                "assignableScopes": if role.custom { role.assignable_scopes.iter().map(ToString::to_string).collect() } else { vec!["/".to_owned()] },
                "permissions": role.permissions,
            }
        })
    }

    /// GET a role definition at `scope` by GUID.
    pub fn role_definition(&self, scope: &ResourceId, guid: &str) -> ArmResult<Value> {
        let found = parse_guid(guid).and_then(|g| {
            self.roles.iter().find(|r| r.guid == g && (scope.sections().is_empty() || Self::role_visible_at(r, scope)))
        });
        match found {
            Some(role) => Ok(self.role_definition_json(role, scope)),
            None => Err(ArmFailure::new(
                404,
                "RoleDefinitionDoesNotExist",
                "The specified role definition with ID '".to_owned() + guid + "' does not exist.",
            )),
        }
    }

    /// List role definitions visible at `scope`, optionally only those named `role_name`.
    pub fn role_definitions(&self, scope: &ResourceId, role_name: Option<&str>) -> ArmResult<Vec<Value>> {
        self.check_scope_exists(scope)?;
        Ok(self
            .roles
            .iter()
            .filter(|r| Self::role_visible_at(r, scope))
            .filter(|r| role_name.is_none_or(|n| r.role_name.eq_ignore_ascii_case(n)))
            .map(|r| self.role_definition_json(r, scope))
            .collect())
    }

    fn assignment_json(&self, a: &Assignment) -> Value {
        let properties = RoleAssignmentProperties {
            scope: Some(a.scope.to_string()),
            role_definition_id: role_definition_id(&a.scope, a.role_guid),
            principal_id: a.principal_id.clone(),
            principal_type: a.principal_type.clone(),
            description: a.description.clone(),
            condition: a.condition.clone(),
            condition_version: a.condition_version.clone(),
        };
        let mut props = serde_json::to_value(properties).unwrap_or(Value::Null);
        props["createdOn"] = json!(a.created_on);
        props["updatedOn"] = json!(a.updated_on);
        props["createdBy"] = json!(a.created_by);
        props["updatedBy"] = json!(a.updated_by);
        json!({
            "id": format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", a.scope, a.name),
            "name": a.name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": props,
        })
    }

    /// Role assignments at `scope` matching `filter`, oldest first, without the ones still
    /// inside the list lag.
    pub fn list_assignments(&self, scope: &ResourceId, filter: &AssignmentFilter) -> ArmResult<Vec<Value>> {
        self.check_scope_exists(scope)?;
        let now = Instant::now();
        let key = scope.normalized();
        let related = |a: &Assignment| contains_key(&a.scope_key, &key) || contains_key(&key, &a.scope_key);
        let mut found: Vec<&Assignment> = self
            .assignments
            .values()
            .filter(|a| now.duration_since(a.created) >= self.config.list_lag)
            .filter(|a| match filter {
                AssignmentFilter::AtScope => contains_key(&a.scope_key, &key),
                AssignmentFilter::None => related(a),
                AssignmentFilter::Principal(p) => a.principal_id.eq_ignore_ascii_case(p) && related(a),
            })
            .collect();
        found.sort_by(|x, y| x.created.cmp(&y.created).then(x.name.cmp(&y.name)));
        Ok(found.into_iter().map(|a| self.assignment_json(a)).collect())
    }

    /// GET one assignment.
    pub fn get_assignment(&self, scope: &ResourceId, name: &str) -> ArmResult<Value> {
        match self.assignments.get(&name.to_ascii_lowercase()) {
            Some(a) if a.scope == *scope => Ok(self.assignment_json(a)),
            _ => Err(ArmFailure::new(
                404,
                "RoleAssignmentNotFound",
                format!("The role assignment '{name}' is not found."),
            )),
        }
    }

    /// PUT an assignment; `Ok((status, body))` with 201 on create and 200 on update or no-op.
    pub fn put_assignment(
        &mut self,
        caller: &str,
        scope: &ResourceId,
        name: &str,
        body: &Value,
    ) -> ArmResult<(u16, Value)> {
        let Some(guid_name) = parse_guid(name) else {
            return Err(ArmFailure::new(
                400,
                "InvalidRoleAssignmentId",
                format!("The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."),
            ));
        };
        let properties: RoleAssignmentProperties = body
            .get("properties")
            .cloned()
            .ok_or_else(|| ArmFailure::new(400, "InvalidRequestFormat", "The request body must contain 'properties'."))
            .and_then(|p| {
                serde_json::from_value(p)
                    .map_err(|e| ArmFailure::new(400, "InvalidRequestFormat", format!("Cannot parse the request: {e}")))
            })?;
        self.check_scope_exists(scope)?;
        self.authorize(caller, scope, crate::azure::permissions::ROLE_ASSIGNMENT_WRITE)?;

        let role_guid = ResourceId::parse(&properties.role_definition_id)
            .ok()
            .filter(|id| id.is_type("Microsoft.Authorization/roleDefinitions"))
            .and_then(|id| parse_guid(id.name()))
            .filter(|g| self.roles.iter().any(|r| r.guid == *g && Self::role_visible_at(r, scope)))
            .ok_or_else(|| {
                ArmFailure::new(
                    400,
                    "RoleDefinitionDoesNotExist",
                    "The specified role definition with ID '".to_owned()
                        + &properties.role_definition_id
                        + "' does not exist.",
                )
            })?;

        let principal_id = properties.principal_id.to_ascii_lowercase();
        let delay = if properties.principal_type.is_some() {
            self.config.replication_delay_with_type
        } else {
            self.config.replication_delay
        };
        let replicated = self.principals.get(&principal_id).is_some_and(|p| p.created.elapsed() >= delay);
        if !replicated {
            return Err(ArmFailure::new(
                400,
                "PrincipalNotFound",
                format!(
                    "Principal {} does not exist in the directory {}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group. See https://aka.ms/docs-principaltype",
                    properties.principal_id.replace('-', ""),
                    self.tenant_id
                ),
            ));
        }
        match (&properties.condition, &properties.condition_version) {
            (Some(c), v) => {
                if v.as_deref() != Some(CONDITION_VERSION) {
                    return Err(ArmFailure::new(
                        400,
                        "InvalidConditionVersion",
                        "The condition version must be '2.0'.",
                    ));
                }
                if let Err(e) = check_condition(c, 8192) {
                    return Err(ArmFailure::new(400, "InvalidCondition", format!("The condition is invalid: it {e}.")));
                }
            }
            (None, Some(_)) => {
                return Err(ArmFailure::new(
                    400,
                    "InvalidRoleAssignmentRequest",
                    "A condition version was given without a condition.",
                ));
            }
            (None, None) => {}
        }

        let key = guid_name.to_string();
        let now = now_rfc3339();
        if let Some(existing) = self.assignments.get_mut(&key) {
            if existing.scope != *scope || existing.principal_id != principal_id || existing.role_guid != role_guid {
                return Err(ArmFailure::new(
                    400,
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                ));
            }
            let changed = existing.condition != properties.condition
                || existing.condition_version != properties.condition_version
                || existing.description != properties.description;
            if changed {
                existing.condition = properties.condition;
                existing.condition_version = properties.condition_version;
                existing.description = properties.description;
                existing.updated_on = now;
                existing.updated_by = caller.to_owned();
            }
            let existing = existing.clone();
            return Ok((200, self.assignment_json(&existing)));
        }
        // Azure's uniqueness key is (principal, role, scope), whatever the condition.
        if self
            .assignments
            .values()
            .any(|a| a.principal_id == principal_id && a.role_guid == role_guid && a.scope == *scope)
        {
            return Err(ArmFailure::new(409, "RoleAssignmentExists", "The role assignment already exists."));
        }
        let subscription = scope.subscription_id();
        let in_subscription = self
            .assignments
            .values()
            .filter(|a| match (a.scope.subscription_id(), subscription) {
                (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
                _ => false,
            })
            .count();
        if subscription.is_some() && in_subscription >= self.config.assignment_limit {
            return Err(ArmFailure::new(
                400,
                "RoleAssignmentLimitExceeded",
                format!(
                    "No more role assignments can be created in subscription '{}'. The limit of {} has been reached.",
                    scope.subscription_id().unwrap_or_default(),
                    self.config.assignment_limit
                ),
            ));
        }
        let assignment = Assignment {
            name: key.clone(),
            scope: scope.clone(),
            scope_key: scope.normalized(),
            role_guid,
            principal_id,
            principal_type: properties.principal_type,
            description: properties.description,
            condition: properties.condition,
            condition_version: properties.condition_version,
            created: Instant::now(),
            created_on: now.clone(),
            updated_on: now,
            created_by: caller.to_owned(),
            updated_by: caller.to_owned(),
        };
        let body = self.assignment_json(&assignment);
        self.assignments.insert(key, assignment);
        Ok((201, body))
    }

    /// The GUID of the role `role_definition_id` names, if it can be assigned at `scope`.
    pub(super) fn visible_role(&self, role_definition_id: &str, scope: &ResourceId) -> Option<Uuid> {
        ResourceId::parse(role_definition_id)
            .ok()
            .filter(|id| id.is_type("Microsoft.Authorization/roleDefinitions"))
            .and_then(|id| parse_guid(id.name()))
            .filter(|g| self.roles.iter().any(|r| r.guid == *g && Self::role_visible_at(r, scope)))
    }

    /// Whether an assignment for (principal, role, scope) exists.
    pub(super) fn has_assignment(&self, scope: &ResourceId, role_guid: Uuid, principal_id: &str) -> bool {
        self.assignments
            .values()
            .any(|a| a.principal_id.eq_ignore_ascii_case(principal_id) && a.role_guid == role_guid && a.scope == *scope)
    }

    /// DELETE an assignment: `Ok(Some(body))` (200) when it existed, `Ok(None)` (204) when not.
    pub fn delete_assignment(&mut self, caller: &str, scope: &ResourceId, name: &str) -> ArmResult<Option<Value>> {
        self.check_scope_exists(scope)?;
        self.authorize(caller, scope, crate::azure::permissions::ROLE_ASSIGNMENT_DELETE)?;
        let key = name.to_ascii_lowercase();
        match self.assignments.get(&key) {
            Some(a) if a.scope == *scope => {
                let body = self.assignment_json(a);
                self.assignments.remove(&key);
                Ok(Some(body))
            }
            _ => Ok(None),
        }
    }
}

/// `…/providers/Microsoft.Authorization/roleDefinitions/{guid}` under the scope's subscription
/// (or tenant-level for management groups), as ARM writes it.
pub fn role_definition_id(scope: &ResourceId, guid: Uuid) -> String {
    match scope.subscription_id() {
        Some(sub) => format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
    }
}

/// The id's subscription or resource-group root (the id itself for other roots).
fn root_id(id: &ResourceId) -> ResourceId {
    match (id.subscription_id(), id.resource_group_name()) {
        (Some(sub), Some(rg)) => ResourceId::resource_group(sub, rg),
        (Some(sub), None) => ResourceId::subscription(sub),
        _ => id.clone(),
    }
}

//! The ARM id of a role assignment, `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`:
//! parsed once, formatted one way, compared as Azure compares ids (case-insensitively).

use std::fmt;
use std::hash::{Hash, Hasher};

use super::ResourceId;

const SEGMENT: &str = "/providers/Microsoft.Authorization/roleAssignments";

/// A role assignment's id: its scope and its name (a GUID the operator chooses, or Azure's for
/// assignments made elsewhere). Equality, ordering and hashing ignore case, as ARM does.
#[derive(Debug, Clone)]
pub struct RoleAssignmentId {
    scope: ResourceId,
    name: String,
}

impl RoleAssignmentId {
    pub fn new(scope: ResourceId, name: impl Into<String>) -> Self {
        RoleAssignmentId { scope, name: name.into() }
    }

    /// Parses `{scope}/providers/Microsoft.Authorization/roleAssignments/{name}` (any case).
    /// `None` when the text is not such an id or its scope is not an ARM id.
    pub fn parse(id: &str) -> Option<Self> {
        let marker = format!("{}/", SEGMENT.to_ascii_lowercase());
        let at = id.to_ascii_lowercase().rfind(&marker)?;
        let name = &id[at + marker.len()..];
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let scope = ResourceId::parse(&id[..at]).ok()?;
        Some(RoleAssignmentId { scope, name: name.to_owned() })
    }

    pub fn scope(&self) -> &ResourceId {
        &self.scope
    }

    /// The assignment's name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lower-case id: the key for maps and sets of ids from different sources.
    pub fn key(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }

    /// Whether this id names the assignment `name` (any scope, any case).
    pub fn has_name(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The id of `name` at a scope spelled exactly as given (for comparing with ids Azure
    /// returned, which keep the caller's spelling).
    pub fn format(scope: impl fmt::Display, name: &str) -> String {
        format!("{scope}{SEGMENT}/{name}")
    }

    /// The collection URL path of assignments at `scope` (list, filter).
    pub fn collection_at(scope: &ResourceId) -> String {
        format!("{scope}{SEGMENT}")
    }
}

impl fmt::Display for RoleAssignmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::format(&self.scope, &self.name))
    }
}

impl PartialEq for RoleAssignmentId {
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl Eq for RoleAssignmentId {}

impl Hash for RoleAssignmentId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for RoleAssignmentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RoleAssignmentId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const NAME: &str = "05c5a614-a7d6-4502-b150-c2fb455033ff";

    #[test]
    fn parses_and_formats_back() {
        let text = format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/providers/Microsoft.Authorization/roleAssignments/{NAME}"
        );
        let id = RoleAssignmentId::parse(&text).expect("parses");
        assert_eq!(id.name(), NAME);
        assert_eq!(
            id.scope().to_string(),
            format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv")
        );
        assert_eq!(id.to_string(), text);
        assert_eq!(RoleAssignmentId::new(id.scope().clone(), NAME), id);
    }

    #[test]
    fn compares_ignoring_case() {
        let a = RoleAssignmentId::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/RG/providers/Microsoft.Authorization/roleAssignments/{}",
            NAME.to_uppercase()
        ))
        .expect("a");
        let b = RoleAssignmentId::parse(&format!(
            "/SUBSCRIPTIONS/{SUB}/resourcegroups/rg/PROVIDERS/microsoft.authorization/roleassignments/{NAME}"
        ))
        .expect("b");
        assert_eq!(a, b);
        assert_eq!(a.key(), b.key());
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        let set: std::collections::HashSet<RoleAssignmentId> = [a.clone(), b].into();
        assert_eq!(set.len(), 1);
        assert!(a.has_name(NAME));
    }

    #[test]
    fn refuses_what_is_not_an_assignment_id() {
        for text in [
            "",
            "not an id",
            &format!("/subscriptions/{SUB}/resourceGroups/rg"),
            &format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/"),
            &format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/{NAME}/extra"),
            &format!("junk/providers/Microsoft.Authorization/roleAssignments/{NAME}"),
        ] {
            assert_eq!(RoleAssignmentId::parse(text), None, "{text}");
        }
    }

    #[test]
    fn collection_path() {
        let scope = ResourceId::resource_group(SUB, "rg");
        assert_eq!(
            RoleAssignmentId::collection_at(&scope),
            format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments")
        );
    }
}

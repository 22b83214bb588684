//! How a grant names a role: by display name, by role-definition GUID, or by full
//! roleDefinitionId. All three are accepted because platform teams copy whichever the portal,
//! the CLI or a Terraform state file shows them. Resolution to a roleDefinitionId happens in the
//! controller; this module only parses.

use std::fmt;

use uuid::Uuid;

use super::guid::parse_guid;
use super::resource_id::{ResourceId, ResourceIdError};

/// Longest role name Azure allows for a custom role is far below this; the cap bounds input.
pub const MAX_ROLE_NAME_LEN: usize = 256;

/// Resource type of role definitions.
pub const ROLE_DEFINITION_TYPE: &str = "Microsoft.Authorization/roleDefinitions";

/// Why a role reference cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRefError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {MAX_ROLE_NAME_LEN}")]
    TooLong { len: usize },
    #[error("has leading or trailing white space")]
    SurroundingWhitespace,
    #[error("contains the control character {0:?}")]
    ControlCharacter(char),
    #[error("is not a valid roleDefinitionId: {0}")]
    InvalidDefinitionId(ResourceIdError),
    #[error("is a {0} id, not a roleDefinitionId (…/providers/Microsoft.Authorization/roleDefinitions/<guid>)")]
    NotARoleDefinition(String),
    #[error("ends in '{0}', which is not a role-definition GUID")]
    InvalidDefinitionGuid(String),
}

/// A parsed role reference.
#[derive(Debug, Clone)]
pub enum RoleRef {
    /// A display name such as `Storage Blob Data Reader`; Azure matches names exactly
    /// (we compare case-insensitively, as Azure's `roleName eq` filter does).
    Name(String),
    /// A role-definition GUID; built-in role GUIDs are the same in every tenant.
    Guid(Uuid),
    /// A full roleDefinitionId. The scope part says where a custom role is defined.
    DefinitionId { id: ResourceId, guid: Uuid },
}

impl RoleRef {
    pub fn parse(text: &str) -> Result<Self, RoleRefError> {
        if text.is_empty() {
            return Err(RoleRefError::Empty);
        }
        if let Some(guid) = parse_guid(text) {
            return Ok(RoleRef::Guid(guid));
        }
        if text.starts_with('/') {
            let id = ResourceId::parse(text).map_err(RoleRefError::InvalidDefinitionId)?;
            if !id.is_type(ROLE_DEFINITION_TYPE) || id.sections().last().map(|s| s.resources.len()) != Some(1) {
                return Err(RoleRefError::NotARoleDefinition(id.resource_type()));
            }
            let guid =
                parse_guid(id.name()).ok_or_else(|| RoleRefError::InvalidDefinitionGuid(id.name().to_owned()))?;
            return Ok(RoleRef::DefinitionId { id, guid });
        }
        if text.chars().count() > MAX_ROLE_NAME_LEN {
            return Err(RoleRefError::TooLong { len: text.chars().count() });
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(RoleRefError::ControlCharacter(c));
        }
        if text.trim() != text {
            return Err(RoleRefError::SurroundingWhitespace);
        }
        Ok(RoleRef::Name(text.to_owned()))
    }

    /// The role-definition GUID when the reference carries one (names need a lookup).
    pub fn guid(&self) -> Option<Uuid> {
        match self {
            RoleRef::Name(_) => None,
            RoleRef::Guid(guid) | RoleRef::DefinitionId { guid, .. } => Some(*guid),
        }
    }

    /// True when both references certainly name the same role without asking Azure: equal
    /// GUIDs (a GUID and a full id with that GUID included), or equal names ignoring case.
    pub fn same_role(&self, other: &RoleRef) -> bool {
        match (self, other) {
            (RoleRef::Name(a), RoleRef::Name(b)) => a.eq_ignore_ascii_case(b),
            _ => self.guid().is_some() && self.guid() == other.guid(),
        }
    }
}

impl fmt::Display for RoleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleRef::Name(name) => f.write_str(name),
            RoleRef::Guid(guid) => write!(f, "{guid}"),
            RoleRef::DefinitionId { id, .. } => write!(f, "{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn parses_names_guids_and_ids() {
        assert!(
            matches!(RoleRef::parse("Storage Blob Data Reader"), Ok(RoleRef::Name(n)) if n == "Storage Blob Data Reader")
        );
        assert!(matches!(RoleRef::parse(OWNER), Ok(RoleRef::Guid(_))));
        let full = format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{OWNER}");
        let parsed = RoleRef::parse(&full).expect("full id");
        assert_eq!(parsed.guid().map(|g| g.to_string()), Some(OWNER.to_owned()));
        let mg = format!(
            "/providers/Microsoft.Management/managementGroups/root/providers/Microsoft.Authorization/roleDefinitions/{OWNER}"
        );
        assert!(matches!(RoleRef::parse(&mg), Ok(RoleRef::DefinitionId { .. })));
    }

    #[test]
    fn aliases_of_one_role_are_the_same_role() {
        let by_guid = RoleRef::parse(&OWNER.to_uppercase()).expect("guid");
        let by_id =
            RoleRef::parse(&format!("/subscriptions/{SUB}/providers/microsoft.authorization/roledefinitions/{OWNER}"))
                .expect("id");
        assert!(by_guid.same_role(&by_id));
        assert!(RoleRef::parse("owner").expect("n").same_role(&RoleRef::parse("Owner").expect("n")));
        assert!(!RoleRef::parse("Owner").expect("n").same_role(&by_guid));
    }

    #[test]
    fn rejects_bad_references_specifically() {
        assert_eq!(RoleRef::parse("").unwrap_err(), RoleRefError::Empty);
        assert_eq!(RoleRef::parse(" Owner").unwrap_err(), RoleRefError::SurroundingWhitespace);
        assert_eq!(RoleRef::parse("Own\0er").unwrap_err(), RoleRefError::ControlCharacter('\0'));
        assert!(matches!(RoleRef::parse(&"x".repeat(300)), Err(RoleRefError::TooLong { len: 300 })));
        assert!(matches!(
            RoleRef::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg")),
            Err(RoleRefError::NotARoleDefinition(_))
        ));
        assert_eq!(
            RoleRef::parse(&format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/owner"))
                .unwrap_err(),
            RoleRefError::InvalidDefinitionGuid("owner".into())
        );
        assert!(matches!(RoleRef::parse("/subscriptions/x/"), Err(RoleRefError::InvalidDefinitionId(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn never_panics_and_display_round_trips(text in "\\PC{0,40}|/[a-zA-Z0-9/.-]{0,60}") {
            if let Ok(role) = RoleRef::parse(&text) {
                let again = RoleRef::parse(&role.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(again.same_role(&role) || matches!(role, RoleRef::Name(_)));
                prop_assert_eq!(again.to_string().to_ascii_lowercase(), role.to_string().to_ascii_lowercase());
            }
        }

        #[test]
        fn any_guid_parses_in_every_form(n in any::<u128>()) {
            let guid = Uuid::from_u128(n);
            let as_id = format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}");
            let a = RoleRef::parse(&guid.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let b = RoleRef::parse(&as_id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(a.same_role(&b));
        }
    }
}

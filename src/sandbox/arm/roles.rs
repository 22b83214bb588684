//! The emulator's built-in role catalogue.
//!
//! `builtin_roles.json` is the project's own data: names, GUIDs, descriptions and permissions
//! of the built-in roles a Databricks platform team meets, taken as facts from Azure's
//! published built-in role definitions (the shared `builtin-roles.json`, which lists all of
//! them). Built-in role GUIDs are the same in every tenant. The emulator never reads
//! `../shared` at run time.

use serde::Deserialize;

use crate::azure::models::Permission;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinRole {
    pub role_name: String,
    /// The role-definition GUID.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<Permission>,
}

/// The catalogue, parsed once.
pub fn builtin_roles() -> &'static [BuiltinRole] {
    static ROLES: std::sync::OnceLock<Vec<BuiltinRole>> = std::sync::OnceLock::new();
    ROLES.get_or_init(|| {
        // The file is part of the crate; a parse failure is a build defect caught by the test below.
        serde_json::from_str(include_str!("builtin_roles.json")).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_parses_and_has_the_roles_the_project_relies_on() {
        let roles = builtin_roles();
        assert!(roles.len() >= 30);
        for name in [
            "Owner",
            "User Access Administrator",
            "Role Based Access Control Administrator",
            "Reader",
            "Storage Blob Data Contributor",
            "Key Vault Secrets User",
        ] {
            assert!(roles.iter().any(|r| r.role_name == name), "{name} missing");
        }
        let owner = roles.iter().find(|r| r.role_name == "Owner").expect("Owner");
        assert_eq!(owner.name, "8e3af657-a8ff-443c-a75c-2fe8c4bcb635");
    }
}

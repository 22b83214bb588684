//! Azure RBAC permission matching: whether a role definition's `actions` / `notActions` allow an
//! operation such as `Microsoft.Authorization/roleAssignments/write`.
//!
//! Used by the ARM emulator to model the caller's own permissions and by GrantPolicy to judge
//! privileged roles from their permissions rather than their names.

use super::models::Permission;

/// The operation that creates role assignments.
pub const ROLE_ASSIGNMENT_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
/// The operation that deletes role assignments.
pub const ROLE_ASSIGNMENT_DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";

/// Case-insensitive match of an action pattern (`*` matches any run of characters, as in
/// `*/read` or `Microsoft.Authorization/*`) against a concrete action.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    wildcard_match(pattern.to_ascii_lowercase().as_bytes(), action.to_ascii_lowercase().as_bytes())
}

/// `*`-only wildcard match (greedy with backtracking to the last star); byte-exact, callers
/// fold case first. Shared by permission matching and GrantPolicy globs.
pub fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// True when some permission block allows the control-plane `action`: an `actions` entry
/// matches and no `notActions` entry of the same block does.
pub fn permits_action(permissions: &[Permission], action: &str) -> bool {
    permissions.iter().any(|p| {
        p.actions.iter().any(|pattern| action_matches(pattern, action))
            && !p.not_actions.iter().any(|pattern| action_matches(pattern, action))
    })
}

/// True when the role can hand out roles, which makes it privileged: it allows
/// `Microsoft.Authorization/roleAssignments/write` (covers `*`, `Microsoft.Authorization/*` …).
pub fn can_assign_roles(permissions: &[Permission]) -> bool {
    permits_action(permissions, ROLE_ASSIGNMENT_WRITE)
}

/// True when the role grants any data-plane action.
pub fn has_data_actions(permissions: &[Permission]) -> bool {
    permissions.iter().any(|p| !p.data_actions.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(actions: &[&str], not_actions: &[&str]) -> Vec<Permission> {
        vec![Permission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: not_actions.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }]
    }

    #[test]
    fn wildcards_match_as_azure_does() {
        assert!(action_matches("*", ROLE_ASSIGNMENT_WRITE));
        assert!(action_matches("Microsoft.Authorization/*", ROLE_ASSIGNMENT_WRITE));
        assert!(action_matches("microsoft.authorization/roleassignments/WRITE", ROLE_ASSIGNMENT_WRITE));
        assert!(action_matches("*/read", "Microsoft.Databricks/workspaces/read"));
        assert!(!action_matches("*/read", ROLE_ASSIGNMENT_WRITE));
        assert!(!action_matches("Microsoft.Authorization/roleAssignments/read", ROLE_ASSIGNMENT_WRITE));
    }

    #[test]
    fn contributor_cannot_assign_roles_but_owner_can() {
        let owner = perm(&["*"], &[]);
        let contributor = perm(&["*"], &["Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write"]);
        let reader = perm(&["*/read"], &[]);
        let custom = perm(&["Microsoft.Authorization/*"], &[]);
        assert!(can_assign_roles(&owner));
        assert!(!can_assign_roles(&contributor));
        assert!(!can_assign_roles(&reader));
        assert!(can_assign_roles(&custom));
    }
}

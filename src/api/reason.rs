//! Every reason the operator writes: in a condition, a `status.roleAssignments[]` entry or an
//! Event. One place for its code, what it says about health, how the grant is retried, and
//! what a person does about it; the reason table in `docs/operations.md` is generated from
//! here (a test keeps them equal: `DBX_BLESS=1 cargo test --lib reason` rewrites it).
//!
//! A new reason: add the variant, its row in [`Reason::ALL`] and the match arms below; the
//! compiler finds the rest.

use std::fmt;

use crate::azure::ArmError;

/// What a reason says about a grant's health (the severity of a `Ready` condition carrying it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In place, or a step that went well.
    Healthy,
    /// Not there yet, and retried without anyone doing anything (throttling, replication,
    /// outages, Observe mode's planned changes).
    Progressing,
    /// Needs a person: the spec, a policy, a Secret or Azure must change.
    NeedsAttention,
}

/// How soon a grant carrying the reason is reconciled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At the next resync (or when something it watches changes).
    Resync,
    /// With backoff (at least Azure's Retry-After).
    Soon,
    /// At the slow retry interval (5 minutes by default): someone has to act first.
    Slowly,
    /// When the grant, a GrantPolicy or its namespace's labels change (and at resync).
    OnChange,
}

/// Where the reason appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appears {
    /// Conditions and/or `status.roleAssignments[].reason`.
    Status,
    /// Only as an Event's reason.
    Event,
    /// Both.
    StatusAndEvent,
    /// The operator's log (info, with the grant): an outcome the spec asked for, which the
    /// status already shows. Not an Event: one per grant and change would double the Kubernetes
    /// writes of every rollout (issue 24).
    Log,
}

macro_rules! reasons {
    ($($variant:ident),+ $(,)?) => {
        /// A reason code (see the module docs).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $($variant),+ }

        impl Reason {
            /// Every reason, in the order of the documentation's table.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),+];

            /// The code written to the API (the variant's name).
            pub const fn code(self) -> &'static str {
                match self { $(Reason::$variant => stringify!($variant)),+ }
            }
        }
    };
}

reasons!(
    // Progress and success.
    Ready,
    Assigned,
    Adopted,
    Pending,
    Resolved,
    NotResolved,
    Compliant,
    CompliantWithWarnings,
    InSync,
    OutOfSync,
    CreatePlanned,
    UpdatePlanned,
    ChangesPlanned,
    RemovalPending,
    // Time-bound access.
    Expired,
    ExpiringSoon,
    PimUnavailable,
    PimPolicyRefused,
    // The grant itself.
    InvalidSpec,
    CredentialError,
    // Its identity.
    WorkspaceNotFound,
    AccessConnectorNotFound,
    NoManagedIdentity,
    NoLinkedAccessConnector,
    AccessConnectorHasNoIdentity,
    UserAssignedIdentityNotAttached,
    // Roles and scopes.
    RoleNotFound,
    AmbiguousRole,
    ScopeNotFound,
    // Azure's answers.
    AuthorizationFailed,
    PrincipalNotFound,
    RoleAssignmentLimitExceeded,
    RoleAssignmentUpdateNotPermitted,
    TooManyRequests,
    AzureUnavailable,
    AzureError,
    // GrantPolicy decisions.
    NoGrantPolicy,
    IdentityNotAllowed,
    RoleNotAllowed,
    ScopeNotAllowed,
    PrivilegedRole,
    DataRoleOnWorkspaceIdentity,
    TooManyAssignments,
    DurationNotAllowed,
    ConflictingGrant,
    // Deletion.
    CleanupFailed,
    AssignmentsRetained,
    // GrantPolicy status.
    Valid,
    InvalidPolicy,
    // Events of changes made.
    Created,
    Updated,
    Deleted,
    DriftCorrected,
    AssignmentFailed,
    PolicyDenied,
    RoleNotResolved,
);

impl Reason {
    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// What the reason says about health.
    pub const fn health(self) -> Health {
        use Reason::*;
        match self {
            Ready
            | Assigned
            | Adopted
            | Resolved
            | Compliant
            | CompliantWithWarnings
            | InSync
            | Valid
            | Created
            | Updated
            | Deleted
            | DriftCorrected
            | Expired
            | ExpiringSoon => Health::Healthy,
            Pending | OutOfSync | CreatePlanned | UpdatePlanned | ChangesPlanned | RemovalPending
            | PrincipalNotFound | TooManyRequests | AzureUnavailable | PimUnavailable => Health::Progressing,
            // The spec, the identity, a role or scope, Azure's refusals, policy denials, cleanup.
            _ => Health::NeedsAttention,
        }
    }

    /// A GrantPolicy's decision (an entry `Denied`, or nothing looked up because of one).
    pub const fn is_policy_denial(self) -> bool {
        use Reason::*;
        matches!(
            self,
            NotResolved
                | NoGrantPolicy
                | IdentityNotAllowed
                | RoleNotAllowed
                | ScopeNotAllowed
                | PrivilegedRole
                | DataRoleOnWorkspaceIdentity
                | TooManyAssignments
                | DurationNotAllowed
                | PolicyDenied
        )
    }

    /// How a grant that carries this reason is retried.
    pub const fn retry(self) -> Retry {
        use Reason::*;
        match self {
            Pending | OutOfSync | RemovalPending | PrincipalNotFound | TooManyRequests | AzureUnavailable
            | PimUnavailable => Retry::Soon,
            ConflictingGrant | InvalidSpec | InvalidPolicy => Retry::OnChange,
            _ if self.is_policy_denial() => Retry::OnChange,
            _ => match self.health() {
                Health::NeedsAttention => Retry::Slowly,
                Health::Healthy | Health::Progressing => Retry::Resync,
            },
        }
    }

    /// Whether it is retried without anyone acting.
    pub const fn retryable(self) -> bool {
        matches!(self.retry(), Retry::Soon)
    }

    /// Where it appears.
    pub const fn appears(self) -> Appears {
        use Reason::*;
        match self {
            Created | Updated | Deleted => Appears::Log,
            DriftCorrected | AssignmentFailed | PolicyDenied | RoleNotResolved | AssignmentsRetained => Appears::Event,
            Adopted
            | Expired
            | ExpiringSoon
            | PimUnavailable
            | PimPolicyRefused
            | ConflictingGrant
            | DataRoleOnWorkspaceIdentity
            | InvalidSpec
            | CredentialError
            | CleanupFailed
            | WorkspaceNotFound
            | AccessConnectorNotFound
            | NoManagedIdentity
            | NoLinkedAccessConnector
            | AccessConnectorHasNoIdentity
            | UserAssignedIdentityNotAttached
            | AuthorizationFailed
            | PrincipalNotFound
            | AzureUnavailable
            | AzureError => Appears::StatusAndEvent,
            _ => Appears::Status,
        }
    }

    /// Whether an Event with this reason is a Warning (else Normal).
    pub const fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::Created
                | Reason::Updated
                | Reason::Deleted
                | Reason::Adopted
                | Reason::Expired
                | Reason::ExpiringSoon
        )
    }

    /// The reason for an ARM failure on an assignment or a scope (the message keeps Azure's own
    /// code). Retryable failures map to retryable reasons and the rest to ones needing a person,
    /// so [`Reason::retry`] agrees with [`ArmError::is_retryable`].
    pub fn of_arm(e: &ArmError) -> Reason {
        match e {
            ArmError::PrincipalNotFound { .. } => Reason::PrincipalNotFound,
            ArmError::RoleDefinitionDoesNotExist { .. } => Reason::RoleNotFound,
            ArmError::AuthorizationFailed { .. } => Reason::AuthorizationFailed,
            ArmError::RoleAssignmentLimitExceeded { .. } => Reason::RoleAssignmentLimitExceeded,
            ArmError::RoleAssignmentUpdateNotPermitted { .. } => Reason::RoleAssignmentUpdateNotPermitted,
            ArmError::NotFound { .. } => Reason::ScopeNotFound,
            ArmError::Throttled { .. } => Reason::TooManyRequests,
            ArmError::Transient { .. } | ArmError::Unauthenticated { .. } => Reason::AzureUnavailable,
            ArmError::RoleAssignmentExists { .. } | ArmError::InvalidRequest { .. } | ArmError::Other { .. } => {
                Reason::AzureError
            }
        }
    }

    /// What it means, for the documentation's table.
    pub const fn meaning(self) -> &'static str {
        use Reason::*;
        match self {
            Ready => "every allowed assignment is in place (Ready); the grant's reason",
            Assigned => "the entry's assignment is in place, made by the operator",
            Adopted => {
                "an assignment for the same principal, role and scope already existed (made elsewhere): the operator uses it and never deletes it; also an Event the first time"
            }
            Pending => "the entry waits for something retried on its own (the message says what)",
            Resolved => "`IdentityResolved` / `RolesResolved`: the identity's principal / every role was found",
            NotResolved => {
                "`IdentityResolved=False`: the identity was not looked up, because no GrantPolicy allows any entry (so Azure is not asked)"
            }
            Compliant => "`PolicyCompliant`: every entry is allowed (the message names the policies)",
            CompliantWithWarnings => {
                "`PolicyCompliant`: allowed, with a governance warning (e.g. a data role on `dbmanagedidentity`)"
            }
            InSync => "`InSync`: Azure matches the spec",
            OutOfSync => "`InSync=False`: some entries are not in place yet (the message lists them)",
            CreatePlanned | UpdatePlanned => {
                "managementPolicy `Observe`: the entry would be created / updated; nothing is written to Azure"
            }
            ChangesPlanned => "`InSync=False` in `Observe` mode: the message counts the changes `Enforce` would make",
            RemovalPending => "an assignment the grant no longer wants could not be removed yet",
            Expired => {
                "the entry's `expiresAt` has passed: its assignment was removed (or stays, adopted or wanted by another grant; the message says which). `Ready` with this reason: every entry has expired. Also the Event of a removal at expiry, saying how late it came when the operator was down"
            }
            ExpiringSoon => {
                "the entry is in place and its access ends within the warning window (`--expiry-warning`, 1 h by default); also an Event once"
            }
            PimUnavailable => {
                "`enforcement: AzurePIM`: Azure refused the PIM request for a reason other than the role's PIM policy (no Entra ID P2/Governance licence, a principal type PIM does not take, a schedule under 5 minutes), so the entry falls back to operator enforcement (`enforcedBy: Operator`); also a Warning Event"
            }
            PimPolicyRefused => {
                "`enforcement: AzurePIM`: the role's PIM policy refused the request (`RoleAssignmentRequestPolicyValidationFailed`, e.g. its `ExpirationRule`); not worked around"
            }
            InvalidSpec => {
                "the spec fails validation (the message names the field); also a grant stored past admission with a value of the wrong type: it is watched untyped, so one such grant never stalls the others. Nothing is sent to Azure"
            }
            CredentialError => {
                "the `azureCredentialRef` Secret is missing or lacks `tenantId`/`clientId`/`clientSecret`"
            }
            WorkspaceNotFound | AccessConnectorNotFound => {
                "the workspace / access connector does not exist, or the operator cannot read it"
            }
            NoManagedIdentity => "the workspace's managed resource group has no `dbmanagedidentity`",
            NoLinkedAccessConnector => "`source: AccessConnector` but the workspace links none",
            AccessConnectorHasNoIdentity | UserAssignedIdentityNotAttached => "the connector has no (such) identity",
            RoleNotFound => "the role does not exist at the scope",
            AmbiguousRole => "the role name matches several definitions",
            ScopeNotFound => {
                "the scope (resource, resource group) does not exist, e.g. deleted after the grant converged; Azure removed its assignments with it"
            }
            AuthorizationFailed => "the credential may not read or assign roles there",
            PrincipalNotFound => "Entra has not replicated a new identity yet (state Pending)",
            RoleAssignmentLimitExceeded => "the subscription holds Azure's maximum of role assignments (4000)",
            RoleAssignmentUpdateNotPermitted => "Azure refused to change an existing assignment in place",
            TooManyRequests => "ARM throttled the request (state Pending)",
            AzureUnavailable => "5xx, timeouts, connection resets, or no token from the token endpoint (state Pending)",
            AzureError => "Azure refused the request for another reason; the message carries Azure's code and text",
            NoGrantPolicy | IdentityNotAllowed | ScopeNotAllowed => {
                "GrantPolicy denial (state `Denied`), decided on the parsed ids before Azure is asked anything, so it reads the same for resources that exist and ones that do not"
            }
            DurationNotAllowed => {
                "GrantPolicy denial (state `Denied`): the policy's `maxDuration` requires an expiry no further away than it, and the entry has none or a later one"
            }
            RoleNotAllowed | PrivilegedRole | TooManyAssignments => {
                "GrantPolicy denial (state `Denied`), decided once the role is resolved"
            }
            DataRoleOnWorkspaceIdentity => {
                "GrantPolicy denial of a data role on `dbmanagedidentity` (`Denied`), or with `warnOnly` a warning Event"
            }
            ConflictingGrant => {
                "an older grant wants the same principal, role and scope with another condition; precedence is (creationTimestamp, then `namespace/name`), so exactly one wins, always the same"
            }
            CleanupFailed => {
                "the grant is being deleted but Azure refused or could not be reached; the finalizer stays"
            }
            AssignmentsRetained => {
                "Event on deletion: assignments were left in Azure (`deletionPolicy: Retain` with an unreadable spec, or the namespace took the credential Secret first); it lists them"
            }
            Valid => "GrantPolicy `Ready`: the policy is in force",
            InvalidPolicy => {
                "GrantPolicy `Ready=False`: the policy fails validation or cannot be read; it allows nothing until fixed"
            }
            Created => "log: an assignment was created (status shows it; not an Event)",
            Updated => "log: an assignment's condition or description was updated in place (not an Event)",
            Deleted => "log: an assignment the grant no longer wants was removed (not an Event)",
            DriftCorrected => "Event: an assignment removed outside the operator was recreated",
            AssignmentFailed => "Event: Azure refused a write for a reason retrying will not fix",
            PolicyDenied => "Event: an entry became denied by GrantPolicy",
            RoleNotResolved => "Event: a role could not be resolved (the message says why)",
        }
    }

    /// What to do about it, for the documentation's table.
    pub const fn action(self) -> &'static str {
        use Reason::*;
        match self {
            InvalidSpec => "fix the manifest",
            CredentialError => "create or fix the Secret",
            WorkspaceNotFound | AccessConnectorNotFound => {
                "check the id; give the operator Reader on its resource group"
            }
            NoManagedIdentity => "check the workspace; use an Access Connector",
            NoLinkedAccessConnector => "link one, or name the connector directly",
            AccessConnectorHasNoIdentity | UserAssignedIdentityNotAttached => {
                "enable its identity / attach the user-assigned identity"
            }
            RoleNotFound => "fix the role",
            AmbiguousRole => "name custom roles by GUID",
            ScopeNotFound => "fix or drop the scope",
            AuthorizationFailed => {
                "give the operator (or the grant's credential) Role Based Access Control Administrator there (docs/install.md)"
            }
            RoleAssignmentLimitExceeded => "remove unused assignments or use groups; retried slowly",
            RoleAssignmentUpdateNotPermitted | AzureError => {
                "read the message; fix the spec or the assignment in Azure"
            }
            NoGrantPolicy
            | IdentityNotAllowed
            | ScopeNotAllowed
            | RoleNotAllowed
            | PrivilegedRole
            | TooManyAssignments
            | DataRoleOnWorkspaceIdentity
            | PolicyDenied => "change the grant or ask the platform team for a policy change",
            DurationNotAllowed => "set `expiresAt` or `activeFor` within the policy's `maxDuration`",
            ExpiringSoon => "extend `expiresAt` / `activeFor` if access is still needed",
            PimUnavailable => {
                "nothing (the operator ends access); for PIM, license PIM or use enforcement Operator for this principal"
            }
            PimPolicyRefused => "shorten the expiry to what the role's PIM policy allows, or change that policy",
            Expired => "nothing; set a later `expiresAt` to assign it again",
            ConflictingGrant => "align the conditions or delete one grant",
            CleanupFailed => "fix the cause; as a last resort remove the finalizer (assignments then stay in Azure)",
            AssignmentsRetained => "remove the listed assignments in Azure, or delete grants before their Secrets",
            InvalidPolicy => "fix the policy",
            AssignmentFailed => "read the message; fix the cause",
            RoleNotResolved => "see `RolesResolved`",
            NotResolved => "see `PolicyCompliant`",
            _ => match self.retry() {
                Retry::Soon => "nothing: retried with backoff (after Azure's Retry-After)",
                _ => "—",
            },
        }
    }

    /// The reason table of `docs/operations.md`.
    pub fn table_markdown() -> String {
        let mut out =
            String::from("| reason | where | health | retried | meaning | what to do |\n|---|---|---|---|---|---|\n");
        for reason in Reason::ALL {
            let where_ = match reason.appears() {
                Appears::Status => "status",
                Appears::Event => "Event",
                Appears::StatusAndEvent => "status, Event",
                Appears::Log => "log",
            };
            let health = match reason.health() {
                Health::Healthy => "healthy",
                Health::Progressing => "Reconciling",
                Health::NeedsAttention => "Stalled",
            };
            let retry = match reason.retry() {
                Retry::Resync => "at resync",
                Retry::Soon => "with backoff",
                Retry::Slowly => "slowly",
                Retry::OnChange => "on a change",
            };
            out.push_str(&format!(
                "| `{}` | {where_} | {health} | {retry} | {} | {} |\n",
                reason.code(),
                reason.meaning(),
                reason.action()
            ));
        }
        out
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named_like_kubernetes_reasons() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "{r} twice");
            // metav1.Condition: reason matches ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$ and is short.
            assert!(r.code().chars().next().is_some_and(|c| c.is_ascii_uppercase()), "{r}");
            assert!(r.code().chars().all(|c| c.is_ascii_alphanumeric()) && r.code().len() <= 64, "{r}");
        }
    }

    #[test]
    fn arm_failures_keep_their_retry_class() {
        let cases = [
            ArmError::PrincipalNotFound { message: "m".into() },
            ArmError::RoleDefinitionDoesNotExist { message: "m".into() },
            ArmError::AuthorizationFailed { message: "m".into() },
            ArmError::NotFound { code: "ResourceGroupNotFound".into(), message: "m".into() },
            ArmError::RoleAssignmentLimitExceeded { message: "m".into() },
            ArmError::RoleAssignmentUpdateNotPermitted { message: "m".into() },
            ArmError::InvalidRequest { code: "InvalidConditionVersion".into(), message: "m".into() },
            ArmError::Throttled { code: "ResourceRequestsThrottled".into(), message: "m".into(), retry_after: None },
            ArmError::Unauthenticated { message: "m".into() },
            ArmError::Transient { status: Some(503), message: "m".into() },
            ArmError::Other { status: 418, code: "Teapot".into(), message: "m".into() },
        ];
        for e in cases {
            let reason = Reason::of_arm(&e);
            assert_eq!(reason.retryable(), e.is_retryable(), "{e:?} -> {reason}");
            assert_ne!(reason.appears(), Appears::Event, "{e:?} -> {reason} is a status reason");
        }
    }

    #[test]
    fn changes_made_are_normal_events_and_failures_warnings() {
        for r in [Reason::Created, Reason::Updated, Reason::Deleted, Reason::Adopted] {
            assert!(!r.is_warning(), "{r}");
        }
        for r in [Reason::DriftCorrected, Reason::PolicyDenied, Reason::AssignmentFailed, Reason::InvalidSpec] {
            assert!(r.is_warning(), "{r}");
        }
    }

    /// The table in docs/operations.md is this enum's; `DBX_BLESS=1` rewrites it.
    #[test]
    fn operations_doc_table_is_generated_from_the_enum() {
        const BEGIN: &str = "<!-- reasons:begin (generated from src/api/reason.rs) -->\n";
        const END: &str = "<!-- reasons:end -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
        let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/operations.md lacks the {BEGIN:?} … {END:?} markers");
        };
        let generated = Reason::table_markdown();
        let current = &doc[start + BEGIN.len()..end];
        if current != generated {
            if std::env::var_os("DBX_BLESS").is_some() {
                let updated = format!("{}{BEGIN}{generated}{}", &doc[..start], &doc[end..]);
                std::fs::write(&path, updated).expect("write docs/operations.md");
            } else {
                panic!(
                    "docs/operations.md's reason table differs from src/api/reason.rs; run DBX_BLESS=1 cargo test --lib reason"
                );
            }
        }
    }
}

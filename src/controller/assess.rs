//! What a reconcile reads and judges before it decides, shared with `plan` (which reports the
//! decision instead of executing it): the policy pre-gate on the parsed ids, the identity, each
//! entry's role, the policy verdicts, the desired set and the assignments at its scopes.

use std::collections::{HashMap, HashSet};

use super::concurrency::Concurrency;
use super::decide::{self, Inputs, PolicyVerdicts, RoleLookup};
use super::expiry::Timing;
use super::plan::{DesiredAssignment, ObservedAssignment, OtherGrants, Precedence};
use super::resolve::{Principal, ResolveError, Resolver, ScopeAssignments};
use crate::api::validation::ValidatedGrant;
use crate::api::{DatabricksIdentityGrantSpec, DatabricksIdentityGrantStatus};
use crate::azure::{ArmClient, ArmError, ResourceId};
use crate::policy::evaluate::{Governing, PolicyMode};

/// The caches and limits the reads go through.
#[derive(Clone, Copy)]
pub struct Caches<'a> {
    pub resolver: &'a Resolver,
    pub scopes: &'a ScopeAssignments,
    pub concurrency: &'a Concurrency,
}

/// Everything read and judged for one grant.
pub struct Assessment {
    /// `None`: not looked up (the pre-gate allows no entry).
    pub principal: Option<Principal>,
    pub roles: Vec<RoleLookup>,
    pub verdicts: PolicyVerdicts,
    pub desired: Vec<DesiredAssignment>,
    pub observed: Vec<ObservedAssignment>,
    /// Desired scopes (normalized) that could not be listed, and why.
    pub unreadable: HashMap<String, ArmError>,
    /// When it was read, and which entries have expired.
    pub timing: Timing,
}

impl Assessment {
    /// The assignment names whose claims by other grants matter to this grant.
    pub fn relevant_names(&self, previous: &DatabricksIdentityGrantStatus) -> HashSet<String> {
        decide::relevant_names(&self.desired, previous, &self.observed)
    }

    /// The inputs of [`decide::decide`].
    pub fn inputs<'a>(
        &'a self,
        spec: &'a DatabricksIdentityGrantSpec,
        previous: &'a DatabricksIdentityGrantStatus,
        enforce: bool,
        others: &'a OtherGrants,
        precedence: &'a Precedence,
    ) -> Inputs<'a> {
        Inputs {
            spec,
            previous,
            enforce,
            principal: self.principal.as_ref(),
            roles: &self.roles,
            verdicts: &self.verdicts,
            desired: &self.desired,
            observed: &self.observed,
            unreadable: &self.unreadable,
            others,
            precedence,
            timing: &self.timing,
        }
    }
}

/// Reads and judges a validated grant. Fails only when its identity does not resolve.
///
/// What no policy could allow costs no ARM call: the pre-gate judges the parsed ids first, and
/// the identity is not even looked up when it allows nothing. Roles are judged once resolved.
/// Expired entries are neither resolved nor judged, so removing them at expiry needs nothing
/// from Azure but the removal.
pub async fn assess(
    caches: Caches<'_>,
    arm: &ArmClient,
    governing: &[Governing<'_>],
    mode: PolicyMode,
    validated: &ValidatedGrant,
    timing: Timing,
) -> Result<Assessment, ResolveError> {
    let identity_id = decide::policy_identity(&validated.identity);
    let prejudged = decide::prejudge(governing, mode, &identity_id, validated);
    let asked = |i: usize| prejudged.get(i).is_some_and(Option::is_none) && !timing.expired(i);
    let principal = if !(0..prejudged.len()).any(asked) {
        None
    } else {
        Some(caches.resolver.principal(arm, &validated.identity).await?)
    };
    let wanted: Vec<bool> = (0..prejudged.len()).map(asked).collect();
    let roles = resolve_roles(caches.resolver, arm, validated, principal.is_some(), &wanted).await;
    let verdicts = decide::judge(governing, mode, validated, &identity_id, &roles, prejudged, &timing);
    let desired = decide::desired_assignments(validated, principal.as_ref(), &roles, &verdicts, &timing);
    let (observed, unreadable) = observe(caches, arm, &desired).await;
    Ok(Assessment { principal, roles, verdicts, desired, observed, unreadable, timing })
}

/// Each entry's role, at its scope (only for `wanted` entries: not denied by the pre-gate, not
/// expired; and not without a principal).
async fn resolve_roles(
    resolver: &Resolver,
    arm: &ArmClient,
    validated: &ValidatedGrant,
    have_principal: bool,
    wanted: &[bool],
) -> Vec<RoleLookup> {
    let mut roles = Vec::with_capacity(validated.role_assignments.len());
    for (index, ra) in validated.role_assignments.iter().enumerate() {
        if !have_principal || !wanted.get(index).copied().unwrap_or(false) {
            roles.push(RoleLookup::NotAsked);
            continue;
        }
        roles.push(match resolver.role(arm, &ra.role, &ra.scope).await {
            Ok(role) => RoleLookup::Resolved(role),
            Err(e) => RoleLookup::Failed(e),
        });
    }
    roles
}

/// The assignments at each desired scope: one (cached) list per distinct scope; scopes that
/// cannot be listed are returned with why.
async fn observe(
    caches: Caches<'_>,
    arm: &ArmClient,
    desired: &[DesiredAssignment],
) -> (Vec<ObservedAssignment>, HashMap<String, ArmError>) {
    let mut observed = Vec::new();
    let mut unreadable = HashMap::new();
    let mut scopes: Vec<&ResourceId> = Vec::new();
    for d in desired {
        if !scopes.iter().any(|s| **s == d.scope) {
            scopes.push(&d.scope);
        }
    }
    scopes.sort_by_key(|s| s.normalized());
    for scope in scopes {
        let _permit = caches.concurrency.arm_permit(scope).await;
        match caches.scopes.list(arm, scope).await {
            Ok(list) => observed.extend(list.iter().filter_map(ObservedAssignment::from_arm)),
            Err(e) => {
                unreadable.insert(scope.normalized(), e);
            }
        }
    }
    (observed, unreadable)
}

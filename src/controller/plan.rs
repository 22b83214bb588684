//! Pure decisions of a reconcile: the deterministic name of an assignment, and the plan that
//! turns what Azure has into what the grant wants. No I/O, so every rule is unit-tested.

use std::collections::HashSet;

use uuid::Uuid;

use crate::api::PrincipalType;
use crate::api::validation::AbacCondition;
use crate::azure::models::RoleAssignment;
use crate::azure::{ResourceId, RoleAssignmentId};

/// Namespace of the UUID v5 assignment names (fixed forever: changing it would orphan every
/// assignment the operator ever made).
const ASSIGNMENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1b_3c58_92a4_4f0e_b7c1_5e2d_8a9f_0c34);

/// The assignment name for (principal, role, scope): Azure's own uniqueness key, so every
/// replica, restart and grant that wants the tuple computes the same name, and a PUT under it
/// is idempotent. Compared case-insensitively, the role by GUID.
pub fn assignment_name(principal_id: &str, role_guid: Uuid, scope: &ResourceId) -> String {
    let key = format!("{}|{}|{}", principal_id.to_ascii_lowercase(), role_guid, scope.normalized());
    Uuid::new_v5(&ASSIGNMENT_NAMESPACE, key.as_bytes()).to_string()
}

/// One assignment the grant wants, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredAssignment {
    /// Index of the spec entry it comes from.
    pub index: usize,
    pub name: String,
    pub scope: ResourceId,
    pub role_definition_id: String,
    pub role_guid: Uuid,
    pub principal_id: String,
    pub principal_type: PrincipalType,
    pub condition: Option<AbacCondition>,
    pub description: Option<String>,
}

impl DesiredAssignment {
    /// The tuple other grants are compared on.
    pub fn tuple(&self) -> (String, Uuid, String) {
        (self.principal_id.to_ascii_lowercase(), self.role_guid, self.scope.normalized())
    }
}

/// An assignment as Azure reports it, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedAssignment {
    pub id: String,
    pub name: String,
    pub scope: ResourceId,
    pub role_guid: Uuid,
    pub role_definition_id: String,
    pub principal_id: String,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub description: Option<String>,
}

/// Whether our assignment `o` already carries everything `d` asks for (condition, its version,
/// description); if not it is updated in place.
pub fn is_as_desired(o: &ObservedAssignment, d: &DesiredAssignment) -> bool {
    let wanted_version = d.condition.as_ref().map(|c| c.version.as_str());
    o.name.eq_ignore_ascii_case(&d.name)
        && o.condition.as_deref() == condition_text(&d.condition)
        && o.condition_version.as_deref() == wanted_version
        && o.description == d.description
}

impl ObservedAssignment {
    /// Parses an ARM assignment; `None` for bodies too broken to use (logged by the caller).
    pub fn from_arm(a: &RoleAssignment) -> Option<Self> {
        let scope = ResourceId::parse(a.properties.scope.as_deref()?).ok()?;
        let role = ResourceId::parse(&a.properties.role_definition_id).ok()?;
        let role_guid = crate::azure::guid::parse_guid(role.name())?;
        Some(ObservedAssignment {
            id: a.id.clone(),
            name: a.name.to_ascii_lowercase(),
            scope,
            role_guid,
            role_definition_id: a.properties.role_definition_id.clone(),
            principal_id: a.properties.principal_id.to_ascii_lowercase(),
            condition: a.properties.condition.clone(),
            condition_version: a.properties.condition_version.clone(),
            description: a.properties.description.clone(),
        })
    }
}

/// What to do about one desired assignment.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Not in Azure: create it (`drift` when this grant had created it before).
    Create { drift: bool },
    /// Ours, but its condition or description differs: update in place.
    Update,
    /// Ours and as wanted.
    InSync,
    /// Someone else's assignment for the same tuple: adopt it (never deleted by us).
    Adopt { id: String, condition_differs: bool },
    /// Another, older grant wants the same tuple with a different condition.
    Conflict { with: String },
}

/// The plan for one grant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// One step per desired assignment, same order.
    pub steps: Vec<Step>,
    /// Assignments this grant created that it no longer wants and no other grant wants.
    pub deletions: Vec<RoleAssignmentId>,
    /// Names this grant created and no longer wants, but another live grant still does: they
    /// leave this grant's record without being deleted.
    pub released: Vec<String>,
    /// The principal's assignments at the grant's scopes that no grant declares.
    pub unmanaged: Vec<ObservedAssignment>,
    /// Warnings for desired assignments, by index: a younger grant asks for the same tuple with
    /// another condition (this grant's condition is kept; both grants report it).
    pub notes: Vec<(usize, String)>,
}

/// One assignment a grant claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Assignment name, lower case.
    pub name: String,
    /// The condition expression its spec asks for.
    pub condition: Option<String>,
    /// `namespace/name` of the grant.
    pub grant: String,
    /// Its creation timestamp (older grants win condition conflicts).
    pub created: String,
}

/// Which of two grants asking for one tuple with different conditions wins: the older one and,
/// between grants created in the same second (creation timestamps have one-second resolution;
/// `kubectl apply -f dir/`, Helm and Argo CD create many at once), the one whose
/// `namespace/name` sorts first. A total order, so exactly one wins, always the same one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// Creation timestamp (RFC 3339, as the API server formats it: lexical order is time order).
    pub created: String,
    /// `namespace/name`.
    pub grant: String,
}

/// What other live grants want, for sharing and conflicts.
#[derive(Debug, Clone, Default)]
pub struct OtherGrants {
    /// Assignment names other grants want.
    pub wanted: HashSet<String>,
    /// `(name, condition, grant "namespace/name", creation timestamp)` of other grants' wants.
    pub claims: Vec<(String, Option<String>, String, String)>,
}

fn condition_text(c: &Option<AbacCondition>) -> Option<&str> {
    c.as_ref().map(|c| c.expression.as_str())
}

/// Plans one grant.
///
/// - `observed`: assignments listed at the grant's scopes (inherited ones included; only exact
///   scope matches count);
/// - `managed`: the assignments this grant created earlier (its record in status);
/// - `creating`: its writes whose outcome was never recorded (the write-ahead record);
/// - `me`: this grant's [`Precedence`] in condition conflicts.
pub fn plan(
    desired: &[DesiredAssignment],
    observed: &[ObservedAssignment],
    managed: &[RoleAssignmentId],
    creating: &[RoleAssignmentId],
    others: &OtherGrants,
    me: &Precedence,
) -> Plan {
    let mut out = Plan::default();
    let precedes_me = |grant: &str, created: &str| (created, grant) < (me.created.as_str(), me.grant.as_str());
    for d in desired {
        // A grant that precedes this one, claiming the same name with another condition, wins.
        let conflict = others.claims.iter().find(|(name, condition, grant, other_created)| {
            *name == d.name && condition.as_deref() != condition_text(&d.condition) && precedes_me(grant, other_created)
        });
        if let Some((_, _, grant, _)) = conflict {
            out.steps.push(Step::Conflict { with: grant.clone() });
            continue;
        }
        for (_, _, grant, _) in others.claims.iter().filter(|(name, condition, grant, other_created)| {
            *name == d.name
                && condition.as_deref() != condition_text(&d.condition)
                && !precedes_me(grant, other_created)
        }) {
            out.notes.push((d.index, format!("grant {grant} asks for the same assignment with another condition; this grant is older, so its condition is kept")));
        }
        let same_tuple = observed.iter().find(|o| {
            o.principal_id.eq_ignore_ascii_case(&d.principal_id) && o.role_guid == d.role_guid && o.scope == d.scope
        });
        let step = match same_tuple {
            None => Step::Create { drift: managed.iter().any(|m| m.has_name(&d.name)) },
            Some(o) if o.name.eq_ignore_ascii_case(&d.name) => {
                if is_as_desired(o, d) {
                    Step::InSync
                } else {
                    Step::Update
                }
            }
            Some(o) => Step::Adopt {
                id: o.id.clone(),
                condition_differs: o.condition.as_deref() != condition_text(&d.condition),
            },
        };
        out.steps.push(step);
    }
    let wanted: HashSet<String> = desired.iter().map(|d| d.name.to_ascii_lowercase()).collect();
    // Writes whose outcome was never recorded may have created the assignment: removed like
    // recorded ones when no longer wanted (a 404 then is fine), but never counted as drift.
    let mut candidates: HashSet<String> = HashSet::new();
    for id in managed.iter().chain(creating) {
        let name = id.name().to_ascii_lowercase();
        if wanted.contains(&name) || !candidates.insert(name.clone()) {
            continue;
        }
        if others.wanted.contains(&name) {
            out.released.push(name);
        } else {
            // Deleting one already gone is a no-op (204), so no list is needed first.
            out.deletions.push(RoleAssignmentId::new(id.scope().clone(), name));
        }
    }
    let principal = desired.first().map(|d| d.principal_id.to_ascii_lowercase());
    let scopes: Vec<&ResourceId> = desired.iter().map(|d| &d.scope).collect();
    for o in observed {
        let ours = principal.as_deref() == Some(o.principal_id.as_str());
        let at_our_scope = scopes.iter().any(|s| **s == o.scope);
        // Named by this operator for its own tuple: some grant made it. Another grant's fresh
        // creation shows in the list before that grant's status claims it; reporting it as
        // unmanaged until then made one more status write for each grant sharing a principal
        // and scope (issue 24). What a deleted grant left (`deletionPolicy: Retain`), `audit` lists.
        let made_here = o.name == assignment_name(&o.principal_id, o.role_guid, &o.scope);
        let declared = made_here
            || wanted.contains(&o.name)
            || others.wanted.contains(&o.name)
            || managed.iter().any(|m| m.has_name(&o.name))
            || desired.iter().any(|d| d.role_guid == o.role_guid && d.scope == o.scope);
        if ours && at_our_scope && !declared && !out.unmanaged.iter().any(|u| u.name == o.name) {
            out.unmanaged.push(o.clone());
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
    const P: &str = "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb";

    fn scope(rg: &str) -> ResourceId {
        ResourceId::resource_group(SUB, rg)
    }

    fn role(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn desired(index: usize, rg: &str, r: u128, condition: Option<&str>) -> DesiredAssignment {
        let s = scope(rg);
        DesiredAssignment {
            index,
            name: assignment_name(P, role(r), &s),
            scope: s,
            role_definition_id: format!(
                "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}",
                role(r)
            ),
            role_guid: role(r),
            principal_id: P.into(),
            principal_type: PrincipalType::ServicePrincipal,
            condition: condition.map(|c| AbacCondition { expression: c.into(), version: "2.0".into() }),
            description: None,
        }
    }

    /// Azure's view of `d` under `name` (shared with decide's tests).
    pub(crate) fn observed_from(d: &DesiredAssignment, name: &str) -> ObservedAssignment {
        ObservedAssignment {
            id: RoleAssignmentId::new(d.scope.clone(), name).to_string(),
            name: name.into(),
            scope: d.scope.clone(),
            role_guid: d.role_guid,
            role_definition_id: d.role_definition_id.clone(),
            principal_id: P.into(),
            condition: d.condition.as_ref().map(|c| c.expression.clone()),
            condition_version: d.condition.as_ref().map(|c| c.version.clone()),
            description: None,
        }
    }

    #[test]
    fn names_are_deterministic_and_case_blind() {
        let a = assignment_name(P, role(1), &scope("rg-a"));
        let b = assignment_name(
            &P.to_uppercase(),
            role(1),
            &ResourceId::parse(&scope("RG-A").to_string().to_uppercase().replace("SUBSCRIPTIONS", "subscriptions"))
                .expect("id"),
        );
        assert_eq!(a, b);
        assert_ne!(a, assignment_name(P, role(2), &scope("rg-a")));
        assert_ne!(a, assignment_name(P, role(1), &scope("rg-b")));
        assert!(crate::azure::guid::is_guid(&a));
    }

    #[test]
    fn creates_keeps_updates_and_adopts() {
        let want = vec![
            desired(0, "rg-a", 1, None),
            desired(1, "rg-b", 1, Some("x")),
            desired(2, "rg-c", 2, None),
            desired(3, "rg-d", 3, None),
        ];
        let mut changed = observed_from(&want[1], &want[1].name);
        changed.condition = Some("old".into());
        let observed =
            vec![observed_from(&want[0], &want[0].name), changed, observed_from(&want[2], "someone-elses-name")];
        let p = plan(&want, &observed, &[id_of(&want[3])], &[], &OtherGrants::default(), &me("2026-01-01T00:00:00Z"));
        assert_eq!(p.steps[0], Step::InSync);
        assert_eq!(p.steps[1], Step::Update);
        assert!(
            matches!(&p.steps[2], Step::Adopt { id, condition_differs: false } if id.ends_with("someone-elses-name"))
        );
        assert_eq!(p.steps[3], Step::Create { drift: true }, "created before, now missing: drift");
        assert!(p.deletions.is_empty() && p.unmanaged.is_empty());
    }

    #[test]
    fn stale_assignments_are_deleted_unless_another_grant_wants_them() {
        let old = desired(0, "rg-old", 1, None);
        let shared = desired(0, "rg-shared", 1, None);
        let want = vec![desired(0, "rg-new", 1, None)];
        let observed = vec![observed_from(&old, &old.name), observed_from(&shared, &shared.name)];
        let others = OtherGrants { wanted: [shared.name.clone()].into(), claims: vec![] };
        let managed = [id_of(&old), id_of(&shared)];
        let p = plan(&want, &observed, &managed, &[], &others, &me("t"));
        assert_eq!(p.deletions, vec![id_of(&old)]);
        assert_eq!(p.released, vec![shared.name.clone()]);
        assert_eq!(p.steps, vec![Step::Create { drift: false }]);
    }

    #[test]
    fn unconfirmed_writes_are_removed_when_unwanted_and_never_drift() {
        let written_then_changed = desired(0, "rg-old", 1, None);
        let still_wanted = desired(0, "rg-new", 1, None);
        let want = vec![still_wanted.clone()];
        let creating = [id_of(&written_then_changed), id_of(&still_wanted)];
        let p = plan(&want, &[], &[], &creating, &OtherGrants::default(), &me("t"));
        assert_eq!(p.deletions, vec![id_of(&written_then_changed)]);
        assert_eq!(p.steps, vec![Step::Create { drift: false }], "a write never confirmed is not drift");
        // Recorded as both (a write confirmed by a list before its status update): one deletion.
        let both = [id_of(&written_then_changed)];
        let p = plan(&[], &[], &both, &both, &OtherGrants::default(), &me("t"));
        assert_eq!(p.deletions.len(), 1);
    }

    fn id_of(d: &DesiredAssignment) -> RoleAssignmentId {
        RoleAssignmentId::new(d.scope.clone(), d.name.clone())
    }

    fn me(created: &str) -> Precedence {
        Precedence { created: created.into(), grant: "ns/me".into() }
    }

    #[test]
    fn of_two_grants_created_in_the_same_second_exactly_one_wins() {
        let want = vec![desired(0, "rg-a", 1, Some("mine"))];
        let name = want[0].name.clone();
        let second = "2026-01-01T00:00:00Z";
        let claim_of = |grant: &str, condition: &str| OtherGrants {
            wanted: [name.clone()].into(),
            claims: vec![(name.clone(), Some(condition.into()), grant.into(), second.into())],
        };
        let a = Precedence { created: second.into(), grant: "ns/a".into() };
        let b = Precedence { created: second.into(), grant: "ns/b".into() };
        let a_plan = plan(&want, &[], &[], &[], &claim_of("ns/b", "theirs"), &a);
        let b_plan = plan(&want, &[], &[], &[], &claim_of("ns/a", "theirs"), &b);
        assert_eq!(a_plan.steps, vec![Step::Create { drift: false }], "ns/a sorts first and wins");
        assert_eq!(b_plan.steps, vec![Step::Conflict { with: "ns/a".into() }]);
    }

    #[test]
    fn the_older_grant_wins_a_condition_conflict() {
        let want = vec![desired(0, "rg-a", 1, Some("mine"))];
        let name = want[0].name.clone();
        let older = OtherGrants {
            wanted: [name.clone()].into(),
            claims: vec![(name.clone(), Some("theirs".into()), "ns/older".into(), "2026-01-01T00:00:00Z".into())],
        };
        let p = plan(&want, &[], &[], &[], &older, &me("2026-02-01T00:00:00Z"));
        assert_eq!(p.steps, vec![Step::Conflict { with: "ns/older".into() }]);
        // The same claim from a younger grant does not block this one.
        let p = plan(&want, &[], &[], &[], &older, &me("2025-12-01T00:00:00Z"));
        assert_eq!(p.steps, vec![Step::Create { drift: false }]);
        assert!(p.notes[0].1.contains("ns/older"), "the older grant reports the conflict too");
        // Same condition is sharing, not a conflict.
        let same = OtherGrants {
            wanted: [name.clone()].into(),
            claims: vec![(name, Some("mine".into()), "ns/older".into(), "2026-01-01T00:00:00Z".into())],
        };
        assert_eq!(
            plan(&want, &[], &[], &[], &same, &me("2026-02-01T00:00:00Z")).steps,
            vec![Step::Create { drift: false }]
        );
    }

    #[test]
    fn undeclared_assignments_of_the_principal_are_reported_not_touched() {
        let want = vec![desired(0, "rg-a", 1, None)];
        let foreign_role = desired(0, "rg-a", 9, None);
        let elsewhere = desired(0, "rg-zzz", 9, None);
        let observed = vec![observed_from(&foreign_role, "f1"), observed_from(&elsewhere, "f2")];
        let p = plan(&want, &observed, &[], &[], &OtherGrants::default(), &me("t"));
        assert_eq!(p.unmanaged.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["f1"]);
        assert!(p.deletions.is_empty());
    }

    /// Another grant's creation, listed before that grant's status claims it: named by the
    /// operator for its tuple, so not reported (reporting it flapped every such grant's status).
    #[test]
    fn an_assignment_the_operator_named_is_not_reported_as_unmanaged() {
        let want = vec![desired(0, "rg-a", 1, None)];
        let other_grants = desired(0, "rg-a", 9, None);
        let observed = vec![observed_from(&other_grants, &other_grants.name)];
        let p = plan(&want, &observed, &[], &[], &OtherGrants::default(), &me("t"));
        assert!(p.unmanaged.is_empty(), "{:?}", p.unmanaged);
        assert!(p.deletions.is_empty());
    }
}

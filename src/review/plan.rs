//! `plan`: what `Enforce` would do for the grants in some files, for pull-request checks. The
//! same steps as a reconcile (`controller/assess.rs`, shared with it), read-only: validate, judge with the
//! policies (the files' and, with `--kubeconfig`, the cluster's), resolve the identity and
//! roles, list the scopes, and [`decide`](crate::controller::decide::decide) with the live
//! grant's status (when the cluster has it) — then report the decision instead of executing it.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::manifests::{FileGrant, namespace_labels};
use crate::api::validation::validate_grant_spec;
use crate::api::{AssignmentState, DatabricksIdentityGrant, DatabricksIdentityGrantStatus, GrantPolicy, Reason};
use crate::azure::ArmClient;
use crate::controller::assess::{Caches, assess};
use crate::controller::claims::{ClaimIndex, RelistTracker};
use crate::controller::concurrency::Concurrency;
use crate::controller::decide::{self, Decision};
use crate::controller::pim;
use crate::controller::plan::{ObservedAssignment, Precedence, Step};
use crate::controller::resolve::{Resolver, ScopeAssignments};
use crate::policy::evaluate::{Governing, PolicyMode};

/// What would happen to one assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Change {
    Create,
    /// The assignment exists under the operator's name with another condition or description.
    Update {
        fields: Vec<String>,
    },
    /// An assignment made otherwise is used as is.
    Adopt {
        existing: String,
    },
    /// The grant no longer wants an assignment it created.
    Remove {
        assignment_id: String,
    },
    Denied {
        reason: String,
        message: String,
    },
    /// It cannot be planned (identity, role or scope not found, Azure unreadable …).
    Error {
        reason: String,
        message: String,
    },
    Unchanged,
    /// Past its `expiresAt`: not wanted any more (its removal, if any, is a `Remove` line).
    Expired {
        message: String,
    },
}

impl Change {
    fn is_change(&self) -> bool {
        matches!(self, Change::Create | Change::Update { .. } | Change::Adopt { .. } | Change::Remove { .. })
    }
    fn is_error(&self) -> bool {
        matches!(self, Change::Denied { .. } | Change::Error { .. })
    }
    fn symbol(&self) -> &'static str {
        match self {
            Change::Create => "+ create   ",
            Change::Update { .. } => "~ update   ",
            Change::Adopt { .. } => "= adopt    ",
            Change::Remove { .. } => "- remove   ",
            Change::Denied { .. } => "! denied   ",
            Change::Error { .. } => "! error    ",
            Change::Unchanged => "  unchanged",
            Change::Expired { .. } => "  expired  ",
        }
    }
}

/// One line of a grant's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedEntry {
    /// `role at scope` (a removal: the assignment id).
    pub subject: String,
    #[serde(flatten)]
    pub change: Change,
}

/// One grant's plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantPlan {
    /// `namespace/name`.
    pub grant: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Whether the cluster holds this grant already (its status was planned against).
    pub live: bool,
    pub entries: Vec<PlannedEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Counts over every grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    pub create: usize,
    pub update: usize,
    pub adopt: usize,
    pub remove: usize,
    pub denied: usize,
    pub errors: usize,
    pub unchanged: usize,
}

/// The plan of every grant in the files.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    pub grants: Vec<GrantPlan>,
    pub summary: PlanSummary,
}

impl PlanReport {
    /// `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes, 1 something cannot be
    /// applied as written (a denial, an unresolvable identity, role or scope).
    pub fn exit_code(&self) -> u8 {
        let entries = || self.grants.iter().flat_map(|g| &g.entries);
        if entries().any(|e| e.change.is_error()) {
            1
        } else if entries().any(|e| e.change.is_change()) {
            2
        } else {
            0
        }
    }

    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        format!(
            "Plan: {} to create, {} to update, {} to adopt, {} to remove; {} denied, {} error(s); {} unchanged.",
            s.create, s.update, s.adopt, s.remove, s.denied, s.errors, s.unchanged
        )
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for g in &self.grants {
            let principal = g.principal_id.as_deref().map(|p| format!(", principal {p}")).unwrap_or_default();
            let live = if g.live { "in the cluster" } else { "new" };
            let _ = writeln!(out, "grant {} ({}; {live}{principal})", g.grant, g.source);
            for e in &g.entries {
                let detail = match &e.change {
                    Change::Update { fields } => format!(" ({} differs)", fields.join(", ")),
                    Change::Adopt { existing } => format!(" (existing {existing})"),
                    Change::Denied { reason, message } | Change::Error { reason, message } => {
                        format!(": {reason}: {message}")
                    }
                    Change::Expired { message } => format!(": {message}"),
                    _ => String::new(),
                };
                let _ = writeln!(out, "  {} {}{detail}", e.change.symbol(), e.subject);
            }
            for note in &g.notes {
                let _ = writeln!(out, "  note: {note}");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "{}", self.summary_line());
        out
    }
}

/// What the plan is made against.
pub struct PlanInputs<'a> {
    pub grants: &'a [FileGrant],
    /// The files' policies, then the cluster's (a file's policy replaces the cluster's of the
    /// same name: the pull request changes it).
    pub policies: Vec<GrantPolicy>,
    /// Namespace labels: the files', then the cluster's.
    pub namespaces: HashMap<String, std::collections::BTreeMap<String, String>>,
    /// The cluster's grants (empty without `--kubeconfig`).
    pub live: Vec<DatabricksIdentityGrant>,
    pub policy_mode: PolicyMode,
}

/// Plans every grant of the files.
pub async fn plan(arm: &ArmClient, inputs: PlanInputs<'_>) -> PlanReport {
    let resolver = Resolver::new(std::time::Duration::from_secs(600));
    let scopes = ScopeAssignments::new(std::time::Duration::from_secs(600));
    let concurrency = Concurrency::new(8);
    let claims = ClaimIndex::default();
    let mut tracker = RelistTracker::new(None);
    let planned: std::collections::HashSet<String> =
        inputs.grants.iter().map(|g| crate::controller::grant_key(&g.grant)).collect();
    for live in &inputs.live {
        // A grant the files replace claims what its new spec will (known after planning), not
        // what its status says.
        if !planned.contains(&crate::controller::grant_key(live)) {
            claims.observe(&mut tracker, &kube::runtime::watcher::Event::Apply(live.clone()));
        }
    }
    let mut report = PlanReport { grants: Vec::new(), summary: PlanSummary::default() };
    for file_grant in inputs.grants {
        let key = crate::controller::grant_key(&file_grant.grant);
        let live = inputs.live.iter().find(|g| crate::controller::grant_key(g) == key);
        let caches = Caches { resolver: &resolver, scopes: &scopes, concurrency: &concurrency };
        let planned = plan_grant(arm, caches, &claims, &inputs, file_grant, live).await;
        for e in &planned.entries {
            let s = &mut report.summary;
            match e.change {
                Change::Create => s.create += 1,
                Change::Update { .. } => s.update += 1,
                Change::Adopt { .. } => s.adopt += 1,
                Change::Remove { .. } => s.remove += 1,
                Change::Denied { .. } => s.denied += 1,
                Change::Error { .. } => s.errors += 1,
                Change::Unchanged | Change::Expired { .. } => s.unchanged += 1,
            }
        }
        report.grants.push(planned);
    }
    report
}

async fn plan_grant(
    arm: &ArmClient,
    caches: Caches<'_>,
    claims: &ClaimIndex,
    inputs: &PlanInputs<'_>,
    file_grant: &FileGrant,
    live: Option<&DatabricksIdentityGrant>,
) -> GrantPlan {
    let grant = &file_grant.grant;
    let namespace = grant.metadata.namespace.clone().unwrap_or_default();
    let mut out = GrantPlan {
        grant: crate::controller::grant_key(grant),
        source: file_grant.source.clone(),
        principal_id: None,
        live: live.is_some(),
        entries: Vec::new(),
        notes: Vec::new(),
    };
    let subject = |i: usize| decide::described(&grant.spec, i, &grant.spec.role_assignments[i].scope);
    let all_error = |out: &mut GrantPlan, reason: Reason, message: String| {
        for i in 0..grant.spec.role_assignments.len() {
            out.entries.push(PlannedEntry {
                subject: subject(i),
                change: Change::Error { reason: reason.code().into(), message: message.clone() },
            });
        }
    };
    let validated = match validate_grant_spec(&grant.spec) {
        Ok(v) => v,
        Err(errors) => {
            all_error(&mut out, Reason::InvalidSpec, errors.to_string());
            return out;
        }
    };
    if let Some(secret) = &validated.credential_secret {
        out.notes.push(format!(
            "planned with this command's Azure credential; the operator will use the grant's Secret {secret}"
        ));
    }
    let previous: DatabricksIdentityGrantStatus = live.and_then(|g| g.status.clone()).unwrap_or_default();
    let labels = namespace_labels(inputs.namespaces.get(&namespace), &namespace);
    let policies = crate::controller::index::governing(inputs.policies.iter(), &labels);
    let governing: Vec<Governing<'_>> = policies.iter().map(|(name, policy)| Governing { name, policy }).collect();
    let timing = crate::controller::expiry::timing(
        &grant.spec,
        &validated,
        &previous,
        k8s_openapi::jiff::Timestamp::now(),
        std::time::Duration::ZERO,
    );
    let mut assessment = match assess(caches, arm, &governing, inputs.policy_mode, &validated, timing).await {
        Ok(assessment) => assessment,
        Err(e) => {
            all_error(&mut out, e.reason, e.message);
            return out;
        }
    };
    out.principal_id = assessment.principal.as_ref().map(|p| p.principal_id.clone());
    // Entries Azure PIM holds are planned against their PIM schedules, as the operator does.
    let held = pim::held(&grant.spec, &validated, &previous, &assessment.timing);
    let (by_pim, rest): (Vec<_>, Vec<_>) =
        std::mem::take(&mut assessment.desired).into_iter().partition(|d| held.contains(&d.index));
    assessment.desired = rest;
    assessment.observed.retain(|o| !pim::carries(o, &by_pim));
    let mut pim_lines = Vec::new();
    for d in &by_pim {
        let Some(end) = pim::end_of(&assessment.timing, d.index) else { continue };
        let change = match arm.list_role_assignment_schedules(&d.scope, &d.principal_id).await {
            Ok(listed) => match pim::step(d, end, &listed, &previous.managed_schedules) {
                pim::PimStep::InSync(_) => Change::Unchanged,
                pim::PimStep::Move(_) => Change::Update { fields: vec!["expiresAt (Azure PIM)".into()] },
                pim::PimStep::Assign => Change::Create,
                pim::PimStep::Adopt(s) => Change::Adopt { existing: s.schedule_id },
            },
            Err(e) => Change::Error { reason: Reason::of_arm(&e).code().into(), message: e.to_string() },
        };
        pim_lines.push((d.index, change));
    }
    let others = claims.others(live.and_then(|g| g.metadata.uid.as_deref()), &assessment.relevant_names(&previous));
    let precedence = Precedence {
        created: live
            .and_then(|g| g.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.to_string())
            // A new grant is younger than every live one.
            .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string()),
        grant: out.grant.clone(),
    };
    let decision = decide::decide(&assessment.inputs(&grant.spec, &previous, true, &others, &precedence));
    out.entries = entries_of(grant, &previous, &decision, &assessment.observed);
    for (index, change) in pim_lines {
        if let Some(line) = out.entries.get_mut(index) {
            line.change = change;
        }
    }
    out.notes.extend(decision.notes.iter().map(|(i, note)| format!("{}: {note}", subject(*i))));
    out
}

/// The decision as plan lines, in spec order, removals last (pure).
pub fn entries_of(
    grant: &DatabricksIdentityGrant,
    previous: &DatabricksIdentityGrantStatus,
    decision: &Decision,
    observed: &[ObservedAssignment],
) -> Vec<PlannedEntry> {
    let mut entries = Vec::new();
    for (index, spec) in grant.spec.role_assignments.iter().enumerate() {
        let subject = format!("{} at {}", spec.role, spec.scope);
        let change = if let Some(write) = decision.writes.iter().find(|w| w.desired.index == index) {
            match write.step {
                Step::Update => {
                    let existing = observed.iter().find(|o| o.name.eq_ignore_ascii_case(&write.desired.name));
                    let mut fields = Vec::new();
                    if let Some(o) = existing {
                        if o.condition.as_deref() != write.desired.condition.as_ref().map(|c| c.expression.as_str()) {
                            fields.push("condition".to_owned());
                        }
                        if o.description != write.desired.description {
                            fields.push("description".to_owned());
                        }
                    }
                    Change::Update { fields }
                }
                _ => Change::Create,
            }
        } else {
            match decision.entries.get(index).cloned().flatten() {
                None => Change::Error { reason: Reason::Pending.code().into(), message: "not decided".into() },
                Some(st) => {
                    let reason = st.reason.clone().unwrap_or_default();
                    let message = st.message.clone().unwrap_or_default();
                    match st.state {
                        AssignmentState::Assigned => Change::Unchanged,
                        AssignmentState::Adopted => {
                            let existing = st.assignment_id.clone().unwrap_or_default();
                            let already = previous.role_assignments.iter().any(|p| {
                                p.state == AssignmentState::Adopted && p.assignment_id.as_ref() == Some(&existing)
                            });
                            if already { Change::Unchanged } else { Change::Adopt { existing } }
                        }
                        AssignmentState::Denied => Change::Denied { reason, message },
                        AssignmentState::Expired => Change::Expired { message },
                        _ => Change::Error { reason, message },
                    }
                }
            }
        };
        entries.push(PlannedEntry { subject, change });
    }
    for id in &decision.removals {
        entries
            .push(PlannedEntry { subject: id.to_string(), change: Change::Remove { assignment_id: id.to_string() } });
    }
    entries
}

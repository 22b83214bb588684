//! `metav1.Condition` bookkeeping with the API's semantics: `lastTransitionTime` changes only
//! when `status` changes; `observedGeneration` records the spec generation judged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{Health, Reason};

pub const READY: &str = "Ready";
pub const IDENTITY_RESOLVED: &str = "IdentityResolved";
pub const ROLES_RESOLVED: &str = "RolesResolved";
pub const POLICY_COMPLIANT: &str = "PolicyCompliant";
pub const IN_SYNC: &str = "InSync";
/// kstatus's "work in progress" condition (retried without anyone acting).
pub const RECONCILING: &str = "Reconciling";
/// kstatus's "failed, needs a person" condition.
pub const STALLED: &str = "Stalled";

/// A condition as a reconcile decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Decided {
    pub fn new(type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Decided { type_, status, reason, message: message.into() }
    }
}

/// Adds `Reconciling` and `Stalled` to decided conditions that include `Ready`, so GitOps tools
/// (kstatus, Flux, Argo CD) read the outcome without configuration: exactly one of the three is
/// True. `Ready=False` is Stalled when its reason needs a person ([`Health::NeedsAttention`])
/// and Reconciling otherwise. All three carry `Ready`'s reason; only the True one its message.
pub fn summarised(mut decided: Vec<Decided>) -> Vec<Decided> {
    decided.retain(|d| d.type_ != RECONCILING && d.type_ != STALLED);
    let Some(ready) = decided.iter().find(|d| d.type_ == READY).cloned() else {
        return decided;
    };
    let stalled = !ready.status && ready.reason.health() == Health::NeedsAttention;
    let reconciling = !ready.status && !stalled;
    for (type_, status) in [(RECONCILING, reconciling), (STALLED, stalled)] {
        let message = if status { ready.message.clone() } else { String::new() };
        decided.push(Decided::new(type_, status, ready.reason, message));
    }
    decided
}

/// Which of `Ready`, `Reconciling` and `Stalled` is True in written conditions (`None`
/// before the first status with them).
pub fn health_of(conditions: &[Condition]) -> Option<&'static str> {
    [STALLED, RECONCILING, READY].into_iter().find(|t| conditions.iter().any(|c| c.type_ == *t && c.status == "True"))
}

/// Merges decided conditions into the previous ones: keeps `lastTransitionTime` when the
/// status is unchanged, keeps conditions of other types, orders by type.
pub fn merge(previous: &[Condition], decided: &[Decided], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        previous.iter().filter(|c| !decided.iter().any(|d| d.type_ == c.type_)).cloned().collect();
    for d in decided {
        let status = if d.status { "True" } else { "False" }.to_owned();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: d.type_.to_owned(),
            status,
            reason: d.reason.code().to_owned(),
            // The API caps messages at 32 KiB; keep status small.
            message: d.message.chars().take(4000).collect(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("timestamp")
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let first = merge(&[], &[Decided::new(READY, false, Reason::Pending, "waiting")], Some(1), at(100));
        assert_eq!(first[0].last_transition_time, Time(at(100)));
        let same =
            merge(&first, &[Decided::new(READY, false, Reason::TooManyRequests, "still waiting")], Some(2), at(200));
        assert_eq!(same[0].last_transition_time, Time(at(100)), "reason changes do not move it");
        assert_eq!(same[0].reason, "TooManyRequests");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Decided::new(READY, true, Reason::Ready, "ok")], Some(2), at(300));
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
    }

    #[test]
    fn exactly_one_of_ready_reconciling_stalled_is_true() {
        let cases = [
            (true, Reason::Ready, READY),
            (true, Reason::ChangesPlanned, READY),
            (false, Reason::TooManyRequests, RECONCILING),
            (false, Reason::PrincipalNotFound, RECONCILING),
            (false, Reason::AzureUnavailable, RECONCILING),
            (false, Reason::Pending, RECONCILING),
            (false, Reason::RemovalPending, RECONCILING),
            (false, Reason::InvalidSpec, STALLED),
            (false, Reason::RoleNotFound, STALLED),
            (false, Reason::ScopeNotFound, STALLED),
            (false, Reason::AuthorizationFailed, STALLED),
            (false, Reason::RoleNotAllowed, STALLED),
            (false, Reason::NoGrantPolicy, STALLED),
            (false, Reason::ConflictingGrant, STALLED),
            (false, Reason::CredentialError, STALLED),
            (false, Reason::RoleAssignmentLimitExceeded, STALLED),
            (false, Reason::InvalidPolicy, STALLED),
        ];
        for (status, reason, expected) in cases {
            let decided = summarised(vec![
                Decided::new(IN_SYNC, false, Reason::OutOfSync, "x"),
                Decided::new(READY, status, reason, "why"),
            ]);
            let true_ones: Vec<_> = decided.iter().filter(|d| d.status && d.type_ != IN_SYNC).collect();
            assert_eq!(true_ones.len(), 1, "{reason}: {decided:?}");
            assert_eq!(true_ones[0].type_, expected, "{reason}");
            assert_eq!(true_ones[0].message, "why");
            assert!(decided.iter().filter(|d| d.type_ != IN_SYNC).all(|d| d.reason == reason));
        }
        // Summarising twice changes nothing; without Ready nothing is added.
        let once = summarised(vec![Decided::new(READY, false, Reason::RoleNotFound, "m")]);
        assert_eq!(summarised(once.clone()), once);
        assert_eq!(summarised(vec![Decided::new(IN_SYNC, true, Reason::InSync, "")]).len(), 1);
    }

    #[test]
    fn keeps_other_types_and_orders_by_type() {
        let a = merge(
            &[],
            &[Decided::new(READY, true, Reason::Ready, ""), Decided::new(IN_SYNC, true, Reason::InSync, "")],
            None,
            at(1),
        );
        let b = merge(&a, &[Decided::new(IDENTITY_RESOLVED, true, Reason::Resolved, "")], None, at(2));
        assert_eq!(b.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), [IDENTITY_RESOLVED, IN_SYNC, READY]);
    }
}

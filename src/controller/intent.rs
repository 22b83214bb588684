//! The write-ahead record of a grant's first creations, carried in the same metadata patch that
//! adds the finalizer (one Kubernetes write instead of two; issue 24).
//!
//! Every create is recorded before its PUT, so that a crash between the PUT and the status
//! write cannot leave an assignment no record names (it would never be removed). Later creates
//! are recorded in `status.creatingAssignments`; a grant's first ones go into the annotation
//! [`ANNOTATION`] together with the finalizer. The annotation is never cleared (a status write
//! cannot touch metadata, and clearing it would cost the write this saves): it names the status
//! it was written over by a fingerprint, and counts only while the status is still that one.
//! The first status write after it carries what is still unsettled in `creatingAssignments`,
//! so from then on the status alone is the record.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{DatabricksIdentityGrant, DatabricksIdentityGrantStatus};

/// The annotation: JSON `{"over": <status fingerprint>, "creating": [<assignment id>…]}`.
pub const ANNOTATION: &str = "identity.dbx-operator.io/creating";

/// Namespace of the status fingerprints (UUID v5 of the status JSON).
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x3f6e_2a91_7c4d_4b8e_9a05_d1c2_b3e4_f5a6);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Fingerprint of the status the record was written over.
    pub over: String,
    /// Assignment ids about to be created.
    pub creating: Vec<String>,
}

/// A fingerprint of a status as stored (`none` when there is none).
pub fn fingerprint(status: Option<&DatabricksIdentityGrantStatus>) -> String {
    match status.and_then(|s| serde_json::to_vec(s).ok()) {
        Some(bytes) => Uuid::new_v5(&FINGERPRINT_NAMESPACE, &bytes).to_string(),
        None => "none".to_owned(),
    }
}

/// The annotation's value recording `ids` over the grant's current status.
pub fn annotation(grant: &DatabricksIdentityGrant, ids: &[String]) -> String {
    let intent = Intent { over: fingerprint(grant.status.as_ref()), creating: ids.to_vec() };
    serde_json::to_string(&intent).unwrap_or_default()
}

/// The creates the annotation still records: none once a status was written after it (or when
/// it does not parse: written by hand, it is not the operator's record).
pub fn pending(grant: &DatabricksIdentityGrant) -> Vec<String> {
    let Some(text) = grant.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION)) else { return Vec::new() };
    let Ok(intent) = serde_json::from_str::<Intent>(text) else { return Vec::new() };
    if intent.over == fingerprint(grant.status.as_ref()) { intent.creating } else { Vec::new() }
}

/// Drops the annotation from a watched copy once it no longer counts: kept in the cache it was
/// about 400 bytes per grant for nothing (2 MB at 5000 grants).
pub fn drop_settled(grant: &mut DatabricksIdentityGrant) {
    let settled =
        grant.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION)) && pending(grant).is_empty();
    if let (true, Some(annotations)) = (settled, grant.metadata.annotations.as_mut()) {
        annotations.remove(ANNOTATION);
        if annotations.is_empty() {
            grant.metadata.annotations = None;
        }
    }
}

/// The grant's record: its status, with the annotation's still-pending creates added to
/// `creatingAssignments`. What every reconcile and cleanup starts from.
pub fn recorded(grant: &DatabricksIdentityGrant) -> DatabricksIdentityGrantStatus {
    let mut status = grant.status.clone().unwrap_or_default();
    for id in pending(grant) {
        let known =
            status.creating_assignments.iter().chain(&status.managed_assignments).any(|s| s.eq_ignore_ascii_case(&id));
        if !known {
            status.creating_assignments.push(id);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DatabricksIdentityGrantSpec;

    const ID: &str = "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/0b2c1d8e-1111-5222-8333-944455566677";

    fn grant(status: Option<DatabricksIdentityGrantStatus>) -> DatabricksIdentityGrant {
        let spec: DatabricksIdentityGrantSpec = serde_json::from_value(serde_json::json!({
            "identity": {"accessConnector": {"resourceId": "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg/providers/Microsoft.Databricks/accessConnectors/ac"}},
            "roleAssignments": [{"role": "Reader", "scope": "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg"}]
        }))
        .expect("spec");
        let mut g = DatabricksIdentityGrant::new("g", spec);
        g.status = status;
        g
    }

    fn annotated(mut g: DatabricksIdentityGrant, value: String) -> DatabricksIdentityGrant {
        g.metadata.annotations = Some([(ANNOTATION.to_owned(), value)].into());
        g
    }

    #[test]
    fn the_record_counts_until_a_status_is_written_after_it() {
        // Written on a grant with no status yet (its first creation), then a crash.
        let fresh = grant(None);
        let value = annotation(&fresh, &[ID.to_owned()]);
        let crashed = annotated(fresh, value.clone());
        assert_eq!(pending(&crashed), vec![ID.to_owned()]);
        assert_eq!(recorded(&crashed).creating_assignments, vec![ID.to_owned()]);

        // The status written after the PUT supersedes it, whatever it says.
        for later in [
            DatabricksIdentityGrantStatus { managed_assignments: vec![ID.to_owned()], ..Default::default() },
            DatabricksIdentityGrantStatus { observed_generation: Some(1), ..Default::default() },
        ] {
            let settled = annotated(grant(Some(later.clone())), value.clone());
            assert!(pending(&settled).is_empty());
            assert_eq!(recorded(&settled), later);
        }
    }

    #[test]
    fn a_record_over_an_earlier_status_counts_while_that_status_stays() {
        // A status from an earlier reconcile that wrote nothing in Azure (e.g. denied).
        let denied = DatabricksIdentityGrantStatus { observed_generation: Some(1), ..Default::default() };
        let before = grant(Some(denied.clone()));
        let value = annotation(&before, &[ID.to_owned()]);
        let crashed = annotated(before, value.clone());
        assert_eq!(recorded(&crashed).creating_assignments, vec![ID.to_owned()]);
        // Already on record: not listed twice.
        let mut both = denied;
        both.managed_assignments = vec![ID.to_uppercase()];
        let g = grant(Some(both.clone()));
        let value = annotation(&g, &[ID.to_owned()]);
        assert_eq!(recorded(&annotated(g, value)), both);
    }

    #[test]
    fn a_watched_copy_keeps_the_annotation_only_while_it_counts() {
        let fresh = grant(None);
        let value = annotation(&fresh, &[ID.to_owned()]);
        let mut crashed = annotated(fresh, value.clone());
        drop_settled(&mut crashed);
        assert_eq!(pending(&crashed), vec![ID.to_owned()], "still the record");
        let mut settled = annotated(grant(Some(DatabricksIdentityGrantStatus::default())), value);
        settled.metadata.annotations.get_or_insert_default().insert("team".into(), "a".into());
        drop_settled(&mut settled);
        assert_eq!(settled.metadata.annotations, Some([("team".to_owned(), "a".to_owned())].into()));
    }

    #[test]
    fn an_annotation_written_by_hand_is_not_a_record() {
        for value in ["", "[]", "{\"creating\": []}", "not json"] {
            assert!(pending(&annotated(grant(None), value.to_owned())).is_empty(), "{value}");
        }
    }
}

//! What the watches know, read as pure lookups: the grants each controller's reflector holds,
//! the GrantPolicies and the Namespaces (labels, termination). The stores are fed by the
//! watches in `watches.rs` and by the controllers; nothing here calls the API server.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::validation::{ValidatedPolicy, validate_policy_spec};
use crate::api::{DatabricksIdentityGrant, GrantPolicy};
use crate::policy::evaluate::selects;

/// The watched objects the operator reads. Each store is set once, when the controllers start.
#[derive(Default)]
pub struct ClusterIndex {
    grants: OnceLock<Vec<Store<DatabricksIdentityGrant>>>,
    policies: OnceLock<Store<GrantPolicy>>,
    namespaces: OnceLock<Store<Namespace>>,
    /// When [`ClusterIndex::whole_or_waited`] was first asked.
    first_asked: OnceLock<std::time::Instant>,
}

impl ClusterIndex {
    /// The controllers' grant stores (one per watched namespace, or one for all).
    pub fn set_grants(&self, stores: Vec<Store<DatabricksIdentityGrant>>) {
        let _ = self.grants.set(stores);
    }

    pub fn set_policies(&self, store: Store<GrantPolicy>) {
        let _ = self.policies.set(store);
    }

    pub fn set_namespaces(&self, store: Store<Namespace>) {
        let _ = self.namespaces.set(store);
    }

    /// Whether the grant and namespace stores have each had their first full list, so counts
    /// read from them are whole (a count from a half-filled store is a status write now and
    /// another a moment later, on every start). Never waits: a reconcile blocked on a store
    /// that cannot fill held up the operator's shutdown (real-API-server tier).
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        // A dropped writer (shutdown) counts as synced: nothing more is coming.
        let ready = |wait: Option<Result<(), _>>| wait.is_some();
        self.grants.get().is_some_and(|stores| stores.iter().all(|s| ready(s.wait_until_ready().now_or_never())))
            && self.namespaces.get().is_some_and(|s| ready(s.wait_until_ready().now_or_never()))
    }

    /// Whether counts read from the stores can be written: they are whole ([`Self::synced`]),
    /// or `patience` has passed since this was first asked (a store that never fills must not
    /// hold them back for ever; they are then counted from what there is).
    pub fn whole_or_waited(&self, patience: std::time::Duration) -> bool {
        self.synced() || self.first_asked.get_or_init(std::time::Instant::now).elapsed() >= patience
    }

    /// Every grant the controllers currently know.
    pub fn grants(&self) -> Vec<Arc<DatabricksIdentityGrant>> {
        self.grants.get().map(|stores| stores.iter().flat_map(Store::state).collect()).unwrap_or_default()
    }

    /// Every GrantPolicy the operator knows.
    pub fn policies(&self) -> Vec<Arc<GrantPolicy>> {
        self.policies.get().map(Store::state).unwrap_or_default()
    }

    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get().and_then(|s| s.get(&ObjectRef::new(name)))
    }

    /// Labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        self.namespace(name).and_then(|ns| ns.metadata.labels.clone()).unwrap_or_default()
    }

    /// Whether a namespace is being deleted (its grants' Secrets may already be gone).
    pub fn namespace_terminating(&self, name: &str) -> bool {
        self.namespace(name).is_some_and(|ns| {
            ns.metadata.deletion_timestamp.is_some()
                || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        })
    }

    /// Names of every namespace the operator knows.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .get()
            .map(|s| s.state().iter().filter_map(|n| n.metadata.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The GrantPolicies governing `namespace`, validated, by name. An invalid or unreadable
    /// policy governs nothing (it allows nothing; its status says why).
    pub fn governing_policies(&self, namespace: &str) -> Vec<(String, ValidatedPolicy)> {
        let policies = self.policies();
        governing(policies.iter().map(AsRef::as_ref), &self.namespace_labels(namespace))
    }
}

/// The policies among `policies` that govern a namespace with `labels`, validated, by name
/// (pure: the controller's index and `plan`'s manifests share it). An invalid or unreadable
/// policy governs nothing.
pub fn governing<'a>(
    policies: impl IntoIterator<Item = &'a GrantPolicy>,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, ValidatedPolicy)> {
    policies
        .into_iter()
        .filter_map(|p| {
            if super::lenient::unreadable(p).is_some() {
                return None;
            }
            let valid = validate_policy_spec(&p.spec).ok()?;
            selects(&valid.namespace_selector, labels).then(|| (p.name_any(), valid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn namespace(name: &str, labels: &[(&str, &str)], terminating: bool) -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
            "status": {"phase": if terminating { "Terminating" } else { "Active" }},
        }))
        .expect("namespace")
    }

    fn policy(name: &str, selector: serde_json::Value, roles: serde_json::Value) -> GrantPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "GrantPolicy",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": selector, "identities": ["/subscriptions/**"], "roles": roles, "scopes": ["/subscriptions/**"]},
        }))
        .expect("policy")
    }

    fn index(namespaces: Vec<Namespace>, policies: Vec<GrantPolicy>) -> ClusterIndex {
        let index = ClusterIndex::default();
        let (reader, mut writer) = reflector::store();
        for ns in namespaces {
            writer.apply_watcher_event(&Event::Apply(ns));
        }
        index.set_namespaces(reader);
        let (reader, mut writer) = reflector::store();
        for p in policies {
            writer.apply_watcher_event(&Event::Apply(p));
        }
        index.set_policies(reader);
        index
    }

    #[test]
    fn namespaces_labels_and_termination() {
        let index = index(vec![namespace("a", &[("team", "x")], false), namespace("b", &[], true)], vec![]);
        assert_eq!(index.namespace_labels("a").get("team").map(String::as_str), Some("x"));
        assert!(index.namespace_labels("unknown").is_empty());
        assert!(!index.namespace_terminating("a") && index.namespace_terminating("b"));
        let mut names = index.namespace_names();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(index.grants().is_empty(), "no controller started: no grants");
    }

    #[test]
    fn governing_policies_select_by_labels_and_skip_invalid_ones() {
        let index = index(
            vec![namespace("data", &[("team", "data")], false), namespace("web", &[("team", "web")], false)],
            vec![
                policy("for-data", serde_json::json!({"matchLabels": {"team": "data"}}), serde_json::json!(["Reader"])),
                policy("everyone", serde_json::json!({}), serde_json::json!(["Reader"])),
                policy("broken", serde_json::json!({}), serde_json::json!([""])),
            ],
        );
        let names = |ns: &str| {
            let mut n: Vec<String> = index.governing_policies(ns).into_iter().map(|(name, _)| name).collect();
            n.sort();
            n
        };
        assert_eq!(names("data"), ["everyone", "for-data"]);
        assert_eq!(names("web"), ["everyone"], "the invalid policy governs nothing");
    }
}

//! Watches that survive objects which do not fit their Rust type.
//!
//! A cluster can store custom resources the schema would refuse (an old CRD, a schema edited
//! away, objects restored from a backup). Read through `Api<DatabricksIdentityGrant>`, one grant
//! with `identity: 5` fails the decode of every list, so every watch restarts forever and the
//! whole operator stalls. The watches here read objects untyped and decode each on its own: an
//! object that does not fit becomes a placeholder carrying the decode error (an in-memory
//! annotation, never written back), which the reconcilers report in status like any invalid spec.

use futures::{Stream, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
use crate::api::{
    DatabricksIdentityGrant, DatabricksIdentityGrantSpec, DeletionPolicy, GrantPolicy, GrantPolicySpec,
    ManagementPolicy,
};

/// Set (in memory only) on a placeholder: why the stored object could not be read.
pub const UNREADABLE_ANNOTATION: &str = "identity.dbx-operator.io/unreadable";

/// A kind the operator watches leniently.
pub trait Lenient: Resource<DynamicType = ()> + DeserializeOwned + Sized {
    /// What stands in for an object whose JSON does not fit the type: its metadata, and of its
    /// content only what is safe to act on.
    fn placeholder(metadata: kube::api::ObjectMeta, data: &Value) -> Self;

    /// Why `data` (the object without metadata) does not fit, naming the field.
    fn problem(data: &Value, decode_error: &serde_json::Error) -> String;
}

/// Why `object` is a placeholder, if it is one.
pub fn unreadable<K: Resource>(object: &K) -> Option<&str> {
    object.meta().annotations.as_ref()?.get(UNREADABLE_ANNOTATION).map(String::as_str)
}

/// Decodes one object; never fails.
pub fn decode<K: Lenient>(object: DynamicObject) -> K {
    let decoded = serde_json::to_value(&object).and_then(serde_json::from_value::<K>);
    match decoded {
        Ok(mut typed) => {
            // Only the operator marks placeholders; a user's copy of the annotation means nothing.
            if let Some(annotations) = typed.meta_mut().annotations.as_mut() {
                annotations.remove(UNREADABLE_ANNOTATION);
            }
            typed
        }
        Err(e) => {
            let problem = K::problem(&object.data, &e);
            let mut placeholder = K::placeholder(object.metadata, &object.data);
            placeholder.annotations_mut().insert(UNREADABLE_ANNOTATION.to_owned(), problem);
            placeholder
        }
    }
}

/// Watches `K` (in `namespace`, or everywhere) and decodes each object on its own.
pub fn watch<K: Lenient + Clone + Send + 'static>(
    client: Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    watcher(api, watcher::Config::default()).map_ok(|event| match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(decode(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(decode(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(decode(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// `data[field]` as `T`, if it is one.
fn field<T: DeserializeOwned>(data: &Value, field: &str) -> Option<T> {
    data.get(field).and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn problem_with_spec(spec_error: Option<String>, decode_error: &serde_json::Error) -> String {
    spec_error.unwrap_or_else(|| format!("the stored object cannot be read: {decode_error}"))
}

impl Lenient for DatabricksIdentityGrant {
    fn placeholder(metadata: kube::api::ObjectMeta, data: &Value) -> Self {
        let spec = data.get("spec").cloned().unwrap_or(Value::Null);
        DatabricksIdentityGrant {
            metadata,
            spec: DatabricksIdentityGrantSpec {
                identity: Default::default(),
                // Kept where readable: the claims index reads assignment conditions from it.
                role_assignments: field(&spec, "roleAssignments").unwrap_or_default(),
                // Absent means the default (Delete), as for a readable grant; an unreadable value
                // leaves the assignments (listed in an Event) rather than removing access
                // someone may still rely on.
                deletion_policy: match spec.get("deletionPolicy") {
                    None | Some(Value::Null) => DeletionPolicy::default(),
                    Some(_) => field(&spec, "deletionPolicy").unwrap_or(DeletionPolicy::Retain),
                },
                management_policy: ManagementPolicy::Observe,
                azure_credential_ref: None,
                expires_at: None,
                active_for: None,
                enforcement: Default::default(),
                justification: None,
            },
            // The operator's own record of what it created: needed to clean up on deletion.
            status: field(data, "status"),
        }
    }

    fn problem(data: &Value, decode_error: &serde_json::Error) -> String {
        let spec = data.get("spec").cloned().unwrap_or(Value::Null);
        problem_with_spec(validate_grant_spec_json(&spec).err().map(|e| e.to_string()), decode_error)
    }
}

impl Lenient for GrantPolicy {
    fn placeholder(metadata: kube::api::ObjectMeta, data: &Value) -> Self {
        GrantPolicy {
            metadata,
            // Never evaluated: an unreadable policy allows nothing.
            spec: GrantPolicySpec {
                namespace_selector: Default::default(),
                identities: Vec::new(),
                roles: Vec::new(),
                scopes: Vec::new(),
                allow_privileged_roles: false,
                workspace_managed_identity_data_roles: Default::default(),
                max_role_assignments_per_grant: crate::api::policy::default_max_role_assignments_per_grant(),
                max_duration: None,
            },
            status: field(data, "status"),
        }
    }

    fn problem(data: &Value, decode_error: &serde_json::Error) -> String {
        let spec = data.get("spec").cloned().unwrap_or(Value::Null);
        problem_with_spec(validate_policy_spec_json(&spec).err().map(|e| e.to_string()), decode_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(value: Value) -> DynamicObject {
        serde_json::from_value(value).expect("a Kubernetes object")
    }

    fn grant_json(spec: Value) -> Value {
        json!({
            "apiVersion": "identity.dbx-operator.io/v1alpha1",
            "kind": "DatabricksIdentityGrant",
            "metadata": {"name": "g", "namespace": "team", "uid": "u-1", "resourceVersion": "7",
                         "annotations": {UNREADABLE_ANNOTATION: "set by a user"}},
            "spec": spec,
            "status": {"managedAssignments": ["/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/a"]}
        })
    }

    fn valid_spec() -> Value {
        json!({
            "identity": {"principal": {"principalId": "00000000-0000-0000-0000-000000000001"}},
            "roleAssignments": [{"role": "Reader", "scope": "/subscriptions/00000000-0000-0000-0000-000000000002"}],
        })
    }

    #[test]
    fn a_fitting_object_decodes_as_itself_and_loses_a_forged_mark() {
        let g: DatabricksIdentityGrant = decode(dynamic(grant_json(valid_spec())));
        assert_eq!(unreadable(&g), None);
        assert_eq!(g.spec.role_assignments.len(), 1);
        assert_eq!(g.spec.deletion_policy, DeletionPolicy::Delete);
    }

    #[test]
    fn a_wrongly_typed_grant_becomes_a_placeholder_naming_the_field() {
        let mut spec = valid_spec();
        spec["identity"] = json!(5);
        let g: DatabricksIdentityGrant = decode(dynamic(grant_json(spec)));
        let problem = unreadable(&g).expect("marked unreadable");
        assert!(problem.contains("spec.identity"), "{problem}");
        assert_eq!(g.name_any(), "g");
        assert_eq!(g.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(g.spec.role_assignments.len(), 1, "readable parts are kept");
        assert_eq!(g.spec.deletion_policy, DeletionPolicy::Delete, "a readable deletionPolicy is honoured");
        assert_eq!(g.status.map(|s| s.managed_assignments.len()), Some(1), "the record of what was created is kept");
    }

    #[test]
    fn an_unreadable_deletion_policy_retains() {
        let mut spec = valid_spec();
        spec["deletionPolicy"] = json!(7);
        let g: DatabricksIdentityGrant = decode(dynamic(grant_json(spec)));
        assert!(unreadable(&g).is_some_and(|p| p.contains("spec.deletionPolicy")));
        assert_eq!(g.spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(g.spec.management_policy, ManagementPolicy::Observe);
    }

    #[test]
    fn a_wrongly_typed_policy_becomes_a_placeholder() {
        let p: GrantPolicy = decode(dynamic(json!({
            "apiVersion": "identity.dbx-operator.io/v1alpha1",
            "kind": "GrantPolicy",
            "metadata": {"name": "p"},
            "spec": {"namespaceSelector": {}, "identities": "*", "roles": ["Reader"], "scopes": ["/subscriptions/*"]}
        })));
        assert!(unreadable(&p).is_some_and(|m| m.contains("spec.identities")), "{:?}", unreadable(&p));
        assert!(p.spec.roles.is_empty(), "nothing of an unreadable policy is kept to evaluate");
    }
}

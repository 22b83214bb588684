//! The Kubernetes emulator's storage and the API server's write semantics: resourceVersion,
//! uid, generation, the status subresource, optimistic concurrency, finalizers and deletion,
//! admission (schema, defaults, CEL, pruning) for custom resources, and a bounded event
//! history for watches. No HTTP here: `http.rs` maps requests onto these methods.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::schema::{prune_unknown_fields, unknown_fields, validate_structural};

/// An API error rendered as `metav1.Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl StatusError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        StatusError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(ty: &ResourceType, name: &str) -> Self {
        StatusError::new(404, "NotFound", format!("{} \"{name}\" not found", ty.resource_ref()))
            .with_details(json!({"name": name, "group": ty.group, "kind": ty.plural}))
    }

    /// The `metav1.Status` body.
    pub fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

pub type StoreResult<T> = Result<T, StatusError>;

/// A served resource type (built in, or from a CRD).
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// `openAPIV3Schema` of custom resources.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of custom resources.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            namespaced,
            status_subresource: plural == "namespaces",
            schema: None,
            printer_columns: Vec::new(),
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` as the API server names resources in messages.
    pub fn resource_ref(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: EventKind,
    pub object: Value,
}

type Key = (String, String);

/// What a watch starts from: the events it missed, and a receiver for the ones to come.
pub type WatchStart = (Vec<Arc<WatchEvent>>, broadcast::Receiver<Arc<WatchEvent>>);

/// Everything the emulated API server stores.
pub struct Store {
    rv: u64,
    types: Vec<ResourceType>,
    objects: HashMap<Key, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    history_limit: usize,
    /// Highest resourceVersion whose event has left the history; watches from before it get 410.
    compacted: u64,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// `fieldValidation=Strict` for the request being handled: unknown fields are refused
    /// instead of pruned. Set by the HTTP layer around each write.
    pub strict_fields: bool,
    /// Validate custom resources against their CRD schema and CEL rules. Off stores whatever
    /// is sent, as a cluster without (or with broken) admission would.
    pub admission: bool,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn invalid(ty: &ResourceType, name: &str, causes: Vec<(String, String)>) -> StatusError {
    let message = causes.iter().map(|(field, msg)| format!("{field}: {msg}")).collect::<Vec<_>>().join(", ");
    StatusError::new(422, "Invalid", format!("{} \"{name}\" is invalid: {message}", ty.resource_ref())).with_details(json!({
        "name": name, "group": ty.group, "kind": ty.kind,
        "causes": causes.iter().map(|(field, msg)| json!({"reason": "FieldValueInvalid", "message": msg, "field": field})).collect::<Vec<_>>(),
    }))
}

/// `value` without `metadata` (and without `status` when it has its own subresource): what
/// `metadata.generation` tracks.
fn generation_view(value: &Value, status_subresource: bool) -> Value {
    let mut view = value.clone();
    if let Some(map) = view.as_object_mut() {
        map.remove("metadata");
        if status_subresource {
            map.remove("status");
        }
    }
    view
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(16_384);
        let types = vec![
            ResourceType::builtin("", "v1", "namespaces", "Namespace", false, &["ns"]),
            ResourceType::builtin("", "v1", "secrets", "Secret", true, &[]),
            ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
            ResourceType::builtin("", "v1", "events", "Event", true, &["ev"]),
            ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
            ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
            ResourceType::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            ),
        ];
        let mut store = Store {
            rv: 0,
            types,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            events,
            strict_fields: false,
            admission: true,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let ty = store.types[0].clone();
            // Namespaces are valid by construction; ignore the impossible error.
            let _ = store.create(&ty, "", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    fn bucket(&mut self, ty: &ResourceType) -> &mut BTreeMap<Key, Value> {
        self.objects.entry((ty.group.clone(), ty.plural.clone())).or_default()
    }

    fn publish(&mut self, ty: &ResourceType, namespace: &str, kind: EventKind, object: &Value) {
        let event = Arc::new(WatchEvent {
            rv: self.rv,
            group: ty.group.clone(),
            plural: ty.plural.clone(),
            namespace: namespace.to_owned(),
            kind,
            object: object.clone(),
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.events.send(event);
    }

    /// Objects of `ty` (in `namespace`, or all), sorted by namespace and name.
    pub fn list(&self, ty: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .get(&(ty.group.clone(), ty.plural.clone()))
            .map(|b| {
                b.iter().filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, v)| v.clone()).collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, ty: &ResourceType, namespace: &str, name: &str) -> StoreResult<Value> {
        self.objects
            .get(&(ty.group.clone(), ty.plural.clone()))
            .and_then(|b| b.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
            .ok_or_else(|| StatusError::not_found(ty, name))
    }

    /// Schema defaults, structural validation, CEL rules, pruning — for custom resources.
    fn admit(&self, ty: &ResourceType, object: Value, old: Option<&Value>) -> StoreResult<Value> {
        let Some(schema) = ty.schema.as_ref().filter(|_| self.admission) else {
            return Ok(object);
        };
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let mut object = kube::core::cel::apply_defaults(schema, &object);
        let structural = validate_structural(schema, &object);
        if !structural.is_empty() {
            return Err(invalid(ty, &name, structural.into_iter().map(|e| (e.field, e.message)).collect()));
        }
        if let Err(errors) = kube::core::cel::Validator::new().validate(schema, &object, old) {
            return Err(invalid(ty, &name, errors.iter().map(|e| (e.field_path.clone(), e.message.clone())).collect()));
        }
        if self.strict_fields {
            let unknown = unknown_fields(schema, &object);
            if !unknown.is_empty() {
                let list = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", ");
                return Err(StatusError::new(
                    400,
                    "BadRequest",
                    format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                        ty.kind,
                        ty.api_version(),
                        ty.kind
                    ),
                ));
            }
        }
        prune_unknown_fields(schema, &mut object);
        Ok(object)
    }

    fn check_metadata(&self, ty: &ResourceType, namespace: &str, object: &Value) -> StoreResult<String> {
        let name = meta_str(object, "name").unwrap_or_default().to_owned();
        if !is_dns_subdomain(&name) {
            return Err(invalid(ty, &name, vec![("metadata.name".into(), "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into())]));
        }
        if ty.namespaced {
            let ns_type = self.types[0].clone();
            match self.get(&ns_type, "", namespace) {
                Err(_) => {
                    return Err(StatusError::new(404, "NotFound", format!("namespaces \"{namespace}\" not found"))
                        .with_details(json!({"name": namespace, "kind": "namespaces"})));
                }
                Ok(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(StatusError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                            ty.resource_ref()
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        Ok(name)
    }

    /// Creates an object (POST).
    pub fn create(&mut self, ty: &ResourceType, namespace: &str, mut object: Value) -> StoreResult<Value> {
        if !object.is_object() {
            return Err(StatusError::new(400, "BadRequest", "the body must be a JSON object"));
        }
        fold_string_data(ty, &mut object);
        if meta_str(&object, "name").is_none()
            && let Some(prefix) = meta_str(&object, "generateName")
        {
            let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
            object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = self.check_metadata(ty, namespace, &object)?;
        if self.get(ty, namespace, &name).is_ok() {
            return Err(StatusError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", ty.resource_ref()),
            )
            .with_details(json!({"name": name, "group": ty.group, "kind": ty.plural})));
        }
        if ty.status_subresource && ty.schema.is_some() {
            object.as_object_mut().map(|m| m.remove("status"));
        }
        object["apiVersion"] = json!(ty.api_version());
        object["kind"] = json!(ty.kind);
        let mut object = self.admit(ty, object, None)?;
        if ty.is_crd() {
            self.register_crd(&object)?;
        }
        self.rv += 1;
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["generation"] = json!(1);
        if ty.namespaced {
            meta["namespace"] = json!(namespace);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        if ty.is_namespace() {
            object["status"] = json!({"phase": "Active"});
            label_namespace_name(&mut object, &name);
        }
        if ty.is_crd() {
            // Served at once, as the API server reports once it serves the kind (`kubectl wait
            // --for=condition=Established`).
            let now = now();
            let condition = |type_: &str, reason: &str| json!({"type": type_, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
            object["status"] = json!({
                "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
                "acceptedNames": object.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
                "storedVersions": object.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
                    .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
            });
        }
        self.bucket(ty).insert((namespace.to_owned(), name), object.clone());
        self.publish(ty, namespace, EventKind::Added, &object);
        Ok(object)
    }
}

/// The label the API server puts on every namespace, naming it (on create and update, since
/// Kubernetes 1.21): what a GrantPolicy selects one namespace by.
fn label_namespace_name(object: &mut Value, name: &str) {
    if !object["metadata"]["labels"].is_object() {
        object["metadata"]["labels"] = json!({});
    }
    object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
}

impl Store {
    /// Replaces an object (PUT), on the main resource or its `status` subresource.
    pub fn update(
        &mut self,
        ty: &ResourceType,
        namespace: &str,
        name: &str,
        incoming: Value,
        status: bool,
    ) -> StoreResult<Value> {
        if status && !ty.status_subresource {
            return Err(StatusError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({} {name}/status)", ty.resource_ref()),
            ));
        }
        let old = self.get(ty, namespace, name)?;
        let mut incoming = incoming;
        fold_string_data(ty, &mut incoming);
        if let Some(rv) = meta_str(&incoming, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(StatusError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", ty.resource_ref()))
                .with_details(json!({"name": name, "group": ty.group, "kind": ty.plural})));
        }
        if meta_str(&incoming, "name").is_some_and(|n| n != name) {
            return Err(StatusError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&incoming, "name").unwrap_or_default()
                ),
            ));
        }
        let mut new = if status {
            // /status writes change status only.
            let mut new = old.clone();
            new["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
            new
        } else {
            let mut new = incoming;
            if ty.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            // Fields the server owns.
            for field in ["uid", "creationTimestamp", "deletionTimestamp", "generation", "namespace"] {
                match old["metadata"].get(field) {
                    Some(v) => new["metadata"][field] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(field));
                    }
                }
            }
            new["metadata"]["name"] = json!(name);
            new
        };
        new["apiVersion"] = json!(ty.api_version());
        new["kind"] = json!(ty.kind);
        let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        let old_finalizers = finalizers(&old);
        if deleting && finalizers(&new).iter().any(|f| !old_finalizers.contains(f)) {
            return Err(invalid(
                ty,
                name,
                vec![(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
        let mut new = if status { new } else { self.admit(ty, new, Some(&old))? };
        if ty.is_namespace() {
            label_namespace_name(&mut new, name);
        }
        // A write that changes nothing is not a new version.
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(old);
        }
        if generation_view(&new, ty.status_subresource) != generation_view(&old, ty.status_subresource) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        if ty.is_crd() {
            self.register_crd(&new)?;
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if deleting && finalizers(&new).is_empty() {
            self.bucket(ty).remove(&(namespace.to_owned(), name.to_owned()));
            self.publish(ty, namespace, EventKind::Deleted, &new);
            self.finish_namespace_deletion(namespace);
            return Ok(new);
        }
        self.bucket(ty).insert((namespace.to_owned(), name.to_owned()), new.clone());
        self.publish(ty, namespace, EventKind::Modified, &new);
        Ok(new)
    }

    /// Deletes an object: marks it when finalizers remain, removes it otherwise. Returns the
    /// object as it is after the call.
    pub fn delete(&mut self, ty: &ResourceType, namespace: &str, name: &str) -> StoreResult<Value> {
        let mut object = self.get(ty, namespace, name)?;
        if !finalizers(&object).is_empty() {
            if object.pointer("/metadata/deletionTimestamp").is_none() {
                self.rv += 1;
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.bucket(ty).insert((namespace.to_owned(), name.to_owned()), object.clone());
                self.publish(ty, namespace, EventKind::Modified, &object);
            }
            if ty.is_namespace() {
                self.delete_namespace_contents(name);
            }
            return Ok(object);
        }
        if ty.is_namespace() {
            // Namespaces finish when their contents are gone.
            self.rv += 1;
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["status"] = json!({"phase": "Terminating"});
            object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.bucket(ty).insert((String::new(), name.to_owned()), object.clone());
            self.publish(ty, "", EventKind::Modified, &object);
            self.delete_namespace_contents(name);
            self.finish_namespace_deletion(name);
            return Ok(object);
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.bucket(ty).remove(&(namespace.to_owned(), name.to_owned()));
        self.publish(ty, namespace, EventKind::Deleted, &object);
        if ty.is_crd() {
            self.unregister_crd(&object);
        }
        self.finish_namespace_deletion(namespace);
        Ok(object)
    }

    fn delete_namespace_contents(&mut self, namespace: &str) {
        let types: Vec<ResourceType> = self.types.iter().filter(|t| t.namespaced).cloned().collect();
        for ty in types {
            let names: Vec<String> =
                self.list(&ty, Some(namespace)).iter().filter_map(|o| meta_str(o, "name").map(str::to_owned)).collect();
            for name in names {
                let _ = self.delete(&ty, namespace, &name);
            }
        }
    }

    /// Removes a terminating namespace once nothing is left in it.
    fn finish_namespace_deletion(&mut self, namespace: &str) {
        if namespace.is_empty() {
            return;
        }
        let ns_type = self.types[0].clone();
        let Ok(ns) = self.get(&ns_type, "", namespace) else { return };
        if ns.pointer("/metadata/deletionTimestamp").is_none() {
            return;
        }
        let empty = self.types.iter().filter(|t| t.namespaced).all(|t| self.list(t, Some(namespace)).is_empty());
        if empty {
            self.rv += 1;
            let mut ns = ns;
            ns["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.bucket(&ns_type).remove(&(String::new(), namespace.to_owned()));
            self.publish(&ns_type, "", EventKind::Deleted, &ns);
        }
    }

    fn register_crd(&mut self, crd: &Value) -> StoreResult<()> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_owned();
        let names = &spec["names"];
        let plural = names["plural"].as_str().unwrap_or_default().to_owned();
        let strs = |v: &Value| {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
        };
        if group.is_empty() || plural.is_empty() {
            return Err(StatusError::new(
                422,
                "Invalid",
                "CustomResourceDefinition needs spec.group and spec.names.plural",
            ));
        }
        // The API server's static CEL cost budget (see cel_cost): a CRD it refuses is refused here.
        let refusals: Vec<String> = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.pointer("/schema/openAPIV3Schema"))
            .flat_map(super::cel_cost::over_budget)
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        if !refusals.is_empty() {
            let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            return Err(StatusError::new(
                422,
                "Invalid",
                format!("CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {}", refusals.join(", ")),
            ));
        }
        self.types.retain(|t| !(t.group == group && t.plural == plural));
        for version in
            spec["versions"].as_array().into_iter().flatten().filter(|v| v["served"].as_bool() != Some(false))
        {
            self.types.push(ResourceType {
                group: group.clone(),
                version: version["name"].as_str().unwrap_or_default().to_owned(),
                plural: plural.clone(),
                singular: names["singular"].as_str().unwrap_or_default().to_owned(),
                kind: names["kind"].as_str().unwrap_or_default().to_owned(),
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                namespaced: spec["scope"].as_str() == Some("Namespaced"),
                status_subresource: version.pointer("/subresources/status").is_some(),
                schema: version.pointer("/schema/openAPIV3Schema").cloned(),
                printer_columns: version["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
            });
        }
        Ok(())
    }

    fn unregister_crd(&mut self, crd: &Value) {
        let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_owned();
        let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_owned();
        self.types.retain(|t| !(t.group == group && t.plural == plural));
        self.objects.remove(&(group, plural));
    }

    /// Drops the watch history: resuming from any resourceVersion before now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Events after `rv` still in the history, plus a receiver for later ones; 410 Gone when
    /// `rv` is older than the history reaches.
    pub fn watch_from(&self, rv: u64) -> StoreResult<WatchStart> {
        if rv < self.compacted {
            return Err(StatusError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", self.compacted + 1),
            ));
        }
        let backlog = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((backlog, self.events.subscribe()))
    }
}

/// A Secret's write-only `stringData` is merged into `data` (base64) and dropped, as the API
/// server does.
fn fold_string_data(ty: &ResourceType, object: &mut Value) {
    use base64::Engine;
    if !(ty.group.is_empty() && ty.plural == "secrets") {
        return;
    }
    let Some(map) = object.as_object_mut() else { return };
    let Some(Value::Object(strings)) = map.remove("stringData") else { return };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default().to_owned();
            data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd_type() -> ResourceType {
        ResourceType {
            group: "example.io".into(),
            version: "v1".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            kind: "Widget".into(),
            short_names: vec![],
            categories: vec![],
            namespaced: true,
            status_subresource: true,
            schema: Some(json!({
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "minimum": 1.0, "x-kubernetes-validations": [{"rule": "self < 10", "message": "size must be below 10"}]},
                        "mode": {"type": "string", "default": "fast"}
                    }},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                }
            })),
            printer_columns: vec![],
        }
    }

    fn widget(size: i64) -> Value {
        json!({"metadata": {"name": "w"}, "spec": {"size": size, "junk": 1}, "status": {"ready": true}})
    }

    #[test]
    fn create_sets_server_fields_defaults_and_prunes() {
        let mut store = Store::new(100);
        let ty = crd_type();
        let created = store.create(&ty, "default", widget(3)).expect("create");
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created["metadata"]["uid"].is_string());
        assert_eq!(created["spec"]["mode"], "fast", "defaulted");
        assert!(created["spec"].get("junk").is_none(), "pruned");
        assert!(created.get("status").is_none(), "status is written through /status only");
        let err = store.create(&ty, "default", widget(3)).expect_err("dup");
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = store.create(&ty, "nope", widget(3)).expect_err("no ns");
        assert_eq!(err.code, 404);
    }

    #[test]
    fn admission_refuses_schema_and_cel_violations_with_422() {
        let mut store = Store::new(100);
        let ty = crd_type();
        let err = store.create(&ty, "default", widget(0)).expect_err("minimum");
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let err = store.create(&ty, "default", widget(12)).expect_err("cel");
        assert!(err.message.contains("size must be below 10"), "{}", err.message);
    }

    #[test]
    fn generation_status_subresource_and_optimistic_concurrency() {
        let mut store = Store::new(100);
        let ty = crd_type();
        let created = store.create(&ty, "default", widget(3)).expect("create");
        let rv = created["metadata"]["resourceVersion"].clone();

        // Status through the main resource is ignored; metadata changes keep the generation.
        let mut labelled = created.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        labelled["status"] = json!({"ready": true});
        let updated = store.update(&ty, "default", "w", labelled, false).expect("update");
        assert_eq!(updated["metadata"]["generation"], 1);
        assert!(updated.get("status").is_none());

        // A stale resourceVersion conflicts.
        let mut stale = created.clone();
        stale["metadata"]["resourceVersion"] = rv;
        assert_eq!(store.update(&ty, "default", "w", stale, false).expect_err("stale").code, 409);

        // A spec change bumps the generation; /status changes status only.
        let mut respec = updated.clone();
        respec["spec"]["size"] = json!(4);
        let respecced = store.update(&ty, "default", "w", respec, false).expect("spec");
        assert_eq!(respecced["metadata"]["generation"], 2);
        let mut status = respecced.clone();
        status["status"] = json!({"ready": true});
        status["spec"]["size"] = json!(9);
        let with_status = store.update(&ty, "default", "w", status, true).expect("status");
        assert_eq!(with_status["status"]["ready"], true);
        assert_eq!(with_status["spec"]["size"], 4);
        assert_eq!(with_status["metadata"]["generation"], 2);

        // An identical write is not a new version.
        let again = store.update(&ty, "default", "w", with_status.clone(), true).expect("noop");
        assert_eq!(again["metadata"]["resourceVersion"], with_status["metadata"]["resourceVersion"]);
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut store = Store::new(100);
        let ty = crd_type();
        let mut w = widget(3);
        w["metadata"]["finalizers"] = json!(["example.io/cleanup"]);
        store.create(&ty, "default", w).expect("create");
        let marked = store.delete(&ty, "default", "w").expect("delete");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get(&ty, "default", "w").is_ok(), "still there");
        let mut more = marked.clone();
        more["metadata"]["finalizers"] = json!(["example.io/cleanup", "other"]);
        assert_eq!(store.update(&ty, "default", "w", more, false).expect_err("no new finalizers").code, 422);
        let mut done = marked;
        done["metadata"]["finalizers"] = json!([]);
        store.update(&ty, "default", "w", done, false).expect("remove finalizer");
        assert_eq!(store.get(&ty, "default", "w").expect_err("gone").code, 404);
    }

    #[test]
    fn watches_replay_history_and_expire_old_versions() {
        let mut store = Store::new(3);
        let ty = crd_type();
        let start = store.resource_version();
        for i in 0..5 {
            let mut w = widget(3);
            w["metadata"]["name"] = json!(format!("w{i}"));
            store.create(&ty, "default", w).expect("create");
        }
        assert_eq!(store.watch_from(start).expect_err("too old").code, 410);
        let (backlog, _) = store.watch_from(store.resource_version() - 2).expect("recent");
        assert_eq!(backlog.len(), 2);
    }
}

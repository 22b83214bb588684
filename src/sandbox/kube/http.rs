//! HTTP for the Kubernetes emulator: discovery, the REST verbs on every served resource,
//! patches (merge, JSON, apply), watches (history replay, bookmarks, timeouts, 410 Gone),
//! Tables for kubectl, fault injection, and a log of every request (for RBAC checks).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::selectors::{FieldSelector, LabelSelector};
use super::store::{ResourceType, StatusError, WatchEvent};
use super::table::table;
use super::{KubeEmulator, RequestRecord};

type Shared = Arc<KubeEmulator>;

pub fn router(emulator: Shared) -> Router {
    Router::new().fallback(handle).with_state(emulator)
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body.to_string()).into_response();
    response.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    response
}

fn status_response(e: &StatusError) -> Response {
    json_response(e.code, &e.body())
}

fn not_served(path: &str) -> Response {
    status_response(&StatusError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource (path {path})"),
    ))
}

/// A parsed resource path.
struct Target {
    ty: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn handle(State(emulator): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let latency = emulator.faults().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(status) = emulator.take_injected_failure() {
        let reason = if status == 429 { "TooManyRequests" } else { "InternalError" };
        let mut response = status_response(&StatusError::new(status, reason, "injected failure"));
        if status == 429 {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return response;
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    let query: HashMap<String, String> =
        uri.query().map(|q| serde_urlencoded::from_str(q).unwrap_or_default()).unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => {
            return json_response(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-dbx-sandbox", "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        (Method::GET, ["healthz"] | ["readyz"] | ["livez"]) => return (StatusCode::OK, "ok").into_response(),
        (Method::GET, ["api"]) => {
            return json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": emulator.address}]}),
            );
        }
        (Method::GET, ["api", "v1"]) => return json_response(200, &emulator.resource_list("", "v1")),
        (Method::GET, ["apis"]) => return json_response(200, &emulator.group_list()),
        (Method::GET, ["apis", group]) => {
            return match emulator.group_list()["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|x| x["name"] == *group))
                .cloned()
            {
                Some(mut g) => {
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(200, &g)
                }
                None => not_served(&path),
            };
        }
        (Method::GET, ["apis", group, version]) => {
            let list = emulator.resource_list(group, version);
            return if list["resources"].as_array().is_some_and(|r| !r.is_empty()) {
                json_response(200, &list)
            } else {
                not_served(&path)
            };
        }
        (Method::GET, ["openapi", "v3"]) => return json_response(200, &emulator.openapi_root()),
        (Method::GET, ["openapi", "v3", "api", "v1"]) => {
            return json_response(200, &emulator.openapi_group_version("", "v1"));
        }
        (Method::GET, ["openapi", "v3", "apis", group, version]) => {
            let doc = emulator.openapi_group_version(group, version);
            return if doc["paths"].as_object().is_some_and(|p| !p.is_empty()) {
                json_response(200, &doc)
            } else {
                not_served(&path)
            };
        }
        _ => {}
    }

    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return not_served(&path),
    };
    let Some(target) = emulator.target(group, version, rest) else {
        return not_served(&path);
    };
    let verb = match (&method, &target.name, query.get("watch").map(String::as_str)) {
        (&Method::GET, None, Some("true" | "1")) => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, None, _) => "deletecollection",
        (&Method::DELETE, Some(_), _) => "delete",
        _ => "unknown",
    };
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_owned();
    emulator.log(RequestRecord {
        user,
        verb: verb.into(),
        group: target.ty.group.clone(),
        resource: target.ty.plural.clone(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
    });
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let wants_table = headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"));
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let status_sub = target.subresource.as_deref() == Some("status");
    if target.subresource.as_deref().is_some_and(|s| s != "status") {
        return not_served(&path);
    }
    if target.ty.namespaced && target.namespace.is_none() && !matches!(verb, "list" | "watch") {
        return not_served(&path);
    }
    // Another writer got there first (finalizers, labels): what a real API server answers.
    if matches!(verb, "update" | "patch") && !status_sub && emulator.take_injected_conflict(&target.ty.group) {
        return status_response(&StatusError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                target.ty.plural, target.ty.group
            ),
        ));
    }

    match verb {
        "watch" => watch(emulator, target, &query, wants_table).await,
        "list" => list(&emulator, &target, &query, wants_table),
        "get" => {
            let store = emulator.store();
            match store.get(&target.ty, &namespace, &name) {
                Ok(o) if wants_table => json_response(200, &table(&target.ty, &[o], store.resource_version())),
                Ok(o) => json_response(200, &o),
                Err(e) => status_response(&e),
            }
        }
        "create" => match parse_body(&headers, &body) {
            Ok(object) => {
                if let Some(ns) = object.pointer("/metadata/namespace").and_then(Value::as_str)
                    && target.ty.namespaced
                    && ns != namespace
                {
                    return status_response(&StatusError::new(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                let mut store = emulator.store();
                store.strict_fields = strict;
                let created = store.create(&target.ty, &namespace, object);
                store.strict_fields = false;
                match created {
                    Ok(o) => json_response(201, &o),
                    Err(e) => status_response(&e),
                }
            }
            Err(e) => status_response(&e),
        },
        "update" => match parse_body(&headers, &body) {
            Ok(object) => {
                let mut store = emulator.store();
                store.strict_fields = strict;
                let updated = store.update(&target.ty, &namespace, &name, object, status_sub);
                store.strict_fields = false;
                match updated {
                    Ok(o) => json_response(200, &o),
                    Err(e) => status_response(&e),
                }
            }
            Err(e) => status_response(&e),
        },
        "patch" => patch(&emulator, &target, &headers, &body, &query, status_sub),
        "delete" => match emulator.store().delete(&target.ty, &namespace, &name) {
            Ok(o) => json_response(200, &o),
            Err(e) => status_response(&e),
        },
        _ => {
            status_response(&StatusError::new(405, "MethodNotAllowed", format!("{method} is not supported on {path}")))
        }
    }
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, StatusError> {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if content_type.starts_with(super::protobuf::CONTENT_TYPE) {
        return super::protobuf::decode_object(body)
            .map_err(|e| StatusError::new(415, "UnsupportedMediaType", e.to_string()));
    }
    let parsed = if content_type.contains("yaml") {
        serde_yaml_ng::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        StatusError::new(400, "BadRequest", format!("the body of the request was in an unknown format: {e}"))
    })
}

fn list(emulator: &KubeEmulator, target: &Target, query: &HashMap<String, String>, wants_table: bool) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(e) => return status_response(&e),
    };
    let store = emulator.store();
    let rv = store.resource_version();
    let mut listed = store.list(&target.ty, target.namespace.as_deref());
    // The API server serves one set of Events under both groups; what the operator writes
    // through events.k8s.io is what `kubectl describe` reads through core v1.
    if target.ty.group.is_empty()
        && target.ty.plural == "events"
        && let Some(modern) = store.find_type("events.k8s.io", "v1", "events")
    {
        listed.extend(store.list(&modern, target.namespace.as_deref()).iter().map(core_event));
    }
    let all: Vec<Value> = listed.into_iter().filter(|o| labels.matches_object(o) && fields.matches_object(o)).collect();
    drop(store);
    // `continue` is the offset into this consistent ordering (namespace, name).
    let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let items: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset.saturating_add(items.len());
    if wants_table {
        return json_response(200, &table(&target.ty, &items, rv));
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if next < all.len() {
        metadata["continue"] = json!(next.to_string());
        metadata["remainingItemCount"] = json!(all.len() - next);
    }
    json_response(
        200,
        &json!({"apiVersion": target.ty.api_version(), "kind": format!("{}List", target.ty.kind), "metadata": metadata, "items": items}),
    )
}

/// An events.k8s.io/v1 Event in its core/v1 shape (the API server's conversion, in short).
fn core_event(event: &Value) -> Value {
    let first = event.get("deprecatedFirstTimestamp").or_else(|| event.get("eventTime")).cloned();
    let last = event
        .pointer("/series/lastObservedTime")
        .or_else(|| event.get("deprecatedLastTimestamp"))
        .cloned()
        .or_else(|| first.clone());
    let count = event.pointer("/series/count").or_else(|| event.get("deprecatedCount")).cloned().unwrap_or(json!(1));
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": event["metadata"],
        "involvedObject": event["regarding"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "action": event["action"],
        "source": {"component": event["reportingController"]},
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
        "firstTimestamp": first,
        "lastTimestamp": last,
        "eventTime": event["eventTime"],
        "count": count,
    })
}

fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), StatusError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| StatusError::new(400, "BadRequest", format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| StatusError::new(400, "BadRequest", e))?;
    Ok((labels, fields))
}

fn patch(
    emulator: &KubeEmulator,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
    query: &HashMap<String, String>,
    status: bool,
) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let custom = target.ty.schema.is_some();
    let mut store = emulator.store();
    store.strict_fields = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let current = store.get(&target.ty, &namespace, &name);
    let result = match content_type.split(';').next().unwrap_or_default().trim() {
        "application/apply-patch+yaml" | "application/apply-patch+json" => {
            // Server-side apply, approximated: the applied configuration is merged into the live
            // object (fields left out of a later apply are not removed; no field ownership).
            if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return status_response(&StatusError::new(
                    400,
                    "BadRequest",
                    "PATCH /apply requires fieldManager to be set",
                ));
            }
            let applied = match parse_body(headers, body) {
                Ok(v) => v,
                Err(e) => return status_response(&e),
            };
            match current {
                Err(_) if !status => store.create(&target.ty, &namespace, applied),
                Err(e) => Err(e),
                Ok(mut live) => {
                    json_patch::merge(&mut live, &applied);
                    store.update(&target.ty, &namespace, &name, live, status)
                }
            }
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if custom && content_type.starts_with("application/strategic-merge-patch+json") {
                return status_response(&StatusError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            let patch = match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => {
                    return status_response(&StatusError::new(400, "BadRequest", format!("invalid merge patch: {e}")));
                }
            };
            current.and_then(|mut live| {
                json_patch::merge(&mut live, &patch);
                store.update(&target.ty, &namespace, &name, live, status)
            })
        }
        "application/json-patch+json" => {
            let operations = match serde_json::from_slice::<json_patch::Patch>(body) {
                Ok(p) => p,
                Err(e) => {
                    return status_response(&StatusError::new(400, "BadRequest", format!("invalid JSON patch: {e}")));
                }
            };
            current.and_then(|mut live| {
                let operations = api_server_test_semantics(&live, operations);
                json_patch::patch(&mut live, &operations).map_err(|e| {
                    StatusError::new(
                        422,
                        "Invalid",
                        format!("the server rejected our request due to an error in our request: {e}"),
                    )
                })?;
                store.update(&target.ty, &namespace, &name, live, status)
            })
        }
        other => Err(StatusError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({other})"),
        )),
    };
    match result {
        Ok(o) => json_response(200, &o),
        Err(e) => status_response(&e),
    }
}

/// The API server's JSON patch (evanphx/json-patch) lets `test` with value `null` pass when
/// the path does not exist; clients rely on it (kube-runtime adds its first finalizer with
/// `test /metadata/finalizers == null` then `add`). Such tests are dropped before applying.
fn api_server_test_semantics(doc: &Value, patch: json_patch::Patch) -> json_patch::Patch {
    json_patch::Patch(
        patch
            .0
            .into_iter()
            .filter(|op| match op {
                json_patch::PatchOperation::Test(t) => {
                    !(t.value.is_null() && doc.pointer(t.path.as_str()).is_none_or(Value::is_null))
                }
                _ => true,
            })
            .collect(),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

async fn watch(emulator: Shared, target: Target, query: &HashMap<String, String>, wants_table: bool) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(e) => return status_response(&e),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true" || b == "1");
    let requested = query.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()).filter(|r| *r > 0);
    let ty = target.ty.clone();
    let namespace = target.namespace.clone();
    let matches = {
        let (ty, namespace) = (ty.clone(), namespace.clone());
        move |e: &WatchEvent| {
            e.group == ty.group
                && e.plural == ty.plural
                && namespace.as_deref().is_none_or(|n| n == e.namespace)
                && labels.matches_object(&e.object)
                && fields.matches_object(&e.object)
        }
    };
    let render = {
        let ty = ty.clone();
        move |object: &Value, rv: u64| {
            if wants_table { table(&ty, std::slice::from_ref(object), rv) } else { object.clone() }
        }
    };

    let (initial, mut receiver, mut last_rv) = {
        let store = emulator.store();
        let current = store.resource_version();
        match requested {
            None => {
                // No version: the current state as ADDED events, then changes.
                let objects: Vec<Value> = store.list(&ty, namespace.as_deref());
                let lines: Vec<Bytes> = objects
                    .iter()
                    .filter(|o| {
                        let probe = WatchEvent {
                            rv: 0,
                            group: ty.group.clone(),
                            plural: ty.plural.clone(),
                            namespace: o
                                .pointer("/metadata/namespace")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            kind: super::store::EventKind::Added,
                            object: (*o).clone(),
                        };
                        matches(&probe)
                    })
                    .map(|o| event_line("ADDED", &render(o, current)))
                    .collect();
                match store.watch_from(current) {
                    Ok((_, rx)) => (lines, rx, current),
                    Err(e) => return status_response(&e),
                }
            }
            Some(rv) => match store.watch_from(rv) {
                Ok((backlog, rx)) => {
                    let lines = backlog
                        .iter()
                        .filter(|e| matches(e))
                        .map(|e| event_line(e.kind.as_str(), &render(&e.object, e.rv)))
                        .collect();
                    (lines, rx, backlog.last().map_or(rv, |e| e.rv).max(rv))
                }
                Err(e) => {
                    // As the API server does: 200, then one ERROR event carrying the 410 Status.
                    emulator.expired_watches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let line = event_line("ERROR", &e.body());
                    return Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from(line))
                        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
                }
            },
        }
    };

    let (sender, channel) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut drop_signal = emulator.watch_drops.subscribe();
    let bookmark_every = emulator.config.bookmark_interval;
    let api_version = ty.api_version();
    let kind = ty.kind.clone();
    tokio::spawn(async move {
        for line in initial {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = drop_signal.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": last_rv.to_string()}});
                    if sender.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                event = receiver.recv() => match event {
                    Ok(e) => {
                        last_rv = e.rv;
                        if matches(&e) && sender.send(event_line(e.kind.as_str(), &render(&e.object, e.rv))).await.is_err() {
                            return;
                        }
                    }
                    // Fell behind or the store is gone: end; the client resumes from its last version.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(channel, |mut channel| async move {
        channel.recv().await.map(|line| (Ok::<_, Infallible>(line), channel))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl KubeEmulator {
    fn target(&self, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
        let store = self.store();
        let (namespace, plural, name, subresource) = match rest {
            ["namespaces", ns, plural, tail @ ..]
                if store.find_type(group, version, plural).is_some_and(|t| t.namespaced) =>
            {
                (Some(ns.to_string()), *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string()))
            }
            [plural, tail @ ..] => {
                (None, *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string()))
            }
            [] => return None,
        };
        if rest.len() > 5 {
            return None;
        }
        let ty = store.find_type(group, version, plural)?;
        Some(Target { ty, namespace, name, subresource })
    }

    fn resource_list(&self, group: &str, version: &str) -> Value {
        let store = self.store();
        let mut resources = Vec::new();
        for t in store.types().iter().filter(|t| t.group == group && t.version == version) {
            let mut entry = json!({
                "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            });
            if !t.short_names.is_empty() {
                entry["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                entry["categories"] = json!(t.categories);
            }
            resources.push(entry);
            if t.status_subresource {
                resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
            }
        }
        let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }

    /// `/openapi/v3`: one document per served group-version.
    fn openapi_root(&self) -> Value {
        let store = self.store();
        let mut paths = serde_json::Map::new();
        for t in store.types() {
            let key = if t.group.is_empty() {
                format!("api/{}", t.version)
            } else {
                format!("apis/{}/{}", t.group, t.version)
            };
            paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}")}));
        }
        json!({"paths": paths})
    }

    /// An OpenAPI v3 document for one group-version: a PATCH operation per kind that lists
    /// `fieldValidation` (so kubectl leaves validation to the server) and the kinds' schemas
    /// (what `kubectl explain` reads).
    fn openapi_group_version(&self, group: &str, version: &str) -> Value {
        let store = self.store();
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        for t in store.types().iter().filter(|t| t.group == group && t.version == version) {
            let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
            let prefix = if t.group.is_empty() {
                format!("/api/{}", t.version)
            } else {
                format!("/apis/{}/{}", t.group, t.version)
            };
            let item = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            paths.insert(item, json!({"patch": {
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}},
            }}));
            let reversed: Vec<&str> = t.group.split('.').rev().collect();
            let schema_name = if t.group.is_empty() {
                format!("io.k8s.api.core.{}.{}", t.version, t.kind)
            } else {
                format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
            };
            let mut schema = t
                .schema
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                props
                    .entry("metadata")
                    .or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
            }
            schemas.insert(schema_name, schema);
        }
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": schemas}})
    }

    fn group_list(&self) -> Value {
        let store = self.store();
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in store.types().iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(name, versions)| {
                let list: Vec<Value> =
                    versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
                json!({"name": name, "versions": list, "preferredVersion": list[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }
}

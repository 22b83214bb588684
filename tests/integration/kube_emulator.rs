//! The Kubernetes emulator driven by the real clients: kube's `Api` and kube-runtime's watcher.
//! (`kubectl` is exercised in sandbox_kubectl.rs.)

use std::time::Duration;

use dbx_identity_operator::api::{DatabricksIdentityGrant, DatabricksIdentityGrantStatus, GrantPolicy};
use dbx_identity_operator::sandbox::kube::{self as kube_emulator, KubeEmulatorConfig, KubeEmulatorHandle, KubeFaults};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt};
use serde_json::json;

async fn start(config: KubeEmulatorConfig) -> (KubeEmulatorHandle, Client) {
    let handle = kube_emulator::start(config).await.expect("start");
    let client = handle.emulator.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [DatabricksIdentityGrant::crd(), GrantPolicy::crd()] {
        crds.create(&PostParams::default(), &crd).await.expect("install CRD");
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "team-analytics", "labels": {"dbx-operator.io/team": "analytics"}}}),
            )
            .expect("ns"),
        )
        .await
        .expect("namespace");
    (handle, client)
}

fn example_grant(name: &str) -> DatabricksIdentityGrant {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/20-workspace-managed-identity-keyvault.yaml"
    ))
    .expect("example");
    let mut grant: DatabricksIdentityGrant = serde_yaml_ng::from_str(&text).expect("parse");
    grant.metadata.name = Some(name.into());
    grant.metadata.namespace = None;
    grant
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_status_subresource_generation_and_concurrency() {
    let (_handle, client) = start(KubeEmulatorConfig::default()).await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team-analytics");
    let created = grants.create(&PostParams::default(), &example_grant("kv")).await.expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.spec.deletion_policy, dbx_identity_operator::api::DeletionPolicy::Delete);

    // Status through /status; the main resource ignores status, and spec changes bump generation.
    let status = json!({"status": {"assigned": "1/1", "driftCorrections": 0}});
    let with_status = grants.patch_status("kv", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
    assert_eq!(with_status.status.as_ref().and_then(|s| s.assigned.as_deref()), Some("1/1"));
    assert_eq!(with_status.metadata.generation, Some(1));
    let respec = json!({"spec": {"managementPolicy": "Observe"}, "status": {"assigned": "0/1"}});
    let patched = grants.patch("kv", &PatchParams::default(), &Patch::Merge(&respec)).await.expect("spec patch");
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.assigned.as_deref()),
        Some("1/1"),
        "status unchanged by main-resource writes"
    );

    // A replace carrying a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.spec.deletion_policy = dbx_identity_operator::api::DeletionPolicy::Retain;
    let (code, message) = api_error(grants.replace("kv", &PostParams::default(), &stale).await.expect_err("stale"));
    assert_eq!(code, 409, "{message}");

    // JSON patch works too, including a failing `test` operation.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/deletionPolicy", "value": "Retain"}]))
            .expect("ops");
    let jp = grants.patch("kv", &PatchParams::default(), &Patch::Json::<()>(ops)).await.expect("json patch");
    assert_eq!(jp.spec.deletion_policy, dbx_identity_operator::api::DeletionPolicy::Retain);
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/deletionPolicy", "value": "Delete"}]))
            .expect("ops");
    assert_eq!(
        api_error(grants.patch("kv", &PatchParams::default(), &Patch::Json::<()>(bad)).await.expect_err("test op")).0,
        422
    );

    // Server-side apply (approximated as a merge) creates and updates.
    let mut applied = example_grant("applied");
    applied.status = None;
    let ssa = grants.patch("applied", &PatchParams::apply("dbx-test"), &Patch::Apply(&applied)).await.expect("apply");
    assert_eq!(ssa.metadata.generation, Some(1));

    let missing = grants.get("nope").await.expect_err("missing");
    assert_eq!(api_error(missing).0, 404);
    let (code, _) = api_error(grants.create(&PostParams::default(), &example_grant("kv")).await.expect_err("dup"));
    assert_eq!(code, 409);
}

#[tokio::test]
async fn admission_refuses_bad_grants_with_the_rule_message() {
    let (_handle, client) = start(KubeEmulatorConfig::default()).await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client, "team-analytics");
    let mut bad = example_grant("bad");
    bad.spec.role_assignments[0].scope.push('/');
    let (code, message) = api_error(grants.create(&PostParams::default(), &bad).await.expect_err("trailing slash"));
    assert_eq!(code, 422);
    assert!(message.contains("scope must not end with '/'"), "{message}");
    let raw: Api<kube::core::DynamicObject> = Api::namespaced_with(
        grants.clone().into_client(),
        "team-analytics",
        &kube::discovery::ApiResource::erase::<DatabricksIdentityGrant>(&()),
    );
    let mut obj: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": "enum"},
        "spec": {"identity": {"principal": {"principalId": "0b3d4a1e-6c2f-4e8a-9d7b-5f1a2c3e4d6b"}}, "roleAssignments": [{"role": "Reader", "scope": "/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"}], "deletionPolicy": "Orphan"},
    }))
    .expect("object");
    let (code, message) = api_error(raw.create(&PostParams::default(), &obj).await.expect_err("enum"));
    assert_eq!(code, 422);
    assert!(message.contains("Unsupported value: \"Orphan\""), "{message}");
    obj.data["spec"]["deletionPolicy"] = json!("Retain");
    raw.create(&PostParams::default(), &obj).await.expect("valid now");
}

#[tokio::test]
async fn finalizers_hold_deletion_and_namespaces_must_exist() {
    let (_handle, client) = start(KubeEmulatorConfig::default()).await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team-analytics");
    let mut g = example_grant("held");
    g.metadata.finalizers = Some(vec!["identity.dbx-operator.io/cleanup".into()]);
    grants.create(&PostParams::default(), &g).await.expect("create");
    grants.delete("held", &DeleteParams::default()).await.expect("delete");
    let marked = grants.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let add = json!({"metadata": {"finalizers": ["identity.dbx-operator.io/cleanup", "other"]}});
    assert_eq!(
        api_error(grants.patch("held", &PatchParams::default(), &Patch::Merge(&add)).await.expect_err("no new")).0,
        422
    );
    let clear = json!({"metadata": {"finalizers": null}});
    grants.patch("held", &PatchParams::default(), &Patch::Merge(&clear)).await.expect("clear");
    assert_eq!(api_error(grants.get("held").await.expect_err("gone")).0, 404);

    let elsewhere: Api<DatabricksIdentityGrant> = Api::namespaced(client, "no-such-namespace");
    assert_eq!(api_error(elsewhere.create(&PostParams::default(), &example_grant("x")).await.expect_err("ns")).0, 404);
}

#[tokio::test]
async fn lists_select_and_paginate() {
    let (_handle, client) = start(KubeEmulatorConfig::default()).await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team-analytics");
    for i in 0..5 {
        let mut g = example_grant(&format!("g{i}"));
        g.metadata.labels = Some([("parity".to_owned(), if i % 2 == 0 { "even" } else { "odd" }.to_owned())].into());
        grants.create(&PostParams::default(), &g).await.expect("create");
    }
    let even = grants.list(&ListParams::default().labels("parity=even")).await.expect("list");
    assert_eq!(even.items.len(), 3);
    let by_name = grants.list(&ListParams::default().fields("metadata.name=g3")).await.expect("list");
    assert_eq!(by_name.items.len(), 1);
    let first = grants.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("continue");
    let second = grants.list(&ListParams::default().limit(2).continue_token(&token)).await.expect("page 2");
    assert_eq!(second.items[0].metadata.name.as_deref(), Some("g2"));
    let all: Api<DatabricksIdentityGrant> = Api::all(client);
    assert_eq!(all.list(&ListParams::default()).await.expect("all").items.len(), 5);
}

#[tokio::test]
async fn the_watcher_recovers_from_dropped_streams_and_410_gone_without_losing_updates() {
    let (handle, client) = start(KubeEmulatorConfig {
        history_limit: 5,
        bookmark_interval: Duration::from_millis(200),
        ..KubeEmulatorConfig::default()
    })
    .await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team-analytics");
    grants.create(&PostParams::default(), &example_grant("watched")).await.expect("create");

    let stream = watcher(grants.clone(), watcher::Config::default().timeout(5)).applied_objects();
    let mut stream = Box::pin(stream);
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("object");
    assert_eq!(first.metadata.name.as_deref(), Some("watched"));

    // Cut the stream and write more than the history keeps while the watcher is away: its
    // resume version is then too old (410 Gone) and it must re-list.
    // No `.await` from here to the loop: on this single-threaded runtime the watcher cannot
    // reconnect before all ten updates are written, so its resume version is evicted for sure.
    handle.emulator.drop_watches();
    {
        let mut store = handle.emulator.store();
        let ty = store.find_type("identity.dbx-operator.io", "v1alpha1", "databricksidentitygrants").expect("type");
        for i in 0..10 {
            let status = DatabricksIdentityGrantStatus { drift_corrections: i, ..Default::default() };
            store.update(&ty, "team-analytics", "watched", json!({"status": status}), true).expect("status");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("the watcher saw the last update in time");
        match next {
            Some(Ok(g)) if g.status.as_ref().is_some_and(|s| s.drift_corrections == 9) => break,
            Some(_) => continue,
            None => panic!("watch stream ended"),
        }
    }
    let served = handle.emulator.requests();
    let lists = served.iter().filter(|r| r.verb == "list" && r.resource == "databricksidentitygrants").count();
    assert!(lists >= 2, "the watcher re-listed after 410 Gone ({lists} lists)");
}

#[tokio::test]
async fn injected_failures_reach_the_client() {
    let (handle, client) = start(KubeEmulatorConfig::default()).await;
    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client, "team-analytics");
    handle.emulator.set_faults(KubeFaults { fail_next: 1, fail_status: 500, ..KubeFaults::default() });
    assert_eq!(api_error(grants.list(&ListParams::default()).await.expect_err("500")).0, 500);
    grants.list(&ListParams::default()).await.expect("then fine");
    // kube's client retries 429 by itself: the throttled answer is served, and the call succeeds.
    handle.emulator.set_faults(KubeFaults { fail_next: 1, fail_status: 429, ..KubeFaults::default() });
    grants.list(&ListParams::default()).await.expect("retried after 429");
    assert_eq!(handle.emulator.faults().fail_next, 0, "the 429 was served");
    let recorded = handle.emulator.requests();
    assert!(
        recorded.iter().any(|r| r.verb == "create"
            && r.resource == "customresourcedefinitions"
            && r.group == "apiextensions.k8s.io")
    );
}

/// The operator's Event publisher: an identical repeat bumps the series of the first Event;
/// another note is another Event.
#[tokio::test]
async fn events_fold_identical_repeats_into_a_series() {
    use dbx_identity_operator::controller::events::EventPublisher;
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::EventType;
    let (_handle, client) = start(KubeEmulatorConfig::default()).await;
    let publisher = EventPublisher::new(client.clone(), "dbx-identity-operator", "test-0");
    let reference = ObjectReference {
        api_version: Some("identity.dbx-operator.io/v1alpha1".into()),
        kind: Some("DatabricksIdentityGrant".into()),
        name: Some("g".into()),
        namespace: Some("default".into()),
        uid: Some("uid-1".into()),
        ..ObjectReference::default()
    };
    for _ in 0..3 {
        publisher
            .publish(&reference, EventType::Warning, "AuthorizationFailed", "Reconcile", "denied at rg-a")
            .await
            .expect("publish");
    }
    publisher
        .publish(&reference, EventType::Warning, "AuthorizationFailed", "Reconcile", "denied at rg-b")
        .await
        .expect("publish");
    let events: Vec<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client, "default").list(&Default::default()).await.expect("list").items;
    assert_eq!(events.len(), 2, "{events:?}");
    let first = events.iter().find(|e| e.note.as_deref() == Some("denied at rg-a")).expect("rg-a event");
    assert_eq!(first.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(first.reporting_instance.as_deref(), Some("test-0"));
    assert_eq!(first.regarding.as_ref().and_then(|r| r.uid.as_deref()), Some("uid-1"));
    let second = events.iter().find(|e| e.note.as_deref() == Some("denied at rg-b")).expect("rg-b event");
    assert!(second.series.is_none());
    assert_eq!(publisher.remembered(), 2);
}

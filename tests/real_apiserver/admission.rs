//! The API as a real cluster sees it: both CRDs (the repository's and the chart's copy) install
//! and become Established; every example is accepted; every invalid fixture is refused with the
//! message the project promises (CEL rules: the shared message; schema refusals: the field the
//! Rust validation names).

use std::sync::Arc;
use std::time::Duration;

use dbx_identity_operator::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::Value;

use crate::Case;
use crate::cluster::{RealCluster, install_crds, repo};
use crate::common::{yaml_documents, yaml_files};

pub fn names() -> Vec<String> {
    ["real/crds_established", "real/examples_accepted", "real/invalid_fixtures_refused", "real/cel_cost_same_verdicts"]
        .map(String::from)
        .to_vec()
}

pub fn cases(real: Arc<RealCluster>) -> Vec<Case> {
    let t = Duration::from_secs(60);
    let (a, b, c, d) = (real.clone(), real.clone(), real.clone(), real);
    vec![
        Case::new("real/crds_established", t, move || crds_established(a)),
        Case::new("real/examples_accepted", t, move || examples_accepted(b)),
        Case::new("real/invalid_fixtures_refused", t, move || invalid_fixtures_refused(c)),
        Case::new("real/cel_cost_same_verdicts", t, move || cel_cost_same_verdicts(d)),
    ]
}

fn api_for(client: &kube::Client, object: &Value) -> Api<DynamicObject> {
    let kind = object["kind"].as_str().expect("kind");
    let resource = match kind {
        "Namespace" => ApiResource {
            group: "".into(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: "namespaces".into(),
        },
        "GrantPolicy" => ApiResource::erase::<dbx_identity_operator::api::GrantPolicy>(&()),
        "DatabricksIdentityGrant" => ApiResource::erase::<dbx_identity_operator::api::DatabricksIdentityGrant>(&()),
        other => panic!("unexpected kind {other}"),
    };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

async fn create(client: &kube::Client, object: &Value, dry_run: bool) -> Result<(), String> {
    let dynamic: DynamicObject = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let pp = PostParams { dry_run, ..PostParams::default() };
    match api_for(client, object).create(&pp, &dynamic).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(e) => Err(format!("not an API refusal: {e}")),
    }
}

async fn crds_established(real: Arc<RealCluster>) {
    // The repository's copy was installed when the tier started; the chart's copy must be the
    // same CRDs and install over them.
    let names = install_crds(&real.admin, &repo().join("crds")).await.expect("crds/");
    assert_eq!(names.len(), 2, "{names:?}");
    let chart =
        install_crds(&real.admin, &repo().join("charts/dbx-identity-operator/crds")).await.expect("chart crds/");
    assert_eq!(names, chart);
}

async fn examples_accepted(real: Arc<RealCluster>) {
    let mut created = 0;
    for file in yaml_files(&repo().join("examples")) {
        for object in yaml_documents(&file) {
            create(&real.admin, &object, false)
                .await
                .unwrap_or_else(|e| panic!("{}: the API server refused an example: {e}", file.display()));
            created += 1;
        }
    }
    assert!(created >= 5, "examples lost: {created}");
}

async fn invalid_fixtures_refused(real: Arc<RealCluster>) {
    // Fixtures live in team-analytics, which the examples create; make sure it exists.
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-analytics"}});
    let _ = create(&real.admin, &ns, false).await;
    let files = yaml_files(&repo().join("tests/fixtures/invalid"));
    assert!(files.len() >= 20, "fixtures lost: {}", files.len());
    let mut problems = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let object = yaml_documents(&file).pop().expect("one document");
        let annotations = &object["metadata"]["annotations"];
        let expected = annotations["test.dbx-operator.io/expected-error"].as_str().expect("expected-error");
        let layer = annotations["test.dbx-operator.io/admission"].as_str().expect("admission layer");
        let rust = match object["kind"].as_str() {
            Some("GrantPolicy") => validate_policy_spec_json(&object["spec"]).map(drop),
            _ => validate_grant_spec_json(&object["spec"]).map(drop),
        }
        .map_err(|e| e.to_string())
        .expect_err(&format!("{name}: the Rust validation accepted it"));
        let refusal = match create(&real.admin, &object, true).await {
            Ok(()) => {
                problems.push(format!("{name}: the real API server accepted it"));
                continue;
            }
            Err(message) => message,
        };
        let ok = match layer {
            "cel" => refusal.contains(expected),
            // Schema refusals are in the API server's words; they must name the field Rust names.
            "schema" => refusal.contains(rust.split(':').next().unwrap_or_default()),
            other => panic!("{name}: unknown admission layer {other}"),
        };
        if !ok {
            problems.push(format!("{name}: the API server said {refusal:?}; expected {expected:?} (Rust: {rust:?})"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A CRD carrying the duplicate (role, scope) rule with these bounds.
fn cost_probe(role: u64, scope: u64, items: u64) -> CustomResourceDefinition {
    let rule = dbx_identity_operator::api::rules::UNIQUE_ROLE_SCOPE_RULE;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "costprobes.cel.dbx-operator.io"},
        "spec": {"group": "cel.dbx-operator.io", "scope": "Namespaced",
                 "names": {"plural": "costprobes", "kind": "CostProbe", "singular": "costprobe"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {"roleAssignments": {
                         "type": "array", "maxItems": items, "x-kubernetes-validations": [{"rule": rule}],
                         "items": {"type": "object", "properties": {
                             "role": {"type": "string", "maxLength": role},
                             "scope": {"type": "string", "maxLength": scope}}}}}}}}}}]},
    }))
    .expect("probe CRD")
}

/// The emulator estimates CEL rule costs as the real API server does: CRDs around the budget
/// get the same verdict, and refusals the same factor, from both.
async fn cel_cost_same_verdicts(real: Arc<RealCluster>) {
    let emulator = dbx_identity_operator::sandbox::kube::start(Default::default()).await.expect("emulator");
    let emulated = emulator.emulator.client().expect("client");
    let verdict = |result: Result<CustomResourceDefinition, kube::Error>| match result {
        Ok(_) => "accepted".to_owned(),
        Err(kube::Error::Api(e)) => match e.message.split("factor of ").nth(1) {
            Some(rest) => format!("refused: factor of {}", rest.split_whitespace().next().unwrap_or_default()),
            None => format!("refused otherwise: {}", e.message),
        },
        Err(e) => format!("error: {e}"),
    };
    let mut disagreements = Vec::new();
    let mut refused = 0;
    for (role, scope, items) in [
        (512, 1024, 100),
        (256, 1024, 100),
        (256, 768, 100),
        (256, 512, 100),
        (512, 1024, 70),
        (1024, 4096, 100),
        (64, 128, 300),
    ] {
        let crd = cost_probe(role, scope, items);
        let dry_run = PostParams { dry_run: true, ..PostParams::default() };
        let on_real = verdict(Api::<CustomResourceDefinition>::all(real.admin.clone()).create(&dry_run, &crd).await);
        let on_emulator =
            verdict(Api::<CustomResourceDefinition>::all(emulated.clone()).create(&PostParams::default(), &crd).await);
        if on_emulator.starts_with("accepted") {
            let _ = Api::<CustomResourceDefinition>::all(emulated.clone())
                .delete("costprobes.cel.dbx-operator.io", &Default::default())
                .await;
        }
        refused += usize::from(on_real.starts_with("refused"));
        if on_real != on_emulator {
            disagreements
                .push(format!("role {role}, scope {scope}, {items} items: real {on_real}; emulator {on_emulator}"));
        }
    }
    emulator.shutdown().await;
    assert!(refused >= 3, "the probes no longer straddle the budget");
    assert!(
        disagreements.is_empty(),
        "the emulator's CEL cost estimate disagrees with the API server:\n{}",
        disagreements.join("\n")
    );
}

//! The public API as users meet it: the checked-in CRDs, the examples, and refusals of bad
//! manifests — by the CRD schema and its CEL rules (what the API server does at admission) and
//! by the Rust validation the controller runs.

use std::path::PathBuf;

use crate::common::{yaml_documents, yaml_files};

use dbx_identity_operator::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
use dbx_identity_operator::api::{DatabricksIdentityGrant, GrantPolicy, crd_documents};
use dbx_identity_operator::sandbox::kube::schema::validate_structural;
use k8s_openapi::api::core::v1::Namespace;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn openapi_schema(kind: &str) -> Value {
    let crd = match kind {
        "DatabricksIdentityGrant" => DatabricksIdentityGrant::crd(),
        "GrantPolicy" => GrantPolicy::crd(),
        other => panic!("no CRD for kind {other}"),
    };
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
    serde_json::to_value(schema).expect("schema as JSON")
}

/// What the API server would say: structural errors first; CEL runs only on structurally valid objects.
fn admission_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("kind");
    let schema = openapi_schema(kind);
    let structural = validate_structural(&schema, object);
    if !structural.is_empty() {
        return structural.iter().map(ToString::to_string).collect();
    }
    match Validator::new().validate(&schema, object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| format!("{}: {}", e.field_path, e.message)).collect(),
    }
}

fn rust_errors(object: &Value) -> Result<(), String> {
    let spec = &object["spec"];
    match object["kind"].as_str() {
        Some("DatabricksIdentityGrant") => validate_grant_spec_json(spec).map(|_| ()).map_err(|e| e.to_string()),
        Some("GrantPolicy") => validate_policy_spec_json(spec).map(|_| ()).map_err(|e| e.to_string()),
        other => panic!("unexpected kind {other:?}"),
    }
}

#[test]
fn crds_directory_matches_the_generated_crds() {
    let generated = crd_documents().expect("render CRDs");
    let dir = repo().join("crds");
    let on_disk: Vec<String> =
        yaml_files(&dir).iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    let expected: Vec<String> = generated.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        on_disk, expected,
        "crds/ holds other files than the CRDs; regenerate with `cargo run -- crd --write-dir crds`"
    );
    for (name, yaml) in generated {
        let current = std::fs::read_to_string(dir.join(&name)).expect("read CRD");
        assert!(current == yaml, "crds/{name} is stale: regenerate with `cargo run -- crd --write-dir crds`");
    }
}

#[test]
fn every_example_is_accepted_by_admission_and_by_the_controller() {
    let files = yaml_files(&repo().join("examples"));
    assert!(files.len() >= 4, "examples/ lost files: {files:?}");
    let mut kinds = Vec::new();
    for file in files {
        for object in yaml_documents(&file) {
            let kind = object["kind"].as_str().expect("kind").to_owned();
            match kind.as_str() {
                "Namespace" => {
                    serde_json::from_value::<Namespace>(object).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                }
                "DatabricksIdentityGrant" | "GrantPolicy" => {
                    assert_eq!(admission_errors(&object), Vec::<String>::new(), "{}", file.display());
                    rust_errors(&object).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    // The typed API reads it too (what the controller's watcher does).
                    if kind == "GrantPolicy" {
                        serde_json::from_value::<GrantPolicy>(object)
                            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    } else {
                        serde_json::from_value::<DatabricksIdentityGrant>(object)
                            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    }
                }
                other => panic!("{}: unexpected kind {other}", file.display()),
            }
            kinds.push(kind);
        }
    }
    for kind in ["Namespace", "GrantPolicy", "DatabricksIdentityGrant"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} example");
    }
}

#[test]
fn every_bad_fixture_is_refused_with_its_expected_message() {
    let files = yaml_files(&repo().join("tests/fixtures/invalid"));
    assert!(files.len() >= 20, "fixtures lost: {}", files.len());
    for file in files {
        let name = file.display();
        let object = yaml_documents(&file).pop().expect("one document");
        let annotations = &object["metadata"]["annotations"];
        let expected = annotations["test.dbx-operator.io/expected-error"].as_str().expect("expected-error annotation");
        let layer = annotations["test.dbx-operator.io/admission"].as_str().expect("admission annotation");

        let rust = rust_errors(&object).expect_err(&format!("{name}: Rust validation accepted it"));
        assert!(rust.contains(expected), "{name}: Rust said {rust:?}, expected {expected:?}");

        let admission = admission_errors(&object);
        assert!(!admission.is_empty(), "{name}: admission accepted it");
        match layer {
            // A CEL rule carries the same message as the Rust validation.
            "cel" => assert!(
                admission.iter().any(|e| e.contains(expected)),
                "{name}: admission said {admission:?}, expected {expected:?}"
            ),
            // Schema refusals use the API server's wording; they must name the same field.
            "schema" => {
                let rust_field = rust.split(':').next().expect("field");
                assert!(
                    admission.iter().any(|e| e.split(':').next() == Some(rust_field)),
                    "{name}: admission refused other fields ({admission:?}) than Rust ({rust_field})"
                );
            }
            other => panic!("{name}: unknown admission layer {other}"),
        }
    }
}

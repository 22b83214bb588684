//! The Helm chart stays in step with the code: its CRDs are the generated ones, its appVersion
//! is the crate's, and its values schema accepts the defaults and refuses wrong types and
//! unknown keys. (`.ci/run` also lints it with Helm's own library.)

use std::path::PathBuf;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/dbx-identity-operator")
}

fn yaml(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn chart_crds_are_the_generated_crds() {
    for (file, generated) in dbx_identity_operator::api::crd_documents().expect("crds") {
        let in_chart = std::fs::read_to_string(chart().join("crds").join(&file)).expect("chart CRD");
        assert!(
            in_chart == generated,
            "charts/dbx-identity-operator/crds/{file} is stale: copy crds/{file} into the chart"
        );
    }
}

#[test]
fn app_version_follows_the_crate() {
    let chart_yaml = yaml(chart().join("Chart.yaml"));
    assert_eq!(chart_yaml["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}

#[test]
fn values_schema_accepts_defaults_and_refuses_mistakes() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).expect("schema"))
            .expect("json");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let defaults = yaml(chart().join("values.yaml"));
    let errors: Vec<String> = validator.iter_errors(&defaults).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "defaults rejected: {errors:?}");
    for (what, patch) in [
        ("wrong type", serde_json::json!({"replicaCount": "two"})),
        ("unknown key", serde_json::json!({"replicas": 2})),
        ("unknown nested key", serde_json::json!({"controller": {"resync": "5m"}})),
        ("bad enum", serde_json::json!({"azure": {"auth": "password"}})),
        ("http endpoint", serde_json::json!({"azure": {"armEndpoint": "http://management.azure.com"}})),
    ] {
        let mut values = defaults.clone();
        json_patch::merge(&mut values, &patch);
        assert!(!validator.is_valid(&values), "{what} accepted");
    }
}

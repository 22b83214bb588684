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

/// The argocd-cm snippet in the chart's README is the scripts in `argocd/`, verbatim.
#[test]
fn argocd_snippet_in_the_chart_readme_is_the_scripts() {
    let readme = std::fs::read_to_string(chart().join("README.md")).expect("chart README");
    let block = readme.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
    let config_map: serde_json::Value = serde_yaml_ng::from_str(block).expect("the snippet is YAML");
    assert_eq!(config_map["metadata"]["name"], "argocd-cm");
    for kind in ["DatabricksIdentityGrant", "GrantPolicy"] {
        let key = format!("resource.customizations.health.identity.dbx-operator.io_{kind}");
        let script = crate::common::health::argocd_script(kind);
        assert_eq!(
            config_map["data"][&key].as_str(),
            Some(script.as_str()),
            "{key} differs from argocd/ in the README"
        );
    }
}

/// An object with no status at all: Argo CD's check waits (Progressing); kstatus, which skips
/// its generation check without `observedGeneration`, says Current — which is why the CRDs
/// default `status.observedGeneration` to 0 (the real tier's `gitops_health` checks that a new
/// grant reads InProgress).
#[test]
fn gitops_health_before_any_status() {
    use crate::common::health::{argocd, kstatus};
    for kind in ["DatabricksIdentityGrant", "GrantPolicy"] {
        let obj = serde_json::json!({"apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": kind,
                                     "metadata": {"name": "x", "generation": 1}, "spec": {}});
        assert_eq!(argocd(&obj).expect("lua").0, "Progressing", "{kind}");
        assert_eq!(kstatus(&obj), "Current", "{kind}");
    }
}

/// The metric-name check finds what is missing (so its pass on a live scrape means something).
#[test]
fn dashboard_check_reports_missing_metrics_and_labels() {
    use crate::common::observability::{selectors, unexported};
    let all = unexported("");
    assert!(all.iter().any(|p| p.contains("`dbx_identity_operator_grants` is not exported")), "{all:#?}");
    assert!(all.iter().any(|p| p.starts_with("PrometheusRule")), "{all:#?}");
    let only_grants = "dbx_identity_operator_grants{ready=\"True\",reason=\"Ready\"} 1\n";
    let problems = unexported(only_grants);
    assert!(
        problems.iter().any(|p| p.contains("`dbx_identity_operator_grants` has no label `health`")),
        "{problems:#?}"
    );
    assert_eq!(
        selectors("sum by (x) (rate(a_total{b=\"1\"}[5m])) / c").expect("parses"),
        vec![("a_total".to_owned(), vec!["b".to_owned()]), ("c".to_owned(), vec![])]
    );
    assert!(selectors("sum(rate(a[5m])").is_err());
}

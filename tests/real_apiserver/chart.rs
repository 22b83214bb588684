//! The Helm chart on the real API server, installed with Helm's own library (helm-sdkpy, as
//! `.ci/helm_lint.py` uses it) under each value set the lint uses, with server-side validation;
//! then `helm upgrade` to another value set and `helm uninstall` (`.ci/helm_real.py`).
//!
//! Needs a Python with helm-sdkpy: `DBX_HELM_PYTHON` names it (`.ci/run` makes the venv).
//! Without it the case is not run and one line says so; under `CI=true` that is a failure.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::Case;
use crate::cluster::{RealCluster, repo};

pub const PYTHON_ENV: &str = "DBX_HELM_PYTHON";

pub fn names() -> Vec<String> {
    vec!["real/helm_install_upgrade_uninstall".into()]
}

pub fn cases(real: Arc<RealCluster>) -> Vec<Case> {
    let python = std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match python {
        Some(python) => vec![Case::new(names()[0].clone(), Duration::from_secs(300), move || helm(real, python))],
        None if ci => vec![Case::new(names()[0].clone(), Duration::from_secs(5), || async {
            panic!("CI=true: {PYTHON_ENV} must name a Python with helm-sdkpy (.ci/run makes target/helm-venv)")
        })],
        None => {
            println!("helm install on the real API server not run: {PYTHON_ENV} is not set (a Python with helm-sdkpy)");
            vec![]
        }
    }
}

/// The Prometheus Operator's kinds the chart can render, reduced to what the API server needs
/// to serve them (as on a cluster running the Prometheus Operator).
async fn install_monitoring_kinds(admin: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for (plural, kind) in [("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule")] {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"plural": plural, "kind": kind, "singular": kind.to_ascii_lowercase()},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
        }))
        .expect("crd");
        let name = format!("{plural}.monitoring.coreos.com");
        crds.patch(&name, &PatchParams::apply("real-apiserver-test").force(), &Patch::Apply(&crd))
            .await
            .expect("monitoring CRD");
    }
    // Served once Established.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn helm(real: Arc<RealCluster>, python: String) {
    install_monitoring_kinds(&real.admin).await;
    let kubeconfig = real.plane.admin_kubeconfig();
    let output = tokio::process::Command::new(&python)
        .arg(repo().join(".ci/helm_real.py"))
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{}", text.trim_end());
    assert!(output.status.success(), "the chart on the real API server failed:\n{text}");
}

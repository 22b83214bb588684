//! The public API: custom resource types, their CRDs, and the validation shared by admission
//! (CEL rules in the schema) and the controller.

pub mod grant;
pub mod policy;
pub mod reason;
pub mod rules;
pub mod validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSON};
use kube::CustomResourceExt;

pub use grant::*;
pub use policy::*;
pub use reason::{Health, Reason};

/// API group of every resource the operator serves.
pub const GROUP: &str = "identity.dbx-operator.io";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// Errors from rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot render CRD {name} as YAML: {source}")]
    Yaml { name: String, source: serde_yaml_ng::Error },
}

/// Both CRDs, as generated from the types plus a default for `status`:
/// `{observedGeneration: 0}`. The API server applies it when it reads an object the operator
/// has not written status for yet, so a new grant or policy reads as not yet observed
/// (generation 1, observedGeneration 0) and kstatus — which skips its generation check when
/// `observedGeneration` is absent — reports it in progress rather than Current.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![DatabricksIdentityGrant::crd(), GrantPolicy::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            let status = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("status"));
            if let Some(status) = status {
                status.default = Some(JSON(serde_json::json!({"observedGeneration": 0})));
            }
        }
    }
    crds
}

/// The CRDs as `(file name, YAML document)`, in the order `crd` prints them. Each document
/// starts with `---`, so the files concatenated are the command's output.
pub fn crd_documents() -> Result<Vec<(String, String)>, CrdError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml =
                serde_yaml_ng::to_string(&crd).map_err(|source| CrdError::Yaml { name: name.clone(), source })?;
            Ok((format!("{name}.yaml"), format!("---\n{yaml}")))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream (what `dbx-identity-operator crd` prints).
pub fn crds_yaml() -> Result<String, CrdError> {
    Ok(crd_documents()?.into_iter().map(|(_, doc)| doc).collect())
}

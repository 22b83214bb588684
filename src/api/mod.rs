//! The public API: custom resource types, their CRDs, and the validation shared by admission
//! (CEL rules in the schema) and the controller.

pub mod grant;
pub mod policy;
pub mod reason;
pub mod rules;
pub mod validation;

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

/// The CRDs as `(file name, YAML document)`, in the order `crd` prints them. Each document
/// starts with `---`, so the files concatenated are the command's output.
pub fn crd_documents() -> Result<Vec<(String, String)>, CrdError> {
    [DatabricksIdentityGrant::crd(), GrantPolicy::crd()]
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

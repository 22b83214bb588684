//! Manifests for `plan`: grants, GrantPolicies and Namespaces read from files, validated with the
//! operator's own validation. Every problem names the file, the object and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
use crate::api::{DatabricksIdentityGrant, GrantPolicy};

const GROUP_VERSION: &str = "identity.dbx-operator.io/v1alpha1";

/// A grant and where it came from.
#[derive(Debug, Clone)]
pub struct FileGrant {
    /// `file` (and document number when the file holds several).
    pub source: String,
    pub grant: DatabricksIdentityGrant,
}

/// What the files hold.
#[derive(Debug, Default)]
pub struct Manifests {
    pub grants: Vec<FileGrant>,
    pub policies: Vec<GrantPolicy>,
    /// Namespace labels, by name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Objects of other kinds, skipped: `(source, kind)`.
    pub skipped: Vec<(String, String)>,
    /// Everything wrong, one line each.
    pub errors: Vec<String>,
}

/// The files under `paths`: each file as given, each directory's `.yaml`, `.yml` and `.json`
/// files (recursively, sorted).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            collect(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no manifest files (.yaml, .yml, .json) under {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and validates every document of every file.
pub fn read(paths: &[PathBuf]) -> Manifests {
    let mut manifests = Manifests::default();
    let files = match files(paths) {
        Ok(files) => files,
        Err(e) => {
            manifests.errors.push(e);
            return manifests;
        }
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                manifests.errors.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let documents: Vec<Value> = match parse_documents(&text) {
            Ok(docs) => docs,
            Err(e) => {
                manifests.errors.push(format!("{}: not YAML: {e}", file.display()));
                continue;
            }
        };
        let several = documents.len() > 1;
        for (n, doc) in documents.into_iter().enumerate() {
            let source =
                if several { format!("{} (document {})", file.display(), n + 1) } else { file.display().to_string() };
            add(&mut manifests, source, doc);
        }
    }
    manifests
}

fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn add(manifests: &mut Manifests, source: String, doc: Value) {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let object = |ns: Option<&str>| match ns {
        Some(ns) => format!("{source}: {kind} {ns}/{name}"),
        None => format!("{source}: {kind} {name}"),
    };
    match (api_version.as_str(), kind.as_str()) {
        (GROUP_VERSION, "DatabricksIdentityGrant") => {
            let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
            let what = object(Some(&namespace));
            if name.is_empty() {
                manifests.errors.push(format!("{what}: metadata.name is required"));
                return;
            }
            if let Err(errors) = validate_grant_spec_json(doc.get("spec").unwrap_or(&Value::Null)) {
                for e in errors.iter() {
                    manifests.errors.push(format!("{what}: {e}"));
                }
                return;
            }
            match serde_json::from_value::<DatabricksIdentityGrant>(doc) {
                Ok(mut grant) => {
                    grant.metadata.namespace = Some(namespace);
                    // What a plan compares against is the cluster's status, never the file's.
                    grant.status = None;
                    manifests.grants.push(FileGrant { source, grant });
                }
                Err(e) => manifests.errors.push(format!("{what}: {e}")),
            }
        }
        (GROUP_VERSION, "GrantPolicy") => {
            let what = object(None);
            if name.is_empty() {
                manifests.errors.push(format!("{what}: metadata.name is required"));
                return;
            }
            if let Err(errors) = validate_policy_spec_json(doc.get("spec").unwrap_or(&Value::Null)) {
                for e in errors.iter() {
                    manifests.errors.push(format!("{what}: {e}"));
                }
                return;
            }
            match serde_json::from_value::<GrantPolicy>(doc) {
                Ok(policy) => manifests.policies.push(policy),
                Err(e) => manifests.errors.push(format!("{what}: {e}")),
            }
        }
        ("v1", "Namespace") => {
            let labels: BTreeMap<String, String> = doc
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            manifests.namespaces.insert(name, labels);
        }
        (GROUP_VERSION, other) => {
            manifests.errors.push(format!("{source}: unknown kind '{other}' in {GROUP_VERSION}"));
        }
        _ if kind.is_empty() || api_version.is_empty() => {
            manifests.errors.push(format!("{source}: not a Kubernetes object (apiVersion and kind are required)"));
        }
        _ => manifests.skipped.push((source, format!("{api_version} {kind}"))),
    }
}

/// A namespace's labels as the API server has them: the ones given, plus
/// `kubernetes.io/metadata.name`, which it sets on every namespace.
pub fn namespace_labels(given: Option<&BTreeMap<String, String>>, name: &str) -> BTreeMap<String, String> {
    let mut labels = given.cloned().unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), name.to_owned());
    labels
}

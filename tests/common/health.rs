//! How GitOps tools judge our kinds: kstatus's generic algorithm (what Flux and `kpt` use for
//! custom resources) and the chart's Argo CD health checks, run in a Lua 5.1 interpreter as
//! Argo CD runs them.

use std::path::Path;

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde_json::Value;

/// kstatus's result for a custom resource, following `checkGenericProperties` in
/// sigs.k8s.io/cli-utils `pkg/kstatus/status/generic.go`: Terminating when deletion is under
/// way; InProgress when `status.observedGeneration` (if present) differs from
/// `metadata.generation`; then the first True `Reconciling` (InProgress) or `Stalled` (Failed)
/// condition; otherwise Current (custom resources have no kind-specific rules).
pub fn kstatus(obj: &Value) -> &'static str {
    if obj.pointer("/metadata/deletionTimestamp").and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
        return "Terminating";
    }
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj.pointer("/status/observedGeneration").and_then(Value::as_i64);
    if let (Some(generation), Some(observed)) = (generation, observed)
        && generation != observed
    {
        return "InProgress";
    }
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    for c in &conditions {
        let is_true = c["status"] == "True";
        if c["type"] == "Reconciling" && is_true {
            return "InProgress";
        }
        if c["type"] == "Stalled" && is_true {
            return "Failed";
        }
    }
    "Current"
}

/// The chart's Argo CD health check for `kind` (`DatabricksIdentityGrant` or `GrantPolicy`).
pub fn argocd_script(kind: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/dbx-identity-operator/argocd")
        .join(format!("{}.lua", kind.to_ascii_lowercase()));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Argo CD's health for `obj` by the chart's script: (status, message). Argo CD hands the
/// object to the script as the global `obj`, JSON nulls as nil.
pub fn argocd(obj: &Value) -> Result<(String, String), String> {
    let kind = obj["kind"].as_str().ok_or("the object has no kind")?;
    let lua = Lua::new();
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).map_err(|e| e.to_string())?;
    lua.globals().set("obj", value).map_err(|e| e.to_string())?;
    let hs: mlua::Table = lua.load(argocd_script(kind)).eval().map_err(|e| e.to_string())?;
    let status: String = hs.get("status").map_err(|e| e.to_string())?;
    let message: Option<String> = hs.get("message").map_err(|e| e.to_string())?;
    Ok((status, message.unwrap_or_default()))
}

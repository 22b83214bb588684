//! `meta.k8s.io/v1` Table rendering, so `kubectl get` shows a CRD's printer columns
//! (`Ready`, `Reason`, `Assigned` …) as it does against a real API server. Printer-column
//! JSONPaths are evaluated with the subset CRDs use: `.a.b`, `[N]`, `[*]` and
//! `[?(@.field=="value")]`.

use serde_json::{Value, json};

use super::store::ResourceType;

/// Values `path` selects in `object`.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![object];
    let mut rest = path.trim();
    rest = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')).unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { return Vec::new() };
            let selector = &r[..end];
            rest = &r[end + 1..];
            current =
                current.into_iter().filter_map(Value::as_array).flat_map(|items| select(items, selector)).collect();
        } else {
            return Vec::new();
        }
    }
    current
}

fn select<'a>(items: &'a [Value], selector: &str) -> Vec<&'a Value> {
    if selector == "*" {
        return items.iter().collect();
    }
    if let Ok(index) = selector.parse::<usize>() {
        return items.get(index).into_iter().collect();
    }
    // ?(@.field=="value")
    let Some(condition) = selector.strip_prefix("?(@.").and_then(|s| s.strip_suffix(')')) else {
        return Vec::new();
    };
    let Some((field, value)) = condition.split_once("==") else { return Vec::new() };
    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
    items.iter().filter(|item| item.get(field.trim()).and_then(Value::as_str) == Some(value)).collect()
}

/// Renders a creation timestamp as kubectl's age (`5s`, `3m`, `2h`, `4d`).
fn age(timestamp: &str) -> String {
    let Ok(then) = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339) else {
        return "<unknown>".into();
    };
    let seconds = (time::OffsetDateTime::now_utc() - then).whole_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cell(object: &Value, column: &Value) -> Value {
    let path = column["jsonPath"].as_str().unwrap_or_default();
    let values = json_path(object, path);
    let Some(first) = values.first() else { return json!("") };
    match column["type"].as_str() {
        Some("date") => json!(first.as_str().map(age).unwrap_or_default()),
        Some("integer") | Some("number") | Some("boolean") => (*first).clone(),
        _ => json!(
            values
                .iter()
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// A Table of `objects` with the type's printer columns (or Name and Age).
pub fn table(ty: &ResourceType, objects: &[Value], resource_version: u64) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    let printer: Vec<Value> = if ty.printer_columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        ty.printer_columns.clone()
    };
    for c in &printer {
        columns.push(json!({
            "name": c["name"], "type": if c["type"] == "date" { json!("string") } else { c["type"].clone() },
            "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(printer.iter().map(|c| cell(o, c)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_the_json_paths_printer_columns_use() {
        let o = json!({"status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True", "reason": "Converged"}], "assigned": "2/3"}});
        assert_eq!(json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"), vec![&json!("True")]);
        assert_eq!(json_path(&o, ".status.conditions[?(@.type=='Ready')].reason"), vec![&json!("Converged")]);
        assert_eq!(json_path(&o, ".status.assigned"), vec![&json!("2/3")]);
        assert_eq!(json_path(&o, ".status.conditions[0].type"), vec![&json!("Synced")]);
        assert_eq!(json_path(&o, ".status.conditions[*].type").len(), 2);
        assert!(json_path(&o, ".status.missing").is_empty());
    }
}

//! Structural OpenAPI v3 validation of custom resources, as the API server does it before the
//! CEL rules run: `type`, `nullable`, `required`, `enum`, `pattern`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `minimum`/`maximum`, `properties`, `items`, `additionalProperties`.
//!
//! Messages follow the API server's wording (`Unsupported value`, `Required value`, `Too many`,
//! `Too long`, `Invalid value`) so tests read like real refusals. Unknown fields are not errors:
//! the API server prunes them (see [`prune_unknown_fields`]).
//!
//! `format: date-time` is checked too. Not covered (documented in docs/sandbox.md): other `format`s,
//! `x-kubernetes-int-or-string`, `allOf`/`anyOf`/`oneOf`/`not`, and `x-kubernetes-list-type`
//! uniqueness.

use serde_json::Value;

/// One schema violation at a field path such as `spec.roleAssignments[0].role`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SchemaError {
    pub field: String,
    pub message: String,
}

/// Validates `value` against `schema`; `path` is the field path of `value` ("" at the root).
pub fn validate_structural(schema: &Value, value: &Value) -> Vec<SchemaError> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<SchemaError>) {
    let mut push = |message: String| errors.push(SchemaError { field: path.to_owned(), message });
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            push(format!(
                "Invalid value: \"null\": {path} in body must be of type {}",
                schema.get("type").and_then(Value::as_str).unwrap_or("object")
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            push(format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: {}", short(value)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list = allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
        push(format!("Unsupported value: {}: supported values: {list}", short(value)));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                push(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                push(format!("Invalid value: {}: {path} in body should be at least {min} chars long", short(value)));
            }
            // The one `format` our CRDs use; the API server checks it (RFC 3339).
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && s.parse::<k8s_openapi::jiff::Timestamp>().is_err()
            {
                push(format!("Invalid value: \"{s}\": {path} in body must be of type date-time: \"{s}\""));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => {
                        push(format!("Invalid value: {}: {path} in body should match '{pattern}'", short(value)))
                    }
                    Ok(_) => {}
                    Err(e) => push(format!("Internal error: pattern '{pattern}' does not compile: {e}")),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                push(format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                push(format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                push(format!("Too many: {len}: must have at most {max} items"));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                push(format!("Invalid value: {len}: {path} in body should have at least {min} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if !map.contains_key(key) {
                    errors.push(SchemaError { field: join(path, key), message: "Required value".to_owned() });
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                if let Some(child_schema) = properties.and_then(|p| p.get(key)).or(additional) {
                    check(child_schema, child, &join(path, key), errors);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Paths of fields the schema does not declare (what pruning would remove), for
/// `fieldValidation=Strict`.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_unknown(schema, value, "", true, &mut found);
    found
}

fn collect_unknown(schema: &Value, value: &Value, path: &str, root: bool, found: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match properties.and_then(|p| p.get(key)).or(additional) {
                    Some(child_schema) => collect_unknown(child_schema, child, &join(path, key), false, found),
                    None => found.push(join(path, key)),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    collect_unknown(item_schema, item, &format!("{path}[{i}]"), false, found);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields the schema does not declare, as the API server does for structural schemas
/// (unless `x-kubernetes-preserve-unknown-fields` is set). `metadata`, `apiVersion` and `kind`
/// at the root are kept.
pub fn prune_unknown_fields(schema: &Value, value: &mut Value) {
    prune(schema, value, true);
}

fn prune(schema: &Value, value: &mut Value, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            map.retain(|key, _| {
                (root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"))
                    || properties.is_some_and(|p| p.contains_key(key))
                    || additional.is_some()
            });
            for (key, child) in map.iter_mut() {
                if root && key == "metadata" {
                    continue;
                }
                if let Some(child_schema) = properties.and_then(|p| p.get(key)).or(additional) {
                    prune(child_schema, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["mode", "items"],
                    "properties": {
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "name": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$", "nullable": true},
                        "count": {"type": "integer", "minimum": 1.0, "maximum": 5.0},
                        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }
            }
        })
    }

    #[test]
    fn accepts_a_valid_object() {
        let ok = json!({"spec": {"mode": "A", "name": "ab", "count": 3, "items": ["x"], "labels": {"a": "b"}}});
        assert_eq!(validate_structural(&schema(), &ok), vec![]);
    }

    #[test]
    fn reports_each_violation_at_its_path() {
        let bad =
            json!({"spec": {"mode": "C", "name": "ABCD", "count": 9, "items": [1, "a", "b"], "labels": {"a": 1}}});
        let errors = validate_structural(&schema(), &bad);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.count", "spec.items", "spec.items[0]", "spec.labels.a", "spec.mode", "spec.name", "spec.name"]
        );
        assert!(errors.iter().any(|e| e.message.starts_with("Unsupported value: \"C\"")));
        assert!(errors.iter().any(|e| e.message.starts_with("Too many: 3")));
        let missing = validate_structural(&schema(), &json!({"spec": {"name": null}}));
        assert_eq!(
            missing.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["spec.mode: Required value", "spec.items: Required value"]
        );
    }

    #[test]
    fn prunes_unknown_fields_but_keeps_metadata() {
        let mut v = json!({"apiVersion": "x", "kind": "y", "metadata": {"name": "n", "extra": 1}, "spec": {"mode": "A", "bogus": true, "labels": {"k": "v"}}, "junk": 1});
        assert_eq!(unknown_fields(&schema(), &v), ["junk", "spec.bogus"]);
        prune_unknown_fields(&schema(), &mut v);
        assert_eq!(
            v,
            json!({"apiVersion": "x", "kind": "y", "metadata": {"name": "n", "extra": 1}, "spec": {"mode": "A", "labels": {"k": "v"}}})
        );
    }
}

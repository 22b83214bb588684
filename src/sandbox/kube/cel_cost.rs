//! The API server's *estimated* cost of a CRD's CEL rules, so the emulator refuses a CRD the real
//! API server refuses ("estimated rule cost exceeds budget"). It follows cel-go's static cost
//! estimator (checker/cost.go) and the Kubernetes CEL library's function costs for what CRD
//! rules use: an identifier or field selection costs 1, a literal 0; string functions cost 0.1
//! per character of their input (`lowerAscii`, `startsWith`, `==` on strings …), `matches`
//! multiplies string and regex lengths, `contains` both lengths; a comprehension (`all`,
//! `exists`, `exists_one`, `map`, `filter`) costs its loop body times the list's `maxItems`.
//! A string's estimated size is 4 × `maxLength` (bytes of as many UTF-8 characters).
//!
//! The real-API-server tier applies CRD variants to both servers and requires the same verdict
//! (tests/real_apiserver/admission.rs), so a divergence from the real estimator shows in CI.

use std::collections::BTreeMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value;

/// kube-apiserver's per-rule limit (`StaticEstimatedCostLimit`).
pub const PER_RULE_LIMIT: u64 = 10_000_000;
/// kube-apiserver's limit for all rules of a CRD together, each times how often it can run
/// (`StaticEstimatedCRDCostLimit`).
pub const PER_CRD_LIMIT: u64 = 100_000_000;
/// What the API server assumes for a string or list without a bound (its request size limit).
const UNBOUNDED: u64 = 3 * 1024 * 1024;
const STRING_FACTOR: f64 = 0.1;
const REGEX_FACTOR: f64 = 0.25;

/// What the estimator knows of a value: its largest size and, for lists and objects, its parts.
#[derive(Debug, Clone)]
enum Shape {
    String(u64),
    List { max_items: u64, items: Box<Shape> },
    Object(BTreeMap<String, Shape>),
    Scalar,
}

impl Shape {
    fn of(schema: &Value) -> Shape {
        let bound = |key: &str, per_unit: u64| schema[key].as_u64().map_or(UNBOUNDED, |n| n.saturating_mul(per_unit));
        match schema["type"].as_str() {
            Some("string") => Shape::String(bound("maxLength", 4)),
            Some("array") => {
                Shape::List { max_items: bound("maxItems", 1), items: Box::new(Shape::of(&schema["items"])) }
            }
            Some("object") => Shape::Object(
                schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), Shape::of(v)))
                    .collect(),
            ),
            _ => Shape::Scalar,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Shape::String(n) => *n,
            Shape::List { max_items, .. } => *max_items,
            Shape::Object(fields) => fields.len() as u64,
            Shape::Scalar => 1,
        }
    }
}

/// Cost times a factor, rounded up (cel-go's `MultiplyByCostFactor`).
fn factor(size: u64, f: f64) -> u64 {
    (size as f64 * f).ceil() as u64
}

struct Estimator {
    /// Variables in scope: `self`, comprehension variables.
    vars: Vec<(String, Shape)>,
}

/// (cost, shape of the result)
type Estimate = (u64, Shape);

impl Estimator {
    fn var(&self, name: &str) -> Shape {
        self.vars.iter().rev().find(|(n, _)| n == name).map_or(Shape::Scalar, |(_, s)| s.clone())
    }

    fn cost(&mut self, e: &IdedExpr) -> Estimate {
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => (0, Shape::String(s.inner().chars().count() as u64)),
            Expr::Literal(_) => (0, Shape::Scalar),
            Expr::Ident(name) => (1, self.var(name)),
            Expr::Select(select) => {
                let (cost, shape) = self.cost(&select.operand);
                let field = match &shape {
                    Shape::Object(fields) => fields.get(&select.field).cloned().unwrap_or(Shape::Scalar),
                    _ => Shape::Scalar,
                };
                if select.test { (cost + 1, Shape::Scalar) } else { (cost + 1, field) }
            }
            Expr::List(list) => {
                let mut cost = 10; // createListBaseCost
                let mut item = Shape::Scalar;
                for element in &list.elements {
                    let (c, s) = self.cost(element);
                    cost += c;
                    item = s;
                }
                (cost, Shape::List { max_items: list.elements.len() as u64, items: Box::new(item) })
            }
            Expr::Map(_) | Expr::Struct(_) => (40, Shape::Scalar),
            Expr::Comprehension(comp) => {
                let (range_cost, range) = self.cost(&comp.iter_range);
                let (init_cost, _) = self.cost(&comp.accu_init);
                let (count, item) = match &range {
                    Shape::List { max_items, items } => (*max_items, (**items).clone()),
                    Shape::Object(fields) => (fields.len() as u64, Shape::String(UNBOUNDED)),
                    other => (other.size(), Shape::Scalar),
                };
                self.vars.push((comp.accu_var.clone(), Shape::Scalar));
                self.vars.push((comp.iter_var.clone(), item));
                let (cond, _) = self.cost(&comp.loop_cond);
                let (step, _) = self.cost(&comp.loop_step);
                self.vars.pop();
                let (result, _) = self.cost(&comp.result);
                self.vars.pop();
                let shape = match &comp.accu_init.expr {
                    Expr::List(_) => Shape::List { max_items: count, items: Box::new(Shape::Scalar) },
                    _ => Shape::Scalar,
                };
                (range_cost + init_cost + result + count.saturating_mul(cond + step), shape)
            }
            Expr::Call(call) => self.call(&call.func_name, call.target.as_deref(), &call.args),
            Expr::Unspecified => (0, Shape::Scalar),
        }
    }

    fn call(&mut self, function: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Estimate {
        let (target_cost, target_shape) = match target {
            Some(t) => self.cost(t),
            None => (0, Shape::Scalar),
        };
        let estimated: Vec<Estimate> = args.iter().map(|a| self.cost(a)).collect();
        let args_cost: u64 = estimated.iter().map(|e| e.0).sum();
        let size = |i: usize| estimated.get(i).map_or(1, |e| e.1.size());
        let (own, result) = match function {
            operators::LOGICAL_AND | operators::LOGICAL_OR => (0, Shape::Scalar),
            operators::CONDITIONAL => {
                let branches = estimated.get(1).map_or(0, |e| e.0).max(estimated.get(2).map_or(0, |e| e.0));
                let cost = estimated.first().map_or(0, |e| e.0) + branches;
                return (cost, estimated.get(1).map_or(Shape::Scalar, |e| e.1.clone()));
            }
            operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS => (factor(size(0).min(size(1)), STRING_FACTOR), Shape::Scalar),
            operators::ADD => match (&estimated.first().map(|e| &e.1), &estimated.get(1).map(|e| &e.1)) {
                (Some(Shape::String(a)), Some(Shape::String(b))) => {
                    (factor(a + b, STRING_FACTOR), Shape::String(a.saturating_add(*b)))
                }
                _ => (1, Shape::Scalar),
            },
            "lowerAscii" | "upperAscii" | "trim" | "substring" => {
                (factor(target_shape.size(), STRING_FACTOR), target_shape.clone())
            }
            "startsWith" | "endsWith" => (factor(size(0), STRING_FACTOR), Shape::Scalar),
            "contains" => (
                factor(target_shape.size(), STRING_FACTOR).saturating_mul(factor(size(0), STRING_FACTOR)),
                Shape::Scalar,
            ),
            "matches" => {
                let text = factor(target_shape.size() + 1, STRING_FACTOR);
                (text.saturating_mul(factor(size(0), REGEX_FACTOR)), Shape::Scalar)
            }
            operators::IN => (size(1), Shape::Scalar),
            _ => (1, Shape::Scalar),
        };
        (target_cost + own + args_cost, result)
    }
}

/// The estimated cost of `rule` evaluated with `self` shaped by `schema`.
pub fn rule_cost(rule: &str, schema: &Value) -> Result<u64, String> {
    let expr = cel::parser::Parser::new().parse(rule).map_err(|e| format!("compilation failed: {e}"))?;
    let mut estimator = Estimator { vars: vec![("self".to_owned(), Shape::of(schema))] };
    Ok(estimator.cost(&expr).0)
}

/// The API server's words for a rule over budget (apiextensions' `getCostErrorMessage`).
pub fn over_budget_message(cost: u64, limit: u64) -> String {
    let exceed = cost as f64 / limit as f64;
    let factor = if exceed > 100.0 {
        "more than 100x".to_owned()
    } else if exceed < 1.5 {
        format!("{exceed:.6}x")
    } else {
        format!("{exceed:.1}x")
    };
    format!(
        "Forbidden: estimated rule cost exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// Every rule of a structural schema over its per-rule budget, or the CRD over its total: the
/// refusals the API server gives, as (field path, message).
pub fn over_budget(schema: &Value) -> Vec<(String, String)> {
    let mut refusals = Vec::new();
    let mut total: u64 = 0;
    walk(schema, "spec.validation.openAPIV3Schema", 1, &mut total, &mut refusals);
    if total > PER_CRD_LIMIT {
        refusals.push((
            "spec.validation.openAPIV3Schema".to_owned(),
            over_budget_message(total, PER_CRD_LIMIT).replace(
                "estimated rule cost",
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
            ),
        ));
    }
    refusals
}

fn walk(schema: &Value, path: &str, cardinality: u64, total: &mut u64, refusals: &mut Vec<(String, String)>) {
    for (i, rule) in schema["x-kubernetes-validations"].as_array().into_iter().flatten().enumerate() {
        let Some(text) = rule["rule"].as_str() else { continue };
        let field = format!("{path}.x-kubernetes-validations[{i}].rule");
        match rule_cost(text, schema) {
            Ok(cost) if cost > PER_RULE_LIMIT => refusals.push((field, over_budget_message(cost, PER_RULE_LIMIT))),
            Ok(cost) => *total = total.saturating_add(cost.saturating_mul(cardinality)),
            // Rules that do not parse are reported by the CEL validation itself.
            Err(_) => {}
        }
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        walk(property, &format!("{path}.properties[{name}]"), cardinality, total, refusals);
    }
    if schema["items"].is_object() {
        let items = schema["maxItems"].as_u64().unwrap_or(UNBOUNDED);
        walk(&schema["items"], &format!("{path}.items"), cardinality.saturating_mul(items), total, refusals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The duplicate (role, scope) rule over `roleAssignments` with these bounds.
    fn assignments(role: u64, scope: u64, items: u64) -> Value {
        json!({"type": "array", "maxItems": items, "items": {"type": "object", "properties": {
            "role": {"type": "string", "maxLength": role}, "scope": {"type": "string", "maxLength": scope}}}})
    }

    const UNIQUE: &str = "self.all(x, self.exists_one(y, y.role.lowerAscii() == x.role.lowerAscii() && y.scope.lowerAscii() == x.scope.lowerAscii()))";

    #[test]
    fn matches_what_kube_apiserver_1_36_reported() {
        // Measured on kube-apiserver 1.36.2 (the factor it printed, and accepted or not).
        assert_eq!(rule_cost(UNIQUE, &assignments(256, 768, 100)), Ok(12_430_602), "1.243060x");
        let message =
            over_budget_message(rule_cost(UNIQUE, &assignments(512, 1024, 100)).expect("cost"), PER_RULE_LIMIT);
        assert!(message.contains("factor of 1.9x"), "{message}");
        let message =
            over_budget_message(rule_cost(UNIQUE, &assignments(256, 1024, 100)).expect("cost"), PER_RULE_LIMIT);
        assert!(message.contains("factor of 1.5x"), "{message}");
        assert!(rule_cost(UNIQUE, &assignments(256, 512, 100)).expect("cost") <= PER_RULE_LIMIT, "accepted");
        assert!(rule_cost(UNIQUE, &assignments(512, 1024, 70)).expect("cost") <= PER_RULE_LIMIT, "accepted");
    }

    #[test]
    fn this_projects_crds_fit() {
        for (name, yaml) in crate::api::crd_documents().expect("crds") {
            let crd: Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert_eq!(over_budget(schema), Vec::<(String, String)>::new(), "{name}");
        }
    }
}

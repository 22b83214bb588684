//! The chart's dashboard and alerts against what the operator exports: every metric (and every
//! label matched on) that their PromQL names must be in a live `/metrics` scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};

fn chart_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/dbx-identity-operator").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL query the chart ships: (where, query). The dashboard's panel targets and the
/// PrometheusRule's `expr:` lines (plain PromQL inside the Helm template).
pub fn chart_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&chart_file("dashboards/dbx-identity-operator.json")).expect("dashboard JSON");
    fn panels(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((format!("dashboard panel '{}'", p["title"].as_str().unwrap_or("?")), expr.to_owned()));
                }
            }
            panels(p, out);
        }
    }
    panels(&dashboard, &mut out);
    for line in chart_file("templates/prometheusrule.yaml").lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            out.push(("PrometheusRule".to_owned(), expr.trim().to_owned()));
        }
    }
    out
}

/// Metric names and the label names matched on, of one query.
pub fn selectors(query: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    struct Names(Vec<(String, Vec<String>)>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let vs = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let labels = vs.matchers.matchers.iter().map(|m| m.name.clone()).filter(|n| n != "__name__").collect();
            self.0.push((vs.name.clone().ok_or("a selector without a metric name")?, labels));
            Ok(true)
        }
    }
    let expr = parser::parse(query)?;
    let mut names = Names(Vec::new());
    walk_expr(&mut names, &expr)?;
    Ok(names.0)
}

/// Sample names in an OpenMetrics/Prometheus text scrape, each with the label names it carries.
pub fn exported(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            let body = rest.split('}').next().unwrap_or_default();
            labels.extend(body.split(',').filter_map(|kv| kv.split('=').next()).map(|k| k.trim().to_owned()));
        }
    }
    out
}

/// What the chart's queries name that `scrape` does not export.
pub fn unexported(scrape: &str) -> Vec<String> {
    let exported = exported(scrape);
    let mut problems = Vec::new();
    for (place, query) in chart_queries() {
        match selectors(&query) {
            Err(e) => problems.push(format!("{place}: `{query}` does not parse: {e}")),
            Ok(found) => {
                for (name, labels) in found {
                    match exported.get(&name) {
                        None => problems.push(format!("{place}: `{name}` is not exported")),
                        Some(have) => problems.extend(
                            labels
                                .iter()
                                .filter(|l| !have.contains(*l))
                                .map(|l| format!("{place}: `{name}` has no label `{l}`")),
                        ),
                    }
                }
            }
        }
    }
    problems
}

//! The secret scan every scenario relies on (tests/common): it sees the in-process operator's
//! logs, and it catches a secret. Its own binary, because a caught secret fails every scenario
//! of the binary it happens in.

mod common;

use common::*;
use dbx_identity_operator::sandbox::arm::StateConfig;
use serde_json::json;

#[tokio::test]
async fn the_log_scan_sees_the_operator_and_catches_secrets() {
    scan_logs();
    let h = harness(StateConfig::default()).await;
    h.apply(&grant("scanned", h.workspace_identity(0), json!([{"role": "Reader", "scope": rg("rg-lake")}]))).await;
    h.ready("scanned").await;
    h.assert_invariant(&[]).await;
    h.stop().await;
    // One grant's reconcile at trace level is ~100 lines (fewer since the policy and namespace
    // watches were merged into one each); dozens prove the scan sees the operator.
    assert!(lines_scanned() > 50, "only {} log lines reached the scan", lines_scanned());
    assert!(leaked_in_logs().is_empty(), "{:?}", leaked_in_logs());

    tracing::debug!(header = "Authorization: Bearer abc.def", "a careless line");
    tracing::info!(token = "eyJhbGciOi.x.y", "another");
    let leaks = leaked_in_logs();
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    assert!(leaks[0].starts_with("an Authorization header") && !leaks[0].contains("Bearer "));
}

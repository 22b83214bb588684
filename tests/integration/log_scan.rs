//! The secret scan every scenario relies on (tests/common): it sees the in-process operator's
//! logs, and it catches a secret.

use crate::common::*;
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

    // The scan catches secrets in formatted lines. Checked on a local subscriber: a secret
    // logged through the global one would fail every scenario running in this binary.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = lines.clone();
    let local = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || LineSink(sink.clone()))
        .finish();
    tracing::subscriber::with_default(local, || {
        tracing::debug!(header = "Authorization: Bearer abc.def", "a careless line");
        tracing::info!(token = "eyJhbGciOi.x.y", "another");
    });
    let text = String::from_utf8(lines.lock().expect("lines").clone()).expect("utf-8");
    let leaks: Vec<String> = text.lines().flat_map(secrets_in).collect();
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    assert!(leaks[0].starts_with("an Authorization header") && !leaks[0].contains("Bearer "), "{leaks:?}");
    assert!(leaks[1].starts_with("a JWT") && !leaks[1].contains("eyJ"), "{leaks:?}");
}

struct LineSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! The `sandbox` command as a user meets it: the real binary starts both emulators, writes its
//! three files, serves the real `kubectl`, and stops cleanly on SIGINT and SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut command = Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("kubectl is required by this test and could not be run ({e}); install kubectl (for example Debian's `kubectl` package) and put it on PATH")
    });
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("kubectl output");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn start_sandbox(dir: &Path) -> Child {
    let mut child = Command::new(BIN)
        .args(["sandbox", "--dir"])
        .arg(dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sandbox");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "sandbox ready", "unexpected first line from the sandbox");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn stop(mut child: Child, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "sandbox exited with {status} after SIG{signal}");
            return;
        }
        assert!(Instant::now() < deadline, "sandbox did not stop within 10 s of SIG{signal}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sandbox_serves_kubectl_and_stops_on_signals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = start_sandbox(dir.path());
    let kubeconfig = dir.path().join("kubeconfig");

    // The three files.
    let estate: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("estate.json")).expect("estate.json"))
            .expect("json");
    for key in ["subscriptionId", "tenantId", "operatorPrincipalId", "workspaces", "accessConnectors", "scopes"] {
        assert!(estate.get(key).is_some(), "estate.json lacks {key}");
    }
    assert_eq!(estate["workspaces"].as_array().map(Vec::len), Some(2));
    assert!(estate["workspaces"][0]["managedIdentityPrincipalId"].is_string());
    assert!(estate["accessConnectors"][1]["userAssignedIdentities"][0]["principalId"].is_string());
    let env = std::fs::read_to_string(dir.path().join("azure.env")).expect("azure.env");
    for key in [
        "DBX_ARM_ENDPOINT=https://",
        "DBX_AZURE_CA_FILE=",
        "DBX_AZURE_AUTH=managed-identity",
        "IDENTITY_ENDPOINT=",
        "IDENTITY_HEADER=",
        "AZURE_TENANT_ID=",
        "AZURE_SUBSCRIPTION_ID=",
    ] {
        assert!(env.lines().any(|l| l.starts_with(key)), "azure.env lacks {key}: {env}");
    }

    // kubectl: the CRDs are installed, the examples apply as-is, columns and explain work.
    let (ok, out) = kubectl(&kubeconfig, &["get", "crd"], None);
    assert!(ok && out.contains("databricksidentitygrants.identity.dbx-operator.io"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "examples/"], None);
    assert!(ok, "{out}");
    assert!(out.contains("databricksidentitygrant.identity.dbx-operator.io/analytics-prod-keyvault created"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "examples/"], None);
    assert!(ok && out.contains("unchanged"), "re-apply: {out}");
    let (ok, out) = kubectl(&kubeconfig, &["get", "dbgrant", "-n", "team-analytics"], None);
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "REASON", "PRINCIPAL", "ASSIGNED", "EXPIRES", "AGE"] {
        assert!(header.contains(column), "column {column} missing: {header}");
    }
    assert_eq!(out.lines().count(), 5, "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["explain", "dbgrant.spec.identity.workspace"], None);
    assert!(ok && out.contains("dbmanagedidentity"), "{out}");

    // Built-in kinds as kubectl 1.32+ creates them (protobuf request bodies), then read back the
    // ways users read them.
    for args in [
        &["create", "namespace", "scratch"][..],
        &["create", "secret", "generic", "sp", "-n", "scratch", "--from-literal=clientSecret=s3cret"],
        &["create", "configmap", "settings", "-n", "scratch", "--from-literal=mode=fast"],
    ] {
        let (ok, out) = kubectl(&kubeconfig, args, None);
        assert!(ok && out.contains("created"), "kubectl {args:?}: {out}");
    }
    let (ok, out) = kubectl(&kubeconfig, &["get", "secret", "sp", "-n", "scratch", "-o", "yaml"], None);
    assert!(ok && out.contains("clientSecret: czNjcmV0") && out.contains("type: Opaque"), "{out}");
    let (ok, out) =
        kubectl(&kubeconfig, &["get", "configmap", "settings", "-n", "scratch", "-o", "jsonpath={.data.mode}"], None);
    assert!(ok && out.trim() == "fast", "{out}");
    // describe lists the Events about an object, including events.k8s.io ones (what the
    // operator writes), through core v1 and field selectors.
    let uid_query =
        ["get", "dbgrant", "analytics-prod-keyvault", "-n", "team-analytics", "-o", "jsonpath={.metadata.uid}"];
    let (ok, uid) = kubectl(&kubeconfig, &uid_query, None);
    assert!(ok && !uid.trim().is_empty(), "{uid}");
    let event = serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "team-analytics"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "dbx-identity-operator", "reportingInstance": "x",
        "action": "Reconcile", "reason": "Created", "type": "Normal", "note": "created the assignment",
        "regarding": {"apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant", "namespace": "team-analytics", "name": "analytics-prod-keyvault", "uid": uid.trim()}});
    let (ok, out) = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&event.to_string()));
    assert!(ok, "{out}");
    let (ok, out) =
        kubectl(&kubeconfig, &["describe", "dbgrant", "-n", "team-analytics", "analytics-prod-keyvault"], None);
    assert!(ok && out.contains("created the assignment"), "describe shows no Events: {out}");
    let (ok, out) = kubectl(&kubeconfig, &["describe", "configmap", "settings", "-n", "scratch"], None);
    assert!(ok && out.contains("mode"), "{out}");
    let crd = "crd/databricksidentitygrants.identity.dbx-operator.io";
    let (ok, out) = kubectl(&kubeconfig, &["wait", "--for=condition=Established", crd, "--timeout=10s"], None);
    assert!(ok && out.contains("condition met"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["delete", "configmap", "settings", "-n", "scratch", "--wait"], None);
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out) =
        kubectl(&kubeconfig, &["wait", "--for=delete", "configmap/settings", "-n", "scratch", "--timeout=10s"], None);
    assert!(ok, "{out}");

    // Admission refuses a bad manifest with the rule's message.
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "tests/fixtures/invalid/scope-trailing-slash.yaml"], None);
    assert!(!ok && out.contains("scope must not end with '/'"), "{out}");

    // Delete, and see it in a watch.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "dbgrant", "-n", "team-analytics", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(Duration::from_millis(700));
    let (ok, out) =
        kubectl(&kubeconfig, &["delete", "dbgrant", "-n", "team-analytics", "streaming-telemetry-receiver"], None);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(700));
    let _ = watch.kill();
    let watched = String::from_utf8_lossy(&watch.wait_with_output().expect("watch output").stdout).into_owned();
    assert!(
        watched.lines().any(|l| l.starts_with("DELETED") && l.contains("streaming-telemetry-receiver")),
        "{watched}"
    );

    stop(child, "INT");

    // SIGTERM stops it as well.
    let dir2 = tempfile::tempdir().expect("tempdir");
    stop(start_sandbox(dir2.path()), "TERM");
}

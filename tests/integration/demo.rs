//! The README's first command: `dbx-identity-operator demo` plays every scenario and exits 0.

use std::process::Command;

#[test]
fn demo_plays_every_scenario_and_exits_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_dbx-identity-operator")).arg("demo").output().expect("run demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "Applying examples/",
        "the next resync restores it",
        "PrincipalNotFound",
        "the spec gains a second role",
        "the GrantPolicy denies it",
        "removed from Azure before the grant goes",
        "Summary",
        "PutRoleAssignment",
    ] {
        assert!(stdout.contains(line), "demo output lacks {line:?}:\n{stdout}");
    }
    // The table shows the drift correction and the final 2/2 of the changed grant.
    assert!(stdout.lines().any(|l| l.contains("unity-catalog-lake-curated") && l.contains(" 1 ")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("analytics-prod-keyvault") && l.contains("2/2")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("lake-owner") && l.contains("RoleNotAllowed")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("lake-owner") && l.contains("Stalled")), "{stdout}");
    // The summary ends with `audit`'s view: every assignment left is a grant's.
    assert!(stdout.contains("`audit` now (who holds what, read-only):"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("Azure Event Hubs Data Receiver")
            && l.contains("managed by team-analytics/streaming-telemetry-receiver")),
        "{stdout}"
    );
    assert!(stdout.contains("5 role assignments: 5 managed, 0 adopted, 0 unmanaged"), "{stdout}");

    // The story and nothing else: no log lines, no escape codes when piped, nothing on stderr.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "a successful demo wrote to stderr:\n{stderr}");
    assert!(!stdout.contains('\x1b'), "escape codes in piped output:\n{stdout}");
    for level in [" INFO ", " WARN ", " ERROR ", " DEBUG "] {
        assert!(!stdout.contains(level), "a log line ({level}) in the demo's output:\n{stdout}");
    }
    // The logs went to the file it names, and a successful run logged no warning or error.
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Operator and emulator logs: "))
        .unwrap_or_else(|| panic!("the demo does not say where its logs are:\n{stdout}"));
    let log = std::fs::read_to_string(path.trim()).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(log.contains("controller started") && log.contains("controller stopped"), "{log}");
    let bad: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(bad.is_empty(), "a successful demo logged warnings or errors:\n{}", bad.join("\n"));
    let _ = std::fs::remove_file(path.trim());
}

#[test]
fn demo_verbose_logs_to_stderr() {
    let output = Command::new(env!("CARGO_BIN_EXE_dbx-identity-operator"))
        .args(["demo", "--verbose"])
        .output()
        .expect("run demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Operator and emulator logs: stderr (--verbose)"), "{stdout}");
    assert!(stderr.contains(" INFO ") && stderr.contains("controller started"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colours in logs piped to a file");
    assert!(!stdout.contains(" INFO "), "{stdout}");
}

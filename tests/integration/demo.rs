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
}

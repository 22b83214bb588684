//! The managed-identity flow over the App Service endpoint (`IDENTITY_ENDPOINT` /
//! `IDENTITY_HEADER`), as the sandbox runs the operator. azure_identity reads those from the
//! process environment, so this flow has its own test binary (one test, no other threads).

use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::credentials::{AuthMode, AzureSettings, operator_client};
use dbx_identity_operator::sandbox::arm::{self, ArmEmulatorConfig};
use dbx_identity_operator::sandbox::estate::{self, TENANT_ID};

#[tokio::test]
async fn managed_identity_endpoint_yields_working_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arm = arm::start(ArmEmulatorConfig::new(TENANT_ID, dir.path().to_owned())).await.expect("start");
    let estate = estate::seed(&mut arm.emulator.state(), 0);
    let (endpoint, header) = arm.emulator.enable_managed_identity_endpoint(&estate.operator_principal_id);
    // SAFETY: this test binary has this single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", &endpoint);
        std::env::set_var("IDENTITY_HEADER", &header);
    }
    let settings = AzureSettings {
        arm_endpoint: arm.url().to_owned(),
        ca_file: Some(arm.ca_file.clone()),
        auth: AuthMode::ManagedIdentity,
        authority_host: None,
        arm_policies: Vec::new(),
        pacing_observer: None,
    };
    let client = operator_client(&settings).expect("client");
    let ws = ResourceId::parse(&estate.workspaces[0].id).expect("id");
    client.get_workspace(&ws).await.expect("authenticated through the managed identity endpoint");
    assert!(arm.emulator.stats().contains_key(&("Token".to_owned(), 200)));

    // `auto` without workload-identity variables takes the managed identity too.
    let auto = operator_client(&AzureSettings { auth: AuthMode::Auto, ..settings.clone() }).expect("client");
    auto.get_workspace(&ws).await.expect("auto picks managed identity");

    // A wrong header secret yields no token, and so no ARM call.
    unsafe { std::env::set_var("IDENTITY_HEADER", "wrong") };
    let client = operator_client(&settings).expect("client");
    let err = client.get_workspace(&ws).await.expect_err("refused");
    assert!(matches!(err, dbx_identity_operator::azure::ArmError::Unauthenticated { .. }), "{err:?}");
    arm.shutdown().await;
}

//! In-process stand-ins for Azure Resource Manager and the Kubernetes API server, used by tests,
//! the `sandbox` and `demo` commands, and the benchmarks. Production code never depends on
//! this module; it talks to them through the same clients it uses for Azure and a cluster.

pub mod arm;
pub mod estate;
pub mod kube;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::api::{CrdError, crd_documents};
use crate::azure::client::AzureSetupError;
use crate::azure::credentials::{AzureSettings, client_secret};
use estate::Estate;

/// How to start the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where `kubeconfig`, `azure.env`, `estate.json` and the CA are written.
    pub dir: PathBuf,
    /// Seed of the estate's principal ids; 0 gives the ids the docs show.
    pub seed: u64,
    pub arm_port: u16,
    pub kube_port: u16,
    pub arm_state: arm::StateConfig,
    pub arm_faults: arm::FaultConfig,
    pub throttling: arm::ThrottleConfig,
}

impl SandboxOptions {
    /// Realistic defaults: Entra replication takes a while for new principals (less when
    /// `principalType` is sent), new assignments reach list results after a moment, ARM
    /// answers in ~20 ms, Azure's throttling buckets.
    pub fn new(dir: PathBuf) -> Self {
        SandboxOptions {
            dir,
            seed: 0,
            arm_port: 0,
            kube_port: 0,
            arm_state: arm::StateConfig {
                replication_delay: Duration::from_secs(60),
                replication_delay_with_type: Duration::from_secs(8),
                list_lag: Duration::from_secs(1),
                ..arm::StateConfig::default()
            },
            arm_faults: arm::FaultConfig { latency_ms: 20, jitter_ms: 10, ..arm::FaultConfig::default() },
            throttling: arm::ThrottleConfig::default(),
        }
    }
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the ARM emulator: {0}")]
    Arm(#[from] arm::EmulatorError),
    #[error("cannot start the Kubernetes emulator: {0}")]
    Kube(std::io::Error),
    #[error(transparent)]
    Crd(#[from] CrdError),
    #[error("cannot install CRD {name}: {message}")]
    InstallCrd { name: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Both emulators, seeded, with their connection files written.
pub struct Sandbox {
    pub arm: arm::ArmEmulatorHandle,
    pub kube: kube::KubeEmulatorHandle,
    pub estate: Estate,
    pub kubeconfig: PathBuf,
    pub azure_env: PathBuf,
    pub estate_file: PathBuf,
    /// `KEY=VALUE` pairs of `azure.env`, for starting the operator as a child process.
    pub env: Vec<(String, String)>,
}

fn write(path: &Path, contents: &str) -> Result<(), SandboxError> {
    std::fs::write(path, contents).map_err(|source| SandboxError::Write { path: path.to_owned(), source })
}

/// Starts both emulators, installs the CRDs, seeds the estate and writes the files.
pub async fn start(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
    std::fs::create_dir_all(&options.dir)
        .map_err(|source| SandboxError::Write { path: options.dir.clone(), source })?;
    let mut arm_config = arm::ArmEmulatorConfig::new(estate::TENANT_ID, options.dir.clone());
    arm_config.port = options.arm_port;
    arm_config.state = options.arm_state;
    arm_config.faults = options.arm_faults;
    arm_config.throttling = options.throttling;
    let arm = arm::start(arm_config).await?;
    let estate = estate::seed(&mut arm.emulator.state(), options.seed);
    let (identity_endpoint, identity_header) =
        arm.emulator.enable_managed_identity_endpoint(&estate.operator_principal_id);

    let kube = kube::start(kube::KubeEmulatorConfig { port: options.kube_port, ..kube::KubeEmulatorConfig::default() })
        .await
        .map_err(SandboxError::Kube)?;
    {
        // Installed straight into the store: the same admission path `kubectl apply -f crds/` takes.
        let mut store = kube.emulator.store();
        let Some(crd_type) = store.find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions") else {
            return Err(SandboxError::InstallCrd {
                name: "customresourcedefinitions".into(),
                message: "type not served".into(),
            });
        };
        for (name, yaml) in crd_documents()? {
            let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml)
                .map_err(|e| SandboxError::InstallCrd { name: name.clone(), message: e.to_string() })?;
            let value = serde_json::to_value(&crd)
                .map_err(|e| SandboxError::InstallCrd { name: name.clone(), message: e.to_string() })?;
            store.create(&crd_type, "", value).map_err(|e| SandboxError::InstallCrd { name, message: e.message })?;
        }
    }

    let kubeconfig = options.dir.join("kubeconfig");
    write(&kubeconfig, &kube.emulator.kubeconfig())?;
    let env = vec![
        ("DBX_ARM_ENDPOINT".to_owned(), arm.url().to_owned()),
        ("DBX_AZURE_CA_FILE".to_owned(), arm.ca_file.display().to_string()),
        ("DBX_AZURE_AUTH".to_owned(), "managed-identity".to_owned()),
        ("IDENTITY_ENDPOINT".to_owned(), identity_endpoint),
        ("IDENTITY_HEADER".to_owned(), identity_header),
        ("AZURE_TENANT_ID".to_owned(), estate.tenant_id.clone()),
        ("AZURE_SUBSCRIPTION_ID".to_owned(), estate.subscription_id.clone()),
        // Entra for client-secret and workload-identity credentials (per-grant Secrets).
        ("AZURE_AUTHORITY_HOST".to_owned(), arm.url().to_owned()),
    ];
    let azure_env = options.dir.join("azure.env");
    write(&azure_env, &env.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>())?;
    let estate_file = options.dir.join("estate.json");
    write(&estate_file, &serde_json::to_string_pretty(&estate).unwrap_or_default())?;
    Ok(Sandbox { arm, kube, estate, kubeconfig, azure_env, estate_file, env })
}

impl Sandbox {
    /// Settings and credential for an operator running in this process (client secret; see
    /// [`arm::ArmEmulatorHandle::client_secret_settings`]).
    pub fn in_process_operator(
        &self,
        secret: &str,
    ) -> Result<(AzureSettings, std::sync::Arc<dyn azure_core::credentials::TokenCredential>), AzureSetupError> {
        let settings = self.arm.client_secret_settings(&self.estate.operator_principal_id, secret);
        let credential = client_secret(&settings, estate::TENANT_ID, estate::OPERATOR_CLIENT_ID, secret)?;
        Ok((settings, credential))
    }

    /// Stops both emulators.
    pub async fn shutdown(self) {
        self.kube.shutdown().await;
        self.arm.shutdown().await;
    }
}

//! Command-line interface. Each subcommand listed here works; later features add theirs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{self, CrdError};
use crate::sandbox::{self, SandboxError, SandboxOptions};

#[derive(Debug, Parser)]
#[command(
    name = "dbx-identity-operator",
    version,
    about = "Grants Azure RBAC roles to Azure Databricks identities, declaratively"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML (what `crds/` holds).
    Crd {
        /// Instead of printing, write one file per CRD into this directory (e.g. `crds/`).
        #[arg(long, value_name = "DIR")]
        write_dir: Option<PathBuf>,
    },
    /// Run the Kubernetes and Azure emulators with a seeded estate until Ctrl-C.
    Sandbox {
        /// Where to write `kubeconfig`, `azure.env` and `estate.json`.
        #[arg(long, value_name = "DIR", default_value = "sandbox")]
        dir: PathBuf,
        /// Seed for the estate's principal ids (the same seed gives the same estate).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Port of the ARM emulator (HTTPS); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        arm_port: u16,
        /// Port of the Kubernetes emulator (HTTP); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        kube_port: u16,
    },
    /// Print the operator's version.
    Version,
}

/// Errors a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Crd(#[from] CrdError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Crd { write_dir: None } => print(&api::crds_yaml()?),
        Command::Crd { write_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).map_err(|source| CliError::WriteFile { path: dir.clone(), source })?;
            for (file, yaml) in api::crd_documents()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml).map_err(|source| CliError::WriteFile { path, source })?;
            }
            Ok(())
        }
        Command::Sandbox { dir, seed, arm_port, kube_port } => {
            let mut options = SandboxOptions::new(dir);
            options.seed = seed;
            options.arm_port = arm_port;
            options.kube_port = kube_port;
            let sandbox = sandbox::start(options).await?;
            print(&sandbox_banner(&sandbox))?;
            wait_for_shutdown_signal().await?;
            print("shutting down\n")?;
            sandbox.shutdown().await;
            Ok(())
        }
        Command::Version => print(&format!("dbx-identity-operator {}\n", env!("CARGO_PKG_VERSION"))),
    }
}

fn sandbox_banner(sandbox: &sandbox::Sandbox) -> String {
    let dir = sandbox.kubeconfig.parent().map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        "sandbox ready\n  Kubernetes API  {}\n  Azure ARM       {}\n  files           {dir}/kubeconfig, {dir}/azure.env, {dir}/estate.json\n\n\
         Use it:\n  export KUBECONFIG={dir}/kubeconfig\n  kubectl apply -f examples/\n  kubectl get dbgrant -A -w\n\n\
         Ctrl-C stops the sandbox.\n",
        sandbox.kube.url(),
        sandbox.arm.url(),
    )
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_shutdown_signal() -> Result<(), CliError> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CliError::Signals)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(CliError::Signals),
        _ = terminate.recv() => Ok(()),
    }
}

fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Stdout)
}

//! Command-line interface. Each subcommand listed here works; later features add theirs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{self, CrdError};

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
    /// Print the operator's version.
    Version,
}

/// Errors a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Crd(#[from] CrdError),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
}

pub fn run(cli: Cli) -> Result<(), CliError> {
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
        Command::Version => print(&format!("dbx-identity-operator {}\n", env!("CARGO_PKG_VERSION"))),
    }
}

fn print(text: &str) -> Result<(), CliError> {
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}

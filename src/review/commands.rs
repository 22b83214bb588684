//! The `audit`, `import` and `plan` commands: flags in, report out, exit code. The work is in
//! the sibling modules.

use std::sync::Arc;

use super::audit::{ClusterRecords, classify};
use super::discover::{EstateQuery, discover};
use super::{Progress, ReadOnly, kube_client, read_cluster};
use crate::azure::ArmClient;
use crate::azure::credentials::operator_client;
use crate::cli::{
    AuditArgs, AuditFormat, AzureArgs, CliError, EstateArgs, ExitStatus, FailOn, ImportArgs, PlanArgs, PlanFormat,
    print,
};

/// Exit code of `audit --fail-on flagged` when something is flagged.
pub const EXIT_FLAGGED: ExitStatus = 3;
/// Exit code of `plan` when it has changes (as `terraform plan -detailed-exitcode`).
pub const EXIT_CHANGES: ExitStatus = 2;
/// Exit code when the report is incomplete or something cannot be applied.
pub const EXIT_ERROR: ExitStatus = 1;

/// The operator's ARM client (same credential chain, pacing and retries), refusing writes.
fn read_only_client(azure: &AzureArgs) -> Result<ArmClient, CliError> {
    let mut settings = azure.settings();
    settings.arm_policies.push(Arc::new(ReadOnly));
    Ok(operator_client(&settings)?)
}

fn query(estate: &EstateArgs) -> Result<EstateQuery, CliError> {
    for s in &estate.subscriptions {
        if crate::azure::guid::parse_guid(s).is_none() {
            return Err(CliError::Review(format!("--subscription '{s}' is not a subscription id (a GUID)")));
        }
    }
    Ok(EstateQuery { subscriptions: estate.subscriptions.clone(), resource_groups: estate.resource_groups.clone() })
}

async fn audit_report(estate: &EstateArgs) -> Result<(super::discover::Estate, super::audit::AuditReport), CliError> {
    let query = query(estate)?;
    let arm = read_only_client(&estate.azure)?;
    let progress = Progress::new(estate.quiet);
    let cluster = match &estate.kubeconfig {
        Some(path) => {
            progress.say("reading the cluster's grants");
            let client = kube_client(path).await.map_err(CliError::Review)?;
            read_cluster(&client).await.map_err(CliError::Review)?
        }
        None => super::ClusterView::default(),
    };
    let mut found = discover(&arm, &query, &progress).await.map_err(CliError::Review)?;
    found.problems.extend(
        cluster.unreadable.iter().map(|u| super::discover::Problem { subject: "cluster".into(), message: u.clone() }),
    );
    let report = classify(&found, &ClusterRecords::from_grants(&cluster.grants));
    Ok((found, report))
}

/// `audit`: 0; 3 with `--fail-on flagged` when anything is flagged; 1 when part of the estate
/// could not be read (the report says what, and shows the rest).
pub async fn audit(args: AuditArgs) -> Result<ExitStatus, CliError> {
    let (_, report) = audit_report(&args.estate).await?;
    let text = match args.output {
        AuditFormat::Table => report.table(),
        AuditFormat::Markdown => report.markdown(),
        AuditFormat::Json => serde_json::to_string_pretty(&report).map_err(|e| CliError::Review(e.to_string()))? + "\n",
    };
    print(&text)?;
    if !report.problems.is_empty() {
        eprintln!("audit incomplete: {} problem(s), listed in the report", report.problems.len());
        return Ok(EXIT_ERROR);
    }
    if args.fail_on == Some(FailOn::Flagged) && report.summary.flagged > 0 {
        eprintln!("{} assignment(s) flagged", report.summary.flagged);
        return Ok(EXIT_FLAGGED);
    }
    Ok(0)
}

/// `import`: the manifests on stdout or in `--out`; 1 when part of the estate could not be read.
pub async fn import(args: ImportArgs) -> Result<ExitStatus, CliError> {
    if args.namespace.is_empty() || super::import::object_name(&args.namespace) != args.namespace {
        return Err(CliError::Review(format!("--namespace '{}' is not a valid namespace name", args.namespace)));
    }
    let (estate, report) = audit_report(&args.estate).await?;
    let imported = super::import::manifests(&estate, &report, &args.namespace);
    match &args.out {
        None => print(&super::import::stream(&imported))?,
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::WriteFile { path: dir.clone(), source })?;
            for manifest in imported.grants.iter().chain(std::iter::once(&imported.policies)) {
                let path = dir.join(&manifest.file);
                std::fs::write(&path, &manifest.yaml).map_err(|source| CliError::WriteFile { path, source })?;
            }
        }
    }
    eprintln!(
        "imported {} role assignment(s) into {} grant(s){}; {} privileged left out (listed in comments)",
        imported.imported,
        imported.grants.len(),
        args.out.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default(),
        imported.left_out
    );
    for p in &report.problems {
        eprintln!("problem: {}: {}", p.subject, p.message);
    }
    Ok(if report.problems.is_empty() { 0 } else { EXIT_ERROR })
}

/// `plan`: 0 no changes, 2 changes, 1 invalid manifests, denials or errors.
pub async fn plan(args: PlanArgs) -> Result<ExitStatus, CliError> {
    let manifests = super::manifests::read(&args.files);
    if !manifests.errors.is_empty() {
        for e in &manifests.errors {
            eprintln!("error: {e}");
        }
        return Err(CliError::Review(format!(
            "{} problem(s) in the manifests; nothing planned",
            manifests.errors.len()
        )));
    }
    if manifests.grants.is_empty() {
        return Err(CliError::Review("the manifests hold no DatabricksIdentityGrant to plan".into()));
    }
    for (source, kind) in &manifests.skipped {
        eprintln!("skipped {source}: {kind} is not planned");
    }
    let cluster = match &args.kubeconfig {
        Some(path) => {
            let client = kube_client(path).await.map_err(CliError::Review)?;
            read_cluster(&client).await.map_err(CliError::Review)?
        }
        None => super::ClusterView::default(),
    };
    for u in &cluster.unreadable {
        eprintln!("warning: cluster object skipped: {u}");
    }
    let file_policy_names: std::collections::HashSet<String> =
        manifests.policies.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let mut policies = manifests.policies.clone();
    policies.extend(
        cluster
            .policies
            .into_iter()
            .filter(|p| !p.metadata.name.as_ref().is_some_and(|n| file_policy_names.contains(n))),
    );
    let mut namespaces: std::collections::HashMap<_, _> = cluster.namespaces.into_iter().collect();
    namespaces.extend(manifests.namespaces.clone());
    let arm = read_only_client(&args.azure)?;
    let report = super::plan::plan(
        &arm,
        super::plan::PlanInputs {
            grants: &manifests.grants,
            policies,
            namespaces,
            live: cluster.grants,
            policy_mode: args.policy_mode,
        },
    )
    .await;
    let text = match args.output {
        PlanFormat::Text => report.text(),
        PlanFormat::Json => serde_json::to_string_pretty(&report).map_err(|e| CliError::Review(e.to_string()))? + "\n",
    };
    print(&text)?;
    Ok(report.exit_code())
}

//! Read-only commands for brownfield estates and reviews: `audit` (who holds what), `import`
//! (manifests that reproduce it) and `plan` (what `Enforce` would do for some files).
//!
//! They share the operator's code rather than reimplementing it: resolution
//! ([`crate::controller::resolve`]), validation ([`crate::api::validation`]), policy
//! ([`crate::policy::evaluate`]) and the decision ([`crate::controller::decide`]); and its ARM
//! pipeline (pacing, retries). They never write: the ARM pipeline carries [`ReadOnly`], which
//! refuses anything but GET before it leaves the process, and the cluster is only listed.

pub mod audit;
pub mod commands;
pub mod discover;
pub mod import;
pub mod manifests;
pub mod plan;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request};
use kube::api::{Api, ListParams};

use crate::api::{DatabricksIdentityGrant, GrantPolicy};

/// Refuses every ARM request but GET: the read-only commands cannot write to Azure, whatever a
/// bug in them would try.
#[derive(Debug)]
pub struct ReadOnly;

#[async_trait::async_trait]
impl Policy for ReadOnly {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        if request.method() != Method::Get {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                format!("read-only command: refused {} {}", request.method(), request.url().path()),
            ));
        }
        let (first, rest) = crate::azure::client::next_policy("ReadOnly", next)?;
        first.send(ctx, request, rest).await
    }
}

/// Progress on stderr: one rewritten line on a terminal, plain lines otherwise; nothing with
/// `--quiet`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
    terminal: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { enabled: !quiet, terminal: std::io::stderr().is_terminal() }
    }

    pub fn say(&self, message: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal { write!(err, "\r\x1b[K{message}") } else { writeln!(err, "{message}") };
        let _ = err.flush();
    }

    /// The last message of a phase (ends the rewritten line on a terminal).
    pub fn done(&self, message: &str) {
        self.say(message);
        if self.enabled && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// What the cluster holds, for `audit` (grants' status) and `plan` (live grants, policies,
/// namespace labels). Only listed, never written.
#[derive(Debug, Default)]
pub struct ClusterView {
    pub grants: Vec<DatabricksIdentityGrant>,
    pub policies: Vec<GrantPolicy>,
    pub namespaces: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Objects that could not be read as their kind (listed by name; the rest stands).
    pub unreadable: Vec<String>,
}

/// A client for the kubeconfig at `path` (its current context).
pub async fn kube_client(path: &std::path::Path) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("kubeconfig {}: {e}", path.display()))
}

/// Lists grants, GrantPolicies and Namespaces. Objects that do not fit their type are named in
/// `unreadable` instead of failing the list.
pub async fn read_cluster(client: &kube::Client) -> Result<ClusterView, String> {
    use kube::api::{ApiResource, DynamicObject};
    let mut view = ClusterView::default();
    let list = |ar: ApiResource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        async move { api.list(&ListParams::default()).await }
    };
    let grants = list(ApiResource::erase::<DatabricksIdentityGrant>(&()))
        .await
        .map_err(|e| format!("cannot list DatabricksIdentityGrants: {e}"))?;
    for object in grants.items {
        let name = format!(
            "{}/{}",
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default()
        );
        match serde_json::to_value(&object).and_then(serde_json::from_value::<DatabricksIdentityGrant>) {
            Ok(grant) => view.grants.push(grant),
            Err(e) => view.unreadable.push(format!("DatabricksIdentityGrant {name}: {e}")),
        }
    }
    let policies =
        list(ApiResource::erase::<GrantPolicy>(&())).await.map_err(|e| format!("cannot list GrantPolicies: {e}"))?;
    for object in policies.items {
        let name = object.metadata.name.clone().unwrap_or_default();
        match serde_json::to_value(&object).and_then(serde_json::from_value::<GrantPolicy>) {
            Ok(policy) => view.policies.push(policy),
            Err(e) => view.unreadable.push(format!("GrantPolicy {name}: {e}")),
        }
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in namespaces.list(&ListParams::default()).await.map_err(|e| format!("cannot list Namespaces: {e}"))? {
        if let Some(name) = ns.metadata.name {
            view.namespaces.insert(name, ns.metadata.labels.unwrap_or_default());
        }
    }
    Ok(view)
}

//! The GrantPolicy and Namespace watches: each feeds its store in the [`ClusterIndex`]
//! and wakes the grants a change affects.
//!
//! [`ClusterIndex`]: super::index::ClusterIndex

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::background::shutdown_signal;
use super::{Context, lenient};
use crate::api::GrantPolicy;

/// What identifies a version of an object for re-judging grants: its uid and generation (a
/// policy re-created under the same name starts at generation 1 again, with a new uid).
type PolicyVersion = (Option<String>, Option<i64>);

/// The one GrantPolicy watch: it feeds the policy store the policy gate reads and, from the same
/// event (after the store has it), wakes every grant when a policy's spec changes, a policy
/// appears or goes, or a relist finds a different set — so a grant is never judged against a
/// policy older than the event that woke it. Every event also goes to the policy status
/// controller.
pub(super) fn spawn_policy_watch(
    ctx: Arc<Context>,
    status: futures::channel::mpsc::UnboundedSender<Result<GrantPolicy, watcher::Error>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Store<GrantPolicy> {
    let (reader, writer) = reflector::store();
    // Ends with the controllers: a watch that outlived them would retry against a server that
    // may be gone (and wake grants nobody reconciles).
    let stream = lenient::watch::<GrantPolicy>(ctx.client.clone(), None)
        .default_backoff()
        .reflect(writer)
        .take_until(shutdown_signal(shutdown));
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: HashMap<String, PolicyVersion> = HashMap::new();
        let mut relisted: Option<HashMap<String, PolicyVersion>> = None;
        while let Some(event) = stream.next().await {
            let version = |p: &GrantPolicy| (p.metadata.uid.clone(), p.metadata.generation);
            let changed = match event {
                Ok(watcher::Event::Apply(p)) => {
                    let changed = seen.insert(p.name_any(), version(&p)) != Some(version(&p));
                    let _ = status.unbounded_send(Ok(p));
                    changed
                }
                Ok(watcher::Event::Delete(p)) => seen.remove(&p.name_any()).is_some(),
                Ok(watcher::Event::Init) => {
                    relisted = Some(HashMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(p)) => {
                    relisted.get_or_insert_default().insert(p.name_any(), version(&p));
                    let _ = status.unbounded_send(Ok(p));
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let current = relisted.take().unwrap_or_default();
                    std::mem::replace(&mut seen, current) != seen
                }
                Err(e) => {
                    warn!(error = %e, "GrantPolicy watch");
                    false
                }
            };
            if changed {
                tracing::debug!("GrantPolicies changed; re-judging every grant");
                ctx.wake_grants(|_| true);
            }
        }
    });
    reader
}

/// The one Namespace watch: it feeds the label store the policy gate reads and, from the same
/// event, wakes the grants of a namespace whose labels changed (or that went).
pub(super) fn spawn_namespace_watch(
    ctx: Arc<Context>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Store<Namespace> {
    type Labels = std::collections::BTreeMap<String, String>;
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Namespace>::all(ctx.client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .take_until(shutdown_signal(shutdown));
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: HashMap<String, Labels> = HashMap::new();
        let mut relisted: Option<HashMap<String, Labels>> = None;
        while let Some(event) = stream.next().await {
            let labels = |ns: &Namespace| ns.metadata.labels.clone().unwrap_or_default();
            let changed: Vec<String> = match event {
                Ok(watcher::Event::Apply(ns)) => {
                    let name = ns.name_any();
                    if seen.insert(name.clone(), labels(&ns)) == Some(labels(&ns)) { vec![] } else { vec![name] }
                }
                Ok(watcher::Event::Delete(ns)) => {
                    seen.remove(&ns.name_any()).map(|_| ns.name_any()).into_iter().collect()
                }
                Ok(watcher::Event::Init) => {
                    relisted = Some(HashMap::new());
                    vec![]
                }
                Ok(watcher::Event::InitApply(ns)) => {
                    relisted.get_or_insert_default().insert(ns.name_any(), labels(&ns));
                    vec![]
                }
                Ok(watcher::Event::InitDone) => {
                    let current = relisted.take().unwrap_or_default();
                    let mut names: Vec<String> =
                        current.iter().filter(|(n, l)| seen.get(*n) != Some(*l)).map(|(n, _)| n.clone()).collect();
                    names.extend(seen.keys().filter(|n| !current.contains_key(*n)).cloned());
                    seen = current;
                    names
                }
                Err(e) => {
                    warn!(error = %e, "Namespace watch");
                    vec![]
                }
            };
            if !changed.is_empty() {
                ctx.wake_grants(|g| g.metadata.namespace.as_ref().is_some_and(|ns| changed.contains(ns)));
            }
        }
    });
    reader
}

//! Kubernetes API-server emulator for tests and the sandbox (production always talks to a
//! real cluster). It speaks plain HTTP on loopback to the real clients — kube's `Client`,
//! kube-runtime's watcher and Controller, and `kubectl`.
//!
//! - `store.rs`: objects and the API server's semantics (resourceVersion, generation, status
//!   subresource, optimistic concurrency, finalizers, CRD admission, watch history).
//! - `http.rs`: discovery, REST verbs, patches, watches, Tables, faults, request log.
//! - `schema.rs`, `selectors.rs`, `table.rs`: structural validation, selectors, printer columns.
//!
//! Where it differs from the API server is listed in `docs/sandbox.md`.

pub mod cel_cost;
mod http;
mod protobuf;
pub mod schema;
pub mod selectors;
pub mod store;
pub mod table;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use store::Store;

/// Faults a test can inject.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeFaults {
    /// Added before every request.
    pub latency_ms: u64,
    /// Answer the next this many requests with `fail_status`.
    pub fail_next: u32,
    /// Answer this fraction of requests (0.0–1.0) with `fail_status`: a failure rate that does
    /// not depend on load (a fixed count per period fails nearly every request once little is
    /// happening, which no client can get through).
    pub fail_rate: f64,
    /// 500 or 429.
    pub fail_status: u16,
    /// Answer the next this many updates and patches of custom resources (not their status)
    /// with 409 Conflict, as when another writer changed finalizers or metadata first.
    pub conflict_next_writes: u32,
}

/// One request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestRecord {
    /// Who asked: the bearer token of the request (the emulator does not authenticate, so a
    /// kubeconfig's token serves as a user name), or `anonymous`.
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct KubeEmulatorConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// Events kept for watches to resume from; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for KubeEmulatorConfig {
    fn default() -> Self {
        KubeEmulatorConfig { port: 0, history_limit: 10_000, bookmark_interval: Duration::from_secs(5) }
    }
}

/// The running emulator's shared state.
pub struct KubeEmulator {
    pub config: KubeEmulatorConfig,
    /// `127.0.0.1:<port>`.
    pub address: String,
    store: Mutex<Store>,
    faults: Mutex<KubeFaults>,
    requests: Mutex<Vec<RequestRecord>>,
    watch_drops: tokio::sync::watch::Sender<u64>,
    /// Watches answered 410 Gone (their resourceVersion was compacted away).
    pub expired_watches: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeEmulator {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The store, for seeding and assertions.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn faults(&self) -> KubeFaults {
        lock(&self.faults).clone()
    }

    pub fn set_faults(&self, faults: KubeFaults) {
        *lock(&self.faults) = faults;
    }

    /// Ends every open watch stream now (clients re-watch, as after an API server restart).
    pub fn drop_watches(&self) {
        self.watch_drops.send_modify(|n| *n += 1);
    }

    /// Forgets the watch history, as etcd compaction does: every watch resuming from an earlier
    /// resourceVersion gets 410 Gone and must list again. Call `drop_watches` to make them resume.
    pub fn compact_history(&self) {
        self.store().compact();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    fn log(&self, record: RequestRecord) {
        let mut requests = lock(&self.requests);
        if requests.len() < 1_000_000 {
            requests.push(record);
        }
    }

    fn take_injected_failure(&self) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let status = if faults.fail_status == 0 { 500 } else { faults.fail_status };
        if faults.fail_next > 0 {
            faults.fail_next -= 1;
            return Some(status);
        }
        (faults.fail_rate > 0.0 && rand::random::<f64>() < faults.fail_rate).then_some(status)
    }

    fn take_injected_conflict(&self, group: &str) -> bool {
        let mut faults = lock(&self.faults);
        if faults.conflict_next_writes == 0 || group.is_empty() || group.ends_with(".k8s.io") {
            return false;
        }
        faults.conflict_next_writes -= 1;
        true
    }

    /// A kubeconfig for this server (no credentials: the emulator does not authenticate).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dbx-sandbox\n  cluster:\n    server: {}\ncontexts:\n- name: dbx-sandbox\n  context:\n    cluster: dbx-sandbox\n    user: dbx-sandbox\n    namespace: default\ncurrent-context: dbx-sandbox\nusers:\n- name: dbx-sandbox\n  user: {{}}\n",
            self.url()
        )
    }

    /// A kubeconfig that identifies its requests as `user` in the request log.
    pub fn kubeconfig_for(&self, user: &str) -> String {
        self.kubeconfig().replace("  user: {}\n", &format!("  user:\n    token: {user}\n"))
    }

    /// A kube client for this server.
    pub fn client(&self) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
        let url: axum::http::Uri = self.url().parse()?;
        Ok(kube::Client::try_from(kube::Config::new(url))?)
    }
}

/// A running emulator. Dropping it stops the server.
pub struct KubeEmulatorHandle {
    pub emulator: Arc<KubeEmulator>,
    server: tokio::task::JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl KubeEmulatorHandle {
    pub fn url(&self) -> String {
        self.emulator.url()
    }

    /// Stops the server: open watches end, the listener closes.
    pub async fn shutdown(mut self) {
        self.emulator.drop_watches();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for KubeEmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the emulator on 127.0.0.1.
pub async fn start(config: KubeEmulatorConfig) -> std::io::Result<KubeEmulatorHandle> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    let address = listener.local_addr()?.to_string();
    let (watch_drops, _) = tokio::sync::watch::channel(0);
    let emulator = Arc::new(KubeEmulator {
        store: Mutex::new(Store::new(config.history_limit)),
        config,
        address,
        faults: Mutex::new(KubeFaults::default()),
        requests: Mutex::new(Vec::new()),
        watch_drops,
        expired_watches: std::sync::atomic::AtomicU64::new(0),
    });
    let app = http::router(emulator.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let drops = emulator.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
            drops.drop_watches();
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "Kubernetes emulator stopped");
        }
    });
    Ok(KubeEmulatorHandle { emulator, server, shutdown: Some(tx) })
}

//! Where a scenario runs: the real control plane (prepared once: CRDs from `crds/`, the chart's
//! ServiceAccount and RBAC, a TokenRequest token for it) or the Kubernetes emulator; either way
//! the ARM emulator stands in for Azure and the operator is the real binary, a child process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbx_identity_operator::api::DatabricksIdentityGrant;
use dbx_identity_operator::sandbox::{self, Sandbox, SandboxOptions};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::control_plane::ControlPlane;

pub const RELEASE_NAMESPACE: &str = "dbx-system";
pub const SERVICE_ACCOUNT: &str = "dbx-identity-operator";
/// The user the real API server sees for the chart's ServiceAccount.
pub const OPERATOR_USER: &str = "system:serviceaccount:dbx-system:dbx-identity-operator";
const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The real control plane, prepared as the chart would leave it (CRDs, ServiceAccount, RBAC).
pub struct RealCluster {
    pub plane: Arc<ControlPlane>,
    pub admin: kube::Client,
    /// A kubeconfig with a TokenRequest token of the chart's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
}

/// The chart's rbac.yaml rendered for release `dbx-identity-operator` in `dbx-system` with every
/// optional block on: template control lines dropped, the few inline templates replaced.
pub fn chart_rbac() -> Result<Vec<Value>, String> {
    let path = repo().join("charts/dbx-identity-operator/templates/rbac.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut plain = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("{{-") || t.starts_with("{{ end") || t.starts_with("labels: {{") {
            continue;
        }
        let line = line
            .replace("{{ include \"dbx.fullname\" . }}", "dbx-identity-operator")
            .replace("{{ include \"dbx.serviceAccountName\" . }}", SERVICE_ACCOUNT)
            .replace("{{ .Release.Namespace }}", RELEASE_NAMESPACE);
        if line.contains("{{") {
            return Err(format!("rbac.yaml: a template this test does not render: {line}"));
        }
        plain.push_str(&line);
        plain.push('\n');
    }
    plain
        .split("\n---")
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .map(|d| serde_yaml_ng::from_str::<Value>(d).map_err(|e| format!("rbac.yaml after rendering: {e}\n{d}")))
        .collect()
}

async fn apply_rbac(admin: &kube::Client, doc: Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let pp = PostParams::default();
    let e = |e: kube::Error| format!("{kind} {name}: {e}");
    let d = |e: serde_json::Error| format!("{kind} {name}: {e}");
    match kind.as_str() {
        "ClusterRole" => Api::<ClusterRole>::all(admin.clone())
            .create(&pp, &serde_json::from_value(doc).map_err(d)?)
            .await
            .map(drop)
            .map_err(e),
        "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &serde_json::from_value(doc).map_err(d)?)
            .await
            .map(drop)
            .map_err(e),
        "Role" => Api::<Role>::namespaced(admin.clone(), RELEASE_NAMESPACE)
            .create(&pp, &serde_json::from_value(doc).map_err(d)?)
            .await
            .map(drop)
            .map_err(e),
        "RoleBinding" => Api::<RoleBinding>::namespaced(admin.clone(), RELEASE_NAMESPACE)
            .create(&pp, &serde_json::from_value(doc).map_err(d)?)
            .await
            .map(drop)
            .map_err(e),
        other => Err(format!("rbac.yaml: unexpected kind {other}")),
    }
}

/// Installs every CRD file of `dir` with server-side apply and waits until each is Established.
pub async fn install_crds(admin: &kube::Client, dir: &Path) -> Result<Vec<String>, String> {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("real-apiserver-test").force(), &Patch::Apply(&crd))
            .await
            .map_err(|e| format!("the API server refused {}: {e}", file.display()))?;
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in &names {
        loop {
            let crd = crds.get(name).await.map_err(|e| format!("{name}: {e}"))?;
            let established = crd
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not Established within 30 s: {:?}", crd.status));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(names)
}

impl RealCluster {
    pub async fn prepare(plane: Arc<ControlPlane>) -> Result<RealCluster, String> {
        let admin = plane.admin().await?;
        install_crds(&admin, &repo().join("crds")).await?;
        create_namespace(&admin, RELEASE_NAMESPACE, BTreeMap::new()).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": SERVICE_ACCOUNT}})).map_err(|e| e.to_string())?;
        accounts.create(&PostParams::default(), &account).await.map_err(|e| format!("ServiceAccount: {e}"))?;
        for doc in chart_rbac()? {
            apply_rbac(&admin, doc).await?;
        }
        let request: TokenRequest =
            serde_json::from_value(json!({"spec": {"expirationSeconds": 7200}})).map_err(|e| e.to_string())?;
        let token: TokenRequest = accounts
            .create_subresource("token", SERVICE_ACCOUNT, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("TokenRequest for the chart's ServiceAccount: {e}"))?;
        let token = token.status.map(|s| s.token).ok_or("TokenRequest returned no token")?;
        let operator_kubeconfig = plane.write_kubeconfig("operator", &token).map_err(|e| e.to_string())?;
        Ok(RealCluster { plane, admin, operator_kubeconfig })
    }

    /// Requests the operator's ServiceAccount made, from the audit log: (verb, group, resource
    /// with subresource, namespace, HTTP code).
    pub fn operator_requests(&self) -> Vec<(String, String, String, String, u64)> {
        self.plane
            .audit_events()
            .into_iter()
            .filter(|e| e["user"]["username"] == OPERATOR_USER)
            .map(|e| {
                let o = &e["objectRef"];
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let resource = match o["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", s(&o["resource"])),
                    None => s(&o["resource"]),
                };
                (
                    s(&e["verb"]),
                    s(&o["apiGroup"]),
                    resource,
                    s(&o["namespace"]),
                    e["responseStatus"]["code"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

pub async fn create_namespace(
    admin: &kube::Client,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<(), String> {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).map_err(|e| e.to_string())?;
    namespaces.create(&PostParams::default(), &ns).await.map(drop).map_err(|e| format!("namespace {name}: {e}"))
}

/// Which Kubernetes API a scenario runs against.
#[derive(Clone)]
pub enum Server {
    Real(Arc<RealCluster>),
    Emulator,
}

impl Server {
    pub fn label(&self) -> &'static str {
        match self {
            Server::Real(_) => "real",
            Server::Emulator => "emulator",
        }
    }
}

/// One scenario's world: a fresh ARM emulator (and, for the emulator server, a fresh Kubernetes
/// emulator), the admin client, and how to start operator replicas as the chart's identity.
pub struct Env {
    pub sandbox: Sandbox,
    pub admin: kube::Client,
    /// Unique per scenario and server; prefixes namespaces, policies and the Lease.
    pub id: String,
    operator_kubeconfig: PathBuf,
    /// A kubeconfig with the admin's rights, for `kubectl`.
    pub admin_kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn new(server: Server, scenario: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(dir.path().to_owned());
        options.arm_state = dbx_identity_operator::sandbox::arm::StateConfig::default();
        options.arm_faults = Default::default();
        let sandbox = sandbox::start(options).await.expect("sandbox");
        let id = format!("{scenario}-{}", server.label()).replace('_', "-");
        let (admin, operator_kubeconfig, admin_kubeconfig) = match &server {
            Server::Real(real) => (real.admin.clone(), real.operator_kubeconfig.clone(), real.plane.admin_kubeconfig()),
            Server::Emulator => {
                let admin = sandbox.kube.emulator.client().expect("client");
                create_namespace(&admin, RELEASE_NAMESPACE, BTreeMap::new()).await.expect("release namespace");
                let path = dir.path().join("operator-kubeconfig");
                std::fs::write(&path, sandbox.kube.emulator.kubeconfig_for(OPERATOR_USER)).expect("kubeconfig");
                let admin_path = dir.path().join("admin-kubeconfig");
                std::fs::write(&admin_path, sandbox.kube.emulator.kubeconfig()).expect("kubeconfig");
                (admin, path, admin_path)
            }
        };
        Env { sandbox, admin, id, operator_kubeconfig, admin_kubeconfig, dir }
    }

    pub fn grants(&self, namespace: &str) -> Api<DatabricksIdentityGrant> {
        Api::namespaced(self.admin.clone(), namespace)
    }

    /// Starts a replica of the operator, as the chart runs it (leader election on a Lease in
    /// the release namespace), watching `namespaces`.
    pub fn operator(&self, replica: &str, namespaces: &[&str], extra: &[&str]) -> Operator {
        self.operator_with_kubeconfig(replica, namespaces, extra, &self.operator_kubeconfig)
    }

    pub fn operator_with_kubeconfig(
        &self,
        replica: &str,
        namespaces: &[&str],
        extra: &[&str],
        kubeconfig: &Path,
    ) -> Operator {
        let (metrics, health) = (free_port(), free_port());
        let log_path = self.dir.path().join(format!("operator-{replica}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let mut command = Command::new(BIN);
        command
            .args(["run", "--leader-election", "--lease-namespace", RELEASE_NAMESPACE, "--lease-name", &self.id])
            .args(["--lease-duration", "4s", "--policy-mode", "require"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}"), "--health-addr", &format!("127.0.0.1:{health}")]);
        for ns in namespaces {
            command.args(["--namespace", ns]);
        }
        let child = command
            .args(extra)
            .envs(self.sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", replica)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the operator");
        Operator {
            child,
            metrics: format!("http://127.0.0.1:{metrics}/metrics"),
            health: format!("http://127.0.0.1:{health}"),
            log: log_path,
        }
    }

    /// (assignment name, normalized scope, role GUID, principal) of every assignment in Azure.
    pub fn assignments(&self) -> Vec<(String, String, String, String)> {
        self.sandbox
            .arm
            .emulator
            .state()
            .all_assignments()
            .into_iter()
            .map(|(name, scope, role, principal, _)| (name, scope.normalized(), role.to_string(), principal))
            .collect()
    }

    /// Whether `principal` holds `role` (by name) at `scope`.
    pub fn holds(&self, principal: &str, role: &str, scope: &str) -> bool {
        let guid = self.sandbox.arm.emulator.state().role_guid_by_name(role).expect("role").to_string();
        let scope = dbx_identity_operator::azure::ResourceId::parse(scope).expect("scope").normalized();
        self.assignments().iter().any(|(_, s, r, p)| *s == scope && *r == guid && p.eq_ignore_ascii_case(principal))
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running operator process; killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics: String,
    pub health: String,
    pub log: PathBuf,
}

impl Operator {
    /// SIGTERM, then waits (the operator finishes in-flight work and releases its Lease);
    /// `None` if it did not exit within 20 s.
    pub async fn stop(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return None,
            }
        }
    }

    /// SIGKILL: no cleanup, the Lease stays until it expires.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The value of one metric line (exact name with labels), if the endpoint answers.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get(&self.metrics).await.ok()?.1;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    pub async fn readyz(&self) -> Option<u16> {
        http_get(&format!("{}/readyz", self.health)).await.ok().map(|r| r.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET on loopback: (status, body).
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    let response =
        reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(|e| e.to_string())?))
}

/// Polls `check` every 200 ms until it holds; panics with `what` and the last diagnosis.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

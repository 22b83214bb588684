//! A real Kubernetes control plane for tests, in the style of controller-runtime's envtest:
//! `etcd` and `kube-apiserver` from the directory named by `KUBEBUILDER_ASSETS` (so
//! `setup-envtest` assets work too; `.ci/run` points it at `../shared/kube/bin`), on free loopback
//! ports, with a fresh data directory, certificates made with rcgen, a static token file (an admin
//! in `system:masters`), RBAC authorization and an audit log (every request, at Metadata level,
//! so a test can see each 403 and each verb a user needed).
//!
//! Both processes are children of the test process and are stopped through their handles when
//! the [`ControlPlane`] is dropped (also while a panic unwinds).

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::KeyPair;
use serde_json::Value;

/// The environment variable naming the directory with `etcd` and `kube-apiserver` (envtest's).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";
const ADMIN_TOKEN: &str = "envtest-admin-token";

/// Why there is no control plane.
#[derive(Debug)]
pub enum StartError {
    /// `KUBEBUILDER_ASSETS` is not set: the real tier is not configured on this machine.
    NotConfigured,
    /// Configured, but it did not start (names the binary and shows its log's tail).
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::NotConfigured => write!(
                f,
                "{ASSETS_ENV} is not set (point it at a directory with etcd and kube-apiserver, e.g. ../shared/kube/bin)"
            ),
            StartError::Failed(why) => f.write_str(why),
        }
    }
}

/// A running etcd + kube-apiserver pair.
pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    pub dir: tempfile::TempDir,
    pub url: String,
    ca_file: PathBuf,
    audit_log: PathBuf,
}

fn free_port() -> Result<u16, StartError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| StartError::Failed(format!("no free loopback port: {e}")))
}

fn failed(what: &str) -> impl FnOnce(String) -> StartError + '_ {
    move |e| StartError::Failed(format!("{what}: {e}"))
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn write(path: &Path, contents: &str) -> Result<(), StartError> {
    std::fs::write(path, contents).map_err(|e| StartError::Failed(format!("cannot write {}: {e}", path.display())))
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Result<Child, StartError> {
    let out = std::fs::File::create(log).map_err(|e| failed("log file")(e.to_string()))?;
    let err = out.try_clone().map_err(|e| failed("log file")(e.to_string()))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| StartError::Failed(format!("cannot start {}: {e}", binary.display())))
}

/// Certificates and keys: a CA and the API server's serving certificate for 127.0.0.1 (the ARM
/// emulator's generator), and the service-account signing key pair (TokenRequest needs one).
fn certificates(dir: &Path) -> Result<(), String> {
    let tls = dbx_identity_operator::sandbox::arm::tls::generate().map_err(|e| e.to_string())?;
    let sa_key = KeyPair::generate().map_err(|e| e.to_string())?;
    for (name, pem) in [
        ("ca.crt", tls.ca_pem),
        ("apiserver.crt", tls.server_cert_pem),
        ("apiserver.key", tls.server_key_pem),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
    ] {
        std::fs::write(dir.join(name), pem).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`.
    pub async fn start() -> Result<ControlPlane, StartError> {
        let assets = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()).ok_or(StartError::NotConfigured)?;
        let assets = PathBuf::from(assets);
        let assets = if assets.is_absolute() {
            assets
        } else {
            // Relative to the project root, as `.ci/run` sets it.
            Path::new(env!("CARGO_MANIFEST_DIR")).join(assets)
        };
        for binary in ["etcd", "kube-apiserver"] {
            if !assets.join(binary).is_file() {
                return Err(StartError::Failed(format!("{ASSETS_ENV}={} has no {binary} binary", assets.display())));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| failed("temp dir")(e.to_string()))?;
        let d = dir.path();
        certificates(d).map_err(failed("certificates"))?;
        write(&d.join("tokens.csv"), &format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"))?;
        write(
            &d.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let s = |p: &Path| p.display().to_string();
        let etcd_args: Vec<String> = [
            "--name=envtest".into(),
            format!("--data-dir={}", s(&d.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=envtest=http://127.0.0.1:{peer_port}"),
            "--initial-cluster-state=new".into(),
            "--log-level=warn".into(),
            "--unsafe-no-fsync=true".into(),
        ]
        .into();
        let etcd_log = d.join("etcd.log");
        let mut etcd = spawn(&assets.join("etcd"), &etcd_args, &etcd_log)?;
        let audit_log = d.join("audit.log");
        let api_args: Vec<String> = [
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            format!("--tls-cert-file={}", s(&d.join("apiserver.crt"))),
            format!("--tls-private-key-file={}", s(&d.join("apiserver.key"))),
            format!("--client-ca-file={}", s(&d.join("ca.crt"))),
            format!("--token-auth-file={}", s(&d.join("tokens.csv"))),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", s(&d.join("sa.pub"))),
            format!("--service-account-signing-key-file={}", s(&d.join("sa.key"))),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            format!("--audit-policy-file={}", s(&d.join("audit-policy.yaml"))),
            format!("--audit-log-path={}", s(&audit_log)),
            "--audit-log-mode=blocking".into(),
        ]
        .into();
        let api_log = d.join("kube-apiserver.log");
        let apiserver = match spawn(&assets.join("kube-apiserver"), &api_args, &api_log) {
            Ok(child) => child,
            Err(e) => {
                let _ = etcd.kill();
                let _ = etcd.wait();
                return Err(e);
            }
        };
        let ca_file = d.join("ca.crt");
        let plane =
            ControlPlane { etcd, apiserver, url: format!("https://127.0.0.1:{api_port}"), ca_file, audit_log, dir };
        plane.write_kubeconfig("admin", ADMIN_TOKEN)?;
        plane.wait_ready(&etcd_log, &api_log).await?;
        Ok(plane)
    }

    async fn wait_ready(&self, etcd_log: &Path, api_log: &Path) -> Result<(), StartError> {
        let client = self.admin().await.map_err(failed("admin client"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request =
                axum::http::Request::get("/readyz").body(Vec::new()).map_err(|e| failed("readyz")(e.to_string()))?;
            if let Ok(text) = client.request_text(request).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "kube-apiserver did not become ready within 60 s; its log ends:\n{}\netcd's log ends:\n{}",
                    tail(api_log),
                    tail(etcd_log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A kubeconfig for a token user, written next to the control plane's files.
    pub fn write_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf, StartError> {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        write(&path, &self.kubeconfig(token))?;
        Ok(path)
    }

    /// Kubeconfig text for a bearer token.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: user\n\
             current-context: envtest\n",
            self.url,
            self.ca_file.display()
        )
    }

    /// The admin's kubeconfig path (system:masters).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig-admin")
    }

    /// A client for a bearer token.
    pub async fn client_for(&self, token: &str) -> Result<kube::Client, String> {
        let config = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(token)).map_err(|e| e.to_string())?;
        let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }

    /// A cluster-admin client.
    pub async fn admin(&self) -> Result<kube::Client, String> {
        self.client_for(ADMIN_TOKEN).await
    }

    /// The audit log's events so far (`audit.k8s.io/v1` Event objects, ResponseComplete stage).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! The chart's RBAC covers exactly what the operator does. The real binary runs a full scenario
//! (leader election, a policy, grants with and without a credential Secret, a spec change, a
//! deletion through the finalizer, a policy change, shutdown) with its own identity; every
//! request it makes, as the Kubernetes emulator recorded it, must be allowed by a rule of the
//! chart's ClusterRole or (in the release namespace) Role, and every rule must be used.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbx_identity_operator::api::{DatabricksIdentityGrant, GrantPolicy};
use dbx_identity_operator::sandbox::kube::RequestRecord;
use dbx_identity_operator::sandbox::{self, SandboxOptions};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_dbx-identity-operator");
const OPERATOR_USER: &str = "system-serviceaccount-dbx-system-dbx-identity-operator";
const RELEASE_NAMESPACE: &str = "dbx-system";

/// One RBAC rule: which verbs on which group/resources, and where it applies.
#[derive(Debug, Clone)]
struct Rule {
    kind: String,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

impl Rule {
    fn allows(&self, r: &RequestRecord) -> bool {
        let resource =
            if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
        let in_scope = self.kind == "ClusterRole" || r.namespace == RELEASE_NAMESPACE;
        in_scope && self.groups.contains(&r.group) && self.resources.contains(&resource) && self.verbs.contains(&r.verb)
    }
}

/// The ClusterRole and Role rules of the chart's rbac.yaml with every optional block enabled.
/// Template control lines (`{{- if …}}`, `{{- end }}`) are dropped and inline templates
/// replaced, which leaves plain YAML.
fn chart_rules() -> Vec<Rule> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/dbx-identity-operator/templates/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("rbac.yaml");
    let plain: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{-") && !l.trim_start().starts_with("{{ end"))
        .map(|l| {
            let mut line = l.to_owned();
            while let (Some(a), Some(b)) = (line.find("{{"), line.find("}}")) {
                if b < a {
                    break;
                }
                line.replace_range(a..b + 2, "templated");
            }
            line + "\n"
        })
        .collect();
    let mut rules = Vec::new();
    for doc in plain.split("\n---") {
        let Ok(value) = serde_yaml_ng::from_str::<Value>(doc) else {
            panic!("rbac.yaml document does not parse after template removal:\n{doc}");
        };
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        for rule in value["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            };
            rules.push(Rule {
                kind: kind.clone(),
                groups: list("apiGroups"),
                resources: list("resources"),
                verbs: list("verbs"),
            });
        }
    }
    assert!(rules.len() >= 5, "too few rules parsed from rbac.yaml: {rules:?}");
    rules
}

async fn wait<F: std::future::Future<Output = bool>>(what: &str, timeout: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not reached within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(g: &DatabricksIdentityGrant) -> bool {
    g.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_covers_exactly_what_the_operator_does() {
    let _scenario = crate::common::scenario("Security", "chart RBAC covers exactly the operator's requests");
    let rules = chart_rules();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().to_owned());
    options.arm_state = dbx_identity_operator::sandbox::arm::StateConfig::default();
    options.arm_faults = Default::default();
    let sandbox = sandbox::start(options).await.expect("sandbox");
    let client = sandbox.kube.emulator.client().expect("client");
    let kubeconfig = dir.path().join("operator-kubeconfig");
    std::fs::write(&kubeconfig, sandbox.kube.emulator.kubeconfig_for(OPERATOR_USER)).expect("kubeconfig");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [("team", json!({"dbx-operator.io/team": "team"})), (RELEASE_NAMESPACE, json!({}))] {
        let ns = json!({"metadata": {"name": name, "labels": labels}});
        namespaces.create(&PostParams::default(), &serde_json::from_value(ns).expect("ns")).await.expect("namespace");
    }
    let sub = &sandbox.estate.subscription_id;
    let policies: Api<GrantPolicy> = Api::all(client.clone());
    let policy: GrantPolicy = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "GrantPolicy", "metadata": {"name": "team"},
        "spec": {"namespaceSelector": {"matchLabels": {"dbx-operator.io/team": "team"}},
                 "identities": [format!("/subscriptions/{sub}/**")], "roles": ["Reader", "Storage Blob Data Reader"],
                 "scopes": [format!("/subscriptions/{sub}/**")]},
    }))
    .expect("policy");
    policies.create(&PostParams::default(), &policy).await.expect("policy");
    // A credential Secret for a grant that uses its own service principal.
    let principal = uuid::Uuid::new_v4().to_string();
    let client_id = uuid::Uuid::new_v4().to_string();
    sandbox.arm.emulator.register_app_with_secret(&client_id, "team-secret", &principal);
    {
        let mut state = sandbox.arm.emulator.state();
        let uaa = state.role_guid_by_name("User Access Administrator").expect("role");
        let scope = dbx_identity_operator::azure::ResourceId::subscription(&sandbox.estate.subscription_id);
        state.assign_out_of_band(&scope, uaa, &principal);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "team-sp"},
        "stringData": {"tenantId": sandbox.estate.tenant_id, "clientId": client_id, "clientSecret": "team-secret"},
    }))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("secret");

    let log = std::fs::File::create(dir.path().join("operator.log")).expect("log");
    let mut child = Command::new(BIN)
        .args(["run", "--leader-election", "--lease-namespace", RELEASE_NAMESPACE, "--lease-duration", "5s"])
        .args(["--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--resync-interval", "2s"])
        .envs(sandbox.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("operator");

    let grants: Api<DatabricksIdentityGrant> = Api::namespaced(client.clone(), "team");
    for (name, spec) in [
        (
            "workspace",
            json!({"identity": {"workspace": {"resourceId": sandbox.estate.workspaces[0].id}},
                             "roleAssignments": [{"role": "Reader", "scope": sandbox.estate.scopes.resource_group}]}),
        ),
        (
            "own-credential",
            json!({"identity": {"accessConnector": {"resourceId": sandbox.estate.access_connectors[0].id}},
                                  "azureCredentialRef": {"name": "team-sp"},
                                  "roleAssignments": [{"role": "Storage Blob Data Reader", "scope": sandbox.estate.scopes.storage_account}]}),
        ),
    ] {
        let g: DatabricksIdentityGrant = serde_json::from_value(json!({
            "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("grant");
        grants.create(&PostParams::default(), &g).await.expect("create");
    }
    for name in ["workspace", "own-credential"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = grants.get(name).await.expect("get");
            if ready(&g) {
                break;
            }
            assert!(Instant::now() < deadline, "{name} not Ready: {:?}", g.status);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A grant failing the same way twice: the second identical Warning bumps the first Event's
    // series (a patch) instead of creating another.
    let invalid: DatabricksIdentityGrant = serde_json::from_value(json!({
        "apiVersion": "identity.dbx-operator.io/v1alpha1", "kind": "DatabricksIdentityGrant",
        "metadata": {"name": "invalid"},
        "spec": {"identity": {"workspace": {"resourceId": sandbox.estate.workspaces[0].id}},
                 "roleAssignments": [{"role": sandbox.estate.scopes.resource_group, "scope": sandbox.estate.scopes.resource_group}]},
    }))
    .expect("grant");
    grants.create(&PostParams::default(), &invalid).await.expect("create");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "team");
    let invalid_events = || async {
        events
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
            .collect::<Vec<_>>()
    };
    wait("the InvalidSpec event", Duration::from_secs(30), || async { !invalid_events().await.is_empty() }).await;
    let touch = json!({"metadata": {"annotations": {"example.com/touched": "1"}}});
    grants.patch("invalid", &PatchParams::default(), &Patch::Merge(&touch)).await.expect("touch");
    wait("the repeated InvalidSpec event", Duration::from_secs(30), || async {
        invalid_events().await.iter().any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
    })
    .await;
    assert_eq!(invalid_events().await.len(), 1, "a repeat created another Event");

    // A spec change, a policy change, a deletion through the finalizer.
    let patch =
        json!({"spec": {"roleAssignments": [{"role": "Reader", "scope": sandbox.estate.scopes.storage_account}]}});
    grants.patch("workspace", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    policies
        .patch(
            "team",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"roles": ["Reader", "Storage Blob Data Reader", "Key Vault Reader"]}})),
        )
        .await
        .expect("policy patch");
    wait("the spec change", Duration::from_secs(30), || async {
        grants
            .get("workspace")
            .await
            .is_ok_and(|g| ready(&g) && g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation)
    })
    .await;
    grants.delete("own-credential", &DeleteParams::default()).await.expect("delete");
    wait("the deletion", Duration::from_secs(30), || async { grants.get("own-credential").await.is_err() }).await;

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the operator did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let requests: Vec<RequestRecord> =
        sandbox.kube.emulator.requests().into_iter().filter(|r| r.user == OPERATOR_USER).collect();
    assert!(requests.len() > 20, "too few operator requests recorded: {}", requests.len());
    let denied: BTreeSet<String> = requests
        .iter()
        .filter(|r| !rules.iter().any(|rule| rule.allows(r)))
        .map(|r| {
            format!(
                "{} {}/{}{} in '{}'",
                r.verb,
                r.group,
                r.resource,
                if r.subresource.is_empty() { String::new() } else { format!("/{}", r.subresource) },
                r.namespace
            )
        })
        .collect();
    assert!(
        denied.is_empty(),
        "the operator made requests the chart's RBAC does not allow:\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );

    // Every (rule, resource, verb) the chart grants was used at least once.
    let mut unused = Vec::new();
    for rule in &rules {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
                let used = requests.iter().any(|r| {
                    rule.groups.contains(&r.group) && r.resource == res && r.subresource == sub && r.verb == *verb
                });
                if !used {
                    unused.push(format!("{} {verb} {}/{resource}", rule.kind, rule.groups.join(",")));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "the chart grants what the operator never used (least privilege):\n{}",
        unused.join("\n")
    );
    sandbox.shutdown().await;
}

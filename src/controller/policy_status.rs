//! Status of GrantPolicies: whether each can be used (`Ready`, naming an invalid pattern), and
//! how many namespaces and grants it governs. Refreshed on every policy change and each resync.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::Context;
use super::conditions::{self, Decided};
use crate::api::validation::validate_policy_spec;
use crate::api::{GrantPolicy, GrantPolicyStatus};
use crate::policy::evaluate::selects;

pub async fn reconcile(policy: Arc<GrantPolicy>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let previous = policy.status.clone().unwrap_or_default();
    // Counted from whole stores only; after a minute without them, from what there is.
    if !ctx.index.whole_or_waited(Duration::from_secs(60)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let validated = match super::lenient::unreadable(policy.as_ref()) {
        Some(problem) => Err(problem.to_owned()),
        None => validate_policy_spec(&policy.spec).map_err(|e| e.to_string()),
    };
    let (ready, governed_namespaces, governed_grants) = match validated {
        Ok(valid) => {
            let namespaces: Vec<String> = ctx
                .index
                .namespace_names()
                .into_iter()
                .filter(|ns| selects(&valid.namespace_selector, &ctx.index.namespace_labels(ns)))
                .collect();
            let grants = ctx
                .index
                .grants()
                .iter()
                .filter(|g| g.metadata.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns)))
                .count();
            (
                Decided::new(conditions::READY, true, crate::api::Reason::Valid, "the policy is in force"),
                namespaces.len(),
                grants,
            )
        }
        Err(errors) => (
            Decided::new(
                conditions::READY,
                false,
                crate::api::Reason::InvalidPolicy,
                format!("the policy allows nothing until fixed: {errors}"),
            ),
            0,
            0,
        ),
    };
    let status = GrantPolicyStatus {
        observed_generation: policy.meta().generation,
        conditions: conditions::merge(
            &previous.conditions,
            &conditions::summarised(vec![ready]),
            policy.meta().generation,
            Timestamp::now(),
        ),
        governed_namespaces: i32::try_from(governed_namespaces).unwrap_or(i32::MAX),
        governed_grants: i32::try_from(governed_grants).unwrap_or(i32::MAX),
    };
    if status != previous {
        // Untyped, so the response decodes even for a policy stored with junk (see `lenient`).
        let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ApiResource::erase::<GrantPolicy>(&()));
        api.patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await?;
    }
    Ok(Action::requeue(ctx.settings.resync_interval))
}

pub fn error_policy(policy: Arc<GrantPolicy>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), %error, "GrantPolicy status");
    Action::requeue(Duration::from_secs(10))
}

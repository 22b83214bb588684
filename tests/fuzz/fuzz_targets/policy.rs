//! GrantPolicy and DatabricksIdentityGrant specs as arbitrary JSON straight into validation
//! (as on a cluster without admission), then policy evaluation of what validated: never a panic.
#![no_main]

use dbx_identity_operator::api::validation::{validate_grant_spec_json, validate_policy_spec_json};
use dbx_identity_operator::azure::ResourceId;
use dbx_identity_operator::azure::models::Permission;
use dbx_identity_operator::policy::evaluate::{Governing, PolicyMode, Request, RoleFacts, evaluate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = validate_grant_spec_json(&value);
    let Ok(policy) = validate_policy_spec_json(&value) else { return };
    let permissions = [Permission { actions: vec!["*".into()], ..Default::default() }];
    let Ok(scope) = ResourceId::parse("/subscriptions/6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f/resourceGroups/rg-lake")
    else {
        return;
    };
    for identity in policy.identities.iter().map(|g| g.as_str().replace('*', "x")) {
        let request = Request {
            identity,
            workspace_managed_identity: true,
            role: RoleFacts { guid: uuid_owner(), name: "Owner", permissions: &permissions },
            scope: &scope,
            position: 0,
        };
        let verdict = evaluate(&[Governing { name: "fuzz", policy: &policy }], PolicyMode::Require, &request);
        if !policy.allow_privileged_roles {
            assert!(
                !matches!(verdict, dbx_identity_operator::policy::evaluate::Verdict::Allowed { .. }),
                "Owner allowed by a policy without allowPrivilegedRoles"
            );
        }
    }
});

fn uuid_owner() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x8e3af657_a8ff_443c_a75c_2fe8c4bcb635)
}

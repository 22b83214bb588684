//! The thin async step of a reconcile that writes to Azure: the [`Decision`]'s writes and
//! removals, each paced per subscription, and what each did. Nothing is decided here.

use super::Context;
use super::decide::{Decision, Write};
use super::plan::{ObservedAssignment, is_as_desired};
use super::report::{Executed, RemovalOutcome, WriteOutcome};
use crate::azure::models::RoleAssignmentProperties;
use crate::azure::{ArmClient, ArmError, RoleAssignmentId};

/// Performs the decision's writes, then its removals.
pub async fn execute(ctx: &Context, arm: &ArmClient, decision: &Decision) -> Executed {
    let mut executed = Executed::default();
    for write in &decision.writes {
        executed.writes.push(put(ctx, arm, write).await);
    }
    for id in &decision.removals {
        executed.removals.push(remove(ctx, arm, id).await);
    }
    executed
}

async fn put(ctx: &Context, arm: &ArmClient, write: &Write) -> WriteOutcome {
    let d = &write.desired;
    let properties = RoleAssignmentProperties {
        scope: None,
        role_definition_id: d.role_definition_id.clone(),
        principal_id: d.principal_id.clone(),
        principal_type: Some(format!("{:?}", d.principal_type)),
        description: d.description.clone(),
        condition: d.condition.as_ref().map(|c| c.expression.clone()),
        condition_version: d.condition.as_ref().map(|c| c.version.clone()),
    };
    // Grants sharing a tuple must not PUT it twice at once.
    let _writer = ctx.concurrency.assignment_writer(&d.name).await;
    // A grant sharing this tuple may have written it while we waited.
    let written_meanwhile = ctx
        .scopes
        .cached(&d.scope, &d.name)
        .await
        .filter(|a| ObservedAssignment::from_arm(a).is_some_and(|o| is_as_desired(&o, d)));
    // On record (or on the write-ahead record) but missing from the list: a GET (consistent,
    // unlike lists) tells drift, or a write that never happened, from a list lagging behind a
    // recent write, which a restarted operator (or a reconcile of a stale copy) does not know of.
    let lagging = match (&written_meanwhile, write.check_first) {
        (None, true) => {
            let _permit = ctx.concurrency.arm_permit(&d.scope).await;
            arm.get_role_assignment(&d.scope, &d.name)
                .await
                .ok()
                .filter(|a| ObservedAssignment::from_arm(a).is_some_and(|o| is_as_desired(&o, d)))
        }
        _ => None,
    };
    let result = match written_meanwhile.or(lagging) {
        Some(assignment) => Ok((assignment, false)),
        None => {
            let _permit = ctx.concurrency.arm_permit(&d.scope).await;
            arm.put_role_assignment(&d.scope, &d.name, properties).await
        }
    };
    match result {
        Ok((assignment, created)) => {
            ctx.scopes.record_put(&d.scope, assignment).await;
            WriteOutcome::Written { created }
        }
        Err(ArmError::RoleAssignmentExists { message }) => {
            // Someone else's assignment the list did not show yet: adopt it.
            ctx.scopes.invalidate(&d.scope).await;
            let existing =
                arm.list_role_assignments_for_principal(&d.scope, &d.principal_id).await.ok().and_then(|list| {
                    list.iter()
                        .filter_map(ObservedAssignment::from_arm)
                        .find(|o| o.scope == d.scope && o.role_guid == d.role_guid)
                        .map(|o| o.id)
                });
            WriteOutcome::Exists { existing, message }
        }
        Err(e) => {
            if matches!(e, ArmError::RoleDefinitionDoesNotExist { .. }) {
                ctx.resolver.forget_role_definition(&d.role_definition_id);
            }
            WriteOutcome::Failed(e)
        }
    }
}

pub async fn remove(ctx: &Context, arm: &ArmClient, id: &RoleAssignmentId) -> RemovalOutcome {
    let _permit = ctx.concurrency.arm_permit(id.scope()).await;
    remove_now(ctx, arm, id).await
}

/// [`remove`] without waiting for one of the subscription's request slots: for removals at
/// expiry, which must not queue behind creates holding every slot while ARM throttles them
/// (DELETEs have their own ARM bucket, so they need not wait for the writes').
pub async fn remove_now(ctx: &Context, arm: &ArmClient, id: &RoleAssignmentId) -> RemovalOutcome {
    let result = arm.delete_role_assignment(id.scope(), id.name()).await;
    match result {
        // Gone already, or its scope is gone: done.
        Ok(_) | Err(ArmError::NotFound { .. }) => {
            ctx.scopes.record_delete(id.scope(), id.name()).await;
            RemovalOutcome::Removed { confirmed: result.is_ok() }
        }
        Err(e) => RemovalOutcome::Failed(e),
    }
}

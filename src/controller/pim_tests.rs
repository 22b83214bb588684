use super::*;
use crate::api::PrincipalType;
use crate::azure::models::RoleAssignmentScheduleProperties;

const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
const P: &str = "8cc0d77c-b2b9-56a1-a3e6-5bfe13de63fb";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn desired() -> DesiredAssignment {
    let scope = ResourceId::resource_group(SUB, "rg-lake");
    DesiredAssignment {
        index: 0,
        name: crate::controller::plan::assignment_name(P, READER.parse().expect("guid"), &scope),
        scope,
        role_definition_id: format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
        role_guid: READER.parse().expect("guid"),
        principal_id: P.into(),
        principal_type: PrincipalType::ServicePrincipal,
        condition: None,
        description: None,
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("time")
}

fn listed(d: &DesiredAssignment, end: Timestamp, request: &str) -> RoleAssignmentSchedule {
    RoleAssignmentSchedule {
        id: format!("{}/providers/Microsoft.Authorization/roleAssignmentSchedules/s1", d.scope),
        name: "s1".into(),
        properties: RoleAssignmentScheduleProperties {
            scope: Some(d.scope.to_string()),
            role_definition_id: Some(d.role_definition_id.clone()),
            principal_id: Some(P.to_uppercase()),
            status: Some("Provisioned".into()),
            start_date_time: Some("2026-06-01T10:00:00Z".into()),
            end_date_time: Some(end.to_string()),
            role_assignment_schedule_request_id: Some(format!(
                "{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{request}",
                d.scope
            )),
        },
    }
}

#[test]
fn a_schedule_is_this_grants_by_record_or_by_the_request_name_it_would_give() {
    let d = desired();
    let end = at("2026-06-01T12:00:00Z");
    assert_eq!(step(&d, end, &[], &[]), PimStep::Assign);

    // Made by this grant just before a crash (not recorded yet): recognised by its request name.
    let ours = listed(&d, end, &request_name(&d.name, end));
    assert!(matches!(step(&d, end, std::slice::from_ref(&ours), &[]), PimStep::InSync(_)));
    // This grant's, to end later: moved.
    let later = at("2026-06-01T14:00:00Z");
    assert!(matches!(step(&d, later, std::slice::from_ref(&ours), &[]), PimStep::Move(_)));

    // Someone else's request: adopted, unless this grant recorded the schedule.
    let foreign = listed(&d, end, "00000000-0000-0000-0000-000000000001");
    let adopted = step(&d, end, std::slice::from_ref(&foreign), &[]);
    assert!(matches!(adopted, PimStep::Adopt(_)), "{adopted:?}");
    let record = managed(&foreign, &d.scope).expect("parsed");
    assert!(matches!(step(&d, later, std::slice::from_ref(&foreign), &[record]), PimStep::Move(_)));

    // Another role at the scope is not this entry's.
    let mut other = foreign.clone();
    other.properties.role_definition_id =
        Some(format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{}", uuid::Uuid::nil()));
    assert_eq!(step(&d, end, &[other], &[]), PimStep::Assign);
}

#[test]
fn request_names_are_stable_per_assignment_and_end() {
    let d = desired();
    let end = at("2026-06-01T12:00:00Z");
    assert_eq!(request_name(&d.name, end), request_name(&d.name.to_uppercase(), end));
    assert_ne!(request_name(&d.name, end), request_name(&d.name, at("2026-06-01T12:00:01Z")));
    assert!(crate::azure::guid::is_guid(&request_name(&d.name, end)));
}

#[test]
fn only_the_policys_refusal_is_final_and_throttling_is_retried() {
    let policy = ArmError::InvalidRequest {
        code: POLICY_REFUSED.into(),
        message: "The following policy rules failed: [\"ExpirationRule\"]".into(),
    };
    assert!(matches!(refusal(&policy), Refusal::Policy));
    let licence = ArmError::InvalidRequest { code: "PimLicenseRequired".into(), message: "m".into() };
    assert!(matches!(refusal(&licence), Refusal::Fallback));
    let throttled = ArmError::Throttled { code: "TooManyRequests".into(), message: "m".into(), retry_after: None };
    assert!(matches!(refusal(&throttled), Refusal::Retry));
}

//! Azure PIM for Azure resource roles, as the emulator models it: `roleAssignmentScheduleRequests`
//! (PUT, GET), `roleAssignmentSchedules` and `roleAssignmentScheduleInstances` (lists),
//! api-version 2020-10-01, shaped as `../shared/azure/specs/Microsoft.Authorization/2020-10-01/`
//! describes them (the contract check validates the responses against those specs).
//!
//! Azure's documented behaviour modelled here:
//! - an active assignment made through PIM is also an ordinary role assignment, listed by
//!   `roleAssignments` (its instance names it in `originRoleAssignmentId`), and it ends at the
//!   schedule's end whether or not anyone is watching ("Use Azure PIM to manage active access
//!   with the REST API", learn.microsoft.com/rest/api/authorization/privileged-role-assignment-rest-sample);
//! - an assignment's schedule is at least 5 minutes long, and it cannot be removed within 5
//!   minutes of its start (Microsoft Entra PIM, "Assign Azure resource roles": "Assignments must
//!   have a minimum duration of five minutes" / "can't be removed within five minutes of
//!   assignment"); Azure answers a too-short schedule with `ActiveDurationTooShort` ("The Active
//!   duration is too short. Miniumum Required is 5 minutes.", DanielChronlund/DCToolbox#50);
//! - the role's management policy can refuse a request: `400
//!   RoleAssignmentRequestPolicyValidationFailed`, "The following policy rules failed:
//!   [\"ExpirationRule\"]" (hashicorp/terraform-provider-azurerm#22766), e.g. a maximum
//!   duration ([`PimConfig::max_duration`]);
//! - PIM needs a Microsoft Entra ID P2 or Governance licence; a tenant without one is refused.
//!   The exact code is not documented: the emulator answers `400 PimLicenseRequired`
//!   ([`PimConfig::licensed`]), and the operator treats every refusal other than a policy
//!   validation failure alike;
//! - whether a managed identity may receive a time-bound *active* assignment is not stated
//!   plainly; [`PimConfig::refused_principal_types`] makes the emulator refuse it
//!   (`400 PrincipalTypeNotSupported`, the emulator's code) to test the operator's fallback.
//!
//! Time runs on the emulator's clock ([`ArmState::now`]), which tests move forward with
//! [`ArmState::advance_clock`] instead of sleeping; ended schedules and their assignments are
//! removed whenever the state is next used.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use uuid::Uuid;

use super::state::{ArmFailure, ArmResult, ArmState};
use crate::azure::ResourceId;
use crate::azure::guid::parse_guid;

/// PIM's behaviour knobs (`PUT /_emulator/pim` takes them as JSON, `maxDuration` in seconds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PimConfig {
    /// The tenant has the licence PIM needs (default true).
    pub licensed: bool,
    /// Principal types whose active assignment requests are refused (e.g. `ServicePrincipal`).
    pub refused_principal_types: Vec<String>,
    /// The role management policy's longest active assignment (its `ExpirationRule`).
    #[serde(with = "seconds")]
    pub max_duration: Option<Duration>,
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

impl Default for PimConfig {
    fn default() -> Self {
        PimConfig { licensed: true, refused_principal_types: Vec::new(), max_duration: None }
    }
}

/// Shortest schedule, and the time after its start before it may be removed.
pub const MIN_SCHEDULE: SignedDuration = SignedDuration::from_mins(5);

/// An active assignment made through PIM.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub request_name: String,
    pub scope: ResourceId,
    pub role_guid: Uuid,
    pub principal_id: String,
    pub principal_type: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// The ordinary role assignment that carries it.
    pub assignment_name: String,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
}

/// What a request asks for, parsed from its body.
struct Request {
    principal_id: String,
    principal_type: String,
    role_definition_id: String,
    request_type: String,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    duration: Option<SignedDuration>,
    justification: Option<String>,
    condition: Option<String>,
    condition_version: Option<String>,
}

fn bad(code: &str, message: impl Into<String>) -> ArmFailure {
    ArmFailure::new(400, code, message)
}

/// An ISO 8601 duration of the shape PIM examples use (`PT8H`, `PT30M`, `PT300S`, `P1D`).
fn iso_duration(text: &str) -> Option<SignedDuration> {
    let (days, time) = match text.strip_prefix('P')?.split_once('T') {
        Some((d, t)) => (d, t),
        None => (text.strip_prefix('P')?, ""),
    };
    let mut secs: i64 = 0;
    if let Some(d) = days.strip_suffix('D') {
        secs += d.parse::<i64>().ok()? * 86_400;
    } else if !days.is_empty() {
        return None;
    }
    let mut number = String::new();
    for ch in time.chars() {
        match ch {
            '0'..='9' => number.push(ch),
            'H' | 'M' | 'S' => {
                let n: i64 = number.parse().ok()?;
                secs += n * match ch {
                    'H' => 3600,
                    'M' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => return None,
        }
    }
    number.is_empty().then(|| SignedDuration::from_secs(secs))
}

fn parse_request(body: &Value) -> ArmResult<Request> {
    let p = body
        .get("properties")
        .ok_or_else(|| bad("InvalidRequestFormat", "The request body must contain 'properties'."))?;
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    let required = |k: &str| text(k).ok_or_else(|| bad("InvalidRequestFormat", format!("The request lacks '{k}'.")));
    let schedule = p.get("scheduleInfo");
    let expiration = schedule.and_then(|s| s.get("expiration"));
    let time = |v: Option<&Value>| -> ArmResult<Option<Timestamp>> {
        match v.and_then(Value::as_str) {
            None => Ok(None),
            Some(t) => {
                t.parse().map(Some).map_err(|_| bad("InvalidRequestFormat", format!("'{t}' is not a date-time.")))
            }
        }
    };
    let duration = match expiration.and_then(|e| e.get("duration")).and_then(Value::as_str) {
        None => None,
        Some(d) => {
            Some(iso_duration(d).ok_or_else(|| bad("InvalidRequestFormat", format!("'{d}' is not a duration.")))?)
        }
    };
    Ok(Request {
        principal_id: required("principalId")?.to_ascii_lowercase(),
        principal_type: text("principalType").unwrap_or_else(|| "ServicePrincipal".into()),
        role_definition_id: required("roleDefinitionId")?,
        request_type: required("requestType")?,
        start: time(schedule.and_then(|s| s.get("startDateTime")))?,
        end: time(expiration.and_then(|e| e.get("endDateTime")))?,
        duration,
        justification: text("justification"),
        condition: text("condition"),
        condition_version: text("conditionVersion"),
    })
}

impl Schedule {
    fn id(&self) -> String {
        format!("{}/providers/Microsoft.Authorization/roleAssignmentSchedules/{}", self.scope, self.name)
    }

    fn common(&self) -> serde_json::Map<String, Value> {
        let role = super::state::role_definition_id(&self.scope, self.role_guid);
        let mut m = serde_json::Map::new();
        m.insert("scope".into(), json!(self.scope.to_string()));
        m.insert("roleDefinitionId".into(), json!(role));
        m.insert("principalId".into(), json!(self.principal_id));
        m.insert("principalType".into(), json!(self.principal_type));
        m.insert("status".into(), json!("Provisioned"));
        m.insert("startDateTime".into(), json!(self.start.to_string()));
        m.insert("endDateTime".into(), json!(self.end.to_string()));
        m.insert("assignmentType".into(), json!("Assigned"));
        m.insert("memberType".into(), json!("Direct"));
        m.insert("createdOn".into(), json!(self.start.to_string()));
        if let Some(c) = &self.condition {
            m.insert("condition".into(), json!(c));
            m.insert("conditionVersion".into(), json!(self.condition_version));
        }
        m
    }

    /// The `roleAssignmentSchedules` item.
    pub fn schedule_json(&self) -> Value {
        let mut p = self.common();
        p.insert(
            "roleAssignmentScheduleRequestId".into(),
            json!(format!(
                "{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}",
                self.scope, self.request_name
            )),
        );
        p.insert("updatedOn".into(), json!(self.start.to_string()));
        json!({"id": self.id(), "name": self.name, "type": "Microsoft.Authorization/roleAssignmentSchedules", "properties": p})
    }

    /// The `roleAssignmentScheduleInstances` item (one per active schedule).
    pub fn instance_json(&self) -> Value {
        let mut p = self.common();
        p.insert("roleAssignmentScheduleId".into(), json!(self.id()));
        p.insert(
            "originRoleAssignmentId".into(),
            json!(format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", self.scope, self.assignment_name)),
        );
        json!({
            "id": format!("{}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances/{}", self.scope, self.name),
            "name": self.name,
            "type": "Microsoft.Authorization/roleAssignmentScheduleInstances",
            "properties": p,
        })
    }
}

impl ArmState {
    /// The emulator's clock: wall time moved by [`Self::advance_clock`].
    pub fn now(&self) -> Timestamp {
        Timestamp::now().checked_add(self.clock_offset).unwrap_or_else(|_| Timestamp::now())
    }

    /// Moves the emulator's clock forward (PIM schedules end on it).
    pub fn advance_clock(&mut self, by: Duration) {
        self.clock_offset += SignedDuration::try_from(by).unwrap_or_default();
        self.end_schedules();
    }

    /// Removes ended schedules and the role assignments they carry, as Azure does at the end.
    pub fn end_schedules(&mut self) {
        let now = self.now();
        let ended: Vec<Schedule> = self.schedules.values().filter(|s| s.end <= now).cloned().collect();
        for s in ended {
            self.schedules.remove(&s.name);
            self.delete_out_of_band(&s.assignment_name);
        }
    }

    /// Active PIM schedules (tests and the admin API).
    pub fn all_schedules(&self) -> Vec<Schedule> {
        self.schedules.values().cloned().collect()
    }

    /// `PUT …/roleAssignmentScheduleRequests/{name}`: `AdminAssign` (and `AdminUpdate` /
    /// `AdminExtend` of an existing schedule: a new end) and `AdminRemove`.
    pub fn put_schedule_request(
        &mut self,
        caller: &str,
        scope: &ResourceId,
        name: &str,
        body: &Value,
    ) -> ArmResult<(u16, Value)> {
        self.end_schedules();
        if parse_guid(name).is_none() {
            return Err(bad(
                "InvalidRoleAssignmentScheduleRequestId",
                format!("The request name '{name}' must be a GUID."),
            ));
        }
        if self.schedule_requests.contains_key(&name.to_ascii_lowercase()) {
            return Err(ArmFailure::new(409, "RoleAssignmentScheduleRequestExists", "The request already exists."));
        }
        let request = parse_request(body)?;
        self.check_scope_exists(scope)?;
        self.authorize(caller, scope, crate::azure::permissions::ROLE_ASSIGNMENT_WRITE)?;
        let role_guid = self.visible_role(&request.role_definition_id, scope).ok_or_else(|| {
            bad(
                "RoleDefinitionDoesNotExist",
                format!("The specified role definition with ID '{}' does not exist.", request.role_definition_id),
            )
        })?;
        if !self.pim.licensed {
            return Err(bad(
                "PimLicenseRequired",
                "Privileged Identity Management requires a Microsoft Entra ID P2 or Governance licence in this tenant.",
            ));
        }
        let now = self.now();
        let existing = self
            .schedules
            .values()
            .find(|s| s.principal_id == request.principal_id && s.role_guid == role_guid && s.scope == *scope)
            .cloned();
        let (status, schedule) = match request.request_type.as_str() {
            "AdminRemove" => {
                let Some(s) = existing else {
                    return Err(bad(
                        "RoleAssignmentDoesNotExist",
                        "The role assignment schedule to remove does not exist.",
                    ));
                };
                if now.duration_since(s.start) < MIN_SCHEDULE {
                    return Err(bad(
                        "ActiveDurationTooShort",
                        "An assignment cannot be removed within 5 minutes of its start.",
                    ));
                }
                self.schedules.remove(&s.name);
                self.delete_out_of_band(&s.assignment_name);
                ("Revoked", s)
            }
            "AdminAssign" | "AdminUpdate" | "AdminExtend" => {
                if self.pim.refused_principal_types.iter().any(|t| t.eq_ignore_ascii_case(&request.principal_type)) {
                    return Err(bad(
                        "PrincipalTypeNotSupported",
                        format!(
                            "Active time-bound assignments are not supported for principals of type {}.",
                            request.principal_type
                        ),
                    ));
                }
                let start = match (&existing, request.start) {
                    (Some(s), _) => s.start,
                    (None, Some(t)) => t.max(now),
                    (None, None) => now,
                };
                let end = match (request.end, request.duration) {
                    (Some(end), _) => end,
                    (None, Some(d)) => start.checked_add(d).unwrap_or(start),
                    (None, None) => {
                        return Err(bad(
                            "RoleAssignmentRequestPolicyValidationFailed",
                            "The following policy rules failed: [\"ExpirationRule\"]",
                        ));
                    }
                };
                if end.duration_since(now.max(start)) < MIN_SCHEDULE {
                    return Err(bad(
                        "ActiveDurationTooShort",
                        "The Active duration is too short. Miniumum Required is 5 minutes.",
                    ));
                }
                if let Some(max) = self.pim.max_duration
                    && end.duration_since(start) > SignedDuration::try_from(max).unwrap_or_default()
                {
                    return Err(bad(
                        "RoleAssignmentRequestPolicyValidationFailed",
                        "The following policy rules failed: [\"ExpirationRule\"]",
                    ));
                }
                match existing {
                    Some(mut s) if request.request_type != "AdminAssign" => {
                        s.end = end;
                        s.request_name = name.to_ascii_lowercase();
                        self.schedules.insert(s.name.clone(), s.clone());
                        ("Provisioned", s)
                    }
                    Some(_) => {
                        return Err(ArmFailure::new(
                            409,
                            "RoleAssignmentExists",
                            "The role assignment already exists.",
                        ));
                    }
                    None => {
                        if self.has_assignment(scope, role_guid, &request.principal_id) {
                            return Err(ArmFailure::new(
                                409,
                                "RoleAssignmentExists",
                                "The role assignment already exists.",
                            ));
                        }
                        let assignment_name = self.assign_out_of_band(scope, role_guid, &request.principal_id);
                        let s = Schedule {
                            name: Uuid::new_v4().to_string(),
                            request_name: name.to_ascii_lowercase(),
                            scope: scope.clone(),
                            role_guid,
                            principal_id: request.principal_id.clone(),
                            principal_type: request.principal_type.clone(),
                            start,
                            end,
                            assignment_name,
                            condition: request.condition.clone(),
                            condition_version: request.condition_version.clone(),
                        };
                        self.schedules.insert(s.name.clone(), s.clone());
                        ("Provisioned", s)
                    }
                }
            }
            other => {
                return Err(bad("InvalidRequestType", format!("The emulator does not serve requestType '{other}'.")));
            }
        };
        let response = json!({
            "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}"),
            "name": name,
            "type": "Microsoft.Authorization/roleAssignmentScheduleRequests",
            "properties": {
                "scope": scope.to_string(),
                "roleDefinitionId": super::state::role_definition_id(scope, role_guid),
                "principalId": request.principal_id,
                "principalType": request.principal_type,
                "requestType": request.request_type,
                "status": status,
                "targetRoleAssignmentScheduleId": schedule.id(),
                "scheduleInfo": {
                    "startDateTime": schedule.start.to_string(),
                    "expiration": {"type": "AfterDateTime", "endDateTime": schedule.end.to_string()},
                },
                "justification": request.justification,
                "requestorId": caller,
                "createdOn": now.to_string(),
            },
        });
        self.schedule_requests.insert(name.to_ascii_lowercase(), response.clone());
        Ok((201, response))
    }

    /// `GET …/roleAssignmentScheduleRequests/{name}`.
    pub fn get_schedule_request(&self, name: &str) -> ArmResult<Value> {
        self.schedule_requests.get(&name.to_ascii_lowercase()).cloned().ok_or_else(|| {
            ArmFailure::new(404, "RoleAssignmentScheduleRequestNotFound", format!("The request '{name}' is not found."))
        })
    }

    /// `GET …/roleAssignmentSchedules` or `…/roleAssignmentScheduleInstances` at `scope` (at,
    /// above and below it), optionally one principal's.
    pub fn list_schedules(
        &mut self,
        scope: &ResourceId,
        principal: Option<&str>,
        instances: bool,
    ) -> ArmResult<Vec<Value>> {
        self.end_schedules();
        self.check_scope_exists(scope)?;
        let key = scope.normalized();
        let related = |s: &Schedule| {
            let k = s.scope.normalized();
            key.starts_with(&k) || k.starts_with(&key)
        };
        Ok(self
            .schedules
            .values()
            .filter(|s| related(s) && principal.is_none_or(|p| s.principal_id.eq_ignore_ascii_case(p)))
            .map(|s| if instances { s.instance_json() } else { s.schedule_json() })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_iso_durations_pim_uses() {
        assert_eq!(iso_duration("PT8H"), Some(SignedDuration::from_hours(8)));
        assert_eq!(iso_duration("PT1H30M"), Some(SignedDuration::from_mins(90)));
        assert_eq!(iso_duration("P1DT2S"), Some(SignedDuration::from_secs(86_402)));
        assert_eq!(iso_duration("8H"), None);
    }
}

//! ARM failures as one typed enum, classified from the HTTP status and ARM's
//! `{"error":{"code","message"}}` body. Every variant keeps Azure's code and message verbatim
//! (they end up in grant status, where an operator reads them) and knows whether retrying can
//! help.

use std::time::Duration;

use serde::Deserialize;

/// Why an ARM call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    /// 409: the (principal, role, scope) already has an assignment under another name.
    #[error("RoleAssignmentExists: {message}")]
    RoleAssignmentExists { message: String },
    /// 400: Entra does not know the principal (yet — replication can take minutes).
    #[error("PrincipalNotFound: {message}")]
    PrincipalNotFound { message: String },
    /// The role definition does not exist at that scope.
    #[error("RoleDefinitionDoesNotExist: {message}")]
    RoleDefinitionDoesNotExist { message: String },
    /// 403: the caller lacks the permission.
    #[error("AuthorizationFailed: {message}")]
    AuthorizationFailed { message: String },
    /// 404: resource, resource group, subscription or assignment not found.
    #[error("{code}: {message}")]
    NotFound { code: String, message: String },
    /// The subscription holds the most role assignments Azure allows.
    #[error("RoleAssignmentLimitExceeded: {message}")]
    RoleAssignmentLimitExceeded { message: String },
    /// An existing assignment's principal, role or scope cannot change.
    #[error("RoleAssignmentUpdateNotPermitted: {message}")]
    RoleAssignmentUpdateNotPermitted { message: String },
    /// 400 for any other reason, e.g. a malformed ABAC condition.
    #[error("{code}: {message}")]
    InvalidRequest { code: String, message: String },
    /// 429: ARM's request budget for the subscription is spent.
    #[error("{code}: {message}")]
    Throttled { code: String, message: String, retry_after: Option<Duration> },
    /// No token could be had, or ARM refused the one sent (401).
    #[error("Unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// 5xx, timeouts, connection resets.
    #[error("Transient ({}): {message}", status.map_or("no response".to_owned(), |s| s.to_string()))]
    Transient { status: Option<u16>, message: String },
    /// Anything else, including responses that are not what ARM sends.
    #[error("{code} (HTTP {status}): {message}")]
    Other { status: u16, code: String, message: String },
}

impl ArmError {
    /// True when the same request may succeed later without anyone changing anything.
    /// PrincipalNotFound counts: a new managed identity takes a while to replicate in Entra.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ArmError::Throttled { .. }
                | ArmError::Transient { .. }
                | ArmError::PrincipalNotFound { .. }
                | ArmError::Unauthenticated { .. }
        )
    }

    /// The ARM error code (or our name for the class when ARM sent none).
    pub fn code(&self) -> &str {
        match self {
            ArmError::RoleAssignmentExists { .. } => "RoleAssignmentExists",
            ArmError::PrincipalNotFound { .. } => "PrincipalNotFound",
            ArmError::RoleDefinitionDoesNotExist { .. } => "RoleDefinitionDoesNotExist",
            ArmError::AuthorizationFailed { .. } => "AuthorizationFailed",
            ArmError::RoleAssignmentLimitExceeded { .. } => "RoleAssignmentLimitExceeded",
            ArmError::RoleAssignmentUpdateNotPermitted { .. } => "RoleAssignmentUpdateNotPermitted",
            ArmError::Unauthenticated { .. } => "Unauthenticated",
            ArmError::Transient { .. } => "Transient",
            ArmError::NotFound { code, .. }
            | ArmError::InvalidRequest { code, .. }
            | ArmError::Throttled { code, .. }
            | ArmError::Other { code, .. } => code,
        }
    }

    /// ARM's message.
    pub fn message(&self) -> &str {
        match self {
            ArmError::RoleAssignmentExists { message }
            | ArmError::PrincipalNotFound { message }
            | ArmError::RoleDefinitionDoesNotExist { message }
            | ArmError::AuthorizationFailed { message }
            | ArmError::RoleAssignmentLimitExceeded { message }
            | ArmError::RoleAssignmentUpdateNotPermitted { message }
            | ArmError::Unauthenticated { message }
            | ArmError::Transient { message, .. }
            | ArmError::NotFound { message, .. }
            | ArmError::InvalidRequest { message, .. }
            | ArmError::Throttled { message, .. }
            | ArmError::Other { message, .. } => message,
        }
    }

    /// How long ARM asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ArmError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Classifies a non-success response. `retry_after` is the parsed `Retry-After` header.
    pub fn from_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> ArmError {
        let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(ErrorEnvelope { error: Some(detail) }) => {
                (detail.code.unwrap_or_default(), detail.message.unwrap_or_default())
            }
            _ => (String::new(), body_excerpt(body)),
        };
        let code_is = |c: &str| code.eq_ignore_ascii_case(c);
        match status {
            _ if code_is("RoleAssignmentExists") => ArmError::RoleAssignmentExists { message },
            _ if code_is("PrincipalNotFound") => ArmError::PrincipalNotFound { message },
            _ if code_is("RoleDefinitionDoesNotExist") => ArmError::RoleDefinitionDoesNotExist { message },
            _ if code_is("RoleAssignmentLimitExceeded") => ArmError::RoleAssignmentLimitExceeded { message },
            _ if code_is("RoleAssignmentUpdateNotPermitted") => ArmError::RoleAssignmentUpdateNotPermitted { message },
            403 if code_is("AuthorizationFailed") || code.is_empty() => ArmError::AuthorizationFailed { message },
            401 => ArmError::Unauthenticated { message: with_code(&code, message) },
            404 => ArmError::NotFound { code: or_default(code, "NotFound"), message },
            429 => ArmError::Throttled { code: or_default(code, "TooManyRequests"), message, retry_after },
            408 | 500..=599 => ArmError::Transient { status: Some(status), message: with_code(&code, message) },
            400 => ArmError::InvalidRequest { code: or_default(code, "BadRequest"), message },
            _ => ArmError::Other { status, code: or_default(code, "Unexpected"), message },
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

fn or_default(code: String, default: &str) -> String {
    if code.is_empty() { default.to_owned() } else { code }
}

fn with_code(code: &str, message: String) -> String {
    if code.is_empty() { message } else { format!("{code}: {message}") }
}

/// At most 300 characters of a body that is not ARM's error shape, for the message.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty response body)".to_owned();
    }
    let mut excerpt: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        excerpt.push('…');
    }
    excerpt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string().into_bytes()
    }

    #[test]
    fn classifies_every_kind_and_keeps_azure_words() {
        let cases: Vec<(u16, Vec<u8>, &str, bool)> = vec![
            (409, arm("RoleAssignmentExists", "The role assignment already exists."), "RoleAssignmentExists", false),
            (400, arm("PrincipalNotFound", "Principal abc does not exist in the directory"), "PrincipalNotFound", true),
            (
                400,
                arm("RoleDefinitionDoesNotExist", "The specified role definition does not exist."),
                "RoleDefinitionDoesNotExist",
                false,
            ),
            (403, arm("AuthorizationFailed", "The client does not have authorization"), "AuthorizationFailed", false),
            (
                404,
                arm("ResourceGroupNotFound", "Resource group 'x' could not be found."),
                "ResourceGroupNotFound",
                false,
            ),
            (
                400,
                arm("RoleAssignmentLimitExceeded", "No more role assignments can be created"),
                "RoleAssignmentLimitExceeded",
                false,
            ),
            (
                400,
                arm(
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                ),
                "RoleAssignmentUpdateNotPermitted",
                false,
            ),
            (400, arm("InvalidConditionVersion", "bad"), "InvalidConditionVersion", false),
            (429, arm("TooManyRequests", "slow down"), "TooManyRequests", true),
            (401, arm("ExpiredAuthenticationToken", "expired"), "Unauthenticated", true),
            (503, b"<html>gateway</html>".to_vec(), "Transient", true),
            (418, arm("Teapot", "short and stout"), "Teapot", false),
        ];
        for (status, body, code, retryable) in cases {
            let e = ArmError::from_response(status, &body, None);
            assert_eq!(e.code(), code, "{status} {e:?}");
            assert_eq!(e.is_retryable(), retryable, "{status} {e:?}");
        }
        let e = ArmError::from_response(
            403,
            &arm("AuthorizationFailed", "The client 'x' does not have authorization"),
            None,
        );
        assert_eq!(e.to_string(), "AuthorizationFailed: The client 'x' does not have authorization");
    }

    #[test]
    fn hostile_bodies_become_short_errors() {
        let e = ArmError::from_response(500, &vec![b'x'; 100_000], None);
        assert!(e.to_string().len() < 400);
        let e = ArmError::from_response(400, b"{\"error\": 5}", None);
        assert_eq!(e.code(), "BadRequest");
        let e = ArmError::from_response(502, b"", None);
        assert_eq!(e.message(), "(empty response body)");
    }

    #[test]
    fn throttling_carries_retry_after() {
        let e = ArmError::from_response(429, &arm("TooManyRequests", "x"), Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }
}

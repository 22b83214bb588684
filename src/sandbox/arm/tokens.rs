//! Token issuing and checking: Entra's `/{tenant}/oauth2/v2.0/token` (client secret, and client
//! assertion for workload identity) and App Service's managed-identity endpoint. Tokens are
//! JWT-shaped (`header.claims.signature`, base64url) and expire; ARM routes accept only tokens
//! this issuer handed out, for the emulator's own audience, before they expire.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use uuid::Uuid;

/// What a token says.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Object id of the principal the token is for.
    pub oid: String,
    pub aud: String,
    pub expires: SystemTime,
}

/// Why a bearer token was refused (rendered as 401 with `WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub code: &'static str,
    pub message: String,
}

/// A registered application (service principal).
#[derive(Debug, Clone)]
pub struct App {
    pub principal_id: String,
    pub secret: Option<String>,
    /// Federated credentials as `(issuer, subject)`.
    pub federated: Vec<(String, String)>,
}

/// The audience of a workload identity's service-account token.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The issuer the sandbox's service-account tokens claim.
pub const SANDBOX_OIDC_ISSUER: &str = "https://oidc.sandbox.dbx-operator.local/";

#[derive(Debug)]
pub struct TokenIssuer {
    pub lifetime: Duration,
    issued: HashMap<String, Claims>,
    pub apps: HashMap<String, App>,
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A JWT-shaped string with the given claims (unsigned: the signature part is random).
pub fn jwt_shaped(claims: &serde_json::Value) -> String {
    let signature = URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes());
    format!("{}.{}.{signature}", b64(&json!({"typ": "JWT", "alg": "RS256"})), b64(claims))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The claims part of a JWT-shaped string, if it has one.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_, claims, _) = (parts.next()?, parts.next()?, parts.next()?);
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
}

impl TokenIssuer {
    pub fn new(lifetime: Duration) -> Self {
        TokenIssuer { lifetime, issued: HashMap::new(), apps: HashMap::new() }
    }

    /// Issues a token for `oid` with audience `aud`; returns it and its lifetime in seconds.
    pub fn issue(&mut self, tenant_id: &str, oid: &str, aud: &str) -> (String, u64) {
        let now = SystemTime::now();
        self.issued.retain(|_, c| c.expires > now);
        let expires = now + self.lifetime;
        let token = jwt_shaped(&json!({
            "aud": aud, "iss": format!("https://sts.windows.net/{tenant_id}/"), "tid": tenant_id,
            "oid": oid, "sub": oid, "iat": unix(now), "nbf": unix(now), "exp": unix(expires),
        }));
        self.issued.insert(token.clone(), Claims { oid: oid.to_owned(), aud: aud.to_owned(), expires });
        (token, self.lifetime.as_secs())
    }

    /// Checks an `Authorization` header value for the audience `audience`.
    pub fn verify(&self, authorization: Option<&str>, audience: &str) -> Result<Claims, AuthFailure> {
        let Some(header) = authorization else {
            return Err(AuthFailure {
                code: "AuthenticationFailed",
                message: "Authentication failed. The 'Authorization' header is missing.".into(),
            });
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim).filter(|t| t.split('.').count() == 3) else {
            return Err(AuthFailure {
                code: "InvalidAuthenticationToken",
                message: "The access token is invalid.".into(),
            });
        };
        let Some(claims) = self.issued.get(token) else {
            return Err(AuthFailure {
                code: "InvalidAuthenticationToken",
                message: "The access token is invalid.".into(),
            });
        };
        if claims.expires <= SystemTime::now() {
            return Err(AuthFailure {
                code: "ExpiredAuthenticationToken",
                message: "The access token expiry UTC time is earlier than current UTC time.".into(),
            });
        }
        if claims.aud.trim_end_matches('/') != audience.trim_end_matches('/') {
            return Err(AuthFailure {
                code: "InvalidAuthenticationTokenAudience",
                message: format!("The access token has been obtained for wrong audience or resource '{}'.", claims.aud),
            });
        }
        Ok(claims.clone())
    }

    /// Expires every token now (tests of refresh behaviour).
    pub fn expire_all(&mut self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for claims in self.issued.values_mut() {
            claims.expires = past;
        }
    }

    /// Validates a client-credentials request; returns the app's principal id or Entra's
    /// error `(status, error, AADSTS description, code)`.
    pub fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
        assertion: Option<&str>,
    ) -> Result<String, (u16, &'static str, String, i32)> {
        let Some(app) = self.apps.get(&client_id.to_ascii_lowercase()) else {
            return Err((
                400,
                "unauthorized_client",
                format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
                700016,
            ));
        };
        if let Some(secret) = secret {
            return if app.secret.as_deref() == Some(secret) {
                Ok(app.principal_id.clone())
            } else {
                Err((401, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.".into(), 7000215))
            };
        }
        let Some(assertion) = assertion else {
            return Err((400, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'client_secret' or 'client_assertion'.".into(), 900144));
        };
        let Some(claims) = jwt_claims(assertion) else {
            return Err((400, "invalid_client", "AADSTS50027: JWT token is invalid or malformed.".into(), 50027));
        };
        let field = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        if exp <= unix(SystemTime::now()) {
            return Err((
                400,
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range.".into(),
                700024,
            ));
        }
        // Projected service-account tokens carry `aud` as an array.
        let audience_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == FEDERATION_AUDIENCE,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(FEDERATION_AUDIENCE)),
            _ => false,
        };
        if !audience_ok {
            return Err((
                400,
                "invalid_client",
                "AADSTS700212: No matching federated identity record found for presented assertion audience.".into(),
                700212,
            ));
        }
        let (iss, sub) = (field("iss"), field("sub"));
        if app.federated.iter().any(|(i, s)| *i == iss && *s == sub) {
            Ok(app.principal_id.clone())
        } else {
            Err((
                400,
                "invalid_client",
                format!(
                    "AADSTS700213: No matching federated identity record found for presented assertion subject '{sub}'."
                ),
                700213,
            ))
        }
    }
}

/// A Kubernetes-style service-account token for workload identity (what the kubelet projects
/// into `AZURE_FEDERATED_TOKEN_FILE`).
pub fn service_account_token(subject: &str, lifetime: Duration) -> String {
    let now = SystemTime::now();
    jwt_shaped(&json!({
        "aud": [FEDERATION_AUDIENCE], "iss": SANDBOX_OIDC_ISSUER, "sub": subject,
        "iat": unix(now), "exp": unix(now + lifetime),
    }))
}

//! Who is calling: bearer JWTs, verified against a JWKS (production: RS256/ES256 with
//! issuer and audience) or a development secret (HS256), never both. The token's
//! subject is the client id; its role says what kind of client (a referral source, a
//! provider, a data team, an administrator); its scopes say what it may do.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use linkwork_domain::{ProviderId, Source};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Scopes linkwork checks.
pub mod scopes {
    /// Send referrals.
    pub const REFERRAL_SUBMIT: &str = "referral:submit";
    /// Send the ASC call log.
    pub const CALL_LOG_SUBMIT: &str = "call-log:submit";
    /// Update referrals routed to you (providers).
    pub const REFERRAL_RESPOND: &str = "referral:respond";
    /// Read referrals you sent or hold.
    pub const REFERRAL_READ: &str = "referral:read";
    /// Read pseudonymised outcomes and metrics.
    pub const OUTCOMES_READ: &str = "outcomes:read";
    /// Everything.
    pub const ADMIN: &str = "admin";
}

/// Issuer and audience of development tokens.
pub const DEV_ISSUER: &str = "linkwork-dev";
pub const DEV_AUDIENCE: &str = "linkwork";

/// What kind of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A referrer: a GP practice, hospital, the contact centre, ASC, a person, an organisation.
    Source,
    /// A community provider, by directory id.
    Provider,
    /// A data team.
    Data,
    Admin,
}

impl Role {
    pub fn default_scopes(self, client: &str) -> Vec<&'static str> {
        match self {
            Role::Source if client == "asc" => {
                vec![
                    scopes::REFERRAL_SUBMIT,
                    scopes::REFERRAL_READ,
                    scopes::CALL_LOG_SUBMIT,
                ]
            }
            Role::Source => vec![scopes::REFERRAL_SUBMIT, scopes::REFERRAL_READ],
            Role::Provider => vec![scopes::REFERRAL_RESPOND, scopes::REFERRAL_READ],
            Role::Data => vec![scopes::OUTCOMES_READ],
            Role::Admin => vec![scopes::ADMIN],
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "source" => Ok(Role::Source),
            "provider" => Ok(Role::Provider),
            "data" => Ok(Role::Data),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role (source, provider, data, admin)"
            )),
        }
    }
}

/// The claims linkwork reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: Option<u64>,
    pub role: Role,
    /// Space-separated, as in OAuth 2.0.
    #[serde(default)]
    pub scope: String,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    pub client: String,
    scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|granted| granted == scope || granted == scopes::ADMIN)
    }

    /// The referral source this caller is, if it is one.
    pub fn source(&self) -> Option<Source> {
        (self.role == Role::Source)
            .then(|| Source::parse(&self.client).ok())
            .flatten()
    }

    /// The provider this caller is, if it is one.
    pub fn provider(&self) -> Option<ProviderId> {
        (self.role == Role::Provider)
            .then(|| ProviderId::parse(&self.client).ok())
            .flatten()
    }
}

/// Why a token was not accepted. `Display` is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the bearer token is not a valid JWT")]
    Malformed,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token's signature does not verify")]
    BadSignature,
    #[error("the bearer token is for another issuer or audience")]
    WrongIssuerOrAudience,
    #[error("the bearer token is signed with a key this service does not know")]
    UnknownKey,
    #[error("the bearer token's client {client:?} is not a valid {role:?} client id")]
    BadClient { client: String, role: Role },
}

/// Configuration problems (at start-up, not per request).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("set LINKWORK_AUTH_JWKS (with LINKWORK_AUTH_ISSUER and LINKWORK_AUTH_AUDIENCE) or LINKWORK_AUTH_DEV_SECRET")]
    Unconfigured,
    #[error("LINKWORK_AUTH_JWKS and LINKWORK_AUTH_DEV_SECRET are both set; a deployment uses one or the other")]
    Both,
    #[error("{0} is required with LINKWORK_AUTH_JWKS")]
    Missing(&'static str),
    #[error("cannot read the JWKS file {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("the development secret must be at least 32 bytes")]
    WeakSecret,
}

/// How tokens are verified.
pub enum Verifier {
    Dev {
        secret: SecretString,
        validation: Validation,
    },
    Jwks {
        keys: HashMap<Option<String>, (DecodingKey, Algorithm)>,
        issuer: String,
        audience: String,
    },
}

impl fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verifier::Dev { .. } => formatter.write_str("Verifier::Dev(<secret>)"),
            Verifier::Jwks {
                keys,
                issuer,
                audience,
            } => formatter
                .debug_struct("Verifier::Jwks")
                .field("keys", &keys.len())
                .field("issuer", issuer)
                .field("audience", audience)
                .finish(),
        }
    }
}

impl Verifier {
    /// From `LINKWORK_AUTH_*`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        match (get("LINKWORK_AUTH_JWKS"), get("LINKWORK_AUTH_DEV_SECRET")) {
            (Some(_), Some(_)) => Err(ConfigError::Both),
            (None, None) => Err(ConfigError::Unconfigured),
            (None, Some(secret)) => Self::dev(SecretString::from(secret)),
            (Some(path), None) => {
                let issuer = get("LINKWORK_AUTH_ISSUER")
                    .ok_or(ConfigError::Missing("LINKWORK_AUTH_ISSUER"))?;
                let audience = get("LINKWORK_AUTH_AUDIENCE")
                    .ok_or(ConfigError::Missing("LINKWORK_AUTH_AUDIENCE"))?;
                let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Jwks {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
                Self::jwks(&text, issuer, audience)
                    .map_err(|reason| ConfigError::Jwks { path, reason })
            }
        }
    }

    /// Development tokens signed with a shared secret (HS256).
    pub fn dev(secret: SecretString) -> Result<Self, ConfigError> {
        if secret.expose_secret().len() < 32 {
            return Err(ConfigError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[DEV_ISSUER]);
        validation.set_audience(&[DEV_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(Verifier::Dev { secret, validation })
    }

    /// Production tokens: RS256 or ES256 keys from a JWKS document.
    pub fn jwks(document: &str, issuer: String, audience: String) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(document).map_err(|error| format!("not a JWKS: {error}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let key =
                DecodingKey::from_jwk(jwk).map_err(|error| format!("unusable key: {error}"))?;
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => return Err("only RSA (RS256) and EC P-256 (ES256) keys are accepted".into()),
            };
            keys.insert(jwk.common.key_id.clone(), (key, algorithm));
        }
        if keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(Verifier::Jwks {
            keys,
            issuer,
            audience,
        })
    }

    /// Verifies a bearer token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = match self {
            Verifier::Dev { secret, validation } => {
                let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
                jsonwebtoken::decode::<Claims>(token, &key, validation)
                    .map_err(classify)?
                    .claims
            }
            Verifier::Jwks {
                keys,
                issuer,
                audience,
            } => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
                let (key, algorithm) = keys
                    .get(&header.kid)
                    .or_else(|| (keys.len() == 1).then(|| keys.values().next()).flatten())
                    .ok_or(AuthError::UnknownKey)?;
                if header.alg != *algorithm {
                    return Err(AuthError::BadSignature);
                }
                let mut validation = Validation::new(*algorithm);
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                jsonwebtoken::decode::<Claims>(token, key, &validation)
                    .map_err(classify)?
                    .claims
            }
        };
        let valid_client = match claims.role {
            Role::Source => Source::parse(&claims.sub).is_ok(),
            Role::Provider => ProviderId::parse(&claims.sub).is_ok(),
            Role::Data | Role::Admin => !claims.sub.is_empty(),
        };
        if !valid_client {
            return Err(AuthError::BadClient {
                client: claims.sub,
                role: claims.role,
            });
        }
        Ok(Principal {
            role: claims.role,
            client: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
        })
    }
}

fn classify(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongIssuerOrAudience,
        _ => AuthError::Malformed,
    }
}

/// A development token (HS256) for `client` in `role`, valid for `ttl_seconds`.
pub fn dev_token(
    secret: &SecretString,
    role: Role,
    client: &str,
    scopes: &[&str],
    ttl_seconds: u64,
) -> Result<String, AuthError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        iss: DEV_ISSUER.into(),
        aud: DEV_AUDIENCE.into(),
        sub: client.into(),
        exp: now + ttl_seconds,
        iat: Some(now),
        role,
        scope: scopes.join(" "),
    };
    let key = EncodingKey::from_secret(secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|_| AuthError::Malformed)
}

/// The token of an `Authorization: Bearer` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests;

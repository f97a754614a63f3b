//! Who is calling: bearer JWTs, verified against a JWKS (production: RS256/ES256 with
//! issuer and audience) or a development secret (HS256), never both. The token's
//! subject is the client id; its role says what kind of client (a referral source, a
//! provider, a data team, an administrator); its scopes say what it may do.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
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
    /// A commissioner: reads the aggregate figures, never a person's record.
    Commissioner,
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
            // One identity for every person who refers themselves: it may send, never
            // read back (it would read everyone's self-referrals).
            Role::Source if client == "self" => vec![scopes::REFERRAL_SUBMIT],
            Role::Source => vec![scopes::REFERRAL_SUBMIT, scopes::REFERRAL_READ],
            Role::Provider => vec![scopes::REFERRAL_RESPOND, scopes::REFERRAL_READ],
            Role::Data | Role::Commissioner => vec![scopes::OUTCOMES_READ],
            Role::Admin => vec![scopes::ADMIN],
        }
    }
}

impl Role {
    /// Whether a client of this role may hold `scope` (an administrator holds all).
    pub fn may_hold(self, client: &str, scope: &str) -> bool {
        self == Role::Admin || self.default_scopes(client).contains(&scope)
    }

    /// The role in words, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "referral source",
            Role::Provider => "provider",
            Role::Data => "data team",
            Role::Commissioner => "commissioner",
            Role::Admin => "administrator",
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
            "commissioner" => Ok(Role::Commissioner),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role (source, provider, data, commissioner, admin)"
            )),
        }
    }
}

/// The id of a per-submission self-referral identity `self:<id>`: 8 to 64 lower-case
/// letters, digits and hyphens (a UUID, say).
pub fn submission_identity(client: &str) -> Option<&str> {
    client.strip_prefix("self:").filter(|id| {
        (8..=64).contains(&id.len())
            && id
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    })
}

/// The algorithms a production token may be signed with. HS256 is the development
/// verifier's alone; `none` and every other algorithm are refused.
pub const ALLOWED_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// The `aud` claim: one audience or several (RFC 7519 §4.1.3 allows either).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience::One(audience.to_owned())
    }
}

/// The claims linkwork reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub sub: String,
    pub exp: u64,
    /// Not valid before (checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
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
    /// Whether the token grants `scope`. A scope counts only for a role that may hold
    /// it (those of [`Role::default_scopes`]): a source's token that says `admin` or
    /// `referral:respond`, or a GP's that says `call-log:submit`, grants nothing more.
    /// `admin` (an administrator's) grants every scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        let holds = |wanted: &str| {
            self.may_hold(wanted) && self.scopes.iter().any(|granted| granted == wanted)
        };
        holds(scope) || holds(scopes::ADMIN)
    }

    /// Whether this caller's role may hold `scope` at all (whatever its token says).
    pub fn may_hold(&self, scope: &str) -> bool {
        self.role.may_hold(&self.client, scope)
    }

    /// The referral source this caller is, if it is one (a self-referral front end's
    /// per-submission identity `self:<id>` is the source `self`).
    pub fn source(&self) -> Option<Source> {
        if self.submitter().is_some() {
            return Some(Source::SelfReferral);
        }
        (self.role == Role::Source)
            .then(|| Source::parse(&self.client).ok())
            .flatten()
    }

    /// A self-referral front end's per-submission identity (`self:<id>`, minted for one
    /// person's submission): it reads back and consents for what it sent, and nothing
    /// else. `None` for every other caller, the shared `self` included.
    pub fn submitter(&self) -> Option<&str> {
        (self.role == Role::Source && submission_identity(&self.client).is_some())
            .then_some(self.client.as_str())
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
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token is signed with an algorithm this service does not accept")]
    AlgorithmNotAllowed,
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
        keys: JwksKeys,
        issuer: String,
        audience: String,
    },
}

/// The verification keys of a JWKS, by key id, each with the one algorithm it verifies.
type KeyMap = HashMap<Option<String>, (DecodingKey, Algorithm)>;

/// How often the JWKS file is looked at for a change (a rotation or a revoked key).
const JWKS_RECHECK: Duration = Duration::from_secs(30);

/// A token with a key id not in the set looks at the file at once, but no more often
/// than this: unknown key ids cannot make every request read the file.
const JWKS_UNKNOWN_KID_RECHECK: Duration = Duration::from_secs(1);

/// A JWKS, re-read from its file when the file changes: keys are rotated by adding the
/// new key (new `kid`) to the file before tokens are signed with it, and revoked by
/// removing them. A file that no longer parses keeps the keys read last, with a warning.
pub struct JwksKeys {
    path: Option<PathBuf>,
    recheck: Duration,
    unknown_kid_recheck: Duration,
    state: RwLock<KeyState>,
}

impl fmt::Debug for JwksKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("JwksKeys")
            .field("path", &self.path)
            .field("keys", &self.len())
            .field("recheck", &self.recheck)
            .finish()
    }
}

struct KeyState {
    keys: KeyMap,
    stamp: Option<FileStamp>,
    checked: Instant,
}

/// What says a file changed: its modification time and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

impl JwksKeys {
    fn fixed(keys: KeyMap) -> Self {
        JwksKeys {
            path: None,
            recheck: JWKS_RECHECK,
            unknown_kid_recheck: JWKS_UNKNOWN_KID_RECHECK,
            state: RwLock::new(KeyState {
                keys,
                stamp: None,
                checked: Instant::now(),
            }),
        }
    }

    fn from_file(
        path: &Path,
        recheck: Duration,
        unknown_kid_recheck: Duration,
    ) -> Result<Self, String> {
        let before = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
        Ok(JwksKeys {
            path: Some(path.to_owned()),
            recheck,
            unknown_kid_recheck,
            state: RwLock::new(KeyState {
                keys: parse_jwks(&text)?,
                stamp: before,
                checked: Instant::now(),
            }),
        })
    }

    fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .len()
    }

    /// Re-reads the file if it changed and was last looked at more than `after` ago.
    fn refresh(&self, after: Duration) {
        let Some(path) = &self.path else { return };
        let known = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if state.checked.elapsed() < after {
                return;
            }
            state.stamp
        };
        let now = stamp(path);
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.checked = Instant::now();
        if now == known {
            return;
        }
        match std::fs::read_to_string(path)
            .map_err(|error| error.to_string())
            .and_then(|text| parse_jwks(&text))
        {
            Ok(keys) => {
                tracing::info!(path = %path.display(), keys = keys.len(), "JWKS re-read");
                state.keys = keys;
                state.stamp = now;
            }
            Err(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "the JWKS file changed but cannot be used; keeping the keys read last"
                );
                state.stamp = now;
            }
        }
    }

    /// Verifies `token` with the key its header names.
    fn decode(&self, token: &str, issuer: &str, audience: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        self.refresh(self.recheck);
        let known = |state: &KeyState| match &header.kid {
            Some(_) => state.keys.contains_key(&header.kid),
            None => state.keys.len() == 1,
        };
        if !known(&self.state.read().unwrap_or_else(PoisonError::into_inner)) {
            self.refresh(self.unknown_kid_recheck);
        }
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let (key, algorithm) = match &header.kid {
            Some(_) => state.keys.get(&header.kid),
            // A token without a key id is accepted only when there is one key to try.
            None => (state.keys.len() == 1)
                .then(|| state.keys.values().next())
                .flatten(),
        }
        .ok_or(AuthError::UnknownKey)?;
        if header.alg != *algorithm {
            return Err(AuthError::BadSignature);
        }
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        Ok(jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(classify)?
            .claims)
    }
}

/// The signing keys of a JWKS document: RSA keys verify RS256, P-256 keys ES256; a key
/// whose `alg` says otherwise, or of another kind, is refused; encryption keys are left
/// out.
fn parse_jwks(document: &str) -> Result<KeyMap, String> {
    let set: JwkSet =
        serde_json::from_str(document).map_err(|error| format!("not a JWKS: {error}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => return Err("only RSA (RS256) and EC P-256 (ES256) keys are accepted".into()),
        };
        let stated = jwk.common.key_algorithm;
        let agrees = match stated {
            None => true,
            Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
            Some(_) => false,
        };
        if !agrees {
            return Err(format!(
                "key {:?} states an algorithm other than RS256 or ES256 for its kind",
                jwk.common.key_id.as_deref().unwrap_or("(no kid)")
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("unusable key: {error}"))?;
        if keys
            .insert(jwk.common.key_id.clone(), (key, algorithm))
            .is_some()
        {
            return Err(format!(
                "two keys have the key id {:?}: each key needs its own",
                jwk.common.key_id.as_deref().unwrap_or("(none)")
            ));
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no signing keys".into());
    }
    Ok(keys)
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
                .field("keys", keys)
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
                Self::jwks_file(Path::new(&path), issuer, audience)
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
        validation.validate_nbf = true;
        Ok(Verifier::Dev { secret, validation })
    }

    /// Production tokens: RS256 or ES256 keys from a JWKS document, fixed.
    pub fn jwks(document: &str, issuer: String, audience: String) -> Result<Self, String> {
        Ok(Verifier::Jwks {
            keys: JwksKeys::fixed(parse_jwks(document)?),
            issuer,
            audience,
        })
    }

    /// Production tokens: RS256 or ES256 keys from a JWKS file, re-read when it changes.
    pub fn jwks_file(path: &Path, issuer: String, audience: String) -> Result<Self, String> {
        Ok(Verifier::Jwks {
            keys: JwksKeys::from_file(path, JWKS_RECHECK, JWKS_UNKNOWN_KID_RECHECK)?,
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
            } => keys.decode(token, issuer, audience)?,
        };
        let valid_client = match claims.role {
            Role::Source => {
                Source::parse(&claims.sub).is_ok() || submission_identity(&claims.sub).is_some()
            }
            Role::Provider => ProviderId::parse(&claims.sub).is_ok(),
            Role::Data | Role::Commissioner | Role::Admin => !claims.sub.is_empty(),
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
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
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
        nbf: None,
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

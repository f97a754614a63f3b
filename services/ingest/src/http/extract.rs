//! Request extractors: the authenticated caller (with its rate limit) and FHIR JSON
//! bodies (content type, `_format`, size).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use linkwork_auth::Principal;
use linkwork_fhir::{Issue, IssueCode};
use serde_json::Value;

use super::error::FhirError;
use super::AppState;

/// The verified caller. Each client is rate limited as it is identified.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Verified already by the route's access layer, when it has one.
        let principal = match parts.extensions.get::<Caller>() {
            Some(Caller(principal)) => principal.clone(),
            None => {
                let header = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok());
                let token = linkwork_auth::bearer(header).map_err(FhirError::unauthorized)?;
                state
                    .verifier
                    .verify(token)
                    .map_err(FhirError::unauthorized)?
            }
        };
        if let Err(not_until) = state.limiter.check_key(&principal.client) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(FhirError::one(
                StatusCode::TOO_MANY_REQUESTS,
                Issue::error(
                    IssueCode::Throttled,
                    format!("too many requests from {}; slow down", principal.client),
                ),
            )
            .retry_after(wait.as_secs() + 1));
        }
        Ok(Caller(principal))
    }
}

impl Caller {
    /// The caller must hold `scope`.
    pub fn require(&self, scope: &str) -> Result<(), FhirError> {
        if self.0.has_scope(scope) {
            Ok(())
        } else if !self.0.may_hold(scope) {
            Err(FhirError::forbidden(format!(
                "client {} (a {}) may not hold the scope {scope}{}",
                self.0.client,
                self.0.role.name(),
                if self.0.client == "self" {
                    ": self-referral is one identity for many people, so it sends and never reads back"
                } else {
                    ""
                }
            )))
        } else {
            Err(FhirError::forbidden(format!(
                "client {} lacks the scope {scope} this needs",
                self.0.client
            )))
        }
    }
}

/// A FHIR JSON request body, read within the size limit.
#[derive(Debug)]
pub struct FhirJson(pub Value);

/// Content types accepted for FHIR JSON (parameters such as `charset` or
/// `fhirVersion` are allowed).
fn is_json(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "application/fhir+json" | "application/json"
    )
}

/// A content type without its parameters, lower-cased.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `_format` values that mean JSON.
pub fn format_is_json(format: &str) -> bool {
    matches!(
        format,
        "json" | "application/json" | "application/fhir+json"
    )
}

impl FromRequest<AppState> for FhirJson {
    type Rejection = FhirError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(request, state, is_json, "application/fhir+json")
            .await
            .map(FhirJson)
    }
}

/// A JSON Patch (RFC 6902) request body (`application/json-patch+json`), for FHIR's
/// PATCH interaction.
#[derive(Debug)]
pub struct JsonPatch(pub Value);

fn is_json_patch(content_type: &str) -> bool {
    media_type(content_type) == "application/json-patch+json"
}

impl FromRequest<AppState> for JsonPatch {
    type Rejection = FhirError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(request, state, is_json_patch, "application/json-patch+json")
            .await
            .map(JsonPatch)
    }
}

/// Search parameters sent as a form body (`application/x-www-form-urlencoded`), as FHIR's
/// `POST [type]/_search` takes them: what must not sit in a URL (an NHS number) goes
/// here.
#[derive(Debug)]
pub struct SearchForm(pub Vec<(String, String)>);

fn is_form(content_type: &str) -> bool {
    media_type(content_type) == "application/x-www-form-urlencoded"
}

impl FromRequest<AppState> for SearchForm {
    type Rejection = FhirError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state, is_form, "application/x-www-form-urlencoded").await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(SearchForm)
            .map_err(|_| {
                FhirError::one(
                    StatusCode::BAD_REQUEST,
                    Issue::error(
                        IssueCode::Structure,
                        "the body is not application/x-www-form-urlencoded search parameters",
                    ),
                )
            })
    }
}

/// Reads a JSON body of an accepted content type within the size limit.
async fn read_json(
    request: Request,
    state: &AppState,
    accepted: fn(&str) -> bool,
    expected: &str,
) -> Result<Value, FhirError> {
    let bytes = read_body(request, state, accepted, expected).await?;
    linkwork_fhir::parse::json(&bytes)
        .map_err(|issue| FhirError::one(StatusCode::BAD_REQUEST, issue))
}

/// Reads a body of an accepted content type within the size limit (JSON is the only
/// `_format`).
async fn read_body(
    request: Request,
    state: &AppState,
    accepted: fn(&str) -> bool,
    expected: &str,
) -> Result<axum::body::Bytes, FhirError> {
    {
        let format = request
            .uri()
            .query()
            .and_then(|query| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("_format="))
            })
            .map(str::to_owned);
        if let Some(format) = format {
            let format = format
                .replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%2b", "+")
                .replace("%2f", "/");
            if !format_is_json(&format) {
                return Err(FhirError::one(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("_format {format} is not supported; linkwork speaks FHIR JSON"),
                    ),
                ));
            }
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !accepted(content_type) {
            return Err(FhirError::one(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Issue::error(
                    IssueCode::NotSupported,
                    format!(
                        "content type {:?} is not supported; send {expected}",
                        if content_type.is_empty() {
                            "(none)"
                        } else {
                            content_type
                        }
                    ),
                ),
            ));
        }
        let limit = state.config.body_limit;
        let too_large = || {
            FhirError::one(
                StatusCode::PAYLOAD_TOO_LARGE,
                Issue::error(
                    IssueCode::TooCostly,
                    format!("the body is larger than the {limit}-byte limit"),
                ),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        if let Some(length) = declared.filter(|length| *length > limit) {
            // Read and discard a moderately oversized body before answering, so the
            // sender (still writing) gets the 413 instead of a broken connection.
            if length <= LINGER_LIMIT {
                discard(request.into_body()).await;
            }
            return Err(too_large());
        }
        read_limited(request.into_body(), limit)
            .await
            .map_err(|_| too_large())
    }
}

/// Largest declared body that is drained before a 413.
const LINGER_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a body to its end (or for at most five seconds), keeping nothing.
async fn discard(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Reads at most `limit` bytes of a body.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, axum::Error> {
    axum::body::to_bytes(body, limit).await
}

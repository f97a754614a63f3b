//! One HTTP error type: every refusal is a FHIR OperationOutcome with the right status.
//! Internal failures are logged once here and never described to the caller.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use linkwork_auth::AuthError;
use linkwork_fhir::{Issue, IssueCode, OperationOutcome};

use super::FHIR_JSON;

/// BaRS error-code system for OperationOutcome.issue.details.
pub use linkwork_fhir::systems::BARS_HTTP_ERROR_CODES as BARS_ERROR_CODES;

#[derive(Debug)]
pub struct FhirError {
    pub status: StatusCode,
    pub outcome: OperationOutcome,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl FhirError {
    pub fn new(status: StatusCode, issues: Vec<Issue>) -> Self {
        Self {
            status,
            outcome: OperationOutcome::new(issues),
            headers: Vec::new(),
        }
    }

    pub fn one(status: StatusCode, issue: Issue) -> Self {
        Self::new(status, vec![issue])
    }

    /// Structural problems (400) or rule failures (422), by the issues' codes.
    pub fn from_issues(issues: Vec<Issue>) -> Self {
        let structural = issues.iter().any(|issue| {
            matches!(issue.code, IssueCode::Structure | IssueCode::Invalid) && issue.is_error()
        });
        let status = if structural {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Self::new(status, issues)
    }

    pub fn unauthorized(error: AuthError) -> Self {
        let mut refusal = Self::one(
            StatusCode::UNAUTHORIZED,
            Issue::error(IssueCode::Login, error.to_string()),
        );
        refusal.headers.push((
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        ));
        refusal
    }

    pub fn forbidden(diagnostics: impl Into<String>) -> Self {
        Self::one(
            StatusCode::FORBIDDEN,
            Issue::error(IssueCode::Forbidden, diagnostics),
        )
    }

    pub fn unavailable(diagnostics: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self::one(
            StatusCode::SERVICE_UNAVAILABLE,
            Issue::error(IssueCode::Transient, diagnostics),
        )
        .retry_after(retry_after_seconds)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            self.headers.push((axum::http::header::RETRY_AFTER, value));
        }
        self
    }

    /// Something broke inside linkwork: logged here, a bare message outside.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "request failed inside linkwork");
        Self::one(
            StatusCode::INTERNAL_SERVER_ERROR,
            Issue::error(
                IssueCode::Exception,
                "linkwork could not complete the request; it has been logged",
            ),
        )
    }

    /// Adds the BaRS error code matching the status to every issue.
    pub fn for_bars(mut self) -> Self {
        let code = match self.status {
            StatusCode::BAD_REQUEST => "REC_BAD_REQUEST",
            StatusCode::UNAUTHORIZED => "REC_UNAUTHORIZED",
            StatusCode::FORBIDDEN => "REC_FORBIDDEN",
            StatusCode::NOT_FOUND => "REC_NOT_FOUND",
            StatusCode::METHOD_NOT_ALLOWED => "REC_METHOD_NOT_ALLOWED",
            StatusCode::CONFLICT => "REC_CONFLICT",
            StatusCode::UNPROCESSABLE_ENTITY => "REC_UNPROCESSABLE_ENTITY",
            StatusCode::SERVICE_UNAVAILABLE => "REC_SERVICE_UNAVAILABLE",
            StatusCode::INTERNAL_SERVER_ERROR => "REC_SERVER_ERROR",
            _ => "REC_BAD_REQUEST",
        };
        self.outcome.issue = std::mem::take(&mut self.outcome.issue)
            .into_iter()
            .map(|issue| issue.with_detail(BARS_ERROR_CODES, code))
            .collect();
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, FHIR_JSON)],
            axum::Json(self.outcome.to_json()),
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

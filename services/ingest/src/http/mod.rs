//! Ingest's HTTP API (FHIR R4 JSON under `/fhir`, the ASC call log, health).

pub mod bars;
pub mod error;
pub mod extract;
pub mod fhir;
pub mod provider;
pub mod read;

use std::num::NonZeroU32;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use linkwork_auth::{scopes, Verifier};
use linkwork_fhir::{IntakeRules, Issue, IssueCode, OperationOutcome};
use sqlx::PgPool;

use self::bars::BarsTargets;
use self::error::FhirError;
use self::extract::{Caller, FhirJson};
use crate::intake::Intake;

pub const FHIR_JSON: &str = "application/fhir+json";

/// HTTP limits and addresses.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest FHIR request body (413 beyond it).
    pub body_limit: usize,
    /// Largest call-log upload.
    pub call_log_limit: usize,
    /// A request taking longer is answered 503 (its work may still complete).
    pub request_timeout: Duration,
    /// Requests per minute per client, with a burst of a tenth of that.
    pub requests_per_minute: u32,
    /// FHIR requests handled at once; one more is answered 503 with `Retry-After` at
    /// once rather than queued, so an overload neither holds memory nor delays what
    /// was already taken.
    pub max_in_flight: usize,
    /// Base of absolute URLs in responses (`Location`), without a trailing slash.
    pub public_base_url: String,
    /// Where accepted referrals and provider updates go (`referral.events`).
    pub events_topic: String,
    /// Where an imported ASC call log goes (`asc.call-log`).
    pub call_log_topic: String,
    /// The time events are stamped with: the system clock, or the demo's.
    pub clock: linkwork_domain::Clock,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            call_log_limit: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            requests_per_minute: 6_000,
            max_in_flight: 1024,
            public_base_url: String::new(),
            events_topic: linkwork_bus::topics::REFERRAL_EVENTS.to_owned(),
            call_log_topic: linkwork_bus::topics::ASC_CALL_LOG.to_owned(),
            clock: linkwork_domain::Clock::system(),
        }
    }
}

pub struct Inner {
    pub intake: Intake,
    pub verifier: Verifier,
    pub limiter: DefaultKeyedRateLimiter<String>,
    /// One permit per FHIR request in flight.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub rules: IntakeRules,
    pub bars_targets: BarsTargets,
    pub config: HttpConfig,
    pub pool: PgPool,
    pub producer: linkwork_bus::Producer,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Inner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        intake: Intake,
        verifier: Verifier,
        rules: IntakeRules,
        bars_targets: BarsTargets,
        config: HttpConfig,
        pool: PgPool,
        producer: linkwork_bus::Producer,
    ) -> Self {
        let per_minute =
            NonZeroU32::new(config.requests_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst =
            NonZeroU32::new((config.requests_per_minute / 10).max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst));
        Self(Arc::new(Inner {
            intake,
            verifier,
            limiter,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            rules,
            bars_targets,
            config,
            pool,
            producer,
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let fhir = Router::new()
        .route("/fhir/metadata", get(fhir::metadata))
        .route(
            "/fhir/ServiceRequest",
            post(fhir::create_service_request).get(read::search_service_requests),
        )
        .route(
            "/fhir/ServiceRequest/_search",
            post(read::post_search_service_requests),
        )
        .route("/fhir/$process-message", post(fhir::process_message))
        .route("/fhir", post(fhir::post_bundle))
        .route("/fhir/ServiceRequest/{id}", get(read::service_request))
        .route(
            "/fhir/ServiceRequest/{id}/_history",
            get(read::service_request_history),
        )
        .route(
            "/fhir/Task/{id}",
            get(read::task)
                .put(provider::update_task)
                .patch(provider::patch_task),
        )
        .route(
            "/fhir/Observation",
            get(read::search_observations).post(
                |state: State<AppState>, caller: Caller, body: FhirJson| {
                    provider::record(state, caller, body, "Observation")
                },
            ),
        )
        .route(
            "/fhir/Communication",
            post(|state: State<AppState>, caller: Caller, body: FhirJson| {
                provider::record(state, caller, body, "Communication")
            }),
        )
        .route(
            "/fhir/Procedure",
            post(|state: State<AppState>, caller: Caller, body: FhirJson| {
                provider::record(state, caller, body, "Procedure")
            }),
        )
        .route(
            "/fhir/Consent",
            post(|state: State<AppState>, caller: Caller, body: FhirJson| {
                provider::record(state, caller, body, "Consent")
            }),
        )
        .route("/asc/call-log", post(call_log))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(fhir)
        // Bodies are read (and limited) by the extractors, with FHIR answers.
        .layer(DefaultBodyLimit::disable())
        // A request's span names its method and path, never its query string: search
        // parameters may identify a person (they are refused in URLs, but a caller may
        // still send them) and request logs are kept and shipped.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &Request| {
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    version = ?request.version(),
                )
            }),
        )
        .with_state(state)
}

/// Admits a FHIR request while fewer than `max_in_flight` are being handled; beyond
/// that answers 503 with `Retry-After` at once, before the body is read.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return FhirError::one(
            StatusCode::SERVICE_UNAVAILABLE,
            Issue::error(
                IssueCode::Transient,
                format!(
                    "ingest is handling {} requests, as many as it takes at once; retry shortly",
                    state.config.max_in_flight
                ),
            ),
        )
        .retry_after(1)
        .into_response();
    };
    next.run(request).await
}

/// Answers 503 with an OperationOutcome when a request runs past the time limit.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => FhirError::one(
            StatusCode::SERVICE_UNAVAILABLE,
            Issue::error(
                IssueCode::Timeout,
                format!(
                    "the request took longer than {:?}; it may still complete",
                    state.config.request_timeout
                ),
            ),
        )
        .retry_after(5)
        .into_response(),
    }
}

async fn not_found(request: Request) -> FhirError {
    FhirError::one(
        StatusCode::NOT_FOUND,
        Issue::error(
            IssueCode::NotSupported,
            format!(
                "{} {} is not served here",
                request.method(),
                request.uri().path()
            ),
        ),
    )
}

/// Ready when the database answers.
async fn ready(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready: database");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// `POST /asc/call-log`: an ASC call-log export (text/csv).
async fn call_log(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, FhirError> {
    caller.require(scopes::CALL_LOG_SUBMIT)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("text/csv") {
        return Err(FhirError::one(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Issue::error(IssueCode::NotSupported, "send the call log as text/csv"),
        ));
    }
    let limit = state.config.call_log_limit;
    let bytes = extract::read_limited(request.into_body(), limit)
        .await
        .map_err(|_| {
            FhirError::one(
                StatusCode::PAYLOAD_TOO_LARGE,
                Issue::error(
                    IssueCode::TooCostly,
                    format!("the call log is larger than the {limit}-byte limit"),
                ),
            )
        })?;
    let report = crate::call_log::import(
        &state.pool,
        &state.producer,
        &state.config.call_log_topic,
        &bytes,
    )
    .await
    .map_err(|error| match error {
        crate::call_log::CallLogError::Header { .. } | crate::call_log::CallLogError::NotCsv(_) => {
            FhirError::one(
                StatusCode::BAD_REQUEST,
                Issue::error(IssueCode::Structure, error.to_string()),
            )
        }
        crate::call_log::CallLogError::Unavailable(_) => FhirError::unavailable(
            "the event log is unavailable; import the file again (it adds nothing twice)",
            5,
        ),
        crate::call_log::CallLogError::Database(_) => FhirError::unavailable(
            "linkwork's database is unavailable; import the file again",
            5,
        ),
    })?;
    let mut issues = vec![linkwork_fhir::Issue {
        severity: linkwork_fhir::Severity::Information,
        ..Issue::error(
            IssueCode::Invalid,
            format!(
                "{} rows read, {} refused; {} events published, {} already on the log",
                report.rows,
                report.rows_refused,
                report.events_published,
                report.events_already_known
            ),
        )
    }];
    issues.extend(report.errors.iter().map(|error| {
        Issue::warning(IssueCode::Value, error.message.clone()).at(format!("line {}", error.line))
    }));
    let status = if report.rows > 0 && report.rows_refused == report.rows {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(fhir::fhir_response(
        status,
        OperationOutcome::new(issues).to_json(),
    ))
}

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
use axum::routing::{get, patch, post, put, MethodRouter};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use linkwork_auth::{scopes, Role, Verifier};
use linkwork_fhir::{IntakeRules, Issue, IssueCode, OperationOutcome};
use sqlx::PgPool;

use self::bars::BarsTargets;
use self::error::FhirError;
use self::extract::{Caller, FhirJson};
use crate::audit::Interaction;
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
    /// Where each access to identifiable data is recorded (`audit.events`).
    pub audit_topic: String,
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
            audit_topic: linkwork_bus::topics::AUDIT_EVENTS.to_owned(),
            clock: linkwork_domain::Clock::system(),
        }
    }
}

pub struct Inner {
    pub intake: Intake,
    pub verifier: Arc<Verifier>,
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
        verifier: Arc<Verifier>,
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

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, the CapabilityStatement.
    Open,
    /// A client whose token grants this scope (for its role: [`linkwork_auth::Principal::has_scope`]).
    Scope(&'static str),
    /// As `Scope`, and the client must be of this role: sending a referral is a
    /// source's act and changing one a provider's, which an administrator's token does
    /// not stand in for.
    ScopeAs(&'static str, Role),
    /// Any one of these (scope, role) pairs.
    AnyOf(&'static [(&'static str, Role)]),
}

/// One route of the API, who may call it, and the interaction its AuditEvent records
/// when it touches identifiable data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub audit: Option<Interaction>,
}

const fn spec(method: &'static str, path: &'static str, access: Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        audit: None,
    }
}

impl RouteSpec {
    /// The route reads or changes identifiable data: each call writes an AuditEvent.
    const fn audited(mut self, interaction: Interaction) -> Self {
        self.audit = Some(interaction);
        self
    }
}

/// Every FHIR and call-log route with its access and handler: the router is built
/// from this table and the access test walks it, so neither can miss a route the
/// other has.
fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{AnyOf, Open, Scope, ScopeAs};
    const SUBMIT: Access = ScopeAs(scopes::REFERRAL_SUBMIT, Role::Source);
    const RESPOND: Access = ScopeAs(scopes::REFERRAL_RESPOND, Role::Provider);
    let record = |resource: &'static str| {
        post(
            move |state: State<AppState>, caller: Caller, body: FhirJson| {
                provider::record(state, caller, body, resource)
            },
        )
    };
    vec![
        (spec("GET", "/fhir/metadata", Open), get(fhir::metadata)),
        (
            spec("POST", "/fhir/ServiceRequest", SUBMIT).audited(Interaction::Create),
            post(fhir::create_service_request),
        ),
        (
            spec("GET", "/fhir/ServiceRequest", Scope(scopes::REFERRAL_READ))
                .audited(Interaction::Search),
            get(read::search_service_requests),
        ),
        (
            spec(
                "POST",
                "/fhir/ServiceRequest/_search",
                Scope(scopes::REFERRAL_READ),
            )
            .audited(Interaction::Search),
            post(read::post_search_service_requests),
        ),
        (
            spec("POST", "/fhir/$process-message", SUBMIT).audited(Interaction::Operation),
            post(fhir::process_message),
        ),
        (
            spec("POST", "/fhir", SUBMIT).audited(Interaction::Operation),
            post(fhir::post_bundle),
        ),
        (
            spec(
                "GET",
                "/fhir/ServiceRequest/{id}",
                Scope(scopes::REFERRAL_READ),
            )
            .audited(Interaction::Read),
            get(read::service_request),
        ),
        (
            spec(
                "GET",
                "/fhir/ServiceRequest/{id}/_history",
                Scope(scopes::REFERRAL_READ),
            )
            .audited(Interaction::History),
            get(read::service_request_history),
        ),
        (
            spec("GET", "/fhir/Task/{id}", Scope(scopes::REFERRAL_READ)).audited(Interaction::Read),
            get(read::task),
        ),
        (
            spec("PUT", "/fhir/Task/{id}", RESPOND).audited(Interaction::Update),
            put(provider::update_task),
        ),
        (
            spec("PATCH", "/fhir/Task/{id}", RESPOND).audited(Interaction::Patch),
            patch(provider::patch_task),
        ),
        (
            spec("GET", "/fhir/Observation", Scope(scopes::REFERRAL_READ))
                .audited(Interaction::Search),
            get(read::search_observations),
        ),
        (
            spec("POST", "/fhir/Observation", RESPOND).audited(Interaction::Create),
            record("Observation"),
        ),
        (
            spec("POST", "/fhir/Communication", RESPOND).audited(Interaction::Create),
            record("Communication"),
        ),
        (
            spec("POST", "/fhir/Procedure", RESPOND).audited(Interaction::Create),
            record("Procedure"),
        ),
        (
            spec(
                "POST",
                "/fhir/Consent",
                AnyOf(&[
                    (scopes::REFERRAL_RESPOND, Role::Provider),
                    (scopes::REFERRAL_SUBMIT, Role::Source),
                ]),
            )
            .audited(Interaction::Create),
            post(provider::record_consent),
        ),
        (
            spec(
                "GET",
                "/fhir/AuditEvent",
                ScopeAs(scopes::ADMIN, Role::Admin),
            )
            .audited(Interaction::Search),
            get(crate::audit::search),
        ),
        (
            spec(
                "POST",
                "/fhir/Patient/$erase",
                ScopeAs(scopes::ADMIN, Role::Admin),
            )
            .audited(Interaction::Erase),
            post(crate::erasure::http_erase),
        ),
        (
            spec("POST", "/asc/call-log", Scope(scopes::CALL_LOG_SUBMIT))
                .audited(Interaction::Create),
            post(call_log),
        ),
    ]
}

/// Every route of the API beside health, with who may call it.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

pub fn router(state: AppState) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (spec, handler) in table() {
        let handler = match spec.access {
            Access::Open => handler,
            Access::Scope(_) | Access::ScopeAs(..) | Access::AnyOf(_) => handler.route_layer(
                axum::middleware::from_fn_with_state((state.clone(), spec.access), authorize),
            ),
        };
        match by_path.iter_mut().find(|(path, _)| *path == spec.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((spec.path, handler)),
        }
    }
    let fhir = by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found);
    let fhir = limited(fhir, &state)
        // Outermost, so refused attempts (401, 403), overload (503) and requests cut
        // off by the time limit are audited too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ));
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

/// `routes` under ingest's limits: the time limit, then admission (`max_in_flight`).
pub fn limited<S: Clone + Send + Sync + 'static>(routes: Router<S>, state: &AppState) -> Router<S> {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
}

/// The route's access, enforced before anything else of the request is read: a
/// missing or bad token is 401, a token without the route's scope 403, whatever the
/// body. The verified caller is handed to the handler (which checks what the route
/// alone can: whose referral it is).
async fn authorize(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let principal =
        match linkwork_auth::bearer(header).and_then(|token| state.verifier.verify(token)) {
            Ok(principal) => principal,
            Err(error) => return FhirError::unauthorized(error).into_response(),
        };
    let caller = Caller(principal);
    let (scope, role) = match access {
        Access::Open => return next.run(request).await,
        Access::Scope(scope) => (scope, None),
        Access::ScopeAs(scope, role) => (scope, Some(role)),
        Access::AnyOf(pairs) => {
            // The pair of the caller's role, else the first (whose refusal is shown).
            let (scope, role) = pairs
                .iter()
                .find(|(_, role)| *role == caller.0.role)
                .or_else(|| pairs.first())
                .copied()
                .unwrap_or((scopes::ADMIN, Role::Admin));
            (scope, Some(role))
        }
    };
    // The caller goes back on the response too, for the audit layer outside this one.
    let answer = |mut response: Response, caller: Caller| {
        response.extensions_mut().insert(caller);
        response
    };
    if let Err(refused) = caller.require(scope) {
        return answer(refused.into_response(), caller);
    }
    if let Some(role) = role.filter(|role| *role != caller.0.role) {
        let refused = FhirError::forbidden(format!(
            "client {} (a {}) may not do this: only a {} may",
            caller.0.client,
            caller.0.role.name(),
            role.name()
        ));
        return answer(refused.into_response(), caller);
    }
    request.extensions_mut().insert(caller.clone());
    answer(next.run(request).await, caller)
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

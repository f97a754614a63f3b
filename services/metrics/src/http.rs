//! The metrics service over HTTP: the figures as JSON (`/api/metrics/...`), as FHIR R4
//! MeasureReports (`/fhir/MeasureReport?measure=`), as Prometheus gauges (`/metrics`)
//! and as a dashboard (`/dashboard`).
//!
//! Everything here is an aggregate with no identifier in it, and still only for those
//! who read aggregates: a bearer token granting `outcomes:read` (a data team, a
//! commissioner, an administrator). In a browser the dashboard asks for the token once,
//! in a sign-in form, and keeps it in an HttpOnly cookie for the dashboard alone. The
//! process's admin listener (`/metrics` there) stays open and carries no business
//! figure.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Form, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use chrono_tz::Europe::London;
use linkwork_auth::{scopes, AuthError, Principal, Verifier};
use linkwork_domain::Clock;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::call_log::{self, CallLogReport};
use crate::disclosure::Disclosure;
use crate::referrals::{self, Period, ProviderResponse, ReferralReport};
use crate::{dashboard, measure};

/// What the metrics routes need.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// The call log's baseline date (`LINKWORK_CALL_LOG_BASELINE`); the earliest case
    /// when unset.
    pub baseline: Option<NaiveDate>,
    /// The canonical base of linkwork's CodeSystems (`Measure/...` lives under it).
    pub canonical_base: String,
    /// What "today" is, for periods that do not say where they end.
    pub clock: Clock,
    /// Mark the dashboard's session cookie `Secure` (the service is reached over
    /// HTTPS).
    pub secure_cookies: bool,
    /// Small-number suppression (`LINKWORK_SMALL_NUMBER_THRESHOLD`, default 5).
    pub disclosure: Disclosure,
    /// The shortest period the figures are given for, in days
    /// (`LINKWORK_METRICS_MINIMUM_PERIOD_DAYS`, default 28): a day's figures, or the
    /// difference of two periods a day apart, would be about a handful of people.
    pub minimum_period_days: i64,
}

/// The default shortest period: four weeks.
pub const DEFAULT_MINIMUM_PERIOD_DAYS: i64 = 28;

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            baseline: None,
            canonical_base: linkwork_fhir::systems::DEFAULT_CANONICAL_BASE.into(),
            clock: Clock::system(),
            secure_cookies: false,
            disclosure: Disclosure::default(),
            minimum_period_days: DEFAULT_MINIMUM_PERIOD_DAYS,
        }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    pool: PgPool,
    config: MetricsConfig,
    verifier: Arc<Verifier>,
}

/// The cookie the dashboard's sign-in sets: the token itself, sent back only to
/// `/dashboard` and never readable by a script.
pub const SESSION_COOKIE: &str = "linkwork_dashboard";

/// The metrics routes, to serve alone (`linkwork serve metrics`) or beside ingest's.
pub fn router(pool: PgPool, config: MetricsConfig, verifier: Arc<Verifier>) -> Router {
    let state = AppState {
        pool,
        config,
        verifier,
    };
    let figures = figure_table()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bearer_reader,
        ));
    Router::new()
        .merge(figures)
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/session", post(sign_in))
        .with_state(state)
}

/// The figures' routes (all GET), each behind a token granting `outcomes:read`: the
/// router is built from this table and the access test walks it.
fn figure_table() -> Vec<(&'static str, axum::routing::MethodRouter<AppState>)> {
    vec![
        ("/api/metrics", get(all_json)),
        ("/api/metrics/call-log", get(call_log_json)),
        ("/api/metrics/referrals", get(referrals_json)),
        ("/fhir/MeasureReport", get(measure_reports)),
        ("/metrics", get(prometheus)),
    ]
}

/// The paths of the figures' routes (besides `/dashboard`, which signs people in).
pub fn figure_routes() -> Vec<&'static str> {
    figure_table().into_iter().map(|(path, _)| path).collect()
}

/// A caller who may read the figures, from the token given.
fn reader(verifier: &Verifier, token: &str) -> Result<Principal, MetricsError> {
    let principal = verifier.verify(token).map_err(MetricsError::unauthorized)?;
    if principal.has_scope(scopes::OUTCOMES_READ) {
        Ok(principal)
    } else {
        Err(MetricsError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "client {} (a {}) may not read the figures: they are for data teams, commissioners and administrators (scope outcomes:read)",
                principal.client,
                principal.role.name()
            ),
        })
    }
}

/// The figures' routes take a bearer token granting `outcomes:read`.
async fn bearer_reader(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match linkwork_auth::bearer(header)
        .map_err(MetricsError::unauthorized)
        .and_then(|token| reader(&state.verifier, token))
    {
        Ok(_) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// The token of the dashboard's session cookie, if the request carries one.
fn session_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// Where a sign-in may send the browser back to: a dashboard URL of this service.
fn dashboard_target(next: Option<&String>) -> String {
    next.filter(|next| {
        next.starts_with("/dashboard")
            && !next.starts_with("/dashboard/session")
            && !next.contains(['\\', '\r', '\n'])
    })
    .cloned()
    .unwrap_or_else(|| "/dashboard".to_owned())
}

/// `POST /dashboard/session` (form: `token`, `next`): checks the token like the figures'
/// routes do and keeps it in the session cookie.
async fn sign_in(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let target = dashboard_target(form.get("next"));
    let token = form.get("token").map(|token| token.trim()).unwrap_or("");
    match reader(&state.verifier, token) {
        Ok(_) => {
            let mut cookie =
                format!("{SESSION_COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict");
            if state.config.secure_cookies {
                cookie.push_str("; Secure");
            }
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, target), (header::SET_COOKIE, cookie)],
            )
                .into_response()
        }
        Err(refused) => sign_in_page(refused.status, &refused.message, &target),
    }
}

/// The dashboard's sign-in form, answered when it has no valid token.
fn sign_in_page(status: StatusCode, problem: &str, target: &str) -> Response {
    let escape = |text: &str| html_escape::encode_double_quoted_attribute(text).into_owned();
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>linkwork dashboard: sign in</title></head>
<body style="font-family: sans-serif; max-width: 36rem; margin: 3rem auto">
<h1>Sign in</h1>
<p>The dashboard is for data teams, commissioners and administrators. Paste your access token (a JWT granting <code>outcomes:read</code>).</p>
<p role="alert">{problem}</p>
<form method="post" action="/dashboard/session">
<input type="hidden" name="next" value="{target}">
<label>Access token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Sign in</button>
</form></body></html>"#,
        problem = escape(problem),
        target = escape(target),
    );
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Everything the dashboard shows, as one JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub generated_at: String,
    pub call_log: CallLogReport,
    pub referrals: ReferralReport,
}

/// Today in UK local time.
/// The day it is in England by `clock`.
pub fn today(clock: &Clock) -> NaiveDate {
    clock.now().with_timezone(&London).date_naive()
}

/// A problem with the request or the database, answered as JSON or FHIR.
#[derive(Debug)]
pub struct MetricsError {
    status: StatusCode,
    message: String,
}

impl MetricsError {
    fn unauthorized(error: AuthError) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: error.to_string(),
        }
    }

    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl From<sqlx::Error> for MetricsError {
    fn from(error: sqlx::Error) -> Self {
        let code = error
            .as_database_error()
            .and_then(|database| database.code())
            .map(|code| code.into_owned());
        let message = if matches!(code.as_deref(), Some("42P01" | "3F000")) {
            "the read models are not built yet: the projector (`linkwork serve projector`) has not run against this database".to_owned()
        } else {
            tracing::warn!(%error, "metrics query failed");
            "linkwork's database is unavailable; try again".to_owned()
        };
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        }
    }
}

impl IntoResponse for MetricsError {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::UNAUTHORIZED => "login",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "transient",
        };
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": code, "diagnostics": self.message }],
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/fhir+json")],
            outcome.to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

fn date(
    params: &HashMap<String, String>,
    names: &[&str],
) -> Result<Option<NaiveDate>, MetricsError> {
    for name in names {
        if let Some(text) = params.get(*name) {
            // FHIR dates may carry a time; the day is what counts here.
            let day = text.get(..10).unwrap_or(text);
            return NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map(Some)
                .map_err(|_| {
                    MetricsError::bad_request(format!("{name} {text:?} is not a date (YYYY-MM-DD)"))
                });
        }
    }
    Ok(None)
}

/// The period asked for: `period-start`/`from`/`baseline` to `period-end`/`to`/`end`,
/// defaulting to the baseline (or the earliest case) and today.
async fn period(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<Period, MetricsError> {
    let end =
        date(params, &["period-end", "to", "end"])?.unwrap_or_else(|| today(&state.config.clock));
    let start = match date(params, &["period-start", "from", "baseline"])? {
        Some(start) => start,
        // A period not asked for is at least the shortest one given.
        None => {
            let shortest =
                end - chrono::Days::new(state.config.minimum_period_days.max(1) as u64 - 1);
            match state.config.baseline {
                Some(baseline) => baseline,
                None => earliest(&state.pool).await?.unwrap_or(end),
            }
            .min(shortest)
        }
    };
    if start > end {
        return Err(MetricsError::bad_request(format!(
            "the period starts ({start}) after it ends ({end})"
        )));
    }
    let days = (end - start).num_days() + 1;
    if days < state.config.minimum_period_days {
        return Err(MetricsError::bad_request(format!(
            "the period {start} to {end} is {days} day(s); figures are given for periods of at least {} days, so that no figure is about a handful of people",
            state.config.minimum_period_days
        )));
    }
    Ok(Period { start, end })
}

/// The first day anything happened: the earliest case or referral.
async fn earliest(pool: &PgPool) -> Result<Option<NaiveDate>, sqlx::Error> {
    let cases: Option<NaiveDate> = sqlx::query_scalar(
        "SELECT min((opened_at AT TIME ZONE 'Europe/London')::date) FROM asc_cases",
    )
    .fetch_one(pool)
    .await?;
    let mut connection = pool.acquire().await?;
    let referrals = linkwork_projection::aggregates::first_received_on(&mut connection).await?;
    Ok(match (cases, referrals) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The call log and the referral metrics for one period, suppressed as `disclosure`
/// says.
pub async fn snapshot(
    pool: &PgPool,
    period: Period,
    disclosure: Disclosure,
) -> Result<Snapshot, sqlx::Error> {
    Ok(Snapshot {
        generated_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        call_log: call_log::report(pool, period.start, period.end, disclosure).await?,
        referrals: referrals::report(pool, period, disclosure).await?,
    })
}

async fn all_json(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Snapshot>, MetricsError> {
    let period = period(&state, &params).await?;
    Ok(Json(
        snapshot(&state.pool, period, state.config.disclosure).await?,
    ))
}

async fn call_log_json(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<CallLogReport>, MetricsError> {
    let period = period(&state, &params).await?;
    Ok(Json(
        call_log::report(
            &state.pool,
            period.start,
            period.end,
            state.config.disclosure,
        )
        .await?,
    ))
}

async fn referrals_json(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ReferralReport>, MetricsError> {
    let period = period(&state, &params).await?;
    Ok(Json(
        referrals::report(&state.pool, period, state.config.disclosure).await?,
    ))
}

/// Every MeasureReport for a snapshot, by measure name.
pub fn measure_reports_of(base: &str, snapshot: &Snapshot) -> Vec<(&'static str, Value)> {
    let mut reports = vec![(
        "call-log-reduction",
        measure::call_log(base, &snapshot.call_log),
    )];
    reports.extend(measure::referral_reports(base, &snapshot.referrals));
    reports
}

/// `GET /fhir/MeasureReport?measure=<group>&period-start=&period-end=`: a searchset
/// Bundle of the matching MeasureReports (all groups without `measure`).
async fn measure_reports(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, MetricsError> {
    let wanted = params.get("measure").map(|measure| {
        // A canonical URL names the same measure as its last segment.
        measure.rsplit('/').next().unwrap_or(measure).to_owned()
    });
    if let Some(measure) = &wanted {
        if !measure::MEASURES.contains(&measure.as_str()) {
            return Err(MetricsError::bad_request(format!(
                "measure {measure:?} is not one linkwork reports; it reports {}",
                measure::MEASURES.join(", ")
            )));
        }
    }
    let period = period(&state, &params).await?;
    let snapshot = snapshot(&state.pool, period, state.config.disclosure).await?;
    let entries: Vec<Value> = measure_reports_of(&state.config.canonical_base, &snapshot)
        .into_iter()
        .filter(|(name, _)| wanted.as_deref().is_none_or(|wanted| wanted == *name))
        .map(|(_, resource)| {
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, resource["id"].as_str().unwrap_or("").as_bytes())),
                "resource": resource,
                "search": { "mode": "match" },
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        bundle.to_string(),
    )
        .into_response())
}

type Labels = Vec<(String, String)>;

/// A gauge, left out when its figure is suppressed (a scraper sees no sample, never a
/// made-up zero).
fn gauge(registry: &mut Registry, name: &str, help: &str, value: Option<f64>) {
    if let Some(value) = value {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
}

fn family(registry: &mut Registry, name: &str, help: &str, values: Vec<(Labels, f64)>) {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    registry.register(name, help, family);
}

/// The snapshot as Prometheus gauges (OpenMetrics text).
pub fn prometheus_text(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("linkwork");
    let call_log = &snapshot.call_log;
    gauge(
        &mut registry,
        "asc_open_cases",
        "Open ASC call-log cases at the end of the period",
        call_log.open_at_end.as_f64(),
    );
    gauge(
        &mut registry,
        "asc_open_cases_baseline",
        "Open ASC call-log cases at the baseline",
        call_log.open_at_baseline.as_f64(),
    );
    gauge(
        &mut registry,
        "asc_call_log_reduction_percent",
        "Fall in open ASC cases since the baseline, percent",
        call_log.reduction_percent,
    );
    gauge(
        &mut registry,
        "asc_diverted_cases",
        "ASC cases diverted to community providers in the period",
        call_log.diverted.as_f64(),
    );
    gauge(
        &mut registry,
        "asc_diverted_returned_within_90_days",
        "Diverted people back with ASC within 90 days",
        call_log.returns.returned_within_90_days.as_f64(),
    );
    let referrals = &snapshot.referrals;
    family(
        &mut registry,
        "referrals",
        "Referrals received in the period, by kind of source",
        referrals
            .by_source_total
            .iter()
            .filter_map(|(source, count)| {
                count
                    .as_f64()
                    .map(|count| (vec![("source".to_owned(), source.clone())], count))
            })
            .collect(),
    );
    let per_provider = |figure: fn(&ProviderResponse) -> Option<f64>| -> Vec<(Labels, f64)> {
        referrals
            .providers
            .iter()
            .filter_map(|provider| {
                figure(provider).map(|value| {
                    (
                        vec![("provider".to_owned(), provider.provider_id.clone())],
                        value,
                    )
                })
            })
            .collect()
    };
    family(
        &mut registry,
        "provider_acceptance_percent",
        "Offers a provider accepted, percent of those answered or expired",
        per_provider(|provider| provider.acceptance_percent),
    );
    family(
        &mut registry,
        "provider_median_days_to_accept",
        "Median days from offer to acceptance",
        per_provider(|provider| provider.median_days_to_accept),
    );
    gauge(
        &mut registry,
        "referrals_completed",
        "Referrals completed in the period",
        referrals.completions.as_f64(),
    );
    family(
        &mut registry,
        "outcome_improved_percent",
        "Completers whose score improved, percent, by family",
        [
            ("loneliness", &referrals.outcomes.loneliness),
            ("wellbeing", &referrals.outcomes.wellbeing),
        ]
        .into_iter()
        .filter_map(|(name, family)| {
            family
                .improved_percent
                .map(|percent| (vec![("family".to_owned(), name.to_owned())], percent))
        })
        .collect(),
    );
    gauge(
        &mut registry,
        "activities_attended",
        "Activities attended in the period",
        referrals.activities.attended.as_f64(),
    );
    gauge(
        &mut registry,
        "consent_percent",
        "Accepted referrals with consent to share outcomes for evaluation, percent",
        referrals.consent.consent_percent,
    );
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

async fn prometheus(State(state): State<AppState>) -> Result<Response, MetricsError> {
    let period = period(&state, &HashMap::new()).await?;
    let snapshot = snapshot(&state.pool, period, state.config.disclosure).await?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        prometheus_text(&snapshot),
    )
        .into_response())
}

async fn dashboard_page(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, MetricsError> {
    // A bearer token (from a proxy that signs people in) or the sign-in's cookie.
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = linkwork_auth::bearer(header)
        .ok()
        .or_else(|| session_token(request.headers()));
    let target = request
        .uri()
        .path_and_query()
        .map(|path| path.as_str().to_owned());
    let target = dashboard_target(target.as_ref());
    let Some(token) = token else {
        return Ok(sign_in_page(
            StatusCode::UNAUTHORIZED,
            "Not signed in.",
            &target,
        ));
    };
    if let Err(refused) = reader(&state.verifier, token) {
        return Ok(sign_in_page(refused.status, &refused.message, &target));
    }
    let period = period(&state, &params).await?;
    let snapshot = snapshot(&state.pool, period, state.config.disclosure).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
        ],
        dashboard::render(&snapshot),
    )
        .into_response())
}

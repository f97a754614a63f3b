//! The FHIR endpoints of ingest.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use linkwork_auth::scopes;
use linkwork_domain::{ReferralId, Source};
use linkwork_fhir::message::{self, MessageReason};
use linkwork_fhir::{
    batch, parse, referral, Issue, IssueCode, OperationOutcome, ValidatedReferral,
};
use serde_json::{json, Value};

use super::bars;
use super::error::FhirError;
use super::extract::{Caller, FhirJson};
use super::{AppState, FHIR_JSON};
use crate::audit::audited;
use crate::intake::{IntakeError, Taken, Withdrawal, Withdrawn};

pub async fn metadata(State(state): State<AppState>) -> Response {
    fhir_response(
        StatusCode::OK,
        crate::capability::statement(&state.config.public_base_url, env!("CARGO_PKG_VERSION")),
    )
}

/// `POST /fhir/ServiceRequest`: one referral.
pub async fn create_service_request(
    State(state): State<AppState>,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> Result<Response, FhirError> {
    let source = submitting_source(&caller)?;
    // Not a ServiceRequest at all is a malformed request (400), whatever the issue code.
    parse::expect_resource_type(&body, "ServiceRequest", "ServiceRequest")
        .map_err(|issue| FhirError::one(StatusCode::BAD_REQUEST, issue))?;
    let mut referral =
        referral::read_service_request(&source, &body, &state.rules, state.config.clock.now())
            .map_err(FhirError::from_issues)?;
    referral.submitted_by = submitter(&caller);
    // The text the event carries, shared (not copied) with the answer.
    let stored = referral.service_request.clone();
    let referral_id = referral.referral_id;
    let taken = state.intake.submit(referral).await.map_err(intake_error)?;
    let body = stored.with(&[("meta", &meta(taken.received_at()))]);
    let mut response = fhir_text_response(
        match taken {
            Taken::Created { .. } => StatusCode::CREATED,
            Taken::Duplicate { .. } => StatusCode::OK,
        },
        body.text().to_owned(),
    );
    let location = format!(
        "{}/fhir/ServiceRequest/{referral_id}/_history/1",
        state.config.public_base_url
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_static("W/\"1\""));
    Ok(audited(response, [referral_id]))
}

/// `POST /fhir/$process-message`: a BaRS message. BaRS asks for `X-Request-Id` and
/// `X-Correlation-Id` to be echoed on every answer, refusals included.
pub async fn process_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Result<Caller, FhirError>,
    body: Result<FhirJson, FhirError>,
) -> Response {
    let echo = bars::echoed(&headers);
    let mut response = match handle_message(&state, &headers, caller, body).await {
        Ok(response) => response,
        Err(error) => error.for_bars().into_response(),
    };
    for (name, value) in echo {
        response.headers_mut().insert(name, value);
    }
    response
}

async fn handle_message(
    state: &AppState,
    headers: &HeaderMap,
    caller: Result<Caller, FhirError>,
    body: Result<FhirJson, FhirError>,
) -> Result<Response, FhirError> {
    let caller = caller?;
    let source = submitting_source(&caller)?;
    let header_issues = bars::check(headers, &state.bars_targets);
    if !header_issues.is_empty() {
        return Err(FhirError::new(StatusCode::BAD_REQUEST, header_issues));
    }
    let FhirJson(bundle) = body?;
    let message = message::read(&bundle).map_err(FhirError::from_issues)?;
    let validate = || {
        referral::validate(
            &source,
            &message.service_request,
            &message.resolver,
            &state.rules,
            state.config.clock.now(),
        )
        .map_err(FhirError::from_issues)
        .map(|mut referral| {
            referral.submitted_by = submitter(&caller);
            referral
        })
    };
    match message.reason {
        MessageReason::New => {
            let referral = validate()?;
            let referral_id = referral.referral_id;
            match state.intake.submit(referral).await.map_err(intake_error)? {
                Taken::Created { .. } => Ok(audited(
                    fhir_response(StatusCode::OK, bundle.clone()),
                    [referral_id],
                )),
                Taken::Duplicate { .. } => Err(already_processed(referral_id)),
            }
        }
        MessageReason::Update => {
            let service_request = message.service_request.resource;
            let withdrawal = match referral::text_of(service_request, "status") {
                Some("revoked") => Withdrawal::Revoked,
                Some("entered-in-error") => Withdrawal::EnteredInError,
                _ => {
                    // An update that changes nothing is a repeat; anything else is a change
                    // linkwork does not take in place.
                    let referral = validate()?;
                    return Err(unchanged_or_unsupported(
                        state,
                        referral,
                        &message.service_request.path,
                    )
                    .await);
                }
            };
            let (_, referral_id) = referral::identity(&source, &message.service_request)
                .map_err(|issue| FhirError::one(StatusCode::UNPROCESSABLE_ENTITY, issue))?;
            let reason = referral::text_of(service_request, "statusReason")
                .map(str::to_owned)
                .or_else(|| {
                    service_request
                        .get("statusReason")
                        .and_then(|reason| reason.get("text"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            match state
                .intake
                .withdraw(&source, referral_id, withdrawal, reason)
                .await
                .map_err(intake_error)?
            {
                Withdrawn::Now => Ok(audited(
                    fhir_response(StatusCode::OK, bundle.clone()),
                    [referral_id],
                )),
                Withdrawn::Already => Err(already_processed(referral_id)),
            }
        }
    }
}

async fn unchanged_or_unsupported(
    state: &AppState,
    referral: ValidatedReferral,
    path: &str,
) -> FhirError {
    let referral_id = referral.referral_id;
    match state.intake.content_hash_of(referral_id).await {
        Ok(Some(hash)) if hash == referral.content_hash => already_processed(referral_id),
        Ok(Some(_)) => FhirError::one(
            StatusCode::UNPROCESSABLE_ENTITY,
            Issue::error(
                IssueCode::NotSupported,
                "an update may withdraw a referral (ServiceRequest status revoked or entered-in-error); other changes \
                 are not taken in place: withdraw it and send a new referral",
            )
            .at(format!("{path}.status")),
        ),
        Ok(None) => not_found(referral_id),
        Err(error) => intake_error(IntakeError::Database(error)),
    }
}

/// `POST /fhir`: a batch or transaction Bundle of referrals.
pub async fn post_bundle(
    State(state): State<AppState>,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> Result<Response, FhirError> {
    let source = submitting_source(&caller)?;
    let request = batch::read(&body).map_err(FhirError::from_issues)?;
    let now = state.config.clock.now();
    // Validate every entry first: a transaction is refused whole if any entry is.
    let mut checked: Vec<Result<Option<ValidatedReferral>, Vec<Issue>>> =
        Vec::with_capacity(request.entries.len());
    for entry in &request.entries {
        checked.push(match entry {
            batch::Entry::Referral {
                request: located,
                resolver,
                ..
            } => parse::check_service_request(located.resource, &located.path)
                .and_then(|_| referral::validate(&source, located, resolver, &state.rules, now))
                .map(|mut referral| {
                    referral.submitted_by = submitter(&caller);
                    Some(referral)
                }),
            batch::Entry::Context { .. } => Ok(None),
            batch::Entry::Refused { issues, .. } => Err(issues.clone()),
        });
    }
    match request.kind {
        batch::BundleKind::Transaction => transaction(&state, checked).await,
        batch::BundleKind::Batch => batch_of(&state, checked).await,
    }
}

async fn transaction(
    state: &AppState,
    checked: Vec<Result<Option<ValidatedReferral>, Vec<Issue>>>,
) -> Result<Response, FhirError> {
    let refused: Vec<Issue> = checked
        .iter()
        .filter_map(|entry| entry.as_ref().err())
        .flatten()
        .cloned()
        .collect();
    if !refused.is_empty() {
        return Err(FhirError::from_issues(refused));
    }
    let positions: Vec<usize> = checked
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| matches!(entry, Ok(Some(_))).then_some(index))
        .collect();
    let referrals: Vec<ValidatedReferral> = checked
        .iter()
        .filter_map(|entry| entry.clone().ok().flatten())
        .collect();
    let stored: Vec<Value> = referrals
        .iter()
        .map(|referral| referral.service_request.to_value())
        .collect();
    let ids: Vec<ReferralId> = referrals.iter().map(|r| r.referral_id).collect();
    let taken = state
        .intake
        .submit_transaction(referrals)
        .await
        .map_err(|(index, error)| {
            let entry = positions.get(index).copied().unwrap_or(index);
            let mut refusal = intake_error(error);
            for issue in &mut refusal.outcome.issue {
                issue.expression.push(format!("Bundle.entry[{entry}]"));
            }
            refusal
        })?;
    let mut results: Vec<Value> = checked
        .iter()
        .map(|_| {
            json!({"response": {"status": "200 OK", "outcome": OperationOutcome::information(
                "kept with the referral that points at it, not stored on its own").to_json()}})
        })
        .collect();
    for ((position, taken), resource) in positions.into_iter().zip(taken).zip(stored) {
        results[position] = created_entry(state, resource, taken);
    }
    Ok(audited(
        fhir_response(
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": results}),
        ),
        ids,
    ))
}

async fn batch_of(
    state: &AppState,
    checked: Vec<Result<Option<ValidatedReferral>, Vec<Issue>>>,
) -> Result<Response, FhirError> {
    let mut results: Vec<Option<Value>> = vec![None; checked.len()];
    let mut positions = Vec::new();
    let mut referrals = Vec::new();
    for (index, entry) in checked.into_iter().enumerate() {
        match entry {
            Ok(Some(referral)) => {
                positions.push(index);
                referrals.push(referral);
            }
            Ok(None) => {}
            Err(issues) => {
                let refusal = FhirError::from_issues(issues);
                results[index] = Some(json!({"response": {
                    "status": status_line(refusal.status),
                    "outcome": refusal.outcome.to_json()
                }}));
            }
        }
    }
    let stored: Vec<Value> = referrals
        .iter()
        .map(|referral| referral.service_request.to_value())
        .collect();
    let ids: Vec<ReferralId> = referrals.iter().map(|r| r.referral_id).collect();
    let outcomes = state
        .intake
        .submit_many(referrals)
        .await
        .map_err(intake_error)?;
    let mut taken_ids = Vec::new();
    for (((position, outcome), resource), id) in
        positions.into_iter().zip(outcomes).zip(stored).zip(ids)
    {
        results[position] = Some(match outcome {
            Ok(taken) => {
                taken_ids.push(id);
                created_entry(state, resource, taken)
            }
            Err(error) => {
                let refusal = intake_error(error);
                json!({"response": {"status": status_line(refusal.status), "outcome": refusal.outcome.to_json()}})
            }
        });
    }
    let entries: Vec<Value> = results.into_iter().map(Option::unwrap_or_default).collect();
    Ok(audited(
        fhir_response(
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}),
        ),
        taken_ids,
    ))
}

fn created_entry(state: &AppState, resource: Value, taken: Taken) -> Value {
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let status = match taken {
        Taken::Created { .. } => "201 Created",
        Taken::Duplicate { .. } => "200 OK",
    };
    let received_at = taken.received_at();
    json!({
        "resource": stored_resource(resource, received_at),
        "response": {
            "status": status,
            "location": format!("{}/fhir/ServiceRequest/{id}/_history/1", state.config.public_base_url),
            "etag": "W/\"1\"",
            "lastModified": received_at.to_rfc3339_opts(SecondsFormat::Millis, true)
        }
    })
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// The ServiceRequest as stored: version 1, last updated when received.
fn stored_resource(mut resource: Value, received_at: DateTime<Utc>) -> Value {
    if let Some(fields) = resource.as_object_mut() {
        fields.insert("meta".into(), meta(received_at));
    }
    resource
}

/// The `meta` of a stored referral: its one version, and when it was received.
fn meta(received_at: DateTime<Utc>) -> Value {
    json!({"versionId": "1", "lastUpdated": received_at.to_rfc3339_opts(SecondsFormat::Millis, true)})
}

/// Only referral sources holding `referral:submit` may send referrals.
/// A per-submission identity that sends a referral is recorded with it: it alone (of
/// the self-referral identities) reads it back.
fn submitter(caller: &Caller) -> Option<String> {
    caller.0.submitter().map(str::to_owned)
}

fn submitting_source(caller: &Caller) -> Result<Source, FhirError> {
    caller.require(scopes::REFERRAL_SUBMIT)?;
    caller.0.source().ok_or_else(|| {
        FhirError::forbidden(format!(
            "client {} is not a referral source",
            caller.0.client
        ))
    })
}

fn already_processed(referral_id: linkwork_domain::ReferralId) -> FhirError {
    FhirError::one(
        StatusCode::CONFLICT,
        Issue::error(
            IssueCode::Duplicate,
            format!("the message has been identified as having already been processed (referral {referral_id})"),
        ),
    )
}

fn not_found(referral_id: linkwork_domain::ReferralId) -> FhirError {
    FhirError::one(
        StatusCode::NOT_FOUND,
        Issue::error(
            IssueCode::NotFound,
            format!("referral {referral_id} is not known to this service"),
        ),
    )
}

pub fn intake_error(error: IntakeError) -> FhirError {
    match error {
        IntakeError::Conflict(referral_id) => FhirError::one(
            StatusCode::CONFLICT,
            Issue::error(
                IssueCode::Conflict,
                format!(
                    "referral {referral_id} was already received with different content; to change it, withdraw \
                     it and send a new referral with a new identifier"
                ),
            ),
        ),
        IntakeError::Unknown(referral_id) => not_found(referral_id),
        IntakeError::Unavailable(error) => {
            tracing::warn!(%error, "event log unavailable");
            FhirError::unavailable("the event log is unavailable; nothing was taken, please retry", 5)
        }
        IntakeError::Unconfirmed { error, retry_after } => {
            tracing::warn!(%error, "event log did not confirm a referral");
            FhirError::unavailable(
                "the event log did not confirm the referral, so it may or may not have been taken; \
                 send the same referral again to learn which (it is never taken twice)",
                retry_after.as_secs_f64().ceil() as u64,
            )
        }
        IntakeError::Unsettled {
            referral_id,
            retry_after,
        } => FhirError::unavailable(
            format!(
                "an earlier submission of referral {referral_id} is not settled yet; nothing was \
                 taken now, please retry"
            ),
            retry_after.as_secs_f64().ceil() as u64,
        ),
        IntakeError::Database(error) => {
            tracing::warn!(%error, "database unavailable");
            FhirError::unavailable("linkwork's database is unavailable; nothing was taken, please retry", 5)
        }
        IntakeError::Internal(reason) => FhirError::internal(&IntakeError::Internal(reason)),
    }
}

/// A FHIR JSON answer whose body is JSON text already.
fn fhir_text_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

pub fn fhir_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        axum::Json(body),
    )
        .into_response()
}

//! Providers' writes: `PUT /fhir/Task/{id}` (status changes), `POST /fhir/Observation`
//! (outcome measures), `POST /fhir/Communication` (contacts), `POST /fhir/Procedure`
//! (activities attended), `POST /fhir/Consent` (consent to share for evaluation, which
//! the referrer may also record).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use linkwork_auth::{scopes, Role};
use linkwork_domain::ProviderId;
use linkwork_fhir::{Issue, IssueCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::FhirError;
use super::extract::{Caller, FhirJson, JsonPatch};
use super::fhir::fhir_response;
use super::AppState;
use crate::audit::audited;
use crate::provider::{self, CommandError, Submission};
use linkwork_projection::read as read_model;
use linkwork_projection::render as resources;

const EVENT_SOURCE: &str = "linkwork/ingest";
/// How long a Task update waits for the projection to reach a fresh routing attempt.
const ROUTING_WAIT: Duration = Duration::from_secs(3);

/// The provider a caller is; only providers update referrals.
pub fn calling_provider(caller: &Caller) -> Result<ProviderId, FhirError> {
    caller.require(scopes::REFERRAL_RESPOND)?;
    if caller.0.role != Role::Provider {
        return Err(FhirError::forbidden(format!(
            "client {} is not a provider; only the provider a referral is routed to may update it",
            caller.0.client
        )));
    }
    ProviderId::parse(&caller.0.client).map_err(|error| FhirError::forbidden(error.to_string()))
}

pub fn command_error(error: CommandError) -> FhirError {
    let status = match &error {
        CommandError::NotFound(_) => StatusCode::NOT_FOUND,
        CommandError::Forbidden(_) => StatusCode::FORBIDDEN,
        CommandError::Conflict(_) => StatusCode::CONFLICT,
        CommandError::NotYetProjected(_) => {
            return FhirError::unavailable(error.to_string(), 2);
        }
        CommandError::Unavailable(_) => {
            return FhirError::unavailable(
                "the event log is unavailable; nothing was recorded, send the update again",
                5,
            )
        }
        CommandError::Database(error) => return FhirError::internal(error),
    };
    FhirError::one(status, Issue::error(error.issue_code(), error.to_string()))
}

/// Applies a submission, waiting briefly when it names a routing attempt the projection
/// has not reached yet (the provider can be quicker than the projector).
async fn apply(state: &AppState, submission: &Submission) -> Result<provider::Applied, FhirError> {
    let deadline = tokio::time::Instant::now() + ROUTING_WAIT;
    loop {
        match provider::submit(
            &state.pool,
            &state.producer,
            &state.config.events_topic,
            EVENT_SOURCE,
            submission,
        )
        .await
        {
            Err(CommandError::NotYetProjected(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map_err(command_error),
        }
    }
}

fn read(
    body: &Value,
    provider: &ProviderId,
    task_id: Option<Uuid>,
    state: &AppState,
) -> Result<Submission, FhirError> {
    provider::parse(
        body,
        provider,
        task_id,
        &state.rules.canonical_base,
        state.config.clock.now(),
    )
    .map_err(FhirError::from_issues)
}

fn task_id(id: &str) -> Result<Uuid, FhirError> {
    Uuid::parse_str(id).map_err(|_| {
        FhirError::one(
            StatusCode::NOT_FOUND,
            Issue::error(
                IssueCode::NotFound,
                format!("Task/{id} is not a linkwork Task"),
            ),
        )
    })
}

/// `PATCH /fhir/Task/{id}` with a JSON Patch (RFC 6902): applied to the Task as linkwork
/// holds it, then judged exactly as the PUT of the result. A patch that leaves the
/// Task's reason in place while changing its status drops the old reason, which was
/// about the old status.
pub async fn patch_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    JsonPatch(operations): JsonPatch,
) -> Result<Response, FhirError> {
    let provider = calling_provider(&caller)?;
    let task_id = task_id(&id)?;
    let operations: json_patch::Patch = serde_json::from_value(operations).map_err(|error| {
        FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(
                IssueCode::Structure,
                format!("the body is not a JSON Patch (RFC 6902) document: {error}"),
            ),
        )
    })?;
    let current = {
        let mut connection = state.pool.acquire().await.map_err(super::read::database)?;
        read_model::task(&mut connection, linkwork_projection::LIVE_SCHEMA, task_id)
            .await
            .map_err(super::read::database)?
    };
    let Some(current) = current else {
        // Not projected yet, or not a Task linkwork issued: as a PUT would be told.
        return Err(FhirError::unavailable(
            format!("Task/{id} is not known yet; if it was just issued, try again shortly"),
            2,
        ));
    };
    if current.provider_id != provider.as_str() {
        return Err(FhirError::forbidden(format!(
            "provider {provider} does not hold Task/{id}"
        )));
    }
    let before = resources::task(&state.rules.canonical_base, &current);
    let mut patched = before.clone();
    json_patch::patch(&mut patched, &operations).map_err(|error| {
        FhirError::one(
            StatusCode::UNPROCESSABLE_ENTITY,
            Issue::error(
                IssueCode::Invalid,
                format!("the patch could not be applied to Task/{id}: {error}"),
            ),
        )
    })?;
    if patched.get("resourceType") != Some(&json!("Task")) || patched.get("id") != before.get("id")
    {
        return Err(FhirError::one(
            StatusCode::UNPROCESSABLE_ENTITY,
            Issue::error(
                IssueCode::BusinessRule,
                "a patch may not change a Task's resourceType or id",
            ),
        ));
    }
    if patched.get("status") != before.get("status")
        && patched.get("statusReason") == before.get("statusReason")
    {
        if let Some(fields) = patched.as_object_mut() {
            fields.remove("statusReason");
        }
    }
    put_task(&state, &provider, task_id, patched).await
}

/// `PUT /fhir/Task/{id}`: the provider's status for its Task.
pub async fn update_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> Result<Response, FhirError> {
    let provider = calling_provider(&caller)?;
    let task_id = task_id(&id)?;
    if linkwork_fhir::parse::resource_type(&body) != Some("Task") {
        return Err(FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(IssueCode::Invalid, "PUT /fhir/Task/{id} takes a Task").at("resourceType"),
        ));
    }
    put_task(&state, &provider, task_id, body).await
}

/// Applies a Task update for `task_id` as the provider sent it (or as its patch made it).
async fn put_task(
    state: &AppState,
    provider: &ProviderId,
    task_id: Uuid,
    body: Value,
) -> Result<Response, FhirError> {
    let submission = read(&body, provider, Some(task_id), state)?;
    let applied = apply(state, &submission).await?;
    let mut task = body;
    task["id"] = json!(task_id.to_string());
    task["meta"] = json!({
        "versionId": applied.state.version.to_string(),
        "lastUpdated": state.config.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let mut response = fhir_response(StatusCode::OK, task);
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", applied.state.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(audited(response, [submission.referral]))
}

/// `POST /fhir/<Observation|Communication|Procedure|Consent>`: a fact the provider
/// records on a referral it holds.
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    FhirJson(body): FhirJson,
    expected: &'static str,
) -> Result<Response, FhirError> {
    let provider = calling_provider(&caller)?;
    if linkwork_fhir::parse::resource_type(&body) != Some(expected) {
        return Err(FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(
                IssueCode::Invalid,
                format!("POST /fhir/{expected} takes a {expected}"),
            )
            .at("resourceType"),
        ));
    }
    let submission = read(&body, &provider, None, &state)?;
    answer(&state, submission, body, expected).await
}

/// `POST /fhir/Consent`: consent to share outcomes for evaluation, given or withdrawn
/// by the provider holding the referral or by its referrer, as the person told them.
/// The shared self-referral identity cannot: it is every self-referrer at once.
pub async fn record_consent(
    state: State<AppState>,
    caller: Caller,
    body: FhirJson,
) -> Result<Response, FhirError> {
    if caller.0.role == Role::Provider {
        return record(state, caller, body, "Consent").await;
    }
    let State(state) = state;
    let FhirJson(body) = body;
    let submitter = caller.0.submitter();
    let source = caller
        .0
        .source()
        .filter(|source| *source != linkwork_domain::Source::SelfReferral || submitter.is_some())
        .ok_or_else(|| {
            FhirError::forbidden(format!(
                "client {} may not record consent: the provider holding the referral or its referrer may{}",
                caller.0.client,
                if caller.0.client == "self" {
                    " (self-referral is one identity for many people)"
                } else {
                    ""
                }
            ))
        })?;
    let submission = provider::parse_consent(
        &body,
        linkwork_domain::Actor::Source(source),
        state.config.clock.now(),
    )
    .map_err(FhirError::from_issues)?;
    if let Some(submitter) = submitter {
        // The person, through the self-referral front end: for the referral they sent.
        let view = {
            let mut connection = state.pool.acquire().await.map_err(super::read::database)?;
            read_model::referral(
                &mut connection,
                linkwork_projection::LIVE_SCHEMA,
                *submission.referral.as_uuid(),
            )
            .await
            .map_err(super::read::database)?
        };
        match view {
            None => {
                return Err(FhirError::unavailable(
                    format!(
                        "ServiceRequest/{} is not known yet; try again shortly",
                        submission.referral
                    ),
                    2,
                ))
            }
            Some(view) if view.submitted_by.as_deref() != Some(submitter) => {
                return Err(FhirError::forbidden(format!(
                    "client {submitter} may record consent only for the referral it sent"
                )))
            }
            Some(_) => {}
        }
    }
    answer(&state, submission, body, "Consent").await
}

/// Applies a submission and answers with the resource as recorded.
async fn answer(
    state: &AppState,
    submission: Submission,
    body: Value,
    expected: &'static str,
) -> Result<Response, FhirError> {
    let applied = apply(state, &submission).await?;
    let id = match &submission.command {
        linkwork_domain::referral::Command::RecordOutcome(outcome) => outcome.observation_id,
        _ => applied
            .events
            .first()
            .map(|(id, _)| *id.as_uuid())
            .unwrap_or_else(|| {
                Uuid::new_v5(submission.referral.as_uuid(), body.to_string().as_bytes())
            }),
    };
    let mut resource = body;
    resource["id"] = json!(id.to_string());
    resource["meta"] = json!({
        "versionId": "1",
        "lastUpdated": state.config.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let status = if applied.events.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = fhir_response(status, resource);
    let location = format!("{}/fhir/{expected}/{id}", state.config.public_base_url);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(audited(response, [submission.referral]))
}

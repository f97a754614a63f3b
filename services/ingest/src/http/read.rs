//! The FHIR read API over the projector's read models: `GET /fhir/ServiceRequest/{id}`
//! and its `_history`, `GET /fhir/Task/{id}`, `GET /fhir/Observation?based-on=...`,
//! and ServiceRequest search by NHS number, provider and status, with paging.
//!
//! Identifiable data goes only to the referrer (the source that sent the referral; ASC
//! for its own), the provider holding (or having closed) the referral, and
//! administrators. Reads are as fresh as the projection (usually well under a second
//! behind the log).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use linkwork_auth::{scopes, Role};
use linkwork_domain::ReferralId;
use linkwork_fhir::{Issue, IssueCode};
use linkwork_projection::read::{self, ReferralSearch, ReferralView};
use linkwork_projection::render::{self as resources, Person};
use linkwork_projection::{ReadError, LIVE_SCHEMA};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::FhirError;
use super::extract::{Caller, SearchForm};
use super::fhir::fhir_response;
use super::AppState;
use crate::audit::{audited, searched};

const DEFAULT_COUNT: i64 = 20;
const MAX_COUNT: i64 = 100;

fn not_found(what: &str) -> FhirError {
    FhirError::one(
        StatusCode::NOT_FOUND,
        Issue::error(IssueCode::NotFound, format!("{what} is not known")),
    )
}

pub(super) fn database(error: impl Into<ReadError>) -> FhirError {
    match error.into() {
        not_built @ ReadError::NotBuilt => {
            tracing::warn!("read models missing; is the projector running?");
            FhirError::unavailable(not_built.to_string(), 30)
        }
        error => {
            tracing::warn!(%error, "read model query failed");
            FhirError::unavailable("linkwork's database is unavailable; try again", 5)
        }
    }
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, FhirError> {
    Uuid::parse_str(id).map_err(|_| not_found(&format!("{what}/{id}")))
}

/// Is this caller the referral's referrer: its source, or for a self-referral the
/// per-submission identity that sent it?
fn is_referrer(
    principal: &linkwork_auth::Principal,
    source: &str,
    submitted_by: Option<&str>,
) -> bool {
    match principal.submitter() {
        Some(submitter) => submitted_by == Some(submitter),
        None => principal.client == source,
    }
}

/// May this caller see this referral's identifiable data?
fn may_read(caller: &Caller, referral: &ReferralView) -> bool {
    let principal = &caller.0;
    if principal.has_scope(scopes::ADMIN) {
        return true;
    }
    if !principal.has_scope(scopes::REFERRAL_READ) {
        return false;
    }
    match principal.role {
        Role::Source => is_referrer(
            principal,
            &referral.source,
            referral.submitted_by.as_deref(),
        ),
        Role::Provider => referral.provider_id.as_deref() == Some(principal.client.as_str()),
        Role::Data | Role::Commissioner | Role::Admin => false,
    }
}

fn forbidden(caller: &Caller, what: &str) -> FhirError {
    FhirError::forbidden(format!(
        "client {} may not read {what}: only its referrer, the provider holding it and administrators may",
        caller.0.client
    ))
}

async fn readable_referral(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<ReferralView, FhirError> {
    caller.require(scopes::REFERRAL_READ)?;
    let uuid = parse_id(id, "ServiceRequest")?;
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let view = read::referral(&mut connection, LIVE_SCHEMA, uuid)
        .await
        .map_err(database)?
        .ok_or_else(|| not_found(&format!("ServiceRequest/{id}")))?;
    if !may_read(caller, &view) {
        return Err(forbidden(caller, &format!("ServiceRequest/{id}")));
    }
    Ok(view)
}

fn base(state: &AppState) -> &str {
    &state.rules.canonical_base
}

fn current(state: &AppState, view: &ReferralView) -> Value {
    resources::service_request(
        base(state),
        &view.service_request,
        ReferralId::from_uuid(view.referral_id),
        &view.status,
        view.version,
        view.last_updated,
    )
}

/// `GET /fhir/ServiceRequest/{id}`.
pub async fn service_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, FhirError> {
    let view = readable_referral(&state, &caller, &id).await?;
    Ok(fhir_response(StatusCode::OK, current(&state, &view)))
}

/// `GET /fhir/ServiceRequest/{id}/_history`: one version per event, newest first.
pub async fn service_request_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, FhirError> {
    let view = readable_referral(&state, &caller, &id).await?;
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let versions = read::history(&mut connection, LIVE_SCHEMA, view.referral_id)
        .await
        .map_err(database)?;
    let public = &state.config.public_base_url;
    let entries: Vec<Value> = versions
        .iter()
        .map(|version| {
            let resource = resources::service_request(
                base(&state),
                &view.service_request,
                ReferralId::from_uuid(view.referral_id),
                &version.status,
                version.version,
                version.occurred_at,
            );
            json!({
                "fullUrl": format!("{public}/fhir/ServiceRequest/{}", view.referral_id),
                "resource": resource,
                "request": {
                    "method": if version.version == 1 { "POST" } else { "PUT" },
                    "url": format!("ServiceRequest/{}", view.referral_id),
                },
                "response": {
                    "status": if version.version == 1 { "201 Created" } else { "200 OK" },
                    "lastModified": resources::instant(version.occurred_at),
                },
            })
        })
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        json!({
            "resourceType": "Bundle",
            "type": "history",
            "total": entries.len(),
            "timestamp": resources::instant(Utc::now()),
            "entry": entries,
        }),
    ))
}

/// `GET /fhir/Task/{id}`: the provider it is for, the referrer, administrators.
pub async fn task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response, FhirError> {
    caller.require(scopes::REFERRAL_READ)?;
    let uuid = parse_id(&id, "Task")?;
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let task = read::task(&mut connection, LIVE_SCHEMA, uuid)
        .await
        .map_err(database)?
        .ok_or_else(|| not_found(&format!("Task/{id}")))?;
    let referral = read::referral(&mut connection, LIVE_SCHEMA, task.referral_id)
        .await
        .map_err(database)?
        .ok_or_else(|| not_found(&format!("Task/{id}")))?;
    let principal = &caller.0;
    let allowed = principal.has_scope(scopes::ADMIN)
        || match principal.role {
            Role::Provider => principal.client == task.provider_id,
            Role::Source => is_referrer(
                principal,
                &referral.source,
                referral.submitted_by.as_deref(),
            ),
            _ => false,
        };
    if !allowed {
        return Err(forbidden(&caller, &format!("Task/{id}")));
    }
    Ok(audited(
        fhir_response(StatusCode::OK, resources::task(base(&state), &task)),
        [ReferralId::from_uuid(task.referral_id)],
    ))
}

fn searchset(
    state: &AppState,
    path: &str,
    total: i64,
    entries: Vec<Value>,
    params: &[(String, String)],
    offset: i64,
    count: i64,
) -> Value {
    let public = &state.config.public_base_url;
    // A search by an identifier was posted: its links name the POST endpoint, and the
    // client posts its form again to them; the identifier never goes into a link.
    let identifying = params
        .iter()
        .any(|(name, _)| IDENTIFYING_PARAMETERS.contains(&name.as_str()));
    let query = |offset: i64| {
        let mut parts: Vec<String> = params
            .iter()
            .filter(|(name, _)| {
                name != "_offset"
                    && name != "_count"
                    && !IDENTIFYING_PARAMETERS.contains(&name.as_str())
            })
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect();
        parts.push(format!("_count={count}"));
        parts.push(format!("_offset={offset}"));
        let endpoint = if identifying {
            format!("{path}/_search")
        } else {
            path.to_owned()
        };
        format!("{public}/fhir/{endpoint}?{}", parts.join("&"))
    };
    let mut links = vec![json!({ "relation": "self", "url": query(offset) })];
    if offset + count < total {
        links.push(json!({ "relation": "next", "url": query(offset + count) }));
    }
    if offset > 0 {
        links.push(json!({ "relation": "previous", "url": query((offset - count).max(0)) }));
    }
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "timestamp": resources::instant(Utc::now()),
        "link": links,
        "entry": entries,
    })
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn paging(params: &HashMap<String, String>) -> Result<(i64, i64), FhirError> {
    let number = |name: &str, default: i64| -> Result<i64, FhirError> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                FhirError::one(
                    StatusCode::BAD_REQUEST,
                    Issue::error(
                        IssueCode::Value,
                        format!("{name}={text:?} is not a non-negative integer"),
                    )
                    .at(name),
                )
            }),
        }
    };
    let count = number("_count", DEFAULT_COUNT)?.clamp(1, MAX_COUNT);
    Ok((number("_offset", 0)?, count))
}

const SEARCH_PARAMETERS: [&str; 6] = [
    "subject:identifier",
    "performer",
    "status",
    "_count",
    "_offset",
    "_format",
];

/// Search parameters that identify a person: accepted only in a form body
/// (`POST /fhir/ServiceRequest/_search`), never in a URL, which proxies and access logs
/// keep.
const IDENTIFYING_PARAMETERS: [&str; 1] = ["subject:identifier"];

fn identifier_in_url(pairs: &[(String, String)]) -> Result<(), FhirError> {
    match pairs
        .iter()
        .find(|(name, _)| IDENTIFYING_PARAMETERS.contains(&name.as_str()))
    {
        None => Ok(()),
        Some((name, _)) => Err(FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(
                IssueCode::Security,
                format!(
                    "{name} identifies a person and is never accepted in a URL (proxies and \
                     access logs keep URLs): POST the search to /fhir/ServiceRequest/_search \
                     with the parameters as an application/x-www-form-urlencoded body"
                ),
            )
            .at(name.clone()),
        )),
    }
}

/// `GET /fhir/ServiceRequest?performer=<provider>&status=<status>`. A referrer sees the
/// referrals it sent, a provider those it holds. By NHS number: the POST form below.
pub async fn search_service_requests(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    caller.require(scopes::REFERRAL_READ)?;
    identifier_in_url(&pairs)?;
    search_referrals(&state, &caller, pairs).await
}

/// `POST /fhir/ServiceRequest/_search` with `subject:identifier=<system>|<nhs number>`
/// (and the other parameters) in an `application/x-www-form-urlencoded` body; paging
/// parameters may also be in the URL, as the searchset's links put them.
pub async fn post_search_service_requests(
    State(state): State<AppState>,
    caller: Caller,
    Query(in_url): Query<Vec<(String, String)>>,
    SearchForm(form): SearchForm,
) -> Result<Response, FhirError> {
    caller.require(scopes::REFERRAL_READ)?;
    identifier_in_url(&in_url)?;
    // Paging in the URL (a link followed) wins over paging in the form (re-posted).
    let paging_in_url = |name: &str| in_url.iter().any(|(given, _)| given == name);
    let mut pairs: Vec<(String, String)> = form
        .into_iter()
        .filter(|(name, _)| !paging_in_url(name))
        .collect();
    pairs.extend(in_url);
    search_referrals(&state, &caller, pairs).await
}

async fn search_referrals(
    state: &AppState,
    caller: &Caller,
    pairs: Vec<(String, String)>,
) -> Result<Response, FhirError> {
    if let Some((unknown, _)) = pairs
        .iter()
        .find(|(name, _)| !SEARCH_PARAMETERS.contains(&name.as_str()))
    {
        return Err(FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(IssueCode::NotSupported, format!("search parameter {unknown} is not supported (subject:identifier, performer, status, _count)")).at(unknown.clone()),
        ));
    }
    let params: HashMap<String, String> = pairs.iter().cloned().collect();
    let (offset, count) = paging(&params)?;
    let nhs_number = match params.get("subject:identifier") {
        None => None,
        Some(token) => {
            let value = match token.split_once('|') {
                Some((system, value))
                    if system.is_empty() || system == resources::NHS_NUMBER_SYSTEM =>
                {
                    value
                }
                Some((system, _)) => {
                    return Err(FhirError::one(
                        StatusCode::BAD_REQUEST,
                        Issue::error(
                            IssueCode::NotSupported,
                            format!(
                                "referrals are searched by NHS number ({}), not {system}",
                                resources::NHS_NUMBER_SYSTEM
                            ),
                        )
                        .at("subject:identifier"),
                    ))
                }
                None => token.as_str(),
            };
            Some(value.to_owned())
        }
    };
    let principal = &caller.0;
    let mut search = ReferralSearch {
        nhs_number,
        provider: params
            .get("performer")
            .map(|p| p.trim_start_matches("Organization/").to_owned()),
        status: params.get("status").cloned(),
        offset,
        count,
        ..ReferralSearch::default()
    };
    if !principal.has_scope(scopes::ADMIN) {
        match principal.role {
            Role::Source => match principal.submitter() {
                Some(submitter) => search.submitted_by = Some(submitter.to_owned()),
                None => search.source = Some(principal.client.clone()),
            },
            Role::Provider => {
                if search
                    .provider
                    .as_deref()
                    .is_some_and(|p| p != principal.client)
                {
                    return Err(forbidden(caller, "another provider's referrals"));
                }
                search.provider = Some(principal.client.clone());
            }
            _ => return Err(forbidden(caller, "referrals")),
        }
    }
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let (total, page) = read::search_referrals(&mut connection, LIVE_SCHEMA, &search)
        .await
        .map_err(database)?;
    let public = &state.config.public_base_url;
    let disclosed: Vec<ReferralId> = page
        .iter()
        .map(|view| ReferralId::from_uuid(view.referral_id))
        .collect();
    let entries = page
        .iter()
        .map(|view| {
            json!({
                "fullUrl": format!("{public}/fhir/ServiceRequest/{}", view.referral_id),
                "resource": current(state, view),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let response = fhir_response(
        StatusCode::OK,
        searchset(
            state,
            "ServiceRequest",
            total,
            entries,
            &pairs,
            offset,
            count,
        ),
    );
    Ok(audited(searched(response, &pairs), disclosed))
}

/// `GET /fhir/Observation?based-on=ServiceRequest/{id}`.
pub async fn search_observations(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let params: HashMap<String, String> = pairs.iter().cloned().collect();
    let Some(based_on) = params.get("based-on") else {
        return Err(FhirError::one(
            StatusCode::BAD_REQUEST,
            Issue::error(
                IssueCode::Required,
                "search Observations by based-on=ServiceRequest/<id>",
            )
            .at("based-on"),
        ));
    };
    let id = based_on.trim_start_matches("ServiceRequest/");
    let view = readable_referral(&state, &caller, id).await?;
    let (offset, count) = paging(&params)?;
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let rows = read::observations_in(&mut connection, LIVE_SCHEMA, view.referral_id)
        .await
        .map_err(database)?;
    let person = Person {
        referral: ReferralId::from_uuid(view.referral_id),
        nhs_number: view.nhs_number.as_deref(),
        birth_date: None,
        postcode: None,
    };
    let public = &state.config.public_base_url;
    let total = rows.len() as i64;
    let entries = rows
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(0))
        .map(|row| {
            json!({
                "fullUrl": format!("{public}/fhir/Observation/{}", row.observation_id),
                "resource": resources::observation(base(&state), &person, row),
                "search": { "mode": "match" },
            })
        })
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        searchset(&state, "Observation", total, entries, &pairs, offset, count),
    ))
}

//! The audit trail: a FHIR AuditEvent, after IHE Basic Audit Log Patterns (BALP), for
//! every read, search, create and update of identifiable data over the HTTP API —
//! who (client and role), what action, which patients and referrals, when, with what
//! outcome, from which address — refused attempts included.
//!
//! A read or search answers only once its AuditEvent is on `audit.events`
//! (acknowledged by the broker): one that cannot be audited is answered 503 instead, so
//! nothing is disclosed unrecorded. A change (create, update, operation) is on the
//! event log already with its actor; its AuditEvent is sent beside the answer, which
//! neither waits for it nor fails with it. Ingest indexes the topic into its own table `audit_events`
//! ([`AuditIndexer`]) for `GET /fhir/AuditEvent?patient=&date=` (administrators).
//!
//! An AuditEvent names people by linkwork's Patient id of the referral
//! (`Patient/<uuid>`) and the referral, never by NHS number, name or address, and a
//! search by the parameter names it used, never their values: the trail itself holds
//! no identifier (and outlives an erasure without undoing it).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use linkwork_auth::scopes;
use linkwork_bus::consumer::{Decode, Decoded, Effects, Handler, HandlerError, Incoming, Record};
use linkwork_bus::headers::{self, EventMeta, HeaderList};
use linkwork_bus::Outbound;
use linkwork_domain::ReferralId;
use linkwork_fhir::{Issue, IssueCode};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::http::error::FhirError;
use crate::http::extract::Caller;
use crate::http::fhir::fhir_response;
use crate::http::AppState;

/// CloudEvents type of an AuditEvent on `audit.events`.
pub const AUDIT_EVENT_TYPE: &str = "linkwork.audit.event.v1";

const INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// The FHIR RESTful interaction a route performs (BALP's `subtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    History,
    Search,
    Create,
    Update,
    Patch,
    /// `$process-message` and batch/transaction Bundles: creates or withdrawals.
    Operation,
    /// `Patient/$erase`: a person's data destroyed (crypto-shredded).
    Erase,
}

impl Interaction {
    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::History => "history-instance",
            Self::Search => "search-type",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Operation => "operation",
            Self::Erase => "delete",
        }
    }

    /// The IHE BALP profile an AuditEvent of this interaction follows.
    fn profile(self) -> &'static str {
        match self {
            Self::Create | Self::Operation => {
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create"
            }
            Self::Read | Self::History => {
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
            }
            Self::Search => {
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery"
            }
            Self::Update | Self::Patch => {
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Update"
            }
            Self::Erase => {
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Delete"
            }
        }
    }

    /// Creates, updates and operations change referrals; reads and searches disclose.
    pub fn changes(self) -> bool {
        !matches!(self, Self::Read | Self::History | Self::Search)
    }

    /// AuditEvent.action: Create, Read, Update, Execute (a search or an operation).
    pub fn action(self) -> &'static str {
        match self {
            Self::Create => "C",
            Self::Read | Self::History => "R",
            Self::Update | Self::Patch => "U",
            Self::Search | Self::Operation => "E",
            Self::Erase => "D",
        }
    }
}

/// What a handler tells the audit layer about a request it answered: the referrals
/// whose data it disclosed or changed, and for a search the parameter names used.
#[derive(Debug, Clone, Default)]
pub struct Audited {
    pub referrals: Vec<ReferralId>,
    /// People named directly (an audit search by patient).
    pub patients: Vec<Uuid>,
    /// Other resources acted on (`Task/<id>`).
    pub objects: Vec<String>,
    pub parameters: Vec<String>,
}

/// Marks `response` as touching `referrals`.
pub fn audited(
    mut response: Response,
    referrals: impl IntoIterator<Item = ReferralId>,
) -> Response {
    let mut audited = response
        .extensions_mut()
        .remove::<Audited>()
        .unwrap_or_default();
    audited.referrals.extend(referrals);
    response.extensions_mut().insert(audited);
    response
}

/// Records the search parameter names of `response`'s request (for a posted form).
pub fn searched(mut response: Response, parameters: &[(String, String)]) -> Response {
    let mut audited = response
        .extensions_mut()
        .remove::<Audited>()
        .unwrap_or_default();
    for (name, _) in parameters {
        if !audited.parameters.contains(name) {
            audited.parameters.push(name.clone());
        }
    }
    response.extensions_mut().insert(audited);
    response
}

/// The request as the audit layer saw it, before the handler took it.
struct Seen {
    method: Method,
    path: String,
    parameters: Vec<String>,
    from: Option<String>,
    started: DateTime<Utc>,
}

/// Where the request came from: the first `X-Forwarded-For` address (set by the
/// platform's proxy) or the peer address.
fn client_address(headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(|first| first.trim())
        .filter(|first| first.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_owned)
        .or_else(|| peer.map(|address| address.ip().to_string()))
}

/// The interaction of the route `method` `path` (a route template), when it touches
/// identifiable data.
fn interaction_of(method: &Method, path: &str) -> Option<Interaction> {
    static ROUTES: std::sync::OnceLock<Vec<crate::http::RouteSpec>> = std::sync::OnceLock::new();
    ROUTES
        .get_or_init(crate::http::routes)
        .iter()
        .find(|spec| spec.path == path && spec.method == method.as_str())
        .and_then(|spec| spec.audit)
}

/// The audit layer: runs the request, then, for a route marked audited, writes its
/// AuditEvent (and, for a read or search, waits for the broker) before answering.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(interaction) = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .and_then(|matched| interaction_of(request.method(), matched.as_str()))
    else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address);
    let seen = Seen {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        parameters: request
            .uri()
            .query()
            .map(|query| {
                url_names(query)
                    .into_iter()
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        from: client_address(request.headers(), peer),
        started: Utc::now(),
    };
    let observation_of = observation_referral(request.uri().query());
    let mut response = next.run(request).await;
    let caller = response.extensions_mut().remove::<Caller>();
    let mut audited = response
        .extensions_mut()
        .remove::<Audited>()
        .unwrap_or_default();
    if audited.referrals.is_empty() {
        audited.referrals.extend(path_referral(&seen.path));
        audited.referrals.extend(observation_of);
    }
    if let Some(task) = seen.path.strip_prefix("/fhir/Task/") {
        if Uuid::parse_str(task).is_ok() {
            audited.objects.push(format!("Task/{task}"));
        }
    }
    for name in &seen.parameters {
        if !audited.parameters.contains(name) {
            audited.parameters.push(name.clone());
        }
    }
    let event = AuditEvent {
        id: Uuid::now_v7(),
        interaction,
        status: response.status(),
        caller: caller.as_ref(),
        seen: &seen,
        audited: &audited,
        recorded: Utc::now(),
        observer: &state.config.public_base_url,
        base: &state.rules.canonical_base,
    };
    let resource = event.to_fhir();
    if interaction.changes() {
        // A change is on the event log already, with its actor: its AuditEvent goes
        // out beside the answer, which does not wait for it (nor fail with it, when
        // the broker is away and the client would only resubmit).
        let Ok(prepared) = prepare(&state, &event, &resource) else {
            return response;
        };
        let producer = state.producer.clone();
        tokio::spawn(async move {
            if let Err(error) = producer.send(prepared.outbound()).await {
                tracing::error!(%error, "an AuditEvent of a change could not be written");
            }
        });
        return response;
    }
    match send(&state, &event, &resource).await {
        Ok(()) => response,
        // A refusal discloses nothing: it goes back even when its record could not be
        // written (and the failure is logged).
        Err(error) if !response.status().is_success() => {
            tracing::error!(%error, path = %seen.path, "a refused access could not be audited");
            response
        }
        Err(error) => {
            tracing::error!(%error, path = %seen.path, "an access could not be audited; refused");
            FhirError::unavailable(
                "the access could not be recorded in the audit trail, so nothing was disclosed; try again",
                5,
            )
            .into_response()
        }
    }
}

/// Parameter names of a query string (values are never kept).
fn url_names(query: &str) -> Vec<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for (name, _) in pairs {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `ServiceRequest/{id}` (and its `_history`) names a referral in the path.
fn path_referral(path: &str) -> Option<ReferralId> {
    let rest = path.strip_prefix("/fhir/ServiceRequest/")?;
    let id = rest.split('/').next()?;
    Uuid::parse_str(id).ok().map(ReferralId::from_uuid)
}

/// `Observation?based-on=ServiceRequest/{id}` names a referral in the query.
fn observation_referral(query: Option<&str>) -> Option<ReferralId> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(name, _)| name == "based-on")
        .and_then(|(_, value)| {
            let id = value.strip_prefix("ServiceRequest/").unwrap_or(&value);
            Uuid::parse_str(id).ok()
        })
        .map(ReferralId::from_uuid)
}

struct AuditEvent<'a> {
    id: Uuid,
    interaction: Interaction,
    status: StatusCode,
    caller: Option<&'a Caller>,
    seen: &'a Seen,
    audited: &'a Audited,
    recorded: DateTime<Utc>,
    observer: &'a str,
    /// linkwork's canonical base, for its identifier systems.
    base: &'a str,
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl AuditEvent<'_> {
    /// BALP outcome: 0 success, 4 minor failure (refused, not found, bad request),
    /// 8 serious failure (linkwork could not answer).
    fn outcome(&self) -> &'static str {
        if self.status.is_success() {
            "0"
        } else if self.status.is_server_error() {
            "8"
        } else {
            "4"
        }
    }

    fn to_fhir(&self) -> Value {
        let mut who = json!({ "display": "unauthenticated" });
        let mut roles = Vec::new();
        if let Some(Caller(principal)) = self.caller {
            who = json!({ "identifier": {
                "system": format!("{}/Id/client", self.base),
                "value": principal.client,
            }});
            roles.push(json!({ "text": principal.role.name() }));
        }
        let mut client = json!({
            "type": { "coding": [{ "system": DICOM, "code": "110153", "display": "Source Role ID" }] },
            "who": who,
            "requestor": true,
        });
        if !roles.is_empty() {
            client["role"] = json!(roles);
        }
        if let Some(from) = &self.seen.from {
            client["network"] = json!({ "address": from, "type": "2" });
        }
        let server = json!({
            "type": { "coding": [{ "system": DICOM, "code": "110152", "display": "Destination Role ID" }] },
            "who": { "display": "linkwork ingest" },
            "requestor": false,
            "network": { "address": self.observer, "type": "5" },
        });
        let mut entities = referral_entities(&self.audited.referrals);
        for object in &self.audited.objects {
            entities.push(json!({
                "what": { "reference": object },
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource" },
            }));
        }
        for patient in &self.audited.patients {
            entities.push(json!({
                "what": { "reference": format!("Patient/{patient}") },
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
            }));
        }
        if self.interaction == Interaction::Search {
            entities.push(json!({
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query" },
                "description": format!("parameters: {}", self.audited.parameters.join(", ")),
            }));
        }
        json!({
            "resourceType": "AuditEvent",
            "id": self.id.to_string(),
            "meta": { "profile": [self.interaction.profile()] },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation" },
            "subtype": [{ "system": INTERACTION_SYSTEM, "code": self.interaction.code() }],
            "action": self.interaction.action(),
            "period": { "start": instant(self.seen.started), "end": instant(self.recorded) },
            "recorded": instant(self.recorded),
            "outcome": self.outcome(),
            "outcomeDesc": format!("HTTP {} {} {}", self.status.as_u16(), self.seen.method, self.seen.path),
            "agent": [client, server],
            "source": {
                "site": self.observer,
                "observer": { "display": "linkwork ingest" },
                "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }],
            },
            "entity": entities,
        })
    }
}

/// Each referral as two entities: its person (`Patient/<id>`) and the ServiceRequest.
fn referral_entities(referrals: &[ReferralId]) -> Vec<Value> {
    let mut entities = Vec::with_capacity(referrals.len() * 2);
    for referral in referrals {
        entities.push(json!({
            "what": { "reference": format!("Patient/{}", referral.patient_id()) },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
        }));
        entities.push(json!({
            "what": { "reference": format!("ServiceRequest/{referral}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource" },
        }));
    }
    entities
}

/// Where the consumers of `referrals.inbound` and `provider.responses` put the
/// AuditEvents of the changes they accept (through the outbox, in the batch's
/// transaction: a change is never applied unaudited).
#[derive(Debug, Clone)]
pub struct KafkaAudit {
    pub topic: String,
    pub canonical_base: String,
}

impl KafkaAudit {
    /// The AuditEvent of a change a message on Kafka made, sent by `client` (the
    /// message's source or provider header) in `role`: its event id derives from the
    /// message's place in the log, so a batch applied again audits it once.
    pub fn change(
        &self,
        record: &Record,
        client: &str,
        role: &str,
        interaction: Interaction,
        referrals: &[ReferralId],
        at: DateTime<Utc>,
    ) -> linkwork_bus::OutboxEvent {
        let place = format!("{}/{}/{}", record.topic, record.partition, record.offset);
        let id = linkwork_domain::EventId::derive(&["audit", &place, &referrals_key(referrals)]);
        let resource = json!({
            "resourceType": "AuditEvent",
            "id": id.to_string(),
            "meta": { "profile": [interaction.profile()] },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation" },
            "subtype": [{ "system": INTERACTION_SYSTEM, "code": interaction.code() }],
            "action": interaction.action(),
            "recorded": instant(at),
            "outcome": "0",
            "outcomeDesc": format!("accepted from Kafka {place}"),
            "agent": [
                {
                    "type": { "coding": [{ "system": DICOM, "code": "110153", "display": "Source Role ID" }] },
                    "who": { "identifier": { "system": format!("{}/Id/client", self.canonical_base), "value": client } },
                    "role": [{ "text": role }],
                    "requestor": true,
                },
                {
                    "type": { "coding": [{ "system": DICOM, "code": "110152", "display": "Destination Role ID" }] },
                    "who": { "display": "linkwork ingest" },
                    "requestor": false,
                },
            ],
            "source": {
                "observer": { "display": "linkwork ingest (Kafka consumer)" },
                "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }],
            },
            "entity": referral_entities(referrals),
        });
        let key = referrals
            .first()
            .map(|referral| referral.patient_id().to_string())
            .unwrap_or_else(|| client.to_owned());
        linkwork_bus::OutboxEvent::fhir(
            &self.topic,
            id,
            "linkwork/ingest",
            at,
            key,
            AUDIT_EVENT_TYPE,
            &resource,
        )
    }
}

fn referrals_key(referrals: &[ReferralId]) -> String {
    referrals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// An AuditEvent ready for the producer, owning its parts.
struct Prepared {
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: HeaderList,
}

impl Prepared {
    fn outbound(&self) -> Outbound<'_> {
        Outbound {
            topic: &self.topic,
            key: Some(self.key.as_bytes()),
            partition: None,
            payload: &self.payload,
            headers: self.headers.clone(),
        }
    }
}

async fn send(state: &AppState, event: &AuditEvent<'_>, resource: &Value) -> Result<(), String> {
    let prepared = prepare(state, event, resource)?;
    state
        .producer
        .send(prepared.outbound())
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

fn prepare(state: &AppState, event: &AuditEvent<'_>, resource: &Value) -> Result<Prepared, String> {
    let meta = EventMeta {
        id: event.id,
        event_type: AUDIT_EVENT_TYPE.to_owned(),
        source: "linkwork/ingest".to_owned(),
        time: event.recorded,
        traceparent: None,
        tracestate: None,
    };
    let mut list = HeaderList::default();
    for (name, value) in meta.to_headers().0 {
        if name != headers::CONTENT_TYPE {
            list.push(&name, value);
        }
    }
    list.push(headers::CONTENT_TYPE, "application/fhir+json");
    // Keyed by the first patient, so one person's trail is in order on one partition.
    let key = event
        .audited
        .referrals
        .first()
        .map(|referral| referral.patient_id())
        .or_else(|| event.audited.patients.first().copied())
        .map(|patient| patient.to_string())
        .or_else(|| {
            event
                .caller
                .map(|Caller(principal)| principal.client.clone())
        })
        .unwrap_or_default();
    let payload = serde_json::to_vec(resource).map_err(|error| error.to_string())?;
    Ok(Prepared {
        topic: state.config.audit_topic.clone(),
        key,
        payload,
        headers: list,
    })
}

/// One AuditEvent read back from `audit.events`, with what the index needs. The
/// resource is kept as the JSON text it came as: a batch of them parsed into trees was
/// ingest's largest use of memory under load (ten times the text).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub resource: String,
    pub recorded: DateTime<Utc>,
    pub patients: Vec<Uuid>,
    pub client: Option<String>,
}

impl Decode for AuditRecord {
    fn decode(record: &Record) -> Result<Decoded<Self>, String> {
        let meta = EventMeta::from_headers(&record.headers).map_err(|error| error.to_string())?;
        if meta.event_type != AUDIT_EVENT_TYPE {
            return Err(format!("{} is not an AuditEvent", meta.event_type));
        }
        let body = record.payload.as_deref().ok_or("message has no body")?;
        // Parsing into the view checks the whole text is JSON; only these parts are kept.
        let view: AuditView =
            serde_json::from_slice(body).map_err(|error| format!("not JSON: {error}"))?;
        if view.resource_type.as_ref().and_then(Value::as_str) != Some("AuditEvent") {
            return Err("the body is not an AuditEvent".to_owned());
        }
        let recorded = view
            .recorded
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc))
            .ok_or("the AuditEvent has no valid recorded instant")?;
        let patients = view
            .entity
            .as_ref()
            .and_then(Value::as_array)
            .map(|entities| {
                entities
                    .iter()
                    .filter_map(|entity| entity["what"]["reference"].as_str())
                    .filter_map(|reference| reference.strip_prefix("Patient/"))
                    .filter_map(|id| Uuid::parse_str(id).ok())
                    .collect()
            })
            .unwrap_or_default();
        let client = view
            .agent
            .as_ref()
            .and_then(|agents| agents[0]["who"]["identifier"]["value"].as_str())
            .map(str::to_owned);
        let resource = String::from_utf8(body.to_vec())
            .map_err(|_| "the body is not UTF-8 text".to_owned())?;
        Ok(Decoded {
            event_id: Some(meta.id),
            traceparent: meta.traceparent.clone(),
            tracestate: meta.tracestate.clone(),
            value: AuditRecord {
                resource,
                recorded,
                patients,
                client,
            },
        })
    }
}

/// The parts of an AuditEvent the index reads, as JSON of any shape (a part of the
/// wrong shape reads as absent, as it did when the whole resource was one tree); the
/// rest is skipped while parsing.
#[derive(serde::Deserialize)]
struct AuditView {
    #[serde(rename = "resourceType")]
    resource_type: Option<Value>,
    recorded: Option<Value>,
    entity: Option<Value>,
    agent: Option<Value>,
}

/// Indexes `audit.events` into `audit_events`, a batch per statement.
#[derive(Debug, Default)]
pub struct AuditIndexer;

impl Handler for AuditIndexer {
    type Message = AuditRecord;

    async fn handle<'a>(
        &'a mut self,
        transaction: &'a mut PgConnection,
        batch: &'a [Incoming<'a, AuditRecord>],
        _effects: &'a mut Effects,
    ) -> Result<(), HandlerError> {
        let mut ids = Vec::with_capacity(batch.len());
        let mut recorded = Vec::with_capacity(batch.len());
        let mut patients = Vec::with_capacity(batch.len());
        let mut clients = Vec::with_capacity(batch.len());
        let mut resources = Vec::with_capacity(batch.len());
        for incoming in batch {
            let Some(id) = incoming.event_id else {
                continue;
            };
            ids.push(id);
            recorded.push(incoming.message.recorded);
            // Postgres arrays of arrays must be rectangular: the patients go as text.
            patients.push(
                incoming
                    .message
                    .patients
                    .iter()
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
            clients.push(incoming.message.client.as_deref());
            resources.push(incoming.message.resource.as_str());
        }
        sqlx::query(
            "INSERT INTO audit_events (event_id, recorded, patients, client, resource) \
             SELECT id, at, CASE WHEN who = '' THEN '{}'::uuid[] ELSE string_to_array(who, ',')::uuid[] END, client, resource::jsonb \
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[]) \
                 AS batch(id, at, who, client, resource) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&recorded)
        .bind(&patients)
        .bind(&clients)
        .bind(&resources)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }
}

/// One `date` condition: a FHIR prefix and an instant (a date is its whole day in UTC: `ge`/`gt`/`eq` from its start, `le`/`lt` to its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateBound {
    operator: &'static str,
    at: DateTime<Utc>,
}

fn date_bounds(value: &str) -> Result<Vec<DateBound>, String> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let day = chrono::NaiveDate::parse_from_str(rest, "%Y-%m-%d").ok();
    let (start, end) = match day {
        Some(day) => {
            let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
            (start, start + chrono::Duration::days(1))
        }
        None => {
            let at = DateTime::parse_from_rfc3339(rest)
                .map_err(|_| {
                    format!("date {value:?} is not a FHIR date or instant (e.g. ge2026-12-01)")
                })?
                .with_timezone(&Utc);
            (at, at + chrono::Duration::milliseconds(1))
        }
    };
    Ok(match prefix {
        "ge" => vec![DateBound {
            operator: ">=",
            at: start,
        }],
        "gt" => vec![DateBound {
            operator: ">=",
            at: end,
        }],
        "le" => vec![DateBound {
            operator: "<",
            at: end,
        }],
        "lt" => vec![DateBound {
            operator: "<",
            at: start,
        }],
        _ => vec![
            DateBound {
                operator: ">=",
                at: start,
            },
            DateBound {
                operator: "<",
                at: end,
            },
        ],
    })
}

fn bad_parameter(diagnostics: String, at: &str) -> FhirError {
    FhirError::one(
        StatusCode::BAD_REQUEST,
        Issue::error(IssueCode::Invalid, diagnostics).at(at.to_owned()),
    )
}

/// `GET /fhir/AuditEvent?patient=&date=&agent=&_count=&_offset=` for administrators:
/// the trail, newest first. `patient` is `Patient/<id>` (or the bare id); `date` may
/// repeat (`date=ge2026-12-01&date=lt2026-12-08`); `agent` is a client id.
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, FhirError> {
    caller.require(scopes::ADMIN)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|error| {
        bad_parameter(format!("the query does not parse: {error}"), "query")
    })?;
    let mut patient = None;
    let mut agent = None;
    let mut bounds = Vec::new();
    let (mut count, mut offset) = (50i64, 0i64);
    for (name, value) in &pairs {
        match name.as_str() {
            "patient" => {
                let id = value.strip_prefix("Patient/").unwrap_or(value);
                patient = Some(Uuid::parse_str(id).map_err(|_| {
                    bad_parameter(format!("patient {value:?} is not Patient/<id>"), "patient")
                })?);
            }
            "agent" => agent = Some(value.clone()),
            "date" => bounds.extend(date_bounds(value).map_err(|reason| bad_parameter(reason, "date"))?),
            "_count" => {
                count = value
                    .parse::<i64>()
                    .ok()
                    .filter(|count| (1..=500).contains(count))
                    .ok_or_else(|| bad_parameter(format!("_count {value:?} is not 1 to 500"), "_count"))?
            }
            "_offset" => {
                offset = value
                    .parse::<i64>()
                    .ok()
                    .filter(|offset| *offset >= 0)
                    .ok_or_else(|| bad_parameter(format!("_offset {value:?} is not a count"), "_offset"))?
            }
            other => {
                return Err(FhirError::one(
                    StatusCode::BAD_REQUEST,
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("search parameter {other} is not supported (patient, date, agent, _count, _offset)"),
                    )
                    .at(other.to_owned()),
                ))
            }
        }
    }
    let mut select = sqlx::QueryBuilder::<sqlx::Postgres>::new(
        "SELECT resource, count(*) OVER () FROM audit_events WHERE true",
    );
    if let Some(patient) = patient {
        select
            .push(" AND patients @> ARRAY[")
            .push_bind(patient)
            .push("]::uuid[]");
    }
    if let Some(agent) = &agent {
        select.push(" AND client = ").push_bind(agent.clone());
    }
    for bound in &bounds {
        select
            .push(format!(" AND recorded {} ", bound.operator))
            .push_bind(bound.at);
    }
    select
        .push(" ORDER BY recorded DESC, event_id DESC LIMIT ")
        .push_bind(count)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows: Vec<(Value, i64)> = select
        .build_query_as()
        .fetch_all(&state.pool)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "audit search failed");
            FhirError::unavailable("linkwork's database is unavailable; try again", 5)
        })?;
    let total = rows.first().map_or(0, |(_, total)| *total);
    let public = &state.config.public_base_url;
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|(resource, _)| {
            json!({
                "fullUrl": format!("{public}/fhir/AuditEvent/{}", resource["id"].as_str().unwrap_or_default()),
                "resource": resource,
                "search": { "mode": "match" },
            })
        })
        .collect();
    let response = fhir_response(
        StatusCode::OK,
        json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "timestamp": instant(Utc::now()),
            "entry": entries,
        }),
    );
    let mut response = searched(response, &pairs);
    if let Some(patient) = patient {
        if let Some(audited) = response.extensions_mut().get_mut::<Audited>() {
            audited.patients.push(patient);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit_record(body: &str) -> Record {
        let meta = EventMeta {
            id: Uuid::new_v4(),
            event_type: AUDIT_EVENT_TYPE.to_owned(),
            source: "linkwork/ingest".to_owned(),
            time: Utc::now(),
            traceparent: None,
            tracestate: None,
        };
        Record {
            topic: std::sync::Arc::from("t"),
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(body.as_bytes().to_vec()),
            headers: meta.to_headers(),
        }
    }

    #[test]
    fn an_audit_event_is_indexed_from_its_text_by_patient_and_client() {
        let patient = Uuid::new_v4();
        let body = json!({
            "resourceType": "AuditEvent",
            "recorded": "2026-12-08T00:50:00Z",
            "agent": [{"who": {"identifier": {"value": "gp-system-synthetic"}}}],
            "entity": [{"what": {"reference": format!("Patient/{patient}")}}],
        })
        .to_string();
        let decoded = AuditRecord::decode(&audit_record(&body)).expect("decodes");
        assert_eq!(decoded.value.patients, [patient]);
        assert_eq!(decoded.value.client.as_deref(), Some("gp-system-synthetic"));
        assert_eq!(decoded.value.resource, body, "kept as the text it came as");
    }

    #[test]
    fn parts_of_the_wrong_shape_read_as_absent_and_a_body_that_is_not_one_is_refused() {
        let odd = r#"{"resourceType":"AuditEvent","recorded":"2026-12-08T00:50:00Z","entity":null,"agent":{"who":1}}"#;
        let decoded = AuditRecord::decode(&audit_record(odd)).expect("decodes");
        assert!(decoded.value.patients.is_empty());
        assert_eq!(decoded.value.client, None);
        let other = r#"{"resourceType":"Patient","recorded":"2026-12-08T00:50:00Z"}"#;
        assert!(AuditRecord::decode(&audit_record(other))
            .unwrap_err()
            .contains("not an AuditEvent"));
        assert!(AuditRecord::decode(&audit_record("{not json"))
            .unwrap_err()
            .starts_with("not JSON"));
    }

    #[test]
    fn a_date_is_its_whole_day_and_an_instant_its_moment() {
        let day = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        assert_eq!(
            date_bounds("2026-12-01").unwrap(),
            [
                DateBound {
                    operator: ">=",
                    at: day("2026-12-01T00:00:00Z")
                },
                DateBound {
                    operator: "<",
                    at: day("2026-12-02T00:00:00Z")
                },
            ]
        );
        assert_eq!(
            date_bounds("le2026-12-01").unwrap(),
            [DateBound {
                operator: "<",
                at: day("2026-12-02T00:00:00Z")
            }]
        );
        assert_eq!(
            date_bounds("gt2026-12-01T10:00:00Z").unwrap(),
            [DateBound {
                operator: ">=",
                at: day("2026-12-01T10:00:00.001Z")
            }]
        );
        assert!(date_bounds("yesterday").is_err());
    }

    #[test]
    fn a_referral_is_named_by_its_path_or_its_based_on_parameter() {
        let id = Uuid::new_v4();
        assert_eq!(
            path_referral(&format!("/fhir/ServiceRequest/{id}/_history")),
            Some(ReferralId::from_uuid(id))
        );
        assert_eq!(path_referral("/fhir/ServiceRequest/_search"), None);
        assert_eq!(
            observation_referral(Some(&format!("based-on=ServiceRequest%2F{id}&_count=5"))),
            Some(ReferralId::from_uuid(id))
        );
    }

    #[test]
    fn each_route_template_is_audited_as_its_table_entry_says() {
        assert_eq!(
            interaction_of(&Method::GET, "/fhir/ServiceRequest/{id}"),
            Some(Interaction::Read)
        );
        assert_eq!(
            interaction_of(&Method::POST, "/fhir/ServiceRequest/_search"),
            Some(Interaction::Search)
        );
        assert_eq!(
            interaction_of(&Method::PATCH, "/fhir/Task/{id}"),
            Some(Interaction::Patch)
        );
        assert_eq!(interaction_of(&Method::GET, "/fhir/metadata"), None);
        assert_eq!(interaction_of(&Method::DELETE, "/fhir/Task/{id}"), None);
    }

    #[test]
    fn a_query_is_kept_by_its_parameter_names_and_never_its_values() {
        let names = url_names("subject%3Aidentifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9990000018&_count=5&_count=6");
        assert_eq!(names, ["subject:identifier", "_count"]);
    }

    #[test]
    fn the_client_address_is_the_first_forwarded_one_or_the_peer() {
        let mut headers = HeaderMap::new();
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        assert_eq!(
            client_address(&headers, Some(peer)).as_deref(),
            Some("10.1.2.3")
        );
        headers.insert("x-forwarded-for", "192.0.2.7, 10.0.0.1".parse().unwrap());
        assert_eq!(
            client_address(&headers, Some(peer)).as_deref(),
            Some("192.0.2.7")
        );
        headers.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            client_address(&headers, Some(peer)).as_deref(),
            Some("10.1.2.3")
        );
    }
}

//! The FHIR R4 resources the projector sends and serves: outcome Observations
//! (identified, and pseudonymised for data teams), the summary for the referrer when a
//! referral closes, and the ServiceRequest and Task as the read API shows them.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use linkwork_bus::OutboxEvent;
use linkwork_domain::outcome::Ons4Item;
use linkwork_domain::{EventId, Instrument, OutcomeMeasure, Postcode, ReferralId};
use serde_json::{json, Value};

use crate::model::{ObservationRow, Projected};
use crate::pseudonym::age_band;
use crate::read::{SummaryParts, TaskView};
use crate::ProjectorConfig;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const SNOMED: &str = "http://snomed.info/sct";
/// CloudEvents types on the outcome topics.
pub const OBSERVATION_TYPE: &str = "linkwork.outcomes.observation.v1";
pub const PSEUDONYMISED_OBSERVATION_TYPE: &str = "linkwork.outcomes.observation-pseudonymised.v1";
pub const SUMMARY_TYPE: &str = "linkwork.outcomes.referral-summary.v1";

/// Who an Observation is about.
#[derive(Debug, Clone)]
pub struct Person<'a> {
    pub referral: ReferralId,
    pub nhs_number: Option<&'a str>,
    pub birth_date: Option<NaiveDate>,
    pub postcode: Option<&'a str>,
}

pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn instrument_code(base: &str, instrument: Instrument) -> Value {
    let mut coding = vec![json!({
        "system": format!("{base}/CodeSystem/outcome-instrument"),
        "code": instrument.code(),
        "display": instrument.display(),
    })];
    if let Some((code, display)) = instrument.snomed_code() {
        coding.push(json!({ "system": SNOMED, "code": code, "display": display }));
    }
    json!({ "coding": coding, "text": instrument.display() })
}

fn provider_reference(base: &str, provider: &str) -> Value {
    json!({
        "type": "Organization",
        "identifier": { "system": format!("{base}/Id/provider"), "value": provider },
    })
}

/// The value part of an Observation: `valueInteger`, or a component per ONS4 item.
fn value_of(base: &str, measure: &Value, observation: &mut Value) {
    let parsed: Option<OutcomeMeasure> = serde_json::from_value(measure.clone()).ok();
    match parsed {
        Some(measure @ OutcomeMeasure::Ons4 { .. }) => {
            let components: Vec<Value> = Ons4Item::ALL
                .iter()
                .filter_map(|item| {
                    measure.ons4_item(*item).map(|score| {
                        json!({
                            "code": { "coding": [{
                                "system": format!("{base}/CodeSystem/outcome-instrument"),
                                "code": item.code(),
                            }]},
                            "valueInteger": score,
                        })
                    })
                })
                .collect();
            observation["component"] = json!(components);
        }
        Some(measure) => {
            if let Some(total) = measure.total() {
                observation["valueInteger"] = json!(total);
            }
        }
        None => {}
    }
}

fn base_observation(base: &str, row: &ObservationRow, instrument: Instrument) -> Value {
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
            "display": "Survey",
        }]}],
        "code": instrument_code(base, instrument),
        "effectiveDateTime": instant(row.effective_at),
        "issued": instant(row.recorded_at),
        "performer": [provider_reference(base, &row.provider_id)],
        "extension": [{
            "url": format!("{base}/StructureDefinition/outcome-timepoint"),
            "valueCode": row.timepoint,
        }],
    });
    value_of(base, &row.measure, &mut observation);
    observation
}

fn instrument_of(row: &ObservationRow) -> Instrument {
    row.instrument.parse().unwrap_or(Instrument::Ucla3)
}

/// The identified Observation: for the referrer, the provider and the read API.
pub fn observation(base: &str, person: &Person<'_>, row: &ObservationRow) -> Value {
    let mut observation = base_observation(base, row, instrument_of(row));
    observation["id"] = json!(row.observation_id.to_string());
    observation["meta"] = json!({ "versionId": "1", "lastUpdated": instant(row.recorded_at) });
    observation["basedOn"] =
        json!([{ "reference": format!("ServiceRequest/{}", person.referral) }]);
    observation["subject"] = match person.nhs_number {
        Some(number) => json!({
            "type": "Patient",
            "identifier": { "system": NHS_NUMBER_SYSTEM, "value": number },
        }),
        None => json!({ "reference": format!("Patient/{}", person.referral.patient_id()) }),
    };
    observation
}

/// The copy for data teams: a keyed pseudonym for the person and for the referral, no
/// NHS number, name or address, age band instead of birth date, postcode district
/// instead of postcode.
pub fn pseudonymised(config: &ProjectorConfig, person: &Person<'_>, row: &ObservationRow) -> Value {
    let base = config.canonical_base.as_str();
    let key = &config.pseudonym_key;
    let referral_pseudonym = key.id("referral", person.referral.as_uuid());
    let mut observation = base_observation(base, row, instrument_of(row));
    observation["id"] = json!(key.id("observation", &row.observation_id).to_string());
    observation["subject"] = json!({
        "identifier": {
            "system": format!("{base}/Id/pseudonym"),
            "value": key.person(person.nhs_number, person.referral.as_uuid()),
        },
    });
    observation["basedOn"] = json!([{ "identifier": {
        "system": format!("{base}/Id/referral-pseudonym"),
        "value": referral_pseudonym.to_string(),
    }}]);
    let extensions = observation["extension"]
        .as_array_mut()
        .unwrap_or_else(|| unreachable!("built with an extension array"));
    if let Some(band) = person
        .birth_date
        .and_then(|born| age_band(born, row.effective_at.date_naive()))
    {
        extensions.push(json!({
            "url": format!("{base}/StructureDefinition/age-band"),
            "valueString": band,
        }));
    }
    if let Some(district) = person
        .postcode
        .and_then(|code| Postcode::parse(code).ok())
        .map(|code| code.district().to_owned())
    {
        extensions.push(json!({
            "url": format!("{base}/StructureDefinition/postcode-district"),
            "valueString": district,
        }));
    }
    observation
}

pub fn observation_message(
    config: &ProjectorConfig,
    person: &Person<'_>,
    row: &ObservationRow,
) -> OutboxEvent {
    OutboxEvent::fhir(
        &config.topics.observations,
        EventId::derive(&["outcome-observation", &row.observation_id.to_string()]),
        &config.source,
        row.recorded_at,
        person.referral.to_string(),
        OBSERVATION_TYPE,
        &observation(&config.canonical_base, person, row),
    )
}

pub fn pseudonymised_message(
    config: &ProjectorConfig,
    person: &Person<'_>,
    row: &ObservationRow,
) -> OutboxEvent {
    let key = &config.pseudonym_key;
    OutboxEvent::fhir(
        &config.topics.pseudonymised,
        EventId::from_uuid(key.id("observation-event", &row.observation_id)),
        &config.source,
        row.recorded_at,
        key.person(person.nhs_number, person.referral.as_uuid()),
        PSEUDONYMISED_OBSERVATION_TYPE,
        &pseudonymised(config, person, row),
    )
}

/// The ServiceRequest status a referral's status shows as.
pub fn service_request_status(status: &str) -> &'static str {
    match status {
        "completed" => "completed",
        "failed" | "cancelled" => "revoked",
        "entered-in-error" => "entered-in-error",
        "on-hold" => "on-hold",
        _ => "active",
    }
}

/// A ServiceRequest as the read API shows it at one version.
pub fn service_request(
    base: &str,
    received: &Value,
    referral: ReferralId,
    status: &str,
    version: i64,
    last_updated: DateTime<Utc>,
) -> Value {
    let mut resource = match received {
        Value::Object(object) => Value::Object(object.clone()),
        _ => json!({}),
    };
    resource["resourceType"] = json!("ServiceRequest");
    resource["id"] = json!(referral.to_string());
    resource["meta"] =
        json!({ "versionId": version.to_string(), "lastUpdated": instant(last_updated) });
    resource["status"] = json!(service_request_status(status));
    let extension = json!({
        "url": format!("{base}/StructureDefinition/referral-status"),
        "valueCode": status,
    });
    match resource.get_mut("extension").and_then(Value::as_array_mut) {
        Some(extensions) => {
            extensions.retain(|item| item["url"] != extension["url"]);
            extensions.push(extension);
        }
        None => resource["extension"] = json!([extension]),
    }
    resource
}

/// A Task as the read API shows it.
pub fn task(base: &str, view: &TaskView) -> Value {
    let mut task = json!({
        "resourceType": "Task",
        "id": view.task_id.to_string(),
        "meta": { "versionId": view.version.to_string(), "lastUpdated": instant(view.last_modified) },
        "identifier": [{
            "system": format!("{base}/Id/routing-attempt"),
            "value": format!("{}/{}", view.referral_id, view.attempt),
        }],
        "status": view.status,
        "intent": "order",
        "code": { "coding": [{
            "system": "http://hl7.org/fhir/CodeSystem/task-code",
            "code": "fulfill",
        }]},
        "focus": { "reference": format!("ServiceRequest/{}", view.referral_id) },
        "for": { "reference": format!("Patient/{}", ReferralId::from_uuid(view.referral_id).patient_id()) },
        "authoredOn": instant(view.authored_on),
        "lastModified": instant(view.last_modified),
        "owner": provider_reference(base, &view.provider_id),
    });
    if let Some(reason) = &view.status_reason {
        task["statusReason"] = json!({ "text": reason });
    }
    if let Some(accept_by) = view.accept_by {
        task["restriction"] = json!({ "period": { "end": instant(accept_by) } });
    }
    task
}

/// The summary for the referrer when a referral closes (the PRSB social prescribing
/// "message back to the referrer"): how it ended, first contact, activities attended
/// with dates, and the outcome Observations.
pub fn summary_message(
    config: &ProjectorConfig,
    projected: &Projected,
    parts: &SummaryParts,
    at: DateTime<Utc>,
) -> OutboxEvent {
    let base = config.canonical_base.as_str();
    let referral = projected.state.id;
    let person = Person {
        referral,
        nhs_number: projected.nhs_number.as_deref(),
        birth_date: projected.birth_date,
        postcode: projected.postcode.as_deref(),
    };
    let mut outputs = Vec::new();
    if let Some(first) = projected.state.first_contact_at {
        outputs.push(json!({
            "type": { "text": "first contact" },
            "valueDateTime": instant(first),
        }));
    }
    for activity in &parts.activities {
        outputs.push(json!({
            "type": { "text": format!("activity attended ({})", activity.kind) },
            "valueString": format!("{} on {}", activity.activity_name, activity.attended_on),
        }));
    }
    for row in &parts.observations {
        outputs.push(json!({
            "type": { "text": format!("outcome measure ({}, {})", row.instrument, row.timepoint) },
            "valueReference": { "reference": format!("urn:uuid:{}", row.observation_id) },
        }));
    }
    let mut task = match &parts.task {
        Some(view) => task(base, view),
        None => json!({
            "resourceType": "Task",
            "id": referral.task_id(0).to_string(),
            "status": projected.state.status.code(),
            "intent": "order",
            "focus": { "reference": format!("ServiceRequest/{referral}") },
        }),
    };
    task["status"] = json!(match projected.state.status.code() {
        "completed" => "completed",
        "failed" => "failed",
        "entered-in-error" => "entered-in-error",
        _ => "cancelled",
    });
    task["lastModified"] = json!(instant(at));
    task["output"] = json!(outputs);
    task["note"] = json!([{ "text": format!(
        "Referral {} with {} contact(s) and {} activity(ies) attended.",
        match projected.state.status.code() {
            "completed" => "completed",
            "failed" => "closed without the support being delivered",
            _ => "closed",
        },
        projected.state.contacts,
        parts.activities.len(),
    )}]);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", parts.task.as_ref().map(|t| t.task_id).unwrap_or_else(|| referral.task_id(0))),
        "resource": task,
    })];
    for row in &parts.observations {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", row.observation_id),
            "resource": observation(base, &person, row),
        }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": EventId::derive(&["referral-summary", &referral.to_string()]).as_uuid().to_string(),
        "type": "collection",
        "timestamp": instant(at),
        "entry": entries,
    });
    OutboxEvent::fhir(
        &config.topics.observations,
        EventId::derive(&["referral-summary", &referral.to_string()]),
        &config.source,
        at,
        referral.to_string(),
        SUMMARY_TYPE,
        &bundle,
    )
}

//! The FHIR R4 views of read-model rows: the ServiceRequest and Task as the read API
//! shows them, and the identified outcome Observation (for the referrer, the provider
//! and the read API). The projector builds its outbound messages from the same views.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use linkwork_domain::outcome::Ons4Item;
use linkwork_domain::{Instrument, OutcomeMeasure, ReferralId};
use serde_json::{json, Value};

use crate::model::ObservationRow;
use crate::read::TaskView;

pub use linkwork_fhir::systems::NHS_NUMBER as NHS_NUMBER_SYSTEM;
use linkwork_fhir::systems::{self, SNOMED_CT as SNOMED};

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
        "system": systems::outcome_instrument(base),
        "code": instrument.code(),
        "display": instrument.display(),
    })];
    if let Some((code, display)) = instrument.snomed_code() {
        coding.push(json!({ "system": SNOMED, "code": code, "display": display }));
    }
    json!({ "coding": coding, "text": instrument.display() })
}

pub fn provider_reference(base: &str, provider: &str) -> Value {
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
                                "system": systems::outcome_instrument(base),
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

pub fn base_observation(base: &str, row: &ObservationRow, instrument: Instrument) -> Value {
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": systems::OBSERVATION_CATEGORY,
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

pub fn instrument_of(row: &ObservationRow) -> Instrument {
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
    // Security labels stay (a redacted stand-in says so); the rest of meta is the
    // read model's.
    let security = resource["meta"]["security"].clone();
    resource["meta"] =
        json!({ "versionId": version.to_string(), "lastUpdated": instant(last_updated) });
    if !security.is_null() {
        resource["meta"]["security"] = security;
    }
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
            "system": systems::TASK_CODE,
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

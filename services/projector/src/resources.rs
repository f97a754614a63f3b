//! The messages the projector sends: outcome Observations (identified, and
//! pseudonymised for data teams) and the summary for the referrer when a referral
//! closes. The FHIR views themselves are the read side's (`linkwork_projection::render`).

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Europe::London;
use linkwork_bus::OutboxEvent;
use linkwork_domain::{EventId, Postcode, Source};
use linkwork_projection::model::{ObservationRow, Projected};
use linkwork_projection::read::SummaryParts;
use linkwork_projection::render::{
    base_observation, instant, instrument_of, observation, task, Person,
};
use serde_json::{json, Value};

use crate::pseudonym::age_band;
use crate::ProjectorConfig;

/// CloudEvents types on the outcome topics.
pub const OBSERVATION_TYPE: &str = "linkwork.outcomes.observation.v1";
pub const PSEUDONYMISED_OBSERVATION_TYPE: &str = "linkwork.outcomes.observation-pseudonymised.v1";
pub const SUMMARY_TYPE: &str = "linkwork.outcomes.referral-summary.v1";
pub const RETRACTION_TYPE: &str = "linkwork.outcomes.observation-retracted.v1";

/// The copy for data teams: a keyed pseudonym for the person and for the referral, no
/// NHS number, name or address, age band instead of birth date, postcode district
/// instead of postcode, and the month instead of the moment (an exact date and time
/// of a score, beside an age band and a district, could point at one person; a
/// month's is enough for evaluation). No `issued`, for the same reason.
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
    observation["effectiveDateTime"] = json!(month_of(row.effective_at));
    if let Some(fields) = observation.as_object_mut() {
        fields.remove("issued");
    }
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

/// `YYYY-MM` in UK local time: a FHIR dateTime to the month.
pub fn month_of(at: DateTime<Utc>) -> String {
    at.with_timezone(&London).format("%Y-%m").to_string()
}

/// The first instant of `at`'s month in UK local time.
fn start_of_month(at: DateTime<Utc>) -> DateTime<Utc> {
    let local = at.with_timezone(&London);
    local
        .date_naive()
        .with_day(1)
        .and_then(|first| first.and_hms_opt(0, 0, 0))
        .and_then(|midnight| London.from_local_datetime(&midnight).earliest())
        .map_or(at, |start| start.with_timezone(&Utc))
}

/// An outcome Observation, identified, on its referrer's own topic.
pub fn observation_message(
    config: &ProjectorConfig,
    referrer: &Source,
    person: &Person<'_>,
    row: &ObservationRow,
) -> OutboxEvent {
    OutboxEvent::fhir(
        &config.topics.referrer(referrer),
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
        // The event's time is the month's too.
        start_of_month(row.recorded_at),
        key.person(person.nhs_number, person.referral.as_uuid()),
        PSEUDONYMISED_OBSERVATION_TYPE,
        &pseudonymised(config, person, row),
    )
}

/// The retraction of a pseudonymised Observation when consent is withdrawn: the same
/// id, subject and referral pseudonyms and code, `status` `entered-in-error`, a tag
/// saying why, and no value, date, age band or district. Data teams delete the record
/// of that id. Sent once per Observation (its event id derives from the
/// Observation's), whether or not the copy was ever sent.
/// Why a pseudonymised record is taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retraction {
    ConsentWithdrawn,
    Erased,
}

/// The redaction notice on the referrer's outcomes topic once the person is erased
/// (`linkwork.referral.redacted.v1`, the redacted ServiceRequest with a note).
pub fn erasure_notice_message(
    config: &ProjectorConfig,
    source: &linkwork_domain::Source,
    referral: linkwork_domain::ReferralId,
    erased_at: DateTime<Utc>,
) -> OutboxEvent {
    let id = referral.to_string();
    OutboxEvent::fhir(
        &config.topics.referrer(source),
        EventId::derive(&[
            "redaction-notice",
            &id,
            &erased_at.timestamp_micros().to_string(),
        ]),
        &config.source,
        erased_at,
        id,
        linkwork_domain::event::REDACTION_NOTICE_TYPE,
        &linkwork_domain::event::erasure_notice(referral, erased_at),
    )
}

pub fn retraction_message(
    config: &ProjectorConfig,
    person: &Person<'_>,
    row: &ObservationRow,
    withdrawn_at: DateTime<Utc>,
    why: Retraction,
) -> OutboxEvent {
    let key = &config.pseudonym_key;
    let copy = pseudonymised(config, person, row);
    let (code, display) = match why {
        Retraction::ConsentWithdrawn => (
            "consent-withdrawn",
            "The person withdrew consent to share for evaluation",
        ),
        Retraction::Erased => ("erased", "The person's data was erased at their request"),
    };
    let retraction = json!({
        "resourceType": "Observation",
        "id": copy["id"],
        "meta": { "tag": [{
            "system": format!("{}/CodeSystem/retraction-reason", config.canonical_base),
            "code": code,
            "display": display,
        }]},
        "status": "entered-in-error",
        "code": copy["code"],
        "subject": copy["subject"],
        "basedOn": copy["basedOn"],
    });
    OutboxEvent::fhir(
        &config.topics.pseudonymised,
        EventId::from_uuid(key.id("observation-retraction", &row.observation_id)),
        &config.source,
        start_of_month(withdrawn_at),
        key.person(person.nhs_number, person.referral.as_uuid()),
        RETRACTION_TYPE,
        &retraction,
    )
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
        &config.topics.referrer(&projected.state.source),
        EventId::derive(&["referral-summary", &referral.to_string()]),
        &config.source,
        at,
        referral.to_string(),
        SUMMARY_TYPE,
        &bundle,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonymised_time_is_its_uk_month() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        // 23:30 UTC on 31 May is 00:30 on 1 June in London.
        assert_eq!(month_of(at("2026-05-31T23:30:00Z")), "2026-06");
        assert_eq!(
            start_of_month(at("2026-06-17T10:00:00Z")).to_rfc3339(),
            "2026-05-31T23:00:00+00:00"
        );
        assert_eq!(
            start_of_month(at("2026-01-17T10:00:00Z")).to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
    }
}

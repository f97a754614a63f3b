//! What a provider sends, over HTTP or on `provider.responses`, read into a command on
//! the referral: the same payloads and the same rules both ways.
//!
//! - `Task` (PUT `/fhir/Task/{id}`, or on Kafka with its id): a status change along the
//!   lifecycle; `statusReason` carries a rejection, hold or failure reason.
//! - `Observation`: an outcome measure for one instrument of
//!   `<canonical>/CodeSystem/outcome-instrument` (or its SNOMED CT code), `basedOn` the
//!   ServiceRequest, `valueInteger` (ONS4: a component per item), `effectiveDateTime`,
//!   and the timepoint in the `outcome-timepoint` extension.
//! - `Communication`: a contact with the person (`sent`, `medium`), `basedOn` the
//!   ServiceRequest.
//! - `Procedure`: an activity attended (`code.text` names it, `category` says what
//!   kind, `performedDateTime` when), `basedOn` the ServiceRequest.
//! - `Consent`: consent to share outcomes for evaluation, `active` (given) or
//!   `inactive` (withdrawn), the ServiceRequest in `provision.data`.
//!
//! Every resource is first checked as FHIR R4 (fhir-model), so structural problems
//! come back with the element's FHIRPath.

use chrono::{DateTime, Utc};
use fhir_model::r4b::resources;
use linkwork_domain::event::{
    ActivityAttended, ActivityKind, ConsentChange, ConsentScope, ContactMode, ContactRecorded,
    OutcomeRecorded, ProviderStatusChange, ReferralClosedBy,
};
use linkwork_domain::referral::Command;
use linkwork_domain::{Actor, Instrument, OutcomeMeasure, ProviderId, ReferralId, Timepoint};

use crate::referral::parse_date_time;
use crate::{Issue, IssueCode};
use serde_json::Value;
use uuid::Uuid;

/// A provider's message, read.
#[derive(Debug, Clone)]
pub struct Submission {
    pub referral: ReferralId,
    /// For Task updates: the routing attempt the Task belongs to, when the Task id
    /// told it (`None`: the id is not a Task of this referral).
    pub task: Option<TaskTarget>,
    pub command: Command,
    /// What kind of resource it came as (for answers and logs).
    pub resource_type: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTarget {
    pub task_id: Uuid,
    /// The attempt whose Task id this is; `None` when no attempt up to the limit
    /// matches (not a Task linkwork issued for this referral).
    pub attempt: Option<u32>,
}

/// Routing attempts searched when matching a Task id (a referral is re-routed at most
/// once per provider of the directory; no borough has this many).
const MAX_ATTEMPTS: u32 = 256;

fn invalid(expression: &str, message: impl Into<String>) -> Issue {
    Issue::error(IssueCode::Invalid, message).at(expression)
}

fn required(expression: &str, message: impl Into<String>) -> Issue {
    Issue::error(IssueCode::Required, message).at(expression)
}

/// The referral a reference names: `ServiceRequest/<id>` or `urn:uuid:<id>`.
fn referral_reference(value: &Value, expression: &str) -> Result<ReferralId, Issue> {
    let Some(reference) = value.get("reference").and_then(Value::as_str) else {
        return Err(required(
            expression,
            format!("{expression} must reference the ServiceRequest (ServiceRequest/<id>)"),
        ));
    };
    let id = reference
        .strip_prefix("ServiceRequest/")
        .or_else(|| reference.strip_prefix("urn:uuid:"))
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            invalid(expression, format!("{reference:?} is not a linkwork ServiceRequest reference (ServiceRequest/<uuid>)"))
        })?;
    Ok(ReferralId::from_uuid(id))
}

fn based_on(resource: &Value, resource_type: &str) -> Result<ReferralId, Issue> {
    let expression = format!("{resource_type}.basedOn");
    match resource
        .get("basedOn")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([only]) => referral_reference(only, &format!("{expression}[0]")),
        Some([]) | None => Err(required(
            &expression,
            format!("{expression} must reference the ServiceRequest the {resource_type} is about"),
        )),
        Some(_) => Err(invalid(
            &expression,
            format!("{expression} must reference exactly one ServiceRequest"),
        )),
    }
}

fn date_time(resource: &Value, element: &str, resource_type: &str) -> Result<DateTime<Utc>, Issue> {
    let expression = format!("{resource_type}.{element}");
    let Some(text) = resource.get(element).and_then(Value::as_str) else {
        return Err(required(&expression, format!("{expression} is required")));
    };
    parse_date_time(text).ok_or_else(|| {
        invalid(
            &expression,
            format!("{expression} {text:?} must be a dateTime with a time zone (or a date)"),
        )
    })
}

fn reason_text(resource: &Value) -> Option<String> {
    let reason = resource.get("statusReason")?;
    reason
        .get("text")
        .and_then(Value::as_str)
        .or_else(|| reason.pointer("/coding/0/display").and_then(Value::as_str))
        .or_else(|| reason.pointer("/coding/0/code").and_then(Value::as_str))
        .map(str::to_owned)
}

fn check<T>(resource: &Value, resource_type: &str) -> Result<(), Vec<Issue>>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    crate::parse::typed::<T>(resource, resource_type).map(|_| ())
}

/// Reads `resource` sent by `provider`. `task_id` is the id in the URL of a PUT (the
/// body's id must match it) or `None` on Kafka (the body's id is used).
pub fn parse(
    resource: &Value,
    provider: &ProviderId,
    task_id: Option<Uuid>,
    canonical_base: &str,
    now: DateTime<Utc>,
) -> Result<Submission, Vec<Issue>> {
    let resource_type = crate::parse::resource_type(resource).unwrap_or("");
    match resource_type {
        "Task" => {
            check::<resources::Task>(resource, "Task")?;
            task(resource, provider, task_id, now).map_err(|issue| vec![issue])
        }
        "Observation" => {
            check::<resources::Observation>(resource, "Observation")?;
            observation(resource, provider, canonical_base, now)
        }
        "Communication" => {
            check::<resources::Communication>(resource, "Communication")?;
            contact(resource, provider, now).map_err(|issue| vec![issue])
        }
        "Procedure" => {
            check::<resources::Procedure>(resource, "Procedure")?;
            activity(resource, provider, canonical_base, now).map_err(|issue| vec![issue])
        }
        "Consent" => parse_consent(resource, Actor::Provider(provider.clone()), now),
        "" => Err(vec![required("resourceType", "resourceType is missing")]),
        other => Err(vec![Issue::error(
            IssueCode::NotSupported,
            format!("a provider sends Task, Observation, Communication, Procedure or Consent, not {other}"),
        )
        .at("resourceType")]),
    }
}

fn task(
    resource: &Value,
    provider: &ProviderId,
    path_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Submission, Issue> {
    let body_id = resource.get("id").and_then(Value::as_str);
    let task_id = match (path_id, body_id) {
        (Some(path), Some(body)) if body != path.to_string() => {
            return Err(invalid(
                "Task.id",
                format!("Task.id {body:?} does not match the id in the URL ({path})"),
            ))
        }
        (Some(path), _) => path,
        (None, Some(body)) => Uuid::parse_str(body).map_err(|_| {
            invalid(
                "Task.id",
                format!("Task.id {body:?} is not a linkwork Task id"),
            )
        })?,
        (None, None) => {
            return Err(required(
                "Task.id",
                "Task.id is required: it names the routing attempt",
            ))
        }
    };
    let focus = resource
        .get("focus")
        .ok_or_else(|| required("Task.focus", "Task.focus must reference the ServiceRequest"))?;
    let referral = referral_reference(focus, "Task.focus")?;
    let attempt = (1..=MAX_ATTEMPTS).find(|attempt| referral.task_id(*attempt) == task_id);
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    let reason = reason_text(resource);
    let change = ProviderStatusChange {
        referral_id: referral,
        provider_id: provider.clone(),
        reason: reason.clone(),
        occurred_at: now,
    };
    let closed = || ReferralClosedBy {
        referral_id: referral,
        by: Actor::Provider(provider.clone()),
        reason: reason.clone(),
        occurred_at: now,
    };
    let needs_reason = |status: &str| {
        required(
            "Task.statusReason",
            format!("a {status} Task must say why in Task.statusReason"),
        )
    };
    let command = match status {
        "accepted" => Command::Accept(change),
        "rejected" if reason.is_none() => return Err(needs_reason("rejected")),
        "rejected" => Command::Reject(change),
        "in-progress" => Command::Start(change),
        "on-hold" => Command::Hold(change),
        "completed" => Command::Complete(change),
        "failed" if reason.is_none() => return Err(needs_reason("failed")),
        "failed" => Command::Fail(change),
        "cancelled" => Command::Cancel(closed()),
        "entered-in-error" => Command::EnterInError(closed()),
        other => {
            return Err(Issue::error(
                IssueCode::BusinessRule,
                format!("a provider cannot set a Task to {other:?}; it may set accepted, rejected, in-progress, on-hold, completed, failed, cancelled or entered-in-error"),
            )
            .at("Task.status"))
        }
    };
    Ok(Submission {
        referral,
        task: Some(TaskTarget { task_id, attempt }),
        command,
        resource_type: "Task",
    })
}

fn instrument_of(code: &Value, canonical_base: &str) -> Result<Instrument, Issue> {
    let system = crate::systems::outcome_instrument(canonical_base);
    let codings = code
        .get("coding")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for coding in &codings {
        let (Some(coding_system), Some(value)) = (
            coding.get("system").and_then(Value::as_str),
            coding.get("code").and_then(Value::as_str),
        ) else {
            continue;
        };
        if coding_system == system {
            return value.parse::<Instrument>().map_err(|_| {
                Issue::error(IssueCode::Value, format!("{value:?} is not an instrument of {system} (ucla-3, ons4, swemwbs, wemwbs, djg-6)"))
                    .at("Observation.code")
            });
        }
        if coding_system == crate::systems::SNOMED_CT {
            if let Some(instrument) = Instrument::ALL.into_iter().find(|instrument| {
                instrument
                    .snomed_code()
                    .is_some_and(|(snomed, _)| snomed == value)
            }) {
                return Ok(instrument);
            }
        }
    }
    Err(Issue::error(
        IssueCode::Value,
        format!("Observation.code names no instrument linkwork records: use {system} (ucla-3, ons4, swemwbs, wemwbs, djg-6) or SNOMED CT 718466001 / 718426000"),
    )
    .at("Observation.code"))
}

fn integer(value: Option<&Value>, expression: &str) -> Result<i64, Issue> {
    value
        .and_then(|value| value.get("valueInteger"))
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            required(
                expression,
                format!("{expression} must be a valueInteger score"),
            )
        })
}

fn timepoint(resource: &Value, canonical_base: &str) -> Result<Timepoint, Issue> {
    let url = format!("{canonical_base}/StructureDefinition/outcome-timepoint");
    let code = resource
        .get("extension")
        .and_then(Value::as_array)
        .and_then(|extensions| {
            extensions
                .iter()
                .find(|extension| extension["url"] == url.as_str())
        })
        .and_then(|extension| extension.get("valueCode").and_then(Value::as_str));
    match code {
        Some("baseline") => Ok(Timepoint::Baseline),
        Some("interim") => Ok(Timepoint::Interim),
        Some("follow-up") => Ok(Timepoint::FollowUp),
        Some(other) => Err(invalid("Observation.extension", format!("timepoint {other:?} is not baseline, interim or follow-up"))),
        None => Err(required("Observation.extension", format!("say when the measure was taken: extension {url} with valueCode baseline, interim or follow-up"))),
    }
}

fn observation(
    resource: &Value,
    provider: &ProviderId,
    canonical_base: &str,
    now: DateTime<Utc>,
) -> Result<Submission, Vec<Issue>> {
    let mut issues = Vec::new();
    let referral = based_on(resource, "Observation")
        .map_err(|issue| issues.push(issue))
        .ok();
    match resource.get("status").and_then(Value::as_str) {
        Some("final" | "amended" | "corrected") => {}
        other => issues.push(invalid(
            "Observation.status",
            format!("an outcome measure must be final (or amended/corrected), not {other:?}"),
        )),
    }
    let effective = date_time(resource, "effectiveDateTime", "Observation")
        .map_err(|issue| issues.push(issue))
        .ok();
    let timepoint = timepoint(resource, canonical_base)
        .map_err(|issue| issues.push(issue))
        .ok();
    let instrument = resource
        .get("code")
        .ok_or_else(|| {
            required(
                "Observation.code",
                "Observation.code must name the instrument",
            )
        })
        .and_then(|code| instrument_of(code, canonical_base))
        .map_err(|issue| issues.push(issue))
        .ok();
    let measure = instrument.and_then(|instrument| {
        let result = if instrument == Instrument::Ons4 {
            ons4(resource, canonical_base)
        } else {
            integer(Some(resource), "Observation.valueInteger").and_then(|score| {
                OutcomeMeasure::single(instrument, score).map_err(|error| {
                    Issue::error(IssueCode::Value, error.to_string()).at("Observation.valueInteger")
                })
            })
        };
        result.map_err(|issue| issues.push(issue)).ok()
    });
    match (referral, effective, timepoint, measure) {
        (Some(referral), Some(effective_at), Some(timepoint), Some(measure))
            if issues.is_empty() =>
        {
            // The same measure sent twice is the same Observation.
            let identity = resource
                .pointer("/identifier/0/value")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{timepoint:?}|{measure:?}|{effective_at}"));
            let observation_id = Uuid::new_v5(
                referral.as_uuid(),
                format!("observation\u{1f}{provider}\u{1f}{identity}").as_bytes(),
            );
            Ok(Submission {
                referral,
                task: None,
                command: Command::RecordOutcome(OutcomeRecorded {
                    referral_id: referral,
                    provider_id: provider.clone(),
                    observation_id,
                    timepoint,
                    measure,
                    effective_at,
                    occurred_at: now,
                }),
                resource_type: "Observation",
            })
        }
        _ => Err(issues),
    }
}

fn ons4(resource: &Value, canonical_base: &str) -> Result<OutcomeMeasure, Issue> {
    let components = resource
        .get("component")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let system = crate::systems::outcome_instrument(canonical_base);
    let item = |code: &str| -> Result<i64, Issue> {
        let found = components.iter().position(|component| {
            component
                .pointer("/code/coding")
                .and_then(Value::as_array)
                .is_some_and(|codings| {
                    codings
                        .iter()
                        .any(|coding| coding["system"] == system.as_str() && coding["code"] == code)
                })
        });
        match found {
            Some(index) => integer(
                components.get(index),
                &format!("Observation.component[{index}].valueInteger"),
            ),
            None => Err(required(
                "Observation.component",
                format!("ONS4 needs a component {code} ({system})"),
            )),
        }
    };
    let life_satisfaction = item("ons4-life-satisfaction")?;
    let worthwhile = item("ons4-worthwhile")?;
    let happiness = item("ons4-happiness")?;
    let anxiety = item("ons4-anxiety")?;
    OutcomeMeasure::ons4(life_satisfaction, worthwhile, happiness, anxiety).map_err(|error| {
        Issue::error(IssueCode::Value, error.to_string()).at("Observation.component")
    })
}

fn contact(
    resource: &Value,
    provider: &ProviderId,
    now: DateTime<Utc>,
) -> Result<Submission, Issue> {
    let referral = based_on(resource, "Communication")?;
    let contact_at = date_time(resource, "sent", "Communication")?;
    let medium = resource
        .pointer("/medium/0/coding/0/code")
        .and_then(Value::as_str)
        .ok_or_else(|| required("Communication.medium", "Communication.medium must say how (v3 ParticipationMode: PHONE, FACE, VIDEOCONF, WRITTEN, ELECTRONIC)"))?;
    let mode = match medium {
        "PHONE" => ContactMode::Phone,
        "FACE" => ContactMode::InPerson,
        "VIDEOCONF" => ContactMode::Video,
        "WRITTEN" | "MAILWRIT" => ContactMode::Letter,
        "ELECTRONIC" | "EMAILWRIT" | "SMSWRIT" => ContactMode::Message,
        other => {
            return Err(Issue::error(IssueCode::Value, format!("{other:?} is not a contact medium linkwork records (PHONE, FACE, VIDEOCONF, WRITTEN, ELECTRONIC)"))
                .at("Communication.medium[0].coding[0].code"))
        }
    };
    Ok(Submission {
        referral,
        task: None,
        command: Command::RecordContact(ContactRecorded {
            referral_id: referral,
            provider_id: provider.clone(),
            contact_at,
            mode,
            occurred_at: now,
        }),
        resource_type: "Communication",
    })
}

fn activity(
    resource: &Value,
    provider: &ProviderId,
    canonical_base: &str,
    now: DateTime<Utc>,
) -> Result<Submission, Issue> {
    let referral = based_on(resource, "Procedure")?;
    let name = resource
        .pointer("/code/text")
        .and_then(Value::as_str)
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            required(
                "Procedure.code.text",
                "Procedure.code.text must name the group or service attended",
            )
        })?;
    let system = format!("{canonical_base}/CodeSystem/activity-kind");
    let kind = match resource.pointer("/category/coding/0/code").and_then(Value::as_str) {
        Some("group") => ActivityKind::Group,
        Some("service") => ActivityKind::Service,
        Some("volunteering") => ActivityKind::Volunteering,
        Some("befriending") => ActivityKind::Befriending,
        _ => {
            return Err(required("Procedure.category", format!("Procedure.category must be one of group, service, volunteering, befriending ({system})")))
        }
    };
    let attended = date_time(resource, "performedDateTime", "Procedure")?;
    Ok(Submission {
        referral,
        task: None,
        command: Command::RecordActivity(ActivityAttended {
            referral_id: referral,
            provider_id: provider.clone(),
            activity_id: resource
                .pointer("/identifier/0/value")
                .and_then(Value::as_str)
                .map(str::to_owned),
            activity_name: name.trim().to_owned(),
            kind,
            attended_on: attended.date_naive(),
            occurred_at: now,
        }),
        resource_type: "Procedure",
    })
}

/// A Consent (to share outcomes for evaluation) given or withdrawn by `actor`: the
/// provider holding the referral or its referrer (the domain decides who may).
pub fn parse_consent(
    resource: &Value,
    actor: Actor,
    now: DateTime<Utc>,
) -> Result<Submission, Vec<Issue>> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return Err(vec![invalid(
            "resourceType",
            "POST /fhir/Consent takes a Consent",
        )]);
    }
    check::<resources::Consent>(resource, "Consent")?;
    consent(resource, actor, now).map_err(|issue| vec![issue])
}

fn consent(resource: &Value, actor: Actor, now: DateTime<Utc>) -> Result<Submission, Issue> {
    let data = resource
        .pointer("/provision/data/0/reference")
        .ok_or_else(|| {
            required(
                "Consent.provision.data",
                "Consent.provision.data[0].reference must reference the ServiceRequest",
            )
        })?;
    let referral = referral_reference(data, "Consent.provision.data[0].reference")?;
    let change = ConsentChange {
        referral_id: referral,
        scope: ConsentScope::Evaluation,
        recorded_by: actor,
        occurred_at: now,
    };
    let command = match resource.get("status").and_then(Value::as_str) {
        Some("active") => Command::GiveConsent(change),
        Some("inactive" | "rejected") => Command::WithdrawConsent(change),
        other => {
            return Err(invalid("Consent.status", format!("consent to share for evaluation is active (given) or inactive (withdrawn), not {other:?}")))
        }
    };
    Ok(Submission {
        referral,
        task: None,
        command,
        resource_type: "Consent",
    })
}

//! What the router puts on provider queues and on triage: FHIR R4 Bundles a
//! provider's case-management system (or a triage worker's tool) can act on.
//!
//! - A request (`provider.<id>.referrals`): a `collection` Bundle of the
//!   ServiceRequest, the Patient and a Task with status `requested`, owner the
//!   provider, `restriction.period.end` the acceptance deadline. The Task id is
//!   per routing attempt; the provider answers by updating that Task.
//! - A withdrawal (same topic): a Bundle with the same Task, status `cancelled`,
//!   when the referral is escalated elsewhere or cancelled by the referrer, so that
//!   no referral is active on two queues.
//! - Triage (`triage.referrals`): the ServiceRequest, the Patient and an unowned Task
//!   whose notes give why no provider could take it, candidate by candidate.
//!
//! Resources inside refer to each other by `urn:uuid:` full URLs.

use chrono::{DateTime, SecondsFormat, Utc};
use linkwork_domain::event::{CandidateAssessment, Priority, ReferralReceived};
use linkwork_domain::{ProviderId, ReferralId, ResourceJson};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

/// Names the provider in Task.owner and ServiceRequest.performer.
#[derive(Debug, Clone)]
pub struct ProviderRef<'a> {
    pub id: &'a ProviderId,
    pub name: &'a str,
}

/// One routing attempt, as the request Bundle tells it.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub number: u32,
    pub accept_by: DateTime<Utc>,
    pub routed_at: DateTime<Utc>,
    /// The rule that chose the provider, in words.
    pub rule: &'a str,
}

/// The request Bundle for a routing attempt.
pub fn provider_request(
    bundle_id: Uuid,
    received: &ReferralReceived,
    provider: &ProviderRef<'_>,
    attempt: &Attempt<'_>,
    canonical_base: &str,
) -> Collection {
    let Attempt {
        number: attempt,
        accept_by,
        routed_at,
        rule,
    } = *attempt;
    let referral = received.referral_id;
    let owner = provider_reference(provider, canonical_base);
    let service_request = service_request(received, Some(json!([owner.clone()])));
    let task = json!({
        "resourceType": "Task",
        "id": referral.task_id(attempt).to_string(),
        "identifier": [{
            "system": format!("{canonical_base}/Id/routing-attempt"),
            "value": format!("{referral}/{attempt}"),
        }],
        "status": "requested",
        "intent": "order",
        "priority": priority(received.priority),
        "code": { "coding": [{
            "system": linkwork_fhir::systems::TASK_CODE,
            "code": "fulfill",
            "display": "Fulfill the focal request",
        }]},
        "focus": { "reference": urn(referral.as_uuid()) },
        "for": { "reference": urn(&referral.patient_id()) },
        "authoredOn": instant(routed_at),
        "lastModified": instant(routed_at),
        "requester": requester(received, canonical_base),
        "owner": owner,
        "restriction": { "period": { "end": instant(accept_by) } },
        "note": [{ "text": format!("Routed by linkwork (attempt {attempt}): {rule}") }],
    });
    collection(
        bundle_id,
        routed_at,
        vec![
            entry(referral.as_uuid(), Part::Received(service_request)),
            entry(&referral.patient_id(), patient(received)),
            entry(&referral.task_id(attempt), Part::Built(task)),
        ],
    )
}

/// Withdraws attempt `attempt` from the provider: its Task, cancelled, with why.
pub fn provider_withdrawal(
    bundle_id: Uuid,
    referral: ReferralId,
    provider: &ProviderRef<'_>,
    attempt: u32,
    reason: &str,
    at: DateTime<Utc>,
    canonical_base: &str,
) -> Collection {
    let task = json!({
        "resourceType": "Task",
        "id": referral.task_id(attempt).to_string(),
        "identifier": [{
            "system": format!("{canonical_base}/Id/routing-attempt"),
            "value": format!("{referral}/{attempt}"),
        }],
        "status": "cancelled",
        "statusReason": { "text": reason },
        "intent": "order",
        "focus": { "reference": format!("ServiceRequest/{referral}") },
        "lastModified": instant(at),
        "owner": provider_reference(provider, canonical_base),
    });
    collection(
        bundle_id,
        at,
        vec![entry(&referral.task_id(attempt), Part::Built(task))],
    )
}

/// The triage Bundle: the referral and why nobody could take it.
pub fn triage(
    bundle_id: Uuid,
    received: &ReferralReceived,
    reasons: &[String],
    candidates: &[CandidateAssessment],
    directory_version: &str,
    at: DateTime<Utc>,
    canonical_base: &str,
) -> Collection {
    let referral = received.referral_id;
    let mut notes: Vec<Value> = reasons
        .iter()
        .map(|reason| json!({ "text": reason }))
        .collect();
    notes.push(json!({ "text": format!("Directory version {directory_version}") }));
    for candidate in candidates {
        notes.push(json!({ "text": format!(
            "{}: {}",
            candidate.provider_id,
            if candidate.excluded_because.is_empty() {
                "eligible".to_owned()
            } else {
                candidate.excluded_because.join("; ")
            }
        )}));
    }
    let task_id = Uuid::new_v5(referral.as_uuid(), b"triage");
    let task = json!({
        "resourceType": "Task",
        "id": task_id.to_string(),
        "status": "requested",
        "businessStatus": { "text": "no eligible provider" },
        "intent": "order",
        "priority": priority(received.priority),
        "code": { "coding": [{
            "system": linkwork_fhir::systems::TASK_CODE,
            "code": "fulfill",
        }]},
        "focus": { "reference": urn(referral.as_uuid()) },
        "for": { "reference": urn(&referral.patient_id()) },
        "authoredOn": instant(at),
        "requester": requester(received, canonical_base),
        "note": notes,
    });
    collection(
        bundle_id,
        at,
        vec![
            entry(
                referral.as_uuid(),
                Part::Received(service_request(received, None)),
            ),
            entry(&referral.patient_id(), patient(received)),
            entry(&task_id, Part::Built(task)),
        ],
    )
}

/// A `collection` Bundle, written straight from its parts: the received ServiceRequest
/// and Patient go out as text, never as trees.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collection {
    resource_type: &'static str,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    entry: Vec<Entry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    full_url: String,
    resource: Part,
}

/// A resource in a Bundle: built here as a tree, or the received text edited.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Part {
    Built(Value),
    Received(ResourceJson),
}

fn collection(id: Uuid, at: DateTime<Utc>, entries: Vec<Entry>) -> Collection {
    Collection {
        resource_type: "Bundle",
        id: id.to_string(),
        kind: "collection",
        timestamp: instant(at),
        entry: entries,
    }
}

fn entry(id: &Uuid, resource: Part) -> Entry {
    Entry {
        full_url: urn(id),
        resource,
    }
}

fn urn(id: &Uuid) -> String {
    format!("urn:uuid:{id}")
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn priority(priority: Priority) -> &'static str {
    match priority {
        Priority::Routine => "routine",
        Priority::Urgent => "urgent",
        Priority::Asap => "asap",
        Priority::Stat => "stat",
    }
}

fn provider_reference(provider: &ProviderRef<'_>, canonical_base: &str) -> Value {
    json!({
        "type": "Organization",
        "identifier": { "system": format!("{canonical_base}/Id/provider"), "value": provider.id.as_str() },
        "display": provider.name,
    })
}

fn requester(received: &ReferralReceived, canonical_base: &str) -> Value {
    let mut requester = json!({
        "identifier": { "system": format!("{canonical_base}/Id/source"), "value": received.source.to_string() },
    });
    if let Some(display) = &received.requester {
        requester["display"] = json!(display);
    }
    requester
}

/// The ServiceRequest as received, its subject pointing at the Patient of the Bundle
/// (a contained Patient moves out into the Bundle), with `performer` when given.
fn service_request(received: &ReferralReceived, performer: Option<Value>) -> ResourceJson {
    let sent = &received.service_request;
    // `None` when it is not an object; `Some(None)` when it has no `contained`.
    let contained = sent.members().map(|members| {
        let (_, text) = members.into_iter().find(|(name, _)| name == "contained")?;
        let items: Vec<&RawValue> = serde_json::from_str(text.get()).unwrap_or_default();
        Some(
            items
                .into_iter()
                .filter(|item| !is_patient(item))
                .filter_map(|item| serde_json::from_str::<Value>(item.get()).ok())
                .collect::<Vec<Value>>(),
        )
    });
    let mut subject = json!({ "reference": urn(&received.referral_id.patient_id()) });
    if let Some(nhs_number) = &received.subject.nhs_number {
        subject["identifier"] = json!({
            "system": linkwork_fhir::systems::NHS_NUMBER,
            "value": nhs_number.to_string(),
        });
    }
    let resource_type = json!("ServiceRequest");
    let id = json!(received.referral_id.to_string());
    let mut replace = vec![
        ("resourceType", &resource_type),
        ("id", &id),
        ("subject", &subject),
    ];
    if let Some(performer) = &performer {
        replace.push(("performer", performer));
    }
    let Some(contained) = contained else {
        // Not an object: the ServiceRequest is what linkwork knows of it.
        let built: serde_json::Map<String, Value> = replace
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).clone()))
            .collect();
        return ResourceJson::from_value(&Value::Object(built));
    };
    let kept = contained.map(Value::Array);
    let mut remove = Vec::new();
    match &kept {
        Some(Value::Array(items)) if items.is_empty() => remove.push("contained"),
        Some(kept) => replace.push(("contained", kept)),
        None => {}
    }
    sent.edited(&replace, &remove)
}

/// Whether a contained resource is a Patient.
fn is_patient(resource: &RawValue) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Kind<'a> {
        #[serde(borrow)]
        resource_type: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Kind<'_>>(resource.get())
        .is_ok_and(|kind| kind.resource_type.as_deref() == Some("Patient"))
}

/// The Patient as sent when there was one, else built from the referral's subject.
fn patient(received: &ReferralReceived) -> Part {
    let id = received.referral_id.patient_id().to_string();
    if let Some(sent) = &received.patient {
        if sent.members().is_some() {
            return Part::Received(
                sent.with(&[("resourceType", &json!("Patient")), ("id", &json!(id))]),
            );
        }
    }
    let subject = &received.subject;
    let mut patient = json!({ "resourceType": "Patient", "id": id });
    if let Some(nhs_number) = &subject.nhs_number {
        patient["identifier"] = json!([{
            "system": linkwork_fhir::systems::NHS_NUMBER,
            "value": nhs_number.to_string(),
        }]);
    }
    if let Some(name) = &subject.name {
        let mut human = json!({});
        if !name.given.is_empty() {
            human["given"] = json!(name.given);
        }
        if let Some(family) = &name.family {
            human["family"] = json!(family);
        }
        patient["name"] = json!([human]);
    }
    if let Some(born) = subject.birth_date {
        patient["birthDate"] = json!(born.to_string());
    }
    if let Some(postcode) = &subject.postcode {
        patient["address"] = json!([{ "postalCode": postcode.as_str() }]);
    }
    if let Some(language) = &subject.language {
        patient["communication"] = json!([{
            "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": language }] },
            "preferred": true,
        }]);
    }
    Part::Built(patient)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use linkwork_domain::event::{Identifier, Subject};
    use linkwork_domain::{Need, NhsNumber, Source};

    use super::*;

    const BASE: &str = "https://linkwork.example";

    fn received(service_request: Value, patient: Option<Value>) -> ReferralReceived {
        let source = Source::parse("gp:A81001").expect("source");
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
        ReferralReceived {
            referral_id: ReferralId::derive(&source, "https://gp.example/referrals", "R-7"),
            source,
            source_identifier: Identifier {
                system: "https://gp.example/referrals".into(),
                value: "R-7".into(),
            },
            subject: Subject {
                nhs_number: Some(NhsNumber::parse("9990000018").expect("NHS number")),
                name: None,
                birth_date: None,
                postcode: None,
                language: None,
            },
            needs: vec![Need::Loneliness],
            requester: Some("Dr Ada Finch".into()),
            priority: Priority::Urgent,
            authored_on: at,
            asc_case_id: None,
            content_hash: "h".into(),
            service_request: service_request.into(),
            patient: patient.map(Into::into),
            national_data_opt_out: false,
            submitted_by: None,
            sealed: None,
            occurred_at: at,
        }
    }

    fn request(received: &ReferralReceived) -> Value {
        let provider_id = ProviderId::parse("connectors").expect("provider id");
        let at = received.occurred_at;
        let bundle = provider_request(
            Uuid::nil(),
            received,
            &ProviderRef {
                id: &provider_id,
                name: "Connectors",
            },
            &Attempt {
                number: 1,
                accept_by: at,
                routed_at: at,
                rule: "nearest",
            },
            BASE,
        );
        // What goes on the queue is the serialized text; read it back as a reader would.
        serde_json::from_slice(&serde_json::to_vec(&bundle).expect("serializes")).expect("JSON")
    }

    #[test]
    fn the_request_carries_the_service_request_as_sent_with_its_patient_moved_out_and_the_provider_as_performer(
    ) {
        let received = received(
            json!({
                "resourceType": "ServiceRequest",
                "id": "gp-own-id",
                "status": "active",
                "contained": [
                    { "resourceType": "Patient", "id": "pat", "name": [{ "family": "Quill" }] },
                    { "resourceType": "Practitioner", "id": "doc", "name": [{ "family": "Finch" }] },
                ],
                "subject": { "reference": "#pat" },
                "note": [{ "text": "lives alone, \"prefers\" mornings \u{e9}" }],
            }),
            Some(
                json!({ "resourceType": "Patient", "id": "pat", "name": [{ "family": "Quill" }] }),
            ),
        );
        let bundle = request(&received);
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "collection");
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 3);
        let referral = received.referral_id;
        let service_request = &entries[0]["resource"];
        assert_eq!(entries[0]["fullUrl"], format!("urn:uuid:{referral}"));
        assert_eq!(service_request["resourceType"], "ServiceRequest");
        assert_eq!(service_request["id"], referral.to_string());
        assert_eq!(service_request["status"], "active");
        assert_eq!(
            service_request["note"][0]["text"],
            "lives alone, \"prefers\" mornings \u{e9}"
        );
        assert_eq!(
            service_request["contained"],
            json!([{ "resourceType": "Practitioner", "id": "doc", "name": [{ "family": "Finch" }] }])
        );
        assert_eq!(
            service_request["subject"],
            json!({
                "reference": format!("urn:uuid:{}", referral.patient_id()),
                "identifier": { "system": linkwork_fhir::systems::NHS_NUMBER, "value": "9990000018" },
            })
        );
        assert_eq!(
            service_request["performer"][0]["identifier"]["value"],
            "connectors"
        );
        let patient = &entries[1]["resource"];
        assert_eq!(
            *patient,
            json!({
                "resourceType": "Patient",
                "id": referral.patient_id().to_string(),
                "name": [{ "family": "Quill" }],
            })
        );
        assert_eq!(entries[2]["resource"]["resourceType"], "Task");
        assert_eq!(entries[2]["resource"]["priority"], "urgent");
    }

    #[test]
    fn a_contained_patient_alone_leaves_no_contained_list_and_no_patient_sent_builds_one_from_the_subject(
    ) {
        let received = received(
            json!({
                "resourceType": "ServiceRequest",
                "contained": [{ "resourceType": "Patient", "id": "pat" }],
                "subject": { "reference": "#pat" },
            }),
            None,
        );
        let bundle = request(&received);
        let service_request = &bundle["entry"][0]["resource"];
        assert!(
            service_request.get("contained").is_none(),
            "{service_request}"
        );
        assert_eq!(
            bundle["entry"][1]["resource"]["identifier"][0]["value"],
            "9990000018"
        );
    }

    #[test]
    fn a_service_request_that_is_not_an_object_still_gives_a_well_formed_request() {
        let received = received(json!("not an object"), Some(json!(42)));
        let bundle = request(&received);
        let service_request = &bundle["entry"][0]["resource"];
        assert_eq!(service_request["resourceType"], "ServiceRequest");
        assert_eq!(service_request["id"], received.referral_id.to_string());
        assert_eq!(bundle["entry"][1]["resource"]["resourceType"], "Patient");
    }

    #[test]
    fn triage_carries_the_referral_and_every_reason() {
        let received = received(
            json!({ "resourceType": "ServiceRequest", "status": "active" }),
            None,
        );
        let candidate = CandidateAssessment {
            provider_id: ProviderId::parse("connectors").expect("provider id"),
            eligible: false,
            excluded_because: vec!["full".into()],
        };
        let bundle = triage(
            Uuid::nil(),
            &received,
            &["no provider covers LW9".into()],
            &[candidate],
            "v7",
            received.occurred_at,
            BASE,
        );
        let bundle: Value = serde_json::to_value(&bundle).expect("serializes");
        assert_eq!(bundle["entry"][0]["resource"]["status"], "active");
        let notes: Vec<&str> = bundle["entry"][2]["resource"]["note"]
            .as_array()
            .expect("notes")
            .iter()
            .filter_map(|note| note["text"].as_str())
            .collect();
        assert_eq!(
            notes,
            [
                "no provider covers LW9",
                "Directory version v7",
                "connectors: full"
            ]
        );
    }
}

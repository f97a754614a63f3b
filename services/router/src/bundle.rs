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
use linkwork_domain::{ProviderId, ReferralId};
use serde_json::{json, Map, Value};
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
) -> Value {
    let Attempt {
        number: attempt,
        accept_by,
        routed_at,
        rule,
    } = *attempt;
    let referral = received.referral_id;
    let owner = provider_reference(provider, canonical_base);
    let mut service_request = service_request(received);
    service_request.insert("performer".into(), json!([owner.clone()]));
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
            entry(referral.as_uuid(), Value::Object(service_request)),
            entry(&referral.patient_id(), patient(received)),
            entry(&referral.task_id(attempt), task),
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
) -> Value {
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
    collection(bundle_id, at, vec![entry(&referral.task_id(attempt), task)])
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
) -> Value {
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
            entry(referral.as_uuid(), Value::Object(service_request(received))),
            entry(&referral.patient_id(), patient(received)),
            entry(&task_id, task),
        ],
    )
}

fn collection(id: Uuid, at: DateTime<Utc>, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": id.to_string(),
        "type": "collection",
        "timestamp": instant(at),
        "entry": entries,
    })
}

fn entry(id: &Uuid, resource: Value) -> Value {
    json!({ "fullUrl": urn(id), "resource": resource })
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
/// (a contained Patient moves out into the Bundle).
fn service_request(received: &ReferralReceived) -> Map<String, Value> {
    let mut resource = match &received.service_request {
        Value::Object(object) => object.clone(),
        _ => Map::new(),
    };
    resource.insert("resourceType".into(), json!("ServiceRequest"));
    resource.insert("id".into(), json!(received.referral_id.to_string()));
    if let Some(Value::Array(contained)) = resource.get_mut("contained") {
        contained.retain(|item| item["resourceType"] != "Patient");
        if contained.is_empty() {
            resource.remove("contained");
        }
    }
    let mut subject = json!({ "reference": urn(&received.referral_id.patient_id()) });
    if let Some(nhs_number) = &received.subject.nhs_number {
        subject["identifier"] = json!({
            "system": linkwork_fhir::systems::NHS_NUMBER,
            "value": nhs_number.to_string(),
        });
    }
    resource.insert("subject".into(), subject);
    resource
}

/// The Patient as sent when there was one, else built from the referral's subject.
fn patient(received: &ReferralReceived) -> Value {
    let id = received.referral_id.patient_id().to_string();
    if let Some(Value::Object(sent)) = &received.patient {
        let mut sent = sent.clone();
        sent.insert("resourceType".into(), json!("Patient"));
        sent.insert("id".into(), json!(id));
        return Value::Object(sent);
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
    patient
}

//! The borough's referrals as real FHIR R4: a ServiceRequest with a contained Patient,
//! a BaRS message Bundle, a batch Bundle.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::*;

impl Borough {
    /// When a referral is written (its `authoredOn`).
    pub fn authored(&self, referral: &Referral) -> DateTime<Utc> {
        self.start + Duration::days(i64::from(referral.day))
    }

    /// The referral as a FHIR R4 ServiceRequest with the person as a contained
    /// Patient (the self-referral and contact-centre rules need name, birth date and
    /// postcode; professional sources also name a requester).
    pub fn service_request(&self, referral: &Referral, canonical_base: &str) -> Value {
        let person = &self.people[referral.person];
        let reasons: Vec<Value> = referral
            .needs
            .iter()
            .map(|need| {
                json!({ "coding": [{ "system": format!("{canonical_base}/CodeSystem/need"), "code": need.code() }] })
            })
            .collect();
        let mut identifiers = vec![json!({
            "system": reference_system(&referral.source),
            "value": referral.reference,
        })];
        if let Some(case) = &referral.asc_case {
            identifiers
                .push(json!({ "system": format!("{canonical_base}/Id/asc-case"), "value": case }));
        }
        let mut request = json!({
            "resourceType": "ServiceRequest",
            "identifier": identifiers,
            "contained": [{
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": person.nhs_number.to_string() }],
                "name": [{ "family": person.family, "given": [person.given] }],
                "birthDate": person.birth_date.to_string(),
                "address": [{ "line": [person.street], "city": "Linkwick", "postalCode": person.postcode }],
                "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": person.language }] }, "preferred": true }],
            }],
            "status": "active",
            "intent": "order",
            "priority": "routine",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "871731000000106", "display": "Referral to social prescribing service" }] },
            "reasonCode": reasons,
            "subject": { "reference": "#patient" },
            "authoredOn": self.authored(referral).to_rfc3339(),
        });
        if referral.source != "self" {
            request["requester"] = json!({ "display": requester(&referral.source) });
        }
        request
    }
}

impl Borough {
    /// The referral as an NHS BaRS `servicerequest-request` message to linkwork's
    /// router, the Patient a separate entry referenced by `urn:uuid:`.
    pub fn bars_message(&self, referral: &Referral, canonical_base: &str) -> Value {
        let mut request = self.service_request(referral, canonical_base);
        let patient = request["contained"][0].clone();
        let id = |part: &str| {
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!("linkwick/{}/{part}", referral.reference).as_bytes(),
            )
        };
        let (header, request_url, patient_url) = (id("header"), id("request"), id("patient"));
        if let Some(fields) = request.as_object_mut() {
            fields.remove("contained");
            fields.insert(
                "subject".into(),
                json!({ "reference": format!("urn:uuid:{patient_url}") }),
            );
            fields.insert("intent".into(), json!("plan"));
        }
        let mut patient = patient;
        if let Some(fields) = patient.as_object_mut() {
            fields.remove("id");
        }
        let at = self.authored(referral).to_rfc3339();
        json!({
            "resourceType": "Bundle",
            "id": id("bundle").to_string(),
            "meta": { "lastUpdated": at, "profile": ["https://fhir.nhs.uk/StructureDefinition/BARSBundleMessage"] },
            "type": "message",
            "timestamp": at,
            "entry": [
                { "fullUrl": format!("urn:uuid:{header}"), "resource": {
                    "resourceType": "MessageHeader",
                    "eventCoding": { "system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-request" },
                    "destination": [{ "endpoint": format!("{canonical_base}/Id/service|router") }],
                    "source": { "name": "Linkwick General Hospital", "endpoint": "https://linkwick-general.example/bars" },
                    "reason": { "coding": [{ "system": "https://fhir.nhs.uk/CodeSystem/message-reason-bars", "code": "new" }] },
                    "focus": [{ "reference": format!("urn:uuid:{request_url}") }],
                }},
                { "fullUrl": format!("urn:uuid:{request_url}"), "resource": request },
                { "fullUrl": format!("urn:uuid:{patient_url}"), "resource": patient },
            ],
        })
    }

    /// Referrals from one practice as a `batch` Bundle of POSTs.
    pub fn batch_bundle(&self, referrals: &[&Referral], canonical_base: &str) -> Value {
        let entries: Vec<Value> = referrals
            .iter()
            .map(|referral| {
                json!({
                    "resource": self.service_request(referral, canonical_base),
                    "request": { "method": "POST", "url": "ServiceRequest" },
                })
            })
            .collect();
        json!({ "resourceType": "Bundle", "type": "batch", "entry": entries })
    }
}

fn requester(source: &str) -> String {
    match source.split(':').next() {
        Some("gp") => format!(
            "Social prescribing link worker, {}",
            source.trim_start_matches("gp:")
        ),
        Some("hospital") => "Discharge team, Linkwick General Hospital".to_owned(),
        Some("asc") => "Adult Social Care duty team".to_owned(),
        Some("contact-centre") => "Linkwick Council contact centre".to_owned(),
        _ => "Linkwick Age Concern".to_owned(),
    }
}

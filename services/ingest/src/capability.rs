//! The CapabilityStatement: what this server actually does, and nothing more.

use serde_json::{json, Value};

/// What linkwork's FHIR API serves: intake, the provider loop and the read API.
pub fn statement(base_url: &str, software_version: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "linkwork",
        "kind": "instance",
        "software": {"name": "linkwork", "version": software_version},
        "implementation": {
            "description": "linkwork intake: social-prescribing referrals from GP practices, hospitals, the council \
                            contact centre, Adult Social Care and self-referral",
            "url": base_url
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Referrals are ServiceRequests with status active, an identifier, the social \
                              prescribing code (SNOMED CT 871731000000106), a reason mapped to a need, authoredOn, \
                              a requester for professional sources, and a subject identified by NHS number (or, for \
                              self-referral and the contact centre, name, birth date and postcode). Refusals are \
                              OperationOutcomes naming each element at fault. A resubmission of the same referral \
                              answers 200 with the same id; the same identifier with other content is 409.",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}],
                "description": "Bearer JWT; scope referral:submit to send referrals, call-log:submit to send the ASC call log, referral:respond for providers' updates, referral:read to read, admin for the audit trail"
            },
            "resource": [{
                "type": "ServiceRequest",
                "interaction": [{"code": "create"}, {"code": "read"}, {"code": "history-instance"}, {"code": "search-type"}],
                "conditionalCreate": false,
                "searchParam": [
                    {"name": "subject:identifier", "type": "token", "documentation": "NHS number (https://fhir.nhs.uk/Id/nhs-number|<number>), only in the form body of POST /fhir/ServiceRequest/_search: a URL carrying it is refused (400, issue code security); the searchset's links leave it out and name the POST endpoint, to which the form is posted again"},
                    {"name": "performer", "type": "reference", "documentation": "the provider's directory id"},
                    {"name": "status", "type": "token", "documentation": "linkwork's referral status (requested, accepted, in-progress, ...)"},
                    {"name": "_count", "type": "number", "documentation": "page size, at most 100; next links page on"}
                ],
                "documentation": "create: 201 with Location and the stored ServiceRequest (id = linkwork's referral id). \
                                  read and _history: the status follows the referral's life, one version per event; \
                                  only the referrer, the provider holding the referral and administrators read it."
            }, {
                "type": "Task",
                "interaction": [{"code": "read"}, {"code": "update"}, {"code": "patch"}],
                "documentation": "One Task per routing attempt, owned by the provider. PUT by that provider, or PATCH \
                                  with a JSON Patch (application/json-patch+json), moves it along the lifecycle \
                                  (accepted, rejected with statusReason, in-progress, on-hold, completed, failed with \
                                  statusReason, cancelled, entered-in-error); anything else is 409. Providers' systems \
                                  may send the same Task on the provider.responses topic instead."
            }, {
                "type": "Observation",
                "interaction": [{"code": "create"}, {"code": "search-type"}],
                "searchParam": [{"name": "based-on", "type": "reference"}],
                "documentation": "Outcome measures (UCLA-3, ONS4, SWEMWBS, WEMWBS, De Jong Gierveld 6) by the provider \
                                  holding the referral, basedOn its ServiceRequest, with the outcome-timepoint extension."
            }, {
                "type": "Communication",
                "interaction": [{"code": "create"}],
                "documentation": "A contact with the person (sent, medium), basedOn the ServiceRequest."
            }, {
                "type": "Procedure",
                "interaction": [{"code": "create"}],
                "documentation": "An activity attended (code.text, category group|service|volunteering|befriending, performedDateTime)."
            }, {
                "type": "Consent",
                "interaction": [{"code": "create"}],
                "documentation": "Consent to share pseudonymised outcomes for evaluation: active (given) or inactive (withdrawn), \
                                  the ServiceRequest in provision.data; by the provider holding the referral, its referrer, \
                                  or the person through a per-submission self-referral identity."
            }, {
                "type": "AuditEvent",
                "interaction": [{"code": "search-type"}],
                "searchParam": [
                    {"name": "patient", "type": "reference", "documentation": "Patient/<id>: linkwork's Patient id of a referral"},
                    {"name": "date", "type": "date", "documentation": "when recorded; prefixes eq, ge, gt, le, lt; may repeat"},
                    {"name": "agent", "type": "token", "documentation": "the client id that acted"},
                    {"name": "_count", "type": "number", "documentation": "page size, at most 500"}
                ],
                "documentation": "Administrators only. One AuditEvent (IHE Basic Audit Log Patterns) per read, search, \
                                  create and update of identifiable data, refused attempts included, newest first."
            }, {
                "type": "Patient",
                "operation": [{
                    "name": "erase",
                    "definition": format!("{base_url}/OperationDefinition/Patient-erase"),
                    "documentation": "Administrators only. POST a Parameters naming the person by nhsNumber or by one \
                                      of their referrals (referral): their data key is destroyed (crypto-shredding), \
                                      what identified them is redacted from the read models and outbound topics get \
                                      a redaction notice. Answers Parameters: keyDestroyed, and each referral redacted."
                }]
            }],
            "interaction": [
                {"code": "batch", "documentation": "POST /fhir: each ServiceRequest entry independent"},
                {"code": "transaction", "documentation": "POST /fhir: all or nothing; entries may carry the Patients and Practitioners referrals point at"}
            ],
            "operation": [{
                "name": "process-message",
                "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                "documentation": "NHS BaRS servicerequest-request messages: reason new takes a referral, reason update \
                                  with ServiceRequest status revoked or entered-in-error withdraws it. Bookings are \
                                  not supported."
            }]
        }]
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_capability_statement_is_valid_fhir_r4() {
        let statement = super::statement("https://linkwork.example", "0.1.0");
        let parsed = linkwork_fhir::parse::typed::<
            linkwork_fhir::fhir_model::r4b::resources::CapabilityStatement,
        >(&statement, "CapabilityStatement");
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}

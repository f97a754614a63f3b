//! The rules of a referral, one at a time, on a synthetic GP referral.

use chrono::TimeZone;
use serde_json::{json, Value};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
}

fn gp() -> Source {
    Source::parse("gp:A81001").unwrap()
}

/// A valid GP referral with a contained, invented Patient (synthetic NHS number).
fn referral() -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://gp.example/referrals", "value": "R-1"}],
        "contained": [{
            "resourceType": "Patient", "id": "p",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
            "name": [{"family": "Brightwater", "given": ["Ada"]}],
            "birthDate": "1941-05-06",
            "address": [{"postalCode": "ls1 4ap"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}}]
        }],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106"}]},
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "422650009"}]},
                       {"coding": [{"system": "https://linkwork.example/fhir/CodeSystem/need", "code": "bereavement"}]}],
        "subject": {"reference": "#p"},
        "authoredOn": "2026-03-01T10:00:00Z",
        "requester": {"display": "Dr Example, Townley Surgery"}
    })
}

fn check(value: &Value, source: &Source) -> Result<ValidatedReferral, Vec<Issue>> {
    let located = Located {
        resource: value,
        path: "ServiceRequest".into(),
        fallback_identifier: None,
    };
    let resolver = Resolver::new().with_contained(value, "ServiceRequest");
    validate(source, &located, &resolver, &IntakeRules::default(), now())
}

/// An edit that breaks one rule of the valid referral.
type Change = Box<dyn FnOnce(&mut Value)>;

fn expressions(issues: &[Issue]) -> Vec<String> {
    issues
        .iter()
        .flat_map(|issue| issue.expression.clone())
        .collect()
}

fn refused_at(mut value: Value, change: impl FnOnce(&mut Value), source: &Source) -> Vec<String> {
    change(&mut value);
    expressions(&check(&value, source).expect_err("should be refused"))
}

#[test]
fn a_valid_referral_maps_to_the_received_event() {
    let referral = check(&referral(), &gp()).unwrap();
    assert_eq!(
        referral.referral_id,
        ReferralId::derive(&gp(), "https://gp.example/referrals", "R-1")
    );
    assert_eq!(
        referral.needs,
        vec![Need::SocialIsolation, Need::Bereavement]
    );
    assert_eq!(
        referral.subject.nhs_number.unwrap().to_string(),
        "9990000018"
    );
    assert_eq!(
        referral.subject.postcode.as_ref().unwrap().as_str(),
        "LS1 4AP"
    );
    assert_eq!(referral.subject.language.as_deref(), Some("en"));
    assert_eq!(
        referral.requester.as_deref(),
        Some("Dr Example, Townley Surgery")
    );
    assert_eq!(
        referral.service_request.to_value()["id"],
        referral.referral_id.to_string()
    );
    assert_eq!(referral.patient.as_ref().unwrap()["id"], "p");
    let event = referral.into_event(now());
    assert_eq!(event.occurred_at, now());
}

#[test]
fn each_rule_names_the_element_at_fault() {
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "status",
            Box::new(|v| v["status"] = json!("draft")),
            "ServiceRequest.status",
        ),
        (
            "intent",
            Box::new(|v| v["intent"] = json!("proposal")),
            "ServiceRequest.intent",
        ),
        (
            "identifier",
            Box::new(|v| {
                v.as_object_mut()
                    .unwrap()
                    .remove("identifier")
                    .map(|_| ())
                    .unwrap()
            }),
            "ServiceRequest.identifier",
        ),
        (
            "code",
            Box::new(|v| v["code"]["coding"][0]["code"] = json!("303653007")),
            "ServiceRequest.code",
        ),
        (
            "reasons",
            Box::new(|v| v["reasonCode"] = json!([{"text": "lonely"}])),
            "ServiceRequest.reasonCode",
        ),
        (
            "authoredOn missing",
            Box::new(|v| {
                v.as_object_mut()
                    .unwrap()
                    .remove("authoredOn")
                    .map(|_| ())
                    .unwrap()
            }),
            "ServiceRequest.authoredOn",
        ),
        (
            "authoredOn future",
            Box::new(|v| v["authoredOn"] = json!("2026-04-01")),
            "ServiceRequest.authoredOn",
        ),
        (
            "authoredOn garbage",
            Box::new(|v| v["authoredOn"] = json!("yesterday")),
            "ServiceRequest.authoredOn",
        ),
        (
            "requester",
            Box::new(|v| {
                v.as_object_mut()
                    .unwrap()
                    .remove("requester")
                    .map(|_| ())
                    .unwrap()
            }),
            "ServiceRequest.requester",
        ),
        (
            "nhs number",
            Box::new(|v| v["contained"][0]["identifier"][0]["value"] = json!("9990000019")),
            "ServiceRequest.contained[0].identifier[0].value",
        ),
        (
            "nhs letters",
            Box::new(|v| v["contained"][0]["identifier"][0]["value"] = json!("99900000AB")),
            "ServiceRequest.contained[0].identifier[0].value",
        ),
        (
            "unresolved subject",
            Box::new(|v| v["subject"] = json!({"reference": "Patient/example"})),
            "ServiceRequest.subject.reference",
        ),
        (
            "subject not a patient",
            Box::new(|v| v["contained"][0]["resourceType"] = json!("Practitioner")),
            "ServiceRequest.subject.reference",
        ),
        (
            "postcode",
            Box::new(|v| v["contained"][0]["address"][0]["postalCode"] = json!("not a postcode")),
            "ServiceRequest.contained[0].address[0].postalCode",
        ),
        (
            "doNotPerform",
            Box::new(|v| v["doNotPerform"] = json!(true)),
            "ServiceRequest.doNotPerform",
        ),
    ];
    for (name, change, expected) in cases {
        let found = refused_at(referral(), change, &gp());
        assert!(
            found.iter().any(|expression| expression == expected),
            "{name}: expected {expected} in {found:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = refused_at(
        referral(),
        |v| {
            v["status"] = json!("draft");
            v["intent"] = json!("proposal");
            v.as_object_mut().unwrap().remove("authoredOn");
        },
        &gp(),
    );
    assert!(found.len() >= 3, "{found:?}");
}

#[test]
fn a_subject_identifier_with_an_nhs_number_is_enough() {
    let mut value = referral();
    value["subject"] = json!({"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "999 000 0026"}});
    let referral = check(&value, &gp()).unwrap();
    assert_eq!(
        referral.subject.nhs_number.unwrap().to_string(),
        "9990000026"
    );
    assert!(referral.patient.is_none());
}

#[test]
fn a_gp_referral_without_an_nhs_number_is_refused() {
    let found = refused_at(
        referral(),
        |v| {
            v["contained"][0]["identifier"] = json!([]);
            v["contained"][0]
                .as_object_mut()
                .unwrap()
                .remove("identifier");
        },
        &gp(),
    );
    assert_eq!(found, vec!["ServiceRequest.subject"]);
}

#[test]
fn a_self_referral_may_identify_by_name_birth_date_and_postcode() {
    let mut value = referral();
    value["contained"][0]
        .as_object_mut()
        .unwrap()
        .remove("identifier");
    value.as_object_mut().unwrap().remove("requester");
    let person = Source::parse("self").unwrap();
    let referral = check(&value, &person).unwrap();
    assert!(referral.subject.nhs_number.is_none());
    assert_eq!(
        referral.subject.name.unwrap().family.as_deref(),
        Some("Brightwater")
    );

    // Missing all three: each is named.
    for element in ["name", "birthDate", "address"] {
        value["contained"][0]
            .as_object_mut()
            .unwrap()
            .remove(element);
    }
    let found = expressions(&check(&value, &person).unwrap_err());
    for expected in [
        "ServiceRequest.contained[0].name",
        "ServiceRequest.contained[0].birthDate",
        "ServiceRequest.contained[0].address.postalCode",
    ] {
        assert!(
            found.contains(&expected.to_owned()),
            "{expected} in {found:?}"
        );
    }
}

#[test]
fn an_equivalent_code_configured_by_the_deployment_is_accepted() {
    let mut value = referral();
    value["code"] = json!({"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/message-category-servicerequest", "code": "referral"}]});
    assert!(check(&value, &gp()).is_err());
    let rules = IntakeRules {
        equivalent_codes: vec![(
            "https://fhir.nhs.uk/CodeSystem/message-category-servicerequest".into(),
            "referral".into(),
        )],
        ..IntakeRules::default()
    };
    let located = Located {
        resource: &value,
        path: "ServiceRequest".into(),
        fallback_identifier: None,
    };
    let resolver = Resolver::new().with_contained(&value, "ServiceRequest");
    assert!(validate(&gp(), &located, &resolver, &rules, now()).is_ok());
}

#[test]
fn the_content_hash_ignores_id_meta_and_narrative_but_not_content() {
    let base = content_hash(&referral(), None);
    let mut cosmetic = referral();
    cosmetic["id"] = json!("other");
    cosmetic["meta"] = json!({"lastUpdated": "2026-03-02T00:00:00Z"});
    cosmetic["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"});
    assert_eq!(content_hash(&cosmetic, None), base);
    let mut changed = referral();
    changed["priority"] = json!("urgent");
    assert_ne!(content_hash(&changed, None), base);
    // Key order does not matter.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string(&referral()).unwrap()).unwrap();
    assert_eq!(content_hash(&reordered, None), base);
}

/// The canonical form as first written (strings built and joined): receipts store
/// hashes of it, so a resubmission after an upgrade must hash the same.
fn canonical_as_first_written(value: &Value, top_level: bool) -> String {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields
                .keys()
                .filter(|key| !(top_level && matches!(key.as_str(), "id" | "meta" | "text")))
                .collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|key| {
                    format!(
                        "{}:{}",
                        Value::String(key.clone()),
                        canonical_as_first_written(&fields[key], false)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|item| canonical_as_first_written(item, false))
                .collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

#[test]
fn the_content_hash_is_the_one_stored_receipts_were_hashed_with() {
    let mut odd = referral();
    odd["note"] = json!([{"text": "quotes \" and \\ slashes, \u{e9}, tabs\t, \u{1F600}"}]);
    odd["extension"] = json!([{"url": "http://x", "valueDecimal": 1.50, "valueInteger": -3}]);
    odd["zzz"] = json!({"b": null, "a": [true, false, [], {}]});
    let patient = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Ng"}]});
    for (request, patient) in [
        (referral(), None),
        (odd.clone(), Some(&patient)),
        (odd, None),
    ] {
        let mut hasher = Sha256::new();
        hasher.update(canonical_as_first_written(&request, true).as_bytes());
        hasher.update([0u8]);
        if let Some(patient) = patient {
            hasher.update(canonical_as_first_written(patient, true).as_bytes());
        }
        let expected: String = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(content_hash(&request, patient), expected);
    }
}

#[test]
fn fhir_date_times_of_every_precision_parse() {
    assert_eq!(
        parse_date_time("2026"),
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(
        parse_date_time("2026-03"),
        Some(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap())
    );
    assert_eq!(
        parse_date_time("2026-03-02"),
        Some(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap())
    );
    assert_eq!(
        parse_date_time("2026-03-02T10:00:00+01:00"),
        Some(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap())
    );
    assert_eq!(
        parse_date_time("2026-03-02T10:00:00"),
        None,
        "a time needs a zone"
    );
    assert_eq!(parse_date_time("02/03/2026"), None);
}

#[test]
fn a_bars_message_is_read_whole_and_a_broken_envelope_is_refused() {
    let bundle = linkwork_testkit::bars_message("SYN-READ-MESSAGE", "new", "active");
    let referral = read_message(&gp(), &bundle, &IntakeRules::default(), now())
        .unwrap_or_else(|issues| panic!("{issues:?}"));
    assert_eq!(referral.identifier.value, "SYN-READ-MESSAGE");

    let mut broken = bundle.clone();
    broken["type"] = json!("collection");
    let issues = read_message(&gp(), &broken, &IntakeRules::default(), now()).unwrap_err();
    assert!(!issues.is_empty());
}

#[test]
fn a_national_data_opt_out_is_read_from_its_extension_and_a_bad_one_is_named() {
    let url = "https://linkwork.example/fhir/StructureDefinition/national-data-opt-out";
    assert!(!check(&referral(), &gp()).unwrap().national_data_opt_out);
    let mut value = referral();
    value["extension"] = json!([{ "url": url, "valueBoolean": true }]);
    let taken = check(&value, &gp()).unwrap();
    assert!(taken.national_data_opt_out);
    assert!(taken.into_event(chrono::Utc::now()).national_data_opt_out);
    value["extension"] = json!([{ "url": url, "valueString": "yes" }]);
    let refused = expressions(&check(&value, &gp()).unwrap_err());
    assert_eq!(refused, ["ServiceRequest.extension[0]"]);
}

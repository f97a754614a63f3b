//! The shared conformance corpus: real payloads written by others, handled as its
//! README says.

use chrono::{TimeZone, Utc};
use fhir_model::r4b::resources::{
    Bundle, MessageHeader, OperationOutcome, Patient, ServiceRequest, Task,
};
use linkwork_domain::Source;
use linkwork_fhir::message::{self, MessageReason};
use linkwork_fhir::{parse, referral, IntakeRules, IssueCode, Located, Resolver};
use linkwork_testkit::{conformance, conformance_files};
use serde_json::Value;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
}

fn parses_as(value: &Value) -> Result<(), Vec<linkwork_fhir::Issue>> {
    let root = parse::resource_type(value).unwrap_or("?").to_owned();
    match root.as_str() {
        "ServiceRequest" => parse::typed::<ServiceRequest>(value, &root).map(drop),
        "Task" => parse::typed::<Task>(value, &root).map(drop),
        "Patient" => parse::typed::<Patient>(value, &root).map(drop),
        "MessageHeader" => parse::typed::<MessageHeader>(value, &root).map(drop),
        "Bundle" => parse::typed::<Bundle>(value, &root).map(drop),
        "OperationOutcome" => parse::typed::<OperationOutcome>(value, &root).map(drop),
        other => panic!("no parser for {other}"),
    }
}

#[test]
fn every_fhir_r4_specification_example_parses_without_issues() {
    let files = conformance_files("fhir-r4");
    assert!(files.len() >= 9);
    for (name, bytes) in files {
        let value = parse::json(&bytes).unwrap_or_else(|issue| panic!("{name}: {issue:?}"));
        parses_as(&value).unwrap_or_else(|issues| panic!("{name}: {issues:#?}"));
    }
}

#[test]
fn the_bars_request_bundles_are_structurally_valid() {
    for name in [
        "bars/validation-request.bundle.json",
        "bars/booking-request.bundle.json",
    ] {
        parses_as(&conformance(name)).unwrap_or_else(|issues| panic!("{name}: {issues:#?}"));
    }
}

/// The specification's ServiceRequest examples are valid FHIR but not referrals
/// linkwork can accept: each refusal names the rule and the element.
#[test]
fn specification_service_requests_are_refused_by_rule_with_their_locations() {
    let gp = Source::parse("gp:A81001").unwrap();
    for (name, must_name) in [
        (
            "fhir-r4/servicerequest-example.json",
            vec![
                "ServiceRequest.status",
                "ServiceRequest.identifier",
                "ServiceRequest.authoredOn",
                "ServiceRequest.subject.reference",
            ],
        ),
        (
            "fhir-r4/servicerequest-example2.json",
            vec!["ServiceRequest.status", "ServiceRequest.code"],
        ),
        (
            "fhir-r4/servicerequest-example-edu.json",
            vec![
                "ServiceRequest.status",
                "ServiceRequest.code",
                "ServiceRequest.identifier",
            ],
        ),
    ] {
        let value = conformance(name);
        let located = Located {
            resource: &value,
            path: "ServiceRequest".into(),
            fallback_identifier: None,
        };
        let resolver = Resolver::new().with_contained(&value, "ServiceRequest");
        let issues = referral::validate(&gp, &located, &resolver, &IntakeRules::default(), now())
            .unwrap_err();
        let expressions: Vec<String> = issues
            .iter()
            .flat_map(|issue| issue.expression.clone())
            .collect();
        for expected in must_name {
            assert!(
                expressions.iter().any(|found| found == expected),
                "{name}: {expected} in {expressions:?}"
            );
        }
        assert!(issues
            .iter()
            .all(|issue| !issue.diagnostics.is_empty() && !issue.expression.is_empty()));
    }
}

#[test]
fn the_bars_validation_request_is_refused_naming_every_problem() {
    let bundle = conformance("bars/validation-request.bundle.json");
    let message = message::read(&bundle).expect("a well-formed BaRS message");
    assert_eq!(message.reason, MessageReason::New);
    assert_eq!(message.service_request.path, "Bundle.entry[1].resource");
    let hospital = Source::parse("hospital:RND").unwrap();
    let issues = referral::validate(
        &hospital,
        &message.service_request,
        &message.resolver,
        &IntakeRules::default(),
        now(),
    )
    .unwrap_err();
    let named = |expression: &str| {
        issues
            .iter()
            .find(|issue| issue.expression.iter().any(|found| found == expression))
    };
    let category =
        named("Bundle.entry[1].resource.category[0]").expect("the validation category is named");
    assert!(
        category.diagnostics.contains("validation request"),
        "{}",
        category.diagnostics
    );
    // The published example's NHS number 3478526985 fails Modulus 11.
    let nhs_number =
        named("Bundle.entry[5].resource.identifier[0].value").expect("the NHS number is named");
    assert!(
        nhs_number.diagnostics.contains("NHS number"),
        "{}",
        nhs_number.diagnostics
    );
    assert!(
        named("Bundle.entry[1].resource.code").is_some(),
        "not a social-prescribing referral either"
    );
}

#[test]
fn the_bars_booking_request_is_refused_as_not_supported() {
    let bundle = conformance("bars/booking-request.bundle.json");
    let issues = message::read(&bundle).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].code, IssueCode::NotSupported);
    assert_eq!(
        issues[0].expression,
        vec!["Bundle.entry[0].resource.eventCoding.code"]
    );
    assert!(issues[0].diagnostics.contains("booking"));
}

#[test]
fn the_malformed_bars_service_request_is_refused_naming_what_is_wrong() {
    let value = conformance("bars/invalid-servicerequest.json");
    let issues = parse::typed::<ServiceRequest>(&value, "ServiceRequest").unwrap_err();
    let expressions: Vec<&str> = issues
        .iter()
        .map(|issue| issue.expression[0].as_str())
        .collect();
    assert!(
        expressions.contains(&"ServiceRequest.basedOn"),
        "basedOn must be an array: {expressions:?}"
    );
    assert!(
        expressions.contains(&"ServiceRequest.PatientInstruction"),
        "unknown element: {expressions:?}"
    );
}

#[test]
fn operation_outcomes_of_the_bars_examples_parse() {
    for name in [
        "bars/operationoutcome-400-invalid.json",
        "bars/operationoutcome-409-duplicate.json",
    ] {
        parses_as(&conformance(name)).unwrap_or_else(|issues| panic!("{name}: {issues:#?}"));
    }
}

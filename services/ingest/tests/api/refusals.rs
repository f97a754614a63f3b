//! Bad input of every kind: each answer's status and where it says the problem is.

use linkwork_auth::{scopes, Role};
use linkwork_testkit::gp_referral;
use serde_json::{json, Value};

use crate::helpers::{
    diagnostics, expressions, gp_token, spawn_app_with, token, token_with, unique_reference,
};

/// One bad request and what the answer must say.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    token: Option<String>,
    body: Vec<u8>,
    status: u16,
    /// An expression the OperationOutcome must name, or a fragment of its diagnostics.
    expect: Expect,
}

enum Expect {
    Expression(&'static str),
    Diagnostic(&'static str),
}

fn json_body(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn referral_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut referral = gp_referral(&unique_reference());
    change(&mut referral);
    json_body(referral)
}

fn case(name: &'static str, body: Vec<u8>, status: u16, expect: Expect) -> Case {
    Case {
        name,
        path: "/fhir/ServiceRequest",
        content_type: "application/fhir+json",
        token: Some(gp_token()),
        body,
        status,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::{Diagnostic as D, Expression as E};
    let sr = "ServiceRequest";
    vec![
        case(
            "broken JSON",
            b"{\"resourceType\": \"ServiceRequest\",".to_vec(),
            400,
            D("not valid JSON"),
        ),
        case(
            "not JSON at all",
            b"<ServiceRequest/>".to_vec(),
            400,
            D("not valid JSON"),
        ),
        case("a JSON array", b"[]".to_vec(), 400, E(sr)),
        case(
            "wrong resourceType",
            json_body(json!({"resourceType": "Patient"})),
            400,
            E("ServiceRequest.resourceType"),
        ),
        case(
            "no resourceType",
            json_body(json!({"status": "active"})),
            400,
            E("ServiceRequest.resourceType"),
        ),
        case(
            "basedOn not an array",
            referral_with(|v| v["basedOn"] = json!({"reference": "x"})),
            400,
            E("ServiceRequest.basedOn"),
        ),
        case(
            "status not a code",
            referral_with(|v| v["status"] = json!("bogus")),
            400,
            E("ServiceRequest.status"),
        ),
        case(
            "status a number",
            referral_with(|v| v["status"] = json!(7)),
            400,
            E("ServiceRequest.status"),
        ),
        case(
            "unknown element",
            referral_with(|v| v["PatientInstruction"] = json!("x")),
            400,
            E("ServiceRequest.PatientInstruction"),
        ),
        case(
            "empty element",
            referral_with(|v| v["note"] = json!([])),
            400,
            E("ServiceRequest.note"),
        ),
        case(
            "status draft",
            referral_with(|v| v["status"] = json!("draft")),
            422,
            E("ServiceRequest.status"),
        ),
        case(
            "intent proposal",
            referral_with(|v| v["intent"] = json!("proposal")),
            422,
            E("ServiceRequest.intent"),
        ),
        case(
            "no identifier",
            referral_with(|v| drop(v.as_object_mut().unwrap().remove("identifier"))),
            422,
            E("ServiceRequest.identifier"),
        ),
        case(
            "not social prescribing",
            referral_with(|v| v["code"]["coding"][0]["code"] = json!("303653007")),
            422,
            E("ServiceRequest.code"),
        ),
        case(
            "no mapped need",
            referral_with(|v| v["reasonCode"] = json!([{"text": "sad"}])),
            422,
            E("ServiceRequest.reasonCode"),
        ),
        case(
            "no authoredOn",
            referral_with(|v| drop(v.as_object_mut().unwrap().remove("authoredOn"))),
            422,
            E("ServiceRequest.authoredOn"),
        ),
        case(
            "authoredOn in the future",
            referral_with(|v| v["authoredOn"] = json!("2099-01-01")),
            422,
            E("ServiceRequest.authoredOn"),
        ),
        case(
            "no requester (GP)",
            referral_with(|v| drop(v.as_object_mut().unwrap().remove("requester"))),
            422,
            E("ServiceRequest.requester"),
        ),
        case(
            "NHS number check digit",
            referral_with(|v| v["contained"][0]["identifier"][0]["value"] = json!("9990000019")),
            422,
            E("ServiceRequest.contained[0].identifier[0].value"),
        ),
        case(
            "NHS number too short",
            referral_with(|v| v["contained"][0]["identifier"][0]["value"] = json!("999000001")),
            422,
            E("ServiceRequest.contained[0].identifier[0].value"),
        ),
        case(
            "NHS number with letters",
            referral_with(|v| v["contained"][0]["identifier"][0]["value"] = json!("999O000018")),
            422,
            E("ServiceRequest.contained[0].identifier[0].value"),
        ),
        case(
            "NHS number computing to ten",
            referral_with(|v| v["contained"][0]["identifier"][0]["value"] = json!("9990000001")),
            422,
            E("ServiceRequest.contained[0].identifier[0].value"),
        ),
        case(
            "no NHS number from a GP",
            referral_with(|v| {
                drop(
                    v["contained"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("identifier"),
                )
            }),
            422,
            E("ServiceRequest.subject"),
        ),
        case(
            "unknown subject reference",
            referral_with(|v| {
                v["subject"] = json!({"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"})
            }),
            422,
            E("ServiceRequest.subject.reference"),
        ),
        case(
            "subject not a Patient",
            referral_with(|v| v["contained"][0]["resourceType"] = json!("Practitioner")),
            422,
            E("ServiceRequest.subject.reference"),
        ),
        case(
            "bad postcode",
            referral_with(|v| v["contained"][0]["address"][0]["postalCode"] = json!("LS1")),
            422,
            E("ServiceRequest.contained[0].address[0].postalCode"),
        ),
        case(
            "no subject",
            referral_with(|v| drop(v.as_object_mut().unwrap().remove("subject"))),
            400,
            E("ServiceRequest"),
        ),
        Case {
            name: "self-referral without demographics",
            token: Some(token(Role::Source, "self")),
            ..case(
                "",
                referral_with(|v| {
                    let patient = v["contained"][0].as_object_mut().unwrap();
                    for element in ["identifier", "name", "birthDate"] {
                        patient.remove(element);
                    }
                }),
                422,
                E("ServiceRequest.contained[0].name"),
            )
        },
        Case {
            name: "wrong content type",
            content_type: "application/xml",
            ..case("", referral_with(|_| {}), 415, D("content type"))
        },
        Case {
            name: "no content type",
            content_type: "",
            ..case("", referral_with(|_| {}), 415, D("(none)"))
        },
        Case {
            name: "_format xml",
            path: "/fhir/ServiceRequest?_format=xml",
            ..case("", referral_with(|_| {}), 415, D("_format xml"))
        },
        Case {
            name: "oversize body",
            body: vec![b' '; 2 * 1024 * 1024],
            ..case("", Vec::new(), 413, D("limit"))
        },
        Case {
            name: "missing token",
            token: None,
            ..case("", referral_with(|_| {}), 401, D("Authorization: Bearer"))
        },
        Case {
            name: "garbage token",
            token: Some("abc.def.ghi".into()),
            ..case("", referral_with(|_| {}), 401, D("not a valid JWT"))
        },
        Case {
            name: "wrong scope",
            token: Some(token_with(
                Role::Source,
                "gp:A81001",
                &[scopes::REFERRAL_READ],
            )),
            ..case("", referral_with(|_| {}), 403, D("referral:submit"))
        },
        Case {
            name: "provider may not refer",
            token: Some(token_with(
                Role::Provider,
                "townley-connectors",
                &[scopes::REFERRAL_SUBMIT],
            )),
            ..case(
                "",
                referral_with(|_| {}),
                403,
                D("(a provider) may not hold the scope referral:submit"),
            )
        },
        Case {
            name: "unknown route",
            path: "/fhir/Appointment",
            ..case("", referral_with(|_| {}), 404, D("not served here"))
        },
        Case {
            name: "bundle of the wrong type",
            path: "/fhir",
            ..case(
                "",
                json_body(json!({"resourceType": "Bundle", "type": "searchset"})),
                400,
                E("Bundle.type"),
            )
        },
        Case {
            name: "batch entry with GET",
            path: "/fhir",
            ..case(
                "",
                json_body(
                    json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": gp_referral("x"), "request": {"method": "GET", "url": "ServiceRequest"}}]}),
                ),
                422,
                E("Bundle.entry[0].request.method"),
            )
        },
        Case {
            name: "message to the bundle endpoint",
            path: "/fhir",
            ..case(
                "",
                json_body(json!({"resourceType": "Bundle", "type": "message"})),
                400,
                D("$process-message"),
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_gets_its_status_and_names_the_problem() {
    let app = spawn_app_with(|_| {}).await;
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "at least 30 distinct bad inputs ({})",
        cases.len()
    );
    for case in cases {
        let mut request = app
            .client
            .post(format!("{}{}", app.address, case.path))
            .body(case.body);
        if !case.content_type.is_empty() {
            request = request.header("content-type", case.content_type);
        }
        if let Some(token) = &case.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(
            content_type.as_deref(),
            Some("application/fhir+json"),
            "{}",
            case.name
        );
        assert_eq!(
            body["resourceType"], "OperationOutcome",
            "{}: {body}",
            case.name
        );
        match case.expect {
            Expect::Expression(expected) => {
                let found = expressions(&body);
                assert!(
                    found.iter().any(|expression| expression == expected),
                    "{}: {expected} in {found:?}",
                    case.name
                );
            }
            Expect::Diagnostic(expected) => {
                let found = diagnostics(&body);
                assert!(
                    found.contains(expected),
                    "{}: {expected:?} in {found:?}",
                    case.name
                );
            }
        }
    }
    assert_eq!(app.receipts().await, 0, "nothing bad was taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_is_told_when_to_come_back() {
    let app = spawn_app_with(|settings| settings.http.requests_per_minute = 20).await;
    let token = gp_token();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, headers, _) = app
            .post_fhir(
                "/fhir/ServiceRequest",
                Some(&token),
                &json!({"resourceType": "Patient"}),
            )
            .await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers
                .get("retry-after")
                .map(|value| value.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    // A burst of two (a tenth of 20 a minute), then throttled.
    assert_eq!(statuses, vec![400, 400, 429, 429, 429]);
    assert!(retry_after.is_some_and(|seconds| seconds >= 1));
    // Another client is not held back by the first.
    let other = token_with(Role::Source, "gp:B82002", &[scopes::REFERRAL_SUBMIT]);
    let (status, _, _) = app
        .post_fhir(
            "/fhir/ServiceRequest",
            Some(&other),
            &json!({"resourceType": "Patient"}),
        )
        .await;
    assert_eq!(status, 400);
}

//! Every file of the shared conformance corpus, through the HTTP API, handled as the
//! corpus README says: never a 500, never a bare parse error.

use linkwork_testkit::conformance_files;
use serde_json::Value;

use crate::helpers::{expressions, gp_token, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fhir_r4_example_gets_a_precise_answer() {
    let app = spawn_app().await;
    for (name, bytes) in conformance_files("fhir-r4") {
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let resource_type = body["resourceType"].as_str().unwrap().to_owned();
        let path = if resource_type == "Bundle" {
            "/fhir"
        } else {
            "/fhir/ServiceRequest"
        };
        let (status, _, outcome) = app.post_fhir(path, Some(&gp_token()), &body).await;
        assert!(matches!(status, 400 | 422), "{name}: {status} {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{name}");
        let found = expressions(&outcome);
        assert!(
            !found.is_empty(),
            "{name}: every refusal names where: {outcome}"
        );
        match resource_type.as_str() {
            // Valid FHIR, but not referrals linkwork can take: refused by rule.
            "ServiceRequest" => {
                assert_eq!(status, 422, "{name}: {outcome}");
                assert!(
                    found.contains(&"ServiceRequest.status".to_owned()),
                    "{name}: {found:?}"
                );
            }
            "Bundle" => assert!(
                found.contains(&"Bundle.type".to_owned()),
                "{name}: {found:?}"
            ),
            _ => assert!(
                found.contains(&"ServiceRequest.resourceType".to_owned()),
                "{name}: {found:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_malformed_bars_service_request_is_refused_naming_what_is_wrong() {
    let app = spawn_app().await;
    let body: Value = linkwork_testkit::conformance("bars/invalid-servicerequest.json");
    let (status, _, outcome) = app
        .post_fhir("/fhir/ServiceRequest", Some(&gp_token()), &body)
        .await;
    assert_eq!(status, 400, "{outcome}");
    let found = expressions(&outcome);
    assert!(
        found.contains(&"ServiceRequest.basedOn".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"ServiceRequest.PatientInstruction".to_owned()),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capability_statement_tells_what_is_served() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/fhir/metadata", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let statement: Value = response.json().await.unwrap();
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(
        statement["rest"][0]["resource"][0]["type"],
        "ServiceRequest"
    );
    assert_eq!(
        statement["rest"][0]["operation"][0]["name"],
        "process-message"
    );
    // Nothing is claimed that is not served: each resource's interactions, exactly.
    let claimed: Vec<(String, Vec<String>)> = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|resource| {
            // A resource served only through an operation ($erase) has no interactions.
            let interactions = resource["interaction"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|interaction| interaction["code"].as_str().unwrap().to_owned())
                .collect();
            (resource["type"].as_str().unwrap().to_owned(), interactions)
        })
        .collect();
    let expected: Vec<(String, Vec<String>)> = [
        (
            "ServiceRequest",
            &["create", "read", "history-instance", "search-type"][..],
        ),
        ("Task", &["read", "update", "patch"][..]),
        ("Observation", &["create", "search-type"][..]),
        ("Communication", &["create"][..]),
        ("Procedure", &["create"][..]),
        ("Consent", &["create"][..]),
        ("AuditEvent", &["search-type"][..]),
        ("Patient", &[][..]),
    ]
    .iter()
    .map(|(kind, codes)| {
        (
            (*kind).to_owned(),
            codes.iter().map(|code| (*code).to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(claimed, expected);
    let patient = &statement["rest"][0]["resource"][7];
    assert_eq!(patient["operation"][0]["name"], "erase");
}

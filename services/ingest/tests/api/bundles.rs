//! `POST /fhir`: batch and transaction Bundles.

use linkwork_testkit::gp_referral;
use serde_json::{json, Value};

use crate::helpers::{expressions, gp_token, spawn_app, unique_reference};

fn entry(resource: Value) -> Value {
    let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
    json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": resource,
           "request": {"method": "POST", "url": resource_type}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_each_valid_entry_and_answers_each_entry() {
    let app = spawn_app().await;
    let mut broken = gp_referral(&unique_reference());
    broken["status"] = json!("draft");
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(gp_referral(&unique_reference())),
        entry(broken),
        entry(gp_referral(&unique_reference())),
    ]});
    let (status, _, response) = app.post_fhir("/fhir", Some(&gp_token()), &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["201 Created", "422 Unprocessable Entity", "201 Created"]
    );
    assert_eq!(
        expressions(&response["entry"][1]["response"]["outcome"]),
        vec!["Bundle.entry[1].resource.status"]
    );
    assert!(response["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .contains("/fhir/ServiceRequest/"));
    assert_eq!(app.receipts().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_all_or_nothing() {
    let app = spawn_app().await;
    let mut broken = gp_referral(&unique_reference());
    broken.as_object_mut().unwrap().remove("authoredOn");
    let refused = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(gp_referral(&unique_reference())),
        entry(broken),
    ]});
    let (status, _, outcome) = app.post_fhir("/fhir", Some(&gp_token()), &refused).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        expressions(&outcome),
        vec!["Bundle.entry[1].resource.authoredOn"]
    );
    assert_eq!(
        app.receipts().await,
        0,
        "nothing of a refused transaction is taken"
    );

    // Entries may point at a Patient carried in the same transaction.
    let mut referral = gp_referral(&unique_reference());
    let patient = referral["contained"][0].clone();
    referral.as_object_mut().unwrap().remove("contained");
    referral["subject"] = json!({"reference": "urn:uuid:6a1b7c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(referral),
        {"fullUrl": "urn:uuid:6a1b7c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        entry(gp_referral(&unique_reference())),
    ]});
    let (status, _, response) = app.post_fhir("/fhir", Some(&gp_token()), &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["201 Created", "200 OK", "201 Created"]);
    assert_eq!(app.receipts().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_conflicting_entry_takes_none() {
    let app = spawn_app().await;
    let reference = unique_reference();
    let (status, _, _) = app
        .post_fhir(
            "/fhir/ServiceRequest",
            Some(&gp_token()),
            &gp_referral(&reference),
        )
        .await;
    assert_eq!(status, 201);
    let mut conflicting = gp_referral(&reference);
    conflicting["priority"] = json!("urgent");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(gp_referral(&unique_reference())),
        entry(conflicting),
    ]});
    let (status, _, outcome) = app.post_fhir("/fhir", Some(&gp_token()), &bundle).await;
    assert_eq!(status, 409, "{outcome}");
    assert_eq!(expressions(&outcome), vec!["Bundle.entry[1]"]);
    assert_eq!(
        app.receipts().await,
        1,
        "the first entry was not taken either"
    );
}

/// The same referral twice in one Bundle is one referral. A batch answers the second
/// entry as a resubmission of the first (200, the same id) and the log holds one
/// `ReferralReceived`; a transaction carrying one identifier with two contents
/// conflicts with itself and takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_twice_in_one_bundle_is_taken_once() {
    let app = spawn_app().await;
    let reference = unique_reference();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(gp_referral(&reference)),
        entry(gp_referral(&reference)),
    ]});
    let (status, _, response) = app.post_fhir("/fhir", Some(&gp_token()), &batch).await;
    assert_eq!(status, 200, "{response}");
    let answers: Vec<(&str, &str)> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["response"]["status"].as_str().unwrap(),
                entry["response"]["location"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(answers[0].0, "201 Created", "{response}");
    assert_eq!(answers[1].0, "200 OK", "{response}");
    let id = |location: &str| {
        location
            .split("/fhir/ServiceRequest/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
    };
    let referral_id = id(answers[0].1).expect("a location");
    assert_eq!(
        id(answers[1].1),
        Some(referral_id.clone()),
        "the same referral"
    );
    assert_eq!(app.receipts().await, 1);
    let events = app.events_for(&referral_id, 1).await;
    assert_eq!(events.len(), 1, "one ReferralReceived on the log");

    let reference = unique_reference();
    let mut other = gp_referral(&reference);
    other["priority"] = json!("urgent");
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(gp_referral(&reference)),
        entry(other),
    ]});
    let (status, _, outcome) = app
        .post_fhir("/fhir", Some(&gp_token()), &transaction)
        .await;
    assert_eq!(status, 409, "{outcome}");
    assert_eq!(expressions(&outcome), vec!["Bundle.entry[1]"]);
    assert_eq!(app.receipts().await, 1, "nothing of it was taken");
}

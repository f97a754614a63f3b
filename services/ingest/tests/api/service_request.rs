//! `POST /fhir/ServiceRequest`: creation, resubmission, conflicts.

use linkwork_testkit::gp_referral;

use crate::helpers::{gp_token, spawn_app, unique_reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_referral_is_created_once_and_a_resubmission_returns_the_same_id_without_an_event()
{
    let app = spawn_app().await;
    let referral = gp_referral(&unique_reference());
    let token = gp_token();

    let (status, headers, created) = app
        .post_fhir("/fhir/ServiceRequest", Some(&token), &referral)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let location = headers["location"].to_str().unwrap();
    assert_eq!(
        location,
        format!("{}/fhir/ServiceRequest/{id}/_history/1", app.address)
    );
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(created["resourceType"], "ServiceRequest");
    assert_eq!(
        created["identifier"], referral["identifier"],
        "the stored resource is what was sent"
    );

    // The same referral again (a retry): the same id, 200, nothing new on the log.
    let (status, _, again) = app
        .post_fhir("/fhir/ServiceRequest", Some(&token), &referral)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["meta"]["lastUpdated"], created["meta"]["lastUpdated"]);

    let events = app.events_for(&id, 1).await;
    assert_eq!(events.len(), 1, "exactly one ReferralReceived on the log");
    let (_, body, headers) = &events[0];
    assert_eq!(
        headers.get_str("ce_type"),
        Some("linkwork.referral.received.v1")
    );
    assert_eq!(body["referral_id"], id.as_str());
    assert_eq!(body["source"], "gp:A81001");
    assert_eq!(body["needs"], serde_json::json!(["social-isolation"]));
    assert_eq!(app.receipts().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identifier_with_different_content_is_a_conflict() {
    let app = spawn_app().await;
    let reference = unique_reference();
    let token = gp_token();
    let (status, _, _) = app
        .post_fhir(
            "/fhir/ServiceRequest",
            Some(&token),
            &gp_referral(&reference),
        )
        .await;
    assert_eq!(status, 201);
    let mut changed = gp_referral(&reference);
    changed["priority"] = serde_json::json!("urgent");
    let (status, _, outcome) = app
        .post_fhir("/fhir/ServiceRequest", Some(&token), &changed)
        .await;
    assert_eq!(status, 409, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "conflict");
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("different content"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identifier_from_another_source_is_another_referral() {
    let app = spawn_app().await;
    let referral = gp_referral(&unique_reference());
    let (_, _, first) = app
        .post_fhir("/fhir/ServiceRequest", Some(&gp_token()), &referral)
        .await;
    let other_gp = crate::helpers::token(linkwork_auth::Role::Source, "gp:B82002");
    let (status, _, second) = app
        .post_fhir("/fhir/ServiceRequest", Some(&other_gp), &referral)
        .await;
    assert_eq!(status, 201);
    assert_ne!(
        first["id"], second["id"],
        "the source is part of the referral's identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_before_the_projector_has_ever_run_say_so_with_503() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!(
            "{}/fhir/ServiceRequest/{}",
            app.address,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(gp_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let outcome: serde_json::Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("linkwork serve projector"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stamped_by_the_configured_clock() {
    // The demo runs a borough's months in minutes on a manual clock: the event says
    // when, in the borough's time, linkwork received the referral.
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:30:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.http.clock = linkwork_domain::Clock::manual(at);
    })
    .await;
    let (status, _, created) = app
        .post_fhir(
            "/fhir/ServiceRequest",
            Some(&gp_token()),
            &gp_referral(&unique_reference()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let events = app.events_for(&id, 1).await;
    assert_eq!(events.len(), 1);
    let (_, body, headers) = &events[0];
    assert_eq!(body["occurred_at"], "2026-03-02T10:30:00Z");
    assert_eq!(
        headers.get_str("ce_time"),
        Some("2026-03-02T10:30:00.000000Z")
    );
}

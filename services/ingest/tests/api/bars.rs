//! `POST /fhir/$process-message`: BaRS messages.

use base64::Engine;
use linkwork_testkit::{bars_message, conformance};
use serde_json::{json, Value};

use crate::helpers::{diagnostics, expressions, gp_token, spawn_app, unique_reference, TestApp};

fn target(system: &str, value: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json!({"system": system, "value": value}).to_string())
}

fn router_target() -> String {
    target("https://linkwork.example/fhir/Id/service", "router")
}

struct Sent {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(app: &TestApp, headers: &[(&str, String)], body: &Value) -> Sent {
    let mut request = app
        .client
        .post(format!("{}/fhir/$process-message", app.address))
        .header("content-type", "application/fhir+json")
        .bearer_auth(gp_token())
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    Sent {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

fn bars_headers() -> Vec<(&'static str, String)> {
    vec![
        ("x-request-id", uuid::Uuid::new_v4().to_string()),
        ("x-correlation-id", uuid::Uuid::new_v4().to_string()),
        ("nhsd-target-identifier", router_target()),
        ("nhsd-end-user-organisation-ods", "A81001".into()),
    ]
}

fn detail_code(body: &Value) -> Option<&str> {
    body["issue"][0]["details"]["coding"][0]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bars_referral_is_taken_and_its_headers_echoed() {
    let app = spawn_app().await;
    let message = bars_message(&unique_reference(), "new", "active");
    let headers = bars_headers();
    let sent = send(&app, &headers, &message).await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        sent.body["type"], "message",
        "the message is echoed, as BaRS receivers do"
    );
    assert_eq!(sent.headers["x-request-id"].to_str().unwrap(), headers[0].1);
    assert_eq!(
        sent.headers["x-correlation-id"].to_str().unwrap(),
        headers[1].1
    );

    // Sent again: BaRS answers a repeat with 409 REC_CONFLICT, and no new event.
    let again = send(&app, &bars_headers(), &message).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["issue"][0]["code"], "duplicate");
    assert_eq!(detail_code(&again.body), Some("REC_CONFLICT"));
    assert!(diagnostics(&again.body).contains("already been processed"));
    assert_eq!(app.receipts().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_revoking_the_referral_cancels_it() {
    let app = spawn_app().await;
    let reference = unique_reference();
    assert_eq!(
        send(
            &app,
            &bars_headers(),
            &bars_message(&reference, "new", "active")
        )
        .await
        .status,
        200
    );

    let revoked = send(
        &app,
        &bars_headers(),
        &bars_message(&reference, "update", "revoked"),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let again = send(
        &app,
        &bars_headers(),
        &bars_message(&reference, "update", "revoked"),
    )
    .await;
    assert_eq!(
        again.status, 409,
        "a repeated withdrawal is a duplicate: {}",
        again.body
    );

    let referral_id = linkwork_domain::ReferralId::derive(
        &linkwork_domain::Source::parse("gp:A81001").unwrap(),
        "https://gp.example/referrals",
        &reference,
    )
    .to_string();
    let events = app.events_for(&referral_id, 2).await;
    let types: Vec<&str> = events
        .iter()
        .filter_map(|(_, _, headers)| headers.get_str("ce_type"))
        .collect();
    assert_eq!(
        types,
        vec![
            "linkwork.referral.received.v1",
            "linkwork.referral.cancelled.v1"
        ]
    );
    assert_eq!(events[1].1["by"], "gp:A81001", "withdrawn by the referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_for_a_referral_never_sent_is_not_found() {
    let app = spawn_app().await;
    let sent = send(
        &app,
        &bars_headers(),
        &bars_message(&unique_reference(), "update", "revoked"),
    )
    .await;
    assert_eq!(sent.status, 404, "{}", sent.body);
    assert_eq!(detail_code(&sent.body), Some("REC_NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_changing_content_is_not_taken_in_place() {
    let app = spawn_app().await;
    let reference = unique_reference();
    assert_eq!(
        send(
            &app,
            &bars_headers(),
            &bars_message(&reference, "new", "active")
        )
        .await
        .status,
        200
    );
    let mut changed = bars_message(&reference, "update", "active");
    changed["entry"][1]["resource"]["priority"] = json!("urgent");
    let sent = send(&app, &bars_headers(), &changed).await;
    assert_eq!(sent.status, 422, "{}", sent.body);
    assert_eq!(sent.body["issue"][0]["code"], "not-supported");
    assert_eq!(
        expressions(&sent.body),
        vec!["Bundle.entry[1].resource.status"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_bars_validation_request_is_refused_naming_every_problem() {
    let app = spawn_app().await;
    let sent = send(
        &app,
        &bars_headers(),
        &conformance("bars/validation-request.bundle.json"),
    )
    .await;
    assert_eq!(sent.status, 422, "{}", sent.body);
    let found = expressions(&sent.body);
    for expected in [
        "Bundle.entry[1].resource.category[0]",
        "Bundle.entry[5].resource.identifier[0].value",
        "Bundle.entry[1].resource.code",
    ] {
        assert!(
            found.contains(&expected.to_owned()),
            "{expected} in {found:?}"
        );
    }
    assert!(diagnostics(&sent.body).contains("validation request"));
    assert!(diagnostics(&sent.body).contains("NHS number"));
    assert_eq!(detail_code(&sent.body), Some("REC_UNPROCESSABLE_ENTITY"));
    assert_eq!(app.receipts().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_bars_booking_is_refused_as_not_supported() {
    let app = spawn_app().await;
    let sent = send(
        &app,
        &bars_headers(),
        &conformance("bars/booking-request.bundle.json"),
    )
    .await;
    assert_eq!(sent.status, 422, "{}", sent.body);
    assert_eq!(sent.body["issue"][0]["code"], "not-supported");
    assert_eq!(
        expressions(&sent.body),
        vec!["Bundle.entry[0].resource.eventCoding.code"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_header_errors_are_named_and_the_request_ids_still_echoed() {
    let app = spawn_app().await;
    let message = bars_message(&unique_reference(), "new", "active");
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "X-Request-Id header is required"),
        (
            vec![
                ("x-request-id", "not-a-uuid".into()),
                ("x-correlation-id", uuid::Uuid::new_v4().to_string()),
            ],
            "X-Request-Id header must be a UUID",
        ),
        (
            {
                let mut headers = bars_headers();
                headers[2].1 = "%%%".into();
                headers
            },
            "NHSD-Target-Identifier header is not base64",
        ),
        (
            {
                let mut headers = bars_headers();
                headers[2].1 = target("https://fhir.nhs.uk/Id/dos-service-id", "111111111");
                headers
            },
            "neither linkwork's router",
        ),
        (
            {
                let mut headers = bars_headers();
                headers[3].1 = "a81001".into();
                headers
            },
            "is not an ODS code",
        ),
        (
            {
                let mut headers = bars_headers();
                headers.remove(3);
                headers
            },
            "NHSD-End-User-Organisation-ODS header",
        ),
    ];
    for (headers, expected) in cases {
        let sent = send(&app, &headers, &message).await;
        assert_eq!(sent.status, 400, "{expected}: {}", sent.body);
        assert!(
            diagnostics(&sent.body).contains(expected),
            "{expected} in {}",
            diagnostics(&sent.body)
        );
        assert_eq!(detail_code(&sent.body), Some("REC_BAD_REQUEST"));
        if let Some((_, request_id)) = headers.iter().find(|(name, _)| *name == "x-request-id") {
            assert_eq!(
                sent.headers["x-request-id"].to_str().unwrap(),
                request_id,
                "echoed on refusal too"
            );
        }
    }
}

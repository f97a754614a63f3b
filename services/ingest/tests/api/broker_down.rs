//! With the event log unreachable, a referral is refused with 503 and nothing is kept.

use std::time::Duration;

use linkwork_testkit::gp_referral;

use crate::helpers::{gp_token, spawn_app_without_broker, unique_reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_means_503_with_retry_after_and_nothing_written() {
    // Nothing listens on port 1.
    let app = spawn_app_without_broker(|settings| {
        settings.delivery_timeout = Duration::from_secs(2);
    })
    .await;
    let referral = gp_referral(&unique_reference());
    let (status, headers, outcome) = app
        .post_fhir("/fhir/ServiceRequest", Some(&gp_token()), &referral)
        .await;
    assert_eq!(status, 503, "{outcome}");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(outcome["issue"][0]["code"], "transient");
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nothing was taken"));
    assert_eq!(
        app.receipts().await,
        0,
        "no receipt: a later resubmission is a first submission"
    );

    // The sender retries: still down, still clean.
    let (status, _, _) = app
        .post_fhir("/fhir/ServiceRequest", Some(&gp_token()), &referral)
        .await;
    assert_eq!(status, 503);
    assert_eq!(app.receipts().await, 0);
}

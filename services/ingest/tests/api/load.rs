//! Many referrals at once: lone submissions taken together (one claim, one publish,
//! one mark for a group) answer exactly as they would alone, and requests beyond the
//! in-flight limit are refused at once rather than queued.

use std::collections::HashMap;
use std::time::Duration;

use linkwork_testkit::gp_referral;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{gp_token, spawn_app, spawn_app_beside, spawn_app_with, unique_reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrals_posted_at_once_are_each_answered_as_if_posted_alone() {
    let app = spawn_app().await;
    let token = gp_token();
    let distinct: Vec<_> = (0..40).map(|_| gp_referral(&unique_reference())).collect();
    let repeated = gp_referral(&unique_reference());
    let mut conflicting = repeated.clone();
    conflicting["priority"] = serde_json::json!("urgent");
    let mut bodies: Vec<(&str, &serde_json::Value)> =
        distinct.iter().map(|body| ("distinct", body)).collect();
    bodies.extend((0..8).map(|_| ("repeated", &repeated)));
    let mut requests = futures::future::join_all(bodies.iter().map(|(kind, body)| {
        let (app, token) = (&app, &token);
        async move {
            let (status, headers, answer) = app
                .post_fhir("/fhir/ServiceRequest", Some(token), body)
                .await;
            let location = headers
                .get("location")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            (*kind, status, location, answer)
        }
    }))
    .await;

    let mut statuses: HashMap<(&str, u16), usize> = HashMap::new();
    for (kind, status, _, answer) in &requests {
        *statuses.entry((kind, *status)).or_default() += 1;
        assert!(
            *status == 200 || *status == 201,
            "{kind}: {status} {answer}"
        );
    }
    assert_eq!(statuses.get(&("distinct", 201)), Some(&40), "{statuses:?}");
    assert_eq!(
        statuses.get(&("repeated", 201)),
        Some(&1),
        "one copy created: {statuses:?}"
    );
    assert_eq!(
        statuses.get(&("repeated", 200)),
        Some(&7),
        "the other copies are duplicates: {statuses:?}"
    );
    requests.retain(|(kind, ..)| *kind == "repeated");
    let locations: std::collections::BTreeSet<_> = requests
        .iter()
        .map(|(_, _, location, _)| location.clone())
        .collect();
    assert_eq!(locations.len(), 1, "every copy names the same referral");
    let id = requests[0].3["id"].as_str().unwrap().to_owned();

    // Different content under the same identifier, after: a conflict, as alone.
    let (status, _, _) = app
        .post_fhir("/fhir/ServiceRequest", Some(&token), &conflicting)
        .await;
    assert_eq!(status, 409);

    assert_eq!(
        app.events_for(&id, 41).await.len(),
        1,
        "one ReferralReceived for the repeated referral"
    );
    assert_eq!(app.read_topic("referral.events", 41).await.len(), 41);
    assert_eq!(app.receipts().await, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_in_flight_limit_is_refused_at_once_and_told_when_to_retry() {
    let app = spawn_app_with(|settings| settings.http.max_in_flight = 1).await;
    let token = gp_token();
    let referral = gp_referral(&unique_reference()).to_string();

    // A sender that has sent its headers and half its body holds the one place.
    let address = app.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /fhir/ServiceRequest HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        referral.len()
    );
    let (first, rest) = referral.as_bytes().split_at(referral.len() / 2);
    let mut slow = hold_place(&address, &head, first).await;

    // Probes need no broker, so one the server happens to read before the slow
    // sender's head leaves at once. Should the slow sender have been refused all the
    // same (its socket holds an answer), it sends again.
    let metadata = format!("{}/fhir/metadata", app.address);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        let response = app
            .client
            .get(&metadata)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 503 {
            let headers = response.headers().clone();
            let outcome: serde_json::Value = response.json().await.unwrap();
            break (headers, outcome);
        }
        let mut peek = [0u8; 1];
        if !matches!(slow.try_read(&mut peek), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
        {
            slow = hold_place(&address, &head, first).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a second request was never refused while the first held the place ({status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (headers, outcome) = refusal;
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");

    // The slow sender finishes and is taken; then the place is free again.
    slow.write_all(rest).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), slow.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let other = gp_referral(&unique_reference());
    let (status, _, created) = app
        .post_fhir("/fhir/ServiceRequest", Some(&token), &other)
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(app.receipts().await, 2);
}

/// Opens a connection and sends a request's head and the first part of its body: the
/// request is admitted, and holds its place while it waits for the rest.
async fn hold_place(address: &str, head: &str, first: &[u8]) -> tokio::net::TcpStream {
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(first).await.unwrap();
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_served_beside_ingests_are_under_its_in_flight_and_time_limits() {
    // A slow route beside ingest's, as `serve all` puts the metrics routes.
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "done"
        }),
    );
    let app = spawn_app_beside(slow, |settings| {
        settings.http.max_in_flight = 1;
        settings.http.request_timeout = Duration::from_millis(1500);
    })
    .await;
    let url = format!("{}/slow", app.address);
    let first = tokio::spawn({
        let (client, url) = (app.client.clone(), url.clone());
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one place is taken: refused at once, not queued.
    let second = app.client.get(&url).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 503);
    assert!(second.headers().contains_key("retry-after"));
    // And the first is cut off at the time limit.
    assert_eq!(first.await.unwrap(), 503);
}

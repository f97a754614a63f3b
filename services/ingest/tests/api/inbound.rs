//! Kafka-native intake on `referrals.inbound` (the test's own): accepted referrals
//! reach `referral.events` once; refused messages reach the dead-letter topic with the
//! OperationOutcome as their reason.

use linkwork_bus::headers::HeaderList;
use linkwork_bus::topics::{consumers, REFERRALS_INBOUND, REFERRAL_EVENTS};
use linkwork_bus::{ConsumerRunner, Outbound, OutboxRelay, Producer, RelayConfig};
use linkwork_fhir::IntakeRules;
use linkwork_ingest::inbound::{InboundHandler, SOURCE_HEADER};
use linkwork_testkit::gp_referral;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    database, events_for, eventually, isolated_names, kafka, read_topic, topics, unique_reference,
};

async fn send(producer: &Producer, topic: &str, source: Option<&str>, body: &[u8]) {
    let mut headers = HeaderList::default();
    if let Some(source) = source {
        headers.push(SOURCE_HEADER, source);
    }
    producer
        .send(Outbound {
            topic,
            key: Some(b"engine"),
            partition: None,
            payload: body,
            headers,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_fhir_from_an_integration_engine_is_taken_once_or_dead_lettered_with_an_operation_outcome(
) {
    let kafka = kafka();
    let names = isolated_names();
    topics(&kafka, &names).await;
    let inbound = names.topic(REFERRALS_INBOUND);
    let dead_letters = names.dlq(consumers::INBOUND);
    let pool = database().await;

    let reference = unique_reference();
    let valid = gp_referral(&reference).to_string();
    let mut broken = gp_referral(&unique_reference());
    broken["status"] = json!("draft");
    let producer = Producer::new(&kafka).unwrap();
    send(&producer, &inbound, Some("hospital:RVY"), valid.as_bytes()).await;
    send(
        &producer,
        &inbound,
        Some("hospital:RVY"),
        broken.to_string().as_bytes(),
    )
    .await;
    send(&producer, &inbound, None, valid.as_bytes()).await;
    send(&producer, &inbound, Some("hospital:RVY"), b"{not json").await;
    send(&producer, &inbound, Some("hospital:RVY"), valid.as_bytes()).await; // the same again

    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(pool.clone(), &kafka, RelayConfig::default()).unwrap();
    let config = names.consumer(consumers::INBOUND, &[REFERRALS_INBOUND]);
    let mut handler = InboundHandler::new(IntakeRules::default());
    handler.events_topic = names.topic(REFERRAL_EVENTS);
    let runner = ConsumerRunner::new(config, kafka.clone(), pool.clone(), handler)
        .with_outbox_notify(relay.notifier());
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let consumer_task = tokio::spawn(runner.run(shutdown.clone()));

    let referral_id = linkwork_domain::ReferralId::derive(
        &linkwork_domain::Source::parse("hospital:RVY").unwrap(),
        "https://gp.example/referrals",
        &reference,
    )
    .to_string();
    // Once the consumer has stored offsets past all five messages and the relay has
    // published what it put in the outbox, a second copy would already be on the log.
    eventually(
        "the five messages consumed and the outbox drained",
        || async {
            let consumed: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE topic = $1",
            )
            .bind(&inbound)
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&pool)
                .await
                .unwrap_or(1);
            consumed == Some(5) && pending == 0
        },
    )
    .await;
    let events = events_for(&kafka, &names, &referral_id, 1).await;
    let letters = read_topic(&kafka, &dead_letters, 3).await;
    assert_eq!(events.len(), 1, "taken exactly once, although sent twice");
    assert_eq!(
        events[0].1["source"], "hospital:RVY",
        "the source is the header's"
    );
    assert_eq!(letters.len(), 3, "three refusals: {letters:?}");
    let reasons: Vec<Value> = letters
        .iter()
        .map(|(_, _, headers)| {
            serde_json::from_str(headers.get_str("dlq.reason").unwrap()).unwrap()
        })
        .collect();
    for reason in &reasons {
        assert_eq!(
            reason["resourceType"], "OperationOutcome",
            "the reason is an OperationOutcome: {reason}"
        );
    }
    assert_eq!(
        reasons[0]["issue"][0]["expression"][0],
        "ServiceRequest.status"
    );
    assert!(reasons[1]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains(SOURCE_HEADER));
    assert!(reasons[2]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    shutdown.cancel();
    consumer_task.await.unwrap().unwrap();
    relay_task.await.unwrap().unwrap();
}

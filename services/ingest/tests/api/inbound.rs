//! Kafka-native intake on `referrals.inbound` (a test topic here): accepted referrals
//! reach `referral.events` once; refused messages reach the dead-letter topic with the
//! OperationOutcome as their reason.

use std::time::Duration;

use linkwork_bus::headers::HeaderList;
use linkwork_bus::{ConsumerConfig, ConsumerRunner, Outbound, OutboxRelay, Producer, RelayConfig};
use linkwork_fhir::IntakeRules;
use linkwork_ingest::inbound::{InboundHandler, SOURCE_HEADER};
use linkwork_testkit::gp_referral;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{database, events_for, kafka, read_topic, topics, unique_reference};

async fn topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = kafka().client_config().create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
}

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
    topics(&kafka).await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let inbound = format!("it-inbound-{suffix}");
    let dead_letters = format!("it-inbound-dlq-{suffix}");
    topic(&inbound).await;
    topic(&dead_letters).await;
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
    let mut config = ConsumerConfig::new(&format!("inbound-{suffix}"), &[&inbound]);
    config.dlq_topic = dead_letters.clone();
    let runner = ConsumerRunner::new(
        config,
        kafka.clone(),
        pool.clone(),
        InboundHandler::new(IntakeRules::default()),
    )
    .with_outbox_notify(relay.notifier());
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let consumer_task = tokio::spawn(runner.run(shutdown.clone()));

    let referral_id = linkwork_domain::ReferralId::derive(
        &linkwork_domain::Source::parse("hospital:RVY").unwrap(),
        "https://gp.example/referrals",
        &reference,
    )
    .to_string();
    let reader = kafka.clone();
    let (events, letters) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let events = events_for(&reader, &referral_id, Duration::from_secs(2));
            let letters = read_topic(&reader, &dead_letters, Duration::from_secs(1));
            if (!events.is_empty() && letters.len() >= 3) || std::time::Instant::now() > deadline {
                // Give any duplicate a moment to show.
                std::thread::sleep(Duration::from_secs(1));
                return (
                    events_for(&reader, &referral_id, Duration::from_secs(2)),
                    letters,
                );
            }
        }
    })
    .await
    .unwrap();
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

//! `topics apply` against the real broker: creates what is missing with the declared
//! settings, grows order-free topics, refuses to grow topics ordered by key, reports
//! configuration drift, and is idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use linkwork_bus::topics::{apply, Members, TopicsFile};
use linkwork_bus::KafkaSettings;
use linkwork_domain::ProviderId;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::helpers::{stack, unique};

fn declaration(prefix: &str, partitions: i32) -> TopicsFile {
    TopicsFile::parse(&format!(
        r#"
topics:
  - name: {prefix}.events
    partitions: {partitions}
    retention: forever
    cleanup_policy: delete
    key: k
    value: v
    producers: [tests]
    consumers: [tests]
  - name: '{prefix}.provider.{{provider}}.referrals'
    per: provider
    partitions: 2
    retention: 90d
    cleanup_policy: delete
    key: k
    value: v
    producers: [tests]
    consumers: [tests]
"#
    ))
    .expect("declaration parses")
}

/// An ordered topic, an order-free one and a third declared only when `with_late` is
/// set, so one run can create, grow and refuse at once.
fn mixed_declaration(prefix: &str, partitions: i32, with_late: bool) -> TopicsFile {
    let mut text = format!(
        r#"
defaults:
  replication_factor: 3
  min_insync_replicas: 2
topics:
  - name: {prefix}.ordered
    partitions: {partitions}
    retention: 7d
    cleanup_policy: delete
    ordered_by_key: true
    key: referral id
    value: v
    producers: [tests]
    consumers: [tests]
  - name: {prefix}.dlq
    partitions: {partitions}
    retention: 90d
    cleanup_policy: delete
    ordered_by_key: false
    key: the original key
    value: v
    producers: [tests]
    consumers: [tests]
"#
    );
    if with_late {
        text.push_str(&format!(
            "  - {{name: {prefix}.late, partitions: 1, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"
        ));
    }
    TopicsFile::parse(&text).expect("declaration parses")
}

fn admin(kafka: &KafkaSettings) -> AdminClient<DefaultClientContext> {
    kafka.client_config().create().expect("admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// The topic's configuration as the broker describes it: key to (value, set on the
/// topic itself).
async fn topic_config(kafka: &KafkaSettings, topic: &str) -> BTreeMap<String, (String, bool)> {
    let results = admin(kafka)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options())
        .await
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .unwrap_or_else(|code| panic!("describing {topic}: {code}"));
    resource
        .entries
        .into_iter()
        .filter_map(|entry| {
            let own = entry.source == ConfigSource::DynamicTopic;
            Some((entry.name, (entry.value?, own)))
        })
        .collect()
}

/// (partitions, brokers) from fresh metadata.
fn partitions_and_brokers(kafka: &KafkaSettings, topic: &str) -> (usize, usize) {
    let client: BaseConsumer = kafka.client_config().create().expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    (
        metadata.topics()[0].partitions().len(),
        metadata.brokers().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_what_is_missing_and_a_second_run_changes_nothing() {
    let stack = stack();
    let prefix = unique("it-apply");
    let providers = [
        ProviderId::parse("townley-connectors").unwrap(),
        ProviderId::parse("wellbeing-hub").unwrap(),
    ];

    let first = apply(
        &stack.kafka,
        &declaration(&prefix, 3),
        &Members::providers(&providers),
    )
    .await
    .unwrap();
    assert_eq!(
        first.created,
        vec![
            format!("{prefix}.events"),
            format!("{prefix}.provider.townley-connectors.referrals"),
            format!("{prefix}.provider.wellbeing-hub.referrals"),
        ]
    );
    assert!(first.to_string().contains("3 created"));

    let second = apply(
        &stack.kafka,
        &declaration(&prefix, 3),
        &Members::providers(&providers),
    )
    .await
    .unwrap();
    assert!(
        second.all_as_declared(),
        "second run changed or found something: {second}"
    );
    assert_eq!(second.unchanged.len(), 3);
    assert!(
        second.to_string().starts_with("nothing to change"),
        "{second}"
    );

    // Not ordered by key: it grows.
    let grown = apply(
        &stack.kafka,
        &declaration(&prefix, 5),
        &Members::providers(&providers),
    )
    .await
    .unwrap();
    assert_eq!(
        grown.grown,
        vec![(format!("{prefix}.events"), 3, 5)],
        "{grown}"
    );
    let shrunk = apply(
        &stack.kafka,
        &declaration(&prefix, 2),
        &Members::providers(&providers),
    )
    .await
    .unwrap();
    assert!(!shrunk.changed_anything());
    assert!(shrunk
        .warnings
        .iter()
        .any(|warning| warning.contains("cannot be removed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topics_get_the_declared_min_isr_capped_at_the_replication() {
    let stack = stack();
    let prefix = unique("it-min-isr");
    let report = apply(
        &stack.kafka,
        &mixed_declaration(&prefix, 2, false),
        &Members::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.created.len(), 2, "{report}");
    let topic = format!("{prefix}.ordered");
    let (_, brokers) = partitions_and_brokers(&stack.kafka, &topic);
    // Declared 2 with replication 3: on a cluster of fewer brokers both are capped.
    let expected = 2.min(3.min(brokers)).to_string();
    let config = topic_config(&stack.kafka, &topic).await;
    assert_eq!(
        config.get("min.insync.replicas"),
        Some(&(expected, true)),
        "set on the topic itself, not inherited from the broker"
    );
    assert_eq!(
        config.get("retention.ms"),
        Some(&((7 * 86_400_000_i64).to_string(), true))
    );
    assert_eq!(
        config
            .get("cleanup.policy")
            .map(|(value, _)| value.as_str()),
        Some("delete")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_changed_out_of_band_is_reported_as_drift_and_left_alone() {
    let stack = stack();
    let prefix = unique("it-drift");
    let declaration = mixed_declaration(&prefix, 1, false);
    apply(&stack.kafka, &declaration, &Members::default())
        .await
        .unwrap();
    let topic = format!("{prefix}.dlq");
    let min_insync = topic_config(&stack.kafka, &topic).await["min.insync.replicas"]
        .0
        .clone();

    // AlterConfigs replaces the topic's whole configuration, so the other declared
    // settings are given again.
    let change = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("retention.ms", "3600000")
        .set("cleanup.policy", "delete")
        .set("min.insync.replicas", &min_insync);
    for result in admin(&stack.kafka)
        .alter_configs(&[change], &options())
        .await
        .expect("alter configs")
    {
        result.unwrap_or_else(|(resource, code)| panic!("altering {resource:?}: {code}"));
    }

    let report = apply(&stack.kafka, &declaration, &Members::default())
        .await
        .unwrap();
    let text = report.to_string();
    let drift: Vec<_> = report
        .drift
        .iter()
        .map(|drift| (drift.topic.as_str(), drift.setting))
        .collect();
    assert_eq!(drift, vec![(topic.as_str(), "retention.ms")], "{text}");
    assert!(
        text.contains(&format!(
            "drift      {topic}: retention.ms is 3600000 (1h), declared 7776000000 (90d)"
        )),
        "{text}"
    );
    assert!(!text.starts_with("nothing to change"), "{text}");
    assert!(text.ends_with("1 with drift"), "{text}");
    assert_eq!(report.unchanged, vec![format!("{prefix}.ordered")]);
    assert_eq!(
        topic_config(&stack.kafka, &topic).await["retention.ms"].0,
        "3600000",
        "drift is reported, not changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_topic_is_refused_more_partitions_and_the_rest_is_still_applied() {
    let stack = stack();
    let prefix = unique("it-refuse");
    apply(
        &stack.kafka,
        &mixed_declaration(&prefix, 2, false),
        &Members::default(),
    )
    .await
    .unwrap();

    let report = apply(
        &stack.kafka,
        &mixed_declaration(&prefix, 4, true),
        &Members::default(),
    )
    .await
    .expect("a refusal is reported, not an error");
    let ordered = format!("{prefix}.ordered");
    let order_free = format!("{prefix}.dlq");
    assert_eq!(report.created, vec![format!("{prefix}.late")], "{report}");
    assert_eq!(report.grown, vec![(order_free.clone(), 2, 4)], "{report}");
    assert_eq!(report.refused.len(), 1, "{report}");
    let refusal = report.refused[0].to_string();
    for expected in [
        format!("{ordered}: refused to add partitions (2 -> 4)"),
        "rely on the order of messages with the same key (referral id)".to_owned(),
        "more partitions would send existing keys to other partitions".to_owned(),
        "Keep `partitions: 2` in topics.yaml".to_owned(),
        "create a new topic with 4 partitions and move producers and consumers over to it"
            .to_owned(),
    ] {
        assert!(
            refusal.contains(&expected),
            "{expected:?} missing: {refusal}"
        );
    }
    assert!(
        report
            .to_string()
            .contains(&format!("refused    {ordered}:")),
        "{report}"
    );
    assert_eq!(partitions_and_brokers(&stack.kafka, &ordered).0, 2);
    assert_eq!(partitions_and_brokers(&stack.kafka, &order_free).0, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_free_topic_really_grows() {
    let stack = stack();
    let prefix = unique("it-grow");
    apply(
        &stack.kafka,
        &mixed_declaration(&prefix, 1, false),
        &Members::default(),
    )
    .await
    .unwrap();
    let order_free = format!("{prefix}.dlq");
    assert_eq!(partitions_and_brokers(&stack.kafka, &order_free).0, 1);

    let mut declaration = mixed_declaration(&prefix, 1, false);
    declaration
        .topics
        .iter_mut()
        .find(|topic| topic.name == order_free)
        .unwrap()
        .partitions = 3;
    let report = apply(&stack.kafka, &declaration, &Members::default())
        .await
        .unwrap();
    assert_eq!(report.grown, vec![(order_free.clone(), 1, 3)], "{report}");
    assert!(report.refused.is_empty(), "{report}");
    assert_eq!(partitions_and_brokers(&stack.kafka, &order_free).0, 3);

    let again = apply(&stack.kafka, &declaration, &Members::default())
        .await
        .unwrap();
    assert!(
        again.to_string().starts_with("nothing to change"),
        "{again}"
    );
}

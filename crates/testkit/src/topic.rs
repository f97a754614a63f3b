//! Reading and creating topics in tests, async and without fixed waits: a read returns
//! as soon as what it waits for has arrived and every partition has been read to the
//! end the log had then, so an extra copy already on the log is counted too.

use std::collections::HashMap;
use std::time::Duration;

use linkwork_bus::headers::HeaderList;
use linkwork_bus::topics::TopicsFile;
use linkwork_bus::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// One message read back.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HeaderList,
}

impl ReadMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// The payload as JSON, or as a JSON string of its text when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.payload).into_owned()))
    }
}

/// The built-in declaration (`topics.yaml`) with at most three partitions a topic: the
/// same topics, light enough that many tests' worth of them share one test broker. A
/// test that runs a router gives it this declaration too, so the router finds its
/// topics as declared.
pub fn small_declaration() -> TopicsFile {
    let path = crate::workspace_root().join("topics.yaml");
    let mut declaration = TopicsFile::load(&path).expect("the built-in topics.yaml");
    for topic in &mut declaration.topics {
        topic.partitions = topic.partitions.min(3);
    }
    declaration
}

/// Creates every topic of `declaration` (already named) and the queues of
/// `providers`, as `linkwork topics apply` does; panics if the broker refuses any.
pub async fn apply(
    kafka: &KafkaSettings,
    declaration: &TopicsFile,
    providers: &[linkwork_domain::ProviderId],
) {
    let report = linkwork_bus::topics::apply(
        kafka,
        declaration,
        &linkwork_bus::topics::Members::providers(providers),
    )
    .await
    .expect("broker is reachable (LINKWORK_TEST_KAFKA_BROKERS); start it with `make broker`");
    assert!(report.refused.is_empty(), "{report}");
}

/// Reads `topic` from the beginning until `expected` messages have arrived and every
/// partition has been read to the end the log had then; gives up after `within` and
/// returns what it has.
pub async fn read(
    kafka: &KafkaSettings,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<ReadMessage> {
    let deadline = tokio::time::Instant::now() + within;
    let consumer: StreamConsumer = kafka
        .client_config()
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    // A topic created a moment ago (by a projector, say) may not be in the broker's
    // metadata yet: it has no partitions until it is, and nothing would be read.
    let mut partitions = log_ends(kafka, topic).await;
    while partitions.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        partitions = log_ends(kafka, topic).await;
    }
    let mut assignment = TopicPartitionList::new();
    for (partition, _, _) in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    // The next offset to read, per partition read from.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut ends: Option<Vec<(i32, i64, i64)>> = None;
    loop {
        if messages.len() >= expected {
            if ends.is_none() {
                ends = Some(log_ends(kafka, topic).await);
            }
            let read_to_the_end = ends.iter().flatten().all(|(partition, low, high)| {
                low >= high || next.get(partition).is_some_and(|offset| offset >= high)
            });
            if read_to_the_end {
                break;
            }
        }
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => {
                tracing::warn!(%error, topic, "reading the topic");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        next.insert(message.partition(), message.offset() + 1);
        messages.push(ReadMessage {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: HeaderList::from_kafka(message.headers()),
        });
    }
    messages
}

/// Each partition of `topic` with its low and high watermarks. The client calls block,
/// so they run on the blocking pool.
pub async fn log_ends(kafka: &KafkaSettings, topic: &str) -> Vec<(i32, i64, i64)> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = kafka.client_config().create().expect("metadata client");
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions)
            .map(|partition| {
                let (low, high) = client
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .expect("watermarks");
                (partition, low, high)
            })
            .collect()
    })
    .await
    .expect("watermarks task")
}

//! The idempotent producer: `enable.idempotence=true`, `acks=all`, one request in
//! flight per broker, and every send awaits the broker's acknowledgement.
//!
//! A failed delivery does not always mean the message is absent: librdkafka reports a
//! message whose request reached the broker but went unanswered (a timeout, a broker
//! killed mid-request) as failed too. [`Producer::may_have_sent`] tells the two apart
//! in the one case that is certain: a producer that has never sent a produce request
//! cannot have written anything.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use linkwork_domain::{DomainEvent, EventId};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::headers::{EventMeta, HeaderList};
use crate::settings::KafkaSettings;
use crate::{trace, BusError};

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A message ready to send.
#[derive(Debug, Clone)]
pub struct Outbound<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    /// `None` lets the client choose by key (murmur2, as the Java client does).
    pub partition: Option<i32>,
    pub payload: &'a [u8],
    pub headers: HeaderList,
}

/// How often librdkafka reports its statistics (the count of produce requests sent).
const STATISTICS_INTERVAL: Duration = Duration::from_millis(500);

/// What the producer's statistics have said about the requests it sent.
#[derive(Debug, Default)]
struct Transmissions {
    /// Statistics reports received so far.
    reports: AtomicU64,
    /// The most produce requests any report counted (all brokers together).
    produce_requests: AtomicI64,
}

/// The producer's client context: librdkafka's logs as usual, its statistics counted.
#[derive(Debug, Clone, Default)]
struct CountingContext {
    transmissions: Arc<Transmissions>,
}

impl ClientContext for CountingContext {
    fn stats(&self, statistics: Statistics) {
        let sent: i64 = statistics
            .brokers
            .values()
            .filter_map(|broker| broker.req.get("Produce"))
            .sum();
        self.transmissions
            .produce_requests
            .fetch_max(sent, Ordering::SeqCst);
        self.transmissions.reports.fetch_add(1, Ordering::SeqCst);
    }
}

/// A cheap-to-clone handle on one librdkafka producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<CountingContext>,
    /// Counted sends, for producers made with [`Producer::tracking_sends`].
    transmissions: Option<Arc<Transmissions>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer whose deliveries time out after 30 s.
    pub fn new(settings: &KafkaSettings) -> Result<Self, BusError> {
        Self::with_delivery_timeout(settings, Duration::from_secs(30))
    }

    /// A producer that gives up on a delivery after `timeout`.
    pub fn with_delivery_timeout(
        settings: &KafkaSettings,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        Self::build(settings, timeout, false)
    }

    /// A producer for acknowledgements to callers (ingest): a short `timeout`, so an
    /// HTTP caller hears 503 quickly when the broker is down, and librdkafka's
    /// statistics counted (every 500 ms) so that [`Producer::may_have_sent`] can tell
    /// a broker that was never reached from a delivery whose answer was lost.
    pub fn tracking_sends(settings: &KafkaSettings, timeout: Duration) -> Result<Self, BusError> {
        Self::build(settings, timeout, true)
    }

    fn build(settings: &KafkaSettings, timeout: Duration, track: bool) -> Result<Self, BusError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // One produce request in flight per broker. With more, a partition's later
            // request can land while an earlier one is refused (NOT_LEADER_OR_FOLLOWER
            // while a new topic's or a restarted broker's leadership is taken up), and a
            // broker with no state yet for this producer on that partition accepts the
            // later sequence as a start. librdkafka then reports the refused message
            // delivered ("implicitly acked by subsequent batch success", offset -1001)
            // although it never reached the log: an acknowledged message lost. Seen in
            // the broker-kill test under CPU load; confluent-kafka-go#921 is the same.
            .set("max.in.flight.requests.per.connection", "1")
            // Keys hash as in the Java client, so every producer agrees on partitions.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            // What waits for the broker is bounded: a full queue makes senders wait.
            // 4 MiB is over a tenth of a second of HTTP ingest at its fastest.
            .set("queue.buffering.max.kbytes", "4096");
        if track {
            config.set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            );
        }
        let context = CountingContext::default();
        let transmissions = track.then(|| context.transmissions.clone());
        let inner: FutureProducer<CountingContext> = config.create_with_context(context)?;
        Ok(Self {
            inner,
            transmissions,
        })
    }

    /// Whether any message this producer failed to deliver may still be on the log:
    /// always true for a producer that does not track its sends; otherwise false only
    /// when, by statistics reported after this call began, it has never
    /// sent a produce request to any broker (the broker was never reachable). Call it
    /// after a failed delivery; it waits for fresh statistics (about a second).
    pub async fn may_have_sent(&self) -> bool {
        let Some(transmissions) = &self.transmissions else {
            // Not counted: assume the worst.
            return true;
        };
        // The report under way now may have been gathered before the failure: wait
        // for the one after it.
        let seen = transmissions.reports.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + STATISTICS_INTERVAL * 6;
        while transmissions.reports.load(Ordering::SeqCst) < seen + 2 {
            if tokio::time::Instant::now() >= deadline {
                // No statistics: assume the worst.
                return true;
            }
            tokio::time::sleep(STATISTICS_INTERVAL / 10).await;
        }
        transmissions.produce_requests.load(Ordering::SeqCst) > 0
    }

    /// Sends one message and waits for the broker's acknowledgement.
    pub async fn send(&self, outbound: Outbound<'_>) -> Result<Delivered, BusError> {
        let delivery = self.enqueue(outbound).await?;
        await_delivery(delivery).await
    }

    /// Sends many messages and waits for every acknowledgement. All are queued before
    /// any is awaited, so librdkafka batches them. Results are in input order; one
    /// failure does not stop the others.
    pub async fn send_all(&self, outbound: Vec<Outbound<'_>>) -> Vec<Result<Delivered, BusError>> {
        let mut pending = Vec::with_capacity(outbound.len());
        for message in outbound {
            pending.push(self.enqueue(message).await);
        }
        await_all(pending).await
    }

    /// Hands a message to librdkafka, waiting while its local queue is full.
    pub(crate) async fn enqueue(&self, outbound: Outbound<'_>) -> Result<DeliveryFuture, BusError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(outbound.topic)
            .payload(outbound.payload)
            .headers(outbound.headers.to_kafka());
        if let Some(key) = outbound.key {
            record = record.key(key);
        }
        if let Some(partition) = outbound.partition {
            record = record.partition(partition);
        }
        loop {
            match self.inner.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // Deliveries drain the queue in the background; a short pause is enough.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => return Err(BusError::Kafka(error)),
            }
        }
    }

    /// Publishes a domain event with its CloudEvents headers and the current span's
    /// trace context, and waits for the acknowledgement.
    pub async fn publish<E: DomainEvent>(
        &self,
        topic: &str,
        event_id: EventId,
        source: &str,
        time: DateTime<Utc>,
        event: &E,
    ) -> Result<Delivered, BusError> {
        let (traceparent, tracestate) = trace::current_context();
        let meta = EventMeta {
            id: *event_id.as_uuid(),
            event_type: event.event_type().to_owned(),
            source: source.to_owned(),
            time,
            traceparent,
            tracestate,
        };
        let payload = event.encode();
        let key = event.key();
        self.send(Outbound {
            topic,
            key: Some(key.as_bytes()),
            partition: None,
            payload: &payload,
            headers: meta.to_headers(),
        })
        .await
    }

    /// Publishes many events (to one topic), pipelined; results in input order.
    pub async fn publish_batch<E: DomainEvent>(
        &self,
        topic: &str,
        source: &str,
        time: DateTime<Utc>,
        events: &[(EventId, E)],
    ) -> Vec<Result<Delivered, BusError>> {
        let (traceparent, tracestate) = trace::current_context();
        let encoded: Vec<(String, Vec<u8>, HeaderList)> = events
            .iter()
            .map(|(event_id, event)| {
                let meta = EventMeta {
                    id: *event_id.as_uuid(),
                    event_type: event.event_type().to_owned(),
                    source: source.to_owned(),
                    time,
                    traceparent: traceparent.clone(),
                    tracestate: tracestate.clone(),
                };
                (event.key(), event.encode(), meta.to_headers())
            })
            .collect();
        let outbound = encoded
            .iter()
            .map(|(key, payload, headers)| Outbound {
                topic,
                key: Some(key.as_bytes()),
                partition: None,
                payload,
                headers: headers.clone(),
            })
            .collect();
        self.send_all(outbound).await
    }

    /// Waits until everything queued has been delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(timeout)?;
        Ok(())
    }

    /// Metadata for one topic: its partition count.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, BusError> {
        let client = self.inner.clone();
        let topic_name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(Some(&topic_name), Duration::from_secs(10))
        })
        .await
        .map_err(|error| BusError::Config(format!("metadata lookup panicked: {error}")))??;
        let partitions = metadata
            .topics()
            .iter()
            .find(|candidate| candidate.name() == topic)
            .filter(|found| found.error().is_none())
            .map(|found| found.partitions().len() as i32)
            .unwrap_or(0);
        if partitions == 0 {
            return Err(BusError::UnknownTopic(topic.to_owned()));
        }
        Ok(partitions)
    }

    /// The high watermark (next offset to be written) of one partition.
    pub async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64, BusError> {
        let client = self.inner.clone();
        let topic = topic.to_owned();
        let (_low, high) = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
        })
        .await
        .map_err(|error| BusError::Config(format!("watermark lookup panicked: {error}")))??;
        Ok(high)
    }
}

/// Several producers, each partition always sent through the same one.
///
/// librdkafka sends one produce request per partition, and [`Producer`] allows one
/// request in flight per broker connection (see `build` for why). A round of messages
/// spread over many partitions (the relay's: a dozen event partitions and three for
/// each provider queue) therefore waits for one broker round trip per partition, in
/// turn. Spread over `n` producers, `n` requests are in flight at once while any one
/// partition still has at most one, in order, on one connection: the guarantee that
/// setting exists for is kept.
#[derive(Clone, Debug)]
pub struct ProducerSet {
    producers: Vec<Producer>,
}

impl ProducerSet {
    /// `count` producers (at least one).
    pub fn new(settings: &KafkaSettings, count: usize) -> Result<Self, BusError> {
        let producers = (0..count.max(1))
            .map(|_| Producer::new(settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { producers })
    }

    /// One of the producers, for metadata look-ups.
    pub fn any(&self) -> &Producer {
        &self.producers[0]
    }

    /// The producer a partition's messages go through: FNV-1a of the topic and the
    /// partition, so the choice is stable for the life of the set.
    fn for_partition(&self, topic: &str, partition: Option<i32>) -> &Producer {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let partition = partition.unwrap_or(-1).to_be_bytes();
        for byte in topic.bytes().chain(partition) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let index = usize::try_from(hash % self.producers.len() as u64).unwrap_or(0);
        &self.producers[index]
    }

    /// Sends many messages and waits for every acknowledgement, as
    /// [`Producer::send_all`] does: all queued before any is awaited, results in input
    /// order. Messages without a partition go through one producer chosen by topic.
    pub async fn send_all(&self, outbound: Vec<Outbound<'_>>) -> Vec<Result<Delivered, BusError>> {
        let mut pending = Vec::with_capacity(outbound.len());
        for message in outbound {
            let producer = self.for_partition(message.topic, message.partition);
            pending.push(producer.enqueue(message).await);
        }
        await_all(pending).await
    }
}

/// Waits for each queued message's acknowledgement, in order.
async fn await_all(
    pending: Vec<Result<DeliveryFuture, BusError>>,
) -> Vec<Result<Delivered, BusError>> {
    let mut results = Vec::with_capacity(pending.len());
    for delivery in pending {
        results.push(match delivery {
            Ok(delivery) => await_delivery(delivery).await,
            Err(error) => Err(error),
        });
    }
    results
}

async fn await_delivery(delivery: DeliveryFuture) -> Result<Delivered, BusError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok(Delivered {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        Ok(Err((error, _message))) => Err(BusError::Kafka(error)),
        Err(_canceled) => Err(BusError::Kafka(KafkaError::Canceled)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;

    /// The payloads on partition 0 of `topic`, read from the beginning to its end.
    fn log_of(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "log-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer of the mock cluster");
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&assignment).expect("assign");
        let mut payloads = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (payloads.len() as i64) < high && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                payloads.push(message.payload().unwrap_or_default().to_vec());
            }
        }
        payloads
    }

    /// The relay's set: a partition's messages always go through the same producer,
    /// in the order given (so its one-request-in-flight guarantee holds per partition),
    /// and the partitions of a fan-out are spread over every producer of the set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_set_keeps_each_partition_on_one_producer_in_order_and_spreads_them() {
        let cluster = MockCluster::new(1).expect("a mock cluster");
        let topic = "spread-over-producers";
        cluster.create_topic(topic, 8, 1).expect("a topic");
        let set = ProducerSet::new(&KafkaSettings::new(cluster.bootstrap_servers()), 4)
            .expect("a producer set");

        let chosen = |partition| set.for_partition(topic, Some(partition)) as *const Producer;
        let first: Vec<_> = (0..72).map(chosen).collect();
        let again: Vec<_> = (0..72).map(chosen).collect();
        assert_eq!(first, again, "a partition's producer never changes");
        let used: HashSet<_> = first.iter().collect();
        assert_eq!(used.len(), 4, "72 partitions use all 4 producers");

        let payloads: Vec<(i32, String)> = (0..10)
            .flat_map(|round| {
                (0..8).map(move |partition| (partition, format!("{partition}-{round}")))
            })
            .collect();
        let outbound = payloads
            .iter()
            .map(|(partition, payload)| Outbound {
                topic,
                key: None,
                partition: Some(*partition),
                payload: payload.as_bytes(),
                headers: HeaderList::default(),
            })
            .collect();
        let delivered: Vec<Delivered> = set
            .send_all(outbound)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every message acknowledged");
        for partition in 0..8 {
            let offsets: Vec<i64> = payloads
                .iter()
                .zip(&delivered)
                .filter(|((sent_to, _), _)| *sent_to == partition)
                .map(|(_, delivery)| {
                    assert_eq!(delivery.partition, partition);
                    delivery.offset
                })
                .collect();
            assert_eq!(
                offsets,
                (0..10).collect::<Vec<i64>>(),
                "partition {partition}'s messages land in the order given"
            );
        }
    }

    /// A partition's first produce request refused as "not leader" (a new topic whose
    /// leadership the broker has not taken up yet, a leader election) while a second
    /// request is already under way: the second lands first. A broker that has no state
    /// for this producer on the partition accepts its sequence as a start (the mock
    /// broker checks no sequences for idempotent producers at all), and with requests
    /// pipelined librdkafka then counted the first message as acknowledged by the
    /// second's success ("implicitly acked", offset -1001) although it never reached the
    /// log. Every acknowledged message must be on the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_refused_once_while_a_later_one_lands_is_not_reported_delivered_unwritten() {
        let cluster = MockCluster::new(1).expect("a mock cluster");
        let topic = "refused-then-overtaken";
        cluster.create_topic(topic, 1, 1).expect("a topic");
        let bootstrap = cluster.bootstrap_servers();
        let producer = Producer::new(&KafkaSettings::new(bootstrap.clone())).expect("a producer");
        // Warm up: the producer has its PID and the partition's leader before the test.
        producer
            .send(Outbound {
                topic,
                key: None,
                partition: Some(0),
                payload: b"warm-up",
                headers: HeaderList::default(),
            })
            .await
            .expect("the warm-up lands");
        // Answers come 500 ms after each request, so the second request goes out before
        // the first is answered; the first is answered "not leader".
        cluster
            .broker_round_trip_time(1, Duration::from_millis(500))
            .expect("a round trip time");
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION],
        );
        let first = tokio::spawn({
            let producer = producer.clone();
            async move {
                producer
                    .send(Outbound {
                        topic,
                        key: None,
                        partition: Some(0),
                        payload: b"first",
                        headers: HeaderList::default(),
                    })
                    .await
            }
        });
        // Longer than linger.ms, so the second message is a request of its own.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = producer
            .send(Outbound {
                topic,
                key: None,
                partition: Some(0),
                payload: b"second",
                headers: HeaderList::default(),
            })
            .await;
        let first = first.await.expect("the first send");
        cluster
            .broker_round_trip_time(1, Duration::ZERO)
            .expect("no round trip time");
        let log = tokio::task::spawn_blocking({
            let topic = topic.to_owned();
            move || log_of(&bootstrap, &topic)
        })
        .await
        .expect("reading the log");
        for (payload, result) in [(&b"first"[..], &first), (&b"second"[..], &second)] {
            if let Ok(delivered) = result {
                assert!(
                    log.iter().any(|message| message == payload),
                    "{} was reported delivered ({delivered:?}) but is not on the log: {:?}",
                    String::from_utf8_lossy(payload),
                    log.iter()
                        .map(|message| String::from_utf8_lossy(message))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

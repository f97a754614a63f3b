//! The outbox relay: publishes committed outbox rows with the idempotent producer and
//! marks them published.
//!
//! Exactly once, without Kafka transactions: before producing, the relay records for
//! each row the partition it goes to (chosen here, by key, as Kafka's partitioner would)
//! and an offset at or below where it will land. If the relay dies between producing
//! and marking, the next relay finds those rows already attempted, reads their
//! partitions from the recorded offsets, marks the ones it finds (by `ce_id`) as
//! published, and produces only the rest. One relay leads per database (a Postgres
//! advisory lock), so rows go out in the order they were written.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use linkwork_store::outbox::{self, PendingMessage};
use linkwork_store::sqlx::postgres::PgListener;
use linkwork_store::sqlx::{self, Connection, PgConnection, PgPool};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::headers::{EventMeta, HeaderList, CE_ID, CONTENT_TYPE};
use crate::partitioner::partition_for;
use crate::producer::{Outbound, ProducerSet};
use crate::settings::KafkaSettings;
use crate::BusError;

/// Metadata look-ups in flight at once. Each blocks a thread of tokio's blocking pool
/// while librdkafka asks the broker, so a first round over 72 partitions must not
/// start 72 threads.
const LOOKUPS_AT_ONCE: usize = 8;

/// Advisory lock key of the relay leader (`'linkwork' as bytes`, arbitrary but fixed).
const LEADER_LOCK: i64 = 0x6c69_6e6b_776f_726b;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows published per round.
    pub batch_size: i64,
    /// How often to look for rows when no notification arrives.
    pub idle_poll: Duration,
    /// How often a follower retries for leadership.
    pub leader_retry: Duration,
    /// Published rows are deleted after this long.
    pub keep_published: Duration,
    /// Longest a recovery scan of one partition may take.
    pub recovery_timeout: Duration,
    /// Producers the relay spreads partitions over ([`ProducerSet`]): how many produce
    /// requests may be in flight at once.
    pub producers: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            leader_retry: Duration::from_secs(1),
            keep_published: Duration::from_secs(7 * 24 * 3600),
            recovery_timeout: Duration::from_secs(30),
            producers: 4,
        }
    }
}

/// Publishes the outbox of one database.
pub struct OutboxRelay {
    pool: PgPool,
    producers: ProducerSet,
    kafka: KafkaSettings,
    config: RelayConfig,
    notify: Arc<Notify>,
    partition_counts: HashMap<String, i32>,
    /// A known lower bound of each partition's end, from our own deliveries.
    known_end: HashMap<(String, i32), i64>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OutboxRelay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    pub fn new(pool: PgPool, kafka: &KafkaSettings, config: RelayConfig) -> Result<Self, BusError> {
        Ok(Self {
            pool,
            producers: ProducerSet::new(kafka, config.producers)?,
            kafka: kafka.clone(),
            config,
            notify: Arc::new(Notify::new()),
            partition_counts: HashMap::new(),
            known_end: HashMap::new(),
        })
    }

    /// Notify this to wake the relay after writing outbox rows in this process.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Relays until `shutdown`: waits for leadership, then publishes as rows appear.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BusError> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let mut leader = match self.try_lead().await {
                Ok(Some(connection)) => connection,
                Ok(None) => {
                    wait(&shutdown, self.config.leader_retry).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "outbox relay cannot reach the database");
                    wait(&shutdown, self.config.leader_retry).await;
                    continue;
                }
            };
            tracing::info!("outbox relay leading");
            let outcome = self.lead(&mut leader, &shutdown).await;
            let _ = leader.close().await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(error @ BusError::UnknownTopic(_)) => {
                    // Everything behind the row waits; an operator must create the topic.
                    tracing::error!(%error, "outbox relay blocked");
                    wait(&shutdown, self.config.leader_retry * 5).await;
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "outbox relay lost its footing; retrying");
                    wait(&shutdown, self.config.leader_retry).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A dedicated connection holding the leader lock, or `None` if another relay leads.
    async fn try_lead(&self) -> Result<Option<PgConnection>, BusError> {
        let options = self.pool.connect_options();
        let mut connection = PgConnection::connect_with(&options)
            .await
            .map_err(linkwork_store::StoreError::from)?;
        let leading: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut connection)
            .await
            .map_err(linkwork_store::StoreError::from)?;
        if leading {
            Ok(Some(connection))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    async fn lead(
        &mut self,
        leader: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(linkwork_store::StoreError::from)?;
        listener
            .listen("linkwork_outbox")
            .await
            .map_err(linkwork_store::StoreError::from)?;
        let mut last_check = Instant::now();
        let mut last_prune = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let published = self.relay_once().await?;
            if last_check.elapsed() > Duration::from_secs(5) {
                // Leadership lives with this connection; if it is gone, so is the lock.
                sqlx::query("SELECT 1")
                    .execute(&mut *leader)
                    .await
                    .map_err(linkwork_store::StoreError::from)?;
                last_check = Instant::now();
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                self.prune().await?;
                last_prune = Instant::now();
            }
            if published > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.notify.notified() => {}
                notification = listener.recv() => {
                    notification.map_err(linkwork_store::StoreError::from)?;
                }
                () = tokio::time::sleep(self.config.idle_poll) => {}
            }
        }
    }

    async fn prune(&self) -> Result<(), BusError> {
        let keep = chrono::Duration::from_std(self.config.keep_published)
            .unwrap_or(chrono::Duration::days(7));
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(linkwork_store::StoreError::from)?;
        let deleted = outbox::prune(&mut connection, Utc::now() - keep).await?;
        if deleted > 0 {
            tracing::info!(deleted, "pruned published outbox rows");
        }
        Ok(())
    }

    /// Publishes one round of pending rows; returns how many were published.
    pub async fn relay_once(&mut self) -> Result<usize, BusError> {
        self.round(true).await
    }

    /// Fault injection for tests: produces a round of rows without marking them, as a
    /// relay killed between publishing and marking would leave them.
    #[doc(hidden)]
    pub async fn publish_without_marking(&mut self) -> Result<usize, BusError> {
        self.round(false).await
    }

    async fn round(&mut self, mark: bool) -> Result<usize, BusError> {
        let started = Instant::now();
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(linkwork_store::StoreError::from)?;
        let pending = outbox::pending(&mut connection, self.config.batch_size).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let (attempted, fresh): (Vec<PendingMessage>, Vec<PendingMessage>) = pending
            .into_iter()
            .partition(|message| message.target_partition.is_some());

        let mut to_send: Vec<(PendingMessage, i32)> =
            Vec::with_capacity(attempted.len() + fresh.len());
        let mut recovered = 0usize;
        if !attempted.is_empty() {
            let found = self.find_published(&attempted).await?;
            let mut ids = Vec::new();
            let mut partitions = Vec::new();
            let mut offsets = Vec::new();
            for message in &attempted {
                if let Some(offset) = found.get(&message.event_id) {
                    ids.push(message.id);
                    partitions.push(message.target_partition.unwrap_or(0));
                    offsets.push(*offset);
                }
            }
            if mark && !ids.is_empty() {
                outbox::mark_published(&mut connection, &ids, &partitions, &offsets).await?;
            }
            recovered = ids.len();
            if recovered > 0 {
                tracing::info!(
                    recovered,
                    "outbox rows found already published after an interrupted round"
                );
            }
            for message in attempted {
                if !found.contains_key(&message.event_id) {
                    let partition = message.target_partition.unwrap_or(0);
                    to_send.push((message, partition));
                }
            }
        }

        if !fresh.is_empty() {
            let mut ids = Vec::with_capacity(fresh.len());
            let mut partitions = Vec::with_capacity(fresh.len());
            let mut scan_from = Vec::with_capacity(fresh.len());
            self.learn_partition_counts(fresh.iter().map(|message| message.topic.as_str()))
                .await?;
            for message in &fresh {
                let count = self.partition_counts[&message.topic];
                let key_bytes = message
                    .key
                    .as_ref()
                    .map(|key| key.as_bytes().to_vec())
                    .unwrap_or_else(|| message.event_id.as_bytes().to_vec());
                ids.push(message.id);
                partitions.push(partition_for(&key_bytes, count));
            }
            self.learn_ends(
                fresh
                    .iter()
                    .zip(&partitions)
                    .map(|(message, partition)| (message.topic.as_str(), *partition)),
            )
            .await?;
            for (message, partition) in fresh.iter().zip(&partitions) {
                scan_from.push(self.known_end[&(message.topic.clone(), *partition)]);
            }
            // Committed before producing: this is what a later relay recovers from.
            outbox::record_attempt(&mut connection, &ids, &partitions, &scan_from).await?;
            to_send.extend(fresh.into_iter().zip(partitions));
        }
        // The round's rows grew the buffers of the connection that read them, which
        // would keep them.
        linkwork_store::sqlx::Connection::shrink_buffers(&mut *connection);
        drop(connection);
        let recorded_at = started.elapsed();

        let outbound: Vec<Outbound<'_>> = to_send
            .iter()
            .map(|(message, partition)| Outbound {
                topic: &message.topic,
                key: message.key.as_deref().map(str::as_bytes),
                partition: Some(*partition),
                payload: &message.payload,
                headers: headers_of(message),
            })
            .collect();
        let results = self.producers.send_all(outbound).await;
        let produced_at = started.elapsed();

        let mut ids = Vec::with_capacity(results.len());
        let mut partitions = Vec::with_capacity(results.len());
        let mut offsets = Vec::with_capacity(results.len());
        let mut first_error = None;
        for ((message, _), result) in to_send.iter().zip(results) {
            match result {
                Ok(delivered) => {
                    ids.push(message.id);
                    partitions.push(delivered.partition);
                    offsets.push(delivered.offset);
                    let end = self
                        .known_end
                        .entry((message.topic.clone(), delivered.partition))
                        .or_insert(0);
                    *end = (*end).max(delivered.offset + 1);
                }
                Err(error) => {
                    if first_error.is_none() {
                        first_error = Some(error);
                    }
                }
            }
        }
        if mark && !ids.is_empty() {
            let mut connection = self
                .pool
                .acquire()
                .await
                .map_err(linkwork_store::StoreError::from)?;
            outbox::mark_published(&mut connection, &ids, &partitions, &offsets).await?;
        }
        tracing::debug!(
            rows = to_send.len(),
            recovered,
            read_and_record_ms = recorded_at.as_millis() as u64,
            produce_ms = (produced_at - recorded_at).as_millis() as u64,
            mark_ms = (started.elapsed() - produced_at).as_millis() as u64,
            "outbox round"
        );
        if let Some(error) = first_error {
            return Err(error);
        }
        Ok(ids.len() + recovered)
    }

    /// Looks up the partition counts of the topics not yet known, several at once.
    async fn learn_partition_counts<'t>(
        &mut self,
        topics: impl Iterator<Item = &'t str>,
    ) -> Result<(), BusError> {
        let unknown: BTreeSet<String> = topics
            .filter(|topic| !self.partition_counts.contains_key(*topic))
            .map(str::to_owned)
            .collect();
        let producer = self.producers.any().clone();
        let counts: Vec<(String, Result<i32, BusError>)> = futures::stream::iter(unknown)
            .map(move |topic| {
                let producer = producer.clone();
                async move {
                    let count = producer.partition_count(&topic).await;
                    (topic, count)
                }
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        for (topic, count) in counts {
            self.partition_counts.insert(topic, count?);
        }
        Ok(())
    }

    /// Looks up, several at once, the ends of the partitions whose lower bound is not
    /// yet known (a relay's first round to them); later rounds know them from
    /// deliveries.
    async fn learn_ends<'t>(
        &mut self,
        partitions: impl Iterator<Item = (&'t str, i32)>,
    ) -> Result<(), BusError> {
        let unknown: BTreeSet<(String, i32)> = partitions
            .map(|(topic, partition)| (topic.to_owned(), partition))
            .filter(|key| !self.known_end.contains_key(key))
            .collect();
        let producer = self.producers.any().clone();
        let ends: Vec<((String, i32), Result<i64, BusError>)> = futures::stream::iter(unknown)
            .map(move |key| {
                let producer = producer.clone();
                async move {
                    let high = producer.high_watermark(&key.0, key.1).await;
                    (key, high)
                }
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        for (key, high) in ends {
            self.known_end.insert(key, high?);
        }
        Ok(())
    }

    /// Reads each partition of the attempted rows from their recorded offsets and
    /// returns the rows (by event id) found there, with their offsets.
    async fn find_published(
        &self,
        attempted: &[PendingMessage],
    ) -> Result<HashMap<Uuid, i64>, BusError> {
        let mut wanted: BTreeMap<(String, i32), (i64, HashSet<Uuid>)> = BTreeMap::new();
        for message in attempted {
            let partition = message.target_partition.unwrap_or(0);
            let from = message.scan_from.unwrap_or(0);
            let entry = wanted
                .entry((message.topic.clone(), partition))
                .or_insert_with(|| (from, HashSet::new()));
            entry.0 = entry.0.min(from);
            entry.1.insert(message.event_id);
        }
        let kafka = self.kafka.clone();
        let timeout = self.config.recovery_timeout;
        tokio::task::spawn_blocking(move || {
            let mut found = HashMap::new();
            for ((topic, partition), (from, ids)) in wanted {
                found.extend(scan_partition(
                    &kafka, &topic, partition, from, &ids, timeout,
                )?);
            }
            Ok(found)
        })
        .await
        .map_err(|error| BusError::Consumer(format!("recovery scan panicked: {error}")))?
    }
}

/// Reads `topic`/`partition` from `from` to its end, collecting the offsets of messages
/// whose `ce_id` is in `ids`.
fn scan_partition(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    ids: &HashSet<Uuid>,
    timeout: Duration,
) -> Result<HashMap<Uuid, i64>, BusError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "linkwork.outbox-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let started = Instant::now();
    let mut last_message = Instant::now();
    let mut found = HashMap::new();
    let mut reached_end = from >= high;
    loop {
        if found.len() == ids.len() {
            break;
        }
        // Past the reported end, wait a little longer: some brokers report the high
        // watermark late.
        if reached_end && last_message.elapsed() > Duration::from_millis(500) {
            break;
        }
        if started.elapsed() > timeout {
            return Err(BusError::Consumer(format!(
                "recovery scan of {topic}/{partition} from {from} did not finish in {timeout:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                if message.offset() + 1 >= high {
                    reached_end = true;
                }
                let headers = HeaderList::from_kafka(message.headers());
                if let Some(id) = headers
                    .get_str(CE_ID)
                    .and_then(|id| Uuid::parse_str(id).ok())
                {
                    if ids.contains(&id) {
                        found.insert(id, message.offset());
                    }
                }
            }
            Some(Err(error)) => return Err(BusError::Kafka(error)),
            None => {
                if !reached_end && last_message.elapsed() > Duration::from_secs(2) {
                    // Nothing more arrives: the watermark was optimistic.
                    reached_end = true;
                }
            }
        }
    }
    Ok(found)
}

/// CloudEvents headers, trace context, then the row's extra headers (which may replace
/// the default content type).
fn headers_of(message: &PendingMessage) -> HeaderList {
    let meta = EventMeta {
        id: message.event_id,
        event_type: message.ce_type.clone(),
        source: message.ce_source.clone(),
        time: message.ce_time,
        traceparent: message.traceparent.clone(),
        tracestate: message.tracestate.clone(),
    };
    let mut headers = meta.to_headers();
    if message
        .extra_headers
        .iter()
        .any(|(name, _)| name == CONTENT_TYPE)
    {
        headers.0.retain(|(name, _)| name != CONTENT_TYPE);
    }
    for (name, value) in &message.extra_headers {
        headers.push(name, value.as_str());
    }
    headers
}

async fn wait(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(duration) => {}
    }
}

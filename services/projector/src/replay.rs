//! `linkwork replay`: rebuilds every read model from offset 0 of `referral.events` into
//! a fresh schema, with a progress bar, then swaps it in.
//!
//! The rebuild is a bulk load, not a consumer: nothing of it is visible until the swap,
//! and a replay that fails is started again from the beginning. So it reads the log
//! itself, partitions assigned from their first offset up to the high watermarks taken
//! at the start (no group, no offsets stored per batch, no processed ids recorded), and
//! writes large batches through the live projector's own fold and writes
//! ([`crate::project::apply_batch`]) into tables built with their primary keys only,
//! committed without waiting for the WAL flush. Decoding runs on a thread of its own
//! while the previous batch is written, so the two cores share the work.
//!
//! At the end the other indexes and unique constraints are built, and one transaction renames the schemas and sets
//! the live projector's stored offsets to where the rebuild stopped (its processed ids
//! are dropped: the projector tells copies from the read models themselves). A live
//! projector still running then finds its stored offsets changed under it, seeks to
//! them and carries on from where the rebuild stopped; nothing is lost or applied
//! twice. The swap's commit is synchronous, so the rebuilt rows are durable before they
//! are live.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use linkwork_bus::headers::HeaderList;
use linkwork_bus::{CloudEvent, Decode, HandlerError, KafkaSettings, Record};
use linkwork_domain::ReferralEvent;
use linkwork_projection::{create_schema_for_load, finish_load, lock_schema, quote_ident, swap_in};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::project::{apply_batch, LoggedEvent};
use crate::{reset_consumer, ProjectorConfig, ProjectorError};

/// Events written per transaction. Large enough that a referral's life mostly falls in
/// one batch and per-batch costs vanish; small enough that three batches (one being
/// decoded, one waiting, one being written) stay a few megabytes.
const BATCH: usize = 2000;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub events: u64,
    pub elapsed: Duration,
    pub referrals: i64,
}

/// Where each partition of the event log ends now: (partition, low, high).
fn watermarks(kafka: &KafkaSettings, topic: &str) -> Result<Vec<(i32, i64, i64)>, ProjectorError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "linkwork.replay.watermarks")
        .create()
        .map_err(|error| ProjectorError::Replay(format!("Kafka client: {error}")))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|error| ProjectorError::Replay(format!("metadata of {topic}: {error}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ProjectorError::Replay(format!(
            "topic {topic} has no partitions (does it exist?)"
        )));
    }
    partitions
        .into_iter()
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map(|(low, high)| (partition, low, high))
                .map_err(|error| {
                    ProjectorError::Replay(format!("watermarks of {topic}/{partition}: {error}"))
                })
        })
        .collect()
}

async fn stored_offsets(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
    )
    .bind(consumer)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// One decoded event of the log.
struct Logged {
    event_id: uuid::Uuid,
    event_type: String,
    event: ReferralEvent,
}

/// What the reading thread hands over: a batch of events in log order (per
/// partition), and how many records it read to make it (undecodable ones included).
struct Batch {
    events: Vec<Logged>,
    records: u64,
}

/// A partition to read: from `low` up to (not including) `high`.
#[derive(Debug, Clone, Copy)]
struct Span {
    partition: i32,
    low: i64,
    high: i64,
}

/// Reads `spans` of `topic` and sends them in decoded batches of up to `batch` events,
/// until every span is read, the receiver is gone or `stop` is set. Runs on a thread of
/// its own: librdkafka's client is blocking, and decoding is half the CPU a replay
/// takes.
fn read_log(
    kafka: &KafkaSettings,
    group_id: &str,
    topic: &str,
    spans: &[Span],
    batch: usize,
    out: &mpsc::Sender<Result<Batch, String>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A first offset the log no longer holds means retention removed events since
        // the watermarks were taken: the rebuild would be short of them.
        .set("auto.offset.reset", "error")
        // Bound what librdkafka prefetches: the decoding side keeps up with the broker.
        .set("queued.max.messages.kbytes", "8192")
        .set(
            "fetch.queue.backoff.ms",
            linkwork_bus::FETCH_QUEUE_BACKOFF_MS,
        )
        .set("fetch.max.bytes", linkwork_bus::fetch_max_bytes(kafka))
        .create()
        .map_err(|error| format!("Kafka client: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for span in spans.iter().filter(|span| span.low < span.high) {
        assignment
            .add_partition_offset(topic, span.partition, Offset::Offset(span.low))
            .map_err(|error| format!("offset of {topic}/{}: {error}", span.partition))?;
        remaining.insert(span.partition, span.high);
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(|error| format!("assigning {topic}: {error}"))?;
    let topic_name: Arc<str> = Arc::from(topic);
    let finished = |partition: i32, remaining: &mut HashMap<i32, i64>| {
        if remaining.remove(&partition).is_some() {
            let mut done = TopicPartitionList::new();
            done.add_partition(topic, partition);
            let _ = consumer.pause(&done);
        }
    };
    let mut events = Vec::with_capacity(batch);
    let mut records = 0u64;
    let mut skipped = 0u64;
    while !remaining.is_empty() {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(&high) = remaining.get(&partition) else {
                    continue;
                };
                if message.offset() >= high {
                    finished(partition, &mut remaining);
                    continue;
                }
                let record = Record {
                    topic: topic_name.clone(),
                    partition,
                    offset: message.offset(),
                    key: None,
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: HeaderList::from_kafka(message.headers()),
                };
                records += 1;
                // What the live projector dead-letters, the rebuild passes over.
                match CloudEvent::<ReferralEvent>::decode(&record) {
                    Ok(decoded) => events.push(Logged {
                        event_id: decoded.value.meta.id,
                        event_type: decoded.value.meta.event_type,
                        event: decoded.value.event,
                    }),
                    Err(reason) => {
                        skipped += 1;
                        tracing::warn!(%topic, partition, offset = record.offset, %reason, "undecodable event passed over");
                    }
                }
                if message.offset() + 1 >= high {
                    finished(partition, &mut remaining);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // Everything the partition held is delivered, and it held at least
                // what was there when the watermarks were taken.
                finished(partition, &mut remaining);
            }
            Some(Err(KafkaError::MessageConsumption(
                code @ (RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange),
            ))) => {
                return Err(format!(
                    "the log no longer holds where the replay reads ({code}): retention removed events \
                     while it ran"
                ));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "kafka consumer error during replay");
            }
        }
        if events.len() >= batch || (remaining.is_empty() && records > 0) {
            let full = Batch {
                events: std::mem::replace(&mut events, Vec::with_capacity(batch)),
                records: std::mem::take(&mut records),
            };
            if out.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "undecodable events passed over (the live projector dead-letters them)"
        );
    }
    Ok(())
}

/// Writes one batch in its own transaction, which does not wait for the WAL flush (the
/// swap's commit does, for all of them).
async fn write_batch(
    connection: &mut PgConnection,
    schema: &str,
    events: &[LoggedEvent<'_>],
    vault: Option<&linkwork_vault::Vault>,
) -> Result<(), HandlerError> {
    let mut transaction = connection.begin().await?;
    sqlx::query("SELECT set_config('synchronous_commit', 'off', true)")
        .execute(&mut *transaction)
        .await?;
    apply_batch(&mut transaction, schema, events, false, vault).await?;
    transaction.commit().await?;
    Ok(())
}

/// Writes a batch, retrying transient failures; a batch whose data the database
/// refuses is written one event at a time, and an event refused alone is passed over
/// (as the live projector dead-letters it).
async fn write_with_retries(
    connection: &mut PgConnection,
    schema: &str,
    batch: &[Logged],
    vault: Option<&linkwork_vault::Vault>,
) -> Result<(), ProjectorError> {
    let logged: Vec<LoggedEvent<'_>> = batch
        .iter()
        .map(|logged| LoggedEvent {
            event_id: logged.event_id,
            event_type: &logged.event_type,
            event: &logged.event,
        })
        .collect();
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match write_batch(connection, schema, &logged, vault).await {
            Ok(()) => return Ok(()),
            Err(HandlerError::Retryable(error)) if attempts < 10 => {
                attempts += 1;
                tracing::warn!(%error, attempts, "transient failure; retrying the replay batch");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(HandlerError::Data(_) | HandlerError::Poison { .. }) => break,
            Err(error) => return Err(ProjectorError::Replay(error.to_string())),
        }
    }
    for one in &logged {
        match write_batch(connection, schema, std::slice::from_ref(one), vault).await {
            Ok(()) => {}
            Err(HandlerError::Data(error)) => {
                tracing::warn!(event = %one.event_id, %error, "event refused by the database passed over");
            }
            Err(error) => return Err(ProjectorError::Replay(error.to_string())),
        }
    }
    Ok(())
}

/// Rebuilds the read models and swaps them in. `show_progress` draws the bar on a
/// terminal (it hides itself elsewhere).
pub async fn replay(
    pool: &PgPool,
    kafka: &KafkaSettings,
    config: &ProjectorConfig,
    show_progress: bool,
) -> Result<ReplayReport, ProjectorError> {
    replay_in_batches(pool, kafka, config, show_progress, BATCH).await
}

/// [`replay`], writing `batch` events per transaction (tests make referrals' lives
/// straddle batches with small ones).
pub async fn replay_in_batches(
    pool: &PgPool,
    kafka: &KafkaSettings,
    config: &ProjectorConfig,
    show_progress: bool,
    batch: usize,
) -> Result<ReplayReport, ProjectorError> {
    let batch = batch.max(1);
    let started = Instant::now();
    let topic = config.topics.events.clone();
    // The end of the log as the broker reports it, but never short of where the live
    // projector already is: the swap hands the rebuild's position to the live
    // projector, so the rebuild must cover at least what the live models hold. (The
    // live projector reads only committed records, so on Kafka its offsets never pass
    // the high watermark; the rule costs nothing and keeps the swap safe on brokers
    // that report a trailing watermark, as Tansu 0.6 did.)
    let live = stored_offsets(pool, &config.consumer, &topic).await?;
    let spans: Vec<Span> = watermarks(kafka, &topic)?
        .into_iter()
        .map(|(partition, low, high)| {
            let live_at = live.get(&partition).copied().unwrap_or(high);
            Span {
                partition,
                low,
                high: high.max(live_at),
            }
        })
        .collect();
    let total: u64 = spans
        .iter()
        .map(|span| u64::try_from(span.high - span.low).unwrap_or(0))
        .sum();

    let mut transaction = pool.begin().await?;
    let deferred = create_schema_for_load(&mut transaction, &config.rebuild_schema).await?;
    transaction.commit().await?;

    let bar = if show_progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replaying {pos}/{len} events [{wide_bar}] {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let (batches, mut received) = mpsc::channel::<Result<Batch, String>>(1);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::Builder::new()
        .name("replay-read".into())
        .spawn({
            let (kafka, topic, spans, stop) =
                (kafka.clone(), topic.clone(), spans.clone(), stop.clone());
            let group_id = format!("{}-replay", config.group_id);
            move || {
                if let Err(reason) =
                    read_log(&kafka, &group_id, &topic, &spans, batch, &batches, &stop)
                {
                    let _ = batches.blocking_send(Err(reason));
                }
            }
        })
        .map_err(|error| ProjectorError::Replay(format!("could not start the reader: {error}")))?;
    let written = async {
        let mut connection = pool.acquire().await?;
        while let Some(batch) = received.recv().await {
            let batch = batch.map_err(ProjectorError::Replay)?;
            write_with_retries(
                &mut connection,
                &config.rebuild_schema,
                &batch.events,
                config.vault.as_ref(),
            )
            .await?;
            bar.inc(batch.records);
        }
        Ok::<_, ProjectorError>(())
    }
    .await;
    stop.store(true, Ordering::Release);
    drop(received);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    if let Err(error) = written {
        bar.abandon();
        return Err(error);
    }
    bar.finish();

    let mut transaction = pool.begin().await?;
    finish_load(&mut transaction, &config.rebuild_schema, &deferred).await?;
    transaction.commit().await?;
    swap(pool, config, &topic, &spans).await?;
    let referrals: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.referrals",
        quote_ident(&config.schema)
    ))
    .fetch_one(pool)
    .await?;
    Ok(ReplayReport {
        events: total,
        elapsed: started.elapsed(),
        referrals,
    })
}

/// Puts the rebuilt schema in place of the live one, and the rebuild's position in
/// place of the live projector's, in one transaction.
async fn swap(
    pool: &PgPool,
    config: &ProjectorConfig,
    topic: &str,
    spans: &[Span],
) -> Result<(), ProjectorError> {
    let mut transaction = pool.begin().await?;
    lock_schema(&mut transaction).await?;
    // Wait for a live batch in flight, and keep the next one out until the swap commits.
    sqlx::query("SELECT 1 FROM consumer_offsets WHERE consumer = $1 FOR UPDATE")
        .bind(&config.consumer)
        .execute(&mut *transaction)
        .await?;
    swap_in(&mut transaction, &config.schema, &config.rebuild_schema).await?;
    reset_consumer(&mut transaction, &config.consumer).await?;
    // What replays before this one left under their consumer name.
    reset_consumer(&mut transaction, &format!("{}-replay", config.consumer)).await?;
    let partitions: Vec<i32> = spans.iter().map(|span| span.partition).collect();
    let next: Vec<i64> = spans.iter().map(|span| span.high).collect();
    sqlx::query(
        "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
         SELECT $1, $2, partition, next_offset FROM UNNEST($3::INTEGER[], $4::BIGINT[])
            AS rebuilt(partition, next_offset)",
    )
    .bind(&config.consumer)
    .bind(topic)
    .bind(&partitions)
    .bind(&next)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}

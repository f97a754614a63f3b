//! `linkwork replay`: rebuilds every read model from offset 0 of `referral.events` into
//! a fresh schema, with a progress bar, then swaps it in.
//!
//! The rebuild is a second consumer (`<projector>-replay`, its own offsets and
//! de-duplication) running the live handler with publishing off, into
//! `projection_rebuild`. When it has read up to the high watermarks taken at the start,
//! one transaction renames the schemas and hands the rebuild's offsets and processed
//! ids to the live projector's name. A live projector still running then finds its
//! stored offsets changed under it, seeks to them and carries on from where the rebuild
//! stopped; nothing is lost or applied twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use linkwork_bus::{ConsumerRunner, KafkaSettings};
use linkwork_projection::{create_schema, lock_schema, quote_ident, swap_in};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{reset_consumer, ProjectorConfig, ProjectorError, ProjectorHandler};

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

async fn replay_offsets(
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

/// Rebuilds the read models and swaps them in. `show_progress` draws the bar on a
/// terminal (it hides itself elsewhere).
pub async fn replay(
    pool: &PgPool,
    kafka: &KafkaSettings,
    config: &ProjectorConfig,
    show_progress: bool,
) -> Result<ReplayReport, ProjectorError> {
    let started = Instant::now();
    let topic = config.topics.events.clone();
    let replay_consumer = format!("{}-replay", config.consumer);
    // The end of the log as the broker reports it, but never short of where the live
    // projector already is: the swap hands the rebuild's offsets to the live
    // projector, so the rebuild must cover at least what the live models hold. (The
    // live projector reads only committed records, so on Kafka its offsets never pass
    // the high watermark; the rule costs nothing and keeps the swap safe on brokers
    // that report a trailing watermark, as Tansu 0.6 did.)
    let live = replay_offsets(pool, &config.consumer, &topic).await?;
    let targets: Vec<(i32, i64, i64)> = watermarks(kafka, &topic)?
        .into_iter()
        .map(|(partition, low, high)| {
            let live_at = live.get(&partition).copied().unwrap_or(high);
            (partition, low, high.max(live_at))
        })
        .collect();
    let total: u64 = targets
        .iter()
        .map(|(_, low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum();

    let mut transaction = pool.begin().await?;
    create_schema(&mut transaction, &config.rebuild_schema).await?;
    reset_consumer(&mut transaction, &replay_consumer).await?;
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

    let mut consumer_config = config.consumer_config(
        &replay_consumer,
        &format!("{}-{}", config.group_id, uuid::Uuid::now_v7()),
    );
    consumer_config.max_batch = 2000;
    let handler = ProjectorHandler {
        config: config.clone(),
        schema: config.rebuild_schema.clone(),
        publish: false,
    };
    let runner = ConsumerRunner::new(consumer_config, kafka.clone(), pool.clone(), handler);
    let stop = CancellationToken::new();
    let mut running = tokio::spawn({
        let stop = stop.clone();
        async move { runner.run(stop).await }
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            finished = &mut running => {
                bar.abandon();
                return Err(match finished {
                    Ok(Err(error)) => ProjectorError::Bus(error),
                    _ => ProjectorError::Replay("the replay consumer stopped before reaching the end of the log".into()),
                });
            }
            _ = ticker.tick() => {}
        }
        let offsets = replay_offsets(pool, &replay_consumer, &topic).await?;
        let mut done_events = 0u64;
        let mut caught_up = true;
        for (partition, low, high) in &targets {
            let at = offsets.get(partition).copied().unwrap_or(*low).max(*low);
            done_events += u64::try_from(at.min(*high) - low).unwrap_or(0);
            caught_up &= at >= *high;
        }
        bar.set_position(done_events);
        if caught_up {
            break;
        }
    }
    stop.cancel();
    match running.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(ProjectorError::Bus(error)),
        Err(error) => return Err(ProjectorError::Replay(format!("replay consumer: {error}"))),
    }
    bar.finish();
    swap(pool, config, &replay_consumer).await?;
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
    replay_consumer: &str,
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
    for table in ["consumer_offsets", "processed_events"] {
        sqlx::query(&format!(
            "UPDATE {table} SET consumer = $1 WHERE consumer = $2"
        ))
        .bind(&config.consumer)
        .bind(replay_consumer)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}

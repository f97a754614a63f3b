//! `linkwork demo`: the pipeline end to end on synthetic data.
//!
//! At this stage of the project: the topics are applied, a synthetic ASC call log is
//! published to `asc.call-log`, the metrics service's transactional consumer projects
//! it into Postgres, and the call-log reduction is read back and printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use linkwork_bus::topics::{consumers, ASC_CALL_LOG};
use linkwork_bus::{ConsumerConfig, ConsumerRunner, OutboxRelay, Producer, RelayConfig};
use linkwork_domain::{CallLogEvent, EventId};
use linkwork_metrics::call_log::{self, CallLogProjection};
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::synthetic;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub no_wait: bool,
}

pub async fn run(
    settings: &Settings,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("linkwork demo: a synthetic borough's ASC call log, through Kafka, into Postgres\n");

    println!("1. Topics ({})", settings.kafka()?.brokers);
    let report = crate::topics_command::apply(settings, None, &[]).await?;
    for line in report.lines() {
        println!("   {line}");
    }

    let database = settings.database()?;
    let pool = linkwork_store::connect(&database)
        .await
        .context("connecting to LINKWORK_DATABASE_URL")?;
    linkwork_store::migrate(&pool).await?;
    linkwork_metrics::migrate(&pool).await?;
    println!("\n2. Database ready (migrations applied)");

    let work = shutdown.child_token();
    let relay = OutboxRelay::new(pool.clone(), settings.kafka()?, RelayConfig::default())?;
    let notify = relay.notifier();
    let mut relay_task = tokio::spawn(relay.run(work.clone()));
    let runner = ConsumerRunner::new(
        ConsumerConfig::new(consumers::METRICS, &[ASC_CALL_LOG]),
        settings.kafka()?.clone(),
        pool.clone(),
        CallLogProjection,
    )
    .with_outbox_notify(notify);
    let mut consumer_task = tokio::spawn(runner.run(work.clone()));

    let log = synthetic::call_log(options.seed);
    println!(
        "\n3. Publishing a synthetic call log (seed {}): {} cases, {} closures, {} to {}",
        options.seed,
        log.cases,
        log.closed,
        log.baseline.date_naive(),
        log.end.date_naive()
    );
    let producer = Producer::new(settings.kafka()?)?;
    let progress = ProgressBar::new(log.events.len() as u64).with_style(
        ProgressStyle::with_template("   {bar:40} {pos}/{len} events  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let batch: Vec<(EventId, CallLogEvent)> = log
        .events
        .iter()
        .map(|event| (event.derived_id(), event.clone()))
        .collect();
    // The end of what we published, per partition: the consumer is done when its stored
    // offsets pass it (counting rows would be fooled by an earlier run's data).
    let mut published_end: BTreeMap<i32, i64> = BTreeMap::new();
    for chunk in batch.chunks(2_000) {
        for delivery in producer
            .publish_batch(ASC_CALL_LOG, "linkwork/demo", Utc::now(), chunk)
            .await
        {
            let delivered = delivery.context("publishing the call log")?;
            let end = published_end.entry(delivered.partition).or_insert(0);
            *end = (*end).max(delivered.offset + 1);
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    println!("   {} events acknowledged by the broker", log.events.len());

    println!("\n4. Waiting for the metrics consumer to project them into Postgres");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let consumed = consumed_offsets(&pool).await?;
        let behind: i64 = published_end
            .iter()
            .map(|(partition, end)| (end - consumed.get(partition).copied().unwrap_or(0)).max(0))
            .sum();
        if behind == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the consumer was still {behind} events behind after 2 minutes");
        }
        tokio::select! {
            outcome = &mut consumer_task => bail!("the consumer stopped: {:?}", outcome),
            outcome = &mut relay_task => bail!("the outbox relay stopped: {:?}", outcome),
            () = shutdown.cancelled() => bail!("interrupted while waiting for the consumer"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }

    // The synthetic log's baseline and end are midnights: count at the close of the
    // day before each.
    let day_before = |at: chrono::DateTime<chrono::Utc>| {
        let date = at.date_naive();
        date.pred_opt().unwrap_or(date)
    };
    let report = call_log::report(&pool, day_before(log.baseline), day_before(log.end)).await?;
    println!("\nCall-log reduction (from Postgres, as projected from the event log)");
    println!(
        "   baseline {}: {:>5} open cases",
        report.baseline, report.open_at_baseline
    );
    println!(
        "   end      {}: {:>5} open cases",
        report.end, report.open_at_end
    );
    match report.reduction_percent {
        Some(percent) => println!(
            "   reduction:       {:>5} cases ({percent:.1}%)",
            report.reduction
        ),
        None => println!("   reduction:       {:>5} cases", report.reduction),
    }
    println!(
        "   diverted to community connectors in the period: {}",
        report.diverted
    );
    println!("   drive took {:.1} s", started.elapsed().as_secs_f64());
    let other_runs = cases_from_other_seeds(&pool, options.seed).await?;
    if other_runs > 0 {
        println!(
            "   note: the call log also holds {other_runs} cases from runs with other seeds (the read model is the whole log);\n         \
             to start afresh: make stop, then make demo (a new broker starts a new database)"
        );
    }

    println!("\nWhere to look");
    let database_url = settings.database_url_for_display().unwrap_or_default();
    println!(
        "   Postgres: psql {database_url} -c 'SELECT * FROM asc_cases ORDER BY opened_at LIMIT 20'"
    );
    println!(
        "   Kafka:    topic {ASC_CALL_LOG} on {}",
        settings.kafka()?.brokers
    );
    println!("   Offsets:  SELECT * FROM consumer_offsets  (kept with the data, per DESIGN.md principle 3)");

    if !options.no_wait {
        println!("\nConsumer still running; Ctrl-C to stop.");
        tokio::select! {
            () = shutdown.cancelled() => {}
            outcome = &mut consumer_task => bail!("the consumer stopped: {:?}", outcome),
        }
    }
    work.cancel();
    consumer_task.await.context("consumer task")??;
    relay_task.await.context("relay task")??;
    Ok(())
}

async fn cases_from_other_seeds(
    pool: &linkwork_store::sqlx::PgPool,
    seed: u64,
) -> anyhow::Result<i64> {
    let count: i64 = linkwork_store::sqlx::query_scalar(
        "SELECT count(*) FROM asc_cases WHERE case_id NOT LIKE $1",
    )
    .bind(format!("SYN{seed}-%"))
    .fetch_one(pool)
    .await?;
    Ok(count)
}

/// The metrics consumer's stored next offset per partition of the call-log topic.
async fn consumed_offsets(
    pool: &linkwork_store::sqlx::PgPool,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = linkwork_store::sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
    )
    .bind(consumers::METRICS)
    .bind(ASC_CALL_LOG)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

//! `linkwork demo`: the pipeline end to end on synthetic data.
//!
//! At this stage of the project: the topics are applied, a synthetic ASC call log is
//! published to `asc.call-log`, the metrics service's transactional consumer projects
//! it into Postgres, and the call-log reduction is read back and printed.

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

    println!("1. Topics ({})", settings.kafka.brokers);
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
    let relay = OutboxRelay::new(pool.clone(), &settings.kafka, RelayConfig::default())?;
    let notify = relay.notifier();
    let mut relay_task = tokio::spawn(relay.run(work.clone()));
    let runner = ConsumerRunner::new(
        ConsumerConfig::new(consumers::METRICS, &[ASC_CALL_LOG]),
        settings.kafka.clone(),
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
    let producer = Producer::new(&settings.kafka)?;
    let progress = ProgressBar::new(log.events.len() as u64).with_style(
        ProgressStyle::with_template("   {bar:40} {pos}/{len} events  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let batch: Vec<(EventId, CallLogEvent)> = log
        .events
        .iter()
        .map(|event| (event.derived_id(), event.clone()))
        .collect();
    for chunk in batch.chunks(2_000) {
        for delivery in producer
            .publish_batch(ASC_CALL_LOG, "linkwork/demo", Utc::now(), chunk)
            .await
        {
            delivery.context("publishing the call log")?;
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    println!("   {} events acknowledged by the broker", log.events.len());

    println!("\n4. Waiting for the metrics consumer to project them into Postgres");
    let prefix = format!("SYN{}-%", options.seed);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (cases, closed): (i64, i64) = sqlx_count(&pool, &prefix).await?;
        if cases as usize >= log.cases && closed as usize >= log.closed {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the call log was not fully projected within 2 minutes ({cases} of {} cases)",
                log.cases
            );
        }
        tokio::select! {
            outcome = &mut consumer_task => bail!("the consumer stopped: {:?}", outcome),
            outcome = &mut relay_task => bail!("the outbox relay stopped: {:?}", outcome),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }

    let summary = call_log::summary(&pool, log.baseline, log.end).await?;
    println!("\nCall-log reduction (from Postgres, as projected from the event log)");
    println!(
        "   baseline {}: {:>5} open cases",
        summary.baseline.date_naive(),
        summary.open_at_baseline
    );
    println!(
        "   end      {}: {:>5} open cases",
        summary.end.date_naive(),
        summary.open_at_end
    );
    match summary.reduction_percent() {
        Some(percent) => println!(
            "   reduction:       {:>5} cases ({percent:.1}%)",
            summary.reduction()
        ),
        None => println!("   reduction:       {:>5} cases", summary.reduction()),
    }
    println!(
        "   diverted to community connectors in the period: {}",
        summary.diverted
    );
    println!("   drive took {:.1} s", started.elapsed().as_secs_f64());

    println!("\nWhere to look");
    println!("   Postgres: psql \"$LINKWORK_DATABASE_URL\" -c 'SELECT * FROM asc_cases ORDER BY opened_at LIMIT 20'");
    println!(
        "   Kafka:    topic {ASC_CALL_LOG} on {}",
        settings.kafka.brokers
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

async fn sqlx_count(
    pool: &linkwork_store::sqlx::PgPool,
    prefix: &str,
) -> anyhow::Result<(i64, i64)> {
    let row: (i64, i64) = linkwork_store::sqlx::query_as(
        "SELECT count(*), count(closed_at) FROM asc_cases WHERE case_id LIKE $1 AND opened_at IS NOT NULL",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

//! `linkwork-demo` (`make demo`): the whole pipeline on the synthetic borough of
//! Linkwick. A binary of its own, beside the production `linkwork` binary: the
//! synthetic borough and its drivers are never part of what is deployed.
//!
//! Every service runs in this process (`serve all`) on a manual clock; the borough's
//! GPs, hospital, contact centre, ASC, an older people's charity and residents refer
//! over the real interfaces, ASC's call log arrives as CSV, and the providers' systems
//! answer from their queue topics (see `drive`). Then the summary comes from the read
//! models and the metrics, and the dashboard stays up until Ctrl-C (or, with
//! `--no-wait`, everything stops and the command exits).
//!
//! A run against a log and read models an earlier run left goes on with the borough's
//! story (see [`runs`]): new people from the day the last run stopped, and the
//! summary covers every run.

use linkwork_metrics::disclosure::{Count, Disclosure};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::NaiveDate;
use linkwork_domain::Clock;
use linkwork_store::sqlx::{self, PgPool};
use tokio_util::sync::CancellationToken;

use linkwork::settings::Settings;

use crate::drive::DriveOptions;

pub mod drive;
pub mod runs;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub no_wait: bool,
    pub people: usize,
    pub days: u32,
    pub day_millis: u64,
}

/// The figures the demo prints, from the read models and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    pub received: i64,
    pub by_source: Vec<(String, Count)>,
    pub routed: i64,
    pub accepted: i64,
    pub completed: i64,
    pub loneliness_improved_percent: Option<f64>,
    pub wellbeing_improved_percent: Option<f64>,
    pub open_at_baseline: Count,
    pub open_at_end: Count,
    pub reduction: Count,
    pub reduction_percent: Option<f64>,
}

/// The synthetic call log's baseline is midnight on 1 June 2025: counted at the close
/// of 31 May.
fn baseline() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 5, 31).unwrap_or_default()
}

pub async fn run(
    settings: &Settings,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "linkwork demo: the borough of Linkwick (seed {}), {} people over {} days, through the real services\n",
        options.seed, options.people, options.days
    );
    let mut settings = settings.clone();
    if settings.directory_file.is_none() {
        let path = std::env::temp_dir().join(format!(
            "linkwork-demo-directory-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, drive::DIRECTORY).context("writing the demo directory")?;
        settings.directory_file = Some(path);
    }
    settings.call_log_baseline.get_or_insert_with(baseline);

    println!("1. Topics ({})", settings.kafka()?.brokers);
    for line in linkwork::topics_command::apply(&settings, None, &[], &[])
        .await?
        .lines()
    {
        println!("   {line}");
    }

    // Where the story goes on: after any earlier run's people and days.
    let pool = linkwork_store::connect(&settings.database()?).await?;
    runs::prepare(&pool).await?;
    let last_run = runs::last_run(&pool).await?;
    let provisional = runs::next_chapter(last_run.as_ref(), &runs::on_the_log(&pool).await?);
    let clock = Clock::manual(provisional.start);
    let services = shutdown.child_token();
    let serving = tokio::spawn({
        let (settings, clock, token) = (settings.clone(), clock.clone(), services.clone());
        async move {
            linkwork::serve::run_with_clock(&settings, linkwork::serve::Service::All, token, clock)
                .await
        }
    });
    let base_url = format!("http://{}", settings.http_addr);
    let found = async {
        wait_ready(&base_url, &serving).await?;
        println!(
            "\n2. Services running in this process: ingest, router, projector, metrics ({base_url})"
        );
        // The read models know the earlier runs once they hold all that is on the log
        // (at once when they kept up with it; a database built afresh replays it).
        runs::catch_up(&pool, settings.kafka()?, &settings.names).await?;
        let on_the_log = runs::on_the_log(&pool).await?;
        let next = runs::next_chapter(last_run.as_ref(), &on_the_log);
        if next.number > 1 {
            println!(
                "   continuing: {} referrals already on the log from earlier runs; run {} of the borough goes on from {} with {} new people",
                on_the_log.referrals,
                next.number,
                next.start.date_naive(),
                options.people
            );
        }
        anyhow::Ok(next)
    }
    .await;
    let chapter = match found {
        Ok(chapter) => chapter,
        Err(error) => {
            services.cancel();
            let _ = serving.await;
            return Err(error);
        }
    };

    println!(
        "\n3. Driving the borough (one day every {} ms)",
        options.day_millis
    );
    let drive_options = DriveOptions {
        seed: options.seed,
        people: options.people,
        days: options.days,
        day_millis: options.day_millis,
        chapter,
    };
    let driven = async {
        runs::record(
            &pool,
            options.seed,
            options.people,
            options.days,
            drive_options.story_days(),
            &chapter,
        )
        .await?;
        let drove = drive::drive(
            &settings,
            &drive_options,
            &clock,
            &base_url,
            shutdown.clone(),
        )
        .await?;
        runs::finished(&pool, &chapter).await?;
        anyhow::Ok(drove)
    }
    .await;
    let drove = match driven {
        Ok(drove) => drove,
        Err(error) => {
            services.cancel();
            let _ = serving.await;
            return Err(error);
        }
    };
    for (channel, count) in &drove.sent {
        println!("   {channel}: {count}");
    }
    println!(
        "   refused at intake: {}; provider updates: {} ({} refused as out of date)",
        drove.refused, drove.provider_actions, drove.provider_refusals
    );

    println!("\n4. Waiting for the projector to settle");
    settle(&pool).await?;
    let end = drove
        .end
        .map(|end| end.date_naive())
        .unwrap_or_else(|| linkwork_metrics::http::today(&linkwork_domain::Clock::system()));
    let summary = summary(&pool, baseline(), end).await?;
    print_summary(&summary, &base_url, end);
    println!("   took {:.0} s", started.elapsed().as_secs_f64());

    let mut serving = serving;
    if !options.no_wait {
        println!("\nServing until Ctrl-C.");
        tokio::select! {
            () = shutdown.cancelled() => {}
            outcome = &mut serving => bail!("the services stopped: {outcome:?}"),
        }
    }
    services.cancel();
    match serving.await {
        Ok(result) => result,
        Err(error) => bail!("the services panicked: {error}"),
    }
}

async fn wait_ready(
    base_url: &str,
    serving: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            return Ok(());
        }
        if serving.is_finished() {
            bail!("the services stopped while starting (is {base_url} free?)");
        }
        if Instant::now() > deadline {
            bail!("the services were not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until nothing is left in the outbox and the read models stop changing.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = -1i64;
    let mut steady = 0;
    while steady < 6 {
        if Instant::now() > deadline {
            bail!("the read models were still changing after 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (applied, waiting): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM projection.history) + (SELECT count(*) FROM projection.superseded),
                    (SELECT count(*) FROM outbox)",
        )
        .fetch_one(pool)
        .await?;
        if applied == last && waiting == 0 {
            steady += 1;
        } else {
            steady = 0;
        }
        last = applied;
    }
    Ok(())
}

/// The demo's figures, from the read models and the metrics service's own queries.
pub async fn summary(
    pool: &PgPool,
    baseline: NaiveDate,
    end: NaiveDate,
) -> anyhow::Result<DemoSummary> {
    let (received, routed, accepted, completed): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM projection.referrals),
                (SELECT count(DISTINCT referral_id) FROM projection.tasks),
                (SELECT count(DISTINCT referral_id) FROM projection.history WHERE event_type = 'linkwork.referral.accepted.v1'),
                (SELECT count(*) FROM projection.referrals WHERE status = 'completed')",
    )
    .fetch_one(pool)
    .await?;
    let period = linkwork_metrics::referrals::Period {
        start: baseline,
        end,
    };
    // As published: suppressed as the metrics service suppresses them.
    let snapshot = linkwork_metrics::http::snapshot(pool, period, Disclosure::default()).await?;
    Ok(DemoSummary {
        received,
        by_source: snapshot
            .referrals
            .by_source_total
            .clone()
            .into_iter()
            .collect(),
        routed,
        accepted,
        completed,
        loneliness_improved_percent: snapshot.referrals.outcomes.loneliness.improved_percent,
        wellbeing_improved_percent: snapshot.referrals.outcomes.wellbeing.improved_percent,
        open_at_baseline: snapshot.call_log.open_at_baseline,
        open_at_end: snapshot.call_log.open_at_end,
        reduction: snapshot.call_log.reduction,
        reduction_percent: snapshot.call_log.reduction_percent,
    })
}

fn percent(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.1}%"))
        .unwrap_or_else(|| "–".into())
}

fn print_summary(summary: &DemoSummary, base_url: &str, end: NaiveDate) {
    println!("\nSummary (from the read models and the metrics API)");
    let sources = summary
        .by_source
        .iter()
        .map(|(source, count)| format!("{source} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("   referrals received: {} ({sources})", summary.received);
    println!("   routed to a provider: {}", summary.routed);
    println!("   accepted by a provider: {}", summary.accepted);
    println!("   completed: {}", summary.completed);
    println!(
        "   less lonely: {} of completers measured; better wellbeing: {}",
        percent(summary.loneliness_improved_percent),
        percent(summary.wellbeing_improved_percent)
    );
    println!(
        "   ASC call log: {} -> {} open cases ({} fewer, {})",
        summary.open_at_baseline,
        summary.open_at_end,
        summary.reduction,
        percent(summary.reduction_percent)
    );
    let period = format!("period-start={}&period-end={end}", baseline());
    println!("\nWhere to look");
    println!("   Dashboard:      {base_url}/dashboard?{period}");
    println!("   Metrics (JSON): {base_url}/api/metrics?{period}");
    println!("   MeasureReports: {base_url}/fhir/MeasureReport?{period}");
    println!("   FHIR API:       {base_url}/fhir/metadata (tokens: linkwork dev-token)");
    // The figures are for data teams, commissioners and administrators: a token to
    // sign in to the dashboard with (or to send as a bearer token to the JSON and FHIR
    // routes), from the demo's development secret.
    let token = std::env::var("LINKWORK_AUTH_DEV_SECRET")
        .ok()
        .and_then(|secret| {
            linkwork_auth::dev_token(
                &secrecy::SecretString::from(secret),
                linkwork_auth::Role::Commissioner,
                "demo-commissioner",
                &linkwork_auth::Role::Commissioner.default_scopes("demo-commissioner"),
                8 * 3600,
            )
            .ok()
        });
    if let Some(token) = token {
        println!("   Sign in to the dashboard (a commissioner's token, 8 hours):");
        println!("   {token}");
    }
}

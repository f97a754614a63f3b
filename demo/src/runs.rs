//! What earlier runs of the demo left, and where the next run's story goes on.
//!
//! `make demo` keeps the broker's log and the `linkwork_demo` database between runs, so
//! a second run continues the borough rather than tell the same story again: it
//! numbers its people after the earlier runs' (new NHS numbers, referral and ASC
//! identifiers, so nothing it sends is a resubmission) and starts its clock where the
//! last run stopped its. Two things say where that is: a small record of runs kept
//! beside the read models (`demo_runs`; with it a run's chapter depends only on the
//! seed and the runs before it), and the read models themselves, once caught up with
//! the log, which hold every borough referral even when the record does not (a
//! database rebuilt from an older log). The next chapter goes after both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveTime, Utc};
use linkwork_bus::settings::KafkaSettings;
use linkwork_bus::topics::{consumers, REFERRAL_EVENTS};
use linkwork_store::sqlx::{self, PgPool};
use rdkafka::consumer::{BaseConsumer, Consumer};

use linkwork_borough::{self as borough, Chapter};

/// One earlier run, as the record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub run: u32,
    pub first_person: usize,
    pub people: usize,
    /// The day after the run's last: where its clock would have gone next.
    pub story_end: DateTime<Utc>,
}

/// The borough as the read models show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnTheLog {
    /// Every referral in the read models (the summary counts them all).
    pub referrals: i64,
    /// The borough's referrals among them.
    pub borough_referrals: i64,
    /// One past the highest person number in the borough's referrals.
    pub people: usize,
    /// When the last thing happened to one of the borough's referrals.
    pub last_event: Option<DateTime<Utc>>,
}

/// The chapter a run tells after `last_run` (from the record) and what the log holds:
/// the first when there is neither, otherwise after the people and the days of both.
pub fn next_chapter(last_run: Option<&RunRecord>, on_the_log: &OnTheLog) -> Chapter {
    let mut chapter = Chapter::first();
    if let Some(run) = last_run {
        chapter.number = run.run + 1;
        chapter.first_person = run.first_person + run.people;
        chapter.start = chapter.start.max(run.story_end);
    }
    if on_the_log.borough_referrals > 0 {
        chapter.number = chapter.number.max(2);
        chapter.first_person = chapter.first_person.max(on_the_log.people);
        if let Some(last) = on_the_log.last_event {
            let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default();
            let next_day = (last.date_naive() + chrono::Duration::days(1))
                .and_time(nine)
                .and_utc();
            chapter.start = chapter.start.max(next_day);
        }
    }
    chapter
}

/// Makes the record of runs if it is missing. It lives in the database whose read
/// models the runs built, and goes with it.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_runs (
            run INTEGER PRIMARY KEY CHECK (run > 0),
            seed BIGINT NOT NULL,
            first_person BIGINT NOT NULL CHECK (first_person >= 0),
            people BIGINT NOT NULL CHECK (people >= 0),
            days INTEGER NOT NULL CHECK (days >= 0),
            story_start TIMESTAMPTZ NOT NULL,
            story_end TIMESTAMPTZ NOT NULL,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            finished_at TIMESTAMPTZ
        )",
    )
    .execute(pool)
    .await
    .context("creating the record of demo runs")?;
    Ok(())
}

/// The latest run on record, finished or not (an interrupted run's people and days are
/// used: what it sent is on the log).
pub async fn last_run(pool: &PgPool) -> anyhow::Result<Option<RunRecord>> {
    let row: Option<(i32, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT run, first_person, people, story_end FROM demo_runs ORDER BY run DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .context("reading the record of demo runs")?;
    Ok(row.map(|(run, first_person, people, story_end)| RunRecord {
        run: u32::try_from(run).unwrap_or_default(),
        first_person: usize::try_from(first_person).unwrap_or_default(),
        people: usize::try_from(people).unwrap_or_default(),
        story_end,
    }))
}

/// Records the run about to start, before it sends anything.
pub async fn record(
    pool: &PgPool,
    seed: u64,
    people: usize,
    days: u32,
    story_days: u32,
    chapter: &Chapter,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO demo_runs (run, seed, first_person, people, days, story_start, story_end)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(i32::try_from(chapter.number)?)
    // The seed's bits, as Postgres has no unsigned 64-bit integer.
    .bind(i64::from_ne_bytes(seed.to_ne_bytes()))
    .bind(i64::try_from(chapter.first_person)?)
    .bind(i64::try_from(people)?)
    .bind(i32::try_from(days)?)
    .bind(chapter.start)
    .bind(chapter.start + chrono::Duration::days(i64::from(story_days)))
    .execute(pool)
    .await
    .context("recording the demo run")?;
    Ok(())
}

/// Marks a recorded run as having told its whole story.
pub async fn finished(pool: &PgPool, chapter: &Chapter) -> anyhow::Result<()> {
    sqlx::query("UPDATE demo_runs SET finished_at = now() WHERE run = $1")
        .bind(i32::try_from(chapter.number)?)
        .execute(pool)
        .await?;
    Ok(())
}

/// The borough's referrals in the read models (nothing before the projector first ran).
pub async fn on_the_log(pool: &PgPool) -> anyhow::Result<OnTheLog> {
    let (projected,): (bool,) =
        sqlx::query_as("SELECT to_regclass('projection.referrals') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !projected {
        return Ok(OnTheLog::default());
    }
    let (referrals, borough_referrals, last_person, last_event): (
        i64,
        i64,
        Option<i64>,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM projection.referrals),
                count(DISTINCT referral.referral_id),
                max(substring(referral.source_identifier_value FROM '-([0-9]+)$')::BIGINT),
                max(history.occurred_at)
         FROM projection.referrals AS referral
         LEFT JOIN projection.history AS history USING (referral_id)
         WHERE referral.source_identifier_system LIKE $1",
    )
    .bind(borough::REFERENCE_SYSTEMS)
    .fetch_one(pool)
    .await
    .context("reading the borough's referrals from the read models")?;
    Ok(OnTheLog {
        referrals,
        borough_referrals,
        people: last_person
            .and_then(|last| usize::try_from(last + 1).ok())
            .unwrap_or(0),
        last_event,
    })
}

/// Waits until the projector has applied everything that is on `referral.events` now,
/// so the read models show every earlier run. At once when they are in step with the
/// log, as `make demo` keeps them; a database built afresh from an older log takes a
/// replay.
pub async fn catch_up(
    pool: &PgPool,
    kafka: &KafkaSettings,
    names: &linkwork_bus::Names,
) -> anyhow::Result<()> {
    let events_topic = names.topic(REFERRAL_EVENTS);
    let config = kafka.client_config();
    let topic = events_topic.clone();
    let ends = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let mut config = config;
        config.set("group.id", "linkwork-demo-log-ends");
        let consumer: BaseConsumer = config.create().context("a reader of the log's ends")?;
        // A broker that has just started takes the lead of its partitions one after
        // another: until it leads them all, asking where one ends fails.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match log_ends(&consumer, &topic) {
                Ok(ends) => return Ok(ends),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    })
    .await??;
    let started = Instant::now();
    let mut told = false;
    loop {
        let stored: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
            "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
        )
        .bind(consumers::PROJECTOR)
        .bind(&events_topic)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let behind: i64 = ends
            .iter()
            .map(|(partition, low, high)| {
                let applied = stored.get(partition).copied().unwrap_or(0).max(*low);
                (high - applied).max(0)
            })
            .sum();
        if behind == 0 {
            return Ok(());
        }
        if !told && started.elapsed() > Duration::from_secs(2) {
            println!("   the read models are {behind} events behind the log: catching up");
            told = true;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the read models were still {behind} events behind the log after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each partition of `topic` (the deployment's `referral.events`) with where it starts
/// and ends.
fn log_ends(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let mut ends = Vec::new();
    for described in metadata.topics() {
        for partition in described.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .with_context(|| format!("the ends of {topic}/{}", partition.id()))?;
            ends.push((partition.id(), low, high));
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(year: i32, month: u32, day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, hour, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn with_nothing_before_it_a_run_tells_the_first_chapter() {
        assert_eq!(next_chapter(None, &OnTheLog::default()), Chapter::first());
        // Other referrals on the log are not the borough's.
        let others = OnTheLog {
            referrals: 40,
            ..OnTheLog::default()
        };
        assert_eq!(next_chapter(None, &others), Chapter::first());
    }

    #[test]
    fn a_run_goes_on_after_the_last_recorded_runs_people_and_days() {
        let last = RunRecord {
            run: 1,
            first_person: 0,
            people: 60,
            story_end: at(2025, 10, 1, 9),
        };
        let on_the_log = OnTheLog {
            referrals: 60,
            borough_referrals: 60,
            people: 60,
            last_event: Some(at(2025, 9, 12, 9)),
        };
        assert_eq!(
            next_chapter(Some(&last), &on_the_log),
            Chapter {
                number: 2,
                first_person: 60,
                start: at(2025, 10, 1, 9),
            }
        );
    }

    #[test]
    fn without_a_record_the_read_models_say_where_the_story_got_to() {
        let on_the_log = OnTheLog {
            referrals: 75,
            borough_referrals: 60,
            people: 60,
            last_event: Some(at(2025, 9, 12, 9)),
        };
        assert_eq!(
            next_chapter(None, &on_the_log),
            Chapter {
                number: 2,
                first_person: 60,
                start: at(2025, 9, 13, 9),
            }
        );
    }
}

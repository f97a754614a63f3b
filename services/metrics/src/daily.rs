//! The daily record on `metrics.call-log`: for every finished day (UK local time)
//! since the baseline, the open cases at its end, what opened, closed and was diverted
//! that day, and the reduction since the baseline. Counts only.
//!
//! Each day is recorded in `metrics_call_log_days` and put in the outbox in one
//! transaction, with an event id derived from the date, so each day is published
//! exactly once however many instances run or how often they restart. A day is
//! published once it is over; a call-log export that arrives later changes the API's
//! figures, not a record already sent (the record says what was known that day).

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDate;
use linkwork_bus::topics::METRICS_CALL_LOG;
use linkwork_bus::OutboxEvent;
use linkwork_domain::{CallLogDay, Clock, EventId};
use linkwork_store::outbox;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::call_log;
use crate::stats::percent;

const SOURCE: &str = "linkwork/metrics";

/// Publishes every finished day from `baseline` (or the first case) up to the day
/// before `today` that is not yet published. Returns how many were.
pub async fn publish_finished_days(
    pool: &PgPool,
    topic: &str,
    baseline: Option<NaiveDate>,
    today: NaiveDate,
) -> Result<usize, linkwork_store::StoreError> {
    let Some(yesterday) = today.pred_opt() else {
        return Ok(0);
    };
    let first: Option<NaiveDate> = match baseline {
        Some(baseline) => Some(baseline),
        None => {
            sqlx::query_scalar(
                "SELECT min((opened_at AT TIME ZONE 'Europe/London')::date) FROM asc_cases",
            )
            .fetch_one(pool)
            .await?
        }
    };
    let Some(first) = first.filter(|first| *first <= yesterday) else {
        return Ok(0);
    };
    let mut transaction = pool.begin().await?;
    // One publisher at a time; the others find the days taken.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('linkwork.metrics.call-log-days'))")
        .execute(&mut *transaction)
        .await?;
    let published: std::collections::HashSet<NaiveDate> =
        sqlx::query_scalar("SELECT day FROM metrics_call_log_days WHERE day BETWEEN $1 AND $2")
            .bind(first)
            .bind(yesterday)
            .fetch_all(&mut *transaction)
            .await?
            .into_iter()
            .collect();
    if published.len() as i64 == (yesterday - first).num_days() + 1 {
        return Ok(0);
    }
    let report = call_log::figures(pool, first, yesterday).await?;
    let open_at_baseline = report.daily.first().map_or(0, |day| day.1);
    let per_day: HashMap<NaiveDate, (i64, i64, i64)> = sqlx::query_as::<_, (NaiveDate, i64, i64, i64)>(
        r#"
        WITH facts AS (
            SELECT (opened_at AT TIME ZONE 'Europe/London')::date AS day, 1 AS opened, 0 AS closed, 0 AS diverted
            FROM asc_cases WHERE opened_at IS NOT NULL
            UNION ALL
            SELECT (closed_at AT TIME ZONE 'Europe/London')::date, 0, 1, 0 FROM asc_cases WHERE closed_at IS NOT NULL
            UNION ALL
            SELECT (coalesce(diverted_at, closed_at) AT TIME ZONE 'Europe/London')::date, 0, 0, 1
            FROM asc_cases WHERE diverted_at IS NOT NULL OR closure_reason = 'diverted-to-community'
        )
        SELECT day, sum(opened)::BIGINT, sum(closed)::BIGINT, sum(diverted)::BIGINT
        FROM facts WHERE day BETWEEN $1 AND $2 GROUP BY day
        "#,
    )
    .bind(first)
    .bind(yesterday)
    .fetch_all(&mut *transaction)
    .await?
    .into_iter()
    .map(|(day, opened, closed, diverted)| (day, (opened, closed, diverted)))
    .collect();

    let mut days = Vec::new();
    let mut messages = Vec::new();
    let mut counts = Vec::new();
    for &(date, open) in &report.daily {
        if published.contains(&date) {
            continue;
        }
        let (opened, closed, diverted) = per_day.get(&date).copied().unwrap_or((0, 0, 0));
        let reduction = open_at_baseline - open;
        let record = CallLogDay {
            date,
            open_cases: open,
            opened,
            closed,
            diverted,
            baseline_date: first,
            open_at_baseline,
            reduction,
            reduction_percent: percent(reduction, open_at_baseline),
        };
        let time = call_log::end_of_day(date);
        let day = date;
        let date = date.to_string();
        let event = OutboxEvent {
            topic: topic.to_owned(),
            event_id: EventId::derive(&[METRICS_CALL_LOG, &date]),
            source: SOURCE.to_owned(),
            time,
            key: date,
            event_type: CallLogDay::EVENT_TYPE.to_owned(),
            payload: serde_json::to_vec(&record).unwrap_or_default(),
            headers: Vec::new(),
        };
        messages.push(event.into_message(None, None));
        days.push(day);
        counts.push(open);
    }
    sqlx::query(
        "INSERT INTO metrics_call_log_days (day, open_cases)
         SELECT * FROM UNNEST($1::DATE[], $2::BIGINT[]) ON CONFLICT (day) DO NOTHING",
    )
    .bind(&days)
    .bind(&counts)
    .execute(&mut *transaction)
    .await?;
    outbox::insert(&mut transaction, messages).await?;
    transaction.commit().await?;
    Ok(days.len())
}

/// Publishes the days finished by `clock` now and then every `every` until `shutdown`.
pub async fn run(
    pool: PgPool,
    topic: String,
    baseline: Option<NaiveDate>,
    clock: Clock,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), linkwork_store::StoreError> {
    loop {
        let today = crate::http::today(&clock);
        match publish_finished_days(&pool, &topic, baseline, today).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, topic, "published daily call-log records"),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "daily call-log records not published yet; will retry")
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

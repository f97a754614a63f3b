//! The ASC call log, projected from `asc.call-log`, and the reduction in open cases.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::London;
use linkwork_bus::{CloudEvent, Effects, Handler, HandlerError, Incoming};
use linkwork_domain::CallLogEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::disclosure::{Cell, Count, Disclosure, DisclosureNote, Sheet};

/// Applies call-log events to `asc_cases`. Idempotent per event (a repeated fact sets
/// the same values), so replays and re-imports change nothing.
#[derive(Debug, Default)]
pub struct CallLogProjection;

impl Handler for CallLogProjection {
    type Message = CloudEvent<CallLogEvent>;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        _effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        // One statement per kind of fact. Within a batch the last fact per case wins,
        // as it would applied one by one (a case's events share a partition, in order).
        let mut opened: HashMap<&str, (DateTime<Utc>, Option<&str>)> = HashMap::new();
        let mut closed: HashMap<&str, (DateTime<Utc>, &'static str)> = HashMap::new();
        let mut diverted: HashMap<&str, (DateTime<Utc>, Option<Uuid>)> = HashMap::new();
        for incoming in batch {
            match &incoming.message.event {
                CallLogEvent::CaseOpened(event) => {
                    let person = event.person_id.as_ref().map(|id| id.as_str());
                    opened.insert(event.case_id.as_str(), (event.opened_at, person));
                }
                CallLogEvent::CaseClosed(event) => {
                    closed.insert(
                        event.case_id.as_str(),
                        (event.closed_at, event.reason.code()),
                    );
                }
                CallLogEvent::CaseDiverted(event) => {
                    let referral = event.referral_id.map(|id| *id.as_uuid());
                    diverted.insert(event.case_id.as_str(), (event.diverted_at, referral));
                }
            }
        }
        if !opened.is_empty() {
            let mut ids = Vec::with_capacity(opened.len());
            let mut times = Vec::with_capacity(opened.len());
            let mut people: Vec<Option<&str>> = Vec::with_capacity(opened.len());
            for (id, (time, person)) in opened {
                ids.push(id);
                times.push(time);
                people.push(person);
            }
            sqlx::query!(
                r#"
                INSERT INTO asc_cases (case_id, opened_at, person_id)
                SELECT * FROM UNNEST($1::TEXT[], $2::TIMESTAMPTZ[], $3::TEXT[])
                ON CONFLICT (case_id) DO UPDATE
                SET opened_at = EXCLUDED.opened_at,
                    person_id = COALESCE(EXCLUDED.person_id, asc_cases.person_id),
                    updated_at = now()
                "#,
                &ids as &[&str],
                &times,
                &people as &[Option<&str>],
            )
            .execute(&mut *transaction)
            .await?;
        }
        if !closed.is_empty() {
            let mut ids = Vec::with_capacity(closed.len());
            let mut times = Vec::with_capacity(closed.len());
            let mut reasons = Vec::with_capacity(closed.len());
            for (id, (time, reason)) in closed {
                ids.push(id);
                times.push(time);
                reasons.push(reason);
            }
            sqlx::query!(
                r#"
                INSERT INTO asc_cases (case_id, closed_at, closure_reason)
                SELECT * FROM UNNEST($1::TEXT[], $2::TIMESTAMPTZ[], $3::TEXT[])
                ON CONFLICT (case_id) DO UPDATE
                SET closed_at = EXCLUDED.closed_at, closure_reason = EXCLUDED.closure_reason, updated_at = now()
                "#,
                &ids as &[&str],
                &times,
                &reasons as &[&str],
            )
            .execute(&mut *transaction)
            .await?;
        }
        if !diverted.is_empty() {
            let mut ids = Vec::with_capacity(diverted.len());
            let mut times = Vec::with_capacity(diverted.len());
            let mut referrals: Vec<Option<Uuid>> = Vec::with_capacity(diverted.len());
            for (id, (time, referral)) in diverted {
                ids.push(id);
                times.push(time);
                referrals.push(referral);
            }
            sqlx::query!(
                r#"
                INSERT INTO asc_cases (case_id, diverted_at, referral_id)
                SELECT * FROM UNNEST($1::TEXT[], $2::TIMESTAMPTZ[], $3::UUID[])
                ON CONFLICT (case_id) DO UPDATE
                SET diverted_at = EXCLUDED.diverted_at,
                    referral_id = COALESCE(EXCLUDED.referral_id, asc_cases.referral_id),
                    updated_at = now()
                "#,
                &ids as &[&str],
                &times,
                &referrals as &[Option<Uuid>],
            )
            .execute(&mut *transaction)
            .await?;
        }
        Ok(())
    }
}

/// The ASC call log between a baseline date and an end date, each counted at the end
/// of the day in UK local time (close of business).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallLogReport {
    pub baseline: NaiveDate,
    pub end: NaiveDate,
    pub open_at_baseline: Count,
    pub open_at_end: Count,
    /// Fall in open cases since the baseline (negative if the log grew).
    pub reduction: Count,
    /// The reduction as a percentage of the baseline, one decimal place.
    pub reduction_percent: Option<f64>,
    /// Cases opened and closed after the baseline day, up to the end day.
    pub opened: Count,
    pub closed: Count,
    /// Cases diverted to community providers after the baseline day.
    pub diverted: Count,
    pub returns: Returns,
    /// Open cases at the end of each day from the baseline to the end.
    pub daily: Vec<DailyOpen>,
    pub disclosure: DisclosureNote,
}

/// Whether people diverted to community providers came back to ASC: a new case for the
/// same person (the call log's `person_id`) opened within 90 days of the diversion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Returns {
    /// Diverted cases whose person is known.
    pub with_person: Count,
    /// Diverted cases with no person id (their return cannot be seen).
    pub without_person: Count,
    /// Of those with a person: back with a new case within 90 days.
    pub returned_within_90_days: Count,
    /// Of those with a person: whose 90 days are over, or who came back.
    pub followed_up: Count,
    /// Of those with a person: diverted less than 90 days before the end, not back yet.
    pub window_open: Count,
    /// `returned_within_90_days` of `followed_up`, percent.
    pub return_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DailyOpen {
    pub date: NaiveDate,
    pub open: Count,
}

/// How many days after a diversion a new case counts as coming back.
pub const RETURN_WINDOW_DAYS: i32 = 90;

/// The first instant after `date` in UK local time.
pub fn end_of_day(date: NaiveDate) -> DateTime<Utc> {
    let next = date.succ_opt().unwrap_or(date);
    next.and_hms_opt(0, 0, 0)
        .and_then(|midnight| London.from_local_datetime(&midnight).earliest())
        .map(|instant| instant.with_timezone(&Utc))
        .unwrap_or_else(|| next.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// The call log from `baseline` to `end` (inclusive days), suppressed as `disclosure`
/// says.
pub async fn report(
    pool: &PgPool,
    baseline: NaiveDate,
    end: NaiveDate,
    disclosure: Disclosure,
) -> Result<CallLogReport, sqlx::Error> {
    Ok(publish(
        baseline,
        end,
        &figures(pool, baseline, end).await?,
        disclosure,
    ))
}

/// The call log's counts from `baseline` to `end`, before disclosure control.
pub async fn figures(
    pool: &PgPool,
    baseline: NaiveDate,
    end: NaiveDate,
) -> Result<CallLogFigures, sqlx::Error> {
    let from = end_of_day(baseline);
    let to = end_of_day(end);
    // Open cases per day from the day-by-day changes: one pass over the cases, however
    // long the period.
    let daily: Vec<(NaiveDate, i64)> = sqlx::query_as::<_, (NaiveDate, i64)>(
        r#"
        WITH changes AS (
            SELECT (opened_at AT TIME ZONE 'Europe/London')::date AS day, 1 AS delta
            FROM asc_cases WHERE opened_at IS NOT NULL
            UNION ALL
            SELECT (closed_at AT TIME ZONE 'Europe/London')::date, -1
            FROM asc_cases WHERE opened_at IS NOT NULL AND closed_at IS NOT NULL
        ), per_day AS (
            SELECT day, sum(delta)::BIGINT AS delta FROM changes GROUP BY day
        ), before AS (
            SELECT coalesce(sum(delta), 0)::BIGINT AS open FROM per_day WHERE day < $1
        ), series AS (
            SELECT d::date AS day FROM generate_series($1::date, $2::date, interval '1 day') AS d
        )
        SELECT series.day,
               ((SELECT open FROM before)
                 + sum(coalesce(per_day.delta, 0)) OVER (ORDER BY series.day))::BIGINT AS open
        FROM series LEFT JOIN per_day USING (day)
        ORDER BY series.day
        "#,
    )
    .bind(baseline)
    .bind(end.max(baseline))
    .fetch_all(pool)
    .await?;

    let (opened, closed, diverted): (i64, i64, i64) = sqlx::query_as(
        r#"
        SELECT count(*) FILTER (WHERE opened_at >= $1 AND opened_at < $2),
               count(*) FILTER (WHERE closed_at >= $1 AND closed_at < $2),
               count(*) FILTER (WHERE coalesce(diverted_at, closed_at) >= $1
                                  AND coalesce(diverted_at, closed_at) < $2
                                  AND (diverted_at IS NOT NULL OR closure_reason = 'diverted-to-community'))
        FROM asc_cases
        "#,
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;

    let (with_person, without_person, returned, followed_up, window_open): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            r#"
            WITH diverted AS (
                SELECT case_id, person_id, coalesce(diverted_at, closed_at) AS at
                FROM asc_cases
                WHERE (diverted_at IS NOT NULL OR closure_reason = 'diverted-to-community')
                  AND coalesce(diverted_at, closed_at) >= $1 AND coalesce(diverted_at, closed_at) < $2
            ), judged AS (
                SELECT d.person_id, d.at,
                       EXISTS (
                           SELECT 1 FROM asc_cases later
                           WHERE later.person_id = d.person_id AND later.case_id <> d.case_id
                             AND later.opened_at > d.at
                             AND later.opened_at <= d.at + make_interval(days => $3)
                             AND later.opened_at < $2
                       ) AS returned
                FROM diverted d
            )
            SELECT count(*) FILTER (WHERE person_id IS NOT NULL),
                   count(*) FILTER (WHERE person_id IS NULL),
                   count(*) FILTER (WHERE person_id IS NOT NULL AND returned),
                   count(*) FILTER (WHERE person_id IS NOT NULL
                                      AND (returned OR at + make_interval(days => $3) <= $2)),
                   count(*) FILTER (WHERE person_id IS NOT NULL AND NOT returned
                                      AND at + make_interval(days => $3) > $2)
            FROM judged
            "#,
        )
        .bind(from)
        .bind(to)
        .bind(RETURN_WINDOW_DAYS)
        .fetch_one(pool)
        .await?;

    Ok(CallLogFigures {
        daily,
        opened,
        closed,
        diverted,
        with_person,
        without_person,
        returned,
        followed_up,
        window_open,
    })
}

/// The call log's counts before disclosure control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallLogFigures {
    /// Open cases at the end of each day, from the baseline day.
    pub daily: Vec<(NaiveDate, i64)>,
    pub opened: i64,
    pub closed: i64,
    pub diverted: i64,
    pub with_person: i64,
    pub without_person: i64,
    pub returned: i64,
    pub followed_up: i64,
    pub window_open: i64,
}

/// The published call log: every count through `disclosure`'s suppression.
pub fn publish(
    baseline: NaiveDate,
    end: NaiveDate,
    figures: &CallLogFigures,
    disclosure: Disclosure,
) -> CallLogReport {
    let mut sheet = Sheet::new(disclosure);
    let open_at_baseline = figures.daily.first().map_or(0, |day| day.1);
    let open_at_end = figures.daily.last().map_or(0, |day| day.1);
    // The first and last days of the series are the baseline and end figures.
    let at_baseline = sheet.count(open_at_baseline);
    let at_end = sheet.count(open_at_end);
    let days: Vec<Cell> = figures
        .daily
        .iter()
        .enumerate()
        .map(|(index, (_, open))| match index {
            0 => at_baseline,
            last if last + 1 == figures.daily.len() => at_end,
            _ => sheet.count(*open),
        })
        .collect();
    let reduction = sheet.figure(open_at_baseline - open_at_end);
    sheet.relate(&[at_baseline, at_end, reduction]);
    let opened = sheet.count(figures.opened);
    let closed = sheet.count(figures.closed);
    sheet.relate(&[at_baseline, at_end, opened, closed]);
    let diverted = sheet.count(figures.diverted);
    let with_person = sheet.count(figures.with_person);
    let without_person = sheet.count(figures.without_person);
    sheet.relate(&[diverted, with_person, without_person]);
    let followed_up = sheet.count(figures.followed_up);
    let window_open = sheet.count(figures.window_open);
    sheet.relate(&[with_person, followed_up, window_open]);
    let returned = sheet.count(figures.returned);
    sheet.part_of(followed_up, &[returned]);
    sheet.solve();
    CallLogReport {
        baseline,
        end,
        open_at_baseline: sheet.get(at_baseline),
        open_at_end: sheet.get(at_end),
        reduction: sheet.get(reduction),
        reduction_percent: sheet.percent(reduction, at_baseline),
        opened: sheet.get(opened),
        closed: sheet.get(closed),
        diverted: sheet.get(diverted),
        returns: Returns {
            with_person: sheet.get(with_person),
            without_person: sheet.get(without_person),
            returned_within_90_days: sheet.get(returned),
            followed_up: sheet.get(followed_up),
            window_open: sheet.get(window_open),
            return_percent: sheet.percent(returned, followed_up),
        },
        daily: figures
            .daily
            .iter()
            .zip(days)
            .map(|((date, _), cell)| DailyOpen {
                date: *date,
                open: sheet.get(cell),
            })
            .collect(),
        disclosure: sheet.note(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_ends_at_uk_midnight_in_summer_and_winter() {
        let winter = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
        assert_eq!(end_of_day(winter).to_rfc3339(), "2026-01-16T00:00:00+00:00");
        let summer = NaiveDate::from_ymd_opt(2026, 7, 15).unwrap();
        assert_eq!(end_of_day(summer).to_rfc3339(), "2026-07-15T23:00:00+00:00");
    }
}

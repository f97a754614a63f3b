//! The ASC call log, projected from `asc.call-log`, and the reduction in open cases.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use linkwork_bus::{CloudEvent, Effects, Handler, HandlerError, Incoming};
use linkwork_domain::CallLogEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

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
        let mut opened: HashMap<&str, DateTime<Utc>> = HashMap::new();
        let mut closed: HashMap<&str, (DateTime<Utc>, &'static str)> = HashMap::new();
        let mut diverted: HashMap<&str, (DateTime<Utc>, Option<Uuid>)> = HashMap::new();
        for incoming in batch {
            match &incoming.message.event {
                CallLogEvent::CaseOpened(event) => {
                    opened.insert(event.case_id.as_str(), event.opened_at);
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
            let (ids, times): (Vec<&str>, Vec<DateTime<Utc>>) = opened.into_iter().unzip();
            sqlx::query!(
                r#"
                INSERT INTO asc_cases (case_id, opened_at)
                SELECT * FROM UNNEST($1::TEXT[], $2::TIMESTAMPTZ[])
                ON CONFLICT (case_id) DO UPDATE SET opened_at = EXCLUDED.opened_at, updated_at = now()
                "#,
                &ids as &[&str],
                &times,
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

/// The call log between two dates.
#[derive(Debug, Clone, PartialEq)]
pub struct CallLogSummary {
    pub baseline: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub open_at_baseline: i64,
    pub open_at_end: i64,
    /// Cases closed as diverted to community providers between the two dates.
    pub diverted: i64,
    /// Cases known in total.
    pub cases: i64,
}

impl CallLogSummary {
    /// Reduction in open cases since the baseline (negative if the log grew).
    pub fn reduction(&self) -> i64 {
        self.open_at_baseline - self.open_at_end
    }

    /// The reduction as a percentage of the baseline, to one decimal place.
    pub fn reduction_percent(&self) -> Option<f64> {
        (self.open_at_baseline > 0).then(|| {
            (self.reduction() as f64 * 1000.0 / self.open_at_baseline as f64).round() / 10.0
        })
    }
}

/// Open cases at `baseline` and `end`, and diversions between them.
pub async fn summary(
    pool: &PgPool,
    baseline: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<CallLogSummary, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT
            count(*) FILTER (WHERE opened_at <= $1 AND (closed_at IS NULL OR closed_at > $1)) AS "open_at_baseline!",
            count(*) FILTER (WHERE opened_at <= $2 AND (closed_at IS NULL OR closed_at > $2)) AS "open_at_end!",
            count(*) FILTER (
                WHERE closure_reason = 'diverted-to-community' AND closed_at > $1 AND closed_at <= $2
            ) AS "diverted!",
            count(*) AS "cases!"
        FROM asc_cases
        "#,
        baseline,
        end,
    )
    .fetch_one(pool)
    .await?;
    Ok(CallLogSummary {
        baseline,
        end,
        open_at_baseline: row.open_at_baseline,
        open_at_end: row.open_at_end,
        diverted: row.diverted,
        cases: row.cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_evaluation_figures_give_a_37_4_percent_reduction() {
        let summary = CallLogSummary {
            baseline: Utc::now(),
            end: Utc::now(),
            open_at_baseline: 920,
            open_at_end: 576,
            diverted: 0,
            cases: 0,
        };
        assert_eq!(summary.reduction(), 344);
        assert_eq!(summary.reduction_percent(), Some(37.4));
    }

    #[test]
    fn no_percentage_without_a_baseline() {
        let summary = CallLogSummary {
            baseline: Utc::now(),
            end: Utc::now(),
            open_at_baseline: 0,
            open_at_end: 3,
            diverted: 0,
            cases: 3,
        };
        assert_eq!(summary.reduction(), -3);
        assert_eq!(summary.reduction_percent(), None);
    }
}

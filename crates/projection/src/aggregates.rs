//! Aggregate reads of the live read models, for the metrics service. Every function
//! counts or lists figures over a period; none returns who a person is. Each answers as
//! if nothing had happened yet when the projector has never run.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::LIVE_SCHEMA as P;

/// Whether the projector has built the read models here.
pub async fn built(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let projected: Option<String> =
        sqlx::query_scalar(&format!("SELECT to_regclass('{P}.referrals')::TEXT"))
            .fetch_one(connection)
            .await?;
    Ok(projected.is_some())
}

/// Referrals received in a month (UK local time) from one kind of source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMonthCount {
    /// `YYYY-MM`.
    pub month: String,
    /// The kind of source: the part of the source before its `:` (`gp`, `self`, ...).
    pub source: String,
    pub referrals: i64,
}

/// Referrals received in `[from, to)` by month and kind of source.
pub async fn referrals_by_source_month(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SourceMonthCount>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT to_char(received_at AT TIME ZONE 'Europe/London', 'YYYY-MM'),
                split_part(source, ':', 1), count(*)
         FROM {P}.referrals WHERE received_at >= $1 AND received_at < $2
         GROUP BY 1, 2 ORDER BY 1, 2"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(month, source, referrals)| SourceMonthCount {
            month,
            source,
            referrals,
        })
        .collect())
}

/// For each referral received in `[from, to)` that has been contacted, the days from
/// receipt to first contact.
pub async fn days_to_first_contact(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT extract(epoch FROM first_contact_at - received_at)::FLOAT8 / 86400
         FROM {P}.referrals
         WHERE received_at >= $1 AND received_at < $2 AND first_contact_at IS NOT NULL"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await
}

/// How one provider answered the referrals offered to it in a period.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProviderOffers {
    pub provider_id: String,
    pub offered: i64,
    pub accepted: i64,
    pub rejected: i64,
    /// Offers that ended without an answer (withdrawn at the deadline, or closed).
    pub unanswered: i64,
    /// Offers still waiting for an answer.
    pub awaiting: i64,
    /// Median days from the offer to its acceptance, over accepted offers.
    pub median_days: Option<f64>,
}

/// Offers made (Tasks authored) in `[from, to)`, by provider.
pub async fn provider_offers(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ProviderOffers>, sqlx::Error> {
    // A provider is offered a referral at most once, so (referral, provider) names the
    // offer in the history. The event's own provider is in its body (the history's
    // provider column is who holds the referral afterwards: nobody, after a rejection).
    sqlx::query_as(&format!(
        "WITH offers AS (
             SELECT t.provider_id, t.status, t.authored_on,
                    (SELECT min(h.occurred_at) FROM {P}.history h
                     WHERE h.referral_id = t.referral_id AND h.body->>'provider_id' = t.provider_id
                       AND h.event_type = 'linkwork.referral.accepted.v1') AS accepted_at,
                    EXISTS (SELECT 1 FROM {P}.history h
                            WHERE h.referral_id = t.referral_id AND h.body->>'provider_id' = t.provider_id
                              AND h.event_type = 'linkwork.referral.rejected.v1') AS rejected
             FROM {P}.tasks t
             WHERE t.authored_on >= $1 AND t.authored_on < $2
         )
         SELECT provider_id, count(*) AS offered,
                count(accepted_at) AS accepted,
                count(*) FILTER (WHERE rejected) AS rejected,
                count(*) FILTER (WHERE accepted_at IS NULL AND NOT rejected AND status <> 'requested') AS unanswered,
                count(*) FILTER (WHERE accepted_at IS NULL AND NOT rejected AND status = 'requested') AS awaiting,
                (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM accepted_at - authored_on))
                    FILTER (WHERE accepted_at IS NOT NULL))::FLOAT8 / 86400 AS median_days
         FROM offers GROUP BY provider_id ORDER BY provider_id"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await
}

/// Referrals completed in `[from, to)`.
pub async fn completions(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {P}.referrals
         WHERE status = 'completed' AND closed_at >= $1 AND closed_at < $2"
    ))
    .bind(from)
    .bind(to)
    .fetch_one(connection)
    .await
}

/// A completer's baseline and follow-up totals on one instrument. The referral id
/// only tells pairs of one person apart; it never leaves the metrics service.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutcomePair {
    pub referral_id: Uuid,
    pub instrument: String,
    pub baseline: i64,
    pub follow_up: i64,
}

/// One row per referral completed in `[from, to)` and instrument with both scores,
/// ordered by referral and instrument.
pub async fn outcome_pairs(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<OutcomePair>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT o.referral_id, o.instrument, o.baseline_total::BIGINT AS baseline,
                o.follow_up_total::BIGINT AS follow_up
         FROM {P}.outcome_pairs o JOIN {P}.referrals r USING (referral_id)
         WHERE r.status = 'completed' AND r.closed_at >= $1 AND r.closed_at < $2
           AND o.baseline_total IS NOT NULL AND o.follow_up_total IS NOT NULL
         ORDER BY o.referral_id, o.instrument"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await
}

/// Activities attended on the days `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivityTotals {
    pub attended: i64,
    pub people: i64,
    pub distinct_groups: i64,
}

pub async fn activity_totals(
    connection: &mut PgConnection,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<ActivityTotals, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT count(*) AS attended, count(DISTINCT referral_id) AS people,
                count(DISTINCT lower(coalesce(activity_id, activity_name))) FILTER (WHERE kind = 'group')
                    AS distinct_groups
         FROM {P}.activities
         WHERE attended_on >= $1 AND attended_on <= $2"
    ))
    .bind(start)
    .bind(end)
    .fetch_one(connection)
    .await
}

/// Of referrals received in `[from, to)` that a provider accepted: how many, and how
/// many of those people consented to evaluation.
pub async fn consent_counts(
    connection: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE r.consent_to_evaluation)
         FROM {P}.referrals r
         WHERE r.received_at >= $1 AND r.received_at < $2
           AND EXISTS (SELECT 1 FROM {P}.history h
                       WHERE h.referral_id = r.referral_id
                         AND h.event_type = 'linkwork.referral.accepted.v1')"
    ))
    .bind(from)
    .bind(to)
    .fetch_one(connection)
    .await
}

/// Every referrer (source) with a referral in the read models: the registry of
/// referrers, each with its own outcomes topic. Sources that no longer parse (none
/// should) are left out.
pub async fn referrers(
    connection: &mut PgConnection,
) -> Result<Vec<linkwork_domain::Source>, sqlx::Error> {
    if !built(connection).await? {
        return Ok(Vec::new());
    }
    let sources: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT source FROM {P}.referrals ORDER BY source"
    ))
    .fetch_all(connection)
    .await?;
    Ok(sources
        .iter()
        .filter_map(|source| linkwork_domain::Source::parse(source).ok())
        .collect())
}

/// The first day (UK local time) a referral was received, if any was.
pub async fn first_received_on(
    connection: &mut PgConnection,
) -> Result<Option<NaiveDate>, sqlx::Error> {
    if !built(connection).await? {
        return Ok(None);
    }
    sqlx::query_scalar(&format!(
        "SELECT min((received_at AT TIME ZONE 'Europe/London')::date) FROM {P}.referrals"
    ))
    .fetch_one(connection)
    .await
}

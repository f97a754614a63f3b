//! The receipts table: one row per referral ingest has taken.

use chrono::{DateTime, Utc};
use linkwork_domain::ReferralId;
use sqlx::PgConnection;
use uuid::Uuid;

/// A receipt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub referral_id: Uuid,
    pub content_hash: String,
    pub published: bool,
    pub received_at: DateTime<Utc>,
    pub cancelled: bool,
}

/// Claims a referral id for publishing. `Ok(Some(received_at))` when this call made
/// the claim; `Ok(None)` when a receipt already exists.
pub async fn claim(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    source: &str,
    identifier_system: &str,
    identifier_value: &str,
    content_hash: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO ingest_receipts (referral_id, source, identifier_system, identifier_value, content_hash, state)
        VALUES ($1, $2, $3, $4, $5, 'pending')
        ON CONFLICT (referral_id) DO NOTHING
        RETURNING received_at
        "#,
        referral_id.as_uuid(),
        source,
        identifier_system,
        identifier_value,
        content_hash,
    )
    .fetch_optional(&mut *connection)
    .await
}

pub async fn find(
    connection: &mut PgConnection,
    referral_id: ReferralId,
) -> Result<Option<Receipt>, sqlx::Error> {
    sqlx::query_as!(
        Receipt,
        r#"
        SELECT referral_id, content_hash, state = 'published' AS "published!", received_at,
               cancelled_at IS NOT NULL AS "cancelled!"
        FROM ingest_receipts WHERE referral_id = $1
        "#,
        referral_id.as_uuid(),
    )
    .fetch_optional(&mut *connection)
    .await
}

/// Receipts of many referrals at once, locked for the caller's transaction.
pub async fn find_many_for_update(
    connection: &mut PgConnection,
    referral_ids: &[Uuid],
) -> Result<Vec<Receipt>, sqlx::Error> {
    sqlx::query_as!(
        Receipt,
        r#"
        SELECT referral_id, content_hash, state = 'published' AS "published!", received_at,
               cancelled_at IS NOT NULL AS "cancelled!"
        FROM ingest_receipts WHERE referral_id = ANY($1)
        FOR UPDATE
        "#,
        referral_ids,
    )
    .fetch_all(&mut *connection)
    .await
}

/// Takes over an abandoned pending claim (a crash between claim and publish) for new
/// content. False if the row changed meanwhile.
pub async fn reclaim_abandoned(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    previous_hash: &str,
    content_hash: &str,
    abandoned_before: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"
        UPDATE ingest_receipts SET content_hash = $3, received_at = now()
        WHERE referral_id = $1 AND content_hash = $2 AND state = 'pending' AND received_at < $4
        "#,
        referral_id.as_uuid(),
        previous_hash,
        content_hash,
        abandoned_before,
    )
    .execute(&mut *connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records that the referral's event is on the log (inserting the receipt if another
/// submission released the claim meanwhile).
#[allow(clippy::too_many_arguments)]
pub async fn mark_published(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    source: &str,
    identifier_system: &str,
    identifier_value: &str,
    content_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO ingest_receipts (referral_id, source, identifier_system, identifier_value, content_hash, state, published_at)
        VALUES ($1, $2, $3, $4, $5, 'published', now())
        ON CONFLICT (referral_id) DO UPDATE SET state = 'published', published_at = COALESCE(ingest_receipts.published_at, now())
        "#,
        referral_id.as_uuid(),
        source,
        identifier_system,
        identifier_value,
        content_hash,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Gives a claim back after publishing failed: the referral was not taken.
pub async fn release(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    content_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM ingest_receipts WHERE referral_id = $1 AND content_hash = $2 AND state = 'pending'",
        referral_id.as_uuid(),
        content_hash,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Records a cancellation by the referrer. False if it was already cancelled.
pub async fn mark_cancelled(
    connection: &mut PgConnection,
    referral_id: ReferralId,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "UPDATE ingest_receipts SET cancelled_at = now() WHERE referral_id = $1 AND cancelled_at IS NULL",
        referral_id.as_uuid(),
    )
    .execute(&mut *connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Call-log event ids not yet published, of those given.
pub async fn unpublished_call_log_events(
    connection: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT candidate AS "event_id!" FROM UNNEST($1::UUID[]) AS candidate
        WHERE NOT EXISTS (SELECT 1 FROM ingest_call_log_events WHERE event_id = candidate)
        "#,
        event_ids,
    )
    .fetch_all(&mut *connection)
    .await
}

pub async fn record_call_log_events(
    connection: &mut PgConnection,
    event_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ingest_call_log_events (event_id) SELECT * FROM UNNEST($1::UUID[]) ON CONFLICT DO NOTHING",
        event_ids,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

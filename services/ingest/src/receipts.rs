//! The receipts table: one row per referral ingest has taken.

use chrono::{DateTime, Utc};
use linkwork_domain::ReferralId;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection};
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

/// A referral to claim: its id, source, identifier and content hash.
#[derive(Debug)]
pub struct NewClaim<'a> {
    pub referral_id: Uuid,
    pub source: String,
    pub identifier_system: &'a str,
    pub identifier_value: &'a str,
    pub content_hash: &'a str,
}

/// Claims as the five arrays `UNNEST` reads (`$1` to `$5`: ids, sources, identifier
/// systems and values, content hashes), for either statement that takes them.
fn claim_arguments(claims: &[NewClaim<'_>]) -> Result<PgArguments, sqlx::Error> {
    let mut ids = Vec::with_capacity(claims.len());
    let mut sources = Vec::with_capacity(claims.len());
    let mut systems = Vec::with_capacity(claims.len());
    let mut values = Vec::with_capacity(claims.len());
    let mut hashes = Vec::with_capacity(claims.len());
    for claim in claims {
        ids.push(claim.referral_id);
        sources.push(claim.source.as_str());
        systems.push(claim.identifier_system);
        values.push(claim.identifier_value);
        hashes.push(claim.content_hash);
    }
    let mut arguments = PgArguments::default();
    arguments.add(ids).map_err(sqlx::Error::Encode)?;
    arguments.add(sources).map_err(sqlx::Error::Encode)?;
    arguments.add(systems).map_err(sqlx::Error::Encode)?;
    arguments.add(values).map_err(sqlx::Error::Encode)?;
    arguments.add(hashes).map_err(sqlx::Error::Encode)?;
    Ok(arguments)
}

/// Claims many referrals in one statement (distinct ids). Returns the ids this call
/// claimed with their `received_at`; an id missing already had a receipt.
pub async fn claim_many(
    connection: &mut PgConnection,
    claims: &[NewClaim<'_>],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as_with::<_, (Uuid, DateTime<Utc>), _>(
        r#"
        INSERT INTO ingest_receipts (referral_id, source, identifier_system, identifier_value, content_hash, state)
        SELECT claim.referral_id, claim.source, claim.system, claim.value, claim.hash, 'pending'
        FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
             AS claim (referral_id, source, system, value, hash)
        ON CONFLICT (referral_id) DO NOTHING
        RETURNING referral_id, received_at
        "#,
        claim_arguments(claims)?,
    )
    .fetch_all(&mut *connection)
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

/// A receipt as the intake decides on it: its state and its latest publish attempt.
/// Read with runtime-checked SQL (`sqlx::query_as`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Claim {
    pub content_hash: String,
    /// `pending` (an attempt under way, or abandoned by a crash), `unconfirmed` (the
    /// attempt's delivery failed; it may still be on the log) or `published`.
    pub state: String,
    pub received_at: DateTime<Utc>,
    pub attempted_at: DateTime<Utc>,
    /// Seconds until the latest attempt can no longer land (zero or less: settled).
    pub settles_in: f64,
}

impl Claim {
    pub fn published(&self) -> bool {
        self.state == "published"
    }

    /// The latest attempt is old enough that no request of it can still land.
    pub fn settled(&self) -> bool {
        self.settles_in <= 0.0
    }
}

/// The receipt of a referral with its attempt, `settle_after` being how long after an
/// attempt began a request of it may still land.
pub async fn find_claim(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    settle_after: std::time::Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    sqlx::query_as::<_, Claim>(
        r#"
        SELECT content_hash, state, received_at, attempted_at,
               EXTRACT(EPOCH FROM attempted_at + make_interval(secs => $2) - now())::FLOAT8 AS settles_in
        FROM ingest_receipts WHERE referral_id = $1
        "#,
    )
    .bind(referral_id.as_uuid())
    .bind(settle_after.as_secs_f64())
    .fetch_optional(&mut *connection)
    .await
}

/// Takes over a claim whose latest attempt is settled and was not found on the log,
/// for `content_hash` (the same content, or new content: then it is received now).
/// Returns the receipt's `(received_at, attempted_at)`; `None` if the row changed
/// meanwhile or the attempt is not settled yet.
pub async fn take_over(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    previous: &Claim,
    content_hash: &str,
    settle_after: std::time::Duration,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as::<_, (DateTime<Utc>, DateTime<Utc>)>(
        r#"
        UPDATE ingest_receipts
        SET content_hash = $4, state = 'pending', attempted_at = now(),
            received_at = CASE WHEN content_hash = $4 THEN received_at ELSE now() END
        WHERE referral_id = $1 AND content_hash = $2 AND attempted_at = $3
          AND state <> 'published' AND attempted_at < now() - make_interval(secs => $5)
        RETURNING received_at, attempted_at
        "#,
    )
    .bind(referral_id.as_uuid())
    .bind(&previous.content_hash)
    .bind(previous.attempted_at)
    .bind(content_hash)
    .bind(settle_after.as_secs_f64())
    .fetch_optional(&mut *connection)
    .await
}

/// Starts the attempts of claims about to be published (`(referral_id, attempted_at)`
/// as claimed): their attempt time becomes now, so the time a request may still land
/// counts from the send, not from the claim. Returns the claims still held, with
/// their new attempt time; a claim missing was taken over meanwhile.
pub async fn begin_attempts(
    connection: &mut PgConnection,
    claims: &[(Uuid, DateTime<Utc>)],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let (ids, attempts): (Vec<Uuid>, Vec<DateTime<Utc>>) = claims.iter().copied().unzip();
    sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(
        r#"
        UPDATE ingest_receipts AS receipt SET attempted_at = now()
        FROM UNNEST($1::UUID[], $2::TIMESTAMPTZ[]) AS claim (referral_id, attempted_at)
        WHERE receipt.referral_id = claim.referral_id AND receipt.attempted_at = claim.attempted_at
          AND receipt.state = 'pending'
        RETURNING receipt.referral_id, receipt.attempted_at
        "#,
    )
    .bind(ids)
    .bind(attempts)
    .fetch_all(&mut *connection)
    .await
}

/// Records that an attempt's delivery failed after a request may have reached the
/// broker: the claim stays, unconfirmed, until the log is read to settle it.
pub async fn mark_unconfirmed(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    attempted_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ingest_receipts SET state = 'unconfirmed' \
         WHERE referral_id = $1 AND attempted_at = $2 AND state = 'pending'",
    )
    .bind(referral_id.as_uuid())
    .bind(attempted_at)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Records that the referral's event is on the log (inserting the receipt if another
/// submission released the claim meanwhile).
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

/// [`mark_published`] for many referrals (distinct ids) in one statement.
pub async fn mark_many_published(
    connection: &mut PgConnection,
    published: &[NewClaim<'_>],
) -> Result<(), sqlx::Error> {
    sqlx::query_with(
        r#"
        INSERT INTO ingest_receipts (referral_id, source, identifier_system, identifier_value, content_hash, state, published_at)
        SELECT claim.referral_id, claim.source, claim.system, claim.value, claim.hash, 'published', now()
        FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
             AS claim (referral_id, source, system, value, hash)
        ON CONFLICT (referral_id) DO UPDATE SET state = 'published', published_at = COALESCE(ingest_receipts.published_at, now())
        "#,
        claim_arguments(published)?,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Gives a claim back after publishing failed before anything reached the broker:
/// the referral was not taken. Only the attempt that failed is released: if the claim
/// was taken over meanwhile (a later `attempted_at`), it stays with its new holder.
pub async fn release(
    connection: &mut PgConnection,
    referral_id: ReferralId,
    content_hash: &str,
    attempted_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM ingest_receipts WHERE referral_id = $1 AND content_hash = $2 AND state = 'pending' AND attempted_at = $3",
    )
    .bind(referral_id.as_uuid())
    .bind(content_hash)
    .bind(attempted_at)
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

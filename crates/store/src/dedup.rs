//! De-duplication by event id: each consumer applies an event once, however many
//! copies of it reach the log.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// Records `event_ids` as processed by `consumer` and returns those not seen before.
/// Runs inside the consumer's batch transaction, so a rolled-back batch claims nothing.
pub async fn claim(
    connection: &mut PgConnection,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    if event_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let fresh = sqlx::query_scalar!(
        r#"
        INSERT INTO processed_events (consumer, event_id)
        SELECT $1, event_id FROM UNNEST($2::UUID[]) AS event_id
        ON CONFLICT DO NOTHING
        RETURNING event_id
        "#,
        consumer,
        event_ids,
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Forgets ids processed before `before`. Copies of an event arrive within minutes
/// (retries, relay restarts), so a retention of days is ample.
pub async fn prune(
    connection: &mut PgConnection,
    consumer: &str,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query!(
        "DELETE FROM processed_events WHERE consumer = $1 AND processed_at < $2",
        consumer,
        before,
    )
    .execute(&mut *connection)
    .await?;
    Ok(deleted.rows_affected())
}

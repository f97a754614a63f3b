//! Consumer offsets kept in Postgres, next to the state they describe.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::StoreError;

/// One partition's progress in a batch: the stored offset the batch started from
/// (`expected`) and the offset after its last message (`next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub topic: String,
    pub partition: i32,
    pub expected: i64,
    pub next: i64,
}

/// Loads the stored offsets of `partitions` of `topic`, creating a row at offset 0 for
/// any partition this consumer has never read (a new consumer starts at the beginning:
/// the log is the system of record).
pub async fn load(
    connection: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, StoreError> {
    sqlx::query!(
        r#"
        INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)
        SELECT $1, $2, partition, 0 FROM UNNEST($3::INTEGER[]) AS partition
        ON CONFLICT DO NOTHING
        "#,
        consumer,
        topic,
        partitions,
    )
    .execute(&mut *connection)
    .await?;
    let rows = sqlx::query!(
        r#"
        SELECT partition, next_offset
        FROM consumer_offsets
        WHERE consumer = $1 AND topic = $2 AND partition = ANY($3::INTEGER[])
        "#,
        consumer,
        topic,
        partitions,
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect())
}

/// Moves stored offsets forward, but only where they still hold the value this
/// consumer started its batch from. If any partition's offset moved (another instance
/// took it over), nothing is written and the caller's transaction must roll back.
pub async fn advance(
    connection: &mut PgConnection,
    consumer: &str,
    advances: &[OffsetAdvance],
) -> Result<(), StoreError> {
    if advances.is_empty() {
        return Ok(());
    }
    let topics: Vec<String> = advances
        .iter()
        .map(|advance| advance.topic.clone())
        .collect();
    let partitions: Vec<i32> = advances.iter().map(|advance| advance.partition).collect();
    let expected: Vec<i64> = advances.iter().map(|advance| advance.expected).collect();
    let next: Vec<i64> = advances.iter().map(|advance| advance.next).collect();
    let updated = sqlx::query!(
        r#"
        UPDATE consumer_offsets AS stored
        SET next_offset = batch.next, updated_at = now()
        FROM UNNEST($2::TEXT[], $3::INTEGER[], $4::BIGINT[], $5::BIGINT[])
            AS batch(topic, partition, expected, next)
        WHERE stored.consumer = $1
          AND stored.topic = batch.topic
          AND stored.partition = batch.partition
          AND stored.next_offset = batch.expected
        RETURNING stored.topic, stored.partition
        "#,
        consumer,
        &topics,
        &partitions,
        &expected,
        &next,
    )
    .fetch_all(&mut *connection)
    .await?;
    if updated.len() == advances.len() {
        return Ok(());
    }
    let moved = advances
        .iter()
        .filter(|advance| {
            !updated
                .iter()
                .any(|row| row.topic == advance.topic && row.partition == advance.partition)
        })
        .map(|advance| (advance.topic.clone(), advance.partition))
        .collect();
    Err(StoreError::Fenced {
        consumer: consumer.to_owned(),
        partitions: moved,
    })
}

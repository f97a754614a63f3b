//! The transactional outbox: messages written in the transaction that decided them,
//! published afterwards by the relay (in `linkwork-bus`).
//!
//! `outbox` holds only what waits to be published. A publish attempt is a narrow row
//! of its own (`outbox_attempts`), and publishing deletes the outbox row and keeps a
//! narrow record of where the message landed (`outbox_published`, pruned after a
//! while): the wide rows are written once and never rewritten.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// A message to publish. The CloudEvents attributes become Kafka headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxMessage {
    pub event_id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub ce_type: String,
    pub ce_source: String,
    pub ce_time: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Headers beyond the CloudEvents ones, in order.
    pub extra_headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// A stored message not yet marked published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    pub id: i64,
    pub event_id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub ce_type: String,
    pub ce_source: String,
    pub ce_time: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub extra_headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    /// Set when an earlier attempt may have published it.
    pub target_partition: Option<i32>,
    pub scan_from: Option<i64>,
}

/// The payload bytes one INSERT carries at most (a single larger message goes alone).
/// sqlx copies a statement's arguments into the connection's write buffer, which keeps
/// its largest size: one statement for a router batch's messages (12 MB) left 25 MB on
/// each pooled connection.
const INSERT_CHUNK_BYTES: usize = 1 << 20;

/// Adds messages, in as few statements as [`INSERT_CHUNK_BYTES`] allows. A message
/// whose event id is already in the outbox, or was published and not yet pruned, is
/// skipped: deciding the same event twice publishes it once. The messages are taken,
/// not copied. Returns how many were added.
pub async fn insert(
    connection: &mut PgConnection,
    messages: Vec<NewOutboxMessage>,
) -> Result<u64, StoreError> {
    if messages.is_empty() {
        return Ok(0);
    }
    let mut inserted = 0;
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for message in messages {
        if !chunk.is_empty() && chunk_bytes + message.payload.len() > INSERT_CHUNK_BYTES {
            inserted += insert_chunk(connection, std::mem::take(&mut chunk)).await?;
            chunk_bytes = 0;
        }
        chunk_bytes += message.payload.len();
        chunk.push(message);
    }
    inserted += insert_chunk(connection, chunk).await?;
    // Wake relays in other processes; in-process relays are woken directly.
    sqlx::query!("SELECT pg_notify('linkwork_outbox', '')")
        .execute(&mut *connection)
        .await?;
    Ok(inserted)
}

/// One INSERT of `messages` (not empty).
async fn insert_chunk(
    connection: &mut PgConnection,
    messages: Vec<NewOutboxMessage>,
) -> Result<u64, StoreError> {
    let mut event_ids = Vec::with_capacity(messages.len());
    let mut topics = Vec::with_capacity(messages.len());
    let mut keys: Vec<Option<String>> = Vec::with_capacity(messages.len());
    let mut ce_types = Vec::with_capacity(messages.len());
    let mut ce_sources = Vec::with_capacity(messages.len());
    let mut ce_times = Vec::with_capacity(messages.len());
    let mut traceparents: Vec<Option<String>> = Vec::with_capacity(messages.len());
    let mut tracestates: Vec<Option<String>> = Vec::with_capacity(messages.len());
    let mut extra_headers: Vec<Option<serde_json::Value>> = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for message in messages {
        event_ids.push(message.event_id);
        topics.push(message.topic);
        keys.push(message.key);
        ce_types.push(message.ce_type);
        ce_sources.push(message.ce_source);
        ce_times.push(message.ce_time);
        traceparents.push(message.traceparent);
        tracestates.push(message.tracestate);
        extra_headers.push(if message.extra_headers.is_empty() {
            None
        } else {
            Some(serde_json::json!(message.extra_headers))
        });
        payloads.push(message.payload);
    }
    let inserted = sqlx::query!(
        r#"
        INSERT INTO outbox (
            event_id, topic, message_key, ce_type, ce_source, ce_time, traceparent, tracestate,
            extra_headers, payload
        )
        SELECT * FROM UNNEST(
            $1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TIMESTAMPTZ[],
            $7::TEXT[], $8::TEXT[], $9::JSONB[], $10::BYTEA[]
        ) AS message (
            event_id, topic, message_key, ce_type, ce_source, ce_time, traceparent,
            tracestate, extra_headers, payload
        )
        WHERE NOT EXISTS (
            SELECT 1 FROM outbox_published AS published
            WHERE published.event_id = message.event_id
        )
        ON CONFLICT (event_id) DO NOTHING
        "#,
        &event_ids,
        &topics,
        &keys as &[Option<String>],
        &ce_types,
        &ce_sources,
        &ce_times,
        &traceparents as &[Option<String>],
        &tracestates as &[Option<String>],
        &extra_headers as &[Option<serde_json::Value>],
        &payloads,
    )
    .execute(&mut *connection)
    .await?;
    Ok(inserted.rows_affected())
}

/// The oldest unpublished messages, in the order they were written.
pub async fn pending(
    connection: &mut PgConnection,
    limit: i64,
) -> Result<Vec<PendingMessage>, StoreError> {
    let rows = sqlx::query!(
        r#"
        SELECT outbox.id, event_id, topic, message_key, ce_type, ce_source, ce_time,
               traceparent, tracestate, extra_headers, payload,
               attempt.target_partition AS "target_partition?",
               attempt.scan_from AS "scan_from?"
        FROM outbox
        LEFT JOIN outbox_attempts AS attempt ON attempt.id = outbox.id
        ORDER BY outbox.id
        LIMIT $1
        "#,
        limit,
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| PendingMessage {
            id: row.id,
            event_id: row.event_id,
            topic: row.topic,
            key: row.message_key,
            ce_type: row.ce_type,
            ce_source: row.ce_source,
            ce_time: row.ce_time,
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            // Written by `insert` as an array of pairs; anything else is ignored.
            extra_headers: row
                .extra_headers
                .and_then(|headers| serde_json::from_value(headers).ok())
                .unwrap_or_default(),
            payload: row.payload,
            target_partition: row.target_partition,
            scan_from: row.scan_from,
        })
        .collect())
}

/// Records, before publishing, where each message is going and an offset at or below
/// where it will land. Must be committed before the messages are produced.
pub async fn record_attempt(
    connection: &mut PgConnection,
    ids: &[i64],
    partitions: &[i32],
    scan_from: &[i64],
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"
        INSERT INTO outbox_attempts (id, target_partition, scan_from)
        SELECT * FROM UNNEST($1::BIGINT[], $2::INTEGER[], $3::BIGINT[])
        ON CONFLICT (id) DO UPDATE
        SET target_partition = EXCLUDED.target_partition, scan_from = EXCLUDED.scan_from,
            attempted_at = now()
        "#,
        ids,
        partitions,
        scan_from,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Marks messages published where they landed: their outbox rows and attempts go, a
/// record of each stays in `outbox_published`.
pub async fn mark_published(
    connection: &mut PgConnection,
    ids: &[i64],
    partitions: &[i32],
    offsets: &[i64],
) -> Result<(), StoreError> {
    sqlx::query!(
        r#"
        WITH published AS (
            DELETE FROM outbox
            USING UNNEST($1::BIGINT[], $2::INTEGER[], $3::BIGINT[])
                AS landed(id, partition, offset_value)
            WHERE outbox.id = landed.id
            RETURNING outbox.event_id, outbox.topic, outbox.ce_type, landed.partition,
                      landed.offset_value
        ), attempts AS (
            DELETE FROM outbox_attempts WHERE id = ANY($1)
        )
        INSERT INTO outbox_published
            (event_id, topic, ce_type, published_partition, published_offset)
        SELECT * FROM published
        ON CONFLICT (event_id) DO NOTHING
        "#,
        ids,
        partitions,
        offsets,
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Forgets messages published before `before`; the log keeps them.
pub async fn prune(
    connection: &mut PgConnection,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let deleted = sqlx::query!(
        "DELETE FROM outbox_published WHERE published_at < $1",
        before
    )
    .execute(&mut *connection)
    .await?;
    Ok(deleted.rows_affected())
}

/// How many messages wait to be published (for `/metrics` and tests).
pub async fn backlog(connection: &mut PgConnection) -> Result<i64, StoreError> {
    let count = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM outbox"#)
        .fetch_one(&mut *connection)
        .await?;
    Ok(count)
}

//! The outbox: nothing from a rolled-back transaction is published; a committed row
//! is published exactly once, even when the relay dies between publishing and marking,
//! and a message once published is not written again; an outbox of the earlier shape
//! (published rows kept in it) keeps its state through the migration.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use linkwork_bus::{OutboxRelay, RelayConfig};
use linkwork_store::outbox::{self, NewOutboxMessage};
use linkwork_store::sqlx::PgPool;
use linkwork_store::StoreError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{eventually, stack};

fn message(topic: &str, key: &str) -> NewOutboxMessage {
    NewOutboxMessage {
        event_id: Uuid::now_v7(),
        topic: topic.to_owned(),
        key: Some(key.to_owned()),
        ce_type: "linkwork.asc.case-opened.v1".into(),
        ce_source: "linkwork/tests".into(),
        ce_time: Utc::now(),
        traceparent: None,
        tracestate: None,
        extra_headers: vec![],
        payload: format!(r#"{{"case_id":"{key}","opened_at":"2026-01-01T00:00:00Z"}}"#)
            .into_bytes(),
    }
}

async fn backlog(pool: &PgPool) -> i64 {
    let mut connection = pool.acquire().await.unwrap();
    outbox::backlog(&mut connection).await.unwrap()
}

async fn commit(pool: &PgPool, messages: Vec<NewOutboxMessage>) {
    linkwork_store::in_transaction(pool, async |connection| {
        outbox::insert(connection, messages).await?;
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing() {
    let stack = stack();
    let pool = stack.database().await;
    let topic = stack.topic("it.outbox-rollback", 3).await;
    let refused = message(&topic, "SYN-1");
    let outcome = linkwork_store::in_transaction(&pool, async |connection| {
        outbox::insert(connection, vec![refused]).await?;
        // The decision that wrote the row fails afterwards.
        Err::<(), StoreError>(StoreError::Config("decision failed".into()))
    })
    .await;
    assert!(outcome.is_err());
    assert_eq!(backlog(&pool).await, 0, "the row was rolled back");

    let mut relay = OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    // Everything on the log now: the relay has just reported publishing nothing.
    let published = stack.read_topic(&topic, 0, Duration::from_secs(10)).await;
    assert!(published.is_empty(), "nothing reached the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_row_is_published_once_even_if_the_relay_restarts_between_publish_and_mark() {
    let stack = stack();
    let pool = stack.database().await;
    let topic = stack.topic("it.outbox-crash", 3).await;
    let messages: Vec<NewOutboxMessage> = (0..5)
        .map(|n| message(&topic, &format!("SYN-{n}")))
        .collect();
    let ids: HashSet<Uuid> = messages.iter().map(|message| message.event_id).collect();
    commit(&pool, messages).await;

    // The first relay publishes and dies before marking the rows.
    let mut crashed = OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    assert_eq!(crashed.publish_without_marking().await.unwrap(), 5);
    drop(crashed);
    assert_eq!(backlog(&pool).await, 5, "rows still look unpublished");

    // Its successor finds them on the topic and marks them without publishing again.
    let mut successor =
        OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    assert_eq!(successor.relay_once().await.unwrap(), 5);
    assert_eq!(backlog(&pool).await, 0);
    let offsets: Vec<Option<i64>> =
        linkwork_store::sqlx::query_scalar("SELECT published_offset FROM outbox_published")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        offsets.iter().all(Option::is_some),
        "each row records where it landed"
    );

    // A later row goes out normally.
    commit(&pool, vec![message(&topic, "SYN-9")]).await;
    assert_eq!(successor.relay_once().await.unwrap(), 1);

    let published = stack.read_topic(&topic, 6, Duration::from_secs(20)).await;
    assert_eq!(
        published.len(),
        6,
        "five recovered rows once each, plus the later one"
    );
    let seen: Vec<Uuid> = published
        .iter()
        .map(|message| Uuid::parse_str(message.header("ce_id").unwrap()).unwrap())
        .collect();
    let distinct: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "no row published twice");
    assert!(ids.is_subset(&distinct));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_relay_publishes_rows_of_one_key_in_the_order_they_were_written() {
    let stack = stack();
    let pool = stack.database().await;
    let topic = stack.topic("it.outbox-order", 3).await;
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(
        pool.clone(),
        &stack.kafka,
        RelayConfig {
            batch_size: 7,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let mut written = Vec::new();
    for round in 0..5 {
        let messages: Vec<NewOutboxMessage> =
            (0..10).map(|_| message(&topic, "SYN-SAME-KEY")).collect();
        written.extend(messages.iter().map(|message| message.event_id));
        commit(&pool, messages).await;
        if round == 2 {
            // The relay takes the first rounds before the rest are written.
            eventually(
                Duration::from_secs(30),
                "the first rounds relayed",
                || async { backlog(&pool).await == 0 },
            )
            .await;
        }
    }
    eventually(Duration::from_secs(30), "the outbox to drain", || async {
        backlog(&pool).await == 0
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let published = stack.read_topic(&topic, 50, Duration::from_secs(20)).await;
    let mut in_log: Vec<(i64, Uuid)> = published
        .iter()
        .map(|message| {
            (
                message.offset,
                Uuid::parse_str(message.header("ce_id").unwrap()).unwrap(),
            )
        })
        .collect();
    assert!(
        published
            .iter()
            .all(|message| message.partition == published[0].partition),
        "one key, one partition"
    );
    in_log.sort();
    let order: Vec<Uuid> = in_log.into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_once_published_is_not_written_to_the_outbox_again() {
    let stack = stack();
    let pool = stack.database().await;
    let topic = stack.topic("it.outbox-again", 3).await;
    let messages: Vec<NewOutboxMessage> = (0..3)
        .map(|n| message(&topic, &format!("SYN-AGAIN-{n}")))
        .collect();
    commit(&pool, messages.clone()).await;
    let mut relay = OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(backlog(&pool).await, 0, "published rows leave the outbox");

    // The same decisions written again (a consumer re-applying a batch, say).
    let written = linkwork_store::in_transaction(&pool, async |connection| {
        outbox::insert(connection, messages).await
    })
    .await
    .unwrap();
    assert_eq!(written, 0, "their event ids were published");
    assert_eq!(backlog(&pool).await, 0);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
}

/// Before migration 20261201000001 published rows stayed in `outbox`, marked, and an
/// attempt was recorded on the row itself. A waiting row, an attempted one and a
/// published one, written in that shape, come through it as what they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_the_earlier_shape_keeps_its_state_through_the_migration() {
    let stack = stack();
    let pool = stack.empty_database().await;
    let all = linkwork_store::migrator();
    let mut before = linkwork_store::migrator();
    before.migrations = all
        .migrations
        .iter()
        .filter(|migration| migration.version < 20261201000001)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();

    let topic = stack.topic("it.outbox-migrated", 1).await;
    let (waiting, attempted, published) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    linkwork_store::sqlx::query(
        r#"
        INSERT INTO outbox (event_id, topic, message_key, ce_type, ce_source, ce_time, payload,
                            target_partition, scan_from, attempted_at, published_at,
                            published_offset)
        VALUES ($1, $4, 'SYN-W', 'linkwork.test.v1', 'linkwork/tests', now(), '{}', NULL, NULL, NULL, NULL, NULL),
               ($2, $4, 'SYN-A', 'linkwork.test.v1', 'linkwork/tests', now(), '{}', 0, 0, now(), NULL, NULL),
               ($3, $4, 'SYN-P', 'linkwork.test.v1', 'linkwork/tests', now(), '{}', 0, 0, now(), now(), 41)
        "#,
    )
    .bind(waiting)
    .bind(attempted)
    .bind(published)
    .bind(&topic)
    .execute(&pool)
    .await
    .unwrap();

    all.run(&pool).await.unwrap();
    assert_eq!(
        backlog(&pool).await,
        2,
        "the waiting and the attempted row wait"
    );
    let attempts: Vec<(i32, i64)> =
        linkwork_store::sqlx::query_as("SELECT target_partition, scan_from FROM outbox_attempts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, vec![(0, 0)], "the attempt is kept for recovery");
    let remembered: Vec<(Uuid, Option<i64>)> =
        linkwork_store::sqlx::query_as("SELECT event_id, published_offset FROM outbox_published")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(remembered, vec![(published, Some(41))]);

    // The relay goes on from there: the attempted row is looked for on the log (it is
    // not there) and sent with the waiting one; the published one is not sent again.
    let mut relay = OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 2);
    let on_log = stack.read_topic(&topic, 2, Duration::from_secs(10)).await;
    assert_eq!(on_log.len(), 2);
    assert_eq!(backlog(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_too_large_for_one_statement_are_all_written_once_and_in_order() {
    let stack = stack();
    let pool = stack.database().await;
    // 2.1 MB of payloads: more than one INSERT carries, so the write is split.
    let messages: Vec<NewOutboxMessage> = (0..7)
        .map(|index| {
            let mut message = message("it.outbox-large", &format!("SYN-{index}"));
            message.payload = vec![b'x'; 300 * 1024];
            message
        })
        .collect();
    let mut repeated = message("it.outbox-large", "SYN-0");
    repeated.event_id = messages[0].event_id;
    let expected: Vec<Uuid> = messages.iter().map(|message| message.event_id).collect();
    let mut written = messages;
    // The same event again, in a later statement than its first copy.
    written.push(repeated);
    let inserted = linkwork_store::in_transaction(&pool, async |connection| {
        outbox::insert(connection, written).await
    })
    .await
    .unwrap();
    assert_eq!(inserted, 7, "the repeated event is written once");
    let mut connection = pool.acquire().await.unwrap();
    let pending = outbox::pending(&mut connection, 100).await.unwrap();
    let ids: Vec<Uuid> = pending.iter().map(|message| message.event_id).collect();
    assert_eq!(ids, expected, "every message, once, in the order written");
    assert!(pending
        .iter()
        .all(|message| message.payload.len() == 300 * 1024));
}

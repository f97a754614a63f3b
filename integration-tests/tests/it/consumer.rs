//! The transactional consumer: kill and restart, rebalances, poison messages, copies.

use std::time::Duration;

use chrono::Utc;
use linkwork_bus::headers::{EventMeta, HeaderList};
use linkwork_bus::{
    CloudEvent, ConsumerConfig, ConsumerRunner, Effects, Handler, HandlerError, Incoming, Outbound,
    OutboxRelay, Producer, RelayConfig,
};
use linkwork_domain::{AscCaseId, CallLogEvent, CaseClosed, ClosureReason, DomainEvent, EventId};
use linkwork_store::sqlx::{self, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::helpers::{case_opened, eventually, stack, unique, Stack};

/// Records case openings in a table with no unique constraint, so a duplicate
/// application would show as a second row. Refuses anything else.
struct RecordOpenings {
    instance: &'static str,
}

impl Handler for RecordOpenings {
    type Message = CloudEvent<CallLogEvent>;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        let mut case_ids = Vec::with_capacity(batch.len());
        let mut event_ids = Vec::with_capacity(batch.len());
        for incoming in batch {
            match &incoming.message.event {
                CallLogEvent::CaseOpened(opened) => {
                    case_ids.push(opened.case_id.to_string());
                    event_ids.push(incoming.message.meta.id);
                }
                _ => effects.reject(incoming, "this consumer records case openings only"),
            }
        }
        sqlx::query(
            "INSERT INTO opened_cases (case_id, event_id, instance)
             SELECT case_id, event_id, $3 FROM UNNEST($1::TEXT[], $2::UUID[]) AS t(case_id, event_id)",
        )
        .bind(&case_ids)
        .bind(&event_ids)
        .bind(self.instance)
        .execute(&mut *transaction)
        .await?;
        Ok(())
    }
}

async fn database_with_table(stack: &Stack) -> PgPool {
    let pool = stack.database().await;
    sqlx::query("CREATE TABLE opened_cases (case_id TEXT NOT NULL, event_id UUID NOT NULL, instance TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn rows(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT case_id) FROM opened_cases")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows_by(pool: &PgPool, instance: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM opened_cases WHERE instance = $1")
        .bind(instance)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn produce_openings(producer: &Producer, topic: &str, numbers: std::ops::Range<usize>) {
    let events: Vec<(EventId, CallLogEvent)> = numbers
        .map(case_opened)
        .map(|event| (event.derived_id(), event))
        .collect();
    for chunk in events.chunks(2000) {
        for result in producer
            .publish_batch(topic, "linkwork/tests", Utc::now(), chunk)
            .await
        {
            result.expect("broker acknowledged");
        }
    }
}

/// Produces openings in small batches over a few seconds.
async fn drip_openings(producer: Producer, topic: String, numbers: std::ops::Range<usize>) {
    let numbers: Vec<usize> = numbers.collect();
    for chunk in numbers.chunks(100) {
        produce_openings(&producer, &topic, chunk[0]..chunk[chunk.len() - 1] + 1).await;
        // Pacing, not settling: the stream must still be arriving when members come
        // and go.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(name: &str, topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(name, &[topic]);
    config.max_batch = 250;
    config
}

type Task = tokio::task::JoinHandle<Result<(), linkwork_bus::BusError>>;

/// A consumer recording openings, and an outbox relay publishing its dead letters.
fn start_with_relay(
    stack: &Stack,
    config: &ConsumerConfig,
    pool: &PgPool,
    shutdown: CancellationToken,
) -> (Task, Task) {
    let relay = OutboxRelay::new(pool.clone(), &stack.kafka, RelayConfig::default()).unwrap();
    let runner = ConsumerRunner::new(
        config.clone(),
        stack.kafka.clone(),
        pool.clone(),
        RecordOpenings { instance: "only" },
    )
    .with_outbox_notify(relay.notifier());
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    (tokio::spawn(runner.run(shutdown)), relay_task)
}

fn start(
    stack: &Stack,
    config: &ConsumerConfig,
    pool: &PgPool,
    instance: &'static str,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), linkwork_bus::BusError>> {
    let runner = ConsumerRunner::new(
        config.clone(),
        stack.kafka.clone(),
        pool.clone(),
        RecordOpenings { instance },
    );
    tokio::spawn(runner.run(shutdown))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_part_way_and_restarted_applies_each_of_10000_events_exactly_once() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.cases", 4).await;
    let config = config(&unique("cases"), &topic);
    let producer = Producer::new(&stack.kafka).unwrap();
    produce_openings(&producer, &topic, 0..5_000).await;

    let shutdown = CancellationToken::new();
    let first = start(&stack, &config, &pool, "first", shutdown.clone());
    eventually(
        Duration::from_secs(60),
        "the first instance to apply 2,000 events",
        || async { rows(&pool).await.0 >= 2_000 },
    )
    .await;
    // Killed: the task is dropped wherever it is, mid-transaction or not.
    first.abort();
    let _ = first.await;
    let at_kill = rows(&pool).await.0;
    assert!(
        at_kill < 10_000,
        "the kill came part-way ({at_kill} applied)"
    );

    produce_openings(&producer, &topic, 5_000..10_000).await;
    let second = start(&stack, &config, &pool, "second", shutdown.clone());
    eventually(
        Duration::from_secs(120),
        "10,000 applied events",
        || async { rows(&pool).await.0 >= 10_000 },
    )
    .await;
    // Every offset on the log is stored, so anything applied twice has been.
    stack.caught_up(&pool, &config.name, &topic).await;
    assert_eq!(
        rows(&pool).await,
        (10_000, 10_000),
        "exactly 10,000 rows, none twice"
    );
    shutdown.cancel();
    second.await.unwrap().unwrap();
}

/// Records openings like [`RecordOpenings`], but its first batch takes `stall` first:
/// processing that has stopped while the poll thread goes on fetching.
struct StallOnce {
    inner: RecordOpenings,
    stall: Option<Duration>,
}

impl Handler for StallOnce {
    type Message = CloudEvent<CallLogEvent>;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        if let Some(stall) = self.stall.take() {
            tokio::time::sleep(stall).await;
        }
        self.inner.handle(transaction, batch, effects).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_that_stalls_beyond_the_poll_threads_hold_pauses_and_then_applies_every_event_once(
) {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.cases", 4).await;
    let mut config = config(&unique("cases"), &topic);
    // A small hand-over queue: the poll thread's own backlog fills at once, it holds,
    // and (the stall being longer than its hold) pauses the partitions, which drops
    // what librdkafka had prefetched; resuming must fetch it all again.
    config.queue_capacity = 64;
    config.max_batch = 50;
    let producer = Producer::new(&stack.kafka).unwrap();
    produce_openings(&producer, &topic, 0..6_000).await;

    let shutdown = CancellationToken::new();
    let runner = ConsumerRunner::new(
        config.clone(),
        stack.kafka.clone(),
        pool.clone(),
        StallOnce {
            inner: RecordOpenings { instance: "only" },
            stall: Some(Duration::from_secs(4)),
        },
    );
    let task = tokio::spawn(runner.run(shutdown.clone()));
    eventually(Duration::from_secs(120), "6,000 applied events", || async {
        rows(&pool).await.0 >= 6_000
    })
    .await;
    stack.caught_up(&pool, &config.name, &topic).await;
    assert_eq!(
        rows(&pool).await,
        (6_000, 6_000),
        "exactly 6,000 rows, none twice"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_rebalances_lose_and_duplicate_nothing() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.shared", 6).await;
    let config = config(&unique("shared"), &topic);
    let producer = Producer::new(&stack.kafka).unwrap();
    produce_openings(&producer, &topic, 0..3_000).await;

    let stop_first = CancellationToken::new();
    let stop_second = CancellationToken::new();
    let first = start(&stack, &config, &pool, "first", stop_first.clone());
    eventually(
        Duration::from_secs(60),
        "the first instance to start applying",
        || async { rows(&pool).await.0 >= 500 },
    )
    .await;

    // A second member joins while events keep arriving, so the rebalance falls in the
    // middle of the stream.
    let drip = tokio::spawn(drip_openings(producer.clone(), topic.clone(), 3_000..7_000));
    let second = start(&stack, &config, &pool, "second", stop_second.clone());
    eventually(
        Duration::from_secs(60),
        "the second instance to get partitions and apply events",
        || async { rows_by(&pool, "second").await > 0 },
    )
    .await;
    drip.await.unwrap();
    let first_while_shared = rows_by(&pool, "first").await;

    // The first member leaves cleanly, again mid-stream: the second takes everything.
    let drip = tokio::spawn(drip_openings(
        producer.clone(),
        topic.clone(),
        7_000..10_000,
    ));
    eventually(
        Duration::from_secs(60),
        "the second drip to start being applied",
        || async { rows(&pool).await.0 > 7_000 },
    )
    .await;
    stop_first.cancel();
    first.await.unwrap().unwrap();
    drip.await.unwrap();
    eventually(
        Duration::from_secs(120),
        "10,000 applied events",
        || async { rows(&pool).await.0 >= 10_000 },
    )
    .await;
    stack.caught_up(&pool, &config.name, &topic).await;
    assert_eq!(
        rows(&pool).await,
        (10_000, 10_000),
        "exactly 10,000 rows, none twice"
    );
    assert!(
        first_while_shared > 0 && rows_by(&pool, "second").await > 0,
        "both instances did work"
    );
    stop_second.cancel();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_with_their_reason_and_the_consumer_moves_on() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.poison", 1).await;
    let name = unique("poison");
    let mut config = config(&name, &topic);
    config.dlq_topic = stack.topic("it.poison-dlq", 1).await;
    let producer = Producer::new(&stack.kafka).unwrap();

    let opened_type = "linkwork.asc.case-opened.v1";
    let headers_for = |event_type: &str| {
        EventMeta {
            id: EventId::new_random().as_uuid().to_owned(),
            event_type: event_type.to_owned(),
            source: "linkwork/tests".into(),
            time: Utc::now(),
            traceparent: None,
            tracestate: None,
        }
        .to_headers()
    };
    let closed = CallLogEvent::CaseClosed(CaseClosed {
        case_id: AscCaseId::parse("SYN-000099").unwrap(),
        closed_at: Utc::now(),
        reason: ClosureReason::Resolved,
    });
    let valid_first = case_opened(1).encode();
    let valid_last = case_opened(2).encode();
    let closed_body = closed.encode();
    // (body, headers, expected reason fragment) in log order; offsets 0 and 6 are valid.
    let messages: Vec<(Vec<u8>, HeaderList, Option<&str>)> = vec![
        (valid_first, headers_for(opened_type), None),
        (
            b"{not json".to_vec(),
            headers_for(opened_type),
            Some("is not valid JSON"),
        ),
        (
            b"{}".to_vec(),
            headers_for("linkwork.asc.case-exploded.v1"),
            Some("unknown event type"),
        ),
        (
            br#"{"case_id":"SYN-000003"}"#.to_vec(),
            headers_for(opened_type),
            Some("missing field `opened_at`"),
        ),
        (
            b"{\"case_id\":\"SYN-000004\"}".to_vec(),
            HeaderList::default(),
            Some("missing header ce_id"),
        ),
        (
            closed_body,
            headers_for(closed.event_type()),
            Some("records case openings only"),
        ),
        (valid_last, headers_for(opened_type), None),
    ];
    for (body, headers, _) in &messages {
        producer
            .send(Outbound {
                topic: &topic,
                key: Some(b"SYN"),
                partition: Some(0),
                payload: body,
                headers: headers.clone(),
            })
            .await
            .expect("acknowledged");
    }

    let shutdown = CancellationToken::new();
    let (consumer_task, relay_task) = start_with_relay(&stack, &config, &pool, shutdown.clone());

    eventually(
        Duration::from_secs(60),
        "both valid events applied",
        || async { rows(&pool).await.0 >= 2 },
    )
    .await;
    let dead = stack
        .read_topic(&config.dlq_topic, 5, Duration::from_secs(30))
        .await;
    assert_eq!(
        dead.len(),
        5,
        "five poison messages dead-lettered, once each"
    );
    for (offset, (body, headers, reason)) in messages.iter().enumerate() {
        let Some(reason) = reason else { continue };
        let letter = dead
            .iter()
            .find(|letter| {
                letter.header("dlq.original.offset") == Some(offset.to_string().as_str())
            })
            .unwrap_or_else(|| panic!("no dead letter for offset {offset}"));
        let stated = letter.header("dlq.reason").unwrap_or_default();
        assert!(
            stated.contains(reason),
            "offset {offset}: reason {stated:?} should mention {reason:?}"
        );
        assert_eq!(letter.header("dlq.original.topic"), Some(topic.as_str()));
        assert_eq!(letter.header("dlq.original.partition"), Some("0"));
        assert_eq!(letter.header("dlq.consumer"), Some(name.as_str()));
        assert_eq!(&letter.payload, body, "the original body is kept");
        assert_eq!(
            letter.key.as_deref(),
            Some("SYN"),
            "the original key is kept"
        );
        if let Some(original_type) = headers.get_str("ce_type") {
            assert_eq!(
                letter.header("dlq.original.header.ce_type"),
                Some(original_type)
            );
        }
    }
    assert_eq!(
        rows(&pool).await,
        (2, 2),
        "only the valid events were applied"
    );
    shutdown.cancel();
    consumer_task.await.unwrap().unwrap();
    relay_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_of_an_event_on_the_log_is_applied_once() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.copies", 2).await;
    let config = config(&unique("copies"), &topic);
    let producer = Producer::new(&stack.kafka).unwrap();
    let event = case_opened(7);
    // The same event (same ce_id) reaches the log three times, as retries can make it.
    for _ in 0..3 {
        producer
            .publish(
                &topic,
                event.derived_id(),
                "linkwork/tests",
                Utc::now(),
                &event,
            )
            .await
            .unwrap();
    }
    produce_openings(&producer, &topic, 100..110).await;
    let shutdown = CancellationToken::new();
    let task = start(&stack, &config, &pool, "only", shutdown.clone());
    eventually(
        Duration::from_secs(60),
        "eleven distinct events applied",
        || async { rows(&pool).await.1 >= 11 },
    )
    .await;
    stack.caught_up(&pool, &config.name, &topic).await;
    assert_eq!(rows(&pool).await, (11, 11));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_dead_lettered_alone_and_the_rest_of_its_batch_applies() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    // A rule the handler does not know about: only the database refuses the case.
    sqlx::query(
        "ALTER TABLE opened_cases ADD CONSTRAINT no_case_13 CHECK (case_id <> 'SYN-000013')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let topic = stack.topic("it.data-error", 1).await;
    let name = unique("data-error");
    let mut config = config(&name, &topic);
    config.dlq_topic = stack.topic("it.data-error-dlq", 1).await;
    // One batch holds all twenty messages, so the refusal fails the whole batch first.
    config.max_batch_wait = Duration::from_millis(500);
    let producer = Producer::new(&stack.kafka).unwrap();
    produce_openings(&producer, &topic, 0..20).await;

    let shutdown = CancellationToken::new();
    let (consumer_task, relay_task) = start_with_relay(&stack, &config, &pool, shutdown.clone());
    eventually(
        Duration::from_secs(60),
        "the 19 acceptable events applied",
        || async { rows(&pool).await.0 >= 19 },
    )
    .await;
    let dead = stack
        .read_topic(&config.dlq_topic, 1, Duration::from_secs(30))
        .await;
    assert_eq!(dead.len(), 1, "only the refused message is dead-lettered");
    let reason = dead[0].header("dlq.reason").unwrap_or_default();
    assert!(
        reason.contains("refused by the database") && reason.contains("no_case_13"),
        "{reason}"
    );
    assert!(
        String::from_utf8_lossy(&dead[0].payload).contains("SYN-000013"),
        "the dead letter is the refused message"
    );
    assert_eq!(rows(&pool).await, (19, 19));
    shutdown.cancel();
    consumer_task.await.unwrap().unwrap();
    relay_task.await.unwrap().unwrap();
}

/// A stored position the log no longer holds means the log and the read models have
/// parted ways (a recreated topic, a broker that lost data): the consumer must stop
/// and say so, not reset and silently skip or re-apply. On the real broker: Kafka
/// answers the fetch with OFFSET_OUT_OF_RANGE, and `auto.offset.reset=error` turns it
/// into an error instead of a silent reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_beyond_the_end_of_the_log_stops_the_consumer_with_a_clear_error() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.recreated", 1).await;
    let kafka = stack.kafka.clone();
    let producer = Producer::new(&kafka).unwrap();
    produce_openings(&producer, &topic, 0..5).await;
    let config = config(&unique("recreated"), &topic);
    // The read models say 50 events were applied; the log holds 5.
    sqlx::query("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES ($1, $2, 0, 50)")
        .bind(&config.name)
        .bind(&topic)
        .execute(&pool)
        .await
        .unwrap();

    let runner = ConsumerRunner::new(
        config,
        kafka,
        pool.clone(),
        RecordOpenings { instance: "only" },
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        runner.run(CancellationToken::new()),
    )
    .await
    .expect("the consumer stops by itself");
    let error = outcome
        .expect_err("the consumer refuses to go on")
        .to_string();
    assert!(error.contains("outside the log"), "{error}");
    assert_eq!(rows(&pool).await, (0, 0), "nothing was applied");
}

/// Kafka serves a fetch that starts inside a stored record batch from the asked offset
/// on (the client drops the batch's earlier records), so a consumer whose stored
/// position lies mid-batch applies exactly the rest of the log. Some Kafka-compatible
/// brokers skip the rest of such a batch (Tansu 0.6 did); the consumer runner trusts
/// the broker here, and this test is why it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_positioned_inside_a_stored_batch_applies_exactly_the_rest_of_the_log() {
    let stack = stack();
    let pool = database_with_table(&stack).await;
    let topic = stack.topic("it.mid-batch", 1).await;
    let producer = Producer::new(&stack.kafka).unwrap();
    // Published together, 2,000 events go out in a few large record batches.
    produce_openings(&producer, &topic, 0..2000).await;
    let config = config(&unique("mid-batch"), &topic);
    sqlx::query("INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) VALUES ($1, $2, 0, 1013)")
        .bind(&config.name)
        .bind(&topic)
        .execute(&pool)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let consumer = start(&stack, &config, &pool, "only", shutdown.clone());
    eventually(
        Duration::from_secs(60),
        "the 987 events from offset 1013 applied",
        || async { rows(&pool).await.0 >= 987 },
    )
    .await;
    // Every offset on the log is stored, so anything skipped or repeated shows.
    stack.caught_up(&pool, &config.name, &topic).await;
    let (first, last): (String, String) =
        sqlx::query_as("SELECT min(case_id), max(case_id) FROM opened_cases")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows(&pool).await, (987, 987), "each applied once");
    assert_eq!(
        (first.as_str(), last.as_str()),
        ("SYN-001013", "SYN-001999")
    );
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

//! An acknowledgement that means what it says: referrals posted over HTTP while the
//! broker is killed (SIGKILL) and restarted. Every referral answered 2xx is on the log
//! once and routed once; every one answered 503 is, when resubmitted, taken once
//! (200 with the same id if the first attempt had landed after all, 201 if not) and
//! never gets a second `ReferralReceived`.
//!
//! The broker is the test's own (`OwnBroker`), so killing it disturbs no other test.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linkwork::serve::Service;
use linkwork::topology::{HttpSettings, Services, Topology, TopologySettings};
use linkwork_auth::{Role, Verifier};
use linkwork_bus::headers::{CE_ID, CE_TYPE};
use linkwork_bus::topics::REFERRAL_EVENTS;
use linkwork_bus::Names;
use linkwork_ingest::{Application, IngestSettings};
use linkwork_router::directory::{self, DirectoryDocument};
use linkwork_testkit::broker::OwnBroker;
use linkwork_testkit::gp_referral;
use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, stack, unique, ReadMessage, Stack};

const DEV_SECRET: &str = "broker-killed-tests-development-secret-0123456789";
const RECEIVED: &str = "linkwork.referral.received.v1";
const ROUTED: &str = "linkwork.referral.routed.v1";

/// Referrals posted, and how many are in flight at once.
const REFERRALS: usize = 300;
const CONCURRENCY: usize = 8;

/// One provider with room for everyone in LS1 (the test referral's postcode).
const DIRECTORY: &str = r#"
providers:
  - id: connectors
    name: Community Connectors
    kind: want
    areas: { postcode_districts: [LS1] }
    needs: [social-isolation, loneliness]
    capacity: 100000
    accept_within_working_days: 5
"#;

/// An HTTP answer to one POST.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// The referral id from `Location`, on 2xx.
    referral_id: Option<String>,
    retry_after: Option<u64>,
    body: String,
    /// When the answer arrived.
    at: std::time::Instant,
}

async fn post(client: &reqwest::Client, address: &str, token: &str, reference: &str) -> Answer {
    let response = client
        .post(format!("{address}/fhir/ServiceRequest"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(gp_referral(reference).to_string())
        .send()
        .await
        .expect("ingest answers");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let referral_id = header("location").and_then(|location| {
        location
            .split("/fhir/ServiceRequest/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
    });
    let retry_after = header("retry-after").and_then(|seconds| seconds.parse().ok());
    let body = response.text().await.unwrap_or_default();
    Answer {
        status,
        referral_id,
        retry_after,
        body,
        at: std::time::Instant::now(),
    }
}

/// Runs `start()` until shutdown, starting it again whenever it stops with an error
/// (a consumer may give up while the broker is down; a restart is what an operator's
/// supervisor would do).
fn supervise<F, Fut>(shutdown: CancellationToken, what: &'static str, start: F)
where
    F: Fn(CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            if let Err(error) = start(shutdown.clone()).await {
                tracing::warn!(error = %format!("{error:#}"), what, "stopped with an error; starting again");
                // A supervisor's back-off between restarts, not a wait for anything.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
}

async fn read_all(stack: &Stack, topic: &str, expected: usize) -> Vec<ReadMessage> {
    stack
        .read_topic(topic, expected, Duration::from_secs(60))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referrals_acknowledged_while_the_broker_is_killed_are_on_the_log_once_and_routed_once() {
    let broker = Arc::new(tokio::task::spawn_blocking(OwnBroker::start).await.unwrap());
    let stack = stack().with_brokers(broker.bootstrap());
    let pool = stack.database().await;
    linkwork_ingest::migrate(&pool).await.unwrap();
    linkwork_router::migrate(&pool).await.unwrap();

    let prefix = unique("bk");
    let names = Names::isolated(&prefix);
    let document = DirectoryDocument::parse(DIRECTORY).unwrap();
    // Three partitions a topic, as the rest of the suite: the broker restarts (and
    // recovers every partition) in the middle of this test.
    stack
        .apply_declaration(
            &names.declaration(&Stack::small_declaration()),
            &document.provider_ids(),
        )
        .await;
    let events_topic = names.topic(REFERRAL_EVENTS);
    let queues: Vec<String> = document
        .provider_ids()
        .iter()
        .map(|provider| names.provider_queue(provider))
        .collect();
    let mut transaction = pool.begin().await.unwrap();
    directory::store(&mut transaction, &document, "test")
        .await
        .unwrap();
    transaction.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // The router and its outbox relay as `serve router` assembles them, built afresh
    // whenever they stop. Ingest runs on its own (below): it must answer throughout the
    // outage, which is what this test is about.
    supervise(shutdown.clone(), "router topology", {
        let pool = pool.clone();
        let kafka = stack.kafka.clone();
        let names = names.clone();
        move |shutdown| {
            let (pool, kafka, names) = (pool.clone(), kafka.clone(), names.clone());
            async move {
                let mut settings = TopologySettings::new(
                    kafka,
                    names,
                    Services::from(Service::Router),
                    HttpSettings::new("127.0.0.1:0".parse()?),
                )?;
                settings.topics = Stack::small_declaration();
                settings.vault = Some(crate::helpers::vault());
                Topology::build(settings, pool).await?.run(shutdown).await
            }
        }
    });

    // Deliveries time out after 2 s, so posts during the outage are answered 503.
    let address = ingest_on(&stack, &pool, &events_topic, &shutdown).await;
    let token = gp_token();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();

    // Post everything, CONCURRENCY at a time; kill the broker a third of the way in,
    // start it again two seconds later, and keep posting throughout.
    let references: Vec<String> = (0..REFERRALS)
        .map(|number| format!("{prefix}-{number:04}"))
        .collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut posts = Vec::new();
    let mut killed = false;
    // When the kill was sent, and when the restarted broker answered again.
    let outage: Arc<std::sync::Mutex<(Option<std::time::Instant>, Option<std::time::Instant>)>> =
        Arc::default();
    for reference in &references {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (client, address, token, reference, counter) = (
            client.clone(),
            address.clone(),
            token.clone(),
            reference.clone(),
            answered.clone(),
        );
        posts.push(tokio::spawn(async move {
            let answer = post(&client, &address, &token, &reference).await;
            counter.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            (reference, answer)
        }));
        if !killed && answered.load(Ordering::SeqCst) >= REFERRALS / 3 {
            killed = true;
            let broker = broker.clone();
            let outage = outage.clone();
            tokio::spawn(async move {
                outage.lock().unwrap().0 = Some(std::time::Instant::now());
                tokio::task::spawn_blocking({
                    let broker = broker.clone();
                    move || broker.kill()
                })
                .await
                .unwrap();
                // The outage's length: deliberate, not a wait for anything.
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::task::spawn_blocking(move || broker.restart())
                    .await
                    .unwrap();
                outage.lock().unwrap().1 = Some(std::time::Instant::now());
            });
        }
    }
    let mut first: BTreeMap<String, Answer> = BTreeMap::new();
    for post in posts {
        let (reference, answer) = post.await.unwrap();
        first.insert(reference, answer);
    }
    // The broker may still be starting if the posts outran the restart.
    eventually(
        Duration::from_secs(60),
        "the broker, killed, to be started again",
        || async { broker.pid().is_some() },
    )
    .await;

    let acknowledged = first
        .values()
        .filter(|answer| (200..300).contains(&answer.status))
        .count();
    let refused: Vec<&String> = first
        .iter()
        .filter(|(_, answer)| answer.status == 503)
        .map(|(reference, _)| reference)
        .collect();
    eprintln!(
        "{REFERRALS} referrals: {acknowledged} acknowledged, {} answered 503 during the outage",
        refused.len()
    );
    for (reference, answer) in &first {
        assert!(
            (200..300).contains(&answer.status) || answer.status == 503,
            "{reference}: {} {}",
            answer.status,
            answer.body
        );
        if answer.status == 503 {
            assert!(answer.retry_after.is_some_and(|seconds| seconds >= 1));
        }
    }
    assert!(
        !refused.is_empty(),
        "some posts fell in the outage (otherwise the test proves nothing)"
    );

    // Every 503 resubmitted until it is decided: 200 (it had landed) or 201 (it had
    // not); never a conflict.
    let mut decided: HashMap<String, Answer> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<String> = refused
        .iter()
        .map(|reference| (*reference).clone())
        .collect();
    let mut resubmissions = 0;
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} resubmissions still undecided: {:?}",
            pending.len(),
            pending.first().map(|reference| &first[reference].body)
        );
        let mut still = Vec::new();
        for reference in pending {
            resubmissions += 1;
            let answer = post(&client, &address, &token, &reference).await;
            match answer.status {
                200 | 201 => {
                    decided.insert(reference, answer);
                }
                503 => {
                    assert!(answer.retry_after.is_some_and(|seconds| seconds >= 1));
                    still.push(reference);
                }
                other => panic!("resubmitting {reference}: {other} {}", answer.body),
            }
        }
        pending = still;
        if !pending.is_empty() {
            // A client's back-off before resubmitting, as Retry-After asks.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let found_landed = decided
        .values()
        .filter(|answer| answer.status == 200)
        .count();
    eprintln!(
        "resubmitted {} ({resubmissions} posts): {found_landed} had landed (200), {} had not (201)",
        decided.len(),
        decided.len() - found_landed
    );

    // The id of each referral, from its 2xx answer.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for (reference, answer) in first.iter().chain(decided.iter()) {
        if (200..300).contains(&answer.status) {
            let id = answer.referral_id.clone().expect("a 2xx has a Location");
            if let Some(earlier) = ids.insert(reference.clone(), id.clone()) {
                assert_eq!(earlier, id, "{reference} answered with two ids");
            }
        }
    }
    assert_eq!(ids.len(), REFERRALS, "every referral is taken in the end");

    // The whole events topic, once every referral is routed.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = read_all(&stack, &events_topic, REFERRALS * 2).await;
        let routed = events
            .iter()
            .filter(|message| message.header(CE_TYPE) == Some(ROUTED))
            .count();
        if routed >= REFERRALS || std::time::Instant::now() >= deadline {
            break events;
        }
    };
    let mut received_by_referral: HashMap<String, Vec<&ReadMessage>> = HashMap::new();
    let mut received_by_event: HashMap<String, usize> = HashMap::new();
    let mut routed_by_referral: HashMap<String, usize> = HashMap::new();
    for message in &events {
        let key = message.key.clone().unwrap_or_default();
        match message.header(CE_TYPE) {
            Some(RECEIVED) => {
                received_by_referral.entry(key).or_default().push(message);
                *received_by_event
                    .entry(message.header(CE_ID).unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
            Some(ROUTED) => *routed_by_referral.entry(key).or_default() += 1,
            _ => {}
        }
    }
    let outage = *outage.lock().unwrap();
    report_missing(
        &stack,
        &events_topic,
        &events,
        &ids,
        &first,
        &received_by_referral,
        outage,
    )
    .await;
    for (reference, id) in &ids {
        let copies = received_by_referral
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let contents: Vec<String> = copies
            .iter()
            .map(|message| {
                format!(
                    "offset {} of partition {}: {}",
                    message.offset,
                    message.partition,
                    String::from_utf8_lossy(&message.payload)
                )
            })
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "{reference} (first answered {}, resubmission {:?}) has {} ReferralReceived:\n{}",
            first[reference].status,
            decided.get(reference).map(|answer| answer.status),
            copies.len(),
            contents.join("\n")
        );
        assert_eq!(
            routed_by_referral.get(id).copied().unwrap_or(0),
            1,
            "{reference} is routed once"
        );
    }
    assert_eq!(
        received_by_referral.len(),
        REFERRALS,
        "nothing but the posted referrals"
    );
    for (event_id, count) in &received_by_event {
        assert_eq!(*count, 1, "event {event_id} is on the log {count} times");
    }

    // And each referral's Bundle reached the provider's queue once.
    let mut bundles: HashMap<String, usize> = HashMap::new();
    for queue in &queues {
        for message in read_all(&stack, queue, REFERRALS).await {
            *bundles
                .entry(message.key.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    for (reference, id) in &ids {
        assert_eq!(
            bundles.get(id).copied().unwrap_or(0),
            1,
            "{reference} reached a provider queue once"
        );
    }
    shutdown.cancel();
}

/// For every referral taken whose `ReferralReceived` is not on the log once: when it
/// was answered (relative to the kill and the restart), the partition its key goes to,
/// and that partition's watermarks and records as read, so a failure shows where the
/// event should be.
async fn report_missing(
    stack: &Stack,
    topic: &str,
    events: &[ReadMessage],
    ids: &BTreeMap<String, String>,
    first: &BTreeMap<String, Answer>,
    received_by_referral: &HashMap<String, Vec<&ReadMessage>>,
    (killed_at, restarted_at): (Option<std::time::Instant>, Option<std::time::Instant>),
) {
    let missing: Vec<(&String, &String)> = ids
        .iter()
        .filter(|(_, id)| received_by_referral.get(*id).map_or(0, Vec::len) != 1)
        .collect();
    if missing.is_empty() {
        return;
    }
    let ends = stack.log_ends(topic).await;
    let partitions = ends.len() as i32;
    let relative = |at: std::time::Instant| match killed_at {
        Some(killed) if at >= killed => format!("{:?} after the kill", at - killed),
        Some(killed) => format!("{:?} before the kill", killed - at),
        None => "(no kill)".to_owned(),
    };
    eprintln!(
        "{} referral(s) not on the log once; read {} records of {topic}; watermarks {ends:?}; restarted {}",
        missing.len(),
        events.len(),
        restarted_at.map(relative).unwrap_or_else(|| "never".into())
    );
    for (reference, id) in missing {
        let answer = &first[reference];
        let partition = linkwork_bus::partitioner::partition_for(id.as_bytes(), partitions);
        eprintln!(
            "  {reference} (referral {id}): first answered {} {}; its key goes to partition {partition}",
            answer.status,
            relative(answer.at),
        );
        let mut held: Vec<&ReadMessage> = events
            .iter()
            .filter(|message| message.partition == partition)
            .collect();
        held.sort_by_key(|message| message.offset);
        let offsets: Vec<String> = held
            .iter()
            .map(|message| {
                format!(
                    "{}:{}:{}",
                    message.offset,
                    message
                        .header(CE_TYPE)
                        .unwrap_or("?")
                        .rsplit('.')
                        .nth(1)
                        .unwrap_or("?"),
                    &message.key.as_deref().unwrap_or("-")
                        [..8.min(message.key.as_deref().unwrap_or("-").len())]
                )
            })
            .collect();
        eprintln!("    partition {partition} holds {}", offsets.join(" "));
    }
}

/// A development token for the GP practice A81001.
fn gp_token() -> String {
    linkwork_auth::dev_token(
        &SecretString::from(DEV_SECRET),
        Role::Source,
        "gp:A81001",
        &Role::Source.default_scopes("gp:A81001"),
        3600,
    )
    .expect("a development token")
}

/// Ingest on `events`, sharing `pool`, with a 2 s delivery timeout.
async fn ingest_on(
    stack: &Stack,
    pool: &linkwork_store::sqlx::PgPool,
    events: &str,
    shutdown: &CancellationToken,
) -> String {
    let mut kafka = stack.kafka.clone();
    // librdkafka's own account of the producer (`eos,msg,protocol`, say), for a look at
    // what it was told.
    if let Ok(debug) = std::env::var("LINKWORK_TEST_INGEST_KAFKA_DEBUG") {
        kafka.properties.insert("debug".into(), debug);
    }
    let mut settings = IngestSettings::new("127.0.0.1:0".parse().unwrap());
    settings.http.events_topic = events.to_owned();
    settings.delivery_timeout = Duration::from_secs(2);
    let verifier = Verifier::dev(SecretString::from(DEV_SECRET)).unwrap();
    let application = Application::build(settings, &kafka, pool.clone(), verifier)
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", application.port());
    let shutdown = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(shutdown).await.unwrap() });
    address
}

/// Marks a referral's receipt as a publish whose acknowledgement never came, begun
/// `seconds_ago`.
async fn make_unconfirmed(
    pool: &linkwork_store::sqlx::PgPool,
    referral_id: &str,
    seconds_ago: i64,
) {
    let updated = linkwork_store::sqlx::query(
        "UPDATE ingest_receipts SET state = 'unconfirmed', published_at = NULL, \
         attempted_at = now() - make_interval(secs => $2) WHERE referral_id = $1::UUID",
    )
    .bind(referral_id)
    .bind(seconds_ago as f64)
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
}

fn received_for(events: &[ReadMessage], referral_id: &str) -> usize {
    events
        .iter()
        .filter(|message| {
            message.header(CE_TYPE) == Some(RECEIVED) && message.key.as_deref() == Some(referral_id)
        })
        .count()
}

/// The two ways an unconfirmed publish settles, made deterministic: the event landed
/// although its acknowledgement was lost (the receipt is set back to `unconfirmed`
/// after a real publish), or it never landed (the same receipt against a log that
/// does not hold the event). Landed: the resubmission is answered 200 with the same id
/// and nothing is published again. Not landed: while the attempt is recent enough to
/// land still, 503 with Retry-After and nothing published; once it is not, the
/// resubmission publishes it (201), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_is_settled_against_the_log_before_anything_is_published_again() {
    let stack = stack();
    let pool = stack.database().await;
    linkwork_ingest::migrate(&pool).await.unwrap();
    let landed_on = stack.topic("it.settle.landed", 3).await;
    let absent_on = stack.topic("it.settle.absent", 3).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let first = ingest_on(&stack, &pool, &landed_on, &shutdown).await;
    let token = gp_token();
    let client = reqwest::Client::new();
    let reference = unique("settle");

    let created = post(&client, &first, &token, &reference).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.referral_id.clone().expect("a Location");

    // Landed, acknowledgement lost: found on the log, answered 200 with the same id.
    make_unconfirmed(&pool, &id, 3600).await;
    let again = post(&client, &first, &token, &reference).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.referral_id.as_deref(), Some(id.as_str()));
    let state: String = linkwork_store::sqlx::query_scalar(
        "SELECT state FROM ingest_receipts WHERE referral_id = $1::UUID",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(state, "published", "settled");
    let events = read_all(&stack, &landed_on, 1).await;
    assert_eq!(received_for(&events, &id), 1, "not published again");

    // Never landed (this log does not hold it), attempt just begun: undecidable yet.
    let second = ingest_on(&stack, &pool, &absent_on, &shutdown).await;
    make_unconfirmed(&pool, &id, 0).await;
    let early = post(&client, &second, &token, &reference).await;
    assert_eq!(early.status, 503, "{}", early.body);
    assert!(early.retry_after.is_some_and(|seconds| seconds >= 1));
    // Attempt long past: surely absent, so it is published now, once.
    make_unconfirmed(&pool, &id, 3600).await;
    let published = post(&client, &second, &token, &reference).await;
    assert_eq!(published.status, 201, "{}", published.body);
    assert_eq!(published.referral_id.as_deref(), Some(id.as_str()));
    let resubmitted = post(&client, &second, &token, &reference).await;
    assert_eq!(resubmitted.status, 200, "{}", resubmitted.body);
    let events = read_all(&stack, &absent_on, 1).await;
    assert_eq!(received_for(&events, &id), 1, "published once");
}

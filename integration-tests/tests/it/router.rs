//! The router against the real broker and Postgres: capacity under scale-out,
//! re-routing on rejection and deadline, a kill mid-stream, directory changes.
//!
//! Each test has its own database, topics and consumer group (`Names::isolated`), and
//! runs router processes as `serve router` assembles them (`linkwork::topology`: the
//! consumer, the deadline sweeper and the outbox relay), so what it reads back is what
//! providers would see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use linkwork::topology::Services;
use linkwork_bus::topics::{consumers, TopicsFile, REFERRAL_EVENTS, TRIAGE_REFERRALS};
use linkwork_bus::{Names, Producer};
use linkwork_domain::event::{
    Identifier, PersonName, Priority, ProviderStatusChange, ReferralReceived, Subject,
};
use linkwork_domain::{
    DomainEvent, EventId, Need, NhsNumber, Postcode, ProviderId, ReferralEvent, ReferralId, Source,
};
use linkwork_router::directory::{self, DirectoryDocument};
use linkwork_router::{Clock, RouterConfig, RouterTopics};
use linkwork_store::sqlx::{self, PgPool};
use serde_json::Value;

use crate::helpers::{eventually, stack, unique, Process, ReadMessage, Stack};

/// A need service with little room, and a want activity; both serve LW1.
const DIRECTORY: &str = r#"
providers:
  - id: money-advice
    name: Money Advice
    kind: need
    areas: { postcode_districts: [LW1] }
    needs: [money-worries]
    capacity: 5
    accept_within_working_days: 2
  - id: connectors
    name: Connectors
    kind: want
    areas: { postcode_districts: [LW1] }
    needs: [loneliness, money-worries]
    capacity: 10000
    accept_within_working_days: 2
"#;

/// Monday 2026-11-16, 09:00 UTC.
fn monday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 16, 9, 0, 0).unwrap()
}

struct Rig {
    stack: Stack,
    pool: PgPool,
    names: Names,
    /// The built-in topics declaration with few partitions, for a light broker.
    declaration: TopicsFile,
    topics: RouterTopics,
    producer: Producer,
    clock: Clock,
    providers: Vec<ProviderId>,
}

impl Rig {
    async fn new(directory_yaml: &str) -> Rig {
        let stack = stack();
        let pool = stack.database().await;
        linkwork_router::migrate(&pool).await.unwrap();
        let names = Names::isolated(&unique("rt"));
        let topics = RouterTopics {
            events: names.topic(REFERRAL_EVENTS),
            triage: names.topic(TRIAGE_REFERRALS),
            dlq: names.dlq(consumers::ROUTER),
            queue_prefix: names.topic_prefix().to_owned(),
        };
        let declaration = Stack::small_declaration();
        stack
            .apply_declaration(&names.declaration(&declaration), &[])
            .await;
        let producer = Producer::new(&stack.kafka).unwrap();
        let mut rig = Rig {
            stack,
            pool,
            names,
            declaration,
            topics,
            producer,
            clock: Clock::manual(monday()),
            providers: Vec::new(),
        };
        rig.apply_directory(directory_yaml).await;
        rig
    }

    /// Stores a directory version and creates its queues; returns its label.
    async fn apply_directory(&mut self, yaml: &str) -> String {
        let document = DirectoryDocument::parse(yaml).unwrap();
        let new: Vec<ProviderId> = document
            .provider_ids()
            .into_iter()
            .filter(|provider| !self.providers.contains(provider))
            .collect();
        self.stack
            .apply_declaration(&self.names.declaration(&self.declaration), &new)
            .await;
        self.providers.extend(new);
        let mut transaction = self.pool.begin().await.unwrap();
        let stored = directory::store(&mut transaction, &document, "test")
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        stored.directory.label()
    }

    /// Starts a router process on this rig's topics, group and clock, sweeping for
    /// deadlines every 100 ms.
    async fn start_router(&self) -> Process {
        Process::start(
            &self.stack,
            &self.pool,
            &self.names,
            Services {
                router: true,
                ..Services::default()
            },
            |settings| {
                settings.clock = self.clock.clone();
                settings.topics = self.declaration.clone();
                settings.deadline_poll = Duration::from_millis(100);
            },
        )
        .await
    }

    async fn publish(&self, event: ReferralEvent, id: &str) {
        self.producer
            .publish(
                &self.topics.events,
                EventId::derive(&[id]),
                "test",
                event.occurred_at(),
                &event,
            )
            .await
            .unwrap();
    }

    async fn receive(&self, referral: &ReferralReceived) {
        self.publish(
            ReferralEvent::Received(Box::new(referral.clone())),
            &format!("received-{}", referral.referral_id),
        )
        .await;
    }

    async fn provider_says(
        &self,
        kind: fn(ProviderStatusChange) -> ReferralEvent,
        referral: ReferralId,
        provider: &str,
        at: DateTime<Utc>,
    ) {
        let change = ProviderStatusChange {
            referral_id: referral,
            provider_id: ProviderId::parse(provider).unwrap(),
            reason: Some("no capacity for this person's needs".into()),
            occurred_at: at,
        };
        let event = kind(change);
        let id = format!("{}-{referral}-{provider}", event.event_type());
        self.publish(event, &id).await;
    }

    /// Starts a router and sends it one referral; returns once it is on a queue.
    async fn route_one(&self, number: u32, needs: &[Need]) -> (Process, ReferralReceived) {
        let router = self.start_router().await;
        let person = referral(number, needs, monday());
        self.receive(&person).await;
        self.wait_for_route(person.referral_id, "requested", 1)
            .await;
        (router, person)
    }

    async fn routed_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM router_referrals")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn route_of(&self, referral: ReferralId) -> (String, Option<String>, i32) {
        sqlx::query_as(
            "SELECT status, provider_id, attempt FROM router_referrals WHERE referral_id = $1",
        )
        .bind(referral.as_uuid())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Waits until the referral's route is `status` at `attempt` and the router has
    /// read that decision back from the log: a provider answers only a request it was
    /// sent, and ingest puts its answer on the log only after the decision (log order
    /// decides, so an answer ahead of the decision it answers is superseded).
    async fn wait_for_route(&self, referral: ReferralId, status: &str, attempt: i32) {
        let what = format!("referral {referral} {status} at attempt {attempt}, back on the log");
        eventually(Duration::from_secs(30), &what, || async {
            let found: Option<(String, i32, i32)> = sqlx::query_as(
                "SELECT status, attempt, confirmed_attempt FROM router_referrals
                 WHERE referral_id = $1",
            )
            .bind(referral.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            found.is_some_and(|(found_status, found_attempt, confirmed)| {
                found_status == status && found_attempt == attempt && confirmed >= attempt
            })
        })
        .await;
    }

    async fn loads(&self) -> BTreeMap<String, i32> {
        let rows: Vec<(String, i32)> =
            sqlx::query_as("SELECT provider_id, active FROM provider_load")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        rows.into_iter().collect()
    }

    async fn outbox_drained(&self) {
        eventually(Duration::from_secs(30), "the outbox to drain", || async {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            pending == 0
        })
        .await;
    }

    /// Everything on `topic` once the router's output is all out of the outbox (at
    /// least `expected` messages).
    async fn read(&self, topic: &str, expected: usize) -> Vec<ReadMessage> {
        self.outbox_drained().await;
        self.stack
            .read_topic(topic, expected, Duration::from_secs(30))
            .await
    }

    async fn queue(&self, provider: &str, expected: usize) -> Vec<ReadMessage> {
        self.read(
            &self
                .topics
                .provider_queue(&ProviderId::parse(provider).unwrap()),
            expected,
        )
        .await
    }

    /// The router's own events on the event topic, decoded.
    async fn decisions(&self, expected: usize) -> Vec<ReferralEvent> {
        self.read(&self.topics.events, expected)
            .await
            .into_iter()
            .filter_map(|message| {
                let event_type = message.header("ce_type")?.to_owned();
                let event = ReferralEvent::decode(&event_type, &message.payload).ok()?;
                matches!(
                    event,
                    ReferralEvent::Routed(_) | ReferralEvent::Unroutable(_)
                )
                .then_some(event)
            })
            .collect()
    }
}

/// A synthetic GP referral: NHS number in the never-issued 999 range, invented name.
/// A synthetic referral from a GP: NHS number in the 999 range, invented name.
pub(crate) fn referral(number: u32, needs: &[Need], at: DateTime<Utc>) -> ReferralReceived {
    let source = Source::parse("gp:A81001").unwrap();
    let value = format!("SYN-{number:06}");
    let referral_id = ReferralId::derive(&source, "https://example.org/referrals", &value);
    let mut digits = [9u8, 9, 9, 0, 0, 0, 0, 0, 0];
    let mut rest = number;
    for digit in digits[4..].iter_mut().rev() {
        *digit = (rest % 10) as u8;
        rest /= 10;
    }
    // Some nine-digit stems have no valid check digit; the next one along does.
    let nhs_number = (0..10)
        .find_map(|bump| {
            let mut stem = digits;
            stem[8] = (stem[8] + bump) % 10;
            NhsNumber::from_first_nine(stem)
        })
        .unwrap();
    ReferralReceived {
        referral_id,
        source,
        source_identifier: Identifier {
            system: "https://example.org/referrals".into(),
            value,
        },
        subject: Subject {
            nhs_number: Some(nhs_number),
            name: Some(PersonName {
                given: vec!["Testy".into()],
                family: Some(format!("Synthetic{number}")),
            }),
            birth_date: chrono::NaiveDate::from_ymd_opt(1950, 5, 17),
            postcode: Some(Postcode::parse("LW1 2AB").unwrap()),
            language: None,
        },
        needs: needs.to_vec(),
        requester: Some("Dr Example".into()),
        priority: Priority::Routine,
        authored_on: at,
        asc_case_id: None,
        content_hash: format!("hash-{number}"),
        service_request: serde_json::json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "871731000000106" }] },
            "subject": { "reference": "Patient/p1" },
            "authoredOn": at.to_rfc3339(),
        })
        .into(),
        patient: None,
        national_data_opt_out: false,
        submitted_by: None,
        sealed: None,
        occurred_at: at,
    }
}

fn money_and_loneliness() -> Vec<Need> {
    vec![Need::MoneyWorries, Need::Loneliness]
}

fn keys(messages: &[ReadMessage], of_type: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|message| message.header("ce_type") == Some(of_type))
        .filter_map(|message| message.key.clone())
        .collect()
}

/// `count` referrals for a need service of capacity 5 and an activity with room.
async fn capacity_holds(instances: usize, count: usize) {
    let rig = Rig::new(DIRECTORY).await;
    let mut routers = Vec::new();
    for _ in 0..instances {
        routers.push(rig.start_router().await);
    }
    let referrals: Vec<(EventId, ReferralEvent)> = (0..count as u32)
        .map(|number| {
            let received = referral(number, &money_and_loneliness(), monday());
            (
                EventId::derive(&["capacity", &received.referral_id.to_string()]),
                ReferralEvent::Received(Box::new(received)),
            )
        })
        .collect();
    for result in rig
        .producer
        .publish_batch(&rig.topics.events, "test", monday(), &referrals)
        .await
    {
        result.unwrap();
    }
    eventually(Duration::from_secs(90), "every referral routed", || async {
        rig.routed_count().await == count as i64
    })
    .await;
    rig.outbox_drained().await;
    let loads = rig.loads().await;
    assert_eq!(loads["money-advice"], 5, "{loads:?}");
    assert_eq!(loads["connectors"] as usize, count - 5, "{loads:?}");
    let money = keys(
        &rig.queue("money-advice", 5).await,
        linkwork_router::engine::PROVIDER_REQUEST_TYPE,
    );
    let connectors = keys(
        &rig.queue("connectors", count - 5).await,
        linkwork_router::engine::PROVIDER_REQUEST_TYPE,
    );
    assert_eq!(money.len(), 5, "the need service gets exactly its capacity");
    assert_eq!(
        connectors.len(),
        count - 5,
        "the rest go to the next eligible provider"
    );
    let all: HashSet<&String> = money.iter().chain(&connectors).collect();
    assert_eq!(all.len(), count, "each referral on exactly one queue");
    // Those that overflowed say why the need service was passed over.
    for decision in rig.decisions(count).await {
        let ReferralEvent::Routed(routed) = decision else {
            panic!("every referral is routable here")
        };
        if routed.provider_id.as_str() == "connectors" {
            let money = routed
                .candidates
                .iter()
                .find(|candidate| candidate.provider_id.as_str() == "money-advice")
                .unwrap();
            assert!(money.eligible);
            assert_eq!(money.excluded_because, ["at capacity (5 of 5 active)"]);
        } else {
            assert!(routed.rule.starts_with("needs first"), "{}", routed.rule);
        }
    }
    for router in routers {
        router.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_with_capacity_5_gets_5_of_8_and_the_rest_go_to_the_next_provider() {
    capacity_holds(1, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_router_instances_in_one_group_do_not_oversubscribe_a_provider() {
    capacity_holds(2, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_router_instances_racing_over_400_referrals_still_give_capacity_5_exactly_5() {
    capacity_holds(2, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_then_deadline_reroute_and_end_in_triage_when_nobody_is_left() {
    let rig = Rig::new(DIRECTORY).await;
    let (router, person) = rig.route_one(1, &money_and_loneliness()).await;
    let id = person.referral_id;
    assert_eq!(rig.route_of(id).await.1.as_deref(), Some("money-advice"));

    // The need service rejects: the activity is next.
    rig.provider_says(
        ReferralEvent::Rejected,
        id,
        "money-advice",
        monday() + chrono::Duration::hours(3),
    )
    .await;
    rig.wait_for_route(id, "requested", 2).await;
    assert_eq!(rig.route_of(id).await.1.as_deref(), Some("connectors"));
    assert_eq!(
        rig.loads().await["money-advice"],
        0,
        "capacity released on rejection"
    );

    // Two working days from the rejection (Monday 12:00): Wednesday 12:00. Not yet.
    rig.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 18, 11, 59, 0).unwrap());
    // A negative check: sweeps that run at this time must leave it alone.
    router.sweeps_pass(3).await;
    assert_eq!(
        rig.route_of(id).await.2,
        2,
        "nothing fires before the deadline"
    );
    rig.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 18, 12, 0, 0).unwrap());
    rig.wait_for_route(id, "unroutable", 2).await;
    assert_eq!(
        rig.loads().await["connectors"],
        0,
        "capacity released on escalation"
    );
    rig.outbox_drained().await;

    let decisions = rig.decisions(3).await;
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    let ReferralEvent::Unroutable(unroutable) = &decisions[2] else {
        panic!("the last decision sends it to triage: {decisions:?}")
    };
    let reasons: Vec<_> = unroutable
        .candidates
        .iter()
        .map(|candidate| {
            (
                candidate.provider_id.as_str(),
                candidate.excluded_because.clone(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "connectors",
                vec!["has already had this referral".to_owned()]
            ),
            (
                "money-advice",
                vec!["has already had this referral".to_owned()]
            ),
        ]
    );
    let triage = rig.read(&rig.topics.triage, 1).await;
    assert_eq!(triage.len(), 1);
    let bundle: Value = serde_json::from_slice(&triage[0].payload).unwrap();
    let task = &bundle["entry"][2]["resource"];
    assert_eq!(task["resourceType"], "Task");
    assert!(task["note"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("no provider is eligible"));
    // The activity's queue got the request and then its withdrawal, so the referral
    // is active on no queue.
    let queue = rig.queue("connectors", 2).await;
    let types: Vec<_> = queue
        .iter()
        .map(|message| message.header("ce_type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            linkwork_router::engine::PROVIDER_REQUEST_TYPE,
            linkwork_router::engine::PROVIDER_WITHDRAWAL_TYPE
        ]
    );
    let withdrawal: Value = serde_json::from_slice(&queue[1].payload).unwrap();
    let task = &withdrawal["entry"][0]["resource"];
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["id"], id.task_id(2).to_string());
    router.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_deadline_set_and_deadline_due_still_fires_it_once() {
    let rig = Rig::new(DIRECTORY).await;
    let (router, person) = rig.route_one(2, &[Need::Loneliness]).await;
    let id = person.referral_id;
    assert_eq!(rig.route_of(id).await.1.as_deref(), Some("connectors"));
    router.kill().await;

    // Down over the deadline (Wednesday 09:00), then back.
    rig.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 19, 9, 0, 0).unwrap());
    let router = rig.start_router().await;
    rig.wait_for_route(id, "unroutable", 1).await;
    // More sweeps and a second restart change nothing (negative checks: sweeps that
    // run now must find nothing due).
    router.sweeps_pass(3).await;
    router.kill().await;
    let router = rig.start_router().await;
    router.sweeps_pass(3).await;
    rig.outbox_drained().await;
    let decisions = rig.decisions(2).await;
    let kinds: Vec<_> = decisions.iter().map(DomainEvent::event_type).collect();
    assert_eq!(
        kinds,
        [
            "linkwork.referral.routed.v1",
            "linkwork.referral.unroutable.v1"
        ],
        "the deadline fired exactly once"
    );
    let withdrawals = keys(
        &rig.queue("connectors", 2).await,
        linkwork_router::engine::PROVIDER_WITHDRAWAL_TYPE,
    );
    assert_eq!(withdrawals, [id.to_string()]);
    router.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptance_that_reaches_the_log_before_the_escalation_wins() {
    let rig = Rig::new(DIRECTORY).await;
    let (router, person) = rig.route_one(3, &money_and_loneliness()).await;
    let id = person.referral_id;
    // Stop the relay's effect: kill the router, pass the deadline, and let the sweeper
    // escalate while the provider's acceptance is already on the log.
    router.kill().await;
    rig.provider_says(ReferralEvent::Accepted, id, "money-advice", monday())
        .await;
    rig.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 19, 9, 0, 0).unwrap());
    let mut sweeper = linkwork_router::DeadlineSweeper::new(
        rig.pool.clone(),
        Arc::new(RouterConfig {
            topics: rig.topics.clone(),
            clock: rig.clock.clone(),
            ..RouterConfig::default()
        }),
    );
    // The sweep skips rows another transaction holds (SKIP LOCKED): one of the killed
    // router's, reading its own ReferralRouted back, may hold this row until its
    // rollback reaches Postgres. Once that is gone the sweep escalates it, once. (10 s
    // was once not enough in CI on a loaded machine: the killed router's tasks outlive
    // `kill`, a known defect.)
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    let escalated = loop {
        let escalated = sweeper.sweep_once().await.unwrap();
        if escalated > 0 || tokio::time::Instant::now() >= give_up {
            break escalated;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(escalated, 1);
    assert_eq!(
        sweeper.sweep_once().await.unwrap(),
        0,
        "escalated only once"
    );
    assert_eq!(
        rig.route_of(id).await,
        ("requested".into(), Some("connectors".into()), 2)
    );
    // The consumer now reads the acceptance before its own re-routing: it stands.
    let router = rig.start_router().await;
    rig.wait_for_route(id, "accepted", 1).await;
    assert_eq!(rig.route_of(id).await.1.as_deref(), Some("money-advice"));
    let loads = rig.loads().await;
    assert_eq!(
        (loads["money-advice"], loads["connectors"]),
        (1, 0),
        "{loads:?}"
    );
    rig.outbox_drained().await;
    let connectors = rig.queue("connectors", 2).await;
    let types: Vec<_> = connectors
        .iter()
        .map(|message| message.header("ce_type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            linkwork_router::engine::PROVIDER_REQUEST_TYPE,
            linkwork_router::engine::PROVIDER_WITHDRAWAL_TYPE
        ],
        "the newer request is withdrawn"
    );
    router.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_of_5000_and_restarted_routes_every_referral_exactly_once() {
    const TOTAL: usize = 5000;
    let rig = Rig::new(DIRECTORY).await;
    let referrals: Vec<(EventId, ReferralEvent)> = (0..TOTAL as u32)
        .map(|number| {
            let needs = if number % 3 == 0 {
                vec![Need::Caring] // nobody handles caring: unroutable
            } else {
                money_and_loneliness()
            };
            let received = referral(10_000 + number, &needs, monday());
            (
                EventId::derive(&["kill", &received.referral_id.to_string()]),
                ReferralEvent::Received(Box::new(received)),
            )
        })
        .collect();
    for chunk in referrals.chunks(1000) {
        for result in rig
            .producer
            .publish_batch(&rig.topics.events, "test", monday(), chunk)
            .await
        {
            result.unwrap();
        }
    }
    let router = rig.start_router().await;
    eventually(
        Duration::from_secs(120),
        "part of the stream routed",
        || async { rig.routed_count().await >= 1000 },
    )
    .await;
    router.kill().await;
    let at_kill = rig.routed_count().await;
    assert!(
        at_kill < TOTAL as i64,
        "killed mid-stream ({at_kill} routed)"
    );

    let router = rig.start_router().await;
    eventually(Duration::from_secs(180), "all 5000 routed", || async {
        rig.routed_count().await == TOTAL as i64
    })
    .await;
    rig.outbox_drained().await;

    let mut decisions: HashMap<ReferralId, usize> = HashMap::new();
    for decision in rig.decisions(TOTAL).await {
        *decisions.entry(decision.referral_id()).or_default() += 1;
    }
    assert_eq!(decisions.len(), TOTAL, "every referral has a decision");
    let repeated: Vec<_> = decisions.iter().filter(|(_, count)| **count != 1).collect();
    assert!(repeated.is_empty(), "decided more than once: {repeated:?}");

    let mut queued = 0;
    for provider in ["money-advice", "connectors"] {
        let keys = keys(
            &rig.queue(provider, 1).await,
            linkwork_router::engine::PROVIDER_REQUEST_TYPE,
        );
        let distinct: HashSet<_> = keys.iter().collect();
        assert_eq!(
            distinct.len(),
            keys.len(),
            "{provider}'s queue holds a duplicate"
        );
        queued += keys.len();
    }
    let unroutable = TOTAL.div_ceil(3);
    assert_eq!(queued, TOTAL - unroutable);
    assert_eq!(
        rig.read(&rig.topics.triage, unroutable).await.len(),
        unroutable
    );
    let loads = rig.loads().await;
    assert_eq!(loads["money-advice"], 5);
    assert_eq!(
        loads["connectors"] as usize,
        TOTAL - unroutable - 5,
        "caseloads count each referral once"
    );
    router.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_change_mid_stream_is_used_from_the_next_decision_and_recorded() {
    let mut rig = Rig::new(DIRECTORY).await;
    let first_version: String = sqlx::query_scalar(
        "SELECT 'v' || version || '-' || left(content_hash, 12) FROM directory_versions",
    )
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    let router = rig.start_router().await;
    let before = referral(20, &[Need::Loneliness], monday());
    rig.receive(&before).await;
    rig.wait_for_route(before.referral_id, "requested", 1).await;

    // Connectors stop taking referrals; a new befriending service opens.
    let changed = DIRECTORY.replace(
        "    capacity: 10000\n",
        "    capacity: 10000\n    active: false\n",
    ) + r#"  - id: befrienders
    name: Befrienders
    kind: want
    areas: { postcode_districts: [LW1] }
    needs: [loneliness]
    capacity: 50
    accept_within_working_days: 5
"#;
    let second_version = rig.apply_directory(&changed).await;
    assert_ne!(first_version, second_version);
    let after = referral(21, &[Need::Loneliness], monday());
    rig.receive(&after).await;
    rig.wait_for_route(after.referral_id, "requested", 1).await;
    rig.outbox_drained().await;

    let decisions = rig.decisions(2).await;
    let routed: HashMap<ReferralId, (String, String)> = decisions
        .into_iter()
        .filter_map(|decision| match decision {
            ReferralEvent::Routed(routed) => Some((
                routed.referral_id,
                (routed.provider_id.to_string(), routed.directory_version),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        routed[&before.referral_id],
        ("connectors".to_owned(), first_version)
    );
    assert_eq!(
        routed[&after.referral_id],
        ("befrienders".to_owned(), second_version)
    );
    router.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_queue_message_is_a_bundle_of_service_request_patient_and_task() {
    let rig = Rig::new(DIRECTORY).await;
    let (router, person) = rig.route_one(30, &[Need::Loneliness]).await;
    let id = person.referral_id;
    rig.outbox_drained().await;
    let queue = rig.queue("connectors", 1).await;
    assert_eq!(queue.len(), 1);
    let message = &queue[0];
    assert_eq!(message.key.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(
        message.header("content-type"),
        Some("application/fhir+json")
    );
    let bundle: Value = serde_json::from_slice(&message.payload).unwrap();
    let typed = linkwork_fhir::parse::typed::<linkwork_fhir::fhir_model::r4b::resources::Bundle>(
        &bundle, "Bundle",
    );
    assert!(
        typed.is_ok(),
        "not a valid FHIR R4 Bundle: {:?}",
        typed.err()
    );
    assert_eq!(bundle["resourceType"], "Bundle");
    let resources: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["resource"])
        .collect();
    let types: Vec<&str> = resources
        .iter()
        .map(|resource| resource["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ServiceRequest", "Patient", "Task"]);
    let (service_request, patient, task) = (resources[0], resources[1], resources[2]);
    assert_eq!(service_request["id"], id.to_string());
    assert_eq!(
        service_request["subject"]["reference"],
        format!("urn:uuid:{}", id.patient_id())
    );
    assert_eq!(
        patient["identifier"][0]["value"],
        person.subject.nhs_number.unwrap().to_string()
    );
    assert_eq!(patient["address"][0]["postalCode"], "LW1 2AB");
    assert_eq!(task["status"], "requested");
    assert_eq!(task["intent"], "order");
    assert_eq!(task["id"], id.task_id(1).to_string());
    assert_eq!(task["owner"]["identifier"]["value"], "connectors");
    assert_eq!(task["focus"]["reference"], format!("urn:uuid:{id}"));
    // Two working days from Monday 09:00.
    assert_eq!(task["restriction"]["period"]["end"], "2026-11-18T09:00:00Z");
    router.kill().await;
}

//! The projector against the real broker and Postgres: a referral's whole life into
//! the read models, outcome Observations out (identified, and pseudonymised only with
//! consent), replay equivalence, and a kill mid-stream.
//!
//! Events are published straight onto the test's own event topic (`Names::isolated`),
//! so each test controls exactly what the log holds; the projector runs as `serve
//! projector` assembles it (`linkwork::topology`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use linkwork::topology::{projector_config, Services, TopologySettings};
use linkwork_bus::{Names, Producer};
use linkwork_domain::event::{
    ActivityAttended, ActivityKind, ConsentChange, ConsentScope, ContactMode, ContactRecorded,
    OutcomeRecorded, ProviderStatusChange, ReferralReceived, ReferralRouted,
};
use linkwork_domain::{
    Actor, EventId, Need, NhsNumber, OutcomeMeasure, ProviderId, ReferralEvent, Timepoint,
};
use linkwork_projector::{ProjectorConfig, PseudonymKey};
use linkwork_store::sqlx::{self, PgPool};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{eventually, stack, unique, Process, ReadMessage, Stack};
use crate::router::referral;

const TABLES: [&str; 9] = [
    "referrals",
    "history",
    "superseded",
    "tasks",
    "caseload",
    "observations",
    "outcome_pairs",
    "contacts",
    "activities",
];

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) struct Rig {
    pub(crate) stack: Stack,
    pub(crate) pool: PgPool,
    pub(crate) names: Names,
    /// The projector's settings as `serve projector` derives them from the names.
    pub(crate) config: ProjectorConfig,
    pub(crate) producer: Producer,
}

fn key() -> PseudonymKey {
    PseudonymKey::new(&[42u8; 32]).unwrap()
}

impl Rig {
    /// A database and topics of this test's own; nothing runs yet.
    pub(crate) async fn new() -> Rig {
        let stack = stack();
        let pool = stack.database().await;
        linkwork_projector::migrate(&pool).await.unwrap();
        let names = Names::isolated(&unique("pj"));
        stack
            .apply_declaration(&names.declaration(&Stack::small_declaration()), &[])
            .await;
        let config = projector_config(&names, key());
        let producer = Producer::new(&stack.kafka).unwrap();
        Rig {
            stack,
            pool,
            names,
            config,
            producer,
        }
    }

    /// Starts a projector process (the projector and its outbox relay, as `serve
    /// projector` assembles them).
    pub(crate) async fn start_projector(&self) -> Process {
        self.start(Services {
            projector: true,
            ..Services::default()
        })
        .await
    }

    /// Starts a process of `services` on this rig's names, with its pseudonym key.
    pub(crate) async fn start(&self, services: Services) -> Process {
        self.start_with(services, |_| {}).await
    }

    /// As [`Rig::start`], with what `configure` changes in the settings.
    pub(crate) async fn start_with(
        &self,
        services: Services,
        configure: impl FnOnce(&mut TopologySettings),
    ) -> Process {
        Process::start(&self.stack, &self.pool, &self.names, services, |settings| {
            settings.pseudonym_key = Some(key());
            configure(settings);
        })
        .await
    }

    pub(crate) async fn publish_all(&self, events: &[(EventId, ReferralEvent)]) {
        for (id, event) in events {
            self.producer
                .publish(
                    &self.config.topics.events,
                    *id,
                    "test",
                    event.occurred_at(),
                    event,
                )
                .await
                .unwrap();
        }
    }

    /// Waits until the projector has applied or superseded `count` events.
    pub(crate) async fn projected(&self, count: i64) {
        eventually(Duration::from_secs(60), &format!("{count} events projected"), || async {
            let seen: Option<i64> = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM projection.history) + (SELECT count(*) FROM projection.superseded)",
            )
            .fetch_one(&self.pool)
            .await
            .ok();
            seen == Some(count)
        })
        .await;
    }

    /// Waits until the projector's stored offsets add up to `records`: it has read the
    /// log that far, copies included.
    pub(crate) async fn read_to(&self, records: i64) {
        eventually(
            Duration::from_secs(60),
            &format!("{records} records read"),
            || async {
                let read: Option<i64> = sqlx::query_scalar(
                    "SELECT sum(next_offset)::BIGINT FROM consumer_offsets WHERE consumer = $1",
                )
                .bind(&self.config.consumer)
                .fetch_one(&self.pool)
                .await
                .ok()
                .flatten();
                read == Some(records)
            },
        )
        .await;
    }

    /// The live schema's indexes, constraints and table options, as text.
    async fn shape(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'projection'
             UNION ALL
             SELECT conrelid::regclass::TEXT || ' ' || conname || ' ' || pg_get_constraintdef(oid)
             FROM pg_constraint WHERE connamespace = 'projection'::regnamespace
             UNION ALL
             SELECT relname || ' ' || coalesce(array_to_string(reloptions, ','), '')
             FROM pg_class WHERE relnamespace = 'projection'::regnamespace
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Every read model, rows in a stable order, as JSON text.
    async fn dump(&self) -> BTreeMap<&'static str, String> {
        let mut dump = BTreeMap::new();
        for table in TABLES {
            let rows: String = sqlx::query_scalar(&format!(
                "SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM projection.{table} t"
            ))
            .fetch_one(&self.pool)
            .await
            .unwrap();
            dump.insert(table, rows);
        }
        dump
    }

    /// Waits until the relay has published every row of the outbox.
    pub(crate) async fn outbox_drained(&self) {
        eventually(Duration::from_secs(60), "the outbox to drain", || async {
            let pending: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&self.pool)
                .await
                .ok();
            pending == Some(0)
        })
        .await;
    }

    /// Everything on `topic` once the projector's output is all out of the outbox (at
    /// least `expected` messages).
    async fn read(&self, topic: &str, expected: usize) -> Vec<ReadMessage> {
        self.outbox_drained().await;
        self.stack
            .read_topic(topic, expected, Duration::from_secs(60))
            .await
    }
}

pub(crate) fn change(
    referral: &ReferralReceived,
    provider: &str,
    at: DateTime<Utc>,
) -> ProviderStatusChange {
    ProviderStatusChange {
        referral_id: referral.referral_id,
        provider_id: ProviderId::parse(provider).unwrap(),
        reason: None,
        occurred_at: at,
    }
}

pub(crate) fn outcome(
    referral: &ReferralReceived,
    provider: &str,
    timepoint: Timepoint,
    measure: OutcomeMeasure,
    at: DateTime<Utc>,
) -> ReferralEvent {
    ReferralEvent::OutcomeRecorded(OutcomeRecorded {
        referral_id: referral.referral_id,
        provider_id: ProviderId::parse(provider).unwrap(),
        observation_id: Uuid::new_v5(
            referral.referral_id.as_uuid(),
            format!("{timepoint:?}{measure:?}").as_bytes(),
        ),
        timepoint,
        measure,
        effective_at: at,
        occurred_at: at,
    })
}

/// A referral's whole life with one provider: routed, accepted, consent (or not),
/// baseline UCLA and SWEMWBS, started, a contact, an activity, follow-up scores,
/// completed. Event ids derive from the referral and the step.
fn life(
    referral: &ReferralReceived,
    provider: &str,
    consent: bool,
) -> Vec<(EventId, ReferralEvent)> {
    let t = referral.authored_on;
    let id = referral.referral_id;
    let mut events = vec![
        ReferralEvent::Received(Box::new(referral.clone())),
        ReferralEvent::Routed(ReferralRouted {
            referral_id: id,
            provider_id: ProviderId::parse(provider).unwrap(),
            attempt: 1,
            directory_version: "v1-test".into(),
            rule: "least loaded".into(),
            candidates: Vec::new(),
            accept_by: t + Span::days(2),
            occurred_at: t + Span::minutes(1),
        }),
        ReferralEvent::Accepted(change(referral, provider, t + Span::hours(3))),
    ];
    if consent {
        events.push(ReferralEvent::ConsentRecorded(ConsentChange {
            referral_id: id,
            scope: ConsentScope::Evaluation,
            recorded_by: Actor::Provider(ProviderId::parse(provider).unwrap()),
            occurred_at: t + Span::days(1),
        }));
    }
    events.extend([
        outcome(
            referral,
            provider,
            Timepoint::Baseline,
            OutcomeMeasure::single(linkwork_domain::Instrument::Ucla3, 8).unwrap(),
            t + Span::days(1),
        ),
        outcome(
            referral,
            provider,
            Timepoint::Baseline,
            OutcomeMeasure::single(linkwork_domain::Instrument::Swemwbs, 17).unwrap(),
            t + Span::days(1),
        ),
        ReferralEvent::Started(change(referral, provider, t + Span::days(1))),
        ReferralEvent::ContactRecorded(ContactRecorded {
            referral_id: id,
            provider_id: ProviderId::parse(provider).unwrap(),
            contact_at: t + Span::hours(20),
            mode: ContactMode::Phone,
            occurred_at: t + Span::days(1),
        }),
        ReferralEvent::ActivityAttended(ActivityAttended {
            referral_id: id,
            provider_id: ProviderId::parse(provider).unwrap(),
            activity_id: Some("walking-group".into()),
            activity_name: "Millbrook walking group".into(),
            kind: ActivityKind::Group,
            attended_on: (t + Span::days(10)).date_naive(),
            occurred_at: t + Span::days(10),
        }),
        outcome(
            referral,
            provider,
            Timepoint::FollowUp,
            OutcomeMeasure::single(linkwork_domain::Instrument::Ucla3, 5).unwrap(),
            t + Span::days(84),
        ),
        outcome(
            referral,
            provider,
            Timepoint::FollowUp,
            OutcomeMeasure::single(linkwork_domain::Instrument::Swemwbs, 24).unwrap(),
            t + Span::days(84),
        ),
        ReferralEvent::Completed(change(referral, provider, t + Span::days(85))),
    ]);
    events
        .into_iter()
        .enumerate()
        .map(|(step, event)| {
            (
                EventId::derive(&[&id.to_string(), &step.to_string()]),
                event,
            )
        })
        .collect()
}

/// Every standalone 10-digit number in `text` (spaced as 3-3-4 or not) that passes
/// the NHS number check. Digits inside longer tokens (hex pseudonyms, UUIDs) are not
/// NHS numbers.
fn valid_nhs_numbers(text: &str) -> Vec<String> {
    let squeezed = text.replace(' ', "");
    let mut found = Vec::new();
    for haystack in [text, squeezed.as_str()] {
        for token in haystack.split(|c: char| !c.is_ascii_alphanumeric()) {
            if token.len() == 10
                && token.chars().all(|c| c.is_ascii_digit())
                && NhsNumber::parse(token).is_ok()
            {
                found.push(token.to_owned());
            }
        }
    }
    found
}

fn json(message: &ReadMessage) -> Value {
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn a_referral_life_projects_and_its_outcomes_go_out_identified_and_only_with_consent_pseudonymised(
) {
    let rig = Rig::new().await;
    let consenting = referral(1, &[Need::Loneliness], start());
    let declining = referral(2, &[Need::Loneliness], start() + Span::minutes(5));
    let mut events = life(&consenting, "connectors", true);
    events.extend(life(&declining, "connectors", false));
    // Another provider claiming the first referral: on the log, superseded.
    events.push((
        EventId::derive(&["intruder"]),
        ReferralEvent::Failed(change(&consenting, "elsewhere", start() + Span::days(90))),
    ));
    let total = events.len() as i64;
    rig.publish_all(&events).await;
    let _projector = rig.start_projector().await;
    rig.projected(total).await;

    let (status, version, contacts, activities): (String, i64, i32, i32) = sqlx::query_as(
        "SELECT status, version, contacts, activities FROM projection.referrals WHERE referral_id = $1",
    )
    .bind(consenting.referral_id.as_uuid())
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), contacts, activities), ("completed", 1, 1));
    let applied = life(&consenting, "connectors", true).len() as i64;
    assert_eq!(version, applied, "one version per applied event");
    let superseded: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, reason FROM projection.superseded")
            .fetch_all(&rig.pool)
            .await
            .unwrap();
    assert_eq!(superseded.len(), 1);
    assert!(superseded[0].1.contains("does not hold"), "{superseded:?}");

    let task: (String, i32, String) = sqlx::query_as(
        "SELECT status, attempt, provider_id FROM projection.tasks WHERE task_id = $1",
    )
    .bind(consenting.referral_id.task_id(1))
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    assert_eq!(task, ("completed".into(), 1, "connectors".into()));
    let caseload: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider_id, status, referrals FROM projection.caseload WHERE referrals <> 0",
    )
    .fetch_all(&rig.pool)
    .await
    .unwrap();
    assert_eq!(caseload, vec![("connectors".into(), "completed".into(), 2)]);
    let pairs: Vec<(String, Option<i16>, Option<i16>)> = sqlx::query_as(
        "SELECT instrument, baseline_total, follow_up_total FROM projection.outcome_pairs
         WHERE referral_id = $1 ORDER BY instrument",
    )
    .bind(consenting.referral_id.as_uuid())
    .fetch_all(&rig.pool)
    .await
    .unwrap();
    assert_eq!(
        pairs,
        vec![
            ("swemwbs".into(), Some(17), Some(24)),
            ("ucla-3".into(), Some(8), Some(5)),
        ]
    );

    // Identified: 4 Observations per referral and a summary per closed referral.
    // On the referrer's own topic (both are gp:A81001's).
    let referrer = linkwork_domain::Source::parse("gp:A81001").unwrap();
    let identified = rig.read(&rig.config.topics.referrer(&referrer), 10).await;
    let observations: Vec<Value> = identified
        .iter()
        .filter(|message| message.header("ce_type") == Some("linkwork.outcomes.observation.v1"))
        .map(json)
        .collect();
    assert_eq!(observations.len(), 8);
    let swemwbs = observations
        .iter()
        .find(|o| o["code"]["coding"][1]["code"] == "718466001" && o["valueInteger"] == 24)
        .expect("a SWEMWBS follow-up with its SNOMED CT code");
    assert_eq!(swemwbs["status"], "final");
    assert_eq!(swemwbs["category"][0]["coding"][0]["code"], "survey");
    assert_eq!(
        swemwbs["subject"]["identifier"]["system"],
        "https://fhir.nhs.uk/Id/nhs-number"
    );
    assert_eq!(
        swemwbs["basedOn"][0]["reference"],
        format!(
            "ServiceRequest/{}",
            swemwbs["basedOn"][0]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("ServiceRequest/")
        )
    );
    let summaries: Vec<Value> = identified
        .iter()
        .filter(|message| {
            message.header("ce_type") == Some("linkwork.outcomes.referral-summary.v1")
        })
        .map(json)
        .collect();
    assert_eq!(summaries.len(), 2, "one summary per completed referral");
    let summary_task = &summaries[0]["entry"][0]["resource"];
    assert_eq!(summary_task["status"], "completed");
    let outputs = summary_task["output"].to_string();
    assert!(
        outputs.contains("Millbrook walking group on 2026-09-"),
        "{outputs}"
    );
    assert!(outputs.contains("first contact"), "{outputs}");

    // Pseudonymised: only the consenting person's four, with nothing identifying.
    let pseudonymised = rig.read(&rig.config.topics.pseudonymised, 4).await;
    assert_eq!(pseudonymised.len(), 4);
    let consenting_nhs = consenting.subject.nhs_number.as_ref().unwrap().to_string();
    let declining_nhs = declining.subject.nhs_number.as_ref().unwrap().to_string();
    for message in &pseudonymised {
        let text = String::from_utf8(message.payload.clone()).unwrap();
        let everything = format!("{text} {:?} {:?}", message.key, message.headers);
        assert_eq!(
            valid_nhs_numbers(&everything),
            Vec::<String>::new(),
            "{everything}"
        );
        for identifying in [
            "Synthetic",
            "Testy",
            "LW1 2AB",
            "LW12AB",
            "1950-05-17",
            "birthDate",
            "address",
        ] {
            assert!(
                !everything.contains(identifying),
                "{identifying} in {everything}"
            );
        }
        assert!(!everything.contains(&consenting.referral_id.to_string()));
        let observation: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            observation["subject"]["identifier"]["value"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        let extensions = observation["extension"].to_string();
        assert!(
            extensions.contains("\"LW1\"") && extensions.contains("75-84"),
            "{extensions}"
        );
        // The month of the score, not its day or time.
        let effective = observation["effectiveDateTime"].as_str().unwrap();
        assert_eq!(effective.len(), 7, "{effective}");
        assert!(observation.get("issued").is_none(), "{observation}");
        let time = message.header("ce_time").unwrap();
        let local = chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .with_timezone(&chrono_tz::Europe::London);
        assert_eq!(
            local.format("%d %H:%M:%S").to_string(),
            "01 00:00:00",
            "the month's start in the UK: {time}"
        );
    }
    let everything: String = pseudonymised
        .iter()
        .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
        .collect();
    for number in [&consenting_nhs, &declining_nhs] {
        assert!(!everything.contains(number.as_str()));
    }
    let keys: std::collections::HashSet<_> = pseudonymised.iter().map(|m| m.key.clone()).collect();
    assert_eq!(keys.len(), 1, "one person, one pseudonym");
}

#[tokio::test]
async fn replay_rebuilds_read_models_equal_to_the_live_projection() {
    let rig = Rig::new().await;
    let mut events = Vec::new();
    for number in 0..40 {
        let person = referral(
            100 + number,
            &[Need::Loneliness],
            start() + Span::minutes(number.into()),
        );
        events.extend(life(
            &person,
            if number % 2 == 0 {
                "connectors"
            } else {
                "reconnect"
            },
            number % 3 == 0,
        ));
    }
    let total = events.len() as i64;
    rig.publish_all(&events).await;
    let projector = rig.start_projector().await;
    rig.projected(total).await;
    let live = rig.dump().await;
    let live_shape = rig.shape().await;
    projector.kill().await;
    assert!(live["history"].len() > 1000);

    let report =
        linkwork_projector::replay::replay(&rig.pool, &rig.stack.kafka, &rig.config, false)
            .await
            .unwrap();
    assert_eq!(report.referrals, 40);
    assert_eq!(report.events as i64, total);
    let rebuilt = rig.dump().await;
    for table in TABLES {
        assert_eq!(live[table], rebuilt[table], "{table} differs after replay");
    }
    // Loaded without its indexes and unique constraints, it has them all again.
    assert_eq!(live_shape, rig.shape().await);

    // The live projector carries on from where the replay stopped.
    let _projector = rig.start_projector().await;
    let late = referral(999, &[Need::Loneliness], start());
    let more = life(&late, "connectors", false);
    rig.publish_all(&more).await;
    rig.projected(total + more.len() as i64).await;
}

#[tokio::test]
async fn copies_on_the_log_apply_once_live_and_in_a_replay_whose_batches_split_lives() {
    let rig = Rig::new().await;
    let mut events = Vec::new();
    for number in 0..12 {
        // Times finer than Postgres keeps: a row written whole and a row updated in a
        // later batch must round them alike.
        let person = referral(
            3000 + number,
            &[Need::Loneliness],
            start() + Span::minutes(number.into()) + Span::nanoseconds(740_304_614),
        );
        events.extend(life(&person, "connectors", number % 2 == 0));
    }
    // A provider's claim on a referral it does not hold: superseded, and copied too.
    let held = referral(
        3000,
        &[Need::Loneliness],
        start() + Span::nanoseconds(740_304_614),
    );
    events.push((
        EventId::derive(&["intruder", "copies"]),
        ReferralEvent::Failed(change(&held, "elsewhere", start() + Span::days(90))),
    ));
    let distinct = events.len() as i64;
    // Copies of every third event (a producer retry, a relay restarted between publish
    // and mark), some right behind the original and all again at the end of the log.
    let mut logged = Vec::new();
    for (index, event) in events.iter().enumerate() {
        logged.push(event.clone());
        if index % 3 == 0 {
            logged.push(event.clone());
        }
    }
    logged.extend(events.iter().step_by(3).cloned());
    rig.publish_all(&logged).await;
    let projector = rig.start_projector().await;
    rig.read_to(logged.len() as i64).await;
    rig.projected(distinct).await;
    let live = rig.dump().await;
    projector.kill().await;

    // Batches of 7 split lives (and copies from their originals) across transactions.
    let report = linkwork_projector::replay::replay_in_batches(
        &rig.pool,
        &rig.stack.kafka,
        &rig.config,
        false,
        7,
    )
    .await
    .unwrap();
    assert_eq!(report.events as usize, logged.len());
    assert_eq!(report.referrals, 12);
    let rebuilt = rig.dump().await;
    for table in TABLES {
        assert_eq!(live[table], rebuilt[table], "{table} differs after replay");
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM projection.history) + (SELECT count(*) FROM projection.superseded)",
    )
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, distinct,
        "each event recorded once, however often it was logged"
    );

    // The live projector goes on after the rebuild and still drops copies of what the
    // rebuild applied.
    let _projector = rig.start_projector().await;
    let late = referral(3999, &[Need::Loneliness], start());
    let more = life(&late, "connectors", false);
    let mut again: Vec<_> = events.iter().take(5).cloned().collect();
    again.extend(more.iter().cloned());
    rig.publish_all(&again).await;
    rig.read_to((logged.len() + again.len()) as i64).await;
    rig.projected(distinct + more.len() as i64).await;
    let superseded: i64 = sqlx::query_scalar("SELECT count(*) FROM projection.superseded")
        .fetch_one(&rig.pool)
        .await
        .unwrap();
    assert_eq!(
        superseded, 1,
        "copies are dropped, not recorded as superseded"
    );
}

#[tokio::test]
async fn replay_builds_the_read_models_of_a_database_that_never_had_them() {
    // A database lost and rebuilt from the log alone: no projector has ever run on it.
    let rig = Rig::new().await;
    let mut events = Vec::new();
    for number in 0..10 {
        let person = referral(
            2000 + number,
            &[Need::Loneliness],
            start() + Span::minutes(number.into()),
        );
        events.extend(life(&person, "connectors", false));
    }
    rig.publish_all(&events).await;
    let report =
        linkwork_projector::replay::replay(&rig.pool, &rig.stack.kafka, &rig.config, false)
            .await
            .expect("replay builds what was never there");
    assert_eq!(report.referrals, 10);
    assert_eq!(report.events as usize, events.len());
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM projection.history")
        .fetch_one(&rig.pool)
        .await
        .unwrap();
    assert_eq!(history as usize, events.len());
    // And the live projector takes over from where the replay stopped.
    let _projector = rig.start_projector().await;
    let late = referral(2999, &[Need::Loneliness], start());
    let more = life(&late, "connectors", false);
    rig.publish_all(&more).await;
    rig.projected((events.len() + more.len()) as i64).await;
}

#[tokio::test]
async fn killing_the_projector_mid_stream_leaves_the_read_models_as_without_the_kill() {
    let rig = Rig::new().await;
    let mut events = Vec::new();
    for number in 0..300 {
        let person = referral(
            1000 + number,
            &[Need::Loneliness],
            start() + Span::minutes(number.into()),
        );
        events.extend(life(
            &person,
            ["connectors", "reconnect", "talking"][number as usize % 3],
            number % 4 == 0,
        ));
    }
    let total = events.len() as i64;
    rig.publish_all(&events).await;
    let projector = rig.start_projector().await;
    eventually(
        Duration::from_secs(60),
        "the projector to be part way",
        || async {
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM projection.history")
                .fetch_one(&rig.pool)
                .await
                .unwrap_or(0);
            seen > 200
        },
    )
    .await;
    projector.kill().await;
    let at_kill: i64 = sqlx::query_scalar("SELECT count(*) FROM projection.history")
        .fetch_one(&rig.pool)
        .await
        .unwrap();
    assert!(
        at_kill < total,
        "killed before the end ({at_kill} of {total})"
    );

    let _restarted = rig.start_projector().await;
    rig.projected(total).await;
    let after_kill = rig.dump().await;
    linkwork_projector::replay::replay(&rig.pool, &rig.stack.kafka, &rig.config, false)
        .await
        .unwrap();
    let without_kill = rig.dump().await;
    for table in TABLES {
        assert_eq!(
            after_kill[table], without_kill[table],
            "{table} differs after the kill"
        );
    }
    // Each Observation went out once, however the batches fell around the kill.
    rig.outbox_drained().await;
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_published WHERE ce_type = 'linkwork.outcomes.observation.v1'",
    )
    .fetch_one(&rig.pool)
    .await
    .unwrap();
    assert_eq!(published, 300 * 4);
}

#[tokio::test]
async fn withdrawn_consent_retracts_what_data_teams_got_and_a_national_opt_out_keeps_a_person_out()
{
    let rig = Rig::new().await;
    let withdraw_at = start() + Span::days(90);
    // Consented, then withdrew once all four scores had gone out.
    let withdrawing = referral(1, &[Need::Loneliness], start());
    let mut events = life(&withdrawing, "connectors", true);
    events.push((
        EventId::derive(&["withdrawn"]),
        ReferralEvent::ConsentWithdrawn(ConsentChange {
            referral_id: withdrawing.referral_id,
            scope: ConsentScope::Evaluation,
            recorded_by: Actor::Source(withdrawing.source.clone()),
            occurred_at: withdraw_at,
        }),
    ));
    // Opted out nationally, no consent: nothing shared under the lawful basis.
    let mut opted_out = referral(2, &[Need::Loneliness], start() + Span::minutes(5));
    opted_out.national_data_opt_out = true;
    events.extend(life(&opted_out, "connectors", false));
    // Opted out, but consented explicitly: shared.
    let mut consenting = referral(3, &[Need::Loneliness], start() + Span::minutes(10));
    consenting.national_data_opt_out = true;
    events.extend(life(&consenting, "connectors", true));
    // Neither: shared under the lawful basis.
    let plain = referral(4, &[Need::Loneliness], start() + Span::minutes(15));
    events.extend(life(&plain, "connectors", false));
    let total = events.len() as i64;
    rig.publish_all(&events).await;
    let _projector = rig
        .start_with(
            Services {
                projector: true,
                ..Services::default()
            },
            |settings| {
                settings.evaluation_lawful_basis =
                    Some("UK GDPR 6(1)(e) and 9(2)(h); service evaluation".into())
            },
        )
        .await;
    rig.projected(total).await;

    // Four Observations for each of 1, 3 and 4, then four retractions for 1.
    let messages = rig.read(&rig.config.topics.pseudonymised, 16).await;
    assert_eq!(messages.len(), 16);
    let pseudonym = |referral: &ReferralReceived| {
        rig.config.pseudonym_key.person(
            referral
                .subject
                .nhs_number
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            referral.referral_id.as_uuid(),
        )
    };
    let of = |referral: &ReferralReceived, kind: &str| -> Vec<Value> {
        let key = pseudonym(referral);
        messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(key.as_str()) && m.header("ce_type") == Some(kind))
            .map(json)
            .collect()
    };
    const SHARED: &str = "linkwork.outcomes.observation-pseudonymised.v1";
    const RETRACTED: &str = "linkwork.outcomes.observation-retracted.v1";
    assert!(
        of(&opted_out, SHARED).is_empty(),
        "an opted-out person's outcomes are not shared"
    );
    assert_eq!(
        of(&consenting, SHARED).len(),
        4,
        "explicit consent overrides the opt-out"
    );
    assert_eq!(of(&plain, SHARED).len(), 4);
    assert!(of(&consenting, RETRACTED).is_empty() && of(&plain, RETRACTED).is_empty());
    let shared = of(&withdrawing, SHARED);
    let retracted = of(&withdrawing, RETRACTED);
    assert_eq!(shared.len(), 4);
    let mut shared_ids: Vec<&str> = shared.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let mut retracted_ids: Vec<&str> = retracted
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    shared_ids.sort_unstable();
    retracted_ids.sort_unstable();
    assert_eq!(
        retracted_ids, shared_ids,
        "every record sent is retracted, by its id"
    );
    for retraction in &retracted {
        assert_eq!(retraction["status"], "entered-in-error");
        assert_eq!(retraction["meta"]["tag"][0]["code"], "consent-withdrawn");
        assert!(retraction.get("valueInteger").is_none(), "{retraction}");
        assert!(retraction.get("extension").is_none(), "{retraction}");
    }
    // The read models keep the opt-out.
    let flagged: Vec<bool> = sqlx::query_scalar(
        "SELECT national_data_opt_out FROM projection.referrals ORDER BY authored_on",
    )
    .fetch_all(&rig.pool)
    .await
    .unwrap();
    assert_eq!(flagged, [false, true, true, false]);
}

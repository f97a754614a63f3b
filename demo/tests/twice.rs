//! `linkwork-demo` run twice against one broker's log and one database, as `make demo`
//! runs it (the demo creates its topics itself), with the broker stopped and started again between the runs: the second run
//! goes on with the borough's story, and nothing is lost or counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use linkwork_testkit::broker::OwnBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

mod common;

use common::{count, figure_after, free_port, fresh_database, run};

const PEOPLE: i64 = 60;

/// The demo as `make demo` runs it (small and quick), against `brokers` and `url`.
fn demo(brokers: &str, url: &str) -> String {
    run(common::demo_on(brokers)
        .args([
            "--no-wait",
            "--people",
            &PEOPLE.to_string(),
            "--days",
            "60",
            "--day-millis",
            "60",
        ])
        .env("LINKWORK_DATABASE_URL", url)
        .env("LINKWORK_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LINKWORK_ADMIN_ADDR", "127.0.0.1:0")
        // Kept between runs, as scripts/stack keeps them in .local/demo.secrets.
        .env(
            "LINKWORK_AUTH_DEV_SECRET",
            "demo-tests-development-secret-0123456789abcdef",
        )
        .env(
            "LINKWORK_PSEUDONYM_KEY",
            "demo-tests-pseudonym-key-0123456789abcdef",
        )
        .env(
            "LINKWORK_VAULT_KEY",
            "demo-tests-vault-key-0123456789abcdef0123456",
        ))
}

/// Each partition of `referral.events`: where it starts and ends. A broker that has
/// just started leads its partitions one after another, so this waits (a minute at
/// most) until it answers for all of them.
fn log_ends(brokers: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a client");
    let topic = "referral.events";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ends: Result<BTreeMap<i32, (i64, i64)>, _> = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .and_then(|metadata| {
                metadata.topics()[0]
                    .partitions()
                    .iter()
                    .map(|partition| {
                        consumer
                            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                            .map(|ends| (partition.id(), ends))
                    })
                    .collect()
            });
        match ends {
            Ok(ends) if !ends.is_empty() => return ends,
            Ok(_) => {}
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "the ends of {topic}: {error}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How many times each referral's receipt (`linkwork.referral.received.v1`) is on
/// `referral.events`, by referral id (the message key).
fn receipts_on_the_log(brokers: &str) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("demo-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let topic = "referral.events";
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for (partition, (low, high)) in log_ends(brokers) {
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("a partition");
        }
    }
    consumer.assign(&assignment).expect("assigned");
    let mut receipts = BTreeMap::new();
    let mut done = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.len() < ends.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading referral.events took over a minute"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("a message");
        let received = message.headers().is_some_and(|headers| {
            headers.iter().any(|header| {
                header.key == "ce_type" && header.value == Some(b"linkwork.referral.received.v1")
            })
        });
        if received {
            let key = String::from_utf8_lossy(message.key().expect("a key")).into_owned();
            *receipts.entry(key).or_default() += 1;
        }
        if message.offset() + 1 >= ends[&message.partition()] {
            done.insert(message.partition());
        }
    }
    receipts
}

#[test]
fn the_demo_run_twice_with_the_broker_restarted_between_continues_the_same_log_and_read_models() {
    let broker = OwnBroker::start();
    let brokers = broker.bootstrap();
    let url = fresh_database();
    // The first run tells the story from the start.
    let first = demo(&brokers, &url);
    assert!(!first.contains("continuing:"), "{first}");
    let received_first = figure_after(&first, "referrals received:");
    assert_eq!(received_first, PEOPLE, "{first}");
    let completed_first = figure_after(&first, "completed:");
    assert!(completed_first > 0, "{first}");
    let history_first = count(&url, "SELECT count(*) FROM projection.history");
    let observations_first = count(&url, "SELECT count(*) FROM projection.observations");
    let receipts_first = receipts_on_the_log(&brokers);
    assert_eq!(receipts_first.len() as i64, received_first);
    assert!(receipts_first.values().all(|copies| *copies == 1));

    // The broker stops as an operator stops it and starts again on the same log.
    let ends_before = log_ends(&brokers);
    broker.stop();
    broker.restart();
    let ends_after = log_ends(&brokers);
    eprintln!("referral.events before the stop {ends_before:?}, after the restart {ends_after:?}");
    assert_eq!(ends_after, ends_before, "the log after the restart");
    assert_eq!(
        receipts_on_the_log(&brokers),
        receipts_first,
        "the log after the restart"
    );

    // The second run goes on with new people where the first stopped.
    let second = demo(&brokers, &url);
    let continuing = second
        .lines()
        .find(|line| line.trim_start().starts_with("continuing:"))
        .unwrap_or_else(|| panic!("a continuing line in\n{second}"));
    assert!(
        continuing.contains(&format!(
            "continuing: {received_first} referrals already on the log from earlier runs; run 2 "
        )),
        "{continuing}"
    );
    let goes_on_from = continuing
        .split("goes on from ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a date in {continuing:?}"));
    assert_eq!(figure_after(&second, "refused at intake:"), 0, "{second}");
    let received_second = figure_after(&second, "referrals received:");
    assert_eq!(received_second, received_first + PEOPLE, "{second}");
    assert!(
        figure_after(&second, "completed:") > completed_first,
        "{second}"
    );

    // Every referral's receipt is on the log once: the first run's (none lost) and
    // the second's (none a resubmission of the first's).
    let receipts_second = receipts_on_the_log(&brokers);
    assert!(receipts_second.values().all(|copies| *copies == 1));
    assert!(receipts_first
        .keys()
        .all(|referral| receipts_second.contains_key(referral)));
    assert_eq!(receipts_second.len() as i64, received_second);

    // The read models hold both runs, each referral and each person once.
    assert_eq!(
        count(&url, "SELECT count(*) FROM projection.referrals"),
        received_second
    );
    let first_ids = receipts_first
        .keys()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM projection.referrals WHERE referral_id IN ({first_ids})"
            )
        ),
        received_first
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT nhs_number) FROM projection.referrals"
        ),
        received_second,
        "no person of the first run is referred again"
    );
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM projection.referrals WHERE authored_on >= '{goes_on_from}'"
            )
        ),
        PEOPLE,
        "the second run's referrals, written from {goes_on_from} on"
    );
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM projection.history WHERE occurred_at >= '{goes_on_from}' \
                 AND referral_id IN ({first_ids}) AND event_type = 'linkwork.referral.received.v1'"
            )
        ),
        0,
        "nothing of the first run received again"
    );
    assert!(count(&url, "SELECT count(*) FROM projection.history") > history_first);
    assert!(count(&url, "SELECT count(*) FROM projection.observations") > observations_first);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM demo_runs WHERE finished_at IS NOT NULL"
        ),
        2
    );

    // The summary's period runs from the baseline to the second run's end.
    let period_end = |printed: &str| -> String {
        printed
            .lines()
            .find(|line| line.contains("/dashboard?"))
            .and_then(|line| line.rsplit('=').next())
            .map(|end| end.trim().to_owned())
            .unwrap_or_else(|| panic!("the dashboard URL in\n{printed}"))
    };
    assert!(period_end(&second) > period_end(&first));
    assert!(period_end(&second).as_str() > goes_on_from);
}

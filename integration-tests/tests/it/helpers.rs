//! The local stack for tests: a fresh database and fresh topics per test.

use std::time::{Duration, Instant};

use linkwork_bus::headers::HeaderList;
use linkwork_bus::KafkaSettings;
use linkwork_domain::{AscCaseId, CallLogEvent, CaseOpened};
use linkwork_store::sqlx::{self, Connection, PgConnection, PgPool};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// Broker and database of the local stack (`make broker`, the machine's Postgres).
pub struct Stack {
    pub kafka: KafkaSettings,
    admin_database_url: String,
}

pub fn stack() -> Stack {
    init_test_logging();
    let brokers =
        std::env::var("LINKWORK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19192".into());
    let admin_database_url = std::env::var("LINKWORK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    Stack {
        kafka: KafkaSettings::new(brokers),
        admin_database_url,
    }
}

/// Logs only when `TEST_LOG` is set, as in STYLE.md.
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

impl Stack {
    /// The same database server with another broker (a test's own, which it may kill).
    pub fn with_brokers(&self, brokers: String) -> Stack {
        Stack {
            kafka: KafkaSettings::new(brokers),
            admin_database_url: self.admin_database_url.clone(),
        }
    }

    /// A new database with the store's migrations applied. Left behind for inspection;
    /// `make test` drops old `lw_test_*` databases.
    pub async fn database(&self) -> PgPool {
        let name = format!("lw_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&self.admin_database_url)
            .await
            .expect(
                "Postgres is reachable (LINKWORK_TEST_DATABASE_URL); start it or run `make test`",
            );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let base = self
            .admin_database_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .expect("database URL has a path");
        let settings = linkwork_store::DatabaseSettings::new(format!("{base}/{name}"));
        let pool = linkwork_store::connect(&settings)
            .await
            .expect("connect to test database");
        linkwork_store::migrate(&pool)
            .await
            .expect("store migrations");
        pool
    }

    /// A new topic with a unique name.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> String {
        let name = unique(prefix);
        self.create_topic(&name, partitions).await;
        name
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.kafka.client_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(
                &[topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect(
                "broker is reachable (LINKWORK_TEST_KAFKA_BROKERS); start it with `make broker`",
            );
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
        }
    }

    /// Reads `topic` from the beginning until `expected` messages arrived or `within`
    /// passed, then keeps reading for `settle` to catch anything extra.
    pub fn read_topic(
        &self,
        topic: &str,
        expected: usize,
        within: Duration,
        settle: Duration,
    ) -> Vec<ReadMessage> {
        let consumer: BaseConsumer = self
            .kafka
            .client_config()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let mut messages = Vec::new();
        let deadline = Instant::now() + within;
        let mut settle_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if messages.len() >= expected && settle_until.is_none() {
                settle_until = Some(now + settle);
            }
            if settle_until.is_some_and(|until| now >= until) || now >= deadline {
                break;
            }
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                messages.push(ReadMessage {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message
                        .key()
                        .map(|key| String::from_utf8_lossy(key).into_owned()),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: HeaderList::from_kafka(message.headers()),
                });
            }
        }
        messages
    }
}

#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HeaderList,
}

impl ReadMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }
}

/// A synthetic call-log case opening; case ids are invented (`SYN-000001`).
pub fn case_opened(number: usize) -> CallLogEvent {
    CallLogEvent::CaseOpened(CaseOpened {
        case_id: AscCaseId::parse(&format!("SYN-{number:06}")).unwrap(),
        opened_at: chrono::DateTime::from_timestamp(1_767_225_600 + number as i64 * 60, 0).unwrap(),
        person_id: None,
    })
}

/// Waits until `check` holds, polling; panics with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! The real ingest on a random port, with a fresh database, the local broker and
//! development tokens.

use std::time::{Duration, Instant};

use linkwork_auth::{Role, Verifier};
use linkwork_bus::headers::HeaderList;
use linkwork_bus::KafkaSettings;
use linkwork_ingest::{Application, IngestSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const DEV_SECRET: &str = "integration-tests-development-secret-0123456789";

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub kafka: KafkaSettings,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn kafka() -> KafkaSettings {
    KafkaSettings::new(
        std::env::var("LINKWORK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19192".into()),
    )
}

fn admin_url() -> String {
    std::env::var("LINKWORK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database with the store's and ingest's migrations.
pub async fn database() -> PgPool {
    let name = format!("lw_test_{}", Uuid::new_v4().simple());
    let admin = admin_url();
    let mut connection = PgConnection::connect(&admin)
        .await
        .expect("Postgres is reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .expect("URL has a path");
    let pool = linkwork_store::connect(&linkwork_store::DatabaseSettings::new(format!(
        "{base}/{name}"
    )))
    .await
    .expect("connect");
    linkwork_store::migrate(&pool)
        .await
        .expect("store migrations");
    linkwork_ingest::migrate(&pool)
        .await
        .expect("ingest migrations");
    pool
}

/// The declared topics exist on the local broker (idempotent).
pub async fn topics(kafka: &KafkaSettings) {
    let declaration = linkwork_bus::topics::TopicsFile::load(
        &linkwork_testkit::workspace_root().join("topics.yaml"),
    )
    .expect("topics.yaml");
    linkwork_bus::topics::apply(kafka, &declaration, &[])
        .await
        .expect("broker is reachable; run `make broker`");
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(kafka(), |_| {}).await
}

/// Starts ingest against `kafka`, with `adjust` applied to its settings.
pub async fn spawn_app_with(
    kafka: KafkaSettings,
    adjust: impl FnOnce(&mut IngestSettings),
) -> TestApp {
    let pool = database().await;
    let mut settings = IngestSettings::new("127.0.0.1:0".parse().expect("address"));
    settings.delivery_timeout = Duration::from_secs(3);
    adjust(&mut settings);
    let verifier = Verifier::dev(SecretString::from(DEV_SECRET)).expect("verifier");
    let application = Application::build(settings, &kafka, pool.clone(), verifier)
        .await
        .expect("build");
    let address = format!("http://127.0.0.1:{}", application.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        pool,
        kafka,
        client: reqwest::Client::new(),
        shutdown,
    }
}

/// A development token for `client` in `role` with the role's default scopes.
pub fn token(role: Role, client: &str) -> String {
    token_with(role, client, &role.default_scopes(client))
}

pub fn token_with(role: Role, client: &str, scopes: &[&str]) -> String {
    linkwork_auth::dev_token(&SecretString::from(DEV_SECRET), role, client, scopes, 600)
        .expect("token")
}

pub fn gp_token() -> String {
    token(Role::Source, "gp:A81001")
}

/// A unique identifier value for a test's referral.
pub fn unique_reference() -> String {
    format!("R-{}", Uuid::new_v4().simple())
}

impl TestApp {
    pub async fn post_fhir(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    pub async fn receipts(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ingest_receipts")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Events on `referral.events` whose key is `referral_id`, read from the start for
/// `within` (counting what arrives: the broker's end-of-partition is not trusted).
pub fn events_for(
    kafka: &KafkaSettings,
    referral_id: &str,
    within: Duration,
) -> Vec<(String, Value, HeaderList)> {
    read_topic(kafka, linkwork_bus::topics::REFERRAL_EVENTS, within)
        .into_iter()
        .filter(|(key, _, _)| key == referral_id)
        .collect()
}

/// Every message of a topic: (key, JSON body or the raw text as a string, headers).
pub fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    within: Duration,
) -> Vec<(String, Value, HeaderList)> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("reader-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..metadata.topics()[0].partitions().len() as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let key = message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .unwrap_or_default();
            let payload = message.payload().unwrap_or_default();
            let body = serde_json::from_slice(payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
            messages.push((key, body, HeaderList::from_kafka(message.headers())));
        }
    }
    messages
}

/// Every expression in an OperationOutcome.
pub fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|issue| issue["expression"].as_array().into_iter().flatten())
        .filter_map(|expression| expression.as_str().map(str::to_owned))
        .collect()
}

/// Every diagnostic in an OperationOutcome, joined.
pub fn diagnostics(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|issue| issue["diagnostics"].as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

//! The real ingest on a random port, with a fresh database, the local broker and
//! development tokens.

use std::time::Duration;

use linkwork_auth::{Role, Verifier};
use linkwork_bus::headers::HeaderList;
use linkwork_bus::topics::{ASC_CALL_LOG, AUDIT_EVENTS, REFERRAL_EVENTS};
use linkwork_bus::{KafkaSettings, Names};
use linkwork_ingest::{Application, IngestSettings};
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
    /// This app's own topics and groups.
    pub names: Names,
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

/// The vault ingest seals referrals with in these tests.
pub fn vault() -> linkwork_vault::Vault {
    linkwork_vault::Vault::new(&SecretString::from(
        "ingest-api-tests-vault-secret-0123456789abcdef",
    ))
    .expect("a strong enough secret")
}

/// Topic and group names of a test's own.
pub fn isolated_names() -> Names {
    Names::isolated(&format!(
        "ing-{}",
        &Uuid::new_v4().simple().to_string()[..12]
    ))
}

/// The declared topics named by `names` exist on the local broker, with few partitions.
pub async fn topics(kafka: &KafkaSettings, names: &Names) {
    let declaration = names.declaration(&linkwork_testkit::topic::small_declaration());
    linkwork_testkit::topic::apply(kafka, &declaration, &[]).await;
}

/// Ingest on the local broker, on topics of its own.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Ingest on the local broker, on topics of its own, with `adjust` applied to its
/// settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut IngestSettings)) -> TestApp {
    let kafka = kafka();
    let names = isolated_names();
    topics(&kafka, &names).await;
    start(kafka, names, adjust).await
}

/// Ingest whose broker does not answer (nothing listens on its port).
pub async fn spawn_app_without_broker(adjust: impl FnOnce(&mut IngestSettings)) -> TestApp {
    start(KafkaSettings::new("127.0.0.1:1"), isolated_names(), adjust).await
}

/// Ingest on the local broker with `routes` served beside its own, as `serve all`
/// serves the metrics routes.
pub async fn spawn_app_beside(
    routes: axum::Router,
    adjust: impl FnOnce(&mut IngestSettings),
) -> TestApp {
    let kafka = kafka();
    let names = isolated_names();
    topics(&kafka, &names).await;
    start_with_routes(kafka, names, adjust, Some(routes)).await
}

async fn start(
    kafka: KafkaSettings,
    names: Names,
    adjust: impl FnOnce(&mut IngestSettings),
) -> TestApp {
    start_with_routes(kafka, names, adjust, None).await
}

async fn start_with_routes(
    kafka: KafkaSettings,
    names: Names,
    adjust: impl FnOnce(&mut IngestSettings),
    routes: Option<axum::Router>,
) -> TestApp {
    let pool = database().await;
    let mut settings = IngestSettings::new("127.0.0.1:0".parse().expect("address"));
    settings.delivery_timeout = Duration::from_secs(3);
    settings.http.events_topic = names.topic(REFERRAL_EVENTS);
    settings.http.call_log_topic = names.topic(ASC_CALL_LOG);
    settings.http.audit_topic = names.topic(AUDIT_EVENTS);
    settings.vault = Some(vault());
    adjust(&mut settings);
    let verifier = Verifier::dev(SecretString::from(DEV_SECRET)).expect("verifier");
    let mut application = Application::build(settings, &kafka, pool.clone(), verifier)
        .await
        .expect("build");
    if let Some(routes) = routes {
        application = application.with_routes(routes);
    }
    let address = format!("http://127.0.0.1:{}", application.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        pool,
        kafka,
        names,
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

/// How long a read waits for what it expects before it returns what it has.
const READ_WITHIN: Duration = Duration::from_secs(30);

impl TestApp {
    /// The events keyed `referral_id` on this app's `referral.events`, once `expected`
    /// events (of any referral) are there and the topic is read to its end.
    pub async fn events_for(&self, referral_id: &str, expected: usize) -> Vec<Read> {
        events_for(&self.kafka, &self.names, referral_id, expected).await
    }

    /// Every message of this app's `topic` (a name of the declaration), once `expected`
    /// are there and the topic is read to its end.
    pub async fn read_topic(&self, topic: &str, expected: usize) -> Vec<Read> {
        read_topic(&self.kafka, &self.names.topic(topic), expected).await
    }
}

/// A message read back: key, the JSON body (or its text as a JSON string) and headers.
pub type Read = (String, Value, HeaderList);

/// The events keyed `referral_id` on `referral.events` as `names` names it.
pub async fn events_for(
    kafka: &KafkaSettings,
    names: &Names,
    referral_id: &str,
    expected: usize,
) -> Vec<Read> {
    read_topic(kafka, &names.topic(REFERRAL_EVENTS), expected)
        .await
        .into_iter()
        .filter(|(key, _, _)| key == referral_id)
        .collect()
}

/// Every message of `topic`, once `expected` are there and it is read to its end.
pub async fn read_topic(kafka: &KafkaSettings, topic: &str, expected: usize) -> Vec<Read> {
    linkwork_testkit::topic::read(kafka, topic, expected, READ_WITHIN)
        .await
        .into_iter()
        .map(|message| {
            let body = message.json();
            (message.key.unwrap_or_default(), body, message.headers)
        })
        .collect()
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

/// Waits until `check` holds, polling every 50 ms; panics with `what` after 60 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

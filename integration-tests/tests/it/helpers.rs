//! The local stack for tests: a fresh database and fresh topics per test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use linkwork::topology::{HttpSettings, Services, Topology, TopologySettings};
use linkwork_bus::topics::TopicsFile;
use linkwork_bus::{KafkaSettings, Names};
use linkwork_domain::{AscCaseId, CallLogEvent, CaseOpened, ProviderId};
use linkwork_router::SweeperStatus;
use linkwork_store::sqlx::{self, Connection, PgConnection, PgPool};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
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
    /// The same database server and broker reached through the broker's SASL/SCRAM
    /// listener (`scripts/stack test` opens it beside the plain one), with the
    /// security settings passed as an operator passes them: `LINKWORK_KAFKA_*`.
    pub fn over_sasl_scram(&self, password: Option<&str>) -> Stack {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let vars = [
            (
                "LINKWORK_KAFKA_BROKERS",
                var("LINKWORK_TEST_KAFKA_SASL_BROKERS", "127.0.0.1:19194"),
            ),
            ("LINKWORK_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".into()),
            ("LINKWORK_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512".into()),
            (
                "LINKWORK_KAFKA_SASL_USERNAME",
                var("LINKWORK_TEST_KAFKA_SCRAM_USER", "linkwork"),
            ),
            (
                "LINKWORK_KAFKA_SASL_PASSWORD",
                password.map(str::to_owned).unwrap_or_else(|| {
                    var(
                        "LINKWORK_TEST_KAFKA_SCRAM_PASSWORD",
                        "linkwork-local-scram-not-a-secret",
                    )
                }),
            ),
        ];
        let kafka = KafkaSettings::from_vars(
            vars.into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        )
        .expect("SASL settings");
        Stack {
            kafka,
            admin_database_url: self.admin_database_url.clone(),
        }
    }

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
        let pool = self.empty_database().await;
        linkwork_store::migrate(&pool)
            .await
            .expect("store migrations");
        pool
    }

    /// The URL of the database test databases are created from.
    pub fn admin_database_url(&self) -> &str {
        &self.admin_database_url
    }

    /// A new database with no migrations applied.
    pub async fn empty_database(&self) -> PgPool {
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
        linkwork_store::connect(&settings)
            .await
            .expect("connect to test database")
    }

    /// Every topic of the built-in declaration, named by `names`, as `linkwork topics
    /// apply` creates them (the queues of `providers` too): what a whole topology reads
    /// and writes.
    pub async fn apply_topics(&self, names: &Names, providers: &[ProviderId]) {
        let declaration = linkwork::topics_command::load(None).expect("the built-in topics.yaml");
        self.apply_declaration(&names.declaration(&declaration), providers)
            .await;
    }

    /// The built-in declaration with at most three partitions a topic.
    pub fn small_declaration() -> TopicsFile {
        linkwork_testkit::topic::small_declaration()
    }

    /// Creates every topic of `declaration` (already named) and the queues of
    /// `providers`, as `linkwork topics apply` does.
    pub async fn apply_declaration(&self, declaration: &TopicsFile, providers: &[ProviderId]) {
        linkwork_testkit::topic::apply(&self.kafka, declaration, providers).await;
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

    /// Reads `topic` from the beginning until `expected` messages have arrived and every
    /// partition has been read to the end the log had then, so nothing already on the
    /// log is missed (an extra copy among them is counted); gives up after `within`.
    pub async fn read_topic(
        &self,
        topic: &str,
        expected: usize,
        within: Duration,
    ) -> Vec<ReadMessage> {
        linkwork_testkit::topic::read(&self.kafka, topic, expected, within).await
    }

    /// Each partition of `topic` with its low and high watermarks.
    pub async fn log_ends(&self, topic: &str) -> Vec<(i32, i64, i64)> {
        linkwork_testkit::topic::log_ends(&self.kafka, topic).await
    }

    /// Waits until the consumer named `consumer` has stored, in Postgres, offsets at the
    /// end `topic` has now: everything on the log is applied, so anything applied twice
    /// or skipped would already show.
    pub async fn caught_up(&self, pool: &PgPool, consumer: &str, topic: &str) {
        let ends = self.log_ends(topic).await;
        eventually(
            Duration::from_secs(60),
            &format!("{consumer} to reach the end of {topic}"),
            || async {
                let stored: Vec<(i32, i64)> = sqlx::query_as(
                    "SELECT partition, next_offset FROM consumer_offsets \
                     WHERE consumer = $1 AND topic = $2",
                )
                .bind(consumer)
                .bind(topic)
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                ends.iter().all(|(partition, low, high)| {
                    low >= high
                        || stored.iter().any(|(stored_partition, next)| {
                            stored_partition == partition && next >= high
                        })
                })
            },
        )
        .await;
    }
}

pub use linkwork_testkit::topic::ReadMessage;

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

/// A `linkwork serve` process's worth of tasks, assembled by `linkwork::topology` as
/// `serve` assembles them, running in this test's runtime. [`Process::kill`] (or
/// dropping it) stops every task at once, as SIGKILL would.
pub struct Process {
    task: JoinHandle<()>,
    /// The process's own connections, as a real process has: killing it closes them,
    /// so a transaction it was in the middle of is rolled back by Postgres and no
    /// connection in an unfinished state goes back to a pool someone else uses.
    pool: PgPool,
    sweeper: Option<SweeperStatus>,
    http_addr: Option<SocketAddr>,
}

/// The development secret of the processes [`Process::start`] builds.
pub const PROCESS_DEV_SECRET: &str = "integration-tests-process-development-secret-0123456789";

/// A token for such a process: `client` in `role`, with the role's scopes.
pub fn process_token(role: linkwork_auth::Role, client: &str) -> String {
    linkwork_auth::dev_token(
        &secrecy::SecretString::from(PROCESS_DEV_SECRET),
        role,
        client,
        &role.default_scopes(client),
        600,
    )
    .expect("a development token")
}

/// The vault the tests' processes share (a fixed secret: every process of a test must
/// open what the others sealed).
pub fn vault() -> linkwork_vault::Vault {
    linkwork_vault::Vault::new(&secrecy::SecretString::from(
        "integration-tests-vault-secret-0123456789abcdef",
    ))
    .expect("a strong enough secret")
}

impl Process {
    /// Builds and starts `services` on `names`, with the small topics declaration and
    /// what `configure` changes in the settings (a clock, a pseudonym key, ...).
    pub async fn start(
        stack: &Stack,
        pool: &PgPool,
        names: &Names,
        services: Services,
        configure: impl FnOnce(&mut TopologySettings),
    ) -> Process {
        let mut http = HttpSettings::new("127.0.0.1:0".parse().expect("an address"));
        http.verifier = Some(
            linkwork_auth::Verifier::dev(secrecy::SecretString::from(PROCESS_DEV_SECRET))
                .expect("a development verifier"),
        );
        let mut settings =
            TopologySettings::new(stack.kafka.clone(), names.clone(), services, http)
                .expect("the built-in topics declaration");
        settings.topics = Stack::small_declaration();
        settings.vault = Some(vault());
        configure(&mut settings);
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_with((*pool.connect_options()).clone())
            .await
            .expect("the process's own connections");
        let topology = Topology::build(settings, own.clone())
            .await
            .expect("the topology builds");
        let sweeper = topology.sweeper().cloned();
        let http_addr = topology.http_addr();
        let task = tokio::spawn(async move {
            topology
                .run(CancellationToken::new())
                .await
                .expect("the process runs");
        });
        Process {
            task,
            pool: own,
            sweeper,
            http_addr,
        }
    }

    /// Where its HTTP routes listen.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.expect("the process serves HTTP")
    }

    /// Aborts every task of the process at once.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.pool.close().await;
    }

    /// Waits until `count` more deadline sweeps have finished: the time in which a
    /// negative check says nothing may fire.
    pub async fn sweeps_pass(&self, count: u64) {
        let sweeper = self.sweeper.as_ref().expect("the process routes");
        let target = sweeper.sweeps() + count;
        eventually(
            Duration::from_secs(30),
            &format!("{count} more deadline sweeps"),
            || async { sweeper.sweeps() >= target },
        )
        .await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.task.abort();
    }
}

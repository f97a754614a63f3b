//! linkwork's projector: read models built only from `referral.events` (current
//! referral state, full history, Tasks, caseloads, outcome measures and their
//! baseline/follow-up pairs, contacts and activities), outcome Observations out to
//! `outcomes.observations` and, with consent, pseudonymised to
//! `outcomes.observations.pseudonymised`, and the referrer's summary when a referral
//! closes. `linkwork replay` rebuilds it all from offset 0 ([`replay`]).
//!
//! The read models live in the Postgres schema `projection`, built from
//! `sql/read_models.sql`; the consumer writes them with the transactional-consumer
//! pattern of `linkwork-bus` (state, outbox rows and offsets in one transaction).

pub mod model;
pub mod project;
pub mod pseudonym;
pub mod read;
pub mod replay;
pub mod resources;

use linkwork_bus::topics as bus_topics;
use linkwork_bus::{ConsumerConfig, ConsumerRunner, KafkaSettings};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use project::ProjectorHandler;
pub use pseudonym::PseudonymKey;

/// The DDL of the read models (table names unqualified; run with search_path set).
pub const READ_MODELS_SQL: &str = include_str!("../sql/read_models.sql");

pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

pub async fn migrate(pool: &PgPool) -> Result<(), linkwork_store::StoreError> {
    migrator().run(pool).await?;
    Ok(())
}

/// The topics the projector reads and writes. Tests give each run its own names.
#[derive(Debug, Clone)]
pub struct ProjectorTopics {
    pub events: String,
    pub observations: String,
    pub pseudonymised: String,
}

impl Default for ProjectorTopics {
    fn default() -> Self {
        Self {
            events: bus_topics::REFERRAL_EVENTS.to_owned(),
            observations: bus_topics::OUTCOMES_OBSERVATIONS.to_owned(),
            pseudonymised: bus_topics::OUTCOMES_OBSERVATIONS_PSEUDONYMISED.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub topics: ProjectorTopics,
    pub canonical_base: String,
    /// The CloudEvents source of what the projector publishes.
    pub source: String,
    pub pseudonym_key: PseudonymKey,
    /// When set, pseudonymised outcomes go to data teams without recorded consent, on
    /// this lawful basis (named in the deployment's data protection impact assessment).
    pub evaluation_lawful_basis: Option<String>,
    /// Names the consumer's offsets, de-duplication and dead-letter topic.
    pub consumer: String,
    /// Consumer group; `linkwork.projector` by default.
    pub group_id: String,
    /// Where the live read models are.
    pub schema: String,
    /// Where `linkwork replay` builds before swapping in.
    pub rebuild_schema: String,
    pub dlq_topic: String,
}

impl ProjectorConfig {
    pub fn new(pseudonym_key: PseudonymKey) -> Self {
        Self {
            topics: ProjectorTopics::default(),
            canonical_base: "https://linkwork.example/fhir".into(),
            source: "linkwork/projector".into(),
            pseudonym_key,
            evaluation_lawful_basis: None,
            consumer: bus_topics::consumers::PROJECTOR.to_owned(),
            group_id: format!("linkwork.{}", bus_topics::consumers::PROJECTOR),
            schema: read::LIVE_SCHEMA.to_owned(),
            rebuild_schema: format!("{}_rebuild", read::LIVE_SCHEMA),
            dlq_topic: bus_topics::dlq(bus_topics::consumers::PROJECTOR),
        }
    }

    fn consumer_config(&self, name: &str, group_id: &str) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(name, &[self.topics.events.as_str()]);
        config.group_id = group_id.to_owned();
        config.dlq_topic = self.dlq_topic.clone();
        config.source = self.source.clone();
        config
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] linkwork_bus::BusError),
    #[error(
        "the read models in schema {schema} were built by another version of the projector; \
         run `linkwork replay` to rebuild them"
    )]
    Outdated { schema: String },
    #[error("{0}")]
    Replay(String),
}

/// The version of the read-model DDL, to tell when a rebuild is needed.
pub fn ddl_hash() -> String {
    let digest = Sha256::digest(READ_MODELS_SQL.as_bytes());
    digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn schema_exists(
    connection: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(connection)
        .await
}

/// Creates `schema` with empty read models, replacing any schema of that name.
pub(crate) async fn create_schema(
    connection: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let quoted = quote_ident(schema);
    let create = format!(
        "DROP SCHEMA IF EXISTS {quoted} CASCADE; CREATE SCHEMA {quoted}; SET LOCAL search_path TO {quoted};"
    );
    sqlx::Executor::execute(&mut *connection, create.as_str()).await?;
    sqlx::Executor::execute(&mut *connection, READ_MODELS_SQL).await?;
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *connection)
        .await?;
    Ok(())
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Makes sure the live read models exist and were built by this DDL. A missing schema
/// is created empty and the projector's offsets reset, so it projects from offset 0.
pub async fn ensure_schema(pool: &PgPool, config: &ProjectorConfig) -> Result<(), ProjectorError> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('linkwork.projection.schema'))")
        .execute(&mut *transaction)
        .await?;
    if schema_exists(&mut transaction, &config.schema).await? {
        let built: Option<String> =
            sqlx::query_scalar("SELECT ddl_hash FROM projection_meta WHERE singleton")
                .fetch_optional(&mut *transaction)
                .await?;
        if built.as_deref() != Some(ddl_hash().as_str()) {
            return Err(ProjectorError::Outdated {
                schema: config.schema.clone(),
            });
        }
        return Ok(());
    }
    create_schema(&mut transaction, &config.schema).await?;
    reset_consumer(&mut transaction, &config.consumer).await?;
    sqlx::query(
        "INSERT INTO projection_meta (singleton, ddl_hash, built_at) VALUES (TRUE, $1, now())
         ON CONFLICT (singleton) DO UPDATE SET ddl_hash = EXCLUDED.ddl_hash, built_at = now()",
    )
    .bind(ddl_hash())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    tracing::info!(schema = %config.schema, "created empty read models; projecting from offset 0");
    Ok(())
}

/// Forgets a consumer's offsets and processed ids: it starts again from offset 0.
pub(crate) async fn reset_consumer(
    connection: &mut sqlx::PgConnection,
    consumer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consumer_offsets WHERE consumer = $1")
        .bind(consumer)
        .execute(&mut *connection)
        .await?;
    sqlx::query("DELETE FROM processed_events WHERE consumer = $1")
        .bind(consumer)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// The live projector.
#[derive(Debug)]
pub struct Projector {
    config: ProjectorConfig,
    kafka: KafkaSettings,
    pool: PgPool,
    outbox_notify: Option<Arc<Notify>>,
}

impl Projector {
    pub fn new(
        config: ProjectorConfig,
        kafka: KafkaSettings,
        pool: PgPool,
        outbox_notify: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            config,
            kafka,
            pool,
            outbox_notify,
        }
    }

    /// Projects until `shutdown` is cancelled or a fatal error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        ensure_schema(&self.pool, &self.config).await?;
        let consumer = self
            .config
            .consumer_config(&self.config.consumer, &self.config.group_id);
        let handler = ProjectorHandler {
            schema: self.config.schema.clone(),
            config: self.config,
            publish: true,
        };
        let mut runner = ConsumerRunner::new(consumer, self.kafka, self.pool, handler);
        if let Some(notify) = self.outbox_notify {
            runner = runner.with_outbox_notify(notify);
        }
        runner.run(shutdown).await?;
        Ok(())
    }
}

//! linkwork's projector: read models built only from `referral.events` (current
//! referral state, full history, Tasks, caseloads, outcome measures and their
//! baseline/follow-up pairs, contacts and activities), outcome Observations and the
//! closing summary out to the referrer's own topic (`referrer.<source>.outcomes`,
//! created when the referrer's first outcome goes out) and, with consent,
//! pseudonymised to `outcomes.observations.pseudonymised`. `linkwork replay` rebuilds it all from offset 0 ([`replay`]).
//!
//! The read models and their schema belong to the read side (`linkwork-projection`);
//! the projector is their only writer, with the transactional-consumer pattern of
//! `linkwork-bus` (state, outbox rows and offsets in one transaction).

pub mod project;
pub mod pseudonym;
pub mod replay;
pub mod resources;

use linkwork_bus::topics as bus_topics;
use linkwork_bus::{ConsumerConfig, ConsumerRunner, ConsumerStatus, KafkaSettings};
use linkwork_projection::{SchemaError, SchemaState};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use project::ProjectorHandler;
pub use pseudonym::PseudonymKey;

/// The projector's tables in `public` are the read side's (`linkwork-projection`).
pub async fn migrate(pool: &PgPool) -> Result<(), linkwork_store::StoreError> {
    linkwork_projection::migrate(pool).await?;
    // The projector opens sealed referrals with the vault's keys.
    linkwork_vault::migrator().run(pool).await?;
    Ok(())
}

/// The topics the projector reads and writes. Tests give each run its own names.
#[derive(Debug, Clone)]
pub struct ProjectorTopics {
    pub events: String,
    pub pseudonymised: String,
    /// Put before each referrer's outcomes topic (the deployment's topic prefix).
    pub referrer_prefix: String,
}

impl ProjectorTopics {
    /// The topic of `referrer`'s identified outcomes and summaries.
    pub fn referrer(&self, referrer: &linkwork_domain::Source) -> String {
        format!(
            "{}{}",
            self.referrer_prefix,
            bus_topics::referrer_outcomes(referrer)
        )
    }
}

impl Default for ProjectorTopics {
    fn default() -> Self {
        Self {
            events: bus_topics::REFERRAL_EVENTS.to_owned(),
            pseudonymised: bus_topics::OUTCOMES_OBSERVATIONS_PSEUDONYMISED.to_owned(),
            referrer_prefix: String::new(),
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
    /// Creates a referrer's outcomes topic, from the `per: referrer` declaration (named
    /// for the deployment), before its first message goes out. Unset, the topics must
    /// exist already (`linkwork topics apply --referrer`).
    pub ensure_referrer_topics: Option<(KafkaSettings, bus_topics::TopicsFile)>,
    /// Opens the sealed parts of referrals for the read models (`LINKWORK_VAULT_KEY`);
    /// without it (or once a person is erased) they are projected redacted.
    pub vault: Option<linkwork_vault::Vault>,
}

impl ProjectorConfig {
    pub fn new(pseudonym_key: PseudonymKey) -> Self {
        Self {
            topics: ProjectorTopics::default(),
            canonical_base: linkwork_fhir::systems::DEFAULT_CANONICAL_BASE.into(),
            source: "linkwork/projector".into(),
            pseudonym_key,
            evaluation_lawful_basis: None,
            consumer: bus_topics::consumers::PROJECTOR.to_owned(),
            group_id: format!("linkwork.{}", bus_topics::consumers::PROJECTOR),
            schema: linkwork_projection::LIVE_SCHEMA.to_owned(),
            rebuild_schema: format!("{}_rebuild", linkwork_projection::LIVE_SCHEMA),
            dlq_topic: bus_topics::dlq(bus_topics::consumers::PROJECTOR),
            ensure_referrer_topics: None,
            vault: None,
        }
    }

    fn consumer_config(&self, name: &str, group_id: &str) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(name, &[self.topics.events.as_str()]);
        config.group_id = group_id.to_owned();
        config.dlq_topic = self.dlq_topic.clone();
        config.source = self.source.clone();
        config.vault = self.vault.clone();
        config
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] linkwork_bus::BusError),
    /// The live read models were built by another DDL (or the schema lookup failed).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("{0}")]
    Replay(String),
}

/// Makes sure the live read models exist and were built by this DDL. A missing schema
/// is created empty and the projector's offsets reset, so it projects from offset 0.
pub async fn ensure_schema(pool: &PgPool, config: &ProjectorConfig) -> Result<(), ProjectorError> {
    let mut transaction = pool.begin().await?;
    if linkwork_projection::ensure_schema(&mut transaction, &config.schema).await?
        == SchemaState::Current
    {
        return Ok(());
    }
    reset_consumer(&mut transaction, &config.consumer).await?;
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
    status: ConsumerStatus,
}

impl Projector {
    pub fn new(
        config: ProjectorConfig,
        kafka: KafkaSettings,
        pool: PgPool,
        outbox_notify: Option<Arc<Notify>>,
    ) -> Self {
        let status = ConsumerStatus::new(&config.consumer);
        Self {
            config,
            kafka,
            pool,
            outbox_notify,
            status,
        }
    }

    /// The projector's consumer status, for readiness and metrics.
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
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
            referrer_topics: HashSet::new(),
        };
        let mut runner =
            ConsumerRunner::new(consumer, self.kafka, self.pool, handler).with_status(self.status);
        if let Some(notify) = self.outbox_notify {
            runner = runner.with_outbox_notify(notify);
        }
        runner.run(shutdown).await?;
        Ok(())
    }
}

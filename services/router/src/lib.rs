//! The router (`linkwork serve router`): consumes `referral.events`, decides which
//! community provider gets each referral, puts it on that provider's queue, and keeps
//! it moving: a rejection or a missed acceptance deadline sends it to the next
//! eligible provider, and triage gets what nobody can take.
//!
//! Exactly-once effect by the transactional-consumer pattern of `linkwork-bus`: the
//! routing rows, caseloads, outbox messages (events, provider Bundles) and consumed
//! offsets commit in one Postgres transaction. Deadlines live in the same rows, so a
//! restart loses none and fires none twice.

pub mod bundle;
pub mod calendar;
pub mod decision;
pub mod directory;
pub mod engine;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linkwork_bus::topics::{self as bus_topics, TopicsFile};
use linkwork_bus::{
    BusError, CloudEvent, ConsumerConfig, ConsumerRunner, Effects, Handler, HandlerError, Incoming,
    KafkaSettings,
};
use linkwork_domain::{ProviderId, ReferralEvent};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::directory::CompiledDirectory;
use crate::engine::{Loads, Step};

/// The router's migrations (run after the store's).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

pub async fn migrate(pool: &PgPool) -> Result<(), linkwork_store::StoreError> {
    migrator().run(pool).await?;
    // The router opens sealed referrals with the vault's keys.
    linkwork_vault::migrator().run(pool).await?;
    Ok(())
}

/// The topics the router reads and writes. Tests give each run its own names.
#[derive(Debug, Clone)]
pub struct RouterTopics {
    pub events: String,
    pub triage: String,
    pub dlq: String,
    /// Put before `provider.<id>.referrals`; empty in production.
    pub queue_prefix: String,
}

impl Default for RouterTopics {
    fn default() -> Self {
        Self {
            events: bus_topics::REFERRAL_EVENTS.to_owned(),
            triage: bus_topics::TRIAGE_REFERRALS.to_owned(),
            dlq: bus_topics::dlq(bus_topics::consumers::ROUTER),
            queue_prefix: String::new(),
        }
    }
}

impl RouterTopics {
    pub fn provider_queue(&self, provider: &ProviderId) -> String {
        format!(
            "{}{}",
            self.queue_prefix,
            bus_topics::provider_queue(provider)
        )
    }
}

pub use linkwork_domain::Clock;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub topics: RouterTopics,
    /// Base of linkwork's identifier systems in the Bundles.
    pub canonical_base: String,
    /// The CloudEvents source of what the router publishes.
    pub source: String,
    pub clock: Clock,
    /// How often the deadline sweeper looks for referrals past their deadline.
    pub deadline_poll: Duration,
    /// At most this many escalations per sweeper transaction.
    pub deadline_batch: i64,
    /// Consumer group; `linkwork.router` by default.
    pub group_id: String,
    /// Creates the queue topics of new directory versions when set (production: the
    /// built-in topics.yaml). Tests create their own prefixed topics.
    pub ensure_queue_topics: Option<(KafkaSettings, TopicsFile)>,
    /// Opens the sealed parts of referrals to route them (`LINKWORK_VAULT_KEY`).
    pub vault: Option<linkwork_vault::Vault>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            topics: RouterTopics::default(),
            canonical_base: linkwork_fhir::systems::DEFAULT_CANONICAL_BASE.into(),
            source: "linkwork/router".into(),
            clock: Clock::system(),
            deadline_poll: Duration::from_secs(5),
            deadline_batch: 500,
            group_id: format!("linkwork.{}", bus_topics::consumers::ROUTER),
            ensure_queue_topics: None,
            vault: None,
        }
    }
}

/// The newest directory, compiled once per version.
#[derive(Debug, Default)]
struct DirectoryCache {
    compiled: Option<Arc<CompiledDirectory>>,
}

impl DirectoryCache {
    /// The newest version; one small query when it has not changed. No directory at
    /// all is a retryable failure: routing everything to triage because nobody has
    /// loaded the directory yet would be wrong.
    async fn current(
        &mut self,
        connection: &mut PgConnection,
        config: &RouterConfig,
    ) -> Result<Arc<CompiledDirectory>, HandlerError> {
        let newest = directory::current_version(connection).await?;
        let Some(newest) = newest else {
            return Err(HandlerError::Retryable(
                "no provider directory is stored; load one with `linkwork directory apply`".into(),
            ));
        };
        if let Some(compiled) = &self.compiled {
            if compiled.version == newest {
                return Ok(compiled.clone());
            }
        }
        let stored = directory::load_current(connection)
            .await?
            .ok_or_else(|| HandlerError::Retryable("the directory vanished".into()))?;
        let compiled = Arc::new(CompiledDirectory::compile(&stored));
        if let Some((kafka, topics)) = &config.ensure_queue_topics {
            let providers = stored.document.provider_ids();
            bus_topics::apply(kafka, topics, &bus_topics::Members::providers(&providers))
                .await
                .map_err(|error| HandlerError::Retryable(Box::new(error)))?;
        }
        tracing::info!(version = %compiled.label, providers = compiled.providers.len(), "provider directory loaded");
        self.compiled = Some(compiled.clone());
        Ok(compiled)
    }
}

/// Routes what arrives on `referral.events`.
#[derive(Debug)]
pub struct RouterHandler {
    config: Arc<RouterConfig>,
    directories: DirectoryCache,
}

impl RouterHandler {
    pub fn new(config: Arc<RouterConfig>) -> Self {
        Self {
            config,
            directories: DirectoryCache::default(),
        }
    }
}

impl Handler for RouterHandler {
    type Message = CloudEvent<ReferralEvent>;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        let directory = self.directories.current(transaction, &self.config).await?;
        let mut ids: Vec<Uuid> = batch
            .iter()
            .map(|incoming| *incoming.message.event.referral_id().as_uuid())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut routes = engine::load_routes(transaction, &ids).await?;
        let mut loads = if batch
            .iter()
            .any(|incoming| engine::touches_caseloads(&incoming.message.event))
        {
            engine::lock_loads(transaction).await?
        } else {
            Loads::default()
        };
        let now = self.config.clock.now();
        let opened = engine::open_received(
            transaction,
            self.config.vault.as_ref(),
            batch.iter().map(|incoming| &incoming.message.event),
            &routes,
            &[],
        )
        .await?;
        for incoming in batch {
            let mut step = Step {
                config: &self.config,
                directory: &directory,
                loads: &mut loads,
                now,
                outbox: Vec::new(),
                opened: &opened,
            };
            let body = incoming.record.payload.as_deref().unwrap_or_default();
            {
                let _entered = incoming.span.enter();
                step.apply(&mut routes, &incoming.message.event, body);
            }
            for message in step.outbox {
                effects.publish(incoming, message);
            }
        }
        engine::save(transaction, routes, &loads).await?;
        Ok(())
    }
}

/// What a deadline sweeper has done, shared with whoever watches it (the admin
/// listener's `/metrics`, a test waiting for sweeps to pass).
#[derive(Debug, Clone, Default)]
pub struct SweeperStatus {
    figures: Arc<SweeperFigures>,
}

#[derive(Debug, Default)]
struct SweeperFigures {
    sweeps: AtomicU64,
    escalations: AtomicU64,
    failures: AtomicU64,
}

impl SweeperStatus {
    /// Sweeps finished, whether or not anything was due.
    pub fn sweeps(&self) -> u64 {
        self.figures.sweeps.load(Ordering::Acquire)
    }

    /// Referrals escalated past their acceptance deadline.
    pub fn escalations(&self) -> u64 {
        self.figures.escalations.load(Ordering::Acquire)
    }

    /// Sweeps that failed and will be retried.
    pub fn failures(&self) -> u64 {
        self.figures.failures.load(Ordering::Acquire)
    }
}

/// Escalates referrals whose acceptance deadline has passed, in batches, until
/// `shutdown`.
#[derive(Debug)]
pub struct DeadlineSweeper {
    pool: PgPool,
    config: Arc<RouterConfig>,
    directories: DirectoryCache,
    outbox_notify: Option<Arc<Notify>>,
    status: SweeperStatus,
}

impl DeadlineSweeper {
    pub fn new(pool: PgPool, config: Arc<RouterConfig>) -> Self {
        Self {
            pool,
            config,
            directories: DirectoryCache::default(),
            outbox_notify: None,
            status: SweeperStatus::default(),
        }
    }

    pub fn with_outbox_notify(mut self, notify: Arc<Notify>) -> Self {
        self.outbox_notify = Some(notify);
        self
    }

    /// A handle on this sweeper's figures.
    pub fn status(&self) -> SweeperStatus {
        self.status.clone()
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BusError> {
        let mut failures = 0u32;
        loop {
            let swept = self.sweep_once().await;
            let figures = &self.status.figures;
            match &swept {
                Ok(escalated) => {
                    figures
                        .escalations
                        .fetch_add(*escalated as u64, Ordering::AcqRel);
                    figures.sweeps.fetch_add(1, Ordering::AcqRel);
                }
                Err(_) => {
                    figures.failures.fetch_add(1, Ordering::AcqRel);
                }
            }
            match swept {
                Ok(escalated) if escalated as i64 >= self.config.deadline_batch => {
                    failures = 0;
                    continue; // more are due
                }
                Ok(_) => failures = 0,
                Err(HandlerError::Retryable(error)) => {
                    failures += 1;
                    tracing::warn!(error = %error, failures, "deadline sweep failed; will retry");
                }
                Err(error) => return Err(BusError::Handler(error.to_string())),
            }
            let pause = if failures == 0 {
                self.config.deadline_poll
            } else {
                self.config.deadline_poll * failures.min(6)
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Escalates up to one batch of due referrals in one transaction; returns how many.
    pub async fn sweep_once(&mut self) -> Result<usize, HandlerError> {
        let mut transaction = self.pool.begin().await?;
        let now = self.config.clock.now();
        let mut routes =
            engine::load_due(&mut transaction, now, self.config.deadline_batch).await?;
        if routes.is_empty() {
            transaction.commit().await?;
            return Ok(0);
        }
        let directory = self
            .directories
            .current(&mut transaction, &self.config)
            .await?;
        let mut loads = engine::lock_loads(&mut transaction).await?;
        let mut due: Vec<_> = routes.keys().copied().collect();
        due.sort_by_key(|id| *id.as_uuid());
        let opened = engine::open_received(
            &mut transaction,
            self.config.vault.as_ref(),
            [],
            &routes,
            &due,
        )
        .await?;
        let mut step = Step {
            config: &self.config,
            directory: &directory,
            loads: &mut loads,
            now,
            outbox: Vec::new(),
            opened: &opened,
        };
        for id in &due {
            if let Some(route) = routes.get_mut(id) {
                tracing::info!(referral = %id, "acceptance deadline passed; escalating");
                step.escalate(route);
            }
        }
        let messages: Vec<_> = step
            .outbox
            .into_iter()
            .map(|event| event.into_message(None, None))
            .collect();
        engine::save(&mut transaction, routes, &loads).await?;
        linkwork_store::outbox::insert(&mut transaction, messages).await?;
        transaction.commit().await?;
        if let Some(notify) = &self.outbox_notify {
            notify.notify_one();
        }
        Ok(due.len())
    }
}

/// The consumer and the deadline sweeper, ready to run.
#[derive(Debug)]
pub struct Router {
    pub consumer: ConsumerRunner<RouterHandler>,
    pub sweeper: DeadlineSweeper,
}

impl Router {
    pub fn new(
        config: RouterConfig,
        kafka: KafkaSettings,
        pool: PgPool,
        outbox_notify: Option<Arc<Notify>>,
    ) -> Self {
        let mut consumer_config =
            ConsumerConfig::new(bus_topics::consumers::ROUTER, &[&config.topics.events]);
        consumer_config.group_id = config.group_id.clone();
        consumer_config.dlq_topic = config.topics.dlq.clone();
        consumer_config.vault = config.vault.clone();
        consumer_config.source = config.source.clone();
        let config = Arc::new(config);
        let mut consumer = ConsumerRunner::new(
            consumer_config,
            kafka,
            pool.clone(),
            RouterHandler::new(config.clone()),
        );
        let mut sweeper = DeadlineSweeper::new(pool, config);
        if let Some(notify) = outbox_notify {
            consumer = consumer.with_outbox_notify(notify.clone());
            sweeper = sweeper.with_outbox_notify(notify);
        }
        Self { consumer, sweeper }
    }

    /// Runs both until `shutdown` or the first failure (which stops the other).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let work = shutdown.child_token();
        let sweeper_token = work.clone();
        let sweeper = self.sweeper;
        let mut sweeping = tokio::spawn(async move { sweeper.run(sweeper_token).await });
        let consuming = self.consumer.run(work.clone());
        tokio::pin!(consuming);
        let outcome = tokio::select! {
            outcome = &mut consuming => {
                work.cancel();
                let swept = (&mut sweeping).await;
                outcome.and(flatten(swept))
            }
            swept = &mut sweeping => {
                work.cancel();
                let consumed = consuming.await;
                flatten(swept).and(consumed)
            }
        };
        outcome
    }
}

fn flatten(joined: Result<Result<(), BusError>, tokio::task::JoinError>) -> Result<(), BusError> {
    joined.unwrap_or_else(|error| Err(BusError::Handler(format!("deadline sweeper: {error}"))))
}

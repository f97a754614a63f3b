//! The running topology of a `linkwork` process, assembled in one place: the outbox
//! relay, every consumer of the chosen services and their HTTP routes. `serve` (and so
//! the demo) and the integration tests' rigs build it here, from explicit inputs, so a
//! test runs the same wiring production does, on topics and groups of its own
//! ([`Names::isolated`]).
//!
//! Building does the fallible, one-off work (migrations, the provider directory,
//! binding the HTTP listener); [`Topology::run`] then starts every task at once and
//! returns when the shutdown token is cancelled or the first task fails.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use linkwork_auth::Verifier;
use linkwork_bus::topics::{
    consumers, TopicTemplate, TopicsFile, ASC_CALL_LOG, AUDIT_EVENTS, METRICS_CALL_LOG,
    OUTCOMES_OBSERVATIONS_PSEUDONYMISED, PROVIDER_RESPONSES, REFERRALS_INBOUND, REFERRAL_EVENTS,
    TRIAGE_REFERRALS,
};
use linkwork_bus::{
    ConsumerRunner, ConsumerStatus, KafkaSettings, Names, OutboxRelay, RelayConfig,
};
use linkwork_domain::Clock;
use linkwork_ingest::{Application, IngestSettings};
use linkwork_projector::{ProjectorConfig, PseudonymKey};
use linkwork_router::SweeperStatus;
use linkwork_store::sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::serve::Service;

/// Which services a process runs. A set rather than one [`Service`], so a test can run,
/// say, ingest, the router and the projector without the metrics service's daily
/// publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Services {
    pub ingest: bool,
    pub router: bool,
    pub projector: bool,
    pub metrics: bool,
}

impl From<Service> for Services {
    fn from(service: Service) -> Self {
        let all = service == Service::All;
        Self {
            ingest: all || service == Service::Ingest,
            router: all || service == Service::Router,
            projector: all || service == Service::Projector,
            metrics: all || service == Service::Metrics,
        }
    }
}

/// The process's HTTP side: ingest's API, with the metrics routes beside it when both
/// run; the metrics routes alone when only metrics runs.
#[derive(Debug)]
pub struct HttpSettings {
    /// Where to listen; port 0 picks a free one ([`Topology::http_addr`] reports it).
    pub addr: SocketAddr,
    /// Base of absolute URLs in responses; empty for the listening address.
    pub public_base_url: String,
    /// Who may call ingest and read the metrics. Needed when either runs.
    pub verifier: Option<Verifier>,
    /// How long ingest waits for the broker's acknowledgement before answering 503.
    pub delivery_timeout: Duration,
    /// Requests a minute each client identity may make of ingest.
    pub requests_per_minute: u32,
}

impl HttpSettings {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            public_base_url: String::new(),
            verifier: None,
            delivery_timeout: IngestSettings::new(addr).delivery_timeout,
            requests_per_minute: linkwork_ingest::http::HttpConfig::default().requests_per_minute,
        }
    }
}

/// Everything a topology is built from; nothing is read from the environment here.
#[derive(Debug)]
pub struct TopologySettings {
    pub kafka: KafkaSettings,
    /// How this deployment names its topics and consumer groups.
    pub names: Names,
    pub services: Services,
    /// The time every service goes by (a manual clock in the demo).
    pub clock: Clock,
    /// The projector's pseudonym secret; needed only when the projector runs.
    pub pseudonym_key: Option<PseudonymKey>,
    /// Seals (ingest) and opens (router, projector) what identifies each person, and
    /// erases people; needed when any of the three runs.
    pub vault: Option<linkwork_vault::Vault>,
    pub http: HttpSettings,
    /// A provider directory (YAML) the router stores at start when it differs from the
    /// newest.
    pub directory_file: Option<PathBuf>,
    /// The topics declaration the router creates providers' queue topics from (before
    /// naming by [`Self::names`]).
    pub topics: TopicsFile,
    /// The date the call-log reduction is measured from; the first case's day when unset.
    pub call_log_baseline: Option<chrono::NaiveDate>,
    /// Small-number suppression of every published figure.
    pub disclosure: linkwork_metrics::disclosure::Disclosure,
    /// The shortest period the metrics are given for, in days.
    pub minimum_period_days: i64,
    /// Pseudonymised outcomes without consent on this basis (a national data opt-out
    /// excepted); `None`: only with consent.
    pub evaluation_lawful_basis: Option<String>,
    /// How often the metrics service publishes finished days to `metrics.call-log`;
    /// `None`: this process does not publish them (another metrics process does: the
    /// records are published once whichever publishes them).
    pub daily_records_every: Option<Duration>,
    /// How often the router's sweeper looks for referrals past their acceptance deadline.
    pub deadline_poll: Duration,
}

impl TopologySettings {
    /// `services` with production's defaults: the system clock, no directory file, the
    /// built-in topics declaration, daily records every 15 minutes, a deadline sweep
    /// every 5 seconds.
    pub fn new(
        kafka: KafkaSettings,
        names: Names,
        services: Services,
        http: HttpSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            kafka,
            names,
            services,
            clock: Clock::system(),
            pseudonym_key: None,
            vault: None,
            http,
            directory_file: None,
            topics: crate::topics_command::load(None)?,
            call_log_baseline: None,
            disclosure: linkwork_metrics::disclosure::Disclosure::default(),
            minimum_period_days: linkwork_metrics::http::DEFAULT_MINIMUM_PERIOD_DAYS,
            evaluation_lawful_basis: None,
            daily_records_every: Some(Duration::from_secs(15 * 60)),
            deadline_poll: linkwork_router::RouterConfig::default().deadline_poll,
        })
    }
}

/// The projector's settings named by `names`: `serve` and `replay` agree.
pub fn projector_config(names: &Names, key: PseudonymKey) -> ProjectorConfig {
    let mut config = ProjectorConfig::new(key);
    config.topics = linkwork_projector::ProjectorTopics {
        events: names.topic(REFERRAL_EVENTS),
        referrer_prefix: names.topic_prefix().to_owned(),
        pseudonymised: names.topic(OUTCOMES_OBSERVATIONS_PSEUDONYMISED),
    };
    config.group_id = names.group(consumers::PROJECTOR);
    config.dlq_topic = names.dlq(consumers::PROJECTOR);
    config
}

type TaskFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type StartTask = Box<dyn FnOnce(CancellationToken) -> TaskFuture + Send>;

/// A process's tasks, built and not yet started.
pub struct Topology {
    tasks: Vec<(&'static str, StartTask)>,
    consumers: Vec<ConsumerStatus>,
    sweeper: Option<SweeperStatus>,
    http_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<&str> = self.tasks.iter().map(|(name, _)| *name).collect();
        formatter
            .debug_struct("Topology")
            .field("tasks", &tasks)
            .field("consumers", &self.consumers.len())
            .field("sweeper", &self.sweeper.is_some())
            .field("http_addr", &self.http_addr)
            .finish()
    }
}

impl Topology {
    /// Migrates `pool` for the chosen services (the store's own migrations are the
    /// pool's maker's: `serve` runs them on connecting, test databases come with them),
    /// stores the directory file, binds the
    /// HTTP listener and assembles the relay, the consumers and the routes.
    pub async fn build(settings: TopologySettings, pool: PgPool) -> anyhow::Result<Topology> {
        let TopologySettings {
            kafka,
            names,
            services,
            clock,
            pseudonym_key,
            vault,
            http,
            directory_file,
            topics,
            call_log_baseline,
            disclosure,
            minimum_period_days,
            evaluation_lawful_basis,
            daily_records_every,
            deadline_poll,
        } = settings;
        let events_topic = names.topic(REFERRAL_EVENTS);
        if (services.ingest || services.router || services.projector) && vault.is_none() {
            anyhow::bail!(
                "ingest, the router and the projector need the vault (LINKWORK_VAULT_KEY)"
            );
        }
        let projector_config = if services.projector {
            let key = pseudonym_key.context("the projector needs a pseudonym key")?;
            let mut config = projector_config(&names, key);
            config.evaluation_lawful_basis = evaluation_lawful_basis;
            config.vault = vault.clone();
            config.ensure_referrer_topics = Some((
                kafka.clone(),
                names.declaration(&topics.only(TopicTemplate::Referrer)),
            ));
            Some(config)
        } else {
            None
        };
        if services.projector {
            linkwork_projector::migrate(&pool).await?;
        }
        if services.ingest {
            linkwork_ingest::migrate(&pool).await?;
        }
        if services.router {
            linkwork_router::migrate(&pool).await?;
            if let Some(path) = &directory_file {
                let stored =
                    crate::directory_command::apply_file(&pool, kafka.clone(), &names, path)
                        .await?;
                tracing::info!(directory = %stored, "provider directory from LINKWORK_DIRECTORY");
            }
        }
        if services.metrics {
            linkwork_metrics::migrate(&pool).await?;
        }

        let mut topology = Topology {
            tasks: Vec::new(),
            consumers: Vec::new(),
            sweeper: None,
            http_addr: None,
        };
        // One relay per process publishes everything its consumers put in the outbox.
        let relay = OutboxRelay::new(pool.clone(), &kafka, RelayConfig::default())?;
        let outbox = relay.notifier();
        topology.spawn("outbox relay", move |token| async move {
            relay.run(token).await?;
            Ok(())
        });

        let verifier = http.verifier.map(std::sync::Arc::new);
        let metrics_routes = if services.metrics {
            let verifier = verifier
                .clone()
                .context("the metrics routes need a token verifier")?;
            Some(linkwork_metrics::http::router(
                pool.clone(),
                linkwork_metrics::http::MetricsConfig {
                    baseline: call_log_baseline,
                    clock: clock.clone(),
                    secure_cookies: http.public_base_url.starts_with("https://"),
                    disclosure,
                    minimum_period_days,
                    ..linkwork_metrics::http::MetricsConfig::default()
                },
                verifier,
            ))
        } else {
            None
        };
        if services.ingest {
            let verifier = verifier.context("ingest needs a token verifier")?;
            let mut ingest = IngestSettings::new(http.addr);
            ingest.http.public_base_url = http.public_base_url.clone();
            ingest.http.clock = clock.clone();
            ingest.http.events_topic = events_topic.clone();
            ingest.http.call_log_topic = names.topic(ASC_CALL_LOG);
            ingest.http.audit_topic = names.topic(AUDIT_EVENTS);
            ingest.delivery_timeout = http.delivery_timeout;
            ingest.http.requests_per_minute = http.requests_per_minute;
            ingest.vault = vault.clone();
            let mut application =
                Application::build(ingest, &kafka, pool.clone(), verifier).await?;
            topology.http_addr = Some(application.local_addr()?);
            // One listener in one process: the metrics routes sit beside ingest's.
            if let Some(routes) = metrics_routes.clone() {
                application = application.with_routes(routes);
            }
            topology.spawn("ingest http", move |token| async move {
                application.run_until_stopped(token).await?;
                Ok(())
            });
            let rules = linkwork_fhir::IntakeRules::default();
            let mut responses_config =
                names.consumer(consumers::PROVIDER_RESPONSES, &[PROVIDER_RESPONSES]);
            responses_config.vault = vault.clone();
            let responses = ConsumerRunner::new(
                responses_config,
                kafka.clone(),
                pool.clone(),
                linkwork_ingest::responses::ProviderResponsesHandler::new(&rules.canonical_base)
                    .with_clock(clock.clone())
                    .with_events_topic(events_topic.clone())
                    .with_audit_topic(names.topic(AUDIT_EVENTS)),
            )
            .with_outbox_notify(outbox.clone());
            topology.consumers.push(responses.status());
            topology.spawn("provider.responses consumer", move |token| async move {
                responses.run(token).await?;
                Ok(())
            });
            let mut inbound_config = names.consumer(consumers::INBOUND, &[REFERRALS_INBOUND]);
            inbound_config.vault = vault.clone();
            // A raw referral becomes five times its size in what a batch holds and
            // writes (the validated referral, its sealed event, its AuditEvent, their
            // outbox rows): half the usual batch keeps ingest under 64 MiB.
            inbound_config.max_batch_bytes /= 2;
            inbound_config.in_flight_bytes /= 2;
            let inbound = ConsumerRunner::new(
                inbound_config,
                kafka.clone(),
                pool.clone(),
                linkwork_ingest::inbound::InboundHandler {
                    audit: Some(linkwork_ingest::audit::KafkaAudit {
                        topic: names.topic(AUDIT_EVENTS),
                        canonical_base: rules.canonical_base.clone(),
                    }),
                    rules,
                    clock: clock.clone(),
                    events_topic: events_topic.clone(),
                    vault: vault.clone(),
                },
            )
            .with_outbox_notify(outbox.clone());
            topology.consumers.push(inbound.status());
            topology.spawn("referrals.inbound consumer", move |token| async move {
                inbound.run(token).await?;
                Ok(())
            });
            // The index of the audit trail behind GET /fhir/AuditEvent.
            let audit = ConsumerRunner::new(
                names.consumer(consumers::AUDIT, &[AUDIT_EVENTS]),
                kafka.clone(),
                pool.clone(),
                linkwork_ingest::audit::AuditIndexer,
            )
            .with_outbox_notify(outbox.clone());
            topology.consumers.push(audit.status());
            topology.spawn("audit.events consumer", move |token| async move {
                audit.run(token).await?;
                Ok(())
            });
        }
        if services.router {
            let config = linkwork_router::RouterConfig {
                topics: linkwork_router::RouterTopics {
                    events: events_topic.clone(),
                    triage: names.topic(TRIAGE_REFERRALS),
                    dlq: names.dlq(consumers::ROUTER),
                    queue_prefix: names.topic_prefix().to_owned(),
                },
                group_id: names.group(consumers::ROUTER),
                ensure_queue_topics: Some((kafka.clone(), names.declaration(&topics))),
                clock: clock.clone(),
                deadline_poll,
                vault: vault.clone(),
                ..linkwork_router::RouterConfig::default()
            };
            let router = linkwork_router::Router::new(
                config,
                kafka.clone(),
                pool.clone(),
                Some(outbox.clone()),
            );
            topology.consumers.push(router.consumer.status());
            topology.sweeper = Some(router.sweeper.status());
            topology.spawn("router", move |token| async move {
                router.run(token).await?;
                Ok(())
            });
        }
        if let Some(config) = projector_config {
            let projector = linkwork_projector::Projector::new(
                config,
                kafka.clone(),
                pool.clone(),
                Some(outbox.clone()),
            );
            topology.consumers.push(projector.status());
            topology.spawn("projector", move |token| async move {
                projector.run(token).await?;
                Ok(())
            });
        }
        if services.metrics {
            if !services.ingest {
                if let Some(routes) = metrics_routes {
                    let listener = tokio::net::TcpListener::bind(http.addr)
                        .await
                        .with_context(|| format!("binding {}", http.addr))?;
                    let address = listener.local_addr()?;
                    tracing::info!(%address, "metrics listening");
                    topology.http_addr = Some(address);
                    topology.spawn("metrics http", move |token| async move {
                        axum::serve(listener, routes)
                            .with_graceful_shutdown(async move { token.cancelled().await })
                            .await?;
                        Ok(())
                    });
                }
            }
            if let Some(every) = daily_records_every {
                let (pool_for_days, daily_topic) = (pool.clone(), names.topic(METRICS_CALL_LOG));
                let clock_for_days = clock.clone();
                topology.spawn("daily call-log records", move |token| async move {
                    linkwork_metrics::daily::run(
                        pool_for_days,
                        daily_topic,
                        call_log_baseline,
                        clock_for_days,
                        every,
                        token,
                    )
                    .await?;
                    Ok(())
                });
            }
            let runner = ConsumerRunner::new(
                names.consumer(consumers::METRICS, &[ASC_CALL_LOG]),
                kafka.clone(),
                pool.clone(),
                linkwork_metrics::call_log::CallLogProjection,
            )
            .with_outbox_notify(outbox.clone());
            topology.consumers.push(runner.status());
            topology.spawn("metrics consumer", move |token| async move {
                runner.run(token).await?;
                Ok(())
            });
        }
        Ok(topology)
    }

    /// Every consumer of the topology, for readiness and per-consumer metrics.
    pub fn consumers(&self) -> &[ConsumerStatus] {
        &self.consumers
    }

    /// The router's deadline sweeper, when the router runs.
    pub fn sweeper(&self) -> Option<&SweeperStatus> {
        self.sweeper.as_ref()
    }

    /// Where the HTTP routes listen (ingest's, or the metrics service's alone); `None`
    /// when neither runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Adds a task that runs beside the others (the admin listener): it is given the
    /// topology's own token, and its failure, or its stopping before shutdown, stops
    /// the rest like any other task's.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks
            .push((name, Box::new(move |token| Box::pin(start(token)))));
    }

    /// Starts every task and runs until `shutdown` is cancelled or one task fails,
    /// stops, or panics; that cancels the others. Returns the first failure once all
    /// have stopped.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let work = shutdown.child_token();
        let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
        for (name, start) in self.tasks {
            let task = start(work.clone());
            tasks.spawn(async move {
                task.await?;
                Ok(name)
            });
        }
        let mut failure = None;
        while let Some(finished) = tasks.join_next().await {
            match finished {
                Ok(Ok(name)) if work.is_cancelled() => tracing::info!(task = name, "stopped"),
                Ok(Ok(name)) => {
                    tracing::error!(task = name, "stopped unexpectedly; stopping the others");
                    failure.get_or_insert(anyhow::anyhow!("{name} stopped unexpectedly"));
                    work.cancel();
                }
                Ok(Err(error)) => {
                    tracing::error!(error = %format!("{error:#}"), "a task failed; stopping the others");
                    failure.get_or_insert(error);
                    work.cancel();
                }
                Err(panic) => {
                    tracing::error!(error = %panic, "a task panicked; stopping the others");
                    failure.get_or_insert(anyhow::anyhow!("a task panicked: {panic}"));
                    work.cancel();
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

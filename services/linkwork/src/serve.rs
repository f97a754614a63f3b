//! `linkwork serve <service>`: the long-running services, in one process or several.

use anyhow::Context;
use linkwork_bus::topics::{
    consumers, ASC_CALL_LOG, METRICS_CALL_LOG, OUTCOMES_OBSERVATIONS,
    OUTCOMES_OBSERVATIONS_PSEUDONYMISED, PROVIDER_RESPONSES, REFERRALS_INBOUND, REFERRAL_EVENTS,
    TRIAGE_REFERRALS,
};
use linkwork_bus::{ConsumerRunner, OutboxRelay, RelayConfig};
use linkwork_domain::Clock;
use linkwork_ingest::{Application, IngestSettings};
use linkwork_projector::ProjectorConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// FHIR and BaRS intake over HTTP, `referrals.inbound`, the ASC call log, and
    /// providers' responses over HTTP and `provider.responses`.
    Ingest,
    /// Routing to community providers, re-routing, deadlines, triage.
    Router,
    /// Read models from referral.events, outcome Observations out.
    Projector,
    /// Call-log reduction, referral and outcome metrics: JSON, MeasureReports,
    /// Prometheus, the dashboard, daily records on metrics.call-log.
    Metrics,
    /// Every service in one process.
    All,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => "ingest",
            Service::Router => "router",
            Service::Projector => "projector",
            Service::Metrics => "metrics",
            Service::All => "all",
        }
    }
}

/// The projector's settings with this deployment's names: `serve` and `replay` agree.
pub fn projector_config(settings: &Settings) -> anyhow::Result<ProjectorConfig> {
    let names = &settings.names;
    let mut config = ProjectorConfig::new(settings.pseudonym_key()?);
    config.topics = linkwork_projector::ProjectorTopics {
        events: names.topic(REFERRAL_EVENTS),
        observations: names.topic(OUTCOMES_OBSERVATIONS),
        pseudonymised: names.topic(OUTCOMES_OBSERVATIONS_PSEUDONYMISED),
    };
    config.group_id = names.group(consumers::PROJECTOR);
    config.dlq_topic = names.dlq(consumers::PROJECTOR);
    Ok(config)
}

/// Runs `service` until `shutdown` is cancelled or one of its tasks fails (which
/// cancels the others and makes the command fail).
pub async fn run(
    settings: &Settings,
    service: Service,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_clock(settings, service, shutdown, Clock::system()).await
}

/// [`run`] with the time every service goes by: the system clock but in the demo,
/// which moves a manual one so a borough's year passes in minutes.
pub async fn run_with_clock(
    settings: &Settings,
    service: Service,
    shutdown: CancellationToken,
    clock: Clock,
) -> anyhow::Result<()> {
    let kafka = settings.kafka()?.clone();
    let names = &settings.names;
    let events_topic = names.topic(REFERRAL_EVENTS);
    let pool = linkwork_store::connect(&settings.database()?)
        .await
        .context("connecting to LINKWORK_DATABASE_URL")?;
    linkwork_store::migrate(&pool).await?;
    let with_ingest = matches!(service, Service::Ingest | Service::All);
    let with_metrics = matches!(service, Service::Metrics | Service::All);
    let with_router = matches!(service, Service::Router | Service::All);
    let with_projector = matches!(service, Service::Projector | Service::All);
    let projector_config = if with_projector {
        Some(projector_config(settings)?)
    } else {
        None
    };
    if with_projector {
        linkwork_projector::migrate(&pool).await?;
    }
    if with_ingest {
        linkwork_ingest::migrate(&pool).await?;
    }
    if with_router {
        linkwork_router::migrate(&pool).await?;
        if let Some(path) = &settings.directory_file {
            let stored =
                crate::directory_command::apply_file(&pool, kafka.clone(), names, path).await?;
            tracing::info!(directory = %stored, "provider directory from LINKWORK_DIRECTORY");
        }
    }
    if with_metrics {
        linkwork_metrics::migrate(&pool).await?;
    }

    let work = shutdown.child_token();
    let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
    // Every consumer of this process, for the admin listener's readiness and metrics.
    let mut consumers: Vec<linkwork_bus::ConsumerStatus> = Vec::new();
    // One relay per process publishes everything its consumers put in the outbox.
    let relay = OutboxRelay::new(pool.clone(), &kafka, RelayConfig::default())?;
    let outbox = relay.notifier();
    let token = work.clone();
    tasks.spawn(async move {
        relay.run(token).await?;
        Ok("outbox relay")
    });

    let metrics_routes = with_metrics.then(|| {
        linkwork_metrics::http::router(
            pool.clone(),
            linkwork_metrics::http::MetricsConfig {
                baseline: settings.call_log_baseline,
                ..linkwork_metrics::http::MetricsConfig::default()
            },
        )
    });
    if with_ingest {
        let verifier = linkwork_auth::Verifier::from_env()?;
        let mut ingest = IngestSettings::new(settings.http_addr);
        ingest.http.public_base_url = settings.public_base_url.clone();
        ingest.http.clock = clock.clone();
        ingest.http.events_topic = events_topic.clone();
        ingest.http.call_log_topic = names.topic(ASC_CALL_LOG);
        let mut application = Application::build(ingest, &kafka, pool.clone(), verifier).await?;
        // One listener in one process: the metrics routes sit beside ingest's.
        if let Some(routes) = metrics_routes.clone() {
            application = application.with_routes(routes);
        }
        let token = work.clone();
        tasks.spawn(async move {
            application.run_until_stopped(token).await?;
            Ok("ingest http")
        });
        let rules = linkwork_fhir::IntakeRules::default();
        let responses = ConsumerRunner::new(
            names.consumer(consumers::PROVIDER_RESPONSES, &[PROVIDER_RESPONSES]),
            kafka.clone(),
            pool.clone(),
            linkwork_ingest::responses::ProviderResponsesHandler::new(&rules.canonical_base)
                .with_clock(clock.clone())
                .with_events_topic(events_topic.clone()),
        )
        .with_outbox_notify(outbox.clone());
        consumers.push(responses.status());
        let token = work.clone();
        tasks.spawn(async move {
            responses.run(token).await?;
            Ok("provider.responses consumer")
        });
        let runner = ConsumerRunner::new(
            names.consumer(consumers::INBOUND, &[REFERRALS_INBOUND]),
            kafka.clone(),
            pool.clone(),
            linkwork_ingest::inbound::InboundHandler {
                rules,
                clock: clock.clone(),
                events_topic: events_topic.clone(),
            },
        )
        .with_outbox_notify(outbox.clone());
        consumers.push(runner.status());
        let token = work.clone();
        tasks.spawn(async move {
            runner.run(token).await?;
            Ok("referrals.inbound consumer")
        });
    }
    if with_router {
        let config = linkwork_router::RouterConfig {
            topics: linkwork_router::RouterTopics {
                events: events_topic.clone(),
                triage: names.topic(TRIAGE_REFERRALS),
                dlq: names.dlq(consumers::ROUTER),
                queue_prefix: names.topic_prefix().to_owned(),
            },
            group_id: names.group(consumers::ROUTER),
            ensure_queue_topics: Some((
                kafka.clone(),
                names.declaration(&crate::topics_command::load(None)?),
            )),
            clock: clock.clone(),
            ..linkwork_router::RouterConfig::default()
        };
        let router =
            linkwork_router::Router::new(config, kafka.clone(), pool.clone(), Some(outbox.clone()));
        consumers.push(router.consumer.status());
        let token = work.clone();
        tasks.spawn(async move {
            router.run(token).await?;
            Ok("router")
        });
    }
    if let Some(config) = projector_config {
        let projector = linkwork_projector::Projector::new(
            config,
            kafka.clone(),
            pool.clone(),
            Some(outbox.clone()),
        );
        consumers.push(projector.status());
        let token = work.clone();
        tasks.spawn(async move {
            projector.run(token).await?;
            Ok("projector")
        });
    }
    if with_metrics {
        if !with_ingest {
            if let Some(routes) = metrics_routes {
                let listener = tokio::net::TcpListener::bind(settings.http_addr)
                    .await
                    .with_context(|| format!("binding {}", settings.http_addr))?;
                tracing::info!(address = %settings.http_addr, "metrics listening");
                let token = work.clone();
                tasks.spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await?;
                    Ok("metrics http")
                });
            }
        }
        let (pool_for_days, baseline, token) =
            (pool.clone(), settings.call_log_baseline, work.clone());
        let daily_topic = names.topic(METRICS_CALL_LOG);
        tasks.spawn(async move {
            linkwork_metrics::daily::run(
                pool_for_days,
                daily_topic,
                baseline,
                std::time::Duration::from_secs(15 * 60),
                token,
            )
            .await?;
            Ok("daily call-log records")
        });
        let runner = ConsumerRunner::new(
            names.consumer(consumers::METRICS, &[ASC_CALL_LOG]),
            kafka.clone(),
            pool.clone(),
            linkwork_metrics::call_log::CallLogProjection,
        )
        .with_outbox_notify(outbox.clone());
        consumers.push(runner.status());
        let token = work.clone();
        tasks.spawn(async move {
            runner.run(token).await?;
            Ok("metrics consumer")
        });
    }

    let admin = crate::admin::router(crate::admin::Admin {
        service: service.name(),
        pool: pool.clone(),
        broker: linkwork_bus::health::BrokerProbe::new(&kafka)?,
        consumers,
    });
    let listener = tokio::net::TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", settings.admin_addr))?;
    tracing::info!(address = %listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
    let token = work.clone();
    tasks.spawn(async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await?;
        Ok("admin http")
    });

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

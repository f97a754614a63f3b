//! `linkwork serve <service>`: the long-running services, in one process or several.

use anyhow::Context;
use linkwork_domain::Clock;
use linkwork_projector::ProjectorConfig;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::topology::{HttpSettings, Services, Topology, TopologySettings};

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
    let mut config = crate::topology::projector_config(&settings.names, settings.pseudonym_key()?);
    config.evaluation_lawful_basis = settings.evaluation_lawful_basis.clone();
    config.vault = Some(settings.vault()?);
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
///
/// The topology is [`Topology`]'s; this reads it from the environment's settings and
/// adds the admin listener, which only a whole process has.
pub async fn run_with_clock(
    settings: &Settings,
    service: Service,
    shutdown: CancellationToken,
    clock: Clock,
) -> anyhow::Result<()> {
    let kafka = settings.kafka()?.clone();
    let services = Services::from(service);
    let pool = linkwork_store::connect(&settings.database()?)
        .await
        .context("connecting to LINKWORK_DATABASE_URL")?;
    linkwork_store::migrate(&pool).await?;
    let mut http = HttpSettings::new(settings.http_addr);
    http.public_base_url = settings.public_base_url.clone();
    http.requests_per_minute = settings.requests_per_minute;
    let mut topology_settings =
        TopologySettings::new(kafka.clone(), settings.names.clone(), services, http)?;
    if services.projector {
        topology_settings.pseudonym_key = Some(settings.pseudonym_key()?);
    }
    if services.ingest || services.router || services.projector {
        topology_settings.vault = Some(settings.vault()?);
    }
    if services.ingest || services.metrics {
        topology_settings.http.verifier = Some(linkwork_auth::Verifier::from_env()?);
    }
    topology_settings.clock = clock;
    topology_settings.directory_file = settings.directory_file.clone();
    topology_settings.call_log_baseline = settings.call_log_baseline;
    topology_settings.disclosure = linkwork_metrics::disclosure::Disclosure {
        threshold: settings.small_number_threshold,
    };
    topology_settings.minimum_period_days = settings.minimum_period_days;
    topology_settings.evaluation_lawful_basis = settings.evaluation_lawful_basis.clone();
    let mut topology = Topology::build(topology_settings, pool.clone()).await?;

    let admin = crate::admin::router(crate::admin::Admin {
        service: service.name(),
        pool,
        broker: linkwork_bus::health::BrokerProbe::new(&kafka)?,
        consumers: topology.consumers().to_vec(),
        sweeper: topology.sweeper().cloned(),
    });
    let listener = tokio::net::TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", settings.admin_addr))?;
    tracing::info!(address = %listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
    topology.spawn("admin http", move |token| async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await?;
        Ok(())
    });
    topology.run(shutdown).await
}

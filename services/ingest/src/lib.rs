//! Ingest: referrals from GP practices, hospitals, the council contact centre, Adult
//! Social Care and self-referral, as FHIR R4 over HTTP (single ServiceRequests, BaRS
//! messages, batch and transaction Bundles) and as raw FHIR on `referrals.inbound`;
//! and the ASC call log. Each accepted referral becomes `ReferralReceived` on
//! `referral.events`; each refusal is an OperationOutcome naming what is wrong.

pub mod audit;
pub mod call_log;
pub mod capability;
pub mod erasure;
pub mod http;
pub mod inbound;
pub mod intake;
pub mod provider;
pub mod receipts;
pub mod responses;

use std::net::SocketAddr;
use std::time::Duration;

use linkwork_auth::Verifier;
use linkwork_bus::{KafkaSettings, Producer};
use linkwork_fhir::IntakeRules;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use http::bars::BarsTargets;
pub use http::HttpConfig;

/// The ingest service's migrations (run after the store's).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

pub async fn migrate(pool: &PgPool) -> Result<(), linkwork_store::StoreError> {
    migrator().run(pool).await?;
    // Ingest seals referrals with the vault and erases people from it.
    linkwork_vault::migrator().run(pool).await?;
    // The provider API records its unprojected events in the read side's table.
    linkwork_projection::migrate(pool).await?;
    Ok(())
}

/// Everything ingest needs to start.
#[derive(Debug)]
pub struct IngestSettings {
    pub http_addr: SocketAddr,
    pub http: HttpConfig,
    pub rules: IntakeRules,
    pub bars_targets: BarsTargets,
    /// How long to wait for the broker's acknowledgement before answering 503.
    pub delivery_timeout: Duration,
    /// Seals what identifies each person on the log, and erases people
    /// (`LINKWORK_VAULT_KEY`); `None` leaves referrals unsealed (tests of other things).
    pub vault: Option<linkwork_vault::Vault>,
}

impl IngestSettings {
    pub fn new(http_addr: SocketAddr) -> Self {
        let rules = IntakeRules::default();
        let bars_targets = BarsTargets::new(&rules.canonical_base);
        Self {
            http_addr,
            http: HttpConfig::default(),
            rules,
            bars_targets,
            delivery_timeout: Duration::from_secs(5),
            vault: None,
        }
    }
}

/// The HTTP side of ingest, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// For the limits put on routes served beside ingest's.
    state: http::AppState,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Application")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener (port 0 picks a free port) and builds the routes.
    pub async fn build(
        mut settings: IngestSettings,
        kafka: &KafkaSettings,
        pool: PgPool,
        verifier: impl Into<std::sync::Arc<Verifier>>,
    ) -> Result<Self, std::io::Error> {
        let listener = TcpListener::bind(settings.http_addr).await?;
        if settings.http.public_base_url.is_empty() {
            settings.http.public_base_url = format!("http://{}", listener.local_addr()?);
        }
        let producer = Producer::tracking_sends(kafka, settings.delivery_timeout)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let intake = intake::Intake::new(
            pool.clone(),
            producer.clone(),
            kafka.clone(),
            settings.delivery_timeout,
        )
        .with_events_topic(settings.http.events_topic.clone())
        .with_clock(settings.http.clock.clone())
        .with_vault(settings.vault.clone())
        .with_group_commit(intake::GroupCommit::default());
        let state = http::AppState::new(
            intake,
            verifier.into(),
            settings.rules,
            settings.bars_targets,
            settings.http,
            pool,
            producer,
        );
        Ok(Self {
            listener,
            router: http::router(state.clone()),
            state,
        })
    }

    /// Serves `routes` beside ingest's (`linkwork serve all` adds the metrics routes),
    /// under the same limits: they count against `max_in_flight` and are cut off at
    /// the request time limit.
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        self.router = self.router.merge(http::limited(routes, &self.state));
        self
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or(0)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then finishes requests in flight.
    pub async fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), std::io::Error> {
        tracing::info!(address = %self.listener.local_addr()?, "ingest listening");
        // The peer address goes to the audit trail ("from where").
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

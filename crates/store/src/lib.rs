//! Postgres for linkwork: the pool, migrations, and the tables every consumer shares
//! (offsets, processed event ids, the outbox).

pub mod dedup;
pub mod offsets;
pub mod outbox;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, PgPool};

pub use sqlx;

/// Database settings. The URL may carry a password, so it is a secret.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// Connections opened when the pool is and kept open (default none: opened on
    /// demand). Opening one costs milliseconds of CPU (the TLS handshake) and the
    /// request that asked waits for it; a service warms its whole pool
    /// ([`DatabaseSettings::warm`]).
    pub min_connections: u32,
    pub acquire_timeout: Duration,
}

impl DatabaseSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(10),
        }
    }

    /// Every connection the pool may use opened at once and kept open: a long-running
    /// service under load then never waits on a new connection (opened on demand, they
    /// were a seventh of ingest's CPU while load rose).
    pub fn warm(mut self) -> Self {
        self.min_connections = self.max_connections;
        self
    }

    pub fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        let options: PgConnectOptions = self
            .url
            .expose_secret()
            .parse()
            .map_err(|error: sqlx::Error| StoreError::Config(error.to_string()))?;
        // Statement logging at INFO would put query parameters (identifiable data) in logs.
        Ok(options
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2))
            .application_name("linkwork"))
    }
}

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database configuration is invalid: {0}")]
    Config(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another consumer instance advanced these offsets: this instance no longer owns
    /// the partitions and must not apply its batch.
    #[error("consumer {consumer} no longer owns {partitions:?}: stored offsets moved")]
    Fenced {
        consumer: String,
        partitions: Vec<(String, i32)>,
    },
}

impl StoreError {
    /// Errors worth retrying after a pause: lost connections, timeouts, serialization
    /// conflicts and deadlocks. Everything else is a bug or bad configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => is_transient(error),
            StoreError::Fenced { .. } => false,
            StoreError::Config(_) | StoreError::Migrate(_) => false,
        }
    }
}

/// Whether a sqlx error is worth retrying.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => matches!(
            database.code().as_deref(),
            // serialization_failure, deadlock_detected, admin_shutdown, crash_shutdown,
            // cannot_connect_now, too_many_connections, connection_failure class
            Some(
                "40001"
                    | "40P01"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "53300"
                    | "08000"
                    | "08003"
                    | "08006"
            )
        ),
        _ => false,
    }
}

/// Opens a pool, with `min_connections` of its connections opened now and kept open.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections.min(settings.max_connections))
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(settings.connect_options()?)
        .await?;
    Ok(pool)
}

/// The store's own migrations (offsets, de-duplication, outbox). Services run theirs
/// after these; versions are timestamps, so migrators sharing one database never clash.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Runs the store's migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    migrator().run(pool).await?;
    Ok(())
}

/// Runs `work` in a transaction: commits when it returns `Ok`, rolls back on `Err`
/// (dropping an uncommitted sqlx transaction rolls it back). A convenience for writes
/// outside a consumer; the consumer runner, the router's sweeper and ingest's intake
/// open their own transactions, with the same all-or-nothing rule.
pub async fn in_transaction<T, E, F>(pool: &PgPool, work: F) -> Result<T, E>
where
    F: AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let mut transaction = pool.begin().await?;
    match work(&mut transaction).await {
        Ok(value) => {
            transaction.commit().await?;
            Ok(value)
        }
        Err(error) => {
            if let Err(rollback_error) = transaction.rollback().await {
                // The connection is dropped either way; Postgres rolls back on close.
                tracing::warn!(error = %rollback_error, "rollback failed");
            }
            Err(error)
        }
    }
}

//! The metrics service: evidence for commissioners, ASC and data teams, computed
//! continuously from the event log: the ASC call log and its reduction (from
//! `asc.call-log`), referral, provider and outcome metrics (from the projector's read
//! models of `referral.events`), as JSON, FHIR MeasureReports, Prometheus gauges, a
//! dashboard, a daily record on `metrics.call-log` and an evaluation report.

pub mod call_log;
pub mod daily;
pub mod dashboard;
pub mod disclosure;
pub mod http;
pub mod measure;
pub mod referrals;
pub mod report;
pub mod stats;

/// The metrics service's migrations (run after the store's).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Runs the metrics service's migrations.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), linkwork_store::StoreError> {
    migrator().run(pool).await?;
    Ok(())
}

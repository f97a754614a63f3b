//! The metrics service: evidence for commissioners, ASC and data teams, computed
//! continuously from the event log. So far: the ASC call log as a read model, and the
//! call-log reduction it shows.

pub mod call_log;

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

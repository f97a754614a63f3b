//! Reading the read models: what the FHIR read API serves and what the projector's
//! outputs gather. Every function takes the schema to read (`projection` live, another
//! while a replay builds), since table names are not qualified in the DDL.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::ObservationRow;
use crate::quote_ident;

pub use crate::LIVE_SCHEMA;

/// A referral as the read API needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReferralView {
    pub referral_id: Uuid,
    pub source: String,
    pub status: String,
    pub provider_id: Option<String>,
    pub tried_providers: Vec<String>,
    pub attempt: i32,
    pub version: i64,
    pub nhs_number: Option<String>,
    pub last_updated: DateTime<Utc>,
    pub service_request: Value,
    /// The per-submission self-referral identity that sent it, if one did.
    pub submitted_by: Option<String>,
}

/// One version of a referral.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionView {
    pub version: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub status: String,
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskView {
    pub task_id: Uuid,
    pub referral_id: Uuid,
    pub attempt: i32,
    pub provider_id: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub authored_on: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub accept_by: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActivityView {
    pub activity_name: String,
    pub kind: String,
    pub attended_on: NaiveDate,
}

/// What the summary for the referrer gathers.
#[derive(Debug, Clone, Default)]
pub struct SummaryParts {
    pub task: Option<TaskView>,
    pub activities: Vec<ActivityView>,
    pub observations: Vec<ObservationRow>,
}

const REFERRAL_COLUMNS: &str = "referral_id, source, status, provider_id, tried_providers, \
    attempt, version, nhs_number, last_updated, service_request, submitted_by";

pub async fn referral(
    connection: &mut PgConnection,
    schema: &str,
    id: Uuid,
) -> Result<Option<ReferralView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REFERRAL_COLUMNS} FROM {schema}.referrals WHERE referral_id = $1"
    ))
    .bind(id)
    .fetch_optional(connection)
    .await
}

/// Referrals matching a search, in a stable order (last updated, then id), one page.
#[derive(Debug, Clone, Default)]
pub struct ReferralSearch {
    pub nhs_number: Option<String>,
    pub provider: Option<String>,
    pub status: Option<String>,
    /// Only referrals this source sent (a referrer searching).
    pub source: Option<String>,
    /// Only referrals this provider has held (a provider searching).
    pub held_by: Option<String>,
    /// Only referrals this per-submission identity sent (a self-referrer searching).
    pub submitted_by: Option<String>,
    pub offset: i64,
    pub count: i64,
}

pub async fn search_referrals(
    connection: &mut PgConnection,
    schema: &str,
    search: &ReferralSearch,
) -> Result<(i64, Vec<ReferralView>), sqlx::Error> {
    let filter = "($1::TEXT IS NULL OR nhs_number = $1)
        AND ($2::TEXT IS NULL OR provider_id = $2)
        AND ($3::TEXT IS NULL OR status = $3)
        AND ($4::TEXT IS NULL OR source = $4)
        AND ($5::TEXT IS NULL OR $5 = ANY(tried_providers))
        AND ($6::TEXT IS NULL OR submitted_by = $6)";
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.referrals WHERE {filter}"
    ))
    .bind(&search.nhs_number)
    .bind(&search.provider)
    .bind(&search.status)
    .bind(&search.source)
    .bind(&search.held_by)
    .bind(&search.submitted_by)
    .fetch_one(&mut *connection)
    .await?;
    let page = sqlx::query_as(&format!(
        "SELECT {REFERRAL_COLUMNS} FROM {schema}.referrals WHERE {filter}
         ORDER BY last_updated DESC, referral_id OFFSET $7 LIMIT $8"
    ))
    .bind(&search.nhs_number)
    .bind(&search.provider)
    .bind(&search.status)
    .bind(&search.source)
    .bind(&search.held_by)
    .bind(&search.submitted_by)
    .bind(search.offset)
    .bind(search.count)
    .fetch_all(&mut *connection)
    .await?;
    Ok((total, page))
}

pub async fn history(
    connection: &mut PgConnection,
    schema: &str,
    id: Uuid,
) -> Result<Vec<VersionView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT version, event_type, occurred_at, status, provider_id
         FROM {schema}.history WHERE referral_id = $1 ORDER BY version DESC"
    ))
    .bind(id)
    .fetch_all(connection)
    .await
}

const TASK_COLUMNS: &str = "task_id, referral_id, attempt, provider_id, status, status_reason, \
    authored_on, last_modified, accept_by, version";

pub async fn task(
    connection: &mut PgConnection,
    schema: &str,
    id: Uuid,
) -> Result<Option<TaskView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM {schema}.tasks WHERE task_id = $1"
    ))
    .bind(id)
    .fetch_optional(connection)
    .await
}

/// The referral's latest Task.
pub async fn latest_task(
    connection: &mut PgConnection,
    schema: &str,
    referral: Uuid,
) -> Result<Option<TaskView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM {schema}.tasks WHERE referral_id = $1 ORDER BY attempt DESC LIMIT 1"
    ))
    .bind(referral)
    .fetch_optional(connection)
    .await
}

#[derive(sqlx::FromRow)]
struct ObservationRecord {
    observation_id: Uuid,
    referral_id: Uuid,
    provider_id: String,
    instrument: String,
    timepoint: String,
    measure: Value,
    total: Option<i16>,
    effective_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    version: i64,
}

fn static_code(code: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|known| **known == code)
        .copied()
        .unwrap_or("unknown")
}

pub async fn observations_in(
    connection: &mut PgConnection,
    schema: &str,
    referral: Uuid,
) -> Result<Vec<ObservationRow>, sqlx::Error> {
    let records: Vec<ObservationRecord> = sqlx::query_as(&format!(
        "SELECT observation_id, referral_id, provider_id, instrument, timepoint, measure, total,
                effective_at, recorded_at, version
         FROM {schema}.observations WHERE referral_id = $1 ORDER BY effective_at, observation_id"
    ))
    .bind(referral)
    .fetch_all(connection)
    .await?;
    Ok(records
        .into_iter()
        .map(ObservationRecord::into_row)
        .collect())
}

impl ObservationRecord {
    fn into_row(self) -> ObservationRow {
        let instrument = linkwork_domain::Instrument::ALL
            .iter()
            .map(|instrument| instrument.code())
            .find(|code| *code == self.instrument)
            .unwrap_or("unknown");
        ObservationRow {
            observation_id: self.observation_id,
            referral_id: self.referral_id,
            provider_id: self.provider_id,
            instrument,
            timepoint: static_code(&self.timepoint, &["baseline", "interim", "follow-up"]),
            measure: self.measure,
            total: self.total.and_then(|total| u8::try_from(total).ok()),
            effective_at: self.effective_at,
            recorded_at: self.recorded_at,
            version: u64::try_from(self.version).unwrap_or_default(),
        }
    }
}

/// The observations of each of `referrals` (those that have any), each referral's in
/// the order [`observations_in`] gives, in one query.
pub async fn observations_of(
    connection: &mut PgConnection,
    schema: &str,
    referrals: &[Uuid],
) -> Result<HashMap<Uuid, Vec<ObservationRow>>, sqlx::Error> {
    let records: Vec<ObservationRecord> = sqlx::query_as(&format!(
        "SELECT observation_id, referral_id, provider_id, instrument, timepoint, measure, total,
                effective_at, recorded_at, version
         FROM {}.observations WHERE referral_id = ANY($1)
         ORDER BY referral_id, effective_at, observation_id",
        quote_ident(schema)
    ))
    .bind(referrals)
    .fetch_all(connection)
    .await?;
    let mut found: HashMap<Uuid, Vec<ObservationRow>> = HashMap::new();
    for record in records {
        found
            .entry(record.referral_id)
            .or_default()
            .push(record.into_row());
    }
    Ok(found)
}

/// What the summary for the referrer gathers, for each of `referrals`, in three
/// queries (a referral with nothing recorded gets empty parts).
pub async fn summary_parts_of(
    connection: &mut PgConnection,
    schema: &str,
    referrals: &[Uuid],
) -> Result<HashMap<Uuid, SummaryParts>, sqlx::Error> {
    let quoted = quote_ident(schema);
    let mut parts: HashMap<Uuid, SummaryParts> = referrals
        .iter()
        .map(|id| (*id, SummaryParts::default()))
        .collect();
    let tasks: Vec<TaskView> = sqlx::query_as(&format!(
        "SELECT DISTINCT ON (referral_id) {TASK_COLUMNS} FROM {quoted}.tasks
         WHERE referral_id = ANY($1) ORDER BY referral_id, attempt DESC"
    ))
    .bind(referrals)
    .fetch_all(&mut *connection)
    .await?;
    for task in tasks {
        if let Some(part) = parts.get_mut(&task.referral_id) {
            part.task = Some(task);
        }
    }
    let activities: Vec<(Uuid, String, String, NaiveDate)> = sqlx::query_as(&format!(
        "SELECT referral_id, activity_name, kind, attended_on FROM {quoted}.activities
         WHERE referral_id = ANY($1) ORDER BY referral_id, attended_on, event_id"
    ))
    .bind(referrals)
    .fetch_all(&mut *connection)
    .await?;
    for (referral, activity_name, kind, attended_on) in activities {
        if let Some(part) = parts.get_mut(&referral) {
            part.activities.push(ActivityView {
                activity_name,
                kind,
                attended_on,
            });
        }
    }
    for (referral, observations) in observations_of(connection, schema, referrals).await? {
        if let Some(part) = parts.get_mut(&referral) {
            part.observations = observations;
        }
    }
    Ok(parts)
}

//! The read-model rows the projector keeps per referral, and their batched reads and
//! writes. A batch loads every referral it touches in one query, applies its events in
//! memory, and writes each table back in one statement (`jsonb_populate_recordset`
//! takes a whole batch as one JSON parameter).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use linkwork_domain::referral::{Referral, Status};
use linkwork_domain::{ProviderId, ReferralId, Source};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// A referral as the projector holds it between events: the domain aggregate plus
/// what outputs need (who the person is, for Observations and pseudonyms).
#[derive(Debug, Clone)]
pub struct Projected {
    pub state: Referral,
    pub nhs_number: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub postcode: Option<String>,
    pub last_updated: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Set when the row is new in this batch (inserted with its ServiceRequest).
    pub new_row: Option<NewReferral>,
}

/// The columns written once, when the referral is received.
#[derive(Debug, Clone, Serialize)]
pub struct NewReferral {
    pub source_identifier_system: String,
    pub source_identifier_value: String,
    pub needs: Vec<String>,
    pub priority: String,
    pub requester: Option<String>,
    pub asc_case_id: Option<String>,
    pub authored_on: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub service_request: serde_json::Value,
    pub patient: Option<serde_json::Value>,
}

#[derive(Debug, sqlx::FromRow)]
struct StateRow {
    referral_id: Uuid,
    source: String,
    content_hash: String,
    status: String,
    provider_id: Option<String>,
    attempt: i32,
    accept_by: Option<DateTime<Utc>>,
    tried_providers: Vec<String>,
    consent_to_evaluation: bool,
    first_contact_at: Option<DateTime<Utc>>,
    contacts: i32,
    activities: i32,
    observation_ids: Vec<Uuid>,
    version: i64,
    nhs_number: Option<String>,
    birth_date: Option<NaiveDate>,
    postcode: Option<String>,
    last_updated: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

/// A read model that does not parse back: written by a newer projector, or edited.
#[derive(Debug, thiserror::Error)]
#[error("read model row for referral {referral} is corrupt: {problem}")]
pub struct CorruptRow {
    pub referral: Uuid,
    pub problem: String,
}

impl StateRow {
    fn into_projected(self) -> Result<Projected, CorruptRow> {
        let corrupt = |problem: String| CorruptRow {
            referral: self.referral_id,
            problem,
        };
        let provider = |id: &str| ProviderId::parse(id).map_err(|error| corrupt(error.to_string()));
        let state = Referral {
            id: ReferralId::from_uuid(self.referral_id),
            source: Source::parse(&self.source).map_err(|error| corrupt(error.to_string()))?,
            content_hash: self.content_hash.clone(),
            status: self.status.parse::<Status>().map_err(corrupt)?,
            provider: self.provider_id.as_deref().map(provider).transpose()?,
            attempt: u32::try_from(self.attempt).map_err(|error| corrupt(error.to_string()))?,
            accept_by: self.accept_by,
            tried_providers: self
                .tried_providers
                .iter()
                .map(|id| provider(id))
                .collect::<Result<_, _>>()?,
            consent_to_evaluation: self.consent_to_evaluation,
            first_contact_at: self.first_contact_at,
            contacts: u32::try_from(self.contacts).map_err(|error| corrupt(error.to_string()))?,
            activities: u32::try_from(self.activities)
                .map_err(|error| corrupt(error.to_string()))?,
            observation_ids: self.observation_ids.clone(),
            version: u64::try_from(self.version).map_err(|error| corrupt(error.to_string()))?,
        };
        Ok(Projected {
            state,
            nhs_number: self.nhs_number,
            birth_date: self.birth_date,
            postcode: self.postcode,
            last_updated: self.last_updated,
            closed_at: self.closed_at,
            new_row: None,
        })
    }
}

/// Why a batch's reads or writes failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
}

/// Loads the referrals `ids` (those that exist).
pub async fn load(
    connection: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<ReferralId, Projected>, ModelError> {
    let rows: Vec<StateRow> = sqlx::query_as(
        "SELECT referral_id, source, content_hash, status, provider_id, attempt, accept_by,
                tried_providers, consent_to_evaluation, first_contact_at, contacts, activities,
                observation_ids, version, nhs_number, birth_date, postcode, last_updated, closed_at
         FROM referrals WHERE referral_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut loaded = HashMap::with_capacity(rows.len());
    for row in rows {
        let projected = row.into_projected()?;
        loaded.insert(projected.state.id, projected);
    }
    Ok(loaded)
}

#[derive(Serialize)]
struct StateColumns<'a> {
    referral_id: Uuid,
    source: String,
    content_hash: &'a str,
    status: &'static str,
    provider_id: Option<&'a str>,
    attempt: u32,
    accept_by: Option<DateTime<Utc>>,
    tried_providers: Vec<&'a str>,
    consent_to_evaluation: bool,
    first_contact_at: Option<DateTime<Utc>>,
    contacts: u32,
    activities: u32,
    observation_ids: &'a [Uuid],
    version: u64,
    nhs_number: Option<&'a str>,
    birth_date: Option<NaiveDate>,
    postcode: Option<&'a str>,
    last_updated: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    new_row: Option<&'a NewReferral>,
}

fn columns(projected: &Projected) -> StateColumns<'_> {
    let state = &projected.state;
    StateColumns {
        referral_id: *state.id.as_uuid(),
        source: state.source.to_string(),
        content_hash: &state.content_hash,
        status: state.status.code(),
        provider_id: state.provider.as_ref().map(ProviderId::as_str),
        attempt: state.attempt,
        accept_by: state.accept_by,
        tried_providers: state
            .tried_providers
            .iter()
            .map(ProviderId::as_str)
            .collect(),
        consent_to_evaluation: state.consent_to_evaluation,
        first_contact_at: state.first_contact_at,
        contacts: state.contacts,
        activities: state.activities,
        observation_ids: &state.observation_ids,
        version: state.version,
        nhs_number: projected.nhs_number.as_deref(),
        birth_date: projected.birth_date,
        postcode: projected.postcode.as_deref(),
        last_updated: projected.last_updated,
        closed_at: projected.closed_at,
        new_row: projected.new_row.as_ref(),
    }
}

fn json_array<T: Serialize>(rows: &[T]) -> serde_json::Value {
    // Plain structs of strings, numbers and timestamps always serialize.
    serde_json::to_value(rows).unwrap_or_else(|error| unreachable!("row serialization: {error}"))
}

/// Writes the referrals changed by a batch: new ones inserted whole, others updated.
pub async fn save(
    connection: &mut PgConnection,
    changed: &[&Projected],
) -> Result<(), sqlx::Error> {
    let (new, existing): (Vec<_>, Vec<_>) = changed
        .iter()
        .map(|projected| columns(projected))
        .partition(|columns| columns.new_row.is_some());
    let (new, existing) = (json_array(&new), json_array(&existing));
    if new.as_array().is_some_and(|rows| !rows.is_empty()) {
        sqlx::query(
            "INSERT INTO referrals SELECT * FROM jsonb_populate_recordset(NULL::referrals, $1)",
        )
        .bind(new)
        .execute(&mut *connection)
        .await?;
    }
    if existing.as_array().is_some_and(|rows| !rows.is_empty()) {
        sqlx::query(
            "UPDATE referrals r SET status = c.status, provider_id = c.provider_id,
                attempt = c.attempt, accept_by = c.accept_by, tried_providers = c.tried_providers,
                consent_to_evaluation = c.consent_to_evaluation,
                first_contact_at = c.first_contact_at, contacts = c.contacts,
                activities = c.activities, observation_ids = c.observation_ids,
                version = c.version, last_updated = c.last_updated, closed_at = c.closed_at
             FROM jsonb_populate_recordset(NULL::referrals, $1) c
             WHERE r.referral_id = c.referral_id",
        )
        .bind(existing)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// One version of a referral.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub referral_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub status: &'static str,
    pub provider_id: Option<String>,
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SupersededRow {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub task_id: Uuid,
    pub referral_id: Uuid,
    pub attempt: u32,
    pub provider_id: String,
    pub status: &'static str,
    pub status_reason: Option<String>,
    pub authored_on: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub accept_by: Option<DateTime<Utc>>,
    pub version: u64,
}

/// A change to a Task that may have been written in an earlier batch.
#[derive(Debug, Clone, Serialize)]
pub struct TaskChange {
    pub task_id: Uuid,
    pub status: &'static str,
    pub status_reason: Option<String>,
    pub last_modified: DateTime<Utc>,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObservationRow {
    pub observation_id: Uuid,
    pub referral_id: Uuid,
    pub provider_id: String,
    pub instrument: &'static str,
    pub timepoint: &'static str,
    pub measure: serde_json::Value,
    pub total: Option<u8>,
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContactRow {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub provider_id: String,
    pub contact_at: DateTime<Utc>,
    pub mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActivityRow {
    pub event_id: Uuid,
    pub referral_id: Uuid,
    pub provider_id: String,
    pub activity_id: Option<String>,
    pub activity_name: String,
    pub kind: String,
    pub attended_on: NaiveDate,
}

/// Everything else a batch writes besides the referral rows.
#[derive(Debug, Default)]
pub struct BatchWrites {
    pub history: Vec<HistoryRow>,
    pub superseded: Vec<SupersededRow>,
    pub new_tasks: HashMap<Uuid, TaskRow>,
    pub task_changes: HashMap<Uuid, TaskChange>,
    /// Caseload changes by (provider, status).
    pub caseload: HashMap<(String, &'static str), i64>,
    pub observations: Vec<ObservationRow>,
    pub contacts: Vec<ContactRow>,
    pub activities: Vec<ActivityRow>,
    /// Events this batch applied or superseded (their pending command rows go).
    pub seen_event_ids: Vec<Uuid>,
}

impl BatchWrites {
    /// Records a Task's new status, whether the Task is new in this batch or older.
    pub fn change_task(&mut self, change: TaskChange) {
        if let Some(task) = self.new_tasks.get_mut(&change.task_id) {
            task.status = change.status;
            task.status_reason = change.status_reason;
            task.last_modified = change.last_modified;
            task.version = change.version;
        } else {
            self.task_changes.insert(change.task_id, change);
        }
    }

    pub fn move_caseload(
        &mut self,
        provider: &ProviderId,
        from: Option<Status>,
        to: Option<Status>,
    ) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            *self
                .caseload
                .entry((provider.as_str().to_owned(), from.code()))
                .or_default() -= 1;
        }
        if let Some(to) = to {
            *self
                .caseload
                .entry((provider.as_str().to_owned(), to.code()))
                .or_default() += 1;
        }
    }

    pub async fn write(self, connection: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.history.is_empty() {
            sqlx::query(
                "INSERT INTO history SELECT * FROM jsonb_populate_recordset(NULL::history, $1)",
            )
            .bind(json_array(&self.history))
            .execute(&mut *connection)
            .await?;
        }
        if !self.superseded.is_empty() {
            sqlx::query(
                "INSERT INTO superseded SELECT * FROM jsonb_populate_recordset(NULL::superseded, $1)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(json_array(&self.superseded))
            .execute(&mut *connection)
            .await?;
        }
        if !self.new_tasks.is_empty() {
            let mut tasks: Vec<&TaskRow> = self.new_tasks.values().collect();
            tasks.sort_by_key(|task| task.task_id);
            sqlx::query(
                "INSERT INTO tasks SELECT * FROM jsonb_populate_recordset(NULL::tasks, $1)",
            )
            .bind(json_array(&tasks))
            .execute(&mut *connection)
            .await?;
        }
        if !self.task_changes.is_empty() {
            let mut changes: Vec<&TaskChange> = self.task_changes.values().collect();
            changes.sort_by_key(|change| change.task_id);
            sqlx::query(
                "UPDATE tasks t SET status = c.status, status_reason = c.status_reason,
                    last_modified = c.last_modified, version = c.version
                 FROM jsonb_to_recordset($1) AS c(task_id UUID, status TEXT, status_reason TEXT,
                    last_modified TIMESTAMPTZ, version BIGINT)
                 WHERE t.task_id = c.task_id",
            )
            .bind(json_array(&changes))
            .execute(&mut *connection)
            .await?;
        }
        let mut caseload: Vec<(&(String, &str), &i64)> = self
            .caseload
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .collect();
        if !caseload.is_empty() {
            caseload.sort();
            let providers: Vec<&str> = caseload.iter().map(|((p, _), _)| p.as_str()).collect();
            let statuses: Vec<&str> = caseload.iter().map(|((_, s), _)| *s).collect();
            let deltas: Vec<i64> = caseload.iter().map(|(_, delta)| **delta).collect();
            sqlx::query(
                "INSERT INTO caseload (provider_id, status, referrals)
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[])
                 ON CONFLICT (provider_id, status)
                 DO UPDATE SET referrals = caseload.referrals + EXCLUDED.referrals",
            )
            .bind(&providers)
            .bind(&statuses)
            .bind(&deltas)
            .execute(&mut *connection)
            .await?;
            // No rows for empty buckets, however the batches fell.
            sqlx::query("DELETE FROM caseload WHERE referrals = 0")
                .execute(&mut *connection)
                .await?;
        }
        for (table, rows) in [
            ("observations", json_array(&self.observations)),
            ("contacts", json_array(&self.contacts)),
            ("activities", json_array(&self.activities)),
        ] {
            if rows.as_array().is_some_and(|rows| !rows.is_empty()) {
                sqlx::query(&format!(
                    "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
                ))
                .bind(rows)
                .execute(&mut *connection)
                .await?;
            }
        }
        if !self.seen_event_ids.is_empty() {
            sqlx::query("DELETE FROM public.pending_provider_events WHERE event_id = ANY($1)")
                .bind(&self.seen_event_ids)
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

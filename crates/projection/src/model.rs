//! The read-model rows the projector keeps per referral, and their batched reads and
//! writes. A batch loads every referral it touches in one query, applies its events in
//! memory, and writes each table back in one statement: new rows with `COPY`
//! ([`crate::copy`]), changes to earlier rows as one `UPDATE` over `UNNEST`ed arrays.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use linkwork_domain::referral::{Referral, Status};
use linkwork_domain::{ProviderId, ReferralId, Source};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::copy::{array_literal, to_microseconds, uuid_array_literal, CopyRows};

/// A referral as the projector holds it between events: the domain aggregate plus
/// what outputs need (who the person is, for Observations and pseudonyms).
#[derive(Debug, Clone)]
pub struct Projected {
    pub state: Referral,
    pub nhs_number: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub postcode: Option<String>,
    /// The person has a national data opt-out (from the referral, never changed).
    pub national_data_opt_out: bool,
    /// The person withdrew consent to share for evaluation and has not given it again.
    pub evaluation_objection: bool,
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
    /// The ServiceRequest as JSON text (written once, never read back by the projector).
    pub service_request: String,
    /// The Patient as JSON text.
    pub patient: Option<String>,
    pub submitted_by: Option<String>,
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
    national_data_opt_out: bool,
    evaluation_objection: bool,
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
            national_data_opt_out: self.national_data_opt_out,
            evaluation_objection: self.evaluation_objection,
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
                observation_ids, version, nhs_number, birth_date, postcode, national_data_opt_out,
                evaluation_objection, last_updated, closed_at
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

/// The columns of `referrals`, in the order [`save`] writes new rows.
const REFERRAL_COLUMNS: [&str; 32] = [
    "referral_id",
    "source",
    "source_identifier_system",
    "source_identifier_value",
    "content_hash",
    "status",
    "provider_id",
    "attempt",
    "accept_by",
    "tried_providers",
    "consent_to_evaluation",
    "first_contact_at",
    "contacts",
    "activities",
    "observation_ids",
    "version",
    "nhs_number",
    "birth_date",
    "postcode",
    "needs",
    "priority",
    "requester",
    "asc_case_id",
    "authored_on",
    "received_at",
    "last_updated",
    "closed_at",
    "service_request",
    "patient",
    "national_data_opt_out",
    "submitted_by",
    "evaluation_objection",
];

fn tried_providers(state: &Referral) -> String {
    array_literal(state.tried_providers.iter().map(ProviderId::as_str))
}

fn copy_new_referral(rows: &mut CopyRows, projected: &Projected, new: &NewReferral) {
    let state = &projected.state;
    rows.uuid(state.id.as_uuid())
        .text(&state.source.to_string())
        .text(&new.source_identifier_system)
        .text(&new.source_identifier_value)
        .text(&state.content_hash)
        .text(state.status.code())
        .opt_text(state.provider.as_ref().map(ProviderId::as_str))
        .int(i64::from(state.attempt))
        .opt_timestamp(state.accept_by)
        .array(&tried_providers(state))
        .bool(state.consent_to_evaluation)
        .opt_timestamp(state.first_contact_at)
        .int(i64::from(state.contacts))
        .int(i64::from(state.activities))
        .array(&uuid_array_literal(&state.observation_ids))
        .int(version_column(state.version))
        .opt_text(projected.nhs_number.as_deref())
        .opt_date(projected.birth_date)
        .opt_text(projected.postcode.as_deref())
        .array(&array_literal(new.needs.iter().map(String::as_str)))
        .text(&new.priority)
        .opt_text(new.requester.as_deref())
        .opt_text(new.asc_case_id.as_deref())
        .timestamp(new.authored_on)
        .timestamp(new.received_at)
        .timestamp(projected.last_updated)
        .opt_timestamp(projected.closed_at)
        .json_text(&new.service_request)
        .opt_text(new.patient.as_deref())
        .bool(projected.national_data_opt_out)
        .opt_text(new.submitted_by.as_deref())
        .bool(projected.evaluation_objection);
    rows.end_row();
}

/// A version as the `BIGINT` column holds it (versions count events: never near 2^63).
fn version_column(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Writes the referrals changed by a batch: new ones inserted whole (`COPY`), others
/// updated in one statement.
pub async fn save(
    connection: &mut PgConnection,
    changed: &[&Projected],
) -> Result<(), sqlx::Error> {
    let mut new = CopyRows::new();
    let mut existing = ReferralUpdates::default();
    for projected in changed {
        match &projected.new_row {
            Some(row) => copy_new_referral(&mut new, projected, row),
            None => existing.push(projected),
        }
    }
    new.send(&mut *connection, "referrals", &REFERRAL_COLUMNS)
        .await?;
    if !existing.referral_id.is_empty() {
        sqlx::query(
            "UPDATE referrals r SET status = c.status, provider_id = c.provider_id,
                attempt = c.attempt, accept_by = c.accept_by,
                tried_providers = c.tried_providers::TEXT[],
                consent_to_evaluation = c.consent_to_evaluation,
                first_contact_at = c.first_contact_at, contacts = c.contacts,
                activities = c.activities, observation_ids = c.observation_ids::UUID[],
                version = c.version, last_updated = c.last_updated, closed_at = c.closed_at,
                evaluation_objection = c.evaluation_objection
             FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], $5::TIMESTAMPTZ[],
                    $6::TEXT[], $7::BOOLEAN[], $8::TIMESTAMPTZ[], $9::INTEGER[], $10::INTEGER[],
                    $11::TEXT[], $12::BIGINT[], $13::TIMESTAMPTZ[], $14::TIMESTAMPTZ[],
                    $15::BOOLEAN[])
                AS c(referral_id, status, provider_id, attempt, accept_by, tried_providers,
                     consent_to_evaluation, first_contact_at, contacts, activities,
                     observation_ids, version, last_updated, closed_at, evaluation_objection)
             WHERE r.referral_id = c.referral_id",
        )
        .bind(&existing.referral_id)
        .bind(&existing.status)
        .bind(&existing.provider_id)
        .bind(&existing.attempt)
        .bind(&existing.accept_by)
        .bind(&existing.tried_providers)
        .bind(&existing.consent_to_evaluation)
        .bind(&existing.first_contact_at)
        .bind(&existing.contacts)
        .bind(&existing.activities)
        .bind(&existing.observation_ids)
        .bind(&existing.version)
        .bind(&existing.last_updated)
        .bind(&existing.closed_at)
        .bind(&existing.evaluation_objection)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// The changing columns of referrals written before this batch, one array per column.
#[derive(Debug, Default)]
struct ReferralUpdates {
    referral_id: Vec<Uuid>,
    status: Vec<&'static str>,
    provider_id: Vec<Option<String>>,
    attempt: Vec<i32>,
    accept_by: Vec<Option<DateTime<Utc>>>,
    tried_providers: Vec<String>,
    consent_to_evaluation: Vec<bool>,
    first_contact_at: Vec<Option<DateTime<Utc>>>,
    contacts: Vec<i32>,
    activities: Vec<i32>,
    observation_ids: Vec<String>,
    version: Vec<i64>,
    last_updated: Vec<DateTime<Utc>>,
    closed_at: Vec<Option<DateTime<Utc>>>,
    evaluation_objection: Vec<bool>,
}

impl ReferralUpdates {
    fn push(&mut self, projected: &Projected) {
        let state = &projected.state;
        let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        self.referral_id.push(*state.id.as_uuid());
        self.status.push(state.status.code());
        self.provider_id
            .push(state.provider.as_ref().map(|id| id.as_str().to_owned()));
        self.attempt.push(count(state.attempt));
        self.accept_by.push(state.accept_by.map(to_microseconds));
        self.tried_providers.push(tried_providers(state));
        self.consent_to_evaluation.push(state.consent_to_evaluation);
        self.first_contact_at
            .push(state.first_contact_at.map(to_microseconds));
        self.contacts.push(count(state.contacts));
        self.activities.push(count(state.activities));
        self.observation_ids
            .push(uuid_array_literal(&state.observation_ids));
        self.version.push(version_column(state.version));
        self.last_updated
            .push(to_microseconds(projected.last_updated));
        self.closed_at
            .push(projected.closed_at.map(to_microseconds));
        self.evaluation_objection
            .push(projected.evaluation_objection);
    }
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
    /// The event's body as JSON text; none for a receipt.
    pub body: Option<String>,
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
    /// Referrals whose person was erased: what identifies them is cleared from the
    /// row, the ServiceRequest replaced by its redacted stand-in.
    pub erased: Vec<ReferralId>,
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
        if !self.erased.is_empty() {
            let ids: Vec<Uuid> = self.erased.iter().map(|id| *id.as_uuid()).collect();
            let stand_ins: Vec<String> = self
                .erased
                .iter()
                .map(|id| {
                    linkwork_domain::event::redacted_service_request(*id)
                        .text()
                        .to_owned()
                })
                .collect();
            // After the batch's inserts, so a referral received and erased in one
            // batch is redacted too.
            sqlx::query(
                "UPDATE referrals r SET nhs_number = NULL, birth_date = NULL, postcode = NULL,
                    requester = NULL, patient = NULL, service_request = e.stand_in::JSONB
                 FROM UNNEST($1::UUID[], $2::TEXT[]) AS e(referral_id, stand_in)
                 WHERE r.referral_id = e.referral_id",
            )
            .bind(&ids)
            .bind(&stand_ins)
            .execute(&mut *connection)
            .await?;
        }
        let mut history = CopyRows::new();
        for row in &self.history {
            history
                .uuid(&row.referral_id)
                .int(version_column(row.version))
                .uuid(&row.event_id)
                .text(&row.event_type)
                .timestamp(row.occurred_at)
                .text(row.status)
                .opt_text(row.provider_id.as_deref())
                .opt_text(row.body.as_deref());
            history.end_row();
        }
        history
            .send(
                &mut *connection,
                "history",
                &[
                    "referral_id",
                    "version",
                    "event_id",
                    "event_type",
                    "occurred_at",
                    "status",
                    "provider_id",
                    "body",
                ],
            )
            .await?;
        if !self.superseded.is_empty() {
            let rows = &self.superseded;
            let event_ids: Vec<Uuid> = rows.iter().map(|row| row.event_id).collect();
            let referral_ids: Vec<Uuid> = rows.iter().map(|row| row.referral_id).collect();
            let event_types: Vec<&str> = rows.iter().map(|row| row.event_type.as_str()).collect();
            let occurred_at: Vec<DateTime<Utc>> = rows
                .iter()
                .map(|row| to_microseconds(row.occurred_at))
                .collect();
            let reasons: Vec<&str> = rows.iter().map(|row| row.reason.as_str()).collect();
            sqlx::query(
                "INSERT INTO superseded (event_id, referral_id, event_type, occurred_at, reason)
                 SELECT * FROM UNNEST($1::UUID[], $2::UUID[], $3::TEXT[], $4::TIMESTAMPTZ[], $5::TEXT[])
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&event_ids)
            .bind(&referral_ids)
            .bind(&event_types)
            .bind(&occurred_at)
            .bind(&reasons)
            .execute(&mut *connection)
            .await?;
        }
        let mut tasks: Vec<&TaskRow> = self.new_tasks.values().collect();
        tasks.sort_by_key(|task| task.task_id);
        let mut task_rows = CopyRows::new();
        for task in tasks {
            task_rows
                .uuid(&task.task_id)
                .uuid(&task.referral_id)
                .int(i64::from(task.attempt))
                .text(&task.provider_id)
                .text(task.status)
                .opt_text(task.status_reason.as_deref())
                .timestamp(task.authored_on)
                .timestamp(task.last_modified)
                .opt_timestamp(task.accept_by)
                .int(version_column(task.version));
            task_rows.end_row();
        }
        task_rows
            .send(
                &mut *connection,
                "tasks",
                &[
                    "task_id",
                    "referral_id",
                    "attempt",
                    "provider_id",
                    "status",
                    "status_reason",
                    "authored_on",
                    "last_modified",
                    "accept_by",
                    "version",
                ],
            )
            .await?;
        if !self.task_changes.is_empty() {
            let mut changes: Vec<&TaskChange> = self.task_changes.values().collect();
            changes.sort_by_key(|change| change.task_id);
            let task_ids: Vec<Uuid> = changes.iter().map(|change| change.task_id).collect();
            let statuses: Vec<&str> = changes.iter().map(|change| change.status).collect();
            let reasons: Vec<Option<&str>> = changes
                .iter()
                .map(|change| change.status_reason.as_deref())
                .collect();
            let modified: Vec<DateTime<Utc>> = changes
                .iter()
                .map(|change| to_microseconds(change.last_modified))
                .collect();
            let versions: Vec<i64> = changes
                .iter()
                .map(|change| version_column(change.version))
                .collect();
            sqlx::query(
                "UPDATE tasks t SET status = c.status, status_reason = c.status_reason,
                    last_modified = c.last_modified, version = c.version
                 FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TIMESTAMPTZ[], $5::BIGINT[])
                    AS c(task_id, status, status_reason, last_modified, version)
                 WHERE t.task_id = c.task_id",
            )
            .bind(&task_ids)
            .bind(&statuses)
            .bind(&reasons)
            .bind(&modified)
            .bind(&versions)
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
        let mut observations = CopyRows::new();
        for row in &self.observations {
            observations
                .uuid(&row.observation_id)
                .uuid(&row.referral_id)
                .text(&row.provider_id)
                .text(row.instrument)
                .text(row.timepoint)
                .json(&row.measure)
                .opt_int(row.total.map(i64::from))
                .timestamp(row.effective_at)
                .timestamp(row.recorded_at)
                .int(version_column(row.version));
            observations.end_row();
        }
        observations
            .send(
                &mut *connection,
                "observations",
                &[
                    "observation_id",
                    "referral_id",
                    "provider_id",
                    "instrument",
                    "timepoint",
                    "measure",
                    "total",
                    "effective_at",
                    "recorded_at",
                    "version",
                ],
            )
            .await?;
        let mut contacts = CopyRows::new();
        for row in &self.contacts {
            contacts
                .uuid(&row.event_id)
                .uuid(&row.referral_id)
                .text(&row.provider_id)
                .timestamp(row.contact_at)
                .text(&row.mode);
            contacts.end_row();
        }
        contacts
            .send(
                &mut *connection,
                "contacts",
                &[
                    "event_id",
                    "referral_id",
                    "provider_id",
                    "contact_at",
                    "mode",
                ],
            )
            .await?;
        let mut activities = CopyRows::new();
        for row in &self.activities {
            activities
                .uuid(&row.event_id)
                .uuid(&row.referral_id)
                .text(&row.provider_id)
                .opt_text(row.activity_id.as_deref())
                .text(&row.activity_name)
                .text(&row.kind)
                .date(row.attended_on);
            activities.end_row();
        }
        activities
            .send(
                &mut *connection,
                "activities",
                &[
                    "event_id",
                    "referral_id",
                    "provider_id",
                    "activity_id",
                    "activity_name",
                    "kind",
                    "attended_on",
                ],
            )
            .await?;
        if !self.seen_event_ids.is_empty() {
            sqlx::query("DELETE FROM public.pending_provider_events WHERE event_id = ANY($1)")
                .bind(&self.seen_event_ids)
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

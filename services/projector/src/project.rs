//! Applying `referral.events` to the read models: the projector's consumer handler.
//!
//! Log order decides. Each event is judged by the referral aggregate (`referral::fold`)
//! against the state the events before it built: one that the lifecycle refuses there (an
//! acceptance that reached the log after the router re-routed, a second closing
//! status from a race between two updates) is recorded as superseded and changes
//! nothing. This is the same rule the router applies, so the two always agree on who
//! holds a referral.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use linkwork_bus::{
    CloudEvent, Decode, Decoded, Effects, Handler, HandlerError, Incoming, OutboxEvent, Record,
};
use linkwork_domain::event::ReferralReceived;
use linkwork_domain::referral::{self, Folded, Referral, Status};
use linkwork_domain::{ReferralEvent, ReferralId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::resources::{self, Retraction};
use crate::ProjectorConfig;
use linkwork_projection::model::{
    self, ActivityRow, BatchWrites, ContactRow, HistoryRow, ModelError, NewReferral,
    ObservationRow, Projected, SupersededRow, TaskChange, TaskRow,
};
use linkwork_projection::render::Person;

/// The projector's handler. `publish` is off during a replay: history is rebuilt, not
/// re-sent.
#[derive(Debug)]
pub struct ProjectorHandler {
    pub config: ProjectorConfig,
    pub schema: String,
    pub publish: bool,
    /// Referrers' outcomes topics known to exist (created or found by this process):
    /// one per referring organisation, so bounded by the registry of referrers.
    pub referrer_topics: HashSet<String>,
}

/// A lost connection is worth retrying; a row that does not parse back is not.
fn model_error(error: ModelError) -> HandlerError {
    match error {
        ModelError::Database(error) => error.into(),
        corrupt @ ModelError::Corrupt(_) => HandlerError::Fatal(Box::new(corrupt)),
    }
}

/// The projection of a referral [`referral::fold`] has just created from `received`.
fn new_referral(received: &ReferralReceived, state: Referral) -> Projected {
    let subject = &received.subject;
    Projected {
        state,
        nhs_number: subject.nhs_number.as_ref().map(ToString::to_string),
        birth_date: subject.birth_date,
        postcode: subject
            .postcode
            .as_ref()
            .map(|code| code.as_str().to_owned()),
        national_data_opt_out: received.national_data_opt_out,
        evaluation_objection: false,
        last_updated: received.occurred_at,
        closed_at: None,
        new_row: Some(NewReferral {
            source_identifier_system: received.source_identifier.system.clone(),
            source_identifier_value: received.source_identifier.value.clone(),
            needs: received
                .needs
                .iter()
                .map(|need| need.code().to_owned())
                .collect(),
            priority: serde_json::to_value(received.priority)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_else(|| "routine".to_owned()),
            requester: received.requester.clone(),
            asc_case_id: received
                .asc_case_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            authored_on: received.authored_on,
            received_at: received.occurred_at,
            service_request: received.service_request.text().to_owned(),
            patient: received
                .patient
                .as_ref()
                .map(|patient| patient.text().to_owned()),
            submitted_by: received.submitted_by.clone(),
        }),
    }
}

/// The event's body for the history table, as the event is encoded on the log; a
/// receipt's ServiceRequest is in `referrals`.
fn history_body(event: &ReferralEvent) -> Option<String> {
    use linkwork_domain::DomainEvent;
    match event {
        ReferralEvent::Received(_) => None,
        // The encoding is serde_json's: UTF-8 always.
        other => String::from_utf8(other.encode()).ok(),
    }
}

/// A logged event as the projector consumes it: the CloudEvent, handed to the consumer
/// without an event id to claim. The projector de-duplicates against its read models
/// ([`apply_batch`]), which hold every event they have folded for as long as they
/// exist; the consumer's table of processed ids would be a second, shorter-lived record
/// of the same thing, written row by row in every batch.
#[derive(Debug, Clone)]
pub struct LogEvent(pub CloudEvent<ReferralEvent>);

impl Decode for LogEvent {
    fn decode(record: &Record) -> Result<Decoded<Self>, String> {
        let decoded = CloudEvent::<ReferralEvent>::decode(record)?;
        Ok(Decoded {
            event_id: None,
            traceparent: decoded.traceparent,
            tracestate: decoded.tracestate,
            value: LogEvent(decoded.value),
        })
    }
}

impl Handler for ProjectorHandler {
    type Message = LogEvent;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        let logged: Vec<LoggedEvent<'_>> = batch
            .iter()
            .map(|incoming| LoggedEvent {
                event_id: incoming.message.0.meta.id,
                event_type: &incoming.message.0.meta.event_type,
                event: &incoming.message.0.event,
            })
            .collect();
        let applied = apply_batch(
            transaction,
            &self.schema,
            &logged,
            self.publish,
            self.config.vault.as_ref(),
        )
        .await?;
        if self.publish && !applied.folded.outputs.is_empty() {
            self.ensure_referrer_topics(&applied).await?;
            let messages = self.render(transaction, &applied).await?;
            for (index, message) in messages {
                effects.publish(&batch[applied.positions[index]], message);
            }
        }
        Ok(())
    }
}

/// A batch applied to the read models: what it folded, the referrals it touched as
/// they now are, and where each folded event sits in the batch given.
#[derive(Debug)]
pub struct AppliedBatch {
    pub folded: FoldedBatch,
    pub referrals: HashMap<ReferralId, Projected>,
    /// For each event folded, its position in the batch given to [`apply_batch`].
    pub positions: Vec<usize>,
}

/// Which of `ids` this read model already holds: every event folded is recorded once,
/// in `history` when it applied (under its referral, which then exists: `referrals`
/// are those of the batch that do) or in `superseded` when it did not. Asking
/// `history` by referral rather than by event id lets a rebuild load `history` before
/// it has its event id index.
async fn already_recorded(
    transaction: &mut PgConnection,
    ids: &[Uuid],
    referrals: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM history WHERE referral_id = ANY($2)
         UNION ALL SELECT event_id FROM superseded WHERE event_id = ANY($1)",
    )
    .bind(ids)
    .bind(referrals)
    .fetch_all(&mut *transaction)
    .await?;
    Ok(found.into_iter().collect())
}

/// Applies `events` (in log order) to the read models in `schema`, inside the caller's
/// transaction: copies of events the read models already hold are dropped (so a
/// rebuild and the live projector de-duplicate alike, whatever the consumer's own
/// record of processed ids), the referrals touched are loaded, folded and written
/// back. `live` also clears the command side's pending rows of the events seen.
pub async fn apply_batch(
    transaction: &mut PgConnection,
    schema: &str,
    events: &[LoggedEvent<'_>],
    live: bool,
    vault: Option<&linkwork_vault::Vault>,
) -> Result<AppliedBatch, HandlerError> {
    // The read models first; the consumer's own tables (offsets, outbox) are in public.
    // A ServiceRequest is large enough to be compressed: lz4 where the server has it
    // costs a fraction of the default pglz.
    sqlx::query(
        "SELECT set_config('search_path', $1, true),
                set_config('default_toast_compression', CASE
                    WHEN EXISTS (SELECT 1 FROM pg_settings
                                 WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))
                    THEN 'lz4' ELSE current_setting('default_toast_compression') END, true)",
    )
    .bind(format!(
        "{}, public",
        linkwork_projection::quote_ident(schema)
    ))
    .execute(&mut *transaction)
    .await?;
    let mut referral_ids: Vec<Uuid> = events
        .iter()
        .map(|logged| *logged.event.referral_id().as_uuid())
        .collect();
    referral_ids.sort_unstable();
    referral_ids.dedup();
    let mut referrals = model::load(transaction, &referral_ids)
        .await
        .map_err(model_error)?;
    let ids: Vec<Uuid> = events.iter().map(|logged| logged.event_id).collect();
    let existing: Vec<Uuid> = referrals.keys().map(|id| *id.as_uuid()).collect();
    let recorded = already_recorded(transaction, &ids, &existing).await?;
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(events.len());
    let mut positions = Vec::with_capacity(events.len());
    let mut fresh = Vec::with_capacity(events.len());
    for (position, logged) in events.iter().enumerate() {
        if !recorded.contains(&logged.event_id) && seen.insert(logged.event_id) {
            positions.push(position);
            fresh.push(*logged);
        }
    }
    // Sealed receipts opened, one query for the batch; a person erased stays redacted.
    let opened = open_received(transaction, vault, &fresh).await?;
    let fresh: Vec<LoggedEvent<'_>> = fresh
        .iter()
        .enumerate()
        .map(|(index, logged)| match opened.get(&index) {
            Some(event) => LoggedEvent { event, ..*logged },
            None => *logged,
        })
        .collect();
    let mut folded = fold_batch(&mut referrals, &fresh);
    let mut writes = std::mem::take(&mut folded.writes);
    if !live {
        writes.seen_event_ids.clear();
    }
    let changed: Vec<&Projected> = folded.changed.iter().map(|id| &referrals[id]).collect();
    model::save(transaction, &changed).await?;
    writes.write(transaction).await?;
    Ok(AppliedBatch {
        folded,
        referrals,
        positions,
    })
}

/// A retraction of each pseudonymised record in `sent`, caused by the event at
/// `index`.
fn retractions<'a>(
    config: &'a ProjectorConfig,
    person: &'a Person<'a>,
    sent: Option<&'a Vec<ObservationRow>>,
    at: DateTime<Utc>,
    index: usize,
    why: Retraction,
) -> impl Iterator<Item = (usize, OutboxEvent)> + 'a {
    sent.into_iter().flatten().map(move |observation| {
        (
            index,
            resources::retraction_message(config, person, observation, at, why),
        )
    })
}

/// The sealed `ReferralReceived` among `events`, opened with the vault, by position.
/// Without a vault they stay as they are: redacted.
async fn open_received(
    transaction: &mut PgConnection,
    vault: Option<&linkwork_vault::Vault>,
    events: &[LoggedEvent<'_>],
) -> Result<HashMap<usize, ReferralEvent>, HandlerError> {
    let Some(vault) = vault else {
        return Ok(HashMap::new());
    };
    let mut sealed: Vec<(usize, ReferralReceived)> = events
        .iter()
        .enumerate()
        .filter_map(|(index, logged)| match logged.event {
            ReferralEvent::Received(received) if received.is_redacted() => {
                Some((index, (**received).clone()))
            }
            _ => None,
        })
        .collect();
    if sealed.is_empty() {
        return Ok(HashMap::new());
    }
    let mut referrals: Vec<&mut ReferralReceived> =
        sealed.iter_mut().map(|(_, received)| received).collect();
    vault
        .open_referrals(transaction, &mut referrals)
        .await
        .map_err(|error| match error {
            linkwork_vault::VaultError::Database(error) => HandlerError::from(error),
            other => HandlerError::Fatal(Box::new(other)),
        })?;
    Ok(sealed
        .into_iter()
        .map(|(index, received)| (index, ReferralEvent::Received(Box::new(received))))
        .collect())
}

/// One logged event as the fold sees it.
#[derive(Debug, Clone, Copy)]
pub struct LoggedEvent<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub event: &'a ReferralEvent,
}

/// What a batch did, worked out in memory: the rows to write, the referrals that
/// changed (in id order, the order rows are locked in), and what applied events send
/// out once the batch is written.
#[derive(Debug)]
pub struct FoldedBatch {
    pub writes: BatchWrites,
    pub changed: Vec<ReferralId>,
    outputs: Vec<(usize, Output)>,
}

impl FoldedBatch {
    /// How many messages applied events send out.
    pub fn outputs(&self) -> usize {
        self.outputs.len()
    }
}

/// Folds a batch of logged events, in log order, onto `referrals` (the batch's
/// referrals as loaded; updated in place): each judged by [`referral::fold`] against
/// the state the events before it built, losers recorded as superseded. No I/O: the
/// handler loads before and writes after.
pub fn fold_batch(
    referrals: &mut HashMap<ReferralId, Projected>,
    events: &[LoggedEvent<'_>],
) -> FoldedBatch {
    let mut writes = BatchWrites::default();
    let mut changed: HashSet<ReferralId> = HashSet::new();
    let mut outputs: Vec<(usize, Output)> = Vec::new();
    for (index, logged) in events.iter().enumerate() {
        let event = logged.event;
        let event_id = logged.event_id;
        writes.seen_event_ids.push(event_id);
        let referral_id = event.referral_id();
        let verdict = match referrals.get_mut(&referral_id) {
            Some(projected) => match referral::fold(Some(&projected.state), event) {
                Folded::Applied(state) => {
                    step(
                        projected,
                        state,
                        event,
                        event_id,
                        &mut writes,
                        &mut outputs,
                        index,
                    );
                    None
                }
                Folded::Repeat => Some("repeats what is already recorded".to_owned()),
                Folded::Superseded(refusal) => Some(refusal.to_string()),
            },
            None => match (referral::fold(None, event), event) {
                (Folded::Applied(state), ReferralEvent::Received(received)) => {
                    referrals.insert(referral_id, new_referral(received, state));
                    None
                }
                _ => Some("the referral was never received".to_owned()),
            },
        };
        match verdict {
            Some(reason) => {
                tracing::info!(referral = %referral_id, event = logged.event_type, %reason, "event superseded");
                writes.superseded.push(SupersededRow {
                    event_id,
                    referral_id: *referral_id.as_uuid(),
                    event_type: logged.event_type.to_owned(),
                    occurred_at: event.occurred_at(),
                    reason,
                });
            }
            None => {
                let projected = &referrals[&referral_id];
                changed.insert(referral_id);
                writes.history.push(HistoryRow {
                    referral_id: *referral_id.as_uuid(),
                    version: projected.state.version,
                    event_id,
                    event_type: logged.event_type.to_owned(),
                    occurred_at: event.occurred_at(),
                    status: projected.state.status.code(),
                    provider_id: projected
                        .state
                        .provider
                        .as_ref()
                        .map(|p| p.as_str().to_owned()),
                    body: history_body(event),
                });
            }
        }
    }
    let mut changed: Vec<ReferralId> = changed.into_iter().collect();
    changed.sort_by_key(|id| *id.as_uuid());
    FoldedBatch {
        writes,
        changed,
        outputs,
    }
}

/// What an applied event sends out once the batch is written.
#[derive(Debug, Clone)]
enum Output {
    /// An outcome measure: the Observation, and its pseudonymised copy with consent.
    Observation {
        referral: ReferralId,
        observation: ObservationRow,
    },
    /// Consent given: earlier outcomes may now go to data teams.
    ConsentGiven { referral: ReferralId },
    /// Consent withdrawn: what data teams were sent is retracted.
    ConsentWithdrawn {
        referral: ReferralId,
        at: DateTime<Utc>,
    },
    /// The person was erased: the referrer is told, and what data teams were sent
    /// is retracted (the person as they were before the erasure names the copies).
    Erased {
        referral: ReferralId,
        at: DateTime<Utc>,
        nhs_number: Option<String>,
        birth_date: Option<chrono::NaiveDate>,
        postcode: Option<String>,
    },
    /// The referral closed: the summary for the referrer.
    Closed {
        referral: ReferralId,
        at: DateTime<Utc>,
    },
}

/// Moves the referral to `state`, what [`referral::fold`] made of `event`, and records
/// what that changes.
fn step(
    projected: &mut Projected,
    state: Referral,
    event: &ReferralEvent,
    event_id: Uuid,
    writes: &mut BatchWrites,
    outputs: &mut Vec<(usize, Output)>,
    index: usize,
) {
    let before_status = projected.state.status;
    let before_provider = projected.state.provider.clone();
    let before_attempt = projected.state.attempt;
    projected.state = state;
    let at = event.occurred_at();
    projected.last_updated = at;
    let referral_id = projected.state.id;
    let version = projected.state.version;
    let after_status = projected.state.status;

    // Caseloads: the referral leaves its old (provider, status) and joins the new one.
    if before_provider != projected.state.provider || before_status != after_status {
        if let Some(provider) = &before_provider {
            writes.move_caseload(provider, Some(before_status), None);
        }
        if let Some(provider) = &projected.state.provider {
            writes.move_caseload(provider, None, Some(after_status));
        }
    }

    // Tasks: one per routing attempt.
    let live_task = |attempt: u32| referral_id.task_id(attempt);
    let close_open_task = |writes: &mut BatchWrites, status: &'static str, reason: String| {
        if before_attempt > 0 && before_status == Status::Requested
            || before_status.is_with_provider()
        {
            writes.change_task(TaskChange {
                task_id: live_task(before_attempt),
                status,
                status_reason: Some(reason),
                last_modified: at,
                version,
            });
        }
    };
    match event {
        ReferralEvent::Routed(routed) => {
            close_open_task(
                writes,
                "cancelled",
                "the acceptance deadline passed; re-routed".to_owned(),
            );
            writes.new_tasks.insert(
                live_task(routed.attempt),
                TaskRow {
                    task_id: live_task(routed.attempt),
                    referral_id: *referral_id.as_uuid(),
                    attempt: routed.attempt,
                    provider_id: routed.provider_id.as_str().to_owned(),
                    status: "requested",
                    status_reason: None,
                    authored_on: routed.occurred_at,
                    last_modified: routed.occurred_at,
                    accept_by: Some(routed.accept_by),
                    version,
                },
            );
        }
        ReferralEvent::Unroutable(unroutable) => close_open_task(
            writes,
            "cancelled",
            format!("no provider left: {}", unroutable.reasons.join("; ")),
        ),
        ReferralEvent::Accepted(change)
        | ReferralEvent::Rejected(change)
        | ReferralEvent::Started(change)
        | ReferralEvent::OnHold(change)
        | ReferralEvent::Completed(change)
        | ReferralEvent::Failed(change) => writes.change_task(TaskChange {
            task_id: live_task(before_attempt),
            status: after_status.code(),
            status_reason: change.reason.clone(),
            last_modified: at,
            version,
        }),
        ReferralEvent::Cancelled(closed) | ReferralEvent::EnteredInError(closed) => {
            close_open_task(
                writes,
                after_status.code(),
                closed
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("closed by {}", closed.by)),
            )
        }
        ReferralEvent::ContactRecorded(contact) => writes.contacts.push(ContactRow {
            event_id,
            referral_id: *referral_id.as_uuid(),
            provider_id: contact.provider_id.as_str().to_owned(),
            contact_at: contact.contact_at,
            mode: code_of(&contact.mode),
        }),
        ReferralEvent::ActivityAttended(activity) => writes.activities.push(ActivityRow {
            event_id,
            referral_id: *referral_id.as_uuid(),
            provider_id: activity.provider_id.as_str().to_owned(),
            activity_id: activity.activity_id.clone(),
            activity_name: activity.activity_name.clone(),
            kind: code_of(&activity.kind),
            attended_on: activity.attended_on,
        }),
        ReferralEvent::OutcomeRecorded(outcome) => {
            let observation = ObservationRow {
                observation_id: outcome.observation_id,
                referral_id: *referral_id.as_uuid(),
                provider_id: outcome.provider_id.as_str().to_owned(),
                instrument: outcome.measure.instrument().code(),
                timepoint: timepoint_code(outcome.timepoint),
                measure: serde_json::to_value(outcome.measure).unwrap_or_default(),
                total: outcome.measure.total(),
                effective_at: outcome.effective_at,
                recorded_at: outcome.occurred_at,
                version,
            };
            writes.observations.push(observation.clone());
            outputs.push((
                index,
                Output::Observation {
                    referral: referral_id,
                    observation,
                },
            ));
        }
        ReferralEvent::ConsentRecorded(_) => {
            projected.evaluation_objection = false;
            outputs.push((
                index,
                Output::ConsentGiven {
                    referral: referral_id,
                },
            ))
        }
        ReferralEvent::ConsentWithdrawn(withdrawn) => {
            projected.evaluation_objection = true;
            outputs.push((
                index,
                Output::ConsentWithdrawn {
                    referral: referral_id,
                    at: withdrawn.occurred_at,
                },
            ))
        }
        ReferralEvent::Erased(erased) => {
            if after_status != before_status {
                close_open_task(
                    writes,
                    after_status.code(),
                    "the person's data was erased at their request".to_owned(),
                );
            }
            outputs.push((
                index,
                Output::Erased {
                    referral: referral_id,
                    at: erased.occurred_at,
                    nhs_number: projected.nhs_number.take(),
                    birth_date: projected.birth_date.take(),
                    postcode: projected.postcode.take(),
                },
            ));
            if let Some(row) = &mut projected.new_row {
                row.requester = None;
                row.patient = None;
                row.service_request = linkwork_domain::event::redacted_service_request(referral_id)
                    .text()
                    .to_owned();
            }
            writes.erased.push(referral_id);
        }
        ReferralEvent::Received(_) => {}
    }
    if after_status.is_terminal() && !before_status.is_terminal() {
        projected.closed_at = Some(at);
    }
    // An erasure's notice stands in for the closing summary: nothing about the person
    // goes out after it.
    if after_status.is_terminal()
        && !before_status.is_terminal()
        && !matches!(event, ReferralEvent::Erased(_))
    {
        outputs.push((
            index,
            Output::Closed {
                referral: referral_id,
                at,
            },
        ));
    }
}

fn code_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn timepoint_code(timepoint: linkwork_domain::Timepoint) -> &'static str {
    match timepoint {
        linkwork_domain::Timepoint::Baseline => "baseline",
        linkwork_domain::Timepoint::Interim => "interim",
        linkwork_domain::Timepoint::FollowUp => "follow-up",
    }
}

impl ProjectorHandler {
    /// Creates the outcomes topic of each referrer this batch sends identified
    /// outcomes or a summary to, when this process has not seen it yet, so the relay
    /// never meets a missing topic. Idempotent: an existing topic is left as it is.
    async fn ensure_referrer_topics(&mut self, applied: &AppliedBatch) -> Result<(), HandlerError> {
        let Some((kafka, declaration)) = &self.config.ensure_referrer_topics else {
            return Ok(());
        };
        let mut new: Vec<linkwork_domain::Source> = Vec::new();
        for (_, output) in &applied.folded.outputs {
            let referral = match output {
                Output::Observation { referral, .. }
                | Output::Closed { referral, .. }
                | Output::Erased { referral, .. } => referral,
                Output::ConsentGiven { .. } | Output::ConsentWithdrawn { .. } => continue,
            };
            let source = &applied.referrals[referral].state.source;
            let topic = self.config.topics.referrer(source);
            if !self.referrer_topics.contains(&topic) && !new.contains(source) {
                new.push(source.clone());
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        linkwork_bus::topics::apply(
            kafka,
            declaration,
            &linkwork_bus::topics::Members::referrers(&new),
        )
        .await
        .map_err(|error| HandlerError::Retryable(Box::new(error)))?;
        for source in &new {
            tracing::info!(referrer = %source, "referrer's outcomes topic ready");
            self.referrer_topics
                .insert(self.config.topics.referrer(source));
        }
        Ok(())
    }

    fn person(projected: &Projected) -> Person<'_> {
        Person {
            referral: projected.state.id,
            nhs_number: projected.nhs_number.as_deref(),
            birth_date: projected.birth_date,
            postcode: projected.postcode.as_deref(),
        }
    }

    /// Data teams get a person's outcomes with their explicit consent, or under the
    /// deployment's lawful basis for evaluation unless they have a national data
    /// opt-out (which explicit consent overrides) or withdrew consent (an objection).
    fn may_share(&self, projected: &Projected) -> bool {
        projected.state.consent_to_evaluation
            || (self.config.evaluation_lawful_basis.is_some()
                && !projected.national_data_opt_out
                && !projected.evaluation_objection)
    }

    /// What the applied events send out, each message with the position (among the
    /// events folded) of the event that caused it. What outputs read back (the summary's
    /// parts, the observations consent releases) is read for the whole batch at once.
    async fn render(
        &self,
        transaction: &mut PgConnection,
        applied: &AppliedBatch,
    ) -> Result<Vec<(usize, OutboxEvent)>, HandlerError> {
        let config = &self.config;
        let referrals = &applied.referrals;
        let mut closed = Vec::new();
        let mut consenting = Vec::new();
        for (_, output) in &applied.folded.outputs {
            match output {
                Output::Closed { referral, .. } => closed.push(*referral.as_uuid()),
                Output::ConsentGiven { referral }
                | Output::ConsentWithdrawn { referral, .. }
                | Output::Erased { referral, .. } => consenting.push(*referral.as_uuid()),
                Output::Observation { .. } => {}
            }
        }
        let summaries = if closed.is_empty() {
            HashMap::new()
        } else {
            linkwork_projection::read::summary_parts_of(transaction, &self.schema, &closed).await?
        };
        let released = if consenting.is_empty() {
            HashMap::new()
        } else {
            linkwork_projection::read::observations_of(transaction, &self.schema, &consenting)
                .await?
        };
        let mut messages = Vec::new();
        for (index, output) in &applied.folded.outputs {
            match output {
                Output::Observation {
                    referral,
                    observation,
                } => {
                    let projected = &referrals[referral];
                    let person = Self::person(projected);
                    messages.push((
                        *index,
                        resources::observation_message(
                            config,
                            &projected.state.source,
                            &person,
                            observation,
                        ),
                    ));
                    if self.may_share(projected) {
                        messages.push((
                            *index,
                            resources::pseudonymised_message(config, &person, observation),
                        ));
                    }
                }
                Output::ConsentGiven { referral } => {
                    let projected = &referrals[referral];
                    let person = Self::person(projected);
                    for observation in released.get(referral.as_uuid()).into_iter().flatten() {
                        messages.push((
                            *index,
                            resources::pseudonymised_message(config, &person, observation),
                        ));
                    }
                }
                Output::ConsentWithdrawn { referral, at } => {
                    let projected = &referrals[referral];
                    // Still shared (consent given again in this batch, or a lawful
                    // basis): nothing to take back.
                    if self.may_share(projected) {
                        continue;
                    }
                    let person = Self::person(projected);
                    let sent = released.get(referral.as_uuid());
                    messages.extend(retractions(
                        config,
                        &person,
                        sent,
                        *at,
                        *index,
                        Retraction::ConsentWithdrawn,
                    ));
                }
                Output::Erased {
                    referral,
                    at,
                    nhs_number,
                    birth_date,
                    postcode,
                } => {
                    let projected = &referrals[referral];
                    messages.push((
                        *index,
                        resources::erasure_notice_message(
                            config,
                            &projected.state.source,
                            *referral,
                            *at,
                        ),
                    ));
                    // Whatever data teams were sent is taken back; a retraction of a
                    // record never sent is harmless (its id names nothing they hold).
                    let person = Person {
                        referral: *referral,
                        nhs_number: nhs_number.as_deref(),
                        birth_date: *birth_date,
                        postcode: postcode.as_deref(),
                    };
                    let sent = released.get(referral.as_uuid());
                    messages.extend(retractions(
                        config,
                        &person,
                        sent,
                        *at,
                        *index,
                        Retraction::Erased,
                    ));
                }
                Output::Closed { referral, at } => {
                    let projected = &referrals[referral];
                    let empty = linkwork_projection::read::SummaryParts::default();
                    let summary = summaries.get(referral.as_uuid()).unwrap_or(&empty);
                    messages.push((
                        *index,
                        resources::summary_message(config, projected, summary, *at),
                    ));
                }
            }
        }
        Ok(messages)
    }
}

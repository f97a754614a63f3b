//! The provider loop's command side: a provider's Task update, outcome measure,
//! contact, activity or consent, judged against the referral as the log has built it,
//! and put on `referral.events`.
//!
//! State comes from the projector's read model plus the provider events accepted here
//! but not yet projected (`pending_provider_events`), so a provider's second update is
//! judged on what it was told succeeded. Commands on one referral are serialised by a
//! Postgres advisory lock held while the event is produced (acks=all), so two updates
//! racing from two ingest instances cannot both pass. What still races, with the
//! router's deadline escalation, is settled by log order in the projector and router.

pub mod parse;

use linkwork_bus::Producer;
use linkwork_domain::referral::{self, Command, Referral, Refusal};
use linkwork_domain::{DomainEvent, EventId, ReferralEvent, ReferralId};
use sqlx::{PgConnection, PgPool};

pub use parse::{parse, Submission, TaskTarget};

/// Why a provider's message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// The Task names a routing attempt the projection has not reached yet: worth
    /// retrying shortly.
    #[error("referral {0} is still being routed; try again shortly")]
    NotYetProjected(ReferralId),
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<Refusal> for CommandError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::UnknownReferral(_) => CommandError::NotFound(message),
            Refusal::NotAssignedProvider { .. } | Refusal::NotPermitted { .. } => {
                CommandError::Forbidden(message)
            }
            _ => CommandError::Conflict(message),
        }
    }
}

/// The referral as the log has built it, with this side's unprojected events on top.
pub async fn current_state(
    connection: &mut PgConnection,
    referral: ReferralId,
) -> Result<Option<Referral>, CommandError> {
    sqlx::query("SELECT set_config('search_path', 'projection, public', true)")
        .execute(&mut *connection)
        .await?;
    let mut loaded = linkwork_projector::model::load(connection, &[*referral.as_uuid()])
        .await
        .map_err(|error| match error {
            linkwork_projector::model::ModelError::Database(error) => CommandError::Database(error),
            corrupt => CommandError::Conflict(corrupt.to_string()),
        })?;
    let mut state = loaded.remove(&referral).map(|projected| projected.state);
    let pending: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT event_type, body FROM public.pending_provider_events WHERE referral_id = $1 ORDER BY seq",
    )
    .bind(referral.as_uuid())
    .fetch_all(&mut *connection)
    .await?;
    for (event_type, body) in pending {
        if let Ok(event) = ReferralEvent::decode(&event_type, &body) {
            // Judged as the projector will: an event the state refuses changes nothing.
            if let Some(current) = &state {
                if matches!(referral::decide(Some(current), Command::from(event.clone())), Ok(events) if !events.is_empty())
                {
                    state = referral::apply(state, &event);
                }
            }
        }
    }
    Ok(state)
}

/// Judges a submission against the referral's state: the events it produces (empty for
/// a repeat of what is already recorded) or why not.
pub fn judge(
    state: Option<&Referral>,
    submission: &Submission,
) -> Result<Vec<ReferralEvent>, CommandError> {
    let referral = submission.referral;
    if let Some(TaskTarget { task_id, attempt }) = submission.task {
        let Some(attempt) = attempt else {
            return Err(CommandError::NotFound(format!(
                "Task {task_id} is not a Task of ServiceRequest/{referral}"
            )));
        };
        let projected_attempt = state.map(|state| state.attempt).unwrap_or(0);
        if attempt > projected_attempt {
            return Err(CommandError::NotYetProjected(referral));
        }
        let state = state.ok_or(CommandError::NotYetProjected(referral))?;
        let events = referral::decide(Some(state), submission.command.clone())?;
        if attempt < state.attempt {
            return Err(CommandError::Conflict(format!(
                "Task {task_id} is routing attempt {attempt}; the referral has moved on to attempt {}",
                state.attempt
            )));
        }
        return Ok(events);
    }
    let Some(state) = state else {
        return Err(CommandError::NotFound(format!(
            "ServiceRequest/{referral} is not known"
        )));
    };
    Ok(referral::decide(Some(state), submission.command.clone())?)
}

/// Takes the referral's command lock for the rest of the transaction.
pub async fn lock_referral(
    connection: &mut PgConnection,
    referral: ReferralId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('linkwork.referral.' || $1::TEXT, 0))",
    )
    .bind(referral.as_uuid())
    .execute(connection)
    .await?;
    Ok(())
}

/// Records events this side produced until the projector has them.
pub async fn remember_pending(
    connection: &mut PgConnection,
    events: &[(EventId, ReferralEvent)],
) -> Result<(), sqlx::Error> {
    for (id, event) in events {
        sqlx::query(
            "INSERT INTO public.pending_provider_events (event_id, referral_id, event_type, body)
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(id.as_uuid())
        .bind(event.referral_id().as_uuid())
        .bind(event.event_type())
        .bind(event.encode())
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// What an accepted submission did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Empty when the submission repeated what is already recorded.
    pub events: Vec<(EventId, ReferralEvent)>,
    /// The referral after it.
    pub state: Referral,
}

/// Judges and applies a submission received over HTTP: the events are on the log
/// (acks=all) before this returns `Ok`.
pub async fn submit(
    pool: &PgPool,
    producer: &Producer,
    events_topic: &str,
    source: &str,
    submission: &Submission,
) -> Result<Applied, CommandError> {
    let mut transaction = pool.begin().await?;
    lock_referral(&mut transaction, submission.referral).await?;
    let state = current_state(&mut transaction, submission.referral).await?;
    let events = judge(state.as_ref(), submission)?;
    let mut state = state.ok_or_else(|| {
        CommandError::NotFound(format!(
            "ServiceRequest/{} is not known",
            submission.referral
        ))
    })?;
    let events: Vec<(EventId, ReferralEvent)> = events
        .into_iter()
        .map(|event| (EventId::new_random(), event))
        .collect();
    for (id, event) in &events {
        producer
            .publish(events_topic, *id, source, event.occurred_at(), event)
            .await
            .map_err(|error| CommandError::Unavailable(error.to_string()))?;
        state = referral::apply(Some(state), event)
            .unwrap_or_else(|| unreachable!("apply keeps a referral"));
    }
    remember_pending(&mut transaction, &events).await?;
    transaction.commit().await?;
    Ok(Applied { events, state })
}

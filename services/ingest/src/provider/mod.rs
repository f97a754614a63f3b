//! The provider loop's command side: a provider's Task update, outcome measure,
//! contact, activity or consent, judged against the referral as the log has built it,
//! and put on `referral.events`.
//!
//! State comes from the read side (`linkwork_projection::current`): the read model plus
//! the provider events accepted here but not yet projected, so a provider's second
//! update is judged on what it was told succeeded. Commands on one referral are serialised by a
//! Postgres advisory lock held while the event is produced (acks=all), so two updates
//! racing from two ingest instances cannot both pass. What still races, with the
//! router's deadline escalation, is settled by log order in the projector and router.

use linkwork_bus::Producer;
use linkwork_domain::referral::{self, Folded, Referral, Refusal};
use linkwork_domain::{EventId, ReferralEvent, ReferralId};
use linkwork_fhir::IssueCode;
use linkwork_projection::ReadError;
use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use linkwork_fhir::provider::{parse, parse_consent, Submission, TaskTarget};

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

impl CommandError {
    /// The OperationOutcome code of the refusal.
    pub fn issue_code(&self) -> IssueCode {
        match self {
            CommandError::NotFound(_) => IssueCode::NotFound,
            CommandError::Forbidden(_) => IssueCode::Forbidden,
            CommandError::Conflict(_) => IssueCode::Conflict,
            CommandError::NotYetProjected(_) | CommandError::Unavailable(_) => IssueCode::Transient,
            CommandError::Database(_) => IssueCode::Exception,
        }
    }
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
    Ok(current_states(connection, &[referral])
        .await?
        .remove(&referral))
}

/// [`current_state`] for many referrals at once (the read side's
/// [`linkwork_projection::current::states`]). Referrals not known are absent.
pub async fn current_states(
    connection: &mut PgConnection,
    referrals: &[ReferralId],
) -> Result<HashMap<ReferralId, Referral>, CommandError> {
    linkwork_projection::current::states(connection, referrals)
        .await
        .map_err(|error| match error {
            ReadError::Database(error) => CommandError::Database(error),
            other => CommandError::Conflict(other.to_string()),
        })
}

/// Of `referrals`, those ingest has taken (published to the log), whether or not the
/// projection has them yet. A Task for a referral outside this set is for no referral
/// linkwork knows, and waiting for the projection would not help.
pub async fn received(
    connection: &mut PgConnection,
    referrals: &[ReferralId],
) -> Result<std::collections::HashSet<ReferralId>, sqlx::Error> {
    let ids: Vec<Uuid> = referrals.iter().map(|id| *id.as_uuid()).collect();
    let found: Vec<Uuid> = sqlx::query_scalar(
        "SELECT referral_id FROM ingest_receipts WHERE referral_id = ANY($1) AND state = 'published'",
    )
    .bind(&ids)
    .fetch_all(connection)
    .await?;
    Ok(found.into_iter().map(ReferralId::from_uuid).collect())
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
            // A later routing can still come only while the referral is being routed;
            // held by a provider or closed, a later attempt's Task is one that lost on
            // the log (an escalation racing an acceptance) and never will be projected.
            if let Some(state) = state {
                if state.status.is_with_provider() || state.status.is_terminal() {
                    return Err(CommandError::Conflict(format!(
                        "Task {task_id} is routing attempt {attempt}, which did not take effect: the referral is {} at attempt {}",
                        state.status, state.attempt
                    )));
                }
            }
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

pub use linkwork_projection::current::remember_pending;

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
    if state.is_none()
        && !received(&mut transaction, &[submission.referral])
            .await?
            .contains(&submission.referral)
    {
        return Err(CommandError::NotFound(format!(
            "ServiceRequest/{} is not a referral linkwork has received",
            submission.referral
        )));
    }
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
        // `judge` produced these events from this state, so each applies.
        if let Folded::Applied(next) = referral::fold(Some(&state), event) {
            state = next;
        }
    }
    remember_pending(&mut transaction, &events).await?;
    transaction.commit().await?;
    Ok(Applied { events, state })
}

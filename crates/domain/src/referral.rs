//! The referral aggregate, pure: `decide(state, command)` says what a command produces;
//! `fold(state, event)` says what an event read from the log did (applied, a repeat, or
//! superseded) and is the one rule every reader of `referral.events` uses.
//!
//! Statuses follow the HL7 Gravity SDOH closed-loop referral Task model of DESIGN.md:
//!
//! ```text
//! requested   → accepted | rejected | cancelled
//! accepted    → in-progress | on-hold | completed | failed | cancelled
//! in-progress ↔ on-hold
//! in-progress | on-hold → completed | failed | cancelled
//! any         → entered-in-error
//! ```
//!
//! Around the Task sit the referral's own steps, which the graph above does not name:
//! a referral is `received` until the router places it (`requested`, a Task on one
//! provider's queue) or finds nobody (`unroutable`, in triage). A `rejected` referral,
//! an `unroutable` one, and a `requested` one whose acceptance deadline has passed may
//! be routed again (to a provider not tried before) or marked unroutable. The referrer
//! may withdraw (cancel) a referral that is still `received`, `unroutable` or
//! `rejected`, since no Task is live then.
//!
//! Repeating the status a referral already has (a provider re-sending "accepted") is
//! an idempotent repeat: no event and no error. Any other transition outside the graph
//! is refused and produces no event.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::{
    ActivityAttended, ConsentChange, ContactRecorded, OutcomeRecorded, ProviderStatusChange,
    ReferralClosedBy, ReferralErased, ReferralReceived, ReferralRouted, ReferralUnroutable,
};
use crate::ids::{Actor, ProviderId, ReferralId, Source};
use crate::ReferralEvent;

/// Where a referral is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Accepted by ingest, not yet placed with a provider.
    Received,
    /// No eligible provider: in triage.
    Unroutable,
    Requested,
    Accepted,
    Rejected,
    InProgress,
    OnHold,
    Completed,
    Failed,
    Cancelled,
    EnteredInError,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Received,
        Status::Unroutable,
        Status::Requested,
        Status::Accepted,
        Status::Rejected,
        Status::InProgress,
        Status::OnHold,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::EnteredInError,
    ];

    /// The status code as linkwork writes it (Task status codes where FHIR has one).
    pub fn code(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Unroutable => "unroutable",
            Status::Requested => "requested",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::InProgress => "in-progress",
            Status::OnHold => "on-hold",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::EnteredInError => "entered-in-error",
        }
    }

    /// Nothing more happens to a referral in these statuses.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::EnteredInError
        )
    }

    /// A provider holds the referral and is working with the person.
    pub fn is_with_provider(self) -> bool {
        matches!(self, Status::Accepted | Status::InProgress | Status::OnHold)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.code())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.code() == code)
            .ok_or_else(|| format!("{code:?} is not a referral status"))
    }
}

/// Whether the lifecycle allows moving from `from` to `to` (a different status).
pub fn transition_allowed(from: Status, to: Status) -> bool {
    use Status::*;
    match to {
        Received => false,
        Requested => matches!(from, Received | Unroutable | Rejected | Requested),
        Unroutable => matches!(from, Received | Rejected | Requested),
        Accepted | Rejected => from == Requested,
        InProgress => matches!(from, Accepted | OnHold),
        OnHold => matches!(from, Accepted | InProgress),
        Completed | Failed => matches!(from, Accepted | InProgress | OnHold),
        Cancelled => matches!(
            from,
            Received | Unroutable | Requested | Rejected | Accepted | InProgress | OnHold
        ),
        EnteredInError => from != EnteredInError,
    }
}

/// A referral's state, rebuilt from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub id: ReferralId,
    pub source: Source,
    pub content_hash: String,
    pub status: Status,
    /// The provider whose Task is live (requested, accepted, in progress, on hold) or
    /// who closed it (completed, failed).
    pub provider: Option<ProviderId>,
    /// Routing attempts so far.
    pub attempt: u32,
    pub accept_by: Option<DateTime<Utc>>,
    /// Providers the referral has been routed to, in order.
    pub tried_providers: Vec<ProviderId>,
    pub consent_to_evaluation: bool,
    pub first_contact_at: Option<DateTime<Utc>>,
    pub contacts: u32,
    pub activities: u32,
    pub observation_ids: Vec<Uuid>,
    /// Events applied: the referral's version.
    pub version: u64,
}

/// What someone asks to happen to a referral.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Receive(Box<ReferralReceived>),
    Route(ReferralRouted),
    MarkUnroutable(ReferralUnroutable),
    Accept(ProviderStatusChange),
    Reject(ProviderStatusChange),
    Start(ProviderStatusChange),
    Hold(ProviderStatusChange),
    Complete(ProviderStatusChange),
    Fail(ProviderStatusChange),
    Cancel(ReferralClosedBy),
    EnterInError(ReferralClosedBy),
    RecordContact(ContactRecorded),
    RecordActivity(ActivityAttended),
    RecordOutcome(OutcomeRecorded),
    GiveConsent(ConsentChange),
    WithdrawConsent(ConsentChange),
    Erase(ReferralErased),
}

impl From<ReferralEvent> for Command {
    /// The command an event on the log would have been: how a reader of the log judges
    /// each event in log order with [`decide`].
    fn from(event: ReferralEvent) -> Self {
        match event {
            ReferralEvent::Received(received) => Command::Receive(received),
            ReferralEvent::Routed(routed) => Command::Route(routed),
            ReferralEvent::Unroutable(unroutable) => Command::MarkUnroutable(unroutable),
            ReferralEvent::Accepted(change) => Command::Accept(change),
            ReferralEvent::Rejected(change) => Command::Reject(change),
            ReferralEvent::Started(change) => Command::Start(change),
            ReferralEvent::OnHold(change) => Command::Hold(change),
            ReferralEvent::Completed(change) => Command::Complete(change),
            ReferralEvent::Failed(change) => Command::Fail(change),
            ReferralEvent::Cancelled(closed) => Command::Cancel(closed),
            ReferralEvent::EnteredInError(closed) => Command::EnterInError(closed),
            ReferralEvent::ContactRecorded(contact) => Command::RecordContact(contact),
            ReferralEvent::ActivityAttended(activity) => Command::RecordActivity(activity),
            ReferralEvent::OutcomeRecorded(outcome) => Command::RecordOutcome(outcome),
            ReferralEvent::ConsentRecorded(consent) => Command::GiveConsent(consent),
            ReferralEvent::ConsentWithdrawn(consent) => Command::WithdrawConsent(consent),
            ReferralEvent::Erased(erased) => Command::Erase(erased),
        }
    }
}

/// Why a command was refused. Each maps to an HTTP status at the edge (409 for
/// lifecycle conflicts, 403 for permission, 404 for unknown referrals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("referral {0} is not known")]
    UnknownReferral(ReferralId),
    #[error("command is for referral {command} but was applied to referral {state}")]
    WrongReferral {
        state: ReferralId,
        command: ReferralId,
    },
    #[error("referral {0} was already received with different content; send an update instead")]
    ConflictingResubmission(ReferralId),
    #[error("a referral cannot go from {from} to {to}")]
    InvalidTransition { from: Status, to: Status },
    #[error("provider {provider} does not hold this referral")]
    NotAssignedProvider { provider: ProviderId },
    #[error("{actor} may not {action} this referral")]
    NotPermitted { actor: Actor, action: &'static str },
    #[error("cannot {action} while the referral is {status}")]
    NotActive {
        status: Status,
        action: &'static str,
    },
    #[error(
        "the current provider has until {accept_by} to respond; re-routing before then is refused"
    )]
    DeadlineNotPassed { accept_by: DateTime<Utc> },
    #[error("provider {0} has already had this referral")]
    AlreadyTried(ProviderId),
    #[error("routing attempt {got} is stale; the referral is at attempt {current}")]
    StaleAttempt { current: u32, got: u32 },
}

/// Decides what a command produces, without changing anything. `Ok(vec![])` means the
/// command repeats what already happened (an idempotent resubmission or status repeat).
pub fn decide(state: Option<&Referral>, command: Command) -> Result<Vec<ReferralEvent>, Refusal> {
    let Some(referral) = state else {
        return match command {
            Command::Receive(received) => Ok(vec![ReferralEvent::Received(received)]),
            other => Err(Refusal::UnknownReferral(command_referral_id(&other))),
        };
    };
    let command_id = command_referral_id(&command);
    if command_id != referral.id {
        return Err(Refusal::WrongReferral {
            state: referral.id,
            command: command_id,
        });
    }
    match command {
        Command::Receive(received) => {
            if received.content_hash == referral.content_hash {
                Ok(vec![])
            } else {
                Err(Refusal::ConflictingResubmission(referral.id))
            }
        }
        Command::Route(routed) => decide_route(referral, routed),
        Command::MarkUnroutable(unroutable) => {
            if referral.status == Status::Unroutable {
                return Ok(vec![]);
            }
            check_transition(referral, Status::Unroutable)?;
            check_deadline_passed(referral, unroutable.occurred_at)?;
            Ok(vec![ReferralEvent::Unroutable(unroutable)])
        }
        Command::Accept(change) => {
            provider_transition(referral, change, Status::Accepted, ReferralEvent::Accepted)
        }
        Command::Reject(change) => {
            provider_transition(referral, change, Status::Rejected, ReferralEvent::Rejected)
        }
        Command::Start(change) => {
            provider_transition(referral, change, Status::InProgress, ReferralEvent::Started)
        }
        Command::Hold(change) => {
            provider_transition(referral, change, Status::OnHold, ReferralEvent::OnHold)
        }
        Command::Complete(change) => provider_transition(
            referral,
            change,
            Status::Completed,
            ReferralEvent::Completed,
        ),
        Command::Fail(change) => {
            provider_transition(referral, change, Status::Failed, ReferralEvent::Failed)
        }
        Command::Cancel(closed) => {
            check_actor(referral, &closed.by, "cancel")?;
            if referral.status == Status::Cancelled {
                return Ok(vec![]);
            }
            check_transition(referral, Status::Cancelled)?;
            Ok(vec![ReferralEvent::Cancelled(closed)])
        }
        Command::EnterInError(closed) => {
            check_actor(referral, &closed.by, "mark as entered in error")?;
            if referral.status == Status::EnteredInError {
                return Ok(vec![]);
            }
            Ok(vec![ReferralEvent::EnteredInError(closed)])
        }
        Command::RecordContact(contact) => {
            check_provider(referral, &contact.provider_id)?;
            check_with_provider(referral, "record a contact")?;
            Ok(vec![ReferralEvent::ContactRecorded(contact)])
        }
        Command::RecordActivity(activity) => {
            check_provider(referral, &activity.provider_id)?;
            check_with_provider(referral, "record an activity")?;
            Ok(vec![ReferralEvent::ActivityAttended(activity)])
        }
        Command::RecordOutcome(outcome) => {
            check_provider(referral, &outcome.provider_id)?;
            // Exit measures are often entered just after the provider closes the case.
            if !(referral.status.is_with_provider() || referral.status == Status::Completed) {
                return Err(Refusal::NotActive {
                    status: referral.status,
                    action: "record an outcome",
                });
            }
            if referral.observation_ids.contains(&outcome.observation_id) {
                return Ok(vec![]);
            }
            Ok(vec![ReferralEvent::OutcomeRecorded(outcome)])
        }
        Command::GiveConsent(consent) => {
            check_actor(referral, &consent.recorded_by, "record consent for")?;
            check_not_in_error(referral, "record consent")?;
            if referral.consent_to_evaluation {
                return Ok(vec![]);
            }
            Ok(vec![ReferralEvent::ConsentRecorded(consent)])
        }
        Command::WithdrawConsent(consent) => {
            check_actor(referral, &consent.recorded_by, "withdraw consent for")?;
            check_not_in_error(referral, "withdraw consent")?;
            if !referral.consent_to_evaluation {
                return Ok(vec![]);
            }
            Ok(vec![ReferralEvent::ConsentWithdrawn(consent)])
        }
        // Whatever the referral's state: an erasure is the person's right, and
        // repeating one redacts again (nothing in the state records it).
        Command::Erase(erased) => match erased.erased_by {
            Actor::Admin(_) | Actor::System(_) => Ok(vec![ReferralEvent::Erased(erased)]),
            ref actor => Err(Refusal::NotPermitted {
                actor: actor.clone(),
                action: "erase the person of",
            }),
        },
    }
}

fn decide_route(
    referral: &Referral,
    routed: ReferralRouted,
) -> Result<Vec<ReferralEvent>, Refusal> {
    if routed.attempt != referral.attempt + 1 {
        // A second router instance deciding the same step, or a replayed decision.
        if referral.status == Status::Requested
            && routed.attempt == referral.attempt
            && referral.provider.as_ref() == Some(&routed.provider_id)
        {
            return Ok(vec![]);
        }
        return Err(Refusal::StaleAttempt {
            current: referral.attempt,
            got: routed.attempt,
        });
    }
    check_transition(referral, Status::Requested)?;
    check_deadline_passed(referral, routed.occurred_at)?;
    if referral.tried_providers.contains(&routed.provider_id) {
        return Err(Refusal::AlreadyTried(routed.provider_id));
    }
    Ok(vec![ReferralEvent::Routed(routed)])
}

fn provider_transition(
    referral: &Referral,
    change: ProviderStatusChange,
    to: Status,
    event: fn(ProviderStatusChange) -> ReferralEvent,
) -> Result<Vec<ReferralEvent>, Refusal> {
    if judge_provider_change(referral.standing(), &change.provider_id, to)? {
        Ok(vec![event(change)])
    } else {
        Ok(vec![])
    }
}

/// Where a referral's Task stands: all that judging a provider's status change needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing<'a> {
    pub status: Status,
    /// The provider whose Task is live or who closed it.
    pub provider: Option<&'a ProviderId>,
    /// The provider routed to last (it may re-send its own rejection).
    pub last_tried: Option<&'a ProviderId>,
}

impl Referral {
    /// Where the referral's Task stands, for [`judge_provider_change`].
    pub fn standing(&self) -> Standing<'_> {
        Standing {
            status: self.status,
            provider: self.provider.as_ref(),
            last_tried: self.tried_providers.last(),
        }
    }
}

/// Whether `provider` moving the Task to `to` takes effect (`Ok(true)`) or repeats what
/// already happened (`Ok(false)`), and otherwise why it is refused.
///
/// This is the rule [`decide`], and so [`fold`], applies to every provider status
/// change. It is public for readers of the log that keep where routing stands rather
/// than the whole referral: the router asks it whether an acceptance by the provider
/// the log still shows as holding the referral stands although the router has since
/// re-routed it, so the race between the two is settled by one rule, not two copies.
pub fn judge_provider_change(
    standing: Standing<'_>,
    provider: &ProviderId,
    to: Status,
) -> Result<bool, Refusal> {
    // The provider that rejected no longer holds the referral, but re-sending its
    // rejection is still a repeat, not an intrusion.
    let repeats_own_rejection = to == Status::Rejected
        && standing.status == Status::Rejected
        && standing.last_tried == Some(provider);
    if repeats_own_rejection {
        return Ok(false);
    }
    if standing.provider != Some(provider) {
        return Err(Refusal::NotAssignedProvider {
            provider: provider.clone(),
        });
    }
    if standing.status == to {
        return Ok(false);
    }
    if !transition_allowed(standing.status, to) {
        return Err(Refusal::InvalidTransition {
            from: standing.status,
            to,
        });
    }
    Ok(true)
}

fn check_transition(referral: &Referral, to: Status) -> Result<(), Refusal> {
    if transition_allowed(referral.status, to) {
        Ok(())
    } else {
        Err(Refusal::InvalidTransition {
            from: referral.status,
            to,
        })
    }
}

/// Re-routing a referral that a provider still holds waits for its deadline.
fn check_deadline_passed(referral: &Referral, now: DateTime<Utc>) -> Result<(), Refusal> {
    match (referral.status, referral.accept_by) {
        (Status::Requested, Some(accept_by)) if now < accept_by => {
            Err(Refusal::DeadlineNotPassed { accept_by })
        }
        _ => Ok(()),
    }
}

fn check_provider(referral: &Referral, provider: &ProviderId) -> Result<(), Refusal> {
    if referral.provider.as_ref() == Some(provider) {
        Ok(())
    } else {
        Err(Refusal::NotAssignedProvider {
            provider: provider.clone(),
        })
    }
}

fn check_with_provider(referral: &Referral, action: &'static str) -> Result<(), Refusal> {
    if referral.status.is_with_provider() {
        Ok(())
    } else {
        Err(Refusal::NotActive {
            status: referral.status,
            action,
        })
    }
}

fn check_not_in_error(referral: &Referral, action: &'static str) -> Result<(), Refusal> {
    if referral.status == Status::EnteredInError {
        Err(Refusal::NotActive {
            status: referral.status,
            action,
        })
    } else {
        Ok(())
    }
}

/// The referrer, the provider holding the referral, linkwork itself and administrators
/// may close a referral or record consent; nobody else.
fn check_actor(referral: &Referral, actor: &Actor, action: &'static str) -> Result<(), Refusal> {
    let permitted = match actor {
        Actor::Source(source) => *source == referral.source,
        Actor::Provider(provider) => referral.provider.as_ref() == Some(provider),
        Actor::System(_) | Actor::Admin(_) => true,
    };
    if permitted {
        Ok(())
    } else {
        Err(Refusal::NotPermitted {
            actor: actor.clone(),
            action,
        })
    }
}

fn command_referral_id(command: &Command) -> ReferralId {
    match command {
        Command::Receive(event) => event.referral_id,
        Command::Route(event) => event.referral_id,
        Command::MarkUnroutable(event) => event.referral_id,
        Command::Accept(event)
        | Command::Reject(event)
        | Command::Start(event)
        | Command::Hold(event)
        | Command::Complete(event)
        | Command::Fail(event) => event.referral_id,
        Command::Cancel(event) | Command::EnterInError(event) => event.referral_id,
        Command::RecordContact(event) => event.referral_id,
        Command::RecordActivity(event) => event.referral_id,
        Command::RecordOutcome(event) => event.referral_id,
        Command::GiveConsent(event) | Command::WithdrawConsent(event) => event.referral_id,
        Command::Erase(event) => event.referral_id,
    }
}

/// What a logged event did to a referral, judged where it stands in the log.
///
/// Every reader of `referral.events` (projector, ingest's pending overlay, the router)
/// must agree on this, so it is one function ([`fold`]) rather than each reader's own
/// `decide` then `apply`.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    /// The event took effect: the referral as it stands after it.
    Applied(Referral),
    /// The event repeats what already happened (a resubmission, a status re-sent):
    /// nothing changes.
    Repeat,
    /// The lifecycle refuses the event where it stands in the log (an acceptance that
    /// reached the log after the re-routing, a second closing status): nothing changes.
    /// The refusal says why, for the record.
    Superseded(Refusal),
}

/// Folds one logged event into the state the events before it built.
///
/// The log records what was asked, in the order it happened, not only what was allowed:
/// two producers (ingest for providers and referrers, the router) each judge against
/// their own view, so an event can reach the log after another that makes it moot. Each
/// event is therefore judged as the command it would have been ([`decide`]) against
/// the state before it, and only then applied.
pub fn fold(state: Option<&Referral>, event: &ReferralEvent) -> Folded {
    match (state, event) {
        (None, ReferralEvent::Received(received)) => Folded::Applied(receive(received)),
        (None, other) => Folded::Superseded(Refusal::UnknownReferral(other.referral_id())),
        (Some(referral), _) => match decide(Some(referral), Command::from(event.clone())) {
            Ok(events) if events.is_empty() => Folded::Repeat,
            Ok(_) => Folded::Applied(advance(referral.clone(), event)),
            Err(refusal) => Folded::Superseded(refusal),
        },
    }
}

/// The raw step, for the domain's own tests: the state after an event, unjudged.
/// Everyone else goes through [`fold`], which judges the event first.
#[cfg(test)]
pub(crate) fn apply(state: Option<Referral>, event: &ReferralEvent) -> Option<Referral> {
    match (state, event) {
        (None, ReferralEvent::Received(received)) => Some(receive(received)),
        (None, _) => None,
        (Some(referral), _) => Some(advance(referral, event)),
    }
}

/// A new referral from its receipt.
fn receive(received: &ReferralReceived) -> Referral {
    Referral {
        id: received.referral_id,
        source: received.source.clone(),
        content_hash: received.content_hash.clone(),
        status: Status::Received,
        provider: None,
        attempt: 0,
        accept_by: None,
        tried_providers: Vec::new(),
        consent_to_evaluation: false,
        first_contact_at: None,
        contacts: 0,
        activities: 0,
        observation_ids: Vec::new(),
        version: 1,
    }
}

/// An existing referral after an event that takes effect.
fn advance(mut referral: Referral, event: &ReferralEvent) -> Referral {
    referral.version += 1;
    match event {
        // A repeated receipt changes nothing but the version.
        ReferralEvent::Received(_) => {}
        ReferralEvent::Routed(routed) => {
            referral.status = Status::Requested;
            referral.provider = Some(routed.provider_id.clone());
            referral.attempt = routed.attempt;
            referral.accept_by = Some(routed.accept_by);
            referral.tried_providers.push(routed.provider_id.clone());
        }
        ReferralEvent::Unroutable(_) => {
            referral.status = Status::Unroutable;
            referral.provider = None;
            referral.accept_by = None;
        }
        ReferralEvent::Accepted(_) => {
            referral.status = Status::Accepted;
            referral.accept_by = None;
        }
        ReferralEvent::Rejected(_) => {
            referral.status = Status::Rejected;
            referral.provider = None;
            referral.accept_by = None;
        }
        ReferralEvent::Started(_) => referral.status = Status::InProgress,
        ReferralEvent::OnHold(_) => referral.status = Status::OnHold,
        ReferralEvent::Completed(_) => referral.status = Status::Completed,
        ReferralEvent::Failed(_) => referral.status = Status::Failed,
        ReferralEvent::Cancelled(_) => {
            referral.status = Status::Cancelled;
            referral.accept_by = None;
        }
        ReferralEvent::EnteredInError(_) => {
            referral.status = Status::EnteredInError;
            referral.accept_by = None;
        }
        ReferralEvent::ContactRecorded(contact) => {
            referral.contacts += 1;
            let first = referral.first_contact_at.get_or_insert(contact.contact_at);
            *first = (*first).min(contact.contact_at);
        }
        ReferralEvent::ActivityAttended(_) => referral.activities += 1,
        ReferralEvent::OutcomeRecorded(outcome) => {
            referral.observation_ids.push(outcome.observation_id)
        }
        ReferralEvent::ConsentRecorded(_) => referral.consent_to_evaluation = true,
        ReferralEvent::ConsentWithdrawn(_) => referral.consent_to_evaluation = false,
        // Nobody can work with a person whose data is gone: an open referral is
        // cancelled (a closed one stays as it closed).
        ReferralEvent::Erased(_) => {
            if transition_allowed(referral.status, Status::Cancelled) {
                referral.status = Status::Cancelled;
                referral.accept_by = None;
            }
        }
    }
    referral
}

/// Rebuilds a referral from its events, in log order, as every reader of the log does:
/// events [`fold`] does not apply change nothing.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a ReferralEvent>) -> Option<Referral> {
    events
        .into_iter()
        .fold(None, |state, event| match fold(state.as_ref(), event) {
            Folded::Applied(next) => Some(next),
            Folded::Repeat | Folded::Superseded(_) => state,
        })
}

#[cfg(test)]
mod tests;

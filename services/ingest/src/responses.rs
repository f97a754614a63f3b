//! Kafka-native provider responses: a provider's system puts the same FHIR resources it
//! could send over HTTP (Task, Observation, Communication, Procedure, Consent) on
//! `provider.responses`, naming itself in the `linkwork-provider` header. Who may write
//! to the topic, and under which name, is for the cluster's ACLs, as for
//! `referrals.inbound`.
//!
//! The rules are the HTTP API's (`crate::provider`): each message is read and checked
//! as FHIR R4, judged against the referral as the log has built it under the
//! referral's command lock, and its events are published through the outbox in the
//! batch's transaction, so each is published exactly once. Messages on one referral in
//! one batch are judged in log order, each on the state the previous one left. A
//! refused message goes to `provider.responses.dlq` with an OperationOutcome as its
//! reason and records nothing.
//!
//! A Task update can name a routing attempt the projector has not reached yet (the
//! provider was quicker than the projector). The batch is retried until the attempt is
//! projected, for at most [`ProviderResponsesHandler::routing_wait`]; after that the
//! message is refused, since an attempt that long unseen is not one linkwork made.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use linkwork_bus::topics::REFERRAL_EVENTS;
use linkwork_bus::{
    Decode, Decoded, Effects, Handler, HandlerError, Incoming, OutboxEvent, Record,
};
use linkwork_domain::referral::{self, Folded};
use linkwork_domain::{EventId, ProviderId, ReferralEvent, ReferralId};
use linkwork_fhir::{Issue, IssueCode, OperationOutcome};
use sqlx::PgConnection;

use crate::provider::{self, CommandError, Submission};

/// The header naming the provider that sent the message.
pub const PROVIDER_HEADER: &str = "linkwork-provider";

/// The CloudEvents source of the events this consumer produces.
const EVENT_SOURCE: &str = "linkwork/ingest";

/// A provider's message as it arrived.
#[derive(Debug, Clone)]
pub struct ProviderMessage {
    pub provider: Option<String>,
    pub body: Vec<u8>,
}

impl Decode for ProviderMessage {
    fn decode(record: &Record) -> Result<Decoded<Self>, String> {
        Ok(crate::inbound::raw(
            record,
            ProviderMessage {
                provider: record.headers.get_str(PROVIDER_HEADER).map(str::to_owned),
                body: record.payload.clone().unwrap_or_default(),
            },
        ))
    }
}

/// Where a message sits in the log.
type Position = (Arc<str>, i32, i64);

/// Applies `provider.responses`.
#[derive(Debug)]
pub struct ProviderResponsesHandler {
    /// The canonical base of linkwork's CodeSystems and extensions.
    pub canonical_base: String,
    /// Where the events go (`referral.events`).
    pub events_topic: String,
    /// How long a Task naming a routing attempt not yet projected is retried before it
    /// is refused.
    pub routing_wait: Duration,
    /// When each message waiting for its routing attempt was first seen. Holds only the
    /// messages of the batch being retried.
    waiting: HashMap<Position, Instant>,
    clock: linkwork_domain::Clock,
    /// Where each accepted change is audited (`audit.events`); `None`: not audited.
    audit: Option<crate::audit::KafkaAudit>,
}

impl ProviderResponsesHandler {
    pub fn new(canonical_base: impl Into<String>) -> Self {
        Self {
            canonical_base: canonical_base.into(),
            events_topic: REFERRAL_EVENTS.to_owned(),
            routing_wait: Duration::from_secs(30),
            waiting: HashMap::new(),
            clock: linkwork_domain::Clock::system(),
            audit: None,
        }
    }

    /// Audits each accepted message on `topic` (`audit.events`).
    pub fn with_audit_topic(mut self, topic: impl Into<String>) -> Self {
        self.audit = Some(crate::audit::KafkaAudit {
            topic: topic.into(),
            canonical_base: self.canonical_base.clone(),
        });
        self
    }

    pub fn with_clock(mut self, clock: linkwork_domain::Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_events_topic(mut self, topic: impl Into<String>) -> Self {
        self.events_topic = topic.into();
        self
    }

    pub fn with_routing_wait(mut self, wait: Duration) -> Self {
        self.routing_wait = wait;
        self
    }
}

/// Reads one message into a submission.
fn read(
    message: &ProviderMessage,
    canonical_base: &str,
    now: chrono::DateTime<Utc>,
) -> Result<Submission, Vec<Issue>> {
    let provider = match message.provider.as_deref() {
        None => {
            return Err(vec![Issue::error(
                IssueCode::Required,
                format!("the {PROVIDER_HEADER} header must name the provider sending the message (its id in the provider directory)"),
            )])
        }
        Some(text) => ProviderId::parse(text).map_err(|error| {
            vec![Issue::error(IssueCode::Value, format!("{PROVIDER_HEADER}: {error}"))]
        })?,
    };
    let body = linkwork_fhir::parse::json(&message.body).map_err(|issue| vec![issue])?;
    provider::parse(&body, &provider, None, canonical_base, now)
}

fn refusal(error: &CommandError) -> String {
    OperationOutcome::single(Issue::error(error.issue_code(), error.to_string()))
        .to_json()
        .to_string()
}

impl Handler for ProviderResponsesHandler {
    type Message = ProviderMessage;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        let now = self.clock.now();
        let submissions = effects.read_or_reject(batch, |message| {
            read(message, &self.canonical_base, now).map_err(crate::inbound::outcome_text)
        });
        let mut referrals: Vec<ReferralId> = submissions
            .iter()
            .map(|(_, submission)| submission.referral)
            .collect();
        referrals.sort_by_key(|referral| *referral.as_uuid());
        referrals.dedup();
        // In one order everywhere, so two batches never wait on each other's locks.
        for referral in &referrals {
            provider::lock_referral(transaction, *referral).await?;
        }
        let mut states = provider::current_states(transaction, &referrals)
            .await
            .map_err(database_error)?;
        let unprojected: Vec<ReferralId> = referrals
            .iter()
            .filter(|referral| !states.contains_key(referral))
            .copied()
            .collect();
        let received = if unprojected.is_empty() {
            Default::default()
        } else {
            provider::received(transaction, &unprojected).await?
        };

        let mut pending: Vec<(EventId, ReferralEvent)> = Vec::new();
        let mut waiting = HashMap::new();
        for (incoming, submission) in &submissions {
            let record = incoming.record;
            let position: Position = (record.topic.clone(), record.partition, record.offset);
            let state = states.get(&submission.referral);
            if state.is_none() && !received.contains(&submission.referral) {
                let issue = Issue::error(
                    IssueCode::NotFound,
                    format!(
                        "ServiceRequest/{} is not a referral linkwork has received",
                        submission.referral
                    ),
                );
                effects.reject(
                    incoming,
                    OperationOutcome::single(issue).to_json().to_string(),
                );
                continue;
            }
            match provider::judge(state, submission) {
                Ok(events) => {
                    if let (Some(audit), false) = (&self.audit, events.is_empty()) {
                        let interaction = if submission.resource_type == "Task" {
                            crate::audit::Interaction::Update
                        } else {
                            crate::audit::Interaction::Create
                        };
                        let client = incoming.message.provider.as_deref().unwrap_or("unnamed");
                        effects.publish(
                            incoming,
                            audit.change(
                                record,
                                client,
                                "provider",
                                interaction,
                                &[submission.referral],
                                now,
                            ),
                        );
                    }
                    for (index, event) in events.into_iter().enumerate() {
                        // Derived from where the message sits, so a batch applied twice
                        // (a crash before its commit) publishes the same events.
                        let id = EventId::derive(&[
                            "provider-response",
                            &record.topic,
                            &record.partition.to_string(),
                            &record.offset.to_string(),
                            &index.to_string(),
                        ]);
                        effects.publish(
                            incoming,
                            OutboxEvent::new(
                                &self.events_topic,
                                id,
                                EVENT_SOURCE,
                                event.occurred_at(),
                                &event,
                            ),
                        );
                        if let Some(state) = states.get_mut(&submission.referral) {
                            if let Folded::Applied(after) = referral::fold(Some(state), &event) {
                                *state = after;
                            }
                        }
                        pending.push((id, event));
                    }
                }
                Err(CommandError::NotYetProjected(referral)) => {
                    let first_seen = self
                        .waiting
                        .get(&position)
                        .copied()
                        .unwrap_or_else(Instant::now);
                    if first_seen.elapsed() < self.routing_wait {
                        waiting.insert(position, first_seen);
                        self.waiting = waiting;
                        return Err(HandlerError::Retryable(
                            format!("referral {referral} is still being routed; waiting for the projection before applying a Task update").into(),
                        ));
                    }
                    let issue = Issue::error(
                        IssueCode::NotFound,
                        format!(
                            "the Task names a routing attempt of ServiceRequest/{referral} that linkwork has not made (waited {} s for it)",
                            self.routing_wait.as_secs()
                        ),
                    );
                    effects.reject(
                        incoming,
                        OperationOutcome::single(issue).to_json().to_string(),
                    );
                }
                Err(CommandError::Database(error)) => return Err(error.into()),
                Err(other) => effects.reject(incoming, refusal(&other)),
            }
        }
        self.waiting.clear();
        provider::remember_pending(transaction, &pending).await?;
        Ok(())
    }
}

fn database_error(error: CommandError) -> HandlerError {
    match error {
        CommandError::Database(error) => error.into(),
        other => HandlerError::Fatal(other.to_string().into()),
    }
}

//! Kafka-native intake: raw FHIR JSON from integration engines on `referrals.inbound`.
//!
//! The sender names itself in the `linkwork-source` header (`hospital:RVY`, ...); who may
//! write to the topic is for the cluster's ACLs. A message is a ServiceRequest, a BaRS
//! message Bundle, or a batch or transaction Bundle (taken as a unit: one refused entry
//! refuses the message). The same rules as HTTP apply. Accepted referrals are published
//! through the outbox in the batch's transaction, with their receipts, so each is
//! published exactly once; a refused message goes to `referrals.inbound.dlq` with the
//! OperationOutcome as its reason.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use linkwork_bus::headers::{TRACEPARENT, TRACESTATE};
use linkwork_bus::topics::REFERRAL_EVENTS;
use linkwork_bus::{
    Decode, Decoded, Effects, Handler, HandlerError, Incoming, OutboxEvent, Record,
};
use linkwork_domain::event::ReferralClosedBy;
use linkwork_domain::{Actor, EventId, ReferralEvent, ReferralId, Source};
use linkwork_fhir::message::{self, MessageReason};
use linkwork_fhir::{
    batch, parse, referral, IntakeRules, Issue, IssueCode, Located, OperationOutcome, Resolver,
    ValidatedReferral,
};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::intake::EVENT_SOURCE;

/// The header naming the sender.
pub const SOURCE_HEADER: &str = "linkwork-source";

/// A message as it arrived.
#[derive(Debug, Clone)]
pub struct RawFhir {
    pub source: Option<String>,
    pub body: Vec<u8>,
}

/// A raw message from an external system, as its handler receives it: no event id
/// (offsets alone protect it), the trace context it carried. Everything else is
/// checked by the handler, so every refusal is an OperationOutcome.
pub(crate) fn raw<T>(record: &Record, value: T) -> Decoded<T> {
    Decoded {
        event_id: None,
        traceparent: record.headers.get_str(TRACEPARENT).map(str::to_owned),
        tracestate: record.headers.get_str(TRACESTATE).map(str::to_owned),
        value,
    }
}

impl Decode for RawFhir {
    fn decode(record: &Record) -> Result<Decoded<Self>, String> {
        Ok(raw(
            record,
            RawFhir {
                source: record.headers.get_str(SOURCE_HEADER).map(str::to_owned),
                body: record.payload.clone().unwrap_or_default(),
            },
        ))
    }
}

/// What a message asks for, once read and checked.
enum Request {
    Take(Vec<ValidatedReferral>),
    Withdraw {
        source: Source,
        referral_id: ReferralId,
        entered_in_error: bool,
    },
}

/// Applies `referrals.inbound`.
#[derive(Debug, Clone)]
pub struct InboundHandler {
    pub rules: IntakeRules,
    /// The time events are stamped with (the system clock but in the demo).
    pub clock: linkwork_domain::Clock,
    /// Where accepted referrals go (`referral.events`).
    pub events_topic: String,
    /// Where each accepted change is audited (`audit.events`); `None`: not audited.
    pub audit: Option<crate::audit::KafkaAudit>,
    /// Seals what identifies each person before their referral goes on the log.
    pub vault: Option<linkwork_vault::Vault>,
}

impl InboundHandler {
    pub fn new(rules: IntakeRules) -> Self {
        Self {
            rules,
            clock: linkwork_domain::Clock::system(),
            events_topic: REFERRAL_EVENTS.to_owned(),
            audit: None,
            vault: None,
        }
    }

    /// The AuditEvent of a change `incoming` made, when auditing is on.
    fn audit(
        &self,
        effects: &mut Effects,
        incoming: &Incoming<'_, RawFhir>,
        interaction: crate::audit::Interaction,
        referral: ReferralId,
        at: DateTime<Utc>,
    ) {
        if let Some(audit) = &self.audit {
            let client = incoming.message.source.as_deref().unwrap_or("unnamed");
            let event = audit.change(
                incoming.record,
                client,
                "referral source",
                interaction,
                &[referral],
                at,
            );
            effects.publish(incoming, event);
        }
    }
}

impl InboundHandler {
    /// A referral event of this handler's, for the outbox.
    fn event(&self, id: EventId, at: DateTime<Utc>, event: &ReferralEvent) -> OutboxEvent {
        OutboxEvent::new(&self.events_topic, id, EVENT_SOURCE, at, event)
    }
}

impl Handler for InboundHandler {
    type Message = RawFhir;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        let now = self.clock.now();
        let requests = effects.read_or_reject(batch, |message| {
            read(message, &self.rules, now).map_err(outcome_text)
        });

        let ids: Vec<Uuid> = requests
            .iter()
            .flat_map(|(_, request)| match request {
                Request::Take(referrals) => referrals
                    .iter()
                    .map(|referral| *referral.referral_id.as_uuid())
                    .collect(),
                Request::Withdraw { referral_id, .. } => vec![*referral_id.as_uuid()],
            })
            .collect();
        // What is known, updated as this batch decides (a batch may repeat a referral).
        let mut known: HashMap<Uuid, (String, bool, bool)> =
            crate::receipts::find_many_for_update(transaction, &ids)
                .await?
                .into_iter()
                .map(|receipt| {
                    (
                        receipt.referral_id,
                        (receipt.content_hash, receipt.published, receipt.cancelled),
                    )
                })
                .collect();
        let mut published = Vec::new();
        let mut cancelled = Vec::new();
        // Each referral taken is sealed as it is published, its person's key read (and
        // made) with the rest of the batch's at once.
        let keys = match &self.vault {
            Some(vault) => {
                let people: Vec<linkwork_vault::Person> = requests
                    .iter()
                    .flat_map(|(_, request)| match request {
                        Request::Take(referrals) => referrals
                            .iter()
                            .map(|referral| {
                                vault.person_with(
                                    referral.subject.nhs_number.as_ref(),
                                    referral.referral_id,
                                )
                            })
                            .collect(),
                        Request::Withdraw { .. } => Vec::new(),
                    })
                    .collect();
                Some(
                    vault
                        .keys_for(transaction, &people)
                        .await
                        .map_err(vault_error)?,
                )
            }
            None => None,
        };
        let mut sealed_for = Vec::new();
        for (incoming, request) in requests {
            match request {
                Request::Take(referrals) => {
                    let conflict = referrals.iter().find(|referral| {
                        known
                            .get(referral.referral_id.as_uuid())
                            .is_some_and(|(hash, _, _)| *hash != referral.content_hash)
                    });
                    if let Some(conflicting) = conflict {
                        let issue = Issue::error(
                            IssueCode::Conflict,
                            format!(
                                "referral {} was already received with different content",
                                conflicting.referral_id
                            ),
                        );
                        effects.reject(
                            incoming,
                            OperationOutcome::single(issue).to_json().to_string(),
                        );
                        continue;
                    }
                    for referral in referrals {
                        let id = *referral.referral_id.as_uuid();
                        if known.get(&id).is_some_and(|(_, published, _)| *published) {
                            continue; // the same referral again: nothing new
                        }
                        known.insert(id, (referral.content_hash.clone(), true, false));
                        let event_id = EventId::derive(&[
                            "referral",
                            &referral.referral_id.to_string(),
                            "received",
                        ]);
                        published.push(PublishedReceipt::from(&referral));
                        let referral_id = referral.referral_id;
                        let mut received = referral.into_event(now);
                        if let (Some(vault), Some(keys)) = (&self.vault, &keys) {
                            let person = vault.person_of(&received);
                            let key = keys.get(&person).ok_or_else(|| {
                                HandlerError::Retryable(Box::new(std::io::Error::other(
                                    "a person's key went missing while sealing",
                                )))
                            })?;
                            key.seal_referral(&mut received);
                            sealed_for.push((*referral_id.as_uuid(), person));
                        }
                        let event = ReferralEvent::Received(Box::new(received));
                        effects.publish(incoming, self.event(event_id, now, &event));
                        self.audit(
                            effects,
                            incoming,
                            crate::audit::Interaction::Create,
                            referral_id,
                            now,
                        );
                    }
                }
                Request::Withdraw {
                    source,
                    referral_id,
                    entered_in_error,
                } => {
                    let id = *referral_id.as_uuid();
                    match known.get(&id) {
                        Some((_, true, true)) => {} // withdrawn already
                        Some((hash, true, false)) => {
                            known.insert(id, (hash.clone(), true, true));
                            cancelled.push(id);
                            let closed = ReferralClosedBy {
                                referral_id,
                                by: Actor::Source(source),
                                reason: None,
                                occurred_at: now,
                            };
                            let (kind, event) = if entered_in_error {
                                (
                                    "entered-in-error-by-referrer",
                                    ReferralEvent::EnteredInError(closed),
                                )
                            } else {
                                ("cancelled-by-referrer", ReferralEvent::Cancelled(closed))
                            };
                            let event_id =
                                EventId::derive(&["referral", &referral_id.to_string(), kind]);
                            effects.publish(incoming, self.event(event_id, now, &event));
                            self.audit(
                                effects,
                                incoming,
                                crate::audit::Interaction::Update,
                                referral_id,
                                now,
                            );
                        }
                        _ => {
                            let issue = Issue::error(
                                IssueCode::NotFound,
                                format!("referral {referral_id} is not known to this service; nothing to withdraw"),
                            );
                            effects.reject(
                                incoming,
                                OperationOutcome::single(issue).to_json().to_string(),
                            );
                        }
                    }
                }
            }
        }
        record_published(transaction, &published).await?;
        if let Some(vault) = &self.vault {
            vault
                .record_referrals(transaction, &sealed_for)
                .await
                .map_err(vault_error)?;
        }
        if !cancelled.is_empty() {
            sqlx::query!(
                "UPDATE ingest_receipts SET cancelled_at = now() WHERE referral_id = ANY($1) AND cancelled_at IS NULL",
                &cancelled
            )
            .execute(&mut *transaction)
            .await?;
        }
        Ok(())
    }
}

/// Reads and checks one message.
/// Issues as the text of an OperationOutcome: a dead letter's reason.
pub(crate) fn outcome_text(issues: Vec<Issue>) -> String {
    OperationOutcome::new(issues).to_json().to_string()
}

fn read(
    message: &RawFhir,
    rules: &IntakeRules,
    now: chrono::DateTime<Utc>,
) -> Result<Request, Vec<Issue>> {
    let source = match message.source.as_deref() {
        None => {
            return Err(vec![Issue::error(
                IssueCode::Required,
                format!("the {SOURCE_HEADER} header must name the sender (gp:<ODS>, hospital:<ODS>, contact-centre, asc, self, org:<name>)"),
            )])
        }
        Some(text) => Source::parse(text).map_err(|error| vec![Issue::error(IssueCode::Value, format!("{SOURCE_HEADER}: {error}"))])?,
    };
    let body = parse::json(&message.body).map_err(|issue| vec![issue])?;
    match parse::resource_type(&body) {
        Some("ServiceRequest") => {
            parse::check_service_request(&body, "ServiceRequest")?;
            let located = Located {
                resource: &body,
                path: "ServiceRequest".into(),
                fallback_identifier: None,
            };
            let resolver = Resolver::new().with_contained(&body, "ServiceRequest");
            Ok(Request::Take(vec![referral::validate(
                &source, &located, &resolver, rules, now,
            )?]))
        }
        Some("Bundle") if body.get("type").and_then(Value::as_str) == Some("message") => {
            let message = message::read(&body)?;
            let status = referral::text_of(message.service_request.resource, "status");
            match (message.reason, status) {
                (MessageReason::Update, Some(status @ ("revoked" | "entered-in-error"))) => {
                    let (_, referral_id) = referral::identity(&source, &message.service_request)
                        .map_err(|issue| vec![issue])?;
                    Ok(Request::Withdraw {
                        source,
                        referral_id,
                        entered_in_error: status == "entered-in-error",
                    })
                }
                _ => Ok(Request::Take(vec![referral::validate(
                    &source,
                    &message.service_request,
                    &message.resolver,
                    rules,
                    now,
                )?])),
            }
        }
        Some("Bundle") => {
            let request = batch::read(&body)?;
            let mut referrals = Vec::new();
            let mut issues = Vec::new();
            for entry in &request.entries {
                match entry {
                    batch::Entry::Referral {
                        request: located,
                        resolver,
                        ..
                    } => {
                        match parse::check_service_request(located.resource, &located.path)
                            .and_then(|_| {
                                referral::validate(&source, located, resolver, rules, now)
                            }) {
                            Ok(referral) => referrals.push(referral),
                            Err(found) => issues.extend(found),
                        }
                    }
                    batch::Entry::Context { .. } => {}
                    batch::Entry::Refused { issues: found, .. } => {
                        issues.extend(found.iter().cloned())
                    }
                }
            }
            if issues.is_empty() {
                Ok(Request::Take(referrals))
            } else {
                Err(issues)
            }
        }
        Some(other) => Err(vec![Issue::error(
            IssueCode::NotSupported,
            format!("referrals.inbound takes ServiceRequests and Bundles, not {other}"),
        )
        .at(format!("{other}.resourceType"))]),
        None => Err(vec![Issue::error(
            IssueCode::Required,
            "the message is not a FHIR resource (no resourceType)",
        )]),
    }
}

struct PublishedReceipt {
    referral_id: Uuid,
    source: String,
    system: String,
    value: String,
    hash: String,
}

impl From<&ValidatedReferral> for PublishedReceipt {
    fn from(referral: &ValidatedReferral) -> Self {
        Self {
            referral_id: *referral.referral_id.as_uuid(),
            source: referral.source.to_string(),
            system: referral.identifier.system.clone(),
            value: referral.identifier.value.clone(),
            hash: referral.content_hash.clone(),
        }
    }
}

async fn record_published(
    transaction: &mut PgConnection,
    receipts: &[PublishedReceipt],
) -> Result<(), sqlx::Error> {
    if receipts.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = receipts.iter().map(|receipt| receipt.referral_id).collect();
    let sources: Vec<String> = receipts
        .iter()
        .map(|receipt| receipt.source.clone())
        .collect();
    let systems: Vec<String> = receipts
        .iter()
        .map(|receipt| receipt.system.clone())
        .collect();
    let values: Vec<String> = receipts
        .iter()
        .map(|receipt| receipt.value.clone())
        .collect();
    let hashes: Vec<String> = receipts
        .iter()
        .map(|receipt| receipt.hash.clone())
        .collect();
    sqlx::query!(
        r#"
        INSERT INTO ingest_receipts (referral_id, source, identifier_system, identifier_value, content_hash, state, published_at)
        SELECT id, source, system, value, hash, 'published', now()
        FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) AS t(id, source, system, value, hash)
        ON CONFLICT (referral_id) DO UPDATE SET state = 'published', published_at = COALESCE(ingest_receipts.published_at, now())
        "#,
        &ids,
        &sources,
        &systems,
        &values,
        &hashes,
    )
    .execute(&mut *transaction)
    .await?;
    Ok(())
}

/// A vault failure as the consumer sees it: the database's are retried.
fn vault_error(error: linkwork_vault::VaultError) -> HandlerError {
    match error {
        linkwork_vault::VaultError::Database(error) => error.into(),
        other => HandlerError::Fatal(Box::new(other)),
    }
}

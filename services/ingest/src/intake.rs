//! Taking referrals: idempotent, and acknowledged only once the event is on the log.
//!
//! A referral's id derives from its source and identifier, so a resubmission finds
//! its receipt. For each referral: claim a receipt (`pending`), publish
//! `ReferralReceived` and wait for the broker's acknowledgement (`acks=all`), then
//! mark the receipt `published`. If publishing fails the claim is released: the
//! caller hears 503 and nothing was taken. If ingest dies between claim and publish,
//! the claim is abandoned; the next submission of the same content publishes it (the
//! event id is the same, so consumers apply it once), and after a minute new content
//! may take it over.

use chrono::{DateTime, Utc};
use linkwork_bus::topics::REFERRAL_EVENTS;
use linkwork_bus::{BusError, Producer};
use linkwork_domain::event::ReferralClosedBy;
use linkwork_domain::{Actor, EventId, ReferralEvent, ReferralId, Source};
use linkwork_fhir::ValidatedReferral;
use sqlx::PgPool;

use crate::receipts;

/// The CloudEvents source of what ingest publishes.
pub const EVENT_SOURCE: &str = "linkwork/ingest";

/// How a referral was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// New: its event is now on the log.
    Created { received_at: DateTime<Utc> },
    /// Received before with the same content: nothing new.
    Duplicate { received_at: DateTime<Utc> },
}

impl Taken {
    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            Taken::Created { received_at } | Taken::Duplicate { received_at } => *received_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("referral {0} was already received with different content; send an update or a new identifier")]
    Conflict(ReferralId),
    #[error("referral {0} is not known to this service")]
    Unknown(ReferralId),
    #[error("the event log is unavailable")]
    Unavailable(#[source] BusError),
    #[error("the database is unavailable")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// How the referrer withdrew a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// ServiceRequest status `revoked`: the referral is no longer wanted.
    Revoked,
    /// ServiceRequest status `entered-in-error`: it should never have been sent.
    EnteredInError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    Now,
    Already,
}

/// What to do with one referral of a submission.
enum Plan {
    /// Publish its event; `claimed` when this submission holds the receipt's claim.
    Publish {
        claimed: bool,
        received_at: DateTime<Utc>,
    },
    Done(Result<Taken, IntakeError>),
}

#[derive(Debug, Clone)]
pub struct Intake {
    pool: PgPool,
    producer: Producer,
    /// A pending claim older than this is treated as abandoned.
    abandon_after: chrono::Duration,
    events_topic: String,
    clock: linkwork_domain::Clock,
}

impl Intake {
    pub fn new(pool: PgPool, producer: Producer) -> Self {
        Self {
            pool,
            producer,
            abandon_after: chrono::Duration::minutes(1),
            events_topic: REFERRAL_EVENTS.to_owned(),
            clock: linkwork_domain::Clock::system(),
        }
    }

    /// Stamps events with `clock` (the demo runs a borough's year in minutes). Claims
    /// and their expiry stay on the system clock.
    pub fn with_clock(mut self, clock: linkwork_domain::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Publishes to `topic` instead of `referral.events` (tests give each run its own).
    pub fn with_events_topic(mut self, topic: String) -> Self {
        self.events_topic = topic;
        self
    }

    /// Takes one referral.
    pub async fn submit(&self, referral: ValidatedReferral) -> Result<Taken, IntakeError> {
        self.submit_many(vec![referral])
            .await?
            .pop()
            .unwrap_or(Err(IntakeError::Internal(
                "a submission of one referral gave no result",
            )))
    }

    /// Takes referrals independently (a batch): each gets its own result, in order.
    /// Their events are published together, so acknowledgements are awaited once.
    /// `Err` when the submission as a whole could not be attempted (no database).
    pub async fn submit_many(
        &self,
        referrals: Vec<ValidatedReferral>,
    ) -> Result<Vec<Result<Taken, IntakeError>>, IntakeError> {
        let plans = self.plan_all(&referrals).await?;
        Ok(self.execute(referrals, plans).await)
    }

    /// Takes referrals all or nothing (a transaction). If any conflicts, none is taken
    /// and the index of the first conflict is returned.
    pub async fn submit_transaction(
        &self,
        referrals: Vec<ValidatedReferral>,
    ) -> Result<Vec<Taken>, (usize, IntakeError)> {
        let plans = self
            .plan_all(&referrals)
            .await
            .map_err(|error| (0, IntakeError::Database(error)))?;
        if let Some(index) = plans
            .iter()
            .position(|plan| matches!(plan, Plan::Done(Err(_))))
        {
            self.release_claims(&referrals, &plans).await;
            let error = match plans.into_iter().nth(index) {
                Some(Plan::Done(Err(error))) => error,
                _ => IntakeError::Internal("a refused plan disappeared"),
            };
            return Err((index, error));
        }
        let mut taken = Vec::with_capacity(referrals.len());
        for (index, result) in self.execute(referrals, plans).await.into_iter().enumerate() {
            // A broker failure part-way: what was published stays (resubmitting the
            // same transaction completes it; identities are deterministic).
            taken.push(result.map_err(|error| (index, error))?);
        }
        Ok(taken)
    }

    async fn plan_all(&self, referrals: &[ValidatedReferral]) -> Result<Vec<Plan>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let mut plans = Vec::with_capacity(referrals.len());
        for referral in referrals {
            plans.push(self.plan(&mut connection, referral).await?);
        }
        Ok(plans)
    }

    async fn plan(
        &self,
        connection: &mut sqlx::PgConnection,
        referral: &ValidatedReferral,
    ) -> Result<Plan, sqlx::Error> {
        let source = referral.source.to_string();
        if let Some(received_at) = receipts::claim(
            connection,
            referral.referral_id,
            &source,
            &referral.identifier.system,
            &referral.identifier.value,
            &referral.content_hash,
        )
        .await?
        {
            return Ok(Plan::Publish {
                claimed: true,
                received_at,
            });
        }
        let Some(existing) = receipts::find(connection, referral.referral_id).await? else {
            // Released between our claim and our look: claim again.
            return Box::pin(self.plan(connection, referral)).await;
        };
        if existing.content_hash == referral.content_hash {
            return Ok(if existing.published {
                Plan::Done(Ok(Taken::Duplicate {
                    received_at: existing.received_at,
                }))
            } else {
                // Pending: publishing the same event again is harmless.
                Plan::Publish {
                    claimed: false,
                    received_at: existing.received_at,
                }
            });
        }
        let abandoned_before = Utc::now() - self.abandon_after;
        if !existing.published
            && existing.received_at < abandoned_before
            && receipts::reclaim_abandoned(
                connection,
                referral.referral_id,
                &existing.content_hash,
                &referral.content_hash,
                abandoned_before,
            )
            .await?
        {
            return Ok(Plan::Publish {
                claimed: true,
                received_at: Utc::now(),
            });
        }
        Ok(Plan::Done(Err(IntakeError::Conflict(referral.referral_id))))
    }

    async fn execute(
        &self,
        referrals: Vec<ValidatedReferral>,
        plans: Vec<Plan>,
    ) -> Vec<Result<Taken, IntakeError>> {
        let now = self.clock.now();
        let mut to_publish = Vec::new();
        let mut positions = Vec::new();
        let mut results: Vec<Option<Result<Taken, IntakeError>>> = Vec::with_capacity(plans.len());
        let mut meta = Vec::new();
        for (index, (referral, plan)) in referrals.into_iter().zip(plans).enumerate() {
            match plan {
                Plan::Done(result) => results.push(Some(result)),
                Plan::Publish {
                    claimed,
                    received_at,
                } => {
                    results.push(None);
                    positions.push(index);
                    meta.push((
                        referral.referral_id,
                        referral.source.to_string(),
                        referral.identifier.clone(),
                        referral.content_hash.clone(),
                        claimed,
                        received_at,
                    ));
                    let event_id = EventId::derive(&[
                        "referral",
                        &referral.referral_id.to_string(),
                        "received",
                    ]);
                    to_publish.push((
                        event_id,
                        ReferralEvent::Received(Box::new(referral.into_event(now))),
                    ));
                }
            }
        }
        if !to_publish.is_empty() {
            let deliveries = self
                .producer
                .publish_batch(&self.events_topic, EVENT_SOURCE, now, &to_publish)
                .await;
            let mut connection = match self.pool.acquire().await {
                Ok(connection) => Some(connection),
                Err(error) => {
                    tracing::error!(%error, "cannot record published referrals");
                    None
                }
            };
            for (
                (position, delivery),
                (referral_id, source, identifier, hash, claimed, received_at),
            ) in positions.into_iter().zip(deliveries).zip(meta)
            {
                let outcome = match delivery {
                    Ok(_) => {
                        let recorded = match connection.as_mut() {
                            Some(connection) => {
                                receipts::mark_published(
                                    connection,
                                    referral_id,
                                    &source,
                                    &identifier.system,
                                    &identifier.value,
                                    &hash,
                                )
                                .await
                            }
                            None => Err(sqlx::Error::PoolTimedOut),
                        };
                        if let Err(error) = recorded {
                            // The event is on the log; a resubmission will find the
                            // pending claim with the same content and finish it.
                            tracing::warn!(%error, %referral_id, "published but not recorded");
                        }
                        Ok(if claimed {
                            Taken::Created { received_at }
                        } else {
                            Taken::Duplicate { received_at }
                        })
                    }
                    Err(error) => {
                        if claimed {
                            if let Some(connection) = connection.as_mut() {
                                if let Err(release_error) =
                                    receipts::release(connection, referral_id, &hash).await
                                {
                                    tracing::warn!(%release_error, %referral_id, "could not release a claim");
                                }
                            }
                        }
                        Err(IntakeError::Unavailable(error))
                    }
                };
                results[position] = Some(outcome);
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or(Err(IntakeError::Internal(
                    "a referral was planned but not carried out",
                )))
            })
            .collect()
    }

    async fn release_claims(&self, referrals: &[ValidatedReferral], plans: &[Plan]) {
        let Ok(mut connection) = self.pool.acquire().await else {
            return;
        };
        for (referral, plan) in referrals.iter().zip(plans) {
            if let Plan::Publish { claimed: true, .. } = plan {
                let _ = receipts::release(
                    &mut connection,
                    referral.referral_id,
                    &referral.content_hash,
                )
                .await;
            }
        }
    }

    /// The content hash of a referral taken before, if it was.
    pub async fn content_hash_of(
        &self,
        referral_id: ReferralId,
    ) -> Result<Option<String>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        Ok(receipts::find(&mut connection, referral_id)
            .await?
            .filter(|receipt| receipt.published)
            .map(|receipt| receipt.content_hash))
    }

    /// The referrer withdraws a referral it sent.
    pub async fn withdraw(
        &self,
        source: &Source,
        referral_id: ReferralId,
        withdrawal: Withdrawal,
        reason: Option<String>,
    ) -> Result<Withdrawn, IntakeError> {
        let mut connection = self.pool.acquire().await?;
        let receipt = receipts::find(&mut connection, referral_id)
            .await?
            .filter(|receipt| receipt.published)
            .ok_or(IntakeError::Unknown(referral_id))?;
        if receipt.cancelled {
            return Ok(Withdrawn::Already);
        }
        let closed = ReferralClosedBy {
            referral_id,
            by: Actor::Source(source.clone()),
            reason,
            occurred_at: self.clock.now(),
        };
        let (kind, event) = match withdrawal {
            Withdrawal::Revoked => ("cancelled-by-referrer", ReferralEvent::Cancelled(closed)),
            Withdrawal::EnteredInError => (
                "entered-in-error-by-referrer",
                ReferralEvent::EnteredInError(closed),
            ),
        };
        let event_id = EventId::derive(&["referral", &referral_id.to_string(), kind]);
        self.producer
            .publish(
                &self.events_topic,
                event_id,
                EVENT_SOURCE,
                self.clock.now(),
                &event,
            )
            .await
            .map_err(IntakeError::Unavailable)?;
        receipts::mark_cancelled(&mut connection, referral_id).await?;
        Ok(Withdrawn::Now)
    }
}

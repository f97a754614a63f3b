//! Taking referrals: idempotent, and acknowledged only once the event is on the log.
//!
//! A referral's id derives from its source and identifier, so a resubmission finds
//! its receipt. For each referral: claim a receipt (`pending`), publish
//! `ReferralReceived` and wait for the broker's acknowledgement (`acks=all`), then
//! mark the receipt `published` and answer 2xx. Only the holder of the claim publishes,
//! so the log holds at most one `ReferralReceived` per referral.
//!
//! A failed delivery is not proof of absence: librdkafka also reports a message whose
//! request reached the broker but went unanswered (a timeout, a broker killed
//! mid-request) as failed, and it may be on the log. So:
//! - if the producer has never sent a request to any broker, nothing can have landed:
//!   the claim is released and the caller hears 503, nothing was taken;
//! - otherwise the claim stays, `unconfirmed`, and the caller hears 503: resubmit the
//!   same referral to learn the outcome.
//!
//! A later submission that finds a claim not `published` (unconfirmed, or pending
//! because its submission is still publishing or died) settles it before anything else
//! is published: it waits briefly for a publish under way, then reads the referral's
//! partition (chosen by key, as the producer does) from shortly before its latest
//! attempt up to the high watermark, looking for the event's `ce_id`. Found: the receipt becomes
//! `published`, and the same content is answered 200 with the same id (other content
//! is a conflict). Not found, and the latest attempt older than the producer's message
//! timeout with a margin (no request of it can still land): the submission takes the
//! claim over and publishes afresh. Not decidable yet (too recent, or the log cannot
//! be read): 503 with `Retry-After`, and nothing is published.

use chrono::{DateTime, Utc};
use std::time::Duration;

use linkwork_bus::lookup::{self, EventSearch};
use linkwork_bus::partitioner::partition_for;
use linkwork_bus::topics::REFERRAL_EVENTS;
use linkwork_bus::{BusError, KafkaSettings, Producer};
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
    /// Publishing failed before any request could reach the broker: nothing was taken.
    #[error("the event log is unavailable")]
    Unavailable(#[source] BusError),
    /// The broker did not acknowledge the event, but it may be on the log: a
    /// resubmission of the same referral after `retry_after` learns which.
    #[error("the event log did not confirm the referral")]
    Unconfirmed {
        #[source]
        error: BusError,
        retry_after: Duration,
    },
    /// An earlier attempt of this referral is not settled yet (it may still land, or
    /// the log cannot be read to find it): nothing was published now.
    #[error("an earlier submission of referral {referral_id} is not settled yet")]
    Unsettled {
        referral_id: ReferralId,
        retry_after: Duration,
    },
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

/// Messages stamped this long before a claim are read when settling it: the claim
/// time is the database's clock, a message's timestamp the producer's.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

/// A claim made by a submission's own statement less than this long ago is published
/// without restarting its attempt: settling allows two seconds beyond the delivery
/// timeouts, so a send that starts within one second of the claim lands in time.
const FRESH_CLAIM: Duration = Duration::from_secs(1);

/// Longest a search of the log for one unconfirmed event may take.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with one referral of a submission.
enum Plan {
    /// Publish its event: this submission holds the claim, made or taken over at
    /// `attempted_at`.
    Publish {
        received_at: DateTime<Utc>,
        attempted_at: DateTime<Utc>,
        /// When the claim was made by this submission's own claiming statement (not
        /// taken over after settling an earlier attempt).
        claimed_at: Option<std::time::Instant>,
    },
    Done(Result<Taken, IntakeError>),
    /// The same referral appeared earlier in this submission (at this index): it gets
    /// that one's outcome, as a resubmission would, and is not claimed or published.
    SameAs(usize),
}

#[derive(Debug, Clone)]
pub struct Intake {
    pool: PgPool,
    producer: Producer,
    /// For reading the log back when settling an unconfirmed claim.
    kafka: KafkaSettings,
    /// The producer's message timeout: its deliveries resolve within this.
    delivery_timeout: Duration,
    events_topic: String,
    clock: linkwork_domain::Clock,
    /// Lone submissions go through the group commit when there is one.
    group: Option<tokio::sync::mpsc::Sender<Waiting>>,
    /// Seals what identifies each person before their referral goes on the log.
    vault: Option<linkwork_vault::Vault>,
}

/// A lone submission waiting for its group, and where its answer goes.
type Waiting = (
    ValidatedReferral,
    tokio::sync::oneshot::Sender<Result<Taken, IntakeError>>,
);

/// How lone submissions (one referral per HTTP request) are taken together: whatever
/// has arrived while earlier groups were being taken is claimed in one statement,
/// published in one batch whose acknowledgements are awaited once, and marked in one
/// statement. Under light load a group is one referral and waits for nothing.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Most referrals in one group.
    pub max_group: usize,
    /// Groups being taken at once (each holds a pooled connection only while it
    /// claims and while it marks, not while the broker acknowledges).
    pub concurrent_groups: usize,
    /// Submissions waiting for a group; a full queue makes submitters wait.
    pub queue: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            max_group: 500,
            concurrent_groups: 4,
            queue: 4096,
        }
    }
}

impl Intake {
    /// `producer` must give up on a delivery after `delivery_timeout` (its
    /// `message.timeout.ms`): an attempt is settled a margin after that.
    pub fn new(
        pool: PgPool,
        producer: Producer,
        kafka: KafkaSettings,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            producer,
            kafka,
            delivery_timeout,
            events_topic: REFERRAL_EVENTS.to_owned(),
            clock: linkwork_domain::Clock::system(),
            group: None,
            vault: None,
        }
    }

    /// The vault referrals are sealed with, if any.
    pub fn vault(&self) -> Option<&linkwork_vault::Vault> {
        self.vault.as_ref()
    }

    /// Seals what identifies each person under their own key before the referral goes
    /// on the log (crypto-shredding: erasing the person destroys the key). Call it
    /// before [`Intake::with_group_commit`].
    pub fn with_vault(mut self, vault: Option<linkwork_vault::Vault>) -> Self {
        self.vault = vault;
        self
    }

    /// Takes lone submissions in groups (see [`GroupCommit`]) on a task of their own,
    /// which ends when every clone of the returned intake is dropped. Call it last:
    /// the task keeps the intake as configured so far.
    pub fn with_group_commit(mut self, settings: GroupCommit) -> Self {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Waiting>(settings.queue.max(1));
        let intake = self.clone();
        let groups = std::sync::Arc::new(tokio::sync::Semaphore::new(
            settings.concurrent_groups.max(1),
        ));
        let max_group = settings.max_group.max(1);
        tokio::spawn(async move {
            loop {
                // A group is formed only once it can be taken, so what arrives while
                // every group is busy is taken together next.
                let Ok(permit) = groups.clone().acquire_owned().await else {
                    return;
                };
                let mut waiting = Vec::with_capacity(max_group);
                if receiver.recv_many(&mut waiting, max_group).await == 0 {
                    return;
                }
                let intake = intake.clone();
                tokio::spawn(async move {
                    let (referrals, answers): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
                    match intake.submit_many(referrals).await {
                        Ok(results) => {
                            for (answer, result) in answers.into_iter().zip(results) {
                                let _ = answer.send(result);
                            }
                        }
                        Err(error) => {
                            let error = match error {
                                IntakeError::Database(error) => error,
                                other => sqlx::Error::Protocol(other.to_string()),
                            };
                            for answer in answers {
                                let _ =
                                    answer.send(Err(IntakeError::Database(clone_error(&error))));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        self.group = Some(sender);
        self
    }

    /// How long after an attempt began a request of it may still land on the log: the
    /// producer's message timeout, and as long again for a request the broker holds.
    fn settle_after(&self) -> Duration {
        self.delivery_timeout * 2 + Duration::from_secs(2)
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
        if let Some(group) = &self.group {
            let (answer, answered) = tokio::sync::oneshot::channel();
            group
                .send((referral, answer))
                .await
                .map_err(|_| IntakeError::Internal("the group commit has stopped"))?;
            return answered.await.unwrap_or(Err(IntakeError::Internal(
                "the group commit gave no answer",
            )));
        }
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
        // A referral twice with different content conflicts with itself: refused
        // before anything is published, like any other conflict.
        let refused = plans
            .iter()
            .enumerate()
            .position(|(index, plan)| match plan {
                Plan::Done(Err(_)) => true,
                Plan::SameAs(first) => {
                    referrals[index].content_hash != referrals[*first].content_hash
                }
                _ => false,
            });
        if let Some(index) = refused {
            self.release_claims(&referrals, &plans).await;
            let error = match plans.into_iter().nth(index) {
                Some(Plan::Done(Err(error))) => error,
                Some(Plan::SameAs(_)) => IntakeError::Conflict(referrals[index].referral_id),
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
        let mut first_of = std::collections::HashMap::with_capacity(referrals.len());
        let mut distinct = Vec::with_capacity(referrals.len());
        for (index, referral) in referrals.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(first) =
                first_of.entry(referral.referral_id)
            {
                first.insert(index);
                distinct.push(new_claim(referral));
            }
        }
        // New referrals, the usual case, are claimed together in one statement; the
        // rest already had a receipt and are settled one by one.
        let claimed: std::collections::HashMap<uuid::Uuid, DateTime<Utc>> =
            receipts::claim_many(&mut connection, &distinct)
                .await?
                .into_iter()
                .collect();
        let claimed_at = std::time::Instant::now();
        let mut plans = Vec::with_capacity(referrals.len());
        for (index, referral) in referrals.iter().enumerate() {
            let first = first_of[&referral.referral_id];
            if first != index {
                // Planning it again would wait on the claim just made for its twin.
                plans.push(Plan::SameAs(first));
            } else if let Some(&received_at) = claimed.get(referral.referral_id.as_uuid()) {
                // A new claim's attempt time defaults to the same `now()`.
                plans.push(Plan::Publish {
                    received_at,
                    attempted_at: received_at,
                    claimed_at: Some(claimed_at),
                });
            } else {
                plans.push(self.plan(&mut connection, referral).await?);
            }
        }
        Ok(plans)
    }

    async fn plan(
        &self,
        connection: &mut sqlx::PgConnection,
        referral: &ValidatedReferral,
    ) -> Result<Plan, sqlx::Error> {
        let source = referral.source.to_string();
        let referral_id = referral.referral_id;
        let settle_after = self.settle_after();
        let mut waited_for_attempt = false;
        // Each pass either decides or sees the receipt change under it (another
        // submission claimed, published or took over meanwhile); a few passes suffice.
        for _ in 0..8 {
            if let Some(received_at) = receipts::claim(
                connection,
                referral_id,
                &source,
                &referral.identifier.system,
                &referral.identifier.value,
                &referral.content_hash,
            )
            .await?
            {
                // A new claim's attempt time defaults to the same `now()`.
                return Ok(Plan::Publish {
                    received_at,
                    attempted_at: received_at,
                    claimed_at: None,
                });
            }
            let Some(existing) =
                receipts::find_claim(connection, referral_id, settle_after).await?
            else {
                continue; // released between our claim and our look: claim again
            };
            if existing.published() {
                return Ok(Plan::Done(self.answer_published(referral, &existing)));
            }
            if existing.state == "pending" && !existing.settled() && !waited_for_attempt {
                // Another submission may be publishing it right now: its outcome is
                // known within the delivery timeout.
                waited_for_attempt = true;
                self.wait_for_attempt(connection, referral_id, &existing)
                    .await?;
                continue;
            }
            // Every earlier attempt was proven absent before the latest began, so the
            // search starts at the latest attempt, however old the receipt.
            match self.find_on_log(referral_id, existing.attempted_at).await {
                Ok(Some(offset)) => {
                    tracing::info!(%referral_id, offset, "an unconfirmed referral is on the log");
                    receipts::mark_published(
                        connection,
                        referral_id,
                        &source,
                        &referral.identifier.system,
                        &referral.identifier.value,
                        &existing.content_hash,
                    )
                    .await?;
                    return Ok(Plan::Done(self.answer_published(referral, &existing)));
                }
                Ok(None) if existing.settled() => {
                    if let Some((received_at, attempted_at)) = receipts::take_over(
                        connection,
                        referral_id,
                        &existing,
                        &referral.content_hash,
                        settle_after,
                    )
                    .await?
                    {
                        tracing::info!(%referral_id, "an unconfirmed referral is not on the log: publishing it afresh");
                        return Ok(Plan::Publish {
                            received_at,
                            attempted_at,
                            claimed_at: None,
                        });
                    }
                    continue; // changed meanwhile
                }
                Ok(None) => {
                    return Ok(Plan::Done(Err(IntakeError::Unsettled {
                        referral_id,
                        retry_after: Duration::from_secs_f64(existing.settles_in.max(1.0)),
                    })));
                }
                Err(error) => {
                    tracing::warn!(%error, %referral_id, "cannot read the log to settle a referral");
                    return Ok(Plan::Done(Err(IntakeError::Unsettled {
                        referral_id,
                        retry_after: Duration::from_secs(5),
                    })));
                }
            }
        }
        Ok(Plan::Done(Err(IntakeError::Unsettled {
            referral_id,
            retry_after: Duration::from_secs(1),
        })))
    }

    /// The answer for a referral whose event is on the log: a duplicate when the content
    /// is the same, a conflict otherwise.
    fn answer_published(
        &self,
        referral: &ValidatedReferral,
        existing: &receipts::Claim,
    ) -> Result<Taken, IntakeError> {
        if existing.content_hash == referral.content_hash {
            Ok(Taken::Duplicate {
                received_at: existing.received_at,
            })
        } else {
            Err(IntakeError::Conflict(referral.referral_id))
        }
    }

    /// Waits until the attempt of `existing` is decided by its own submission (the
    /// receipt changes) or its delivery must have resolved.
    async fn wait_for_attempt(
        &self,
        connection: &mut sqlx::PgConnection,
        referral_id: ReferralId,
        existing: &receipts::Claim,
    ) -> Result<(), sqlx::Error> {
        // The delivery resolves within the timeout; telling a failure apart takes about
        // a second more (`Producer::may_have_sent`).
        let deadline = tokio::time::Instant::now() + self.delivery_timeout + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = receipts::find_claim(connection, referral_id, self.settle_after()).await?;
            let unchanged = now.as_ref().is_some_and(|claim| {
                claim.state == existing.state
                    && claim.attempted_at == existing.attempted_at
                    && claim.content_hash == existing.content_hash
            });
            if !unchanged {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Where `ReferralReceived` of `referral_id` is on the log, if it is: read from its
    /// partition from just before `attempted_at` up to the high watermark.
    async fn find_on_log(
        &self,
        referral_id: ReferralId,
        attempted_at: DateTime<Utc>,
    ) -> Result<Option<i64>, BusError> {
        let partitions = self.producer.partition_count(&self.events_topic).await?;
        let key = referral_id.to_string();
        lookup::find_event(
            &self.kafka,
            EventSearch {
                topic: self.events_topic.clone(),
                partition: partition_for(key.as_bytes(), partitions),
                since: attempted_at - CLOCK_MARGIN,
                event_id: *received_event_id(referral_id).as_uuid(),
                timeout: SEARCH_TIMEOUT,
            },
        )
        .await
    }

    /// Carries out the plans; a referral repeated within the submission gets its first
    /// copy's outcome (a duplicate of it when the content is the same, a conflict
    /// otherwise, and 503 when the first was not taken).
    async fn execute(
        &self,
        referrals: Vec<ValidatedReferral>,
        plans: Vec<Plan>,
    ) -> Vec<Result<Taken, IntakeError>> {
        let mut repeats = Vec::new();
        let plans: Vec<Plan> = plans
            .into_iter()
            .enumerate()
            .map(|(index, plan)| match plan {
                Plan::SameAs(first) => {
                    let same = referrals[index].content_hash == referrals[first].content_hash;
                    repeats.push((index, first, referrals[index].referral_id, same));
                    Plan::Done(Err(IntakeError::Internal("a repeat was not resolved")))
                }
                plan => plan,
            })
            .collect();
        let mut results = self.execute_distinct(referrals, plans).await;
        for (index, first, referral_id, same) in repeats {
            results[index] = match &results[first] {
                Ok(taken) if same => Ok(Taken::Duplicate {
                    received_at: taken.received_at(),
                }),
                Ok(_) => Err(IntakeError::Conflict(referral_id)),
                Err(_) => Err(IntakeError::Unsettled {
                    referral_id,
                    retry_after: Duration::from_secs(1),
                }),
            };
        }
        results
    }

    async fn execute_distinct(
        &self,
        referrals: Vec<ValidatedReferral>,
        plans: Vec<Plan>,
    ) -> Vec<Result<Taken, IntakeError>> {
        let now = self.clock.now();
        let mut results: Vec<Option<Result<Taken, IntakeError>>> = Vec::with_capacity(plans.len());
        let mut claimed = Vec::new();
        let mut fresh = true;
        let mut to_publish = Vec::new();
        for (index, (referral, plan)) in referrals.into_iter().zip(plans).enumerate() {
            match plan {
                Plan::Done(result) => results.push(Some(result)),
                Plan::SameAs(_) => results.push(Some(Err(IntakeError::Internal(
                    "a repeated referral reached publishing",
                )))),
                Plan::Publish {
                    received_at,
                    attempted_at,
                    claimed_at,
                } => {
                    results.push(None);
                    fresh &= claimed_at.is_some_and(|at| at.elapsed() < FRESH_CLAIM);
                    claimed.push((index, referral, received_at, attempted_at));
                }
            }
        }
        if claimed.is_empty() {
            return finish(results);
        }
        let held: std::collections::HashMap<uuid::Uuid, DateTime<Utc>> = if fresh {
            // Claimed a moment ago by this submission: the attempt is the claim, and the
            // send starts well within the margin settling allows for (see FRESH_CLAIM).
            claimed
                .iter()
                .map(|(_, referral, _, attempted_at)| {
                    (*referral.referral_id.as_uuid(), *attempted_at)
                })
                .collect()
        } else {
            match self.begin_attempts(&claimed).await {
                Ok(held) => held,
                Err(error) => {
                    for (index, ..) in &claimed {
                        results[*index] = Some(Err(IntakeError::Database(clone_error(&error))));
                    }
                    return finish(results);
                }
            }
        };
        let mut meta = Vec::new();
        for (index, referral, received_at, _) in claimed {
            let referral_id = referral.referral_id;
            let Some(attempted_at) = held.get(referral_id.as_uuid()).copied() else {
                // Taken over by another submission meanwhile: it publishes, not us.
                results[index] = Some(Err(IntakeError::Unsettled {
                    referral_id,
                    retry_after: Duration::from_secs(1),
                }));
                continue;
            };
            meta.push((
                index,
                referral_id,
                referral.source.to_string(),
                referral.identifier.clone(),
                referral.content_hash.clone(),
                received_at,
                attempted_at,
            ));
            to_publish.push((
                received_event_id(referral_id),
                ReferralEvent::Received(Box::new(referral.into_event(now))),
            ));
        }
        if to_publish.is_empty() {
            return finish(results);
        }
        if let Err(error) = self.seal(&mut to_publish).await {
            // Nothing went out: the claims are given back, the submitters told to retry.
            tracing::warn!(%error, referrals = meta.len(), "referrals could not be sealed; nothing was published");
            if let Ok(mut connection) = self.pool.acquire().await {
                for (_, referral_id, _, _, hash, _, attempted_at) in &meta {
                    let _ =
                        receipts::release(&mut connection, *referral_id, hash, *attempted_at).await;
                }
            }
            for (index, referral_id, ..) in &meta {
                results[*index] = Some(Err(match &error {
                    linkwork_vault::VaultError::Database(error) => {
                        IntakeError::Database(clone_error(error))
                    }
                    // A key made or destroyed by another batch at the same moment:
                    // nothing was published, and a retry finds the key settled.
                    linkwork_vault::VaultError::ErasedMeanwhile => IntakeError::Unsettled {
                        referral_id: *referral_id,
                        retry_after: Duration::from_secs(1),
                    },
                    _ => IntakeError::Internal("a referral could not be sealed"),
                }));
            }
            return finish(results);
        }
        // A 2xx needs the event's place on the log. librdkafka also reports success
        // without one (offset -1001) when it infers a delivery from a later message's:
        // that has been wrong (see `Producer`), so such a delivery counts as sent but
        // unconfirmed, and a resubmission settles it by reading the log.
        let deliveries: Vec<Result<_, BusError>> = self
            .producer
            .publish_batch(&self.events_topic, EVENT_SOURCE, now, &to_publish)
            .await
            .into_iter()
            .map(|delivery| {
                delivery.and_then(|delivered| {
                    if delivered.offset >= 0 {
                        Ok(delivered)
                    } else {
                        Err(BusError::NoOffset(delivered.partition))
                    }
                })
            })
            .collect();
        drop(to_publish);
        let may_have_sent = if deliveries
            .iter()
            .any(|delivery| matches!(delivery, Err(BusError::NoOffset(_))))
        {
            true
        } else if deliveries.iter().any(Result::is_err) {
            self.producer.may_have_sent().await
        } else {
            false
        };
        let mut connection = self.pool.acquire().await;
        let mut published = Vec::with_capacity(meta.len());
        for (delivery, (index, referral_id, source, identifier, hash, received_at, attempted_at)) in
            deliveries.into_iter().zip(&meta)
        {
            let outcome = match delivery {
                Ok(delivered) => {
                    tracing::debug!(
                        %referral_id,
                        topic = %self.events_topic,
                        partition = delivered.partition,
                        offset = delivered.offset,
                        "ReferralReceived acknowledged by the broker"
                    );
                    published.push(receipts::NewClaim {
                        referral_id: *referral_id.as_uuid(),
                        source: source.clone(),
                        identifier_system: &identifier.system,
                        identifier_value: &identifier.value,
                        content_hash: hash,
                    });
                    Ok(Taken::Created {
                        received_at: *received_at,
                    })
                }
                Err(error) if may_have_sent => {
                    tracing::debug!(%referral_id, %error, "ReferralReceived not acknowledged; it may be on the log");
                    let recorded = match &mut connection {
                        Ok(connection) => {
                            receipts::mark_unconfirmed(connection, *referral_id, *attempted_at)
                                .await
                        }
                        Err(error) => Err(clone_error(error)),
                    };
                    if let Err(record_error) = recorded {
                        // Still pending: settled the same way, as abandoned.
                        tracing::warn!(%record_error, %referral_id, "could not record an unconfirmed claim");
                    }
                    Err(IntakeError::Unconfirmed {
                        error,
                        retry_after: self.settle_after(),
                    })
                }
                Err(error) => {
                    tracing::debug!(%referral_id, %error, "ReferralReceived not acknowledged; no request was sent");
                    let released = match &mut connection {
                        Ok(connection) => {
                            receipts::release(connection, *referral_id, hash, *attempted_at).await
                        }
                        Err(error) => Err(clone_error(error)),
                    };
                    if let Err(release_error) = released {
                        tracing::warn!(%release_error, %referral_id, "could not release a claim");
                    }
                    Err(IntakeError::Unavailable(error))
                }
            };
            results[*index] = Some(outcome);
        }
        if !published.is_empty() {
            let marked = match &mut connection {
                Ok(connection) => receipts::mark_many_published(connection, &published).await,
                Err(error) => Err(clone_error(error)),
            };
            if let Err(error) = marked {
                // The events are on the log; a resubmission settles each pending claim
                // by finding it there.
                tracing::warn!(%error, referrals = published.len(), "published but not recorded");
            }
        }
        finish(results)
    }

    /// Seals the referrals about to be published, when there is a vault: their
    /// people's keys in one round trip.
    async fn seal(
        &self,
        events: &mut [(EventId, ReferralEvent)],
    ) -> Result<(), linkwork_vault::VaultError> {
        let Some(vault) = &self.vault else {
            return Ok(());
        };
        let mut received: Vec<&mut linkwork_domain::event::ReferralReceived> = events
            .iter_mut()
            .filter_map(|(_, event)| match event {
                ReferralEvent::Received(received) => Some(&mut **received),
                _ => None,
            })
            .collect();
        let mut connection = self.pool.acquire().await?;
        vault.seal_referrals(&mut connection, &mut received).await
    }

    /// Starts the attempts of `claimed` now, not at their claim: planning the rest of a
    /// batch may have taken a while (settling a resubmission reads the log), and
    /// settling counts from the attempt. Returns the claims still held.
    async fn begin_attempts(
        &self,
        claimed: &[(usize, ValidatedReferral, DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<std::collections::HashMap<uuid::Uuid, DateTime<Utc>>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let claims: Vec<(uuid::Uuid, DateTime<Utc>)> = claimed
            .iter()
            .map(|(_, referral, _, attempted_at)| (*referral.referral_id.as_uuid(), *attempted_at))
            .collect();
        Ok(receipts::begin_attempts(&mut connection, &claims)
            .await?
            .into_iter()
            .collect())
    }

    async fn release_claims(&self, referrals: &[ValidatedReferral], plans: &[Plan]) {
        let Ok(mut connection) = self.pool.acquire().await else {
            return;
        };
        for (referral, plan) in referrals.iter().zip(plans) {
            if let Plan::Publish { attempted_at, .. } = plan {
                let _ = receipts::release(
                    &mut connection,
                    referral.referral_id,
                    &referral.content_hash,
                    *attempted_at,
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

/// The id of a referral's `ReferralReceived`: the same for every attempt.
fn received_event_id(referral_id: ReferralId) -> EventId {
    EventId::derive(&["referral", &referral_id.to_string(), "received"])
}

fn finish(results: Vec<Option<Result<Taken, IntakeError>>>) -> Vec<Result<Taken, IntakeError>> {
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or(Err(IntakeError::Internal(
                "a referral was planned but not carried out",
            )))
        })
        .collect()
}

/// `sqlx::Error` is not `Clone`; each referral of a batch gets its own copy.
/// The receipt columns of a referral.
fn new_claim(referral: &ValidatedReferral) -> receipts::NewClaim<'_> {
    receipts::NewClaim {
        referral_id: *referral.referral_id.as_uuid(),
        source: referral.source.to_string(),
        identifier_system: &referral.identifier.system,
        identifier_value: &referral.identifier.value,
        content_hash: &referral.content_hash,
    }
}

fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

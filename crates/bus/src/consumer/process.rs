//! The processing task: batches records and applies each batch in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender as ControlSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkwork_store::offsets::OffsetAdvance;
use linkwork_store::sqlx::PgPool;
use linkwork_store::{dedup, offsets, outbox, StoreError};
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::poll::{Control, InFlight, Item, TopicPartition};
use super::{
    ConsumerConfig, ConsumerStatus, Decode, Decoded, Effects, Handler, HandlerError, Incoming,
    Record,
};
use crate::{dlq, trace, BusError};

/// What processing shares with the poll thread: the requests it sends it, the flag
/// that stops it, and the byte budget of records between them.
pub(crate) struct PollerLink {
    pub control: ControlSender<Control>,
    pub stop: Arc<AtomicBool>,
    pub in_flight: Arc<InFlight>,
}

/// Why applying a batch did not commit.
#[derive(Debug)]
enum Failure {
    Poison(usize, String),
    Data(String),
    Retryable(String),
    Fenced(Vec<(String, i32)>),
    Fatal(String),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Fenced { partitions, .. } => Failure::Fenced(partitions),
            other => match HandlerError::from(other) {
                HandlerError::Retryable(error) => Failure::Retryable(error.to_string()),
                HandlerError::Data(error) => Failure::Data(error.to_string()),
                HandlerError::Poison { index, reason } => Failure::Poison(index, reason),
                HandlerError::Fatal(error) => Failure::Fatal(error.to_string()),
            },
        }
    }
}

impl From<linkwork_store::sqlx::Error> for Failure {
    fn from(error: linkwork_store::sqlx::Error) -> Self {
        Failure::from(StoreError::Database(error))
    }
}

/// Shutdown arrived while a batch could not be committed: it is left for the next
/// owner of its partitions.
struct Abandoned;

pub(crate) struct Processor<H: Handler> {
    config: ConsumerConfig,
    pool: PgPool,
    handler: H,
    outbox_notify: Option<Arc<Notify>>,
    control: ControlSender<Control>,
    stop: Arc<AtomicBool>,
    /// Every partition this consumer owns.
    partitions: HashMap<TopicPartition, Owned>,
    batch: Vec<Record>,
    /// The bytes of `batch` ([`Record::size`]).
    batch_bytes: usize,
    /// Shared with the poll thread, which hands over records while it has room.
    in_flight: Arc<InFlight>,
    last_prune: Instant,
    /// Offsets committed to Postgres but not yet reported to Kafka. Kafka's copy only
    /// shows lag, so it is sent at most once a second: each commit is a write at the
    /// group coordinator, and a busy consumer would otherwise make hundreds a second.
    unreported: HashMap<TopicPartition, i64>,
    last_report: Instant,
    status: ConsumerStatus,
}

/// An owned partition: its stored next offset and the next offset delivery owes us.
struct Owned {
    stored: i64,
    next: i64,
    /// Records are stale until the poll thread confirms a return to stored offsets.
    awaiting_reseek: bool,
}

impl<H: Handler> Processor<H> {
    pub(crate) fn new(
        config: ConsumerConfig,
        pool: PgPool,
        handler: H,
        outbox_notify: Option<Arc<Notify>>,
        poller: PollerLink,
        status: ConsumerStatus,
    ) -> Self {
        let PollerLink {
            control,
            stop,
            in_flight,
        } = poller;
        Self {
            config,
            pool,
            handler,
            outbox_notify,
            control,
            stop,
            partitions: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            in_flight,
            last_prune: Instant::now(),
            unreported: HashMap::new(),
            last_report: Instant::now(),
            status,
        }
    }

    pub(crate) async fn run(
        &mut self,
        mut items: Receiver<Item>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut stopping = false;
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let item = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !stopping => {
                    // Keep draining: the poll thread hands partitions back through us.
                    stopping = true;
                    self.stop.store(true, Ordering::Release);
                    continue;
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    flush_at = None;
                    if self.flush(&shutdown).await?.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                _ = ticks.tick() => {
                    self.prune_processed_ids();
                    self.report_offsets(false);
                    continue;
                }
                item = items.recv() => item,
            };
            match item {
                None => {
                    // The poll thread has finished.
                    let _ = self.flush(&shutdown).await?;
                    return Ok(());
                }
                Some(Item::Record(record)) => {
                    if !self.accept(record) {
                        continue;
                    }
                    if self.batch.len() >= self.config.max_batch
                        || self.batch_bytes >= self.config.max_batch_bytes
                    {
                        flush_at = None;
                        if self.flush(&shutdown).await?.is_err() {
                            return Ok(());
                        }
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + self.config.max_batch_wait);
                    }
                }
                Some(Item::Assigned(partitions)) => {
                    flush_at = None;
                    if self.flush(&shutdown).await?.is_err() {
                        return Ok(());
                    }
                    self.partitions = partitions
                        .into_iter()
                        .map(|(partition, stored)| {
                            let owned = Owned {
                                stored,
                                next: stored,
                                awaiting_reseek: false,
                            };
                            (partition, owned)
                        })
                        .collect();
                    self.status.assigned(self.partitions.len());
                }
                Some(Item::Revoked { partitions, done }) => {
                    flush_at = None;
                    if self.flush(&shutdown).await?.is_err() {
                        return Ok(());
                    }
                    self.report_offsets(true);
                    for partition in &partitions {
                        self.partitions.remove(partition);
                    }
                    self.status.assigned(self.partitions.len());
                    let _ = done.send(());
                }
                Some(Item::Seeked { partition, offset }) => {
                    if let Some(owned) = self.partitions.get_mut(&partition) {
                        owned.stored = offset;
                        owned.next = offset;
                        owned.awaiting_reseek = false;
                    }
                }
                Some(Item::Failed(reason)) => return Err(BusError::Consumer(reason)),
            }
        }
    }

    /// Adds a record to the batch if it is the next one of an owned partition. Kafka
    /// serves a fetch from offset `n` starting at the first record at or after `n`, so
    /// a record below the position is a stale copy (delivered before a seek) and a jump
    /// forward is a real gap: offsets that hold no record (compaction, transaction
    /// markers, retention).
    fn accept(&mut self, record: Record) -> bool {
        let partition = (record.topic.clone(), record.partition);
        let size = record.size();
        let Some(owned) = self.partitions.get_mut(&partition) else {
            self.in_flight.release(size);
            return false;
        };
        if owned.awaiting_reseek || record.offset < owned.next {
            self.in_flight.release(size);
            return false;
        }
        if record.offset > owned.next {
            tracing::warn!(
                consumer = %self.config.name,
                topic = %record.topic,
                partition = record.partition,
                missing_from = owned.next,
                missing_to = record.offset - 1,
                "offsets missing from the log (compaction, transaction markers or retention)"
            );
        }
        owned.next = record.offset + 1;
        self.batch_bytes += size;
        self.batch.push(record);
        true
    }

    /// Reports committed offsets to Kafka (for lag monitoring), at most once a second
    /// unless `now`.
    fn report_offsets(&mut self, now: bool) {
        if self.unreported.is_empty()
            || (!now && self.last_report.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_report = Instant::now();
        let offsets: Vec<(TopicPartition, i64)> = self.unreported.drain().collect();
        let _ = self.control.send(Control::Commit(offsets));
    }

    /// Forgets old processed event ids, hourly, in the background.
    fn prune_processed_ids(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(3600) {
            return;
        }
        self.last_prune = Instant::now();
        let pool = self.pool.clone();
        let consumer = self.config.name.clone();
        let retention = chrono::Duration::from_std(self.config.dedup_retention)
            .unwrap_or(chrono::Duration::days(14));
        tokio::spawn(async move {
            let pruned = async {
                let mut connection = pool.acquire().await?;
                dedup::prune(&mut connection, &consumer, chrono::Utc::now() - retention).await
            };
            match pruned.await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(%consumer, deleted, "pruned processed event ids"),
                Err(error) => {
                    tracing::warn!(%consumer, %error, "pruning processed event ids failed")
                }
            }
        });
    }

    /// Applies the batch in hand. `Ok(Err(Abandoned))` means shutdown interrupted the
    /// retries of a transient failure.
    async fn flush(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Result<(), Abandoned>, BusError> {
        if self.batch.is_empty() {
            return Ok(Ok(()));
        }
        let records = std::mem::take(&mut self.batch);
        // Handed back to the poll thread's budget however the batch ends: committed,
        // or abandoned to the partitions' next owner.
        let _release = Release {
            in_flight: self.in_flight.clone(),
            bytes: std::mem::take(&mut self.batch_bytes),
        };
        let decoded: Vec<Result<Decoded<H::Message>, String>> =
            records.iter().map(H::Message::decode).collect();
        let mut dead: BTreeMap<usize, String> = decoded
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| {
                outcome.as_ref().err().map(|reason| (index, reason.clone()))
            })
            .collect();
        let mut one_at_a_time = false;
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            let outcome = if one_at_a_time {
                self.apply_one_at_a_time(&records, &decoded, &mut dead)
                    .await
            } else {
                let all: Vec<usize> = (0..records.len()).collect();
                self.apply(&records, &all, &decoded, &dead).await
            };
            match outcome {
                Ok(()) => return Ok(Ok(())),
                Err(Failure::Poison(index, reason)) => {
                    tracing::warn!(consumer = %self.config.name, offset = records[index].offset, %reason, "poison message");
                    dead.insert(index, reason);
                }
                Err(Failure::Data(error)) => {
                    tracing::warn!(consumer = %self.config.name, %error, "data error in batch; applying one message at a time");
                    one_at_a_time = true;
                }
                Err(Failure::Retryable(error)) => {
                    attempts += 1;
                    if attempts >= 10 {
                        tracing::error!(consumer = %self.config.name, %error, attempts, "batch keeps failing; consumer is stalled");
                    } else {
                        tracing::warn!(consumer = %self.config.name, %error, attempts, "transient failure; retrying batch");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Ok(Err(Abandoned)),
                    }
                    backoff = (backoff * 2).min(self.config.max_retry_backoff);
                }
                Err(Failure::Fenced(partitions)) => {
                    tracing::warn!(consumer = %self.config.name, ?partitions, "another instance advanced these offsets; seeking back to stored offsets");
                    let mut stale: Vec<TopicPartition> = Vec::new();
                    for record in &records {
                        let partition = (record.topic.clone(), record.partition);
                        if !stale.contains(&partition) {
                            stale.push(partition);
                        }
                    }
                    for partition in &stale {
                        if let Some(owned) = self.partitions.get_mut(partition) {
                            owned.awaiting_reseek = true;
                        }
                    }
                    let _ = self.control.send(Control::Reseek(stale));
                    return Ok(Ok(()));
                }
                Err(Failure::Fatal(error)) => return Err(BusError::Handler(error)),
            }
        }
    }

    /// Applies the batch one message per transaction, dead-lettering any message whose
    /// data the database refuses.
    async fn apply_one_at_a_time(
        &mut self,
        records: &[Record],
        decoded: &[Result<Decoded<H::Message>, String>],
        dead: &mut BTreeMap<usize, String>,
    ) -> Result<(), Failure> {
        for index in 0..records.len() {
            loop {
                match self.apply(records, &[index], decoded, dead).await {
                    Ok(()) => break,
                    Err(Failure::Data(error)) => {
                        dead.insert(index, format!("refused by the database: {error}"));
                    }
                    Err(Failure::Poison(poisoned, reason)) => {
                        dead.insert(poisoned, reason);
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(())
    }

    /// One transaction: de-duplicate, handle, write outbox rows and dead letters,
    /// advance the stored offsets (fenced), commit.
    async fn apply(
        &mut self,
        records: &[Record],
        indices: &[usize],
        decoded: &[Result<Decoded<H::Message>, String>],
        dead: &BTreeMap<usize, String>,
    ) -> Result<(), Failure> {
        // Records an earlier one-at-a-time pass already committed are skipped.
        let indices: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&index| {
                let record = &records[index];
                self.partitions
                    .get(&(record.topic.clone(), record.partition))
                    .is_some_and(|owned| record.offset >= owned.stored)
            })
            .collect();
        if indices.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut transaction = self.pool.begin().await?;

        let candidate_ids: Vec<Uuid> = indices
            .iter()
            .filter(|index| !dead.contains_key(index))
            .filter_map(|&index| {
                decoded[index]
                    .as_ref()
                    .ok()
                    .and_then(|message| message.event_id)
            })
            .collect();
        let fresh = dedup::claim(&mut transaction, &self.config.name, &candidate_ids).await?;
        let mut seen_in_batch = HashSet::with_capacity(fresh.len());
        let mut incoming = Vec::with_capacity(indices.len());
        for &index in &indices {
            if dead.contains_key(&index) {
                continue;
            }
            let Ok(message) = &decoded[index] else {
                continue;
            };
            if let Some(id) = message.event_id {
                if !fresh.contains(&id) || !seen_in_batch.insert(id) {
                    continue; // a copy of an event this consumer has applied
                }
            }
            let record = &records[index];
            let span = tracing::info_span!(
                "consume",
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.consumer.group.name = %self.config.group_id,
                messaging.destination.name = %record.topic,
                messaging.kafka.partition = record.partition,
                messaging.kafka.offset = record.offset,
            );
            trace::continue_trace(
                &span,
                message.traceparent.as_deref(),
                message.tracestate.as_deref(),
            );
            incoming.push(Incoming {
                message: &message.value,
                record,
                event_id: message.event_id,
                span,
                index,
            });
        }

        let claimed_at = started.elapsed();
        let mut effects = Effects::default();
        if !incoming.is_empty() {
            self.handler
                .handle(&mut transaction, &incoming, &mut effects)
                .await
                .map_err(|error| match error {
                    HandlerError::Retryable(error) => Failure::Retryable(error.to_string()),
                    HandlerError::Poison { index, reason } => Failure::Poison(index, reason),
                    HandlerError::Data(error) => Failure::Data(error.to_string()),
                    HandlerError::Fatal(error) => Failure::Fatal(error.to_string()),
                })?;
        }
        let applied = incoming.len();
        drop(incoming);

        let mut messages = effects.outbox;
        let mut dead_lettered = 0usize;
        let dead_letters = indices
            .iter()
            .filter_map(|index| dead.get(index).map(|reason| (*index, reason.clone())))
            .chain(effects.rejected);
        let mut letters = Vec::new();
        for (index, reason) in dead_letters {
            dead_lettered += 1;
            letters.push(dlq::dead_letter(
                &self.config.name,
                &self.config.dlq_topic,
                &self.config.source,
                &records[index],
                &reason,
            ));
        }
        if let Some(vault) = &self.config.vault {
            dlq::seal(vault, &mut transaction, &mut letters)
                .await
                .map_err(|error| match error {
                    linkwork_vault::VaultError::Database(error) => Failure::from(error),
                    erased @ linkwork_vault::VaultError::ErasedMeanwhile => {
                        Failure::Retryable(erased.to_string())
                    }
                    other => Failure::Fatal(other.to_string()),
                })?;
        }
        messages.extend(letters);
        let handled_at = started.elapsed();
        let outboxed = messages.len();
        outbox::insert(&mut transaction, messages).await?;
        let outbox_at = started.elapsed();

        let mut advances: Vec<OffsetAdvance> = Vec::new();
        let mut ends: HashMap<TopicPartition, i64> = HashMap::new();
        for &index in &indices {
            let record = &records[index];
            let end = ends
                .entry((record.topic.clone(), record.partition))
                .or_insert(0);
            *end = (*end).max(record.offset + 1);
        }
        for (partition, next) in &ends {
            let Some(owned) = self.partitions.get(partition) else {
                continue; // filtered above: only owned partitions reach here
            };
            advances.push(OffsetAdvance {
                topic: partition.0.to_string(),
                partition: partition.1,
                expected: owned.stored,
                next: *next,
            });
        }
        offsets::advance(&mut transaction, &self.config.name, &advances).await?;
        // A batch's statements grow the connection's buffers to a megabyte or more, and
        // it keeps them: over a pool, that is megabytes per connection for nothing.
        linkwork_store::sqlx::Connection::shrink_buffers(&mut *transaction);
        transaction.commit().await?;

        for (partition, next) in ends {
            if let Some(owned) = self.partitions.get_mut(&partition) {
                owned.stored = next;
            }
            self.unreported.insert(partition, next);
        }
        self.report_offsets(false);
        self.status.batch_committed(indices.len(), dead_lettered);
        if outboxed > 0 {
            if let Some(notify) = &self.outbox_notify {
                notify.notify_one();
            }
        }
        tracing::debug!(
            consumer = %self.config.name,
            records = indices.len(),
            applied,
            dead_lettered,
            outbox = outboxed,
            claim_ms = claimed_at.as_millis() as u64,
            handle_ms = (handled_at - claimed_at).as_millis() as u64,
            outbox_ms = (outbox_at - handled_at).as_millis() as u64,
            commit_ms = (started.elapsed() - outbox_at).as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }
}

/// Gives a batch's bytes back to the in-flight budget when dropped.
struct Release {
    in_flight: Arc<InFlight>,
    bytes: usize,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.in_flight.release(self.bytes);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

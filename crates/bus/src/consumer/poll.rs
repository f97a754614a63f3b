//! The poll thread: the only user of the librdkafka consumer. It polls, serves
//! rebalance callbacks (seeking to the offsets stored in Postgres on assignment,
//! waiting for in-flight work on revocation), executes seeks and commits the
//! processing task asks for. While processing lags it stops taking records (librdkafka's
//! prefetch queue is bounded); when processing stalls it pauses the partitions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use linkwork_store::sqlx::PgPool;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use super::{ConsumerConfig, Record};
use crate::headers::HeaderList;
use crate::settings::KafkaSettings;
use crate::BusError;

/// A topic and partition, with the topic name shared.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// What the poll thread tells the processing task, in order.
#[derive(Debug)]
pub(crate) enum Item {
    Record(Record),
    /// The consumer now owns exactly these partitions, starting at these stored offsets.
    Assigned(Vec<(TopicPartition, i64)>),
    /// These partitions are being taken away: finish their work, then signal `done`.
    Revoked {
        partitions: Vec<TopicPartition>,
        done: SyncSender<()>,
    },
    /// A return to stored offsets took effect: records for the partition from here on
    /// start at `offset`.
    Seeked {
        partition: TopicPartition,
        offset: i64,
    },
    /// The consumer cannot go on (offsets could not be loaded).
    Failed(String),
}

/// What the processing task asks of the poll thread.
#[derive(Debug)]
pub(crate) enum Control {
    /// Commit these next offsets to Kafka (for lag monitoring only).
    Commit(Vec<(TopicPartition, i64)>),
    /// Seek these partitions back to their stored offsets (after losing a fence).
    Reseek(Vec<TopicPartition>),
}

/// Backlog length (records polled that the processing task's queue had no room for) at
/// which polling holds, and, past [`HOLD_BEFORE_PAUSE`], the partitions are paused. What
/// librdkafka has fetched beyond that stays in its queue, bounded by
/// `queued.max.messages.kbytes`.
const PAUSE_AT: usize = 512;

/// Bytes of records in the backlog at which polling holds, as [`PAUSE_AT`] does.
const PAUSE_AT_BYTES: usize = 256 * 1024;

/// How long a full backlog only holds polling back before the partitions are paused.
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(2);

/// How often a held poll thread looks whether processing has taken records.
const HOLD_STEP: Duration = Duration::from_millis(2);

/// Records between librdkafka and a committed batch, in bytes: what the poll thread
/// has handed to processing and processing has not yet finished with. The poll thread
/// hands over no more while it is at the budget (one record always passes, however
/// large), so what linkwork holds of a topic is bounded in bytes, not in records: a
/// queue of provider Bundles is ten times a queue of receipts of the same length.
#[derive(Debug)]
pub(crate) struct InFlight {
    bytes: AtomicUsize,
    budget: usize,
}

impl InFlight {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            budget,
        }
    }

    fn has_room(&self) -> bool {
        let bytes = self.bytes.load(Ordering::Acquire);
        bytes == 0 || bytes < self.budget
    }

    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Processing is done with records of this many bytes.
    pub(crate) fn release(&self, bytes: usize) {
        let held = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            })
            .unwrap_or_else(|held| held);
        // Releasing more than was added is an accounting bug: it would hide a leak.
        debug_assert!(held >= bytes, "released {bytes} bytes of {held} in flight");
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

struct Shared {
    backlog: Mutex<Backlog>,
    items: Sender<Item>,
    in_flight: Arc<InFlight>,
}

/// Items polled that processing has no room for yet, and the bytes of their records.
#[derive(Default)]
struct Backlog {
    items: VecDeque<Item>,
    bytes: usize,
}

impl Item {
    fn bytes(&self) -> usize {
        match self {
            Item::Record(record) => record.size(),
            _ => 0,
        }
    }
}

impl Shared {
    fn push(&self, item: Item) {
        let mut backlog = self.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        backlog.bytes += item.bytes();
        backlog.items.push_back(item);
    }

    /// Moves backlog items into the channel while it and the byte budget have room;
    /// returns how many items and bytes remain.
    fn flush(&self) -> (usize, usize) {
        let mut backlog = self.backlog.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(item) = backlog.items.pop_front() {
            let bytes = item.bytes();
            if bytes > 0 && !self.in_flight.has_room() {
                backlog.items.push_front(item);
                break;
            }
            // Counted before it is sent: processing may take the record and release
            // its bytes before `try_send` has even returned.
            self.in_flight.add(bytes);
            match self.items.try_send(item) {
                Ok(()) => {
                    backlog.bytes -= bytes;
                }
                Err(TrySendError::Full(item)) => {
                    self.in_flight.release(bytes);
                    backlog.items.push_front(item);
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    self.in_flight.release(bytes);
                    backlog.items.clear();
                    backlog.bytes = 0;
                    break;
                }
            }
        }
        (backlog.items.len(), backlog.bytes)
    }
}

pub(crate) struct PollContext {
    consumer_name: String,
    shared: Arc<Shared>,
    pool: PgPool,
    runtime: Handle,
    revoke_deadline: Duration,
    topic_names: Mutex<HashMap<String, Arc<str>>>,
    /// Positions prepared before an assignment, applied after it.
    assigning: Mutex<Option<PreparedAssignment>>,
}

/// The explicit positions of an assignment and the stored offsets they came from.
type PreparedAssignment = (TopicPartitionList, Vec<(TopicPartition, i64)>);

impl PollContext {
    fn intern(&self, topic: &str) -> Arc<str> {
        let mut names = self
            .topic_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = names.get(topic) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        names.insert(topic.to_owned(), name.clone());
        name
    }

    /// Loads stored offsets, retrying briefly: on assignment there is no other source of
    /// truth, so failing here stops the consumer rather than guessing.
    fn load_offsets(&self, topic: &str, partitions: &[i32]) -> Result<HashMap<i32, i64>, String> {
        let mut last_error = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            let loaded = self.runtime.block_on(async {
                let mut connection = self.pool.acquire().await?;
                linkwork_store::offsets::load(
                    &mut connection,
                    &self.consumer_name,
                    topic,
                    partitions,
                )
                .await
            });
            match loaded {
                Ok(offsets) => return Ok(offsets),
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer_name, topic, %error, attempt, "loading stored offsets failed");
                    last_error = error.to_string();
                }
            }
        }
        Err(format!(
            "could not load stored offsets for {topic}: {last_error}"
        ))
    }

    /// Before librdkafka's own assignment: loads the stored offsets of the new
    /// partitions and commits them to Kafka, so that the assignment (which starts at
    /// committed offsets) starts where Postgres says. A partition with nothing applied
    /// yet is committed at the log's current start. Without this, a new group would
    /// have no committed offsets, which `auto.offset.reset=error` rightly refuses.
    fn prepare_assignment(&self, consumer: &BaseConsumer<Self>, assignment: &TopicPartitionList) {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for element in assignment.elements() {
            by_topic
                .entry(element.topic().to_owned())
                .or_default()
                .push(element.partition());
        }
        let mut stored = Vec::new();
        let mut committed = TopicPartitionList::new();
        for (topic, partitions) in by_topic {
            let offsets = match self.load_offsets(&topic, &partitions) {
                Ok(offsets) => offsets,
                Err(reason) => {
                    self.shared.push(Item::Failed(reason));
                    return;
                }
            };
            let name = self.intern(&topic);
            for partition in partitions {
                let offset = offsets.get(&partition).copied().unwrap_or(0);
                // Nothing applied yet: start wherever the log now starts (retention may
                // have removed its first offsets). Any other stored offset must exist.
                let start = if offset == 0 {
                    match log_start(consumer, &topic, partition) {
                        Ok(low) => low,
                        Err(error) => {
                            self.shared.push(Item::Failed(format!(
                                "could not find where {topic}/{partition} starts: {error}"
                            )));
                            return;
                        }
                    }
                } else {
                    offset
                };
                if let Err(error) =
                    committed.add_partition_offset(&topic, partition, Offset::Offset(start))
                {
                    self.shared.push(Item::Failed(format!(
                        "bad offset for {topic}/{partition}: {error}"
                    )));
                    return;
                }
                stored.push(((name.clone(), partition), start));
            }
        }
        let mut attempt = 0;
        // An empty assignment (more members than partitions, or a member that has not
        // left yet) has nothing to commit; librdkafka answers an empty commit with
        // NoOffset, which is no failure.
        while committed.count() > 0 {
            let Err(error) = consumer.commit(&committed, CommitMode::Sync) else {
                break;
            };
            attempt += 1;
            if attempt == 3 {
                self.shared.push(Item::Failed(format!(
                    "could not commit the stored offsets before assignment: {error}"
                )));
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        *self
            .assigning
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((committed, stored));
    }

    /// After librdkafka's assignment: assigns again at the explicit stored positions
    /// (authoritative, whatever Kafka's committed offsets say) and tells processing.
    fn finish_assignment(&self, consumer: &BaseConsumer<Self>) {
        let prepared = self
            .assigning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((positions, stored)) = prepared else {
            return; // preparing failed and said why
        };
        if let Err(error) = consumer.assign(&positions) {
            self.shared.push(Item::Failed(format!(
                "could not assign at stored offsets: {error}"
            )));
            return;
        }
        tracing::info!(consumer = %self.consumer_name, partitions = stored.len(), "partitions assigned at stored offsets");
        self.shared.push(Item::Assigned(stored));
        self.shared.flush();
    }

    /// Hands the revoked partitions' in-flight work to the processing task and waits
    /// (up to the deadline) until it is committed.
    fn drain_before_revoke(&self, revoked: &TopicPartitionList) {
        if self.shared.items.is_closed() {
            return;
        }
        let partitions: Vec<TopicPartition> = revoked
            .elements()
            .iter()
            .map(|element| (self.intern(element.topic()), element.partition()))
            .collect();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.shared.push(Item::Revoked {
            partitions,
            done: done_tx,
        });
        let deadline = Instant::now() + self.revoke_deadline;
        loop {
            if self.shared.flush().0 == 0 {
                match done_rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
            if self.shared.items.is_closed() {
                return;
            }
            if Instant::now() >= deadline {
                // The stored-offset fence keeps a late commit from applying twice.
                tracing::warn!(consumer = %self.consumer_name, "revocation deadline passed with work in flight");
                return;
            }
        }
    }
}

/// The first offset a partition still holds. Asked again for up to 30 s while the
/// partition has no leader (a broker that has just restarted, a leader election):
/// those answers are transient, and failing would stop the consumer.
fn log_start(
    consumer: &BaseConsumer<PollContext>,
    topic: &str,
    partition: i32,
) -> Result<i64, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((low, _)) => return Ok(low),
            Err(error) if Instant::now() < deadline && leaderless(&error) => {
                tracing::debug!(%error, topic, partition, "no leader yet; asking again");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(error) => return Err(error),
        }
    }
}

fn leaderless(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
        )
    )
}

impl ClientContext for PollContext {}

impl ConsumerContext for PollContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => self.drain_before_revoke(revoked),
            Rebalance::Assign(assignment) => self.prepare_assignment(consumer, assignment),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => self.finish_assignment(consumer),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.consumer_name, %error, "rebalance error")
            }
        }
    }
}

/// The running poll thread. Dropping it asks the thread to stop.
pub(crate) struct Poller {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Poller {
    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Not joined: the thread notices within one poll interval, and joining here
        // would block the async runtime.
        self.stop.store(true, Ordering::Release);
    }
}

pub(crate) fn spawn(
    config: &ConsumerConfig,
    kafka: &KafkaSettings,
    pool: PgPool,
    runtime: Handle,
    items: Sender<Item>,
    in_flight: Arc<InFlight>,
    control: Receiver<Control>,
) -> Result<Poller, BusError> {
    let context = PollContext {
        consumer_name: config.name.clone(),
        shared: Arc::new(Shared {
            backlog: Mutex::new(Backlog::default()),
            items,
            in_flight,
        }),
        pool,
        runtime,
        revoke_deadline: config.revoke_deadline,
        topic_names: Mutex::new(HashMap::new()),
        assigning: Mutex::new(None),
    };
    let session_ms = config.session_timeout.as_millis();
    let mut client_config = kafka.client_config();
    client_config
        .set("group.id", &config.group_id)
        .set("client.id", format!("linkwork.{}", config.name))
        // Offsets are ours (Postgres); Kafka's copy is written only for lag monitoring.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A stored position the log no longer holds (a recreated topic, a broker that
        // lost data, unread events removed by retention) stops the consumer: resetting
        // would skip or re-apply events silently.
        .set("auto.offset.reset", "error")
        .set("session.timeout.ms", session_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_ms / 3).max(100).to_string(),
        )
        .set("enable.partition.eof", "false")
        // Bound what librdkafka prefetches: memory stays flat however far behind we are.
        .set(
            "queued.max.messages.kbytes",
            crate::settings::QUEUED_MAX_MESSAGES_KBYTES,
        )
        // And what one fetch may return: librdkafka's default (50 MB) sized its receive
        // buffers far beyond the prefetch bound.
        .set("fetch.max.bytes", crate::settings::fetch_max_bytes(kafka))
        // Once that bound has been reached, librdkafka postpones the next fetch by this
        // much (default a whole second). With a bound this small it is reached whenever
        // processing lags; a short backoff refills the queue soon after it has room.
        // (The idle gaps seen in the routing bench were the pauses, below, not this.)
        .set(
            "fetch.queue.backoff.ms",
            crate::settings::FETCH_QUEUE_BACKOFF_MS,
        );
    let consumer: BaseConsumer<PollContext> = client_config.create_with_context(context)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let name = config.name.clone();
    let revoke_deadline = config.revoke_deadline;
    let thread = std::thread::Builder::new()
        .name(format!("kafka-poll-{name}"))
        .spawn(move || poll_loop(&consumer, &control, &thread_stop, revoke_deadline))
        .map_err(|error| BusError::Consumer(format!("could not start the poll thread: {error}")))?;
    Ok(Poller {
        stop,
        _thread: thread,
    })
}

fn poll_loop(
    consumer: &BaseConsumer<PollContext>,
    control: &Receiver<Control>,
    stop: &AtomicBool,
    revoke_deadline: Duration,
) {
    let context = consumer.context();
    let shared = context.shared.clone();
    let mut paused = false;
    let mut full_since: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) && !shared.items.is_closed() {
        for command in control.try_iter() {
            match command {
                Control::Commit(offsets) => commit(consumer, &offsets),
                Control::Reseek(partitions) => reseek(consumer, &partitions),
            }
        }
        let (backlog, backlog_bytes) = shared.flush();
        if backlog >= PAUSE_AT || backlog_bytes >= PAUSE_AT_BYTES {
            let since = *full_since.get_or_insert_with(Instant::now);
            if !paused && since.elapsed() < HOLD_BEFORE_PAUSE {
                // Processing lags: stop taking records and let librdkafka's own bounded
                // queue hold what it has fetched. Pausing instead would throw that away,
                // and librdkafka fetches again only up to a second after a resume
                // (measured: the router sat idle 0.6-0.8 s after each pause).
                std::thread::sleep(HOLD_STEP);
                continue;
            }
            // Processing has stalled (Postgres away, say): pause, and go on polling so
            // that rebalances are served and the group keeps this member.
            // Re-applied every time: a rebalance may have brought unpaused partitions.
            set_paused(consumer, true);
            paused = true;
        } else {
            full_since = None;
            if backlog == 0 && paused {
                set_paused(consumer, false);
                paused = false;
            }
        }
        let timeout = if backlog > 0 {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                let record = Record {
                    topic: context.intern(message.topic()),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: HeaderList::from_kafka(message.headers()),
                };
                shared.push(Item::Record(record));
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(KafkaError::MessageConsumption(
                code @ (RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange),
            ))) => {
                shared.push(Item::Failed(format!(
                    "a stored offset is outside the log ({code}): the topic was recreated, the broker \
                     lost data, or retention removed events not yet applied; find out which before \
                     rebuilding the read models"
                )));
            }
            Some(Err(error)) => {
                tracing::warn!(consumer = %context.consumer_name, %error, "kafka consumer error")
            }
        }
    }
    // Leave the group; the revocation callback lets processing finish its batch first.
    consumer.unsubscribe();
    let until = Instant::now() + revoke_deadline;
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(20));
        if consumer
            .assignment()
            .map(|assignment| assignment.count() == 0)
            .unwrap_or(true)
        {
            break;
        }
    }
    shared.flush();
}

/// Pauses or resumes every assigned partition. Resuming goes on from the next record
/// not yet delivered: nothing is skipped or repeated.
fn set_paused(consumer: &BaseConsumer<PollContext>, paused: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    if assignment.count() == 0 {
        return;
    }
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(error) = result {
        tracing::debug!(%error, paused, "pause or resume failed");
    }
}

fn commit(consumer: &BaseConsumer<PollContext>, offsets: &[(TopicPartition, i64)]) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        if list
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        // Only lag reporting depends on it; the stored offsets are authoritative.
        tracing::debug!(%error, "kafka offset commit failed");
    }
}

fn reseek(consumer: &BaseConsumer<PollContext>, partitions: &[TopicPartition]) {
    let context = consumer.context();
    let assignment = consumer.assignment().unwrap_or_default();
    let mut by_topic: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        let owned = assignment
            .elements()
            .iter()
            .any(|element| element.topic() == &**topic && element.partition() == *partition);
        if owned {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
    }
    for (topic, partitions) in by_topic {
        let offsets = match context.load_offsets(&topic, &partitions) {
            Ok(offsets) => offsets,
            Err(reason) => {
                context.shared.push(Item::Failed(reason));
                return;
            }
        };
        for partition in partitions {
            let offset = offsets.get(&partition).copied().unwrap_or(0);
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                context.shared.push(Item::Failed(format!(
                    "could not seek {topic}/{partition} to {offset}: {error}"
                )));
                return;
            }
            context.shared.push(Item::Seeked {
                partition: (topic.clone(), partition),
                offset,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, bytes: usize) -> Item {
        Item::Record(Record {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: None,
            payload: Some(vec![b'x'; bytes]),
            headers: HeaderList::default(),
        })
    }

    fn shared(budget: usize) -> (Shared, tokio::sync::mpsc::Receiver<Item>) {
        let (items, receiver) = tokio::sync::mpsc::channel(100);
        let shared = Shared {
            backlog: Mutex::new(Backlog::default()),
            items,
            in_flight: Arc::new(InFlight::new(budget)),
        };
        (shared, receiver)
    }

    #[test]
    fn records_are_handed_over_only_while_the_bytes_in_flight_are_under_the_budget() {
        let (shared, mut receiver) = shared(1_000);
        for offset in 0..5 {
            shared.push(record(offset, 400));
        }
        // Each record is 400 bytes and the overhead: two fill the budget.
        let (left, left_bytes) = shared.flush();
        assert_eq!(left, 3);
        assert_eq!(left_bytes, 3 * (400 + 128));
        assert_eq!(shared.in_flight.held(), 2 * (400 + 128));
        assert!(receiver.try_recv().is_ok() && receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err(), "nothing beyond the budget");

        // Processing finishes one: one more goes, and the budget is full again.
        shared.in_flight.release(400 + 128);
        assert_eq!(shared.flush().0, 2);
        assert_eq!(shared.in_flight.held(), 2 * (400 + 128));
    }

    #[test]
    fn a_record_larger_than_the_whole_budget_still_passes_when_nothing_is_in_flight() {
        let (shared, mut receiver) = shared(1_000);
        shared.push(record(0, 5_000));
        shared.push(record(1, 10));
        assert_eq!(shared.flush().0, 1, "the large one passes alone");
        assert!(receiver.try_recv().is_ok());
        shared.in_flight.release(5_000 + 128);
        assert_eq!(shared.flush().0, 0);
        assert_eq!(shared.in_flight.held(), 10 + 128);
    }

    #[test]
    fn items_that_are_not_records_pass_a_full_budget_in_their_turn() {
        let (shared, mut receiver) = shared(100);
        shared.push(record(0, 500));
        shared.push(Item::Failed("stop".into()));
        shared.push(record(1, 500));
        // The first record fills the budget; the item behind it is not a record and
        // passes; the record after it waits.
        assert_eq!(shared.flush(), (1, 500 + 128));
        assert!(matches!(receiver.try_recv(), Ok(Item::Record(_))));
        assert!(matches!(receiver.try_recv(), Ok(Item::Failed(_))));
    }
}

//! The transactional consumer (DESIGN.md principle 3).
//!
//! For each batch of messages, one Postgres transaction holds: the event ids the
//! consumer has now seen (duplicates are dropped), the handler's state changes, the
//! messages it wants published (outbox rows, dead letters included) and the consumed
//! offsets. Offsets live in Postgres: on partition assignment the consumer seeks to the
//! stored offsets, and the offset update is conditional on the value the batch started
//! from, so an instance that lost a partition in a rebalance cannot apply a stale
//! batch. Offsets are committed to Kafka afterwards only so that lag is visible.
//!
//! Two halves: a poll thread that owns the librdkafka consumer (rebalance callbacks,
//! seeks, pauses, commits) and feeds a bounded channel; and the processing task, which
//! batches by size or time, classifies failures and runs the transactions. Failures:
//! transient ones (a lost connection) are retried with backoff while the channel fills
//! and the poll thread pauses the partitions; a message that can never be applied
//! (undecodable, refused by the handler, or failing alone with a data error) goes to
//! `<consumer>.dlq` with the reason and the consumer moves on; anything else stops the
//! consumer with an error.

mod poll;
mod process;
mod status;

pub use status::{ConsumerSnapshot, ConsumerStatus};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use linkwork_domain::{DomainEvent, EventId};
use linkwork_store::outbox::NewOutboxMessage;
use linkwork_store::sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::headers::{EventMeta, HeaderList};
use crate::settings::KafkaSettings;
use crate::{trace, BusError};

/// How a consumer is named, what it reads and how it batches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Names the consumer in the offsets and de-duplication tables and its DLQ topic.
    pub name: String,
    /// Kafka consumer group; `linkwork.<name>` by default.
    pub group_id: String,
    pub topics: Vec<String>,
    /// `<name>.dlq` by default.
    pub dlq_topic: String,
    /// A batch is applied when it holds this many messages...
    pub max_batch: usize,
    /// ...or this many bytes of them ([`Record::size`])...
    pub max_batch_bytes: usize,
    /// ...or when its first message has waited this long.
    pub max_batch_wait: Duration,
    /// Messages buffered between the poll thread and processing.
    pub queue_capacity: usize,
    /// Bytes of records the poll thread hands to processing before processing has
    /// committed them: the batch being applied and the next one gathering. At least
    /// twice `max_batch_bytes`, so the next batch is ready when one commits.
    pub in_flight_bytes: usize,
    pub session_timeout: Duration,
    /// How long a revocation waits for in-flight work before giving partitions up.
    pub revoke_deadline: Duration,
    /// Longest pause between retries of a transient failure.
    pub max_retry_backoff: Duration,
    /// The CloudEvents `source` of dead letters.
    pub source: String,
    /// How long processed event ids are remembered. Copies of an event sit close
    /// together in the log (retries, relay restarts), so days are ample.
    pub dedup_retention: Duration,
    /// Seals each dead letter's body and reason under the key of the person it is
    /// about ([`crate::dlq::seal`]), so an erasure reaches dead letters too. `None`:
    /// dead letters are kept as they came (consumers of linkwork's own events, whose
    /// identifying parts are sealed already, and tests).
    pub vault: Option<linkwork_vault::Vault>,
}

impl ConsumerConfig {
    pub fn new(name: &str, topics: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            group_id: format!("linkwork.{name}"),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            dlq_topic: crate::topics::dlq(name),
            max_batch: 1000,
            max_batch_bytes: 1024 * 1024,
            max_batch_wait: Duration::from_millis(5),
            queue_capacity: 2048,
            in_flight_bytes: 2 * 1024 * 1024,
            session_timeout: Duration::from_secs(6),
            revoke_deadline: Duration::from_secs(4),
            max_retry_backoff: Duration::from_secs(30),
            source: format!("linkwork/{name}"),
            dedup_retention: Duration::from_secs(14 * 24 * 3600),
            vault: None,
        }
    }
}

/// One Kafka message, copied out of the client.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HeaderList,
}

impl Record {
    /// About what the record occupies in memory: its key, payload and headers.
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 128;
        OVERHEAD
            + self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self.headers.size()
    }
}

/// A decoded message and the id the consumer de-duplicates on.
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    /// `None` for messages without an id (raw integration-engine input); those are
    /// protected by offsets alone.
    pub event_id: Option<Uuid>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub value: T,
}

/// How a consumer reads its messages. A decoding failure is a poison message: it goes
/// to the dead-letter topic with the returned reason.
pub trait Decode: Sized + Send + Sync + 'static {
    fn decode(record: &Record) -> Result<Decoded<Self>, String>;
}

/// A CloudEvent carrying one of a family of domain events.
#[derive(Debug, Clone)]
pub struct CloudEvent<E> {
    pub meta: EventMeta,
    pub event: E,
}

impl<E: DomainEvent + Sync> Decode for CloudEvent<E> {
    fn decode(record: &Record) -> Result<Decoded<Self>, String> {
        let meta = EventMeta::from_headers(&record.headers).map_err(|error| error.to_string())?;
        let body = record.payload.as_deref().ok_or("message has no body")?;
        let event = E::decode(&meta.event_type, body).map_err(|error| error.to_string())?;
        Ok(Decoded {
            event_id: Some(meta.id),
            traceparent: meta.traceparent.clone(),
            tracestate: meta.tracestate.clone(),
            value: CloudEvent { meta, event },
        })
    }
}

/// A message handed to the handler, inside its consume span.
#[derive(Debug)]
pub struct Incoming<'a, M> {
    pub message: &'a M,
    pub record: &'a Record,
    pub event_id: Option<Uuid>,
    /// The consume span, a child of the producer's span when the message carried
    /// `traceparent`. Work for this message (and messages it causes) belongs under it.
    pub span: tracing::Span,
    pub(crate) index: usize,
}

/// What the handler wants besides its own writes: messages to publish and messages it
/// refuses. Both are written in the batch's transaction.
#[derive(Debug, Default)]
pub struct Effects {
    pub(crate) outbox: Vec<NewOutboxMessage>,
    pub(crate) rejected: Vec<(usize, String)>,
}

/// A message to publish through the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub topic: String,
    pub event_id: EventId,
    pub source: String,
    pub time: DateTime<Utc>,
    pub key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    /// Headers beyond the CloudEvents ones (a `content-type` here replaces the default).
    pub headers: Vec<(String, String)>,
}

impl OutboxEvent {
    pub fn new<E: DomainEvent>(
        topic: &str,
        event_id: EventId,
        source: &str,
        time: DateTime<Utc>,
        event: &E,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            event_id,
            source: source.to_owned(),
            time,
            key: event.key(),
            event_type: event.event_type().to_owned(),
            payload: event.encode(),
            headers: Vec::new(),
        }
    }

    /// A FHIR resource (a Bundle for a provider's queue, say) rather than a domain
    /// event: `content-type: application/fhir+json`.
    pub fn fhir(
        topic: &str,
        event_id: EventId,
        source: &str,
        time: DateTime<Utc>,
        key: String,
        event_type: &str,
        resource: &impl serde::Serialize,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            event_id,
            source: source.to_owned(),
            time,
            key,
            event_type: event_type.to_owned(),
            payload: serde_json::to_vec(resource).unwrap_or_default(),
            headers: vec![(
                crate::headers::CONTENT_TYPE.to_owned(),
                "application/fhir+json".to_owned(),
            )],
        }
    }

    /// The outbox row, in the trace given.
    pub fn into_message(
        self,
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> NewOutboxMessage {
        NewOutboxMessage {
            event_id: *self.event_id.as_uuid(),
            topic: self.topic,
            key: Some(self.key),
            ce_type: self.event_type,
            ce_source: self.source,
            ce_time: self.time,
            traceparent,
            tracestate,
            extra_headers: self.headers,
            payload: self.payload,
        }
    }
}

impl Effects {
    /// Publishes `event` once this batch commits, in the trace of `cause`.
    pub fn publish<M>(&mut self, cause: &Incoming<'_, M>, event: OutboxEvent) {
        let (traceparent, tracestate) = trace::context_of(&cause.span);
        self.outbox
            .push(event.into_message(traceparent, tracestate));
    }

    /// Refuses a message: the handler wrote nothing for it, and it goes to the
    /// dead-letter topic with `reason`.
    pub fn reject<M>(&mut self, message: &Incoming<'_, M>, reason: impl Into<String>) {
        self.rejected.push((message.index, reason.into()));
    }

    /// Reads each message of `batch` with `read`: what reads is returned beside its
    /// message, in batch order; what does not is refused with the reason `read` gave.
    pub fn read_or_reject<'b, 'a, M, T>(
        &mut self,
        batch: &'b [Incoming<'a, M>],
        mut read: impl FnMut(&M) -> Result<T, String>,
    ) -> Vec<(&'b Incoming<'a, M>, T)> {
        let mut read_well = Vec::with_capacity(batch.len());
        for incoming in batch {
            match read(incoming.message) {
                Ok(value) => read_well.push((incoming, value)),
                Err(reason) => self.reject(incoming, reason),
            }
        }
        read_well
    }
}

/// How a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a lost connection, a serialization conflict): the batch is
    /// retried after a pause.
    #[error("transient failure: {0}")]
    Retryable(Box<dyn std::error::Error + Send + Sync>),
    /// The message at this position of the batch can never be applied: it goes to the
    /// dead-letter topic and the batch is retried without it.
    #[error("message {index} of the batch is poison: {reason}")]
    Poison { index: usize, reason: String },
    /// The data of some message broke a database rule (a constraint, a value out of a
    /// column's range), but which one is unknown: the batch is retried one message at a
    /// time and the message that fails alone is dead-lettered.
    #[error("a message's data was refused by the database: {0}")]
    Data(Box<dyn std::error::Error + Send + Sync>),
    /// A bug or a broken deployment (a missing table): the consumer stops.
    #[error("fatal: {0}")]
    Fatal(Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    pub fn poison<M>(message: &Incoming<'_, M>, reason: impl Into<String>) -> Self {
        Self::Poison {
            index: message.index,
            reason: reason.into(),
        }
    }
}

impl From<linkwork_store::sqlx::Error> for HandlerError {
    fn from(error: linkwork_store::sqlx::Error) -> Self {
        if linkwork_store::is_transient(&error) {
            return Self::Retryable(Box::new(error));
        }
        let sqlstate_class = match &error {
            linkwork_store::sqlx::Error::Database(database) => database
                .code()
                .and_then(|code| code.get(..2).map(str::to_owned)),
            _ => None,
        };
        match sqlstate_class.as_deref() {
            // 22: data exception; 23: integrity constraint violation.
            Some("22" | "23") => Self::Data(Box::new(error)),
            _ => Self::Fatal(Box::new(error)),
        }
    }
}

impl From<linkwork_store::StoreError> for HandlerError {
    fn from(error: linkwork_store::StoreError) -> Self {
        match error {
            linkwork_store::StoreError::Database(database) => database.into(),
            other if other.is_transient() => Self::Retryable(Box::new(other)),
            other => Self::Fatal(Box::new(other)),
        }
    }
}

/// Applies batches of messages to Postgres.
pub trait Handler: Send + 'static {
    type Message: Decode;

    /// Applies `batch` inside `transaction`. Fresh messages only: duplicates by event
    /// id have been removed. Must not commit or roll back the transaction.
    fn handle<'a>(
        &'a mut self,
        transaction: &'a mut PgConnection,
        batch: &'a [Incoming<'a, Self::Message>],
        effects: &'a mut Effects,
    ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send + 'a;
}

/// Runs one consumer until `shutdown` is cancelled or it fails.
#[derive(Debug)]
pub struct ConsumerRunner<H> {
    config: ConsumerConfig,
    kafka: KafkaSettings,
    pool: PgPool,
    handler: H,
    outbox_notify: Option<Arc<Notify>>,
    status: ConsumerStatus,
}

impl<H: Handler> ConsumerRunner<H> {
    pub fn new(config: ConsumerConfig, kafka: KafkaSettings, pool: PgPool, handler: H) -> Self {
        let status = ConsumerStatus::new(&config.name);
        Self {
            config,
            kafka,
            pool,
            handler,
            outbox_notify: None,
            status,
        }
    }

    /// Reports into `status` (made before the runner, by an owner that builds the
    /// runner late) instead of a status of its own.
    pub fn with_status(mut self, status: ConsumerStatus) -> Self {
        self.status = status;
        self
    }

    /// The consumer's live status, for readiness and metrics.
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// Wakes an in-process outbox relay after each batch that wrote outbox rows.
    pub fn with_outbox_notify(mut self, notify: Arc<Notify>) -> Self {
        self.outbox_notify = Some(notify);
        self
    }

    /// Consumes until `shutdown` is cancelled (then finishes the batch in hand, gives
    /// its partitions back and returns `Ok`) or a fatal error. Dropping the future
    /// (aborting the task) stops the poll thread too; nothing uncommitted is kept.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let (items_tx, items_rx) = tokio::sync::mpsc::channel(self.config.queue_capacity);
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        let in_flight = Arc::new(poll::InFlight::new(self.config.in_flight_bytes));
        let status = self.status.clone();
        let poller = match poll::spawn(
            &self.config,
            &self.kafka,
            self.pool.clone(),
            tokio::runtime::Handle::current(),
            items_tx,
            in_flight.clone(),
            control_rx,
        ) {
            Ok(poller) => poller,
            Err(error) => {
                status.stopped();
                return Err(error);
            }
        };
        let mut processor = process::Processor::new(
            self.config,
            self.pool,
            self.handler,
            self.outbox_notify,
            process::PollerLink {
                control: control_tx,
                stop: poller.stop_flag(),
                in_flight,
            },
            self.status,
        );
        let outcome = processor.run(items_rx, shutdown).await;
        drop(poller);
        status.stopped();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_are_classified_without_panicking() {
        // A pool timeout is transient; a protocol error (no SQLSTATE at all) is fatal.
        assert!(matches!(
            HandlerError::from(linkwork_store::sqlx::Error::PoolTimedOut),
            HandlerError::Retryable(_)
        ));
        assert!(matches!(
            HandlerError::from(linkwork_store::sqlx::Error::Protocol("garbled".into())),
            HandlerError::Fatal(_)
        ));
    }
}

//! Kafka for linkwork: the idempotent producer, the transactional consumer runner, the
//! outbox relay, dead letters, CloudEvents headers with trace context, and topics.

pub mod consumer;
pub mod dlq;
pub mod headers;
pub mod health;
pub mod lookup;
pub mod names;
pub mod partitioner;
pub mod producer;
pub mod relay;
pub mod settings;
pub mod topics;
pub mod trace;

pub use consumer::{
    CloudEvent, ConsumerConfig, ConsumerRunner, ConsumerSnapshot, ConsumerStatus, Decode, Decoded,
    Effects, Handler, HandlerError, Incoming, OutboxEvent, Record,
};
pub use names::Names;
pub use producer::{Delivered, Outbound, Producer, ProducerSet};
pub use relay::{OutboxRelay, RelayConfig};
pub use settings::{fetch_max_bytes, KafkaSettings, FETCH_QUEUE_BACKOFF_MS};

/// Errors at the bus boundary.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] linkwork_store::StoreError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("topic {0} does not exist (run `linkwork topics apply`)")]
    UnknownTopic(String),
    #[error("consumer: {0}")]
    Consumer(String),
    #[error("handler failed: {0}")]
    Handler(String),
    #[error("topics: {0}")]
    Topics(String),
    /// A delivery reported successful without an offset (librdkafka's
    /// "implicitly acked" or "duplicate sequence" outcomes): not proof that the message
    /// is on the log.
    #[error("the delivery to partition {0} was reported without an offset")]
    NoOffset(i32),
}

impl BusError {
    /// Worth retrying: the broker or database may come back, a missing topic may be
    /// created (`linkwork topics apply`).
    pub fn is_transient(&self) -> bool {
        match self {
            BusError::Kafka(_) | BusError::UnknownTopic(_) | BusError::NoOffset(_) => true,
            BusError::Store(error) => error.is_transient(),
            _ => false,
        }
    }
}

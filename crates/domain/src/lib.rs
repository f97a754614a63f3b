//! linkwork's domain: identifiers, the events that are the system of record, and the
//! referral aggregate. Pure: no I/O, no clocks (callers pass times in), no randomness
//! except fresh event ids.

pub mod call_log;
pub mod clock;
pub mod event;
pub mod ids;
pub mod need;
pub mod nhs_number;
pub mod outcome;
pub mod postcode;
pub mod referral;
pub mod resource;
pub mod schema;

pub use call_log::{CallLogDay, CallLogEvent, CaseClosed, CaseDiverted, CaseOpened, ClosureReason};
pub use clock::Clock;
pub use event::ReferralEvent;
pub use ids::{Actor, AscCaseId, AscPersonId, EventId, ProviderId, ReferralId, Source, SourceKind};
pub use need::Need;
pub use nhs_number::{NhsNumber, NhsNumberError};
pub use outcome::{Instrument, OutcomeMeasure, Timepoint};
pub use postcode::Postcode;
pub use resource::ResourceJson;

/// An event type family that travels on one topic: its CloudEvents types, its body
/// codec and its Kafka key.
pub trait DomainEvent: Sized + Send + 'static {
    /// Every CloudEvents `type` this family uses.
    const TYPES: &'static [&'static str];

    /// The CloudEvents `type` of this event (the `ce_type` header).
    fn event_type(&self) -> &'static str;

    /// Reads a body of the given type. Unknown types and bodies that do not match the
    /// type's schema are errors: the consumer sends them to its dead-letter topic.
    fn decode(event_type: &str, body: &[u8]) -> Result<Self, DecodeError>;

    /// The JSON body.
    fn encode(&self) -> Vec<u8>;

    /// The Kafka key: events with the same key stay in order.
    fn key(&self) -> String;
}

/// Why a message body is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("body of {event_type} is not valid JSON: {reason}")]
    NotJson {
        event_type: &'static str,
        reason: String,
    },
    #[error("body does not match the schema of {event_type}: {reason}")]
    InvalidBody {
        event_type: &'static str,
        reason: String,
    },
}

impl DecodeError {
    /// Classifies a serde_json error: broken JSON, or JSON of the wrong shape.
    pub fn from_json(event_type: &'static str, error: &serde_json::Error) -> Self {
        let reason = error.to_string();
        match error.classify() {
            serde_json::error::Category::Data => Self::InvalidBody { event_type, reason },
            _ => Self::NotJson { event_type, reason },
        }
    }
}

//! Dead letters: a message the consumer cannot apply, kept whole (body and headers)
//! with why and where it came from, on the consumer's `<name>.dlq` topic.

use chrono::Utc;
use linkwork_domain::EventId;
use linkwork_store::outbox::NewOutboxMessage;

use crate::consumer::Record;
use crate::headers::CONTENT_TYPE;

pub const REASON: &str = "dlq.reason";
pub const CONSUMER: &str = "dlq.consumer";
pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
/// The original message's headers, each under this prefix.
pub const ORIGINAL_HEADER_PREFIX: &str = "dlq.original.header.";
/// CloudEvents type of a dead letter.
pub const EVENT_TYPE: &str = "linkwork.dead-letter.v1";
/// The longest reason kept; diagnostics beyond it are cut.
const MAX_REASON: usize = 4000;

/// The outbox row that dead-letters `record`. Its id derives from the consumer and the
/// record's coordinates, so dead-lettering the same message twice publishes it once.
pub fn dead_letter(
    consumer: &str,
    dlq_topic: &str,
    source: &str,
    record: &Record,
    reason: &str,
) -> NewOutboxMessage {
    let event_id = EventId::derive(&[
        "dead-letter",
        consumer,
        &record.topic,
        &record.partition.to_string(),
        &record.offset.to_string(),
    ]);
    let mut reason = reason.to_owned();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    let mut extra_headers = vec![
        (REASON.to_owned(), reason),
        (CONSUMER.to_owned(), consumer.to_owned()),
        (ORIGINAL_TOPIC.to_owned(), record.topic.to_string()),
        (ORIGINAL_PARTITION.to_owned(), record.partition.to_string()),
        (ORIGINAL_OFFSET.to_owned(), record.offset.to_string()),
        // The body is the original's, which need not be JSON.
        (
            CONTENT_TYPE.to_owned(),
            "application/octet-stream".to_owned(),
        ),
    ];
    for (name, value) in &record.headers.0 {
        let value = String::from_utf8_lossy(value).into_owned();
        extra_headers.push((format!("{ORIGINAL_HEADER_PREFIX}{name}"), value));
    }
    NewOutboxMessage {
        event_id: *event_id.as_uuid(),
        topic: dlq_topic.to_owned(),
        key: record
            .key
            .as_ref()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        ce_type: EVENT_TYPE.to_owned(),
        ce_source: source.to_owned(),
        ce_time: Utc::now(),
        traceparent: record
            .headers
            .get_str(crate::headers::TRACEPARENT)
            .map(str::to_owned),
        tracestate: record
            .headers
            .get_str(crate::headers::TRACESTATE)
            .map(str::to_owned),
        extra_headers,
        payload: record.payload.clone().unwrap_or_default(),
    }
}

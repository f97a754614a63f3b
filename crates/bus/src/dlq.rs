//! Dead letters: a message the consumer cannot apply, kept whole (body and headers)
//! with why and where it came from, on the consumer's `<name>.dlq` topic.
//!
//! A consumer with a vault seals each dead letter ([`seal`]): the body and the full
//! reason go under the key of the person the message is about (the first valid NHS
//! number in it, else a person of the dead letter's own), the reason header keeps the
//! reason with NHS numbers and postcodes masked, and [`open`] reads it back while the
//! person's key lives. Erasing the person makes it unreadable.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::Utc;
use linkwork_domain::EventId;
use linkwork_store::outbox::NewOutboxMessage;
use linkwork_store::sqlx::PgConnection;
use linkwork_vault::{Sealed, Vault, VaultError};
use serde::{Deserialize, Serialize};

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
/// The content type of a sealed dead letter's body (a [`Sealed`] as JSON).
pub const SEALED_CONTENT_TYPE: &str = "application/vnd.linkwork.sealed+json";
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

/// What a sealed dead letter holds: the full reason and the original body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterContent {
    pub reason: String,
    /// The original body, base64.
    pub body: String,
}

impl DeadLetterContent {
    /// The original body's bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        BASE64.decode(&self.body).unwrap_or_default()
    }
}

/// Seals `letters` (made by [`dead_letter`]) in place, the keys of the batch's people
/// read (and made) in one round trip on `connection`.
pub async fn seal(
    vault: &Vault,
    connection: &mut PgConnection,
    letters: &mut [NewOutboxMessage],
) -> Result<(), VaultError> {
    if letters.is_empty() {
        return Ok(());
    }
    let people: Vec<_> = letters
        .iter()
        .map(|letter| vault.person_of_dead_letter(&letter.payload, &letter.event_id.to_string()))
        .collect();
    let keys = vault.keys_for(connection, &people).await?;
    for (letter, person) in letters.iter_mut().zip(people) {
        let key = keys
            .get(&person)
            .ok_or(VaultError::Unreadable("the person was erased meanwhile"))?;
        let reason = letter
            .extra_headers
            .iter()
            .find(|(name, _)| name == REASON)
            .map(|(_, reason)| reason.clone())
            .unwrap_or_default();
        let content = DeadLetterContent {
            reason: reason.clone(),
            body: BASE64.encode(&letter.payload),
        };
        // Plain structs: serializing them cannot fail.
        let sealed = key.seal(&serde_json::to_vec(&content).unwrap_or_default());
        letter.payload = serde_json::to_vec(&sealed).unwrap_or_default();
        for (name, value) in &mut letter.extra_headers {
            if name == REASON {
                *value = linkwork_vault::mask_identifiers(&reason);
            } else if name == CONTENT_TYPE {
                SEALED_CONTENT_TYPE.clone_into(value);
            } else if name.starts_with(ORIGINAL_HEADER_PREFIX) {
                *value = linkwork_vault::mask_identifiers(value);
            }
        }
    }
    Ok(())
}

/// Opens a sealed dead letter's body while its person's key lives.
pub async fn open(
    vault: &Vault,
    connection: &mut PgConnection,
    payload: &[u8],
) -> Result<DeadLetterContent, VaultError> {
    let sealed: Sealed = serde_json::from_slice(payload)
        .map_err(|_| VaultError::Unreadable("not a sealed dead letter"))?;
    let person = linkwork_vault::sealed_person(&sealed)?;
    let keys = vault.keys(connection, &[person]).await?;
    let key = keys
        .get(&person)
        .ok_or(VaultError::Unreadable("no key: the person was erased"))?;
    serde_json::from_slice(&key.open(&sealed)?)
        .map_err(|_| VaultError::Unreadable("the sealed dead letter does not parse"))
}

//! Dead letters: a message the consumer cannot apply, kept whole (body and headers)
//! with why and where it came from, on the consumer's `<name>.dlq` topic.
//!
//! A consumer with a vault seals each dead letter ([`seal`]): the body and the full
//! reason go under the key of the person the message is about (the first valid NHS
//! number in it, else a person of the dead letter's own), the reason header keeps the
//! reason with NHS numbers and postcodes masked, and [`open`] reads it back while the
//! person's key lives. Erasing the person makes it unreadable.

use chrono::Utc;
use linkwork_domain::EventId;
use linkwork_store::outbox::NewOutboxMessage;
use linkwork_store::sqlx::PgConnection;
use linkwork_vault::{Vault, VaultError};

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
/// The content type of a sealed dead letter's body (binary: see [`seal`]).
pub const SEALED_CONTENT_TYPE: &str = "application/vnd.linkwork.sealed";
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterContent {
    pub reason: String,
    pub body: Vec<u8>,
}

impl DeadLetterContent {
    /// The reason's length (4 bytes, big-endian), the reason, the body.
    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(4 + self.reason.len() + self.body.len());
        bytes.extend_from_slice(&u32::try_from(self.reason.len()).unwrap_or(0).to_be_bytes());
        bytes.extend_from_slice(self.reason.as_bytes());
        bytes.extend_from_slice(&self.body);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (length, rest) = bytes.split_first_chunk::<4>()?;
        let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
        if rest.len() < length {
            return None;
        }
        let (reason, body) = rest.split_at(length);
        Some(Self {
            reason: String::from_utf8(reason.to_vec()).ok()?,
            body: body.to_vec(),
        })
    }
}

/// Seals `letters` (made by [`dead_letter`]) in place: each under the keys of every
/// person whose NHS number it carries (it opens only while all of them live), or
/// under the day's key for dead letters naming nobody; the keys of the batch's people
/// read (and made) in one round trip on `connection`. The body stays close to its
/// size (binary, about 100 bytes more per person).
pub async fn seal(
    vault: &Vault,
    connection: &mut PgConnection,
    letters: &mut [NewOutboxMessage],
) -> Result<(), VaultError> {
    if letters.is_empty() {
        return Ok(());
    }
    let day = Utc::now().date_naive().to_string();
    let people: Vec<Vec<_>> = letters
        .iter()
        .map(|letter| {
            let named = vault.people_of_dead_letter(&letter.payload);
            if named.is_empty() {
                vec![vault.person_of_anonymous_dead_letters(&day)]
            } else {
                named
            }
        })
        .collect();
    let everyone: Vec<_> = people.iter().flatten().copied().collect();
    let keys = vault.keys_for(connection, &everyone).await?;
    for (letter, people) in letters.iter_mut().zip(people) {
        let keys: Vec<_> = people
            .iter()
            .map(|person| keys.get(person).ok_or(VaultError::ErasedMeanwhile))
            .collect::<Result<_, _>>()?;
        let reason = letter
            .extra_headers
            .iter()
            .find(|(name, _)| name == REASON)
            .map(|(_, reason)| reason.clone())
            .unwrap_or_default();
        let content = DeadLetterContent {
            reason: reason.clone(),
            body: std::mem::take(&mut letter.payload),
        };
        letter.payload = linkwork_vault::seal_for_all(&keys, &content.to_bytes());
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

/// Opens a sealed dead letter while the keys of everyone it names live.
pub async fn open(
    vault: &Vault,
    connection: &mut PgConnection,
    payload: &[u8],
) -> Result<DeadLetterContent, VaultError> {
    let plaintext = vault.open_sealed_for_all(connection, payload).await?;
    DeadLetterContent::from_bytes(&plaintext).ok_or(VaultError::Unreadable(
        "the sealed dead letter does not parse",
    ))
}

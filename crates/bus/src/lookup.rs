//! Finding one event on the log by its id, to settle a publish whose acknowledgement
//! never came: librdkafka reports a message as failed when its request reached the
//! broker but the answer did not, so only reading the log tells whether it landed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::headers::{HeaderList, CE_ID};
use crate::settings::KafkaSettings;
use crate::BusError;

/// Where to look for one event.
#[derive(Debug, Clone)]
pub struct EventSearch {
    pub topic: String,
    /// The partition its key maps to (see [`crate::partitioner::partition_for`]).
    pub partition: i32,
    /// Messages stamped before this are not read (their timestamp is the producer's
    /// clock when it was sent; allow for clock differences).
    pub since: DateTime<Utc>,
    /// Its `ce_id`.
    pub event_id: Uuid,
    /// Longest the search may take; beyond it the answer is an error, never "absent".
    pub timeout: Duration,
}

/// The offset of the event, if it is on the log from `since` up to the partition's
/// high watermark as it was when the search began.
pub async fn find_event(
    kafka: &KafkaSettings,
    search: EventSearch,
) -> Result<Option<i64>, BusError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || find_event_blocking(&kafka, &search))
        .await
        .map_err(|error| BusError::Consumer(format!("event search panicked: {error}")))?
}

fn find_event_blocking(
    kafka: &KafkaSettings,
    search: &EventSearch,
) -> Result<Option<i64>, BusError> {
    let started = Instant::now();
    let remaining = || search.timeout.saturating_sub(started.elapsed());
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "linkwork.event-search")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let (_, high) = consumer.fetch_watermarks(&search.topic, search.partition, remaining())?;
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition_offset(
        &search.topic,
        search.partition,
        Offset::Offset(search.since.timestamp_millis()),
    )?;
    let found = consumer.offsets_for_times(wanted, remaining())?;
    let from = match found
        .find_partition(&search.topic, search.partition)
        .map(|element| element.offset())
    {
        Some(Offset::Offset(offset)) => offset,
        // Nothing stamped at or after `since`.
        Some(Offset::End) => return Ok(None),
        other => {
            return Err(BusError::Consumer(format!(
                "no offset for time {} in {}/{}: {other:?}",
                search.since, search.topic, search.partition
            )))
        }
    };
    if from >= high {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&search.topic, search.partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    // `referral.events` is never compacted and has no transaction markers, so offsets
    // are contiguous: reading stops at the last one below the high watermark.
    loop {
        if started.elapsed() > search.timeout {
            return Err(BusError::Consumer(format!(
                "search of {}/{} from {from} to {high} did not finish in {:?}",
                search.topic, search.partition, search.timeout
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let headers = HeaderList::from_kafka(message.headers());
                let is_wanted = headers
                    .get_str(CE_ID)
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .is_some_and(|id| id == search.event_id);
                if is_wanted {
                    return Ok(Some(message.offset()));
                }
                if message.offset() + 1 >= high {
                    return Ok(None);
                }
            }
            Some(Err(error)) => return Err(BusError::Kafka(error)),
            None => {}
        }
    }
}

//! CloudEvents attributes as Kafka headers (the CloudEvents Kafka binding, binary
//! content mode) plus W3C trace context.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

pub const SPEC_VERSION: &str = "1.0";
pub const JSON: &str = "application/json";

/// The CloudEvents attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub id: Uuid,
    pub event_type: String,
    pub source: String,
    pub time: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// A message's headers, copied out of the client's buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, Vec<u8>)>);

impl HeaderList {
    pub fn from_kafka(headers: Option<&impl Headers>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        Self(
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }

    /// The bytes of the names and values.
    pub fn size(&self) -> usize {
        self.0
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum()
    }

    /// The last value of a header, as text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.0.iter().fold(
            OwnedHeaders::new_with_capacity(self.0.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_slice()),
                })
            },
        )
    }

    pub fn push(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.0.push((name.to_owned(), value.into()));
    }
}

/// Why a message's CloudEvents headers cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("header {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl EventMeta {
    pub fn to_headers(&self) -> HeaderList {
        let mut headers = HeaderList(Vec::with_capacity(8));
        headers.push(CE_ID, self.id.to_string());
        headers.push(CE_TYPE, self.event_type.as_str());
        headers.push(CE_SOURCE, self.source.as_str());
        headers.push(
            CE_TIME,
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        headers.push(CE_SPECVERSION, SPEC_VERSION);
        headers.push(CONTENT_TYPE, JSON);
        if let Some(traceparent) = &self.traceparent {
            headers.push(TRACEPARENT, traceparent.as_str());
        }
        if let Some(tracestate) = &self.tracestate {
            headers.push(TRACESTATE, tracestate.as_str());
        }
        headers
    }

    pub fn from_headers(headers: &HeaderList) -> Result<Self, HeaderError> {
        let required = |name: &'static str| headers.get_str(name).ok_or(HeaderError::Missing(name));
        let id = required(CE_ID)?;
        let id = Uuid::parse_str(id).map_err(|error| HeaderError::Invalid {
            name: CE_ID,
            reason: error.to_string(),
        })?;
        match headers.get_str(CE_SPECVERSION) {
            Some(SPEC_VERSION) => {}
            Some(other) => {
                return Err(HeaderError::Invalid {
                    name: CE_SPECVERSION,
                    reason: format!("{other:?} is not CloudEvents 1.0"),
                })
            }
            None => return Err(HeaderError::Missing(CE_SPECVERSION)),
        }
        let time = DateTime::parse_from_rfc3339(required(CE_TIME)?)
            .map_err(|error| HeaderError::Invalid {
                name: CE_TIME,
                reason: error.to_string(),
            })?
            .with_timezone(&Utc);
        Ok(Self {
            id,
            event_type: required(CE_TYPE)?.to_owned(),
            source: required(CE_SOURCE)?.to_owned(),
            time,
            traceparent: headers.get_str(TRACEPARENT).map(str::to_owned),
            tracestate: headers.get_str(TRACESTATE).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EventMeta {
        EventMeta {
            id: Uuid::from_u128(42),
            event_type: "linkwork.asc.case-opened.v1".into(),
            source: "linkwork/ingest".into(),
            time: DateTime::parse_from_rfc3339("2026-03-02T09:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        }
    }

    #[test]
    fn headers_round_trip() {
        let headers = meta().to_headers();
        assert_eq!(headers.get_str(CE_SPECVERSION), Some("1.0"));
        assert_eq!(headers.get_str(CONTENT_TYPE), Some("application/json"));
        assert_eq!(EventMeta::from_headers(&headers), Ok(meta()));
    }

    #[test]
    fn missing_and_invalid_headers_are_named() {
        let mut headers = meta().to_headers();
        headers.0.retain(|(key, _)| key != CE_TYPE);
        assert_eq!(
            EventMeta::from_headers(&headers),
            Err(HeaderError::Missing(CE_TYPE))
        );
        let mut headers = meta().to_headers();
        headers.push(CE_ID, "not-a-uuid");
        assert!(matches!(
            EventMeta::from_headers(&headers),
            Err(HeaderError::Invalid { name: CE_ID, .. })
        ));
        assert_eq!(
            EventMeta::from_headers(&HeaderList::default()),
            Err(HeaderError::Missing(CE_ID))
        );
    }
}

//! Adult Social Care call-log events on `asc.call-log` (key: case id).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{AscCaseId, AscPersonId, EventId, ReferralId};
use crate::{DecodeError, DomainEvent};

/// Why ASC closed a case (the `closure_reason` column of the call-log CSV).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClosureReason {
    DivertedToCommunity,
    Resolved,
    Assessed,
    ReferredElsewhere,
    Withdrawn,
}

impl ClosureReason {
    pub const ALL: [ClosureReason; 5] = [
        ClosureReason::DivertedToCommunity,
        ClosureReason::Resolved,
        ClosureReason::Assessed,
        ClosureReason::ReferredElsewhere,
        ClosureReason::Withdrawn,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ClosureReason::DivertedToCommunity => "diverted-to-community",
            ClosureReason::Resolved => "resolved",
            ClosureReason::Assessed => "assessed",
            ClosureReason::ReferredElsewhere => "referred-elsewhere",
            ClosureReason::Withdrawn => "withdrawn",
        }
    }
}

impl fmt::Display for ClosureReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a closure reason (diverted-to-community, resolved, assessed, referred-elsewhere, withdrawn)")]
pub struct UnknownClosureReason(pub String);

impl FromStr for ClosureReason {
    type Err = UnknownClosureReason;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        ClosureReason::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
            .ok_or_else(|| UnknownClosureReason(code.to_owned()))
    }
}

/// A case entered the ASC call log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CaseOpened {
    pub case_id: AscCaseId,
    pub opened_at: DateTime<Utc>,
    /// The person, when the call-log export names them (its optional `person_id`
    /// column): how a diverted person's return to ASC is seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<AscPersonId>,
}

/// A case left the call log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CaseClosed {
    pub case_id: AscCaseId,
    pub closed_at: DateTime<Utc>,
    pub reason: ClosureReason,
}

/// ASC diverted a case to community connectors, by a referral linkwork carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CaseDiverted {
    pub case_id: AscCaseId,
    pub diverted_at: DateTime<Utc>,
    /// The referral made for the person, when ASC referred through linkwork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral_id: Option<ReferralId>,
}

/// The call log at the end of one day (UK local time), as published on
/// `metrics.call-log` for data teams: counts only, no case or person ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallLogDay {
    pub date: chrono::NaiveDate,
    /// Cases open at the end of the day.
    pub open_cases: i64,
    /// Cases opened, closed, and diverted to community providers during the day.
    pub opened: i64,
    pub closed: i64,
    pub diverted: i64,
    /// The baseline the reduction is measured from.
    pub baseline_date: chrono::NaiveDate,
    pub open_at_baseline: i64,
    /// `open_at_baseline - open_cases`.
    pub reduction: i64,
    /// The reduction as a percentage of the baseline, one decimal place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction_percent: Option<f64>,
}

impl CallLogDay {
    pub const EVENT_TYPE: &'static str = "linkwork.metrics.call-log-day.v1";
}

/// Every fact about an ASC call-log case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallLogEvent {
    CaseOpened(CaseOpened),
    CaseClosed(CaseClosed),
    CaseDiverted(CaseDiverted),
}

impl CallLogEvent {
    pub fn type_schemas() -> Vec<(&'static str, schemars::Schema)> {
        vec![
            (
                "linkwork.asc.case-opened.v1",
                schemars::schema_for!(CaseOpened),
            ),
            (
                "linkwork.asc.case-closed.v1",
                schemars::schema_for!(CaseClosed),
            ),
            (
                "linkwork.asc.case-diverted.v1",
                schemars::schema_for!(CaseDiverted),
            ),
        ]
    }

    pub fn case_id(&self) -> &AscCaseId {
        match self {
            Self::CaseOpened(event) => &event.case_id,
            Self::CaseClosed(event) => &event.case_id,
            Self::CaseDiverted(event) => &event.case_id,
        }
    }

    /// The same fact always has the same id, so importing a call log twice adds
    /// nothing (consumers drop the copies), while a corrected row (a changed closing
    /// time, say) is a new fact.
    pub fn derived_id(&self) -> EventId {
        let time = |at: &DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match self {
            Self::CaseOpened(event) => EventId::derive(&[
                "asc",
                event.case_id.as_str(),
                "opened",
                &time(&event.opened_at),
            ]),
            Self::CaseClosed(event) => EventId::derive(&[
                "asc",
                event.case_id.as_str(),
                "closed",
                &time(&event.closed_at),
                event.reason.code(),
            ]),
            Self::CaseDiverted(event) => EventId::derive(&[
                "asc",
                event.case_id.as_str(),
                "diverted",
                &time(&event.diverted_at),
            ]),
        }
    }
}

impl DomainEvent for CallLogEvent {
    const TYPES: &'static [&'static str] = &[
        "linkwork.asc.case-opened.v1",
        "linkwork.asc.case-closed.v1",
        "linkwork.asc.case-diverted.v1",
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::CaseOpened(_) => Self::TYPES[0],
            Self::CaseClosed(_) => Self::TYPES[1],
            Self::CaseDiverted(_) => Self::TYPES[2],
        }
    }

    fn decode(event_type: &str, body: &[u8]) -> Result<Self, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(
            event_type: &'static str,
            body: &[u8],
        ) -> Result<T, DecodeError> {
            serde_json::from_slice(body).map_err(|error| DecodeError::from_json(event_type, &error))
        }
        match event_type {
            "linkwork.asc.case-opened.v1" => parse(Self::TYPES[0], body).map(Self::CaseOpened),
            "linkwork.asc.case-closed.v1" => parse(Self::TYPES[1], body).map(Self::CaseClosed),
            "linkwork.asc.case-diverted.v1" => parse(Self::TYPES[2], body).map(Self::CaseDiverted),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            Self::CaseOpened(event) => serde_json::to_vec(event),
            Self::CaseClosed(event) => serde_json::to_vec(event),
            Self::CaseDiverted(event) => serde_json::to_vec(event),
        };
        encoded.unwrap_or_else(|error| unreachable!("event serialization failed: {error}"))
    }

    fn key(&self) -> String {
        self.case_id().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_wire_form() {
        let event = CallLogEvent::CaseClosed(CaseClosed {
            case_id: AscCaseId::parse("ASC-1").unwrap(),
            closed_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            reason: ClosureReason::DivertedToCommunity,
        });
        let body = event.encode();
        assert_eq!(
            CallLogEvent::decode(event.event_type(), &body),
            Ok(event.clone())
        );
        assert_eq!(event.key(), "ASC-1");
    }

    #[test]
    fn broken_json_unknown_types_and_wrong_shapes_are_told_apart() {
        let opened = "linkwork.asc.case-opened.v1";
        assert!(matches!(
            CallLogEvent::decode(opened, b"{not json"),
            Err(DecodeError::NotJson { .. })
        ));
        assert!(matches!(
            CallLogEvent::decode(opened, br#"{"case_id":"ASC-1"}"#),
            Err(DecodeError::InvalidBody { reason, .. }) if reason.contains("opened_at")
        ));
        assert!(matches!(
            CallLogEvent::decode(
                opened,
                br#"{"case_id":"has space","opened_at":"2026-01-01T00:00:00Z"}"#
            ),
            Err(DecodeError::InvalidBody { .. })
        ));
        assert_eq!(
            CallLogEvent::decode("linkwork.asc.case-exploded.v1", b"{}"),
            Err(DecodeError::UnknownType(
                "linkwork.asc.case-exploded.v1".into()
            ))
        );
    }

    #[test]
    fn closure_reasons_parse_from_their_csv_codes() {
        for reason in ClosureReason::ALL {
            assert_eq!(reason.code().parse::<ClosureReason>(), Ok(reason));
        }
        assert!("lost".parse::<ClosureReason>().is_err());
    }

    #[test]
    fn the_same_fact_has_the_same_id() {
        let opened = |minute: i64| {
            CallLogEvent::CaseOpened(CaseOpened {
                case_id: AscCaseId::parse("ASC-1").unwrap(),
                opened_at: DateTime::from_timestamp(1_767_225_600 + minute * 60, 0).unwrap(),
                person_id: None,
            })
        };
        assert_eq!(opened(0).derived_id(), opened(0).derived_id());
        assert_ne!(
            opened(0).derived_id(),
            opened(1).derived_id(),
            "a corrected time is a new fact"
        );
        let closed = CallLogEvent::CaseClosed(CaseClosed {
            case_id: AscCaseId::parse("ASC-1").unwrap(),
            closed_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            reason: ClosureReason::Resolved,
        });
        assert_ne!(opened(0).derived_id(), closed.derived_id());
    }
}

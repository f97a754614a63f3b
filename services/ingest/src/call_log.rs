//! The ASC call-log feed: CSV exports (`case_id,opened_at,closed_at,closure_reason`,
//! and optionally `person_id`, ASC's own id for the person, which lets a diverted
//! person's return to ASC be counted) become call-log events on `asc.call-log`.
//!
//! A row that cannot be read is reported with its line number and the rest still
//! import. Each fact's event id derives from its content, and ids already published
//! are remembered, so importing the same file twice adds nothing to the log.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Europe::London;
use linkwork_bus::{BusError, Producer};
use linkwork_domain::{
    AscCaseId, AscPersonId, CallLogEvent, CaseClosed, CaseOpened, ClosureReason, EventId,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::receipts;

/// The columns of an ASC call-log export.
pub const COLUMNS: [&str; 4] = ["case_id", "opened_at", "closed_at", "closure_reason"];

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "line {}: {}", self.line, self.message)
    }
}

/// A call-log file, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedLog {
    pub rows: usize,
    pub events: Vec<CallLogEvent>,
    pub errors: Vec<RowError>,
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CallLogError {
    #[error("the file's header must be {expected}, found {found:?}")]
    Header { expected: String, found: String },
    #[error("the file is not CSV: {0}")]
    NotCsv(String),
    #[error("the event log is unavailable")]
    Unavailable(#[source] BusError),
    #[error("the database is unavailable")]
    Database(#[from] sqlx::Error),
}

/// Reads a call-log export. Timestamps are ISO 8601: with an offset (`2026-03-02T09:15:00Z`)
/// as given; without one (`2026-03-02T09:15:00`, `2026-03-02 09:15:00`, `2026-03-02`) as
/// UK local time, which is what ASC systems write.
pub fn parse(bytes: &[u8]) -> Result<ParsedLog, CallLogError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|error| CallLogError::NotCsv(error.to_string()))?
        .clone();
    let names: Vec<String> = header
        .iter()
        .map(|name| name.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let column = |name: &str| names.iter().position(|found| found == name);
    let person_column = column("person_id");
    let (Some(case_column), Some(opened_column), Some(closed_column), Some(reason_column)) = (
        column("case_id"),
        column("opened_at"),
        column("closed_at"),
        column("closure_reason"),
    ) else {
        return Err(CallLogError::Header {
            expected: COLUMNS.join(","),
            found: names.join(","),
        });
    };
    let mut parsed = ParsedLog::default();
    let mut seen = HashSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error
                    .position()
                    .map(|position| position.line())
                    .unwrap_or(0);
                parsed.rows += 1;
                parsed.errors.push(RowError {
                    line,
                    message: format!("not readable as CSV: {error}"),
                });
                continue;
            }
        };
        parsed.rows += 1;
        let line = record
            .position()
            .map(|position| position.line())
            .unwrap_or(0);
        let field = |index: usize| record.get(index).unwrap_or("").trim();
        match row(
            field(case_column),
            field(opened_column),
            field(closed_column),
            field(reason_column),
            person_column.map(field).unwrap_or(""),
        ) {
            Ok(events) => {
                if let Some(CallLogEvent::CaseOpened(opened)) = events.first() {
                    if !seen.insert(opened.case_id.clone()) {
                        parsed.errors.push(RowError {
                            line,
                            message: format!("case {} appears earlier in the file", opened.case_id),
                        });
                        continue;
                    }
                }
                parsed.events.extend(events);
            }
            Err(message) => parsed.errors.push(RowError { line, message }),
        }
    }
    Ok(parsed)
}

fn row(
    case_id: &str,
    opened_at: &str,
    closed_at: &str,
    reason: &str,
    person_id: &str,
) -> Result<Vec<CallLogEvent>, String> {
    let case_id = AscCaseId::parse(case_id).map_err(|error| format!("case_id: {error}"))?;
    let opened_at = timestamp(opened_at).map_err(|problem| format!("opened_at: {problem}"))?;
    let person_id = if person_id.is_empty() {
        None
    } else {
        Some(AscPersonId::parse(person_id).map_err(|error| format!("person_id: {error}"))?)
    };
    let mut events = vec![CallLogEvent::CaseOpened(CaseOpened {
        case_id: case_id.clone(),
        opened_at,
        person_id,
    })];
    match (closed_at.is_empty(), reason.is_empty()) {
        (true, true) => {}
        (true, false) => return Err(
            "closure_reason is given but closed_at is empty (an open case has no closure reason)"
                .into(),
        ),
        (false, true) => return Err("closed_at is given but closure_reason is empty".into()),
        (false, false) => {
            let closed_at =
                timestamp(closed_at).map_err(|problem| format!("closed_at: {problem}"))?;
            if closed_at < opened_at {
                return Err(format!(
                    "closed_at {closed_at} is before opened_at {opened_at}"
                ));
            }
            let reason: ClosureReason = reason
                .parse()
                .map_err(|error| format!("closure_reason: {error}"))?;
            events.push(CallLogEvent::CaseClosed(CaseClosed {
                case_id,
                closed_at,
                reason,
            }));
        }
    }
    Ok(events)
}

fn timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if let Ok(exact) = DateTime::parse_from_rfc3339(text) {
        return Ok(exact.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
    })
    .ok_or_else(|| format!("{text:?} is not an ISO 8601 timestamp"))?;
    // The clocks going back make some local times ambiguous: take the earlier.
    London
        .from_local_datetime(&local)
        .earliest()
        .map(|time| time.with_timezone(&Utc))
        .ok_or_else(|| format!("{text} does not exist in UK local time (the clocks went forward)"))
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: usize,
    pub rows_refused: usize,
    pub events_published: usize,
    pub events_already_known: usize,
    pub errors: Vec<RowError>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for error in &self.errors {
            writeln!(formatter, "refused    {error}")?;
        }
        write!(
            formatter,
            "{} rows read, {} refused; {} events published, {} already on the log",
            self.rows, self.rows_refused, self.events_published, self.events_already_known
        )
    }
}

/// Publishes a call-log file's new facts.
pub async fn import(
    pool: &PgPool,
    producer: &Producer,
    topic: &str,
    bytes: &[u8],
) -> Result<ImportReport, CallLogError> {
    let parsed = parse(bytes)?;
    let identified: Vec<(EventId, CallLogEvent)> = parsed
        .events
        .into_iter()
        .map(|event| (event.derived_id(), event))
        .collect();
    let ids: Vec<Uuid> = identified.iter().map(|(id, _)| *id.as_uuid()).collect();
    let mut connection = pool.acquire().await?;
    let unpublished: HashSet<Uuid> = receipts::unpublished_call_log_events(&mut connection, &ids)
        .await?
        .into_iter()
        .collect();
    let fresh: Vec<(EventId, CallLogEvent)> = identified
        .into_iter()
        .filter(|(id, _)| unpublished.contains(id.as_uuid()))
        .collect();
    let mut published = Vec::with_capacity(fresh.len());
    for chunk in fresh.chunks(2_000) {
        let deliveries = producer
            .publish_batch(topic, crate::intake::EVENT_SOURCE, Utc::now(), chunk)
            .await;
        for ((id, _), delivery) in chunk.iter().zip(deliveries) {
            delivery.map_err(CallLogError::Unavailable)?;
            published.push(*id.as_uuid());
        }
        receipts::record_call_log_events(
            &mut connection,
            &published[published.len() - chunk.len()..],
        )
        .await?;
    }
    Ok(ImportReport {
        rows: parsed.rows,
        rows_refused: parsed.errors.len(),
        events_published: published.len(),
        events_already_known: ids.len() - unpublished.len(),
        errors: parsed.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_opened_and_closed_events() {
        let csv = "case_id,opened_at,closed_at,closure_reason\n\
                   SYN-1,2026-01-05T09:00:00Z,2026-02-01T10:00:00Z,diverted-to-community\n\
                   SYN-2,2026-01-06 09:30:00,,\n";
        let parsed = parse(csv.as_bytes()).unwrap();
        assert_eq!(parsed.rows, 2);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.events.len(), 3);
        assert!(
            matches!(&parsed.events[1], CallLogEvent::CaseClosed(closed) if closed.reason == ClosureReason::DivertedToCommunity)
        );
    }

    #[test]
    fn an_optional_person_id_column_names_the_person_of_each_case() {
        let csv = "case_id,person_id,opened_at,closed_at,closure_reason\n\
                   SYN-1,P-100,2026-01-05T09:00:00Z,,\n\
                   SYN-2,,2026-01-06T09:00:00Z,,\n\
                   SYN-3,P 101,2026-01-07T09:00:00Z,,\n";
        let parsed = parse(csv.as_bytes()).unwrap();
        let people: Vec<Option<&str>> = parsed
            .events
            .iter()
            .map(|event| match event {
                CallLogEvent::CaseOpened(opened) => opened.person_id.as_ref().map(|id| id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(people, [Some("P-100"), None]);
        assert_eq!(parsed.errors.len(), 1);
        assert!(
            parsed.errors[0].message.starts_with("person_id:"),
            "{:?}",
            parsed.errors
        );
        assert_eq!(parsed.errors[0].line, 4);
    }

    #[test]
    fn uk_local_time_is_read_with_daylight_saving() {
        // 2026-07-01 09:00 in London is 08:00 UTC (BST); in January it is 09:00 UTC.
        assert_eq!(
            timestamp("2026-07-01 09:00:00").unwrap().to_rfc3339(),
            "2026-07-01T08:00:00+00:00"
        );
        assert_eq!(
            timestamp("2026-01-05T09:00:00").unwrap().to_rfc3339(),
            "2026-01-05T09:00:00+00:00"
        );
        assert!(
            timestamp("2026-03-29 01:30:00").is_err(),
            "skipped by the clocks going forward"
        );
    }

    #[test]
    fn bad_rows_are_reported_by_line_and_the_rest_import() {
        let csv = "case_id,opened_at,closed_at,closure_reason\n\
                   SYN-1,2026-01-05T09:00:00Z,,\n\
                   SYN 2,2026-01-05T09:00:00Z,,\n\
                   SYN-3,yesterday,,\n\
                   SYN-4,2026-01-05T09:00:00Z,2026-01-04T09:00:00Z,resolved\n\
                   SYN-5,2026-01-05T09:00:00Z,2026-01-06T09:00:00Z,lost\n\
                   SYN-6,2026-01-05T09:00:00Z,,resolved\n\
                   SYN-1,2026-01-07T09:00:00Z,,\n\
                   SYN-7,2026-01-05T09:00:00Z,2026-01-06T09:00:00Z,withdrawn\n";
        let parsed = parse(csv.as_bytes()).unwrap();
        assert_eq!(parsed.rows, 8);
        let lines: Vec<u64> = parsed.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8], "{:#?}", parsed.errors);
        assert!(parsed.errors[0].message.contains("case_id"));
        assert!(parsed.errors[3].message.contains("closure_reason"));
        assert!(parsed.errors[5].message.contains("earlier in the file"));
        assert_eq!(
            parsed.events.len(),
            3,
            "SYN-1 opened, SYN-7 opened and closed"
        );
    }

    #[test]
    fn a_wrong_header_is_refused_whole() {
        let error = parse(b"id,opened\nSYN-1,2026-01-05\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("case_id,opened_at,closed_at,closure_reason"),
            "{error}"
        );
    }

    #[test]
    fn a_byte_order_mark_and_column_order_do_not_matter() {
        let csv =
            "\u{feff}closure_reason,closed_at,opened_at,case_id\n,,2026-01-05T09:00:00Z,SYN-1\n";
        let parsed = parse(csv.as_bytes()).unwrap();
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.events.len(), 1);
    }
}

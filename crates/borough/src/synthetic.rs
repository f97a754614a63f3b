//! Synthetic data for the demo: deterministic given a seed, with invented case ids and
//! no real identifiers.

use chrono::{DateTime, Duration, TimeZone, Utc};
use linkwork_domain::{AscCaseId, CallLogEvent, CaseClosed, CaseOpened, ClosureReason};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An ASC call log over 17 months in which community connectors take a growing share
/// of cases, modelled on the seed evaluation (920 open cases falling towards 576).
#[derive(Debug, Clone)]
pub struct SyntheticCallLog {
    pub baseline: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// In time order.
    pub events: Vec<CallLogEvent>,
    pub cases: usize,
    pub closed: usize,
}

/// Cases open at the baseline date.
pub const OPEN_AT_BASELINE: usize = 920;
/// New cases per day, on average.
const ARRIVALS_PER_DAY: f64 = 12.0;

pub fn call_log(seed: u64) -> SyntheticCallLog {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let baseline = Utc
        .with_ymd_and_hms(2025, 6, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let end = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let days = (end - baseline).num_days();
    let mut next_case = 0usize;
    // The seed in the id keeps runs with different seeds apart in one database.
    let mut case_id = || {
        next_case += 1;
        AscCaseId::parse(&format!("SYN{seed}-{next_case:06}"))
            .unwrap_or_else(|_| unreachable!("ascii id"))
    };

    let mut opened: Vec<CaseOpened> = Vec::new();
    let mut closed: Vec<CaseClosed> = Vec::new();
    // The backlog at the baseline: opened over the previous six months, still open.
    let mut open: Vec<(AscCaseId, DateTime<Utc>)> = (0..OPEN_AT_BASELINE)
        .map(|_| {
            let opened_at = baseline - Duration::minutes(rng.random_range(1..180 * 24 * 60));
            (case_id(), opened_at)
        })
        .collect();
    open.sort_by_key(|(_, at)| *at);
    for (id, opened_at) in &open {
        opened.push(CaseOpened {
            case_id: id.clone(),
            opened_at: *opened_at,
            person_id: None,
        });
    }

    for day in 0..days {
        let progress = day as f64 / days as f64;
        let day_start = baseline + Duration::days(day);
        // Closing gets likelier as connectors take more cases: from the rate that holds
        // 920 open to the rate that holds about 540.
        let close_probability = (ARRIVALS_PER_DAY / 920.0)
            + progress * (ARRIVALS_PER_DAY / 540.0 - ARRIVALS_PER_DAY / 920.0);
        let divert_share = 0.15 + 0.25 * progress;
        let mut still_open = Vec::with_capacity(open.len());
        for (id, opened_at) in open.drain(..) {
            if rng.random::<f64>() < close_probability {
                let earliest = opened_at.max(day_start);
                let closed_at = earliest + Duration::seconds(rng.random_range(60..86_400));
                let reason = if rng.random::<f64>() < divert_share {
                    ClosureReason::DivertedToCommunity
                } else {
                    match rng.random_range(0..100) {
                        0..35 => ClosureReason::Resolved,
                        35..65 => ClosureReason::Assessed,
                        65..85 => ClosureReason::ReferredElsewhere,
                        _ => ClosureReason::Withdrawn,
                    }
                };
                closed.push(CaseClosed {
                    case_id: id,
                    closed_at,
                    reason,
                });
            } else {
                still_open.push((id, opened_at));
            }
        }
        open = still_open;
        for hour in 0..24 {
            if rng.random::<f64>() < ARRIVALS_PER_DAY / 24.0 {
                let opened_at = day_start
                    + Duration::hours(hour)
                    + Duration::seconds(rng.random_range(0..3600));
                let id = case_id();
                opened.push(CaseOpened {
                    case_id: id.clone(),
                    opened_at,
                    person_id: None,
                });
                open.push((id, opened_at));
            }
        }
    }

    let cases = opened.len();
    let closed_count = closed.len();
    let mut events: Vec<(DateTime<Utc>, CallLogEvent)> = opened
        .into_iter()
        .map(|event| (event.opened_at, CallLogEvent::CaseOpened(event)))
        .chain(
            closed
                .into_iter()
                .map(|event| (event.closed_at, CallLogEvent::CaseClosed(event))),
        )
        .collect();
    events.sort_by_key(|(at, _)| *at);
    SyntheticCallLog {
        baseline,
        end,
        events: events.into_iter().map(|(_, event)| event).collect(),
        cases,
        closed: closed_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_at(log: &SyntheticCallLog, at: DateTime<Utc>) -> usize {
        use std::collections::HashMap;
        let mut opened = HashMap::new();
        let mut closed = HashMap::new();
        for event in &log.events {
            match event {
                CallLogEvent::CaseOpened(e) => {
                    opened.insert(e.case_id.clone(), e.opened_at);
                }
                CallLogEvent::CaseClosed(e) => {
                    closed.insert(e.case_id.clone(), e.closed_at);
                }
                CallLogEvent::CaseDiverted(_) => {}
            }
        }
        opened
            .iter()
            .filter(|(id, opened_at)| {
                **opened_at <= at && closed.get(*id).is_none_or(|closed_at| *closed_at > at)
            })
            .count()
    }

    #[test]
    fn the_same_seed_gives_the_same_log() {
        let first = call_log(7);
        let again = call_log(7);
        assert_eq!(first.events, again.events);
        assert_ne!(first.events, call_log(8).events);
    }

    #[test]
    fn the_log_starts_at_920_open_and_falls() {
        let log = call_log(7);
        assert_eq!(open_at(&log, log.baseline), OPEN_AT_BASELINE);
        let at_end = open_at(&log, log.end);
        assert!((450..750).contains(&at_end), "open at end: {at_end}");
        assert_eq!(
            log.cases - log.closed,
            open_at(&log, log.end + Duration::days(1))
        );
    }

    #[test]
    fn every_case_closes_after_it_opens_and_events_are_in_time_order() {
        let log = call_log(3);
        let time = |event: &CallLogEvent| match event {
            CallLogEvent::CaseOpened(e) => e.opened_at,
            CallLogEvent::CaseClosed(e) => e.closed_at,
            CallLogEvent::CaseDiverted(e) => e.diverted_at,
        };
        assert!(log
            .events
            .windows(2)
            .all(|pair| time(&pair[0]) <= time(&pair[1])));
        let mut opened = std::collections::HashMap::new();
        for event in &log.events {
            match event {
                CallLogEvent::CaseOpened(e) => {
                    opened.insert(e.case_id.clone(), e.opened_at);
                }
                CallLogEvent::CaseClosed(e) => assert!(e.closed_at > opened[&e.case_id]),
                CallLogEvent::CaseDiverted(_) => {}
            }
        }
    }
}

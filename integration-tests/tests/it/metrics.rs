//! The metrics service on hand-made event sets whose answers are worked out here, in
//! the comments beside them: the ASC call log through the real call-log consumer,
//! referrals through the real projector, both from real topics into real Postgres, in
//! one process as `serve` assembles it.
//! Then the same figures as FHIR R4 MeasureReports, and the dashboard in headless
//! Chromium against the JSON API.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, TimeZone, Utc};
use linkwork::topology::Services;
use linkwork_bus::topics::ASC_CALL_LOG;
use linkwork_domain::event::{
    ActivityAttended, ActivityKind, ConsentChange, ConsentScope, ContactMode, ContactRecorded,
    ReferralReceived, ReferralRouted,
};
use linkwork_domain::{
    Actor, AscCaseId, AscPersonId, CallLogEvent, CaseClosed, CaseOpened, ClosureReason,
    DomainEvent, EventId, Instrument, Need, OutcomeMeasure, ProviderId, ReferralEvent, Source,
    Timepoint,
};
use linkwork_metrics::disclosure::{Count, Disclosure};
use linkwork_metrics::referrals::Period;
use linkwork_store::sqlx;
use serde_json::Value;

use crate::helpers::{eventually, process_token, unique, Process};
use crate::projector::{change, outcome, Rig};
use crate::router::referral;

// ---------------------------------------------------------------------------------
// The call log: 920 open at the baseline, 576 at the end, and six people whose
// returns to ASC are known.

/// A count as the worked examples show it (the hand-made sets are a handful of people).
fn n(value: i64) -> Count {
    Count::shown(value)
}

fn baseline() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 1).unwrap()
}

fn end() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()
}

/// `days` and `hours` after midnight UTC starting the baseline day.
fn after_baseline(days: i64, hours: i64) -> DateTime<Utc> {
    baseline().and_hms_opt(0, 0, 0).unwrap().and_utc() + Span::days(days) + Span::hours(hours)
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn opened(case: &str, at: DateTime<Utc>, person: Option<&str>) -> CallLogEvent {
    CallLogEvent::CaseOpened(CaseOpened {
        case_id: AscCaseId::parse(case).unwrap(),
        opened_at: at,
        person_id: person.map(|id| AscPersonId::parse(id).unwrap()),
    })
}

fn closed(case: &str, at: DateTime<Utc>, reason: ClosureReason) -> CallLogEvent {
    CallLogEvent::CaseClosed(CaseClosed {
        case_id: AscCaseId::parse(case).unwrap(),
        closed_at: at,
        reason,
    })
}

/// The hand-made call log.
///
/// - 920 cases opened in May 2025, before the baseline (1 June 2025). Cases 1 to 6
///   are people P1 to P6; case 7 is P6 again.
/// - Closed after the baseline: 354 of them. 144 diverted to community providers
///   (cases 1-6 and 8-145), 210 otherwise (case 7 and 146-354).
/// - 10 new cases open from day 100 and stay open; 3 new cases are returns, opened
///   and closed again (P1 on day 50, P2 on day 120, P5 on 26 October 2026).
///
/// Open at the end: 920 - 354 + 10 = 576, a reduction of 344 (37.4%).
///
/// Returns within 90 days of the diversion: P1 (diverted day 10, back day 50) yes;
/// P2 (day 10, back day 120) no; P3 (day 20, never back) no; P4 (1 October 2026,
/// 30 days before the end) not yet known; P5 (11 October 2026, back 26 October) yes;
/// P6 (day 30; its other case opened before the diversion) no. So 6 with a person,
/// 5 followed up, 2 returned (40%), 1 window open; 138 diverted without a person.
fn call_log_events() -> Vec<CallLogEvent> {
    let case = |number: usize| format!("SYN-{number:06}");
    let mut events = Vec::new();
    for number in 1..=920 {
        let person = match number {
            1..=6 => Some(format!("P{number}")),
            7 => Some("P6".to_owned()),
            _ => None,
        };
        let at = utc("2025-05-01T00:00:00Z") + Span::minutes(number as i64);
        events.push(opened(&case(number), at, person.as_deref()));
    }
    use ClosureReason::{Assessed, DivertedToCommunity, Resolved};
    events.push(closed(
        &case(1),
        after_baseline(10, 12),
        DivertedToCommunity,
    ));
    events.push(closed(
        &case(2),
        after_baseline(10, 13),
        DivertedToCommunity,
    ));
    events.push(closed(
        &case(3),
        after_baseline(20, 12),
        DivertedToCommunity,
    ));
    events.push(closed(
        &case(4),
        utc("2026-10-01T12:00:00Z"),
        DivertedToCommunity,
    ));
    events.push(closed(
        &case(5),
        utc("2026-10-11T12:00:00Z"),
        DivertedToCommunity,
    ));
    events.push(closed(
        &case(6),
        after_baseline(30, 12),
        DivertedToCommunity,
    ));
    events.push(closed(&case(7), after_baseline(5, 12), Resolved));
    for number in 8..=145 {
        let at = after_baseline(40, 0) + Span::hours(number as i64 - 8);
        events.push(closed(&case(number), at, DivertedToCommunity));
    }
    for number in 146..=354 {
        let at = after_baseline(1, 0) + Span::hours(number as i64 - 146);
        events.push(closed(&case(number), at, Resolved));
    }
    events.push(opened("RET-P1", after_baseline(50, 9), Some("P1")));
    events.push(closed("RET-P1", after_baseline(60, 9), Resolved));
    events.push(opened("RET-P2", after_baseline(120, 9), Some("P2")));
    events.push(closed("RET-P2", after_baseline(130, 9), Resolved));
    events.push(opened("RET-P5", utc("2026-10-26T09:00:00Z"), Some("P5")));
    events.push(closed("RET-P5", utc("2026-10-29T09:00:00Z"), Assessed));
    for number in 0..10 {
        events.push(opened(
            &format!("NEW-{number:02}"),
            after_baseline(100, number),
            None,
        ));
    }
    events
}

// ---------------------------------------------------------------------------------
// Referrals: six, one from each kind of source, through two providers.

/// Monday 2 March 2026, 09:00 UTC.
fn s() -> DateTime<Utc> {
    utc("2026-03-02T09:00:00Z")
}

fn day(days: f64) -> DateTime<Utc> {
    s() + Span::minutes((days * 24.0 * 60.0).round() as i64)
}

fn period() -> Period {
    Period {
        start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2026, 8, 31).unwrap(),
    }
}

fn provider(id: &str) -> ProviderId {
    ProviderId::parse(id).unwrap()
}

/// A referral from `source` received at `at`.
fn received(number: u32, source: &str, at: DateTime<Utc>) -> ReferralReceived {
    let mut referral = referral(number, &[Need::Loneliness], at);
    referral.source = Source::parse(source).unwrap();
    referral
}

fn routed(referral: &ReferralReceived, to: &str, attempt: u32, at: DateTime<Utc>) -> ReferralEvent {
    ReferralEvent::Routed(ReferralRouted {
        referral_id: referral.referral_id,
        provider_id: provider(to),
        attempt,
        directory_version: "v1-test".into(),
        rule: "hand-made".into(),
        candidates: Vec::new(),
        accept_by: at + Span::days(3),
        occurred_at: at,
    })
}

fn contact(referral: &ReferralReceived, by: &str, at: DateTime<Utc>) -> ReferralEvent {
    ReferralEvent::ContactRecorded(ContactRecorded {
        referral_id: referral.referral_id,
        provider_id: provider(by),
        contact_at: at,
        mode: ContactMode::Phone,
        occurred_at: at,
    })
}

fn consent(referral: &ReferralReceived, by: &str, at: DateTime<Utc>) -> ReferralEvent {
    ReferralEvent::ConsentRecorded(ConsentChange {
        referral_id: referral.referral_id,
        scope: ConsentScope::Evaluation,
        recorded_by: Actor::Provider(provider(by)),
        occurred_at: at,
    })
}

fn activity(
    referral: &ReferralReceived,
    by: &str,
    id: &str,
    kind: ActivityKind,
    at: DateTime<Utc>,
) -> ReferralEvent {
    ReferralEvent::ActivityAttended(ActivityAttended {
        referral_id: referral.referral_id,
        provider_id: provider(by),
        activity_id: Some(id.into()),
        activity_name: id.replace('-', " "),
        kind,
        attended_on: at.date_naive(),
        occurred_at: at,
    })
}

fn score(
    referral: &ReferralReceived,
    by: &str,
    instrument: Instrument,
    baseline: i64,
    follow_up: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> [ReferralEvent; 2] {
    [
        outcome(
            referral,
            by,
            Timepoint::Baseline,
            OutcomeMeasure::single(instrument, baseline).unwrap(),
            from,
        ),
        outcome(
            referral,
            by,
            Timepoint::FollowUp,
            OutcomeMeasure::single(instrument, follow_up).unwrap(),
            to,
        ),
    ]
}

/// The hand-made referrals (days after Monday 2 March 2026, 09:00 UTC):
///
/// | | source | month | offers (days to answer) | first contact | consent | UCLA-3 | SWEMWBS | activities | completed |
/// |---|---|---|---|---|---|---|---|---|---|
/// | R1 | gp | Mar | connectors accepts (2) | 3 | yes | 8→5 | 17→24 | walking group | day 90 |
/// | R2 | hospital | Mar | connectors rejects (1), reconnect accepts (4) | 5 | no | 6→7 | 20→20 | lunch club, benefits advice | day 100 |
/// | R3 | asc | Apr | connectors accepts (1) | 1 | yes | 9→4 | 14→15 | walking group | day 120 |
/// | R4 | self | Apr | connectors no answer, reconnect awaiting | – | – | – | – | – | – |
/// | R5 | org | May | connectors accepts (4) | 2 | no | – | – | – | – |
/// | R6 | contact-centre | May | reconnect accepts (0.5) | 0.5 | yes | – | 18→25 | – | day 150 |
fn referral_events() -> Vec<(EventId, ReferralEvent)> {
    let mut events: Vec<ReferralEvent> = Vec::new();
    use ActivityKind::{Group, Service};
    use Instrument::{Swemwbs, Ucla3};

    let r1 = received(101, "gp:A81001", day(0.0));
    events.push(ReferralEvent::Received(Box::new(r1.clone())));
    events.push(routed(&r1, "connectors", 1, day(0.0)));
    events.push(ReferralEvent::Accepted(change(&r1, "connectors", day(2.0))));
    events.push(consent(&r1, "connectors", day(2.5)));
    events.push(contact(&r1, "connectors", day(3.0)));
    events.extend(score(&r1, "connectors", Ucla3, 8, 5, day(4.0), day(85.0)));
    events.extend(score(
        &r1,
        "connectors",
        Swemwbs,
        17,
        24,
        day(4.0),
        day(85.0),
    ));
    events.push(activity(
        &r1,
        "connectors",
        "walking-group",
        Group,
        day(10.0),
    ));
    events.push(ReferralEvent::Completed(change(
        &r1,
        "connectors",
        day(90.0),
    )));

    let r2 = received(102, "hospital:RVY", day(1.0));
    events.push(ReferralEvent::Received(Box::new(r2.clone())));
    events.push(routed(&r2, "connectors", 1, day(1.0)));
    let mut rejection = change(&r2, "connectors", day(2.0));
    rejection.reason = Some("caseload full".into());
    events.push(ReferralEvent::Rejected(rejection));
    events.push(routed(&r2, "reconnect", 2, day(2.0)));
    events.push(ReferralEvent::Accepted(change(&r2, "reconnect", day(6.0))));
    events.push(contact(&r2, "reconnect", day(6.0)));
    events.extend(score(&r2, "reconnect", Ucla3, 6, 7, day(7.0), day(95.0)));
    events.extend(score(
        &r2,
        "reconnect",
        Swemwbs,
        20,
        20,
        day(7.0),
        day(95.0),
    ));
    events.push(activity(&r2, "reconnect", "lunch-club", Group, day(12.0)));
    events.push(activity(
        &r2,
        "reconnect",
        "benefits-advice",
        Service,
        day(14.0),
    ));
    events.push(ReferralEvent::Completed(change(
        &r2,
        "reconnect",
        day(100.0),
    )));

    let r3 = received(103, "asc", day(31.0));
    events.push(ReferralEvent::Received(Box::new(r3.clone())));
    events.push(routed(&r3, "connectors", 1, day(31.0)));
    events.push(ReferralEvent::Accepted(change(
        &r3,
        "connectors",
        day(32.0),
    )));
    events.push(consent(&r3, "connectors", day(32.0)));
    events.push(contact(&r3, "connectors", day(32.0)));
    events.extend(score(&r3, "connectors", Ucla3, 9, 4, day(33.0), day(115.0)));
    events.extend(score(
        &r3,
        "connectors",
        Swemwbs,
        14,
        15,
        day(33.0),
        day(115.0),
    ));
    events.push(activity(
        &r3,
        "connectors",
        "walking-group",
        Group,
        day(40.0),
    ));
    events.push(ReferralEvent::Completed(change(
        &r3,
        "connectors",
        day(120.0),
    )));

    let r4 = received(104, "self", day(32.0));
    events.push(ReferralEvent::Received(Box::new(r4.clone())));
    events.push(routed(&r4, "connectors", 1, day(32.0)));
    events.push(routed(&r4, "reconnect", 2, day(35.0)));

    let r5 = received(105, "org:townley-age-concern", day(61.0));
    events.push(ReferralEvent::Received(Box::new(r5.clone())));
    events.push(routed(&r5, "connectors", 1, day(61.0)));
    events.push(ReferralEvent::Accepted(change(
        &r5,
        "connectors",
        day(65.0),
    )));
    events.push(contact(&r5, "connectors", day(63.0)));

    let r6 = received(106, "contact-centre", day(62.0));
    events.push(ReferralEvent::Received(Box::new(r6.clone())));
    events.push(routed(&r6, "reconnect", 1, day(62.0)));
    events.push(ReferralEvent::Accepted(change(&r6, "reconnect", day(62.5))));
    events.push(consent(&r6, "reconnect", day(62.5)));
    events.push(contact(&r6, "reconnect", day(62.5)));
    events.extend(score(
        &r6,
        "reconnect",
        Swemwbs,
        18,
        25,
        day(63.0),
        day(140.0),
    ));
    events.push(ReferralEvent::Completed(change(
        &r6,
        "reconnect",
        day(150.0),
    )));

    events
        .into_iter()
        .enumerate()
        .map(|(step, event)| (EventId::derive(&["metrics-test", &step.to_string()]), event))
        .collect()
}

// ---------------------------------------------------------------------------------

/// A database holding both hand-made sets, projected by a process of the projector and
/// the metrics service as `serve` assembles them; its HTTP routes serve the figures.
struct Fixture {
    rig: Rig,
    process: Process,
}

impl Fixture {
    /// The sets served with suppression off, so the worked figures can be read.
    async fn new() -> Fixture {
        Fixture::with(Disclosure::none()).await
    }

    /// The sets served with `disclosure`.
    async fn with(disclosure: Disclosure) -> Fixture {
        let rig = Rig::new().await;
        let calls = rig.names.topic(ASC_CALL_LOG);
        let call_log = call_log_events();
        for event in &call_log {
            let kind = event.event_type();
            let id = EventId::derive(&["metrics-test", &event.key(), kind]);
            let time = match event {
                CallLogEvent::CaseOpened(opened) => opened.opened_at,
                CallLogEvent::CaseClosed(closed) => closed.closed_at,
                CallLogEvent::CaseDiverted(diverted) => diverted.diverted_at,
            };
            rig.producer
                .publish(&calls, id, "test", time, event)
                .await
                .unwrap();
        }
        let referrals = referral_events();
        rig.publish_all(&referrals).await;
        let services = Services {
            projector: true,
            metrics: true,
            ..Services::default()
        };
        let process = rig
            .start_with(services, |settings| {
                settings.call_log_baseline = Some(baseline());
                settings.disclosure = disclosure;
                // The day after the sets end.
                settings.clock = linkwork_domain::Clock::manual(
                    end()
                        .succ_opt()
                        .unwrap()
                        .and_hms_opt(12, 0, 0)
                        .unwrap()
                        .and_utc(),
                );
                // The daily records are the call-log test's to publish and count.
                settings.daily_records_every = None;
            })
            .await;
        rig.projected(referrals.len() as i64).await;
        eventually(
            Duration::from_secs(60),
            "the call log projected",
            || async {
                let (cases, closed): (i64, i64) =
                    sqlx::query_as("SELECT count(*), count(closed_at) FROM asc_cases")
                        .fetch_one(&rig.pool)
                        .await
                        .unwrap_or((0, 0));
                cases == 933 && closed == 357
            },
        )
        .await;
        Fixture { rig, process }
    }

    /// The base URL of the process's metrics routes.
    fn serve(&self) -> String {
        format!("http://{}", self.process.http_addr())
    }
}

#[tokio::test]
async fn the_call_log_falls_from_920_to_576_a_reduction_of_344_or_37_4_percent_with_returns_counted(
) {
    let fixture = Fixture::new().await;
    let report = linkwork_metrics::call_log::report(
        &fixture.rig.pool,
        baseline(),
        end(),
        Disclosure::none(),
    )
    .await
    .unwrap();
    assert_eq!(report.open_at_baseline, n(920));
    assert_eq!(report.open_at_end, n(576));
    assert_eq!(report.reduction, n(344));
    assert_eq!(report.reduction_percent, Some(37.4));
    assert_eq!((report.opened, report.closed), (n(13), n(357)));
    assert_eq!(report.diverted, n(144));

    let returns = report.returns;
    assert_eq!(returns.with_person, n(6));
    assert_eq!(returns.without_person, n(138));
    assert_eq!(returns.returned_within_90_days, n(2), "P1 and P5");
    assert_eq!(
        returns.followed_up,
        n(5),
        "all but P4, whose 90 days are not over"
    );
    assert_eq!(returns.window_open, n(1), "P4");
    assert_eq!(returns.return_percent, Some(40.0));

    // One figure per day, baseline to end. By the end of 13 June 2025 (day 12): the
    // 209 bulk closures (by 10 June), case 7 (6 June), cases 1 and 2 (11 June): 708.
    let days = (end() - baseline()).num_days() as usize + 1;
    assert_eq!(report.daily.len(), days);
    assert_eq!(report.daily[0].date, baseline());
    assert_eq!(report.daily[12].open, n(708));
    assert_eq!(report.daily[days - 1].open, n(576));

    // The daily record for data teams: one message per finished day, exactly once.
    let topic = unique("metrics.call-log");
    fixture.rig.stack.create_topic(&topic, 1).await;
    let today = end().succ_opt().unwrap();
    let published = linkwork_metrics::daily::publish_finished_days(
        &fixture.rig.pool,
        &topic,
        Some(baseline()),
        today,
    )
    .await
    .unwrap();
    assert_eq!(published, days);
    let again = linkwork_metrics::daily::publish_finished_days(
        &fixture.rig.pool,
        &topic,
        Some(baseline()),
        today,
    )
    .await
    .unwrap();
    assert_eq!(again, 0, "a day is published once");
    let messages = fixture
        .rig
        .stack
        .read_topic(&topic, days, Duration::from_secs(60))
        .await;
    assert_eq!(messages.len(), days);
    let records: BTreeMap<String, Value> = messages
        .iter()
        .map(|message| {
            assert_eq!(
                message.header("ce_type"),
                Some("linkwork.metrics.call-log-day.v1")
            );
            (
                message.key.clone().unwrap(),
                serde_json::from_slice(&message.payload).unwrap(),
            )
        })
        .collect();
    let last = &records["2026-10-31"];
    assert_eq!(last["open_cases"], 576);
    assert_eq!(last["reduction"], 344);
    assert_eq!(last["reduction_percent"], 37.4);
    assert_eq!(last["baseline_date"], "2025-06-01");
    // Day 50 (21 July 2025): P1's return opened; nothing closed.
    let day_50 = &records["2025-07-21"];
    assert_eq!(
        (day_50["opened"].as_i64(), day_50["closed"].as_i64()),
        (Some(1), Some(0))
    );
    // No case or person id travels on the data-team topic.
    for message in &messages {
        let text = String::from_utf8_lossy(&message.payload);
        assert!(!text.contains("SYN-") && !text.contains("\"P1\""), "{text}");
    }
}

#[tokio::test]
async fn each_referral_metric_comes_out_as_worked_out_by_hand() {
    let fixture = Fixture::new().await;
    let report =
        linkwork_metrics::referrals::report(&fixture.rig.pool, period(), Disclosure::none())
            .await
            .unwrap();

    // Referrals by source and month.
    assert_eq!(report.referrals, n(6));
    let months: Vec<(&str, &str, Count)> = report
        .by_source
        .iter()
        .map(|row| (row.month.as_str(), row.source.as_str(), row.referrals))
        .collect();
    assert_eq!(
        months,
        [
            ("2026-03", "gp", n(1)),
            ("2026-03", "hospital", n(1)),
            ("2026-04", "asc", n(1)),
            ("2026-04", "self", n(1)),
            ("2026-05", "contact-centre", n(1)),
            ("2026-05", "org", n(1)),
        ]
    );

    // First contact after 3, 5, 1, 2 and 0.5 days: median 2, mean 11.5 / 5 = 2.3.
    assert_eq!(report.first_contact.contacted, n(5));
    assert_eq!(report.first_contact.median_days, Some(2.0));
    assert_eq!(report.first_contact.mean_days, Some(2.3));

    // connectors: offered R1, R2, R3, R4, R5; accepted R1 (2 days), R3 (1), R5 (4);
    // rejected R2; R4 unanswered (re-routed). 3 of 5 = 60%, median 2 days.
    // reconnect: offered R2, R4, R6; accepted R2 (4 days), R6 (0.5); R4 awaiting.
    // 2 of 2 = 100%, median 2.25 days.
    let providers: BTreeMap<&str, _> = report
        .providers
        .iter()
        .map(|p| (p.provider_id.as_str(), p))
        .collect();
    let connectors = providers["connectors"];
    assert_eq!(
        (
            connectors.offered,
            connectors.accepted,
            connectors.rejected,
            connectors.unanswered,
            connectors.awaiting
        ),
        (n(5), n(3), n(1), n(1), n(0))
    );
    assert_eq!(connectors.acceptance_percent, Some(60.0));
    assert_eq!(connectors.median_days_to_accept, Some(2.0));
    assert_eq!(
        connectors.summary,
        "usually replies in 2 days, 60% accepted"
    );
    let reconnect = providers["reconnect"];
    assert_eq!(
        (
            reconnect.offered,
            reconnect.accepted,
            reconnect.rejected,
            reconnect.unanswered,
            reconnect.awaiting
        ),
        (n(3), n(2), n(0), n(0), n(1))
    );
    assert_eq!(reconnect.acceptance_percent, Some(100.0));
    assert_eq!(reconnect.median_days_to_accept, Some(2.3), "2.25 days");

    // Completed: R1, R2, R3, R6.
    assert_eq!(report.completions, n(4));
    let outcomes = &report.outcomes;
    assert_eq!(outcomes.completers, n(4));
    // Loneliness (UCLA-3, lower is better): R1 8→5 and R3 9→4 improved, R2 6→7 did not.
    assert_eq!(
        (
            outcomes.loneliness.measured,
            outcomes.loneliness.improved,
            outcomes.loneliness.improved_percent
        ),
        (n(3), n(2), Some(66.7))
    );
    // Wellbeing (SWEMWBS, higher is better): R1 +7, R3 +1, R6 +7 improved; R2 unchanged.
    assert_eq!(
        (
            outcomes.wellbeing.measured,
            outcomes.wellbeing.improved,
            outcomes.wellbeing.improved_percent
        ),
        (n(4), n(3), Some(75.0))
    );
    let ucla = outcomes
        .instruments
        .iter()
        .find(|i| i.instrument == "ucla-3")
        .unwrap();
    assert_eq!(
        (ucla.pairs, ucla.improved, ucla.unchanged, ucla.worse),
        (n(3), n(2), n(0), n(1))
    );
    // Changes -3, +1, -5: mean -7/3; sample sd sqrt(28/3); t(0.975, 2) = 4.302653.
    let change = ucla.change.unwrap();
    let mean = -7.0 / 3.0;
    let sd = (28.0f64 / 3.0).sqrt();
    let half = 4.302_652_7 * sd / 3f64.sqrt();
    assert!((change.mean - mean).abs() < 1e-9, "{change:?}");
    assert!((change.standard_deviation.unwrap() - sd).abs() < 1e-9);
    assert!((change.ci95_low.unwrap() - (mean - half)).abs() < 1e-5);
    assert!((change.ci95_high.unwrap() - (mean + half)).abs() < 1e-5);
    assert_eq!(ucla.mean_baseline, Some(7.67));
    assert_eq!(ucla.mean_follow_up, Some(5.33));
    let swemwbs = outcomes
        .instruments
        .iter()
        .find(|i| i.instrument == "swemwbs")
        .unwrap();
    assert_eq!(
        (
            swemwbs.pairs,
            swemwbs.improved,
            swemwbs.unchanged,
            swemwbs.worse
        ),
        (n(4), n(3), n(1), n(0))
    );
    assert!((swemwbs.change.unwrap().mean - 3.75).abs() < 1e-9);
    // Counts per band of scores, not each person's pair: baselines 14, 17, 18, 20.
    let baselines: Vec<(i64, i64, Count)> = swemwbs
        .distribution
        .iter()
        .map(|band| (band.low, band.high, band.baseline))
        .collect();
    assert_eq!(
        baselines,
        [
            (7, 12, n(0)),
            (13, 18, n(3)),
            (19, 24, n(1)),
            (25, 30, n(0)),
            (31, 35, n(0))
        ]
    );
    assert_eq!(
        swemwbs
            .distribution
            .iter()
            .filter_map(|band| band.follow_up.value())
            .sum::<i64>(),
        4
    );

    // Activities: walking group (R1, R3), lunch club (R2), benefits advice (R2, a
    // service): 4 attendances by 3 referrals, 2 distinct groups.
    assert_eq!(
        (
            report.activities.attended,
            report.activities.people,
            report.activities.distinct_groups
        ),
        (n(4), n(3), n(2))
    );
    // Consent among accepted referrals R1, R2, R3, R5, R6: R1, R3, R6 = 60%.
    assert_eq!(
        (
            report.consent.accepted_referrals,
            report.consent.consented,
            report.consent.consent_percent
        ),
        (n(5), n(3), Some(60.0))
    );
}

fn fhir_parse(resource: &Value) {
    linkwork_fhir::parse::typed::<linkwork_fhir::fhir_model::r4b::resources::MeasureReport>(
        resource,
        "MeasureReport",
    )
    .unwrap_or_else(|issues| panic!("{issues:?} in {resource}"));
}

#[tokio::test]
async fn measure_reports_parse_as_fhir_r4_and_carry_the_figures() {
    let fixture = Fixture::new().await;
    let base = fixture.serve();
    let client = reqwest::Client::new();
    let get = |query: String| {
        let client = client.clone();
        let url = format!("{base}/fhir/MeasureReport{query}");
        async move {
            let response = client
                .get(url)
                .bearer_auth(commissioner())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };

    let (status, bundle) = get(format!(
        "?measure=call-log-reduction&period-start={}&period-end={}",
        baseline(),
        end()
    ))
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1);
    let report = &bundle["entry"][0]["resource"];
    fhir_parse(report);
    assert_eq!(report["type"], "summary");
    assert_eq!(report["period"]["start"], "2025-06-01");
    let group = &report["group"][0];
    assert_eq!(group["measureScore"]["value"], 37.4);
    let counts: BTreeMap<String, i64> = group["population"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"]["coding"][0]["code"].as_str().unwrap().to_owned(),
                p["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts["initial-population"], 920);
    assert_eq!(counts["numerator"], 344);
    assert_eq!(counts["open-at-end"], 576);
    assert_eq!(counts["returned-within-90-days"], 2);

    // Every group, for the referral period: each parses.
    let (status, all) = get(format!(
        "?period-start={}&period-end={}",
        period().start,
        period().end
    ))
    .await;
    assert_eq!(status, 200);
    let names: Vec<String> = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            fhir_parse(&entry["resource"]);
            entry["resource"]["measure"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, linkwork_metrics::measure::MEASURES);
    let outcomes = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["resource"]["id"]
                .as_str()
                .unwrap()
                .starts_with("outcomes-")
        })
        .unwrap();
    let ucla = outcomes["resource"]["group"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["code"]["coding"][0]["code"] == "change-ucla-3")
        .unwrap();
    assert_eq!(ucla["measureScore"]["value"], -2.33);
    assert!(ucla["extension"][0]["valueRange"]["low"]["value"].is_number());

    let (status, refused) = get("?measure=happiness".into()).await;
    assert_eq!(status, 400);
    assert_eq!(refused["resourceType"], "OperationOutcome");

    // The same figures for Prometheus, from the configured baseline to today.
    let scrape = client
        .get(format!("{base}/metrics"))
        .bearer_auth(commissioner())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "linkwork_asc_open_cases_baseline 920",
        "linkwork_asc_open_cases 576",
        "linkwork_asc_call_log_reduction_percent 37.4",
        "linkwork_asc_diverted_returned_within_90_days 2",
    ] {
        assert!(
            scrape.lines().any(|found| found.starts_with(line)),
            "{line} in {scrape}"
        );
    }
    assert!(scrape.contains("linkwork_provider_acceptance_percent{provider=\"connectors\"} 60"));
}

/// How the dashboard writes a figure (whole numbers plainly, others to one place).
fn shown(value: &Value, suffix: &str) -> String {
    match value.as_f64() {
        None => "–".to_owned(),
        Some(number) if number.fract() == 0.0 => format!("{number:.0}{suffix}"),
        Some(number) => format!("{number:.1}{suffix}"),
    }
}

/// The text of the element carrying `data-metric="<name>"`.
fn metric_in(dom: &str, name: &str) -> Option<String> {
    let marker = format!("data-metric=\"{name}\">");
    let start = dom.find(&marker)? + marker.len();
    let length = dom[start..].find('<')?;
    Some(dom[start..start + length].to_owned())
}

fn chromium() -> std::path::PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|path| path.exists())
    .expect("Chromium is installed (Debian's chromium package; `make test` installs it)")
}

fn headless(args: &[&str]) -> String {
    let output = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium_shows_every_chart_and_the_json_apis_numbers() {
    let fixture = Fixture::new().await;
    let base = fixture.serve();
    let query = format!("?period-start={}&period-end={}", baseline(), end());
    let client = reqwest::Client::new();
    let api: Value = client
        .get(format!("{base}/api/metrics{query}"))
        .bearer_auth(commissioner())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The page as a signed-in browser gets it (the sign-in is tested apart), rendered
    // by Chromium from a file: headless Chromium sends no token.
    let page = client
        .get(format!("{base}/dashboard{query}"))
        .bearer_auth(commissioner())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let file =
        std::env::temp_dir().join(format!("linkwork-dashboard-{}.html", uuid::Uuid::new_v4()));
    std::fs::write(&file, html).unwrap();
    let url = format!("file://{}", file.display());
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || headless(&["--dump-dom", &url])
    })
    .await
    .unwrap();

    let call_log = &api["call_log"];
    let referrals = &api["referrals"];
    let expected = [
        ("open-at-baseline", shown(&call_log["open_at_baseline"], "")),
        ("open-at-end", shown(&call_log["open_at_end"], "")),
        ("reduction", shown(&call_log["reduction"], "")),
        (
            "reduction-percent",
            shown(&call_log["reduction_percent"], "%"),
        ),
        ("diverted", shown(&call_log["diverted"], "")),
        (
            "returned-within-90-days",
            shown(&call_log["returns"]["returned_within_90_days"], ""),
        ),
        ("referrals", shown(&referrals["referrals"], "")),
        ("completions", shown(&referrals["completions"], "")),
        (
            "median-days-to-first-contact",
            shown(&referrals["first_contact"]["median_days"], ""),
        ),
        (
            "loneliness-improved-percent",
            shown(
                &referrals["outcomes"]["loneliness"]["improved_percent"],
                "%",
            ),
        ),
        (
            "wellbeing-improved-percent",
            shown(&referrals["outcomes"]["wellbeing"]["improved_percent"], "%"),
        ),
        (
            "activities-attended",
            shown(&referrals["activities"]["attended"], ""),
        ),
        (
            "distinct-groups",
            shown(&referrals["activities"]["distinct_groups"], ""),
        ),
        (
            "consent-percent",
            shown(&referrals["consent"]["consent_percent"], "%"),
        ),
    ];
    for (metric, value) in &expected {
        assert_eq!(
            metric_in(&dom, metric).as_deref(),
            Some(value.as_str()),
            "{metric} on the dashboard"
        );
    }
    // The worked figures, so a shared mistake in both cannot pass.
    assert_eq!(metric_in(&dom, "reduction-percent").unwrap(), "37.4%");
    assert_eq!(metric_in(&dom, "open-at-end").unwrap(), "576");

    // Every chart is there, drawn, with a text alternative and its figures as a table.
    for chart in [
        "call-log",
        "sources",
        "outcome-ucla-3",
        "outcome-swemwbs",
        "providers",
    ] {
        let start = dom
            .find(&format!("data-chart=\"{chart}\""))
            .unwrap_or_else(|| panic!("chart {chart} on the dashboard"));
        let figure = &dom[start..start + dom[start..].find("</figure>").unwrap()];
        assert!(
            figure.contains("role=\"img\""),
            "{chart} is an image to assistive technology"
        );
        assert!(
            figure.contains("<title") && figure.contains("<desc"),
            "{chart} has a title and description"
        );
        assert!(
            figure.contains("<table>"),
            "{chart} has its figures as a table"
        );
        assert!(
            figure.contains("<polyline") || figure.contains("<rect"),
            "{chart} is drawn"
        );
    }
    // The trend's description states the figures.
    assert!(dom.contains("(920 open)") && dom.contains("(576 open)"));
    assert!(!dom.contains("<script"), "no scripts");

    // Screenshots, laptop and phone, under target/.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    for (name, size) in [
        ("dashboard.png", "1280,2200"),
        ("dashboard-phone.png", "390,3200"),
    ] {
        let path = target.join(name);
        let _ = std::fs::remove_file(&path);
        tokio::task::spawn_blocking({
            let url = url.clone();
            let path = path.clone();
            move || {
                headless(&[
                    &format!("--screenshot={}", path.display()),
                    &format!("--window-size={size}"),
                    &url,
                ])
            }
        })
        .await
        .unwrap();
        let bytes = std::fs::read(&path).unwrap_or_else(|_| panic!("{} written", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    }
}

/// A commissioner's token for the fixture's process.
fn commissioner() -> String {
    process_token(linkwork_auth::Role::Commissioner, "townley-icb")
}

#[tokio::test]
async fn the_figures_are_only_for_data_teams_commissioners_and_administrators() {
    let fixture = Fixture::new().await;
    let base = fixture.serve();
    let client = reqwest::Client::new();
    let query = format!("?period-start={}&period-end={}", baseline(), end());
    let forged = linkwork_auth::dev_token(
        &secrecy::SecretString::from("another-secret-that-is-at-least-32-bytes-long"),
        linkwork_auth::Role::Commissioner,
        "townley-icb",
        &[linkwork_auth::scopes::OUTCOMES_READ],
        600,
    )
    .unwrap();
    use linkwork_auth::Role;
    let paths = linkwork_metrics::http::figure_routes();
    assert_eq!(paths.len(), 5, "{paths:?}");
    for path in paths {
        let url = format!("{base}{path}{query}");
        let status = |token: Option<String>| {
            let mut request = client.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                (status, text)
            }
        };
        let (code, body) = status(None).await;
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(body.contains("OperationOutcome"), "{body}");
        assert_eq!(status(Some(forged.clone())).await.0, 401, "{path} forged");
        for (role, client_id) in [
            (Role::Source, "gp:A81001"),
            (Role::Source, "asc"),
            (Role::Provider, "townley-connectors"),
        ] {
            let (code, body) = status(Some(process_token(role, client_id))).await;
            assert_eq!(code, 403, "{path} for {role:?} {client_id}: {body}");
        }
        for (role, client_id) in [
            (Role::Data, "evaluation-team"),
            (Role::Commissioner, "townley-icb"),
            (Role::Admin, "ops"),
        ] {
            let (code, body) = status(Some(process_token(role, client_id))).await;
            assert_eq!(code, 200, "{path} for {role:?} {client_id}: {body}");
        }
    }
}

#[tokio::test]
async fn the_dashboard_asks_for_a_token_once_and_keeps_it_in_an_http_only_cookie() {
    let fixture = Fixture::new().await;
    let base = fixture.serve();
    // No redirects followed: each answer is looked at.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let query = format!("?period-start={}&period-end={}", baseline(), end());

    // Not signed in: the sign-in form, which will bring the browser back here.
    let page = client
        .get(format!("{base}/dashboard{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);
    let form = page.text().await.unwrap();
    assert!(form.contains(r#"action="/dashboard/session""#), "{form}");
    assert!(
        form.contains(&format!("/dashboard{}", query.replace('&', "&amp;"))),
        "{form}"
    );
    assert!(
        !form.contains("data-metric"),
        "no figures before signing in"
    );

    // A provider's token is refused, with the form again.
    let provider = process_token(linkwork_auth::Role::Provider, "townley-connectors");
    let refused = client
        .post(format!("{base}/dashboard/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("token", provider.as_str()), ("next", "/dashboard")])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("set-cookie").is_none());

    // A commissioner's: a cookie for the dashboard alone, not readable by scripts,
    // and back to the page asked for (never somewhere else).
    let signed_in = client
        .post(format!("{base}/dashboard/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("token", commissioner().as_str()),
                ("next", &format!("/dashboard{query}")),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(
        signed_in.headers()["location"].to_str().unwrap(),
        format!("/dashboard{query}")
    );
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in [
        "linkwork_dashboard=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/dashboard",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let elsewhere = client
        .post(format!("{base}/dashboard/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("token", commissioner().as_str()),
                ("next", "https://evil.example/"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.headers()["location"], "/dashboard");

    let session = cookie.split(';').next().unwrap().to_owned();
    let page = client
        .get(format!("{base}/dashboard{query}"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("data-metric=\"open-at-end\""));
}

#[test]
fn the_hand_made_sets_are_as_described() {
    // Guards the fixtures' own arithmetic: 920 + 13 cases, 357 closures.
    let events = call_log_events();
    let opened = events
        .iter()
        .filter(|e| matches!(e, CallLogEvent::CaseOpened(_)))
        .count();
    let closed = events.len() - opened;
    assert_eq!((opened, closed), (933, 357));
    assert_eq!(
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).single().unwrap(),
        s()
    );
}

#[tokio::test]
async fn the_evaluation_report_states_the_worked_figures_in_markdown_and_html() {
    let fixture = Fixture::new().await;
    let period = Period {
        start: baseline(),
        end: end(),
    };
    let snapshot = linkwork_metrics::http::snapshot(&fixture.rig.pool, period, Disclosure::none())
        .await
        .unwrap();
    let directory = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("report"));
    let (markdown_path, html_path) =
        linkwork_metrics::report::write(&snapshot, &directory).unwrap();
    assert!(markdown_path.ends_with("linkwork-evaluation-2025-06-01-2026-10-31.md"));
    let markdown = std::fs::read_to_string(&markdown_path).unwrap();
    for expected in [
        "fell from **920** open cases to **576**: 344 fewer (37.4%)",
        "**144** cases were diverted",
        "**2** of 5 came back to ASC (40%)",
        "**6** referrals were received and **4** completed",
        "**66.7%** were less lonely and **75%** had better wellbeing",
        "| UCLA 3-item loneliness scale | lower | 3 | 2 | 0 | 1 | 7.7 | 5.3 | -2.33 (",
        "| connectors | 5 | 3 | 1 | 1 | 60% | 2 |",
        "| Self-referral | 1 |",
    ] {
        assert!(markdown.contains(expected), "{expected:?} in\n{markdown}");
    }
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        html.contains("<table>") && html.contains("<svg"),
        "tables and charts"
    );
    assert!(html.contains("<strong>920</strong>"));
    assert!(!html.contains("<script"));
    // No person or case identifier in an evaluation summary.
    assert!(!markdown.contains("SYN-") && !markdown.contains("999"));
}

/// Every number in a JSON document with its path, but the period's and the
/// disclosure note's own.
fn numbers_in(json: &Value, path: &str, out: &mut Vec<(String, f64)>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map {
                if key != "disclosure" && key != "period" {
                    numbers_in(value, &format!("{path}.{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                numbers_in(value, &format!("{path}[{index}]"), out);
            }
        }
        Value::Number(number) => out.push((path.to_owned(), number.as_f64().unwrap())),
        _ => {}
    }
}

#[tokio::test]
async fn periods_holding_one_to_four_people_publish_no_count_of_them_anywhere() {
    // As deployed: counts below 5 suppressed, periods of at least 28 days.
    let fixture = Fixture::with(Disclosure::default()).await;
    let base = fixture.serve();
    let client = reqwest::Client::new();
    let token = commissioner();
    let get = |path: String| {
        let request = client.get(format!("{base}{path}")).bearer_auth(&token);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };

    // March holds R1 and R2; March and April R1 to R4; the whole set six referrals,
    // one from each kind of source, four completers, three with loneliness scores.
    for (start, end, people) in [
        ("2026-03-01", "2026-03-31", 2),
        ("2026-03-01", "2026-04-30", 4),
        ("2026-03-01", "2026-08-31", 6),
    ] {
        let query = format!("?period-start={start}&period-end={end}");
        let (code, body) = get(format!("/api/metrics/referrals{query}")).await;
        assert_eq!(code, 200, "{body}");
        let report: Value = serde_json::from_str(&body).unwrap();
        if people >= 5 {
            // Six referrals may be counted, but not the one from each kind of source
            // they are made of.
            assert_eq!(report["referrals"], people, "{body}");
            let kinds = report["by_source_total"].as_object().unwrap();
            assert_eq!(kinds.len(), 6);
            assert!(kinds.values().all(Value::is_null), "{body}");
            continue;
        }
        assert!(report["referrals"].is_null(), "{people} referrals: {body}");
        let mut numbers = Vec::new();
        numbers_in(&report, "", &mut numbers);
        // No count of 1 to 4 anywhere (offers, of which there are more than people,
        // may reach 5), and nothing worked out from the people themselves.
        for (path, value) in &numbers {
            assert!(
                *value == 0.0
                    || *value >= 5.0
                    || path.ends_with(".low")
                    || path.ends_with(".high")
                    || path.ends_with("_percent"),
                "{start}..{end}: {path} = {value}"
            );
        }
        for figure in [
            "/completions",
            "/first_contact/contacted",
            "/first_contact/median_days",
            "/outcomes/completers",
            "/outcomes/loneliness/improved_percent",
            "/outcomes/wellbeing/improved_percent",
            "/activities/people",
            "/activities/attended",
            "/consent/consented",
            "/consent/consent_percent",
        ] {
            let value = report.pointer(figure);
            assert!(
                value.is_none_or(|value| value.is_null() || value == 0),
                "{start}..{end}: {figure} = {value:?}"
            );
        }
        for instrument in report["outcomes"]["instruments"].as_array().unwrap() {
            assert!(instrument["pairs"].is_null() && instrument["change"].is_null());
        }
        assert!(report["disclosure"]["suppressed_counts"].as_i64().unwrap() > 0);
        assert_eq!(report["disclosure"]["threshold"], 5);

        // The same in the MeasureReports: masked counts, no scores.
        let (code, body) = get(format!("/fhir/MeasureReport{query}")).await;
        assert_eq!(code, 200, "{body}");
        let bundle: Value = serde_json::from_str(&body).unwrap();
        let mut masked = 0;
        for entry in bundle["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            if resource["id"].as_str().unwrap().starts_with("call-log") {
                continue;
            }
            fhir_parse(resource);
            let mut numbers = Vec::new();
            numbers_in(&resource["group"], "", &mut numbers);
            for (path, value) in &numbers {
                assert!(
                    *value == 0.0 || *value >= 5.0 || path.contains("measureScore"),
                    "{}: {path} = {value}",
                    resource["id"]
                );
            }
            masked += resource.to_string().matches("\"masked\"").count();
        }
        assert!(masked > 5, "suppressed counts say why: {body}");

        // The dashboard and the evaluation report say "suppressed" where a count was.
        let (code, page) = get(format!("/dashboard{query}")).await;
        assert_eq!(code, 200);
        assert!(
            page.contains(r#"data-metric="referrals">suppressed<"#),
            "{page}"
        );
    }

    // The evaluation report for March and April.
    let period = Period {
        start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2026, 4, 30).unwrap(),
    };
    let snapshot =
        linkwork_metrics::http::snapshot(&fixture.rig.pool, period, Disclosure::default())
            .await
            .unwrap();
    let markdown = linkwork_metrics::report::markdown(&snapshot);
    assert!(
        markdown.contains("**suppressed** referrals were received"),
        "{markdown}"
    );
    assert!(
        markdown.contains("counts from 1 to 4 are shown as *suppressed*"),
        "{markdown}"
    );

    // The Prometheus figures leave a suppressed figure out rather than show it.
    let (code, text) = get("/metrics".to_owned()).await;
    assert_eq!(code, 200);
    let referral_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("linkwork_referrals"))
        .collect();
    assert!(
        referral_lines.is_empty(),
        "a referral count of one person per source was published: {referral_lines:?}"
    );
    assert!(
        text.contains("linkwork_asc_open_cases "),
        "large counts stay: {text}"
    );

    // A period too short to be about more than a handful of people is refused, and
    // one of exactly 28 days is given.
    let (code, body) =
        get("/api/metrics/referrals?period-start=2026-03-02&period-end=2026-03-02".into()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least 28 days"), "{body}");
    let (code, _) = get("/api/metrics?period-start=2026-03-01&period-end=2026-03-28".into()).await;
    assert_eq!(code, 200);
    let (code, _) =
        get("/fhir/MeasureReport?period-start=2026-03-01&period-end=2026-03-27".into()).await;
    assert_eq!(code, 400);
}

//! The metrics as FHIR R4 MeasureReports (type `summary`), one per metric group, for
//! commissioners' and data teams' systems: `GET /fhir/MeasureReport?measure=<group>`.
//!
//! Population codes come from the measure-population CodeSystem where one fits
//! (`initial-population`, `denominator`, `numerator`); the binding is extensible, so
//! counts it has no code for use linkwork's `CodeSystem/measure-population`. The 95%
//! confidence interval of a mean change has no element in R4: it travels in the
//! extension `StructureDefinition/measure-score-ci95` (a Range).

use chrono::{NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::call_log::CallLogReport;
use crate::disclosure::Count;
use crate::referrals::{source_label, ReferralReport};

/// The metric groups, as the `measure` search parameter names them.
pub const MEASURES: [&str; 8] = [
    "call-log-reduction",
    "referrals-by-source",
    "first-contact",
    "provider-response",
    "completions",
    "outcomes",
    "activities",
    "consent",
];

use linkwork_fhir::systems::{
    MEASURE_IMPROVEMENT as IMPROVEMENT, MEASURE_POPULATION as POPULATION, UCUM,
};

/// The data-absent reason of a suppressed count.
const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// A population's count, or for a suppressed count no value and the data-absent
/// reason `masked` ("the information is not available due to security, privacy or
/// related reasons").
fn with_count(mut population: Value, count: Count) -> Value {
    match count.value() {
        Some(count) => population["count"] = json!(count),
        None => {
            population["_count"] = json!({
                "extension": [{ "url": DATA_ABSENT_REASON, "valueCode": "masked" }]
            })
        }
    }
    population
}

fn population(code: &str, count: Count) -> Value {
    with_count(
        json!({ "code": { "coding": [{ "system": POPULATION, "code": code }] } }),
        count,
    )
}

fn own_population(base: &str, code: &str, text: &str, count: Count) -> Value {
    with_count(
        json!({
            "code": {
                "coding": [{ "system": format!("{base}/CodeSystem/measure-population"), "code": code }],
                "text": text,
            },
        }),
        count,
    )
}

fn quantity(value: f64, unit: &str, code: &str) -> Value {
    json!({ "value": value, "unit": unit, "system": UCUM, "code": code })
}

fn percent(value: f64) -> Value {
    quantity(value, "%", "%")
}

fn days(value: f64) -> Value {
    quantity(value, "days", "d")
}

fn group_code(base: &str, code: &str, text: &str) -> Value {
    json!({
        "coding": [{ "system": format!("{base}/CodeSystem/measure-group"), "code": code }],
        "text": text,
    })
}

fn report(
    base: &str,
    measure: &str,
    start: NaiveDate,
    end: NaiveDate,
    increase_is_better: Option<bool>,
    groups: Vec<Value>,
) -> Value {
    let mut report = json!({
        "resourceType": "MeasureReport",
        "id": format!("{measure}-{start}-{end}"),
        "status": "complete",
        "type": "summary",
        "measure": format!("{base}/Measure/{measure}"),
        "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "reporter": { "display": "linkwork" },
        "period": { "start": start.to_string(), "end": end.to_string() },
        "group": groups,
    });
    if let Some(increase) = increase_is_better {
        report["improvementNotation"] = json!({
            "coding": [{ "system": IMPROVEMENT, "code": if increase { "increase" } else { "decrease" } }]
        });
    }
    report
}

/// The call-log reduction: open cases at the baseline and at the end, the reduction
/// as the score (percent of the baseline), diversions and returns within 90 days.
pub fn call_log(base: &str, call_log: &CallLogReport) -> Value {
    let returns = &call_log.returns;
    let mut group = json!({
        "code": group_code(base, "call-log-reduction", "Reduction in open ASC call-log cases since the baseline"),
        "population": [
            population("initial-population", call_log.open_at_baseline),
            population("denominator", call_log.open_at_baseline),
            population("numerator", call_log.reduction),
            own_population(base, "open-at-end", "Open cases at the end of the period", call_log.open_at_end),
            own_population(base, "diverted", "Cases diverted to community providers", call_log.diverted),
            own_population(base, "diverted-followed-up", "Diverted people whose 90 days are over, or who came back", returns.followed_up),
            own_population(base, "returned-within-90-days", "Diverted people back with ASC within 90 days", returns.returned_within_90_days),
        ],
    });
    if let Some(value) = call_log.reduction_percent {
        group["measureScore"] = percent(value);
    }
    report(
        base,
        "call-log-reduction",
        call_log.baseline,
        call_log.end,
        Some(true),
        vec![group],
    )
}

/// Every referral and outcome group for the period, one MeasureReport each.
pub fn referral_reports(base: &str, metrics: &ReferralReport) -> Vec<(&'static str, Value)> {
    let (start, end) = (metrics.period.start, metrics.period.end);
    let mut reports = Vec::new();

    let strata: Vec<Value> = metrics
        .by_source_total
        .iter()
        .map(|(kind, count)| {
            json!({
                "value": { "coding": [{ "system": format!("{base}/CodeSystem/source-kind"), "code": kind }], "text": source_label(kind) },
                "population": [population("initial-population", *count)],
            })
        })
        .collect();
    let months: Vec<Value> = metrics
        .by_source
        .iter()
        .map(|row| {
            json!({
                "value": { "text": format!("{} {}", row.month, row.source) },
                "population": [population("initial-population", row.referrals)],
            })
        })
        .collect();
    reports.push((
        "referrals-by-source",
        report(
            base,
            "referrals-by-source",
            start,
            end,
            None,
            vec![json!({
                "code": group_code(base, "referrals-by-source", "Referrals received, by kind of source and by month"),
                "population": [population("initial-population", metrics.referrals)],
                "stratifier": [
                    { "code": [{ "text": "source" }], "stratum": strata },
                    { "code": [{ "text": "month and source" }], "stratum": months },
                ],
            })],
        ),
    ));

    let mut contact = json!({
        "code": group_code(base, "first-contact", "Days from referral to first contact (median)"),
        "population": [population("initial-population", metrics.first_contact.contacted)],
    });
    if let Some(median) = metrics.first_contact.median_days {
        contact["measureScore"] = days(median);
    }
    reports.push((
        "first-contact",
        report(
            base,
            "first-contact",
            start,
            end,
            Some(false),
            vec![contact],
        ),
    ));

    let providers: Vec<Value> = metrics
        .providers
        .iter()
        .map(|provider| {
            let mut stratum = json!({
                "value": { "coding": [{ "system": format!("{base}/Id/provider"), "code": provider.provider_id }], "text": provider.summary },
                "population": [
                    population("initial-population", provider.offered),
                    population("denominator", provider.answered),
                    population("numerator", provider.accepted),
                ],
            });
            if let Some(value) = provider.acceptance_percent {
                stratum["measureScore"] = percent(value);
            }
            stratum
        })
        .collect();
    let all = metrics.all_providers.as_ref();
    let total = |figure: fn(&crate::referrals::ProviderResponse) -> Count| {
        all.map_or(Count::shown(0), figure)
    };
    let mut response = json!({
        "code": group_code(base, "provider-response", "Offers accepted by providers (percent), per provider with the median days to accept"),
        "population": [
            population("initial-population", total(|all| all.offered)),
            population("denominator", total(|all| all.answered)),
            population("numerator", total(|all| all.accepted)),
        ],
        "stratifier": [{ "code": [{ "text": "provider" }], "stratum": providers }],
    });
    if let Some(value) = all.and_then(|all| all.acceptance_percent) {
        response["measureScore"] = percent(value);
    }
    reports.push((
        "provider-response",
        report(
            base,
            "provider-response",
            start,
            end,
            Some(true),
            vec![response],
        ),
    ));

    reports.push((
        "completions",
        report(
            base,
            "completions",
            start,
            end,
            Some(true),
            vec![json!({
                "code": group_code(base, "completions", "Referrals completed"),
                "population": [population("initial-population", metrics.completions)],
            })],
        ),
    ));

    let outcomes = &metrics.outcomes;
    let mut groups = Vec::new();
    for (code, text, family) in [
        (
            "loneliness-improved",
            "Completers whose loneliness score improved",
            &outcomes.loneliness,
        ),
        (
            "wellbeing-improved",
            "Completers whose wellbeing score improved",
            &outcomes.wellbeing,
        ),
    ] {
        let mut group = json!({
            "code": group_code(base, code, text),
            "population": [
                population("initial-population", outcomes.completers),
                population("denominator", family.measured),
                population("numerator", family.improved),
            ],
        });
        if let Some(value) = family.improved_percent {
            group["measureScore"] = percent(value);
        }
        groups.push(group);
    }
    for instrument in &outcomes.instruments {
        let mut group = json!({
            "code": group_code(base, &format!("change-{}", instrument.instrument), &format!("Mean change in {} (follow-up minus baseline; {} is better)", instrument.name, if instrument.higher_is_better { "higher" } else { "lower" })),
            "population": [
                population("denominator", instrument.pairs),
                population("numerator", instrument.improved),
            ],
        });
        if let Some(change) = &instrument.change {
            group["measureScore"] =
                json!({ "value": crate::stats::round(change.mean, 2), "unit": "score points" });
            if let (Some(low), Some(high)) = (change.ci95_low, change.ci95_high) {
                group["extension"] = json!([{
                    "url": format!("{base}/StructureDefinition/measure-score-ci95"),
                    "valueRange": {
                        "low": { "value": crate::stats::round(low, 2), "unit": "score points" },
                        "high": { "value": crate::stats::round(high, 2), "unit": "score points" },
                    },
                }]);
            }
        }
        groups.push(group);
    }
    reports.push((
        "outcomes",
        report(base, "outcomes", start, end, Some(true), groups),
    ));

    reports.push((
        "activities",
        report(
            base,
            "activities",
            start,
            end,
            Some(true),
            vec![json!({
                "code": group_code(base, "activities", "Activities attended"),
                "population": [
                    population("initial-population", metrics.activities.attended),
                    own_population(base, "people", "Referrals with at least one activity attended", metrics.activities.people),
                    own_population(base, "distinct-groups", "Distinct groups attended", metrics.activities.distinct_groups),
                ],
            })],
        ),
    ));

    let mut consent = json!({
        "code": group_code(base, "consent", "Accepted referrals with consent to share outcomes for evaluation"),
        "population": [
            population("denominator", metrics.consent.accepted_referrals),
            population("numerator", metrics.consent.consented),
        ],
    });
    if let Some(value) = metrics.consent.consent_percent {
        consent["measureScore"] = percent(value);
    }
    reports.push((
        "consent",
        report(base, "consent", start, end, Some(true), vec![consent]),
    ));
    reports
}

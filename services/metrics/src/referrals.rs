//! Referral and outcome metrics: where referrals come from, how fast people are
//! contacted, how providers respond, what changes for the people who complete, and
//! what they take part in.
//!
//! Computed from the projector's read models (schema `projection`), which are built
//! only from `referral.events`: the same facts, already folded by the referral
//! lifecycle, so these figures agree with the FHIR read API. Every figure is an
//! aggregate; nothing here names a person.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use linkwork_domain::outcome::Direction;
use linkwork_domain::Instrument;
use linkwork_projection::aggregates::{self, OutcomePair, ProviderOffers};
use serde::Serialize;
use sqlx::PgPool;

use crate::call_log::end_of_day;
use crate::stats::{self, MeanWithInterval};

/// A period of whole days in UK local time, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Period {
    fn from(&self) -> DateTime<Utc> {
        end_of_day(self.start.pred_opt().unwrap_or(self.start))
    }

    fn to(&self) -> DateTime<Utc> {
        end_of_day(self.end)
    }
}

/// Every referral and outcome metric for a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferralReport {
    pub period: Period,
    pub referrals: i64,
    pub by_source: Vec<SourceMonth>,
    /// Totals per kind of source over the period.
    pub by_source_total: BTreeMap<String, i64>,
    pub first_contact: FirstContact,
    pub providers: Vec<ProviderResponse>,
    pub completions: i64,
    pub outcomes: Outcomes,
    pub activities: Activities,
    pub consent: Consent,
}

impl ReferralReport {
    /// Nothing to report: no referral is known.
    pub fn empty(period: Period) -> Self {
        let none = Improvement {
            measured: 0,
            improved: 0,
            improved_percent: None,
        };
        Self {
            period,
            referrals: 0,
            by_source: Vec::new(),
            by_source_total: BTreeMap::new(),
            first_contact: FirstContact {
                contacted: 0,
                median_days: None,
                mean_days: None,
            },
            providers: Vec::new(),
            completions: 0,
            outcomes: Outcomes {
                completers: 0,
                loneliness: none,
                wellbeing: none,
                instruments: Vec::new(),
            },
            activities: Activities {
                attended: 0,
                people: 0,
                distinct_groups: 0,
            },
            consent: Consent {
                accepted_referrals: 0,
                consented: 0,
                consent_percent: None,
            },
        }
    }
}

/// Referrals received in a month from one kind of source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceMonth {
    /// `YYYY-MM`.
    pub month: String,
    /// `gp`, `hospital`, `contact-centre`, `asc`, `org` (other organisations), `self`.
    pub source: String,
    pub referrals: i64,
}

/// Time from a referral reaching linkwork to the provider's first contact with the
/// person, for referrals received in the period that have been contacted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstContact {
    pub contacted: i64,
    pub median_days: Option<f64>,
    pub mean_days: Option<f64>,
}

/// How one provider answered the referrals offered to it in the period (one offer per
/// routing attempt).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderResponse {
    pub provider_id: String,
    pub offered: i64,
    pub accepted: i64,
    pub rejected: i64,
    /// Re-routed or closed without an answer (the acceptance deadline passed).
    pub unanswered: i64,
    /// Still waiting for an answer.
    pub awaiting: i64,
    /// `accepted` of the answered-or-expired offers, percent.
    pub acceptance_percent: Option<f64>,
    pub median_days_to_accept: Option<f64>,
    /// "usually replies in N days, M% accepted".
    pub summary: String,
}

/// What changed for the people who completed in the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcomes {
    pub completers: i64,
    /// Completers with a baseline and follow-up loneliness score (UCLA-3, else De Jong
    /// Gierveld), and how many of them improved.
    pub loneliness: Improvement,
    /// The same for wellbeing (SWEMWBS, else WEMWBS).
    pub wellbeing: Improvement,
    pub instruments: Vec<InstrumentChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Improvement {
    pub measured: i64,
    pub improved: i64,
    pub improved_percent: Option<f64>,
}

/// Follow-up minus baseline for one instrument, over completers with both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstrumentChange {
    pub instrument: String,
    pub name: String,
    pub higher_is_better: bool,
    pub pairs: i64,
    pub improved: i64,
    pub unchanged: i64,
    pub worse: i64,
    pub mean_baseline: Option<f64>,
    pub mean_follow_up: Option<f64>,
    pub change: Option<MeanWithInterval>,
    /// How many people had each score at baseline and at follow-up, lowest score
    /// first (scores nobody had are left out). Counts, never a person's own pair: a
    /// list of each person's scores in matching order would let anyone who knows one
    /// person's baseline read their follow-up.
    pub distribution: Vec<ScoreCount>,
}

/// People at one score of an instrument, before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScoreCount {
    pub score: i64,
    pub baseline: i64,
    pub follow_up: i64,
}

/// Counts per score of baseline and follow-up totals.
fn distribution(pairs: &[(i64, i64)]) -> Vec<ScoreCount> {
    let mut counts: BTreeMap<i64, ScoreCount> = BTreeMap::new();
    for (baseline, follow_up) in pairs {
        counts
            .entry(*baseline)
            .or_insert(ScoreCount {
                score: *baseline,
                baseline: 0,
                follow_up: 0,
            })
            .baseline += 1;
        counts
            .entry(*follow_up)
            .or_insert(ScoreCount {
                score: *follow_up,
                baseline: 0,
                follow_up: 0,
            })
            .follow_up += 1;
    }
    counts.into_values().collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Activities {
    /// Attendances recorded in the period.
    pub attended: i64,
    /// People with at least one.
    pub people: i64,
    /// Distinct groups attended (activities of kind `group`).
    pub distinct_groups: i64,
}

/// Consent to share outcomes for evaluation, among referrals a provider accepted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Consent {
    pub accepted_referrals: i64,
    pub consented: i64,
    pub consent_percent: Option<f64>,
}

/// The kind of a source id (`gp:A81001` → `gp`).
pub fn source_kind(source: &str) -> &str {
    source.split(':').next().unwrap_or(source)
}

/// A readable name for a kind of source.
pub fn source_label(kind: &str) -> &'static str {
    match kind {
        "gp" => "GP practices",
        "hospital" => "Hospital teams",
        "contact-centre" => "Council contact centre",
        "asc" => "Adult Social Care",
        "org" => "Other organisations",
        "self" => "Self-referral",
        _ => "Other",
    }
}

/// A short name for a kind of source, for chart axes.
pub fn source_short(kind: &str) -> &'static str {
    match kind {
        "gp" => "GP",
        "hospital" => "Hospital",
        "contact-centre" => "Contact centre",
        "asc" => "ASC",
        "org" => "Other orgs",
        "self" => "Self",
        _ => "Other",
    }
}

/// Computes every referral and outcome metric for `period`.
pub async fn report(pool: &PgPool, period: Period) -> Result<ReferralReport, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let (from, to) = (period.from(), period.to());
    // Before the projector has ever run there are no referrals to count.
    if !aggregates::built(&mut connection).await? {
        return Ok(ReferralReport::empty(period));
    }

    let by_source: Vec<SourceMonth> =
        aggregates::referrals_by_source_month(&mut connection, from, to)
            .await?
            .into_iter()
            .map(|row| SourceMonth {
                month: row.month,
                source: row.source,
                referrals: row.referrals,
            })
            .collect();
    let mut by_source_total = BTreeMap::new();
    for row in &by_source {
        *by_source_total.entry(row.source.clone()).or_insert(0) += row.referrals;
    }
    let referrals = by_source.iter().map(|row| row.referrals).sum();

    let contact_days = aggregates::days_to_first_contact(&mut connection, from, to).await?;
    let first_contact = FirstContact {
        contacted: contact_days.len() as i64,
        median_days: stats::median(&contact_days).map(|days| stats::round(days, 1)),
        mean_days: stats::mean_with_interval(&contact_days).map(|mean| stats::round(mean.mean, 1)),
    };

    let providers = aggregates::provider_offers(&mut connection, from, to)
        .await?
        .into_iter()
        .map(provider_response)
        .collect();
    let completions = aggregates::completions(&mut connection, from, to).await?;
    let pairs = aggregates::outcome_pairs(&mut connection, from, to).await?;
    let outcomes = outcomes(&pairs, completions);
    let activities = aggregates::activity_totals(&mut connection, period.start, period.end).await?;
    let (accepted_referrals, consented) =
        aggregates::consent_counts(&mut connection, from, to).await?;

    Ok(ReferralReport {
        period,
        referrals,
        by_source,
        by_source_total,
        first_contact,
        providers,
        completions,
        outcomes,
        activities: Activities {
            attended: activities.attended,
            people: activities.people,
            distinct_groups: activities.distinct_groups,
        },
        consent: Consent {
            accepted_referrals,
            consented,
            consent_percent: stats::percent(consented, accepted_referrals),
        },
    })
}

fn provider_response(offers: ProviderOffers) -> ProviderResponse {
    let acceptance_percent = stats::percent(
        offers.accepted,
        offers.accepted + offers.rejected + offers.unanswered,
    );
    let median_days_to_accept = offers.median_days.map(|days| stats::round(days, 1));
    let summary = match (median_days_to_accept, acceptance_percent) {
        (Some(days), Some(percent)) => {
            format!("usually replies in {days} days, {percent}% accepted")
        }
        (None, Some(percent)) => format!("{percent}% accepted"),
        _ => "no answers yet".to_owned(),
    };
    ProviderResponse {
        provider_id: offers.provider_id,
        offered: offers.offered,
        accepted: offers.accepted,
        rejected: offers.rejected,
        unanswered: offers.unanswered,
        awaiting: offers.awaiting,
        acceptance_percent,
        median_days_to_accept,
        summary,
    }
}

fn outcomes(pairs: &[OutcomePair], completers: i64) -> Outcomes {
    let improved =
        |instrument: Instrument, baseline: i64, follow_up: i64| match instrument.direction() {
            Direction::HigherIsBetter => follow_up > baseline,
            Direction::LowerIsBetter => follow_up < baseline,
        };
    let mut instruments = Vec::new();
    for instrument in Instrument::ALL {
        let of_this: Vec<(i64, i64)> = pairs
            .iter()
            .filter(|pair| pair.instrument == instrument.code())
            .map(|pair| (pair.baseline, pair.follow_up))
            .collect();
        if of_this.is_empty() {
            continue;
        }
        let changes: Vec<f64> = of_this
            .iter()
            .map(|(baseline, follow_up)| (follow_up - baseline) as f64)
            .collect();
        let better = of_this
            .iter()
            .filter(|(baseline, follow_up)| improved(instrument, *baseline, *follow_up))
            .count() as i64;
        let unchanged = of_this.iter().filter(|(b, f)| b == f).count() as i64;
        let mean = |values: Vec<f64>| {
            stats::mean_with_interval(&values).map(|mean| stats::round(mean.mean, 2))
        };
        instruments.push(InstrumentChange {
            instrument: instrument.code().to_owned(),
            name: instrument.display().to_owned(),
            higher_is_better: instrument.direction() == Direction::HigherIsBetter,
            pairs: of_this.len() as i64,
            improved: better,
            unchanged,
            worse: of_this.len() as i64 - better - unchanged,
            mean_baseline: mean(of_this.iter().map(|(b, _)| *b as f64).collect()),
            mean_follow_up: mean(of_this.iter().map(|(_, f)| *f as f64).collect()),
            change: stats::mean_with_interval(&changes),
            distribution: distribution(&of_this),
        });
    }

    // Per person: the first instrument of each family they were measured with.
    let family = |order: &[Instrument]| {
        let mut measured = 0i64;
        let mut better = 0i64;
        let mut people: Vec<&uuid::Uuid> = pairs.iter().map(|pair| &pair.referral_id).collect();
        people.dedup();
        for person in people {
            let first = order.iter().find_map(|instrument| {
                pairs
                    .iter()
                    .find(|pair| {
                        &pair.referral_id == person && pair.instrument == instrument.code()
                    })
                    .map(|pair| (*instrument, pair.baseline, pair.follow_up))
            });
            if let Some((instrument, baseline, follow_up)) = first {
                measured += 1;
                if improved(instrument, baseline, follow_up) {
                    better += 1;
                }
            }
        }
        Improvement {
            measured,
            improved: better,
            improved_percent: stats::percent(better, measured),
        }
    };
    Outcomes {
        completers,
        loneliness: family(&[Instrument::Ucla3, Instrument::Djg6]),
        wellbeing: family(&[Instrument::Swemwbs, Instrument::Wemwbs]),
        instruments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_grouped_by_kind() {
        assert_eq!(source_kind("gp:A81001"), "gp");
        assert_eq!(source_kind("org:townley-age-concern"), "org");
        assert_eq!(source_kind("self"), "self");
        assert_eq!(source_label("contact-centre"), "Council contact centre");
    }

    #[test]
    fn a_period_runs_from_the_start_of_its_first_day_to_the_end_of_its_last() {
        let period = Period {
            start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            end: NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
        };
        assert_eq!(period.from().to_rfc3339(), "2026-03-01T00:00:00+00:00");
        // British Summer Time began on 29 March 2026.
        assert_eq!(period.to().to_rfc3339(), "2026-03-31T23:00:00+00:00");
    }

    fn pair(person: u128, instrument: Instrument, baseline: i64, follow_up: i64) -> OutcomePair {
        OutcomePair {
            referral_id: uuid::Uuid::from_u128(person),
            instrument: instrument.code().to_owned(),
            baseline,
            follow_up,
        }
    }

    #[test]
    fn outcomes_carry_counts_per_score_and_no_persons_own_scores() {
        let pairs = [
            pair(1, Instrument::Ucla3, 8, 5),
            pair(2, Instrument::Ucla3, 6, 5),
            pair(3, Instrument::Ucla3, 8, 8),
        ];
        let outcomes = outcomes(&pairs, 3);
        let ucla = &outcomes.instruments[0];
        assert_eq!(
            ucla.distribution,
            [
                ScoreCount {
                    score: 5,
                    baseline: 0,
                    follow_up: 2
                },
                ScoreCount {
                    score: 6,
                    baseline: 1,
                    follow_up: 0
                },
                ScoreCount {
                    score: 8,
                    baseline: 2,
                    follow_up: 1
                },
            ]
        );
        // Nothing in the published JSON is a list of scores in people's order.
        let json = serde_json::to_value(&outcomes).unwrap();
        let text = json.to_string();
        assert!(
            !text.contains("baseline_scores") && !text.contains("follow_up_scores"),
            "{text}"
        );
        for field in json["instruments"][0].as_object().unwrap().values() {
            if let Some(items) = field.as_array() {
                assert!(items.iter().all(|item| item.is_object()), "{field}");
            }
        }
    }
}

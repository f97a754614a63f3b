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
use crate::disclosure::{Cell, Count, Disclosure, DisclosureNote, Sheet};
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

/// Every referral and outcome metric for a period, as published: every count has
/// been through small-number suppression ([`crate::disclosure`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferralReport {
    pub period: Period,
    pub referrals: Count,
    pub by_source: Vec<SourceMonth>,
    /// Totals per kind of source over the period.
    pub by_source_total: BTreeMap<String, Count>,
    pub first_contact: FirstContact,
    pub providers: Vec<ProviderResponse>,
    /// Every provider's offers together (`provider_id` "all"; no median).
    pub all_providers: Option<ProviderResponse>,
    pub completions: Count,
    pub outcomes: Outcomes,
    pub activities: Activities,
    pub consent: Consent,
    pub disclosure: DisclosureNote,
}

/// Referrals received in a month from one kind of source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceMonth {
    /// `YYYY-MM`.
    pub month: String,
    /// `gp`, `hospital`, `contact-centre`, `asc`, `org` (other organisations), `self`.
    pub source: String,
    pub referrals: Count,
}

/// Time from a referral reaching linkwork to the provider's first contact with the
/// person, for referrals received in the period that have been contacted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstContact {
    pub contacted: Count,
    pub median_days: Option<f64>,
    pub mean_days: Option<f64>,
}

/// How one provider answered the referrals offered to it in the period (one offer per
/// routing attempt).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderResponse {
    pub provider_id: String,
    pub offered: Count,
    pub accepted: Count,
    pub rejected: Count,
    /// Re-routed or closed without an answer (the acceptance deadline passed).
    pub unanswered: Count,
    /// Still waiting for an answer.
    pub awaiting: Count,
    /// Accepted, rejected and unanswered: the offers that have an outcome.
    pub answered: Count,
    /// `accepted` of the answered-or-expired offers, percent.
    pub acceptance_percent: Option<f64>,
    pub median_days_to_accept: Option<f64>,
    /// "usually replies in N days, M% accepted".
    pub summary: String,
}

/// What changed for the people who completed in the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcomes {
    pub completers: Count,
    /// Completers with a baseline and follow-up loneliness score (UCLA-3, else De Jong
    /// Gierveld), and how many of them improved.
    pub loneliness: Improvement,
    /// The same for wellbeing (SWEMWBS, else WEMWBS).
    pub wellbeing: Improvement,
    pub instruments: Vec<InstrumentChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Improvement {
    pub measured: Count,
    pub improved: Count,
    pub improved_percent: Option<f64>,
}

/// Follow-up minus baseline for one instrument, over completers with both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstrumentChange {
    pub instrument: String,
    pub name: String,
    pub higher_is_better: bool,
    pub pairs: Count,
    pub improved: Count,
    pub unchanged: Count,
    pub worse: Count,
    pub mean_baseline: Option<f64>,
    pub mean_follow_up: Option<f64>,
    pub change: Option<MeanWithInterval>,
    /// How many people scored in each band of the instrument's range at baseline and
    /// at follow-up, lowest band first, every band listed. Counts, never a person's
    /// own pair: a list of each person's scores in matching order would let anyone who
    /// knows one person's baseline read their follow-up.
    pub distribution: Vec<ScoreBand>,
}

/// People scoring within one band of an instrument (both ends included), before and
/// after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScoreBand {
    pub low: i64,
    pub high: i64,
    pub baseline: Count,
    pub follow_up: Count,
}

/// An instrument's range cut into at most five bands of equal width (the last may be
/// narrower): UCLA-3's 3–9 as 3–4, 5–6, 7–8, 9–9.
pub fn bands(instrument: Instrument) -> Vec<(i64, i64)> {
    let (low, high) = instrument.range();
    let (low, high) = (i64::from(low), i64::from(high));
    let width = (high - low + 1 + 4) / 5;
    (low..=high)
        .step_by(width.max(1) as usize)
        .map(|start| (start, (start + width - 1).min(high)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Activities {
    /// Attendances recorded in the period (suppressed with `people`).
    pub attended: Count,
    /// People with at least one.
    pub people: Count,
    /// Distinct groups attended (activities of kind `group`; suppressed with `people`).
    pub distinct_groups: Count,
}

/// Consent to share outcomes for evaluation, among referrals a provider accepted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Consent {
    pub accepted_referrals: Count,
    pub consented: Count,
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

/// The figures of a period before disclosure control, as the read models give them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// (`YYYY-MM`, kind of source, referrals received).
    pub by_source: Vec<(String, String, i64)>,
    /// Days to first contact, one per contacted referral.
    pub contact_days: Vec<f64>,
    pub providers: Vec<ProviderOffers>,
    pub completions: i64,
    pub pairs: Vec<OutcomePair>,
    pub attended: i64,
    pub people_attending: i64,
    pub distinct_groups: i64,
    pub accepted_referrals: i64,
    pub consented: i64,
}

/// Computes every referral and outcome metric for `period`, suppressed as
/// `disclosure` says.
pub async fn report(
    pool: &PgPool,
    period: Period,
    disclosure: Disclosure,
) -> Result<ReferralReport, sqlx::Error> {
    Ok(publish(period, &figures(pool, period).await?, disclosure))
}

/// The figures of `period` from the read models.
pub async fn figures(pool: &PgPool, period: Period) -> Result<Figures, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let (from, to) = (period.from(), period.to());
    // Before the projector has ever run there are no referrals to count.
    if !aggregates::built(&mut connection).await? {
        return Ok(Figures::default());
    }
    let by_source = aggregates::referrals_by_source_month(&mut connection, from, to)
        .await?
        .into_iter()
        .map(|row| (row.month, row.source, row.referrals))
        .collect();
    let contact_days = aggregates::days_to_first_contact(&mut connection, from, to).await?;
    let providers = aggregates::provider_offers(&mut connection, from, to).await?;
    let completions = aggregates::completions(&mut connection, from, to).await?;
    let pairs = aggregates::outcome_pairs(&mut connection, from, to).await?;
    let activities = aggregates::activity_totals(&mut connection, period.start, period.end).await?;
    let (accepted_referrals, consented) =
        aggregates::consent_counts(&mut connection, from, to).await?;
    Ok(Figures {
        by_source,
        contact_days,
        providers,
        completions,
        pairs,
        attended: activities.attended,
        people_attending: activities.people,
        distinct_groups: activities.distinct_groups,
        accepted_referrals,
        consented,
    })
}

/// The published report: every count through `disclosure`'s suppression, and every
/// figure worked out from a suppressed count left out.
pub fn publish(period: Period, figures: &Figures, disclosure: Disclosure) -> ReferralReport {
    let mut sheet = Sheet::new(disclosure);

    // Referrals: months within kinds within the total.
    let months: Vec<Cell> = figures
        .by_source
        .iter()
        .map(|(_, _, referrals)| sheet.count(*referrals))
        .collect();
    let mut kinds: BTreeMap<&str, (i64, Vec<Cell>)> = BTreeMap::new();
    for ((_, source, referrals), cell) in figures.by_source.iter().zip(&months) {
        let kind = kinds.entry(source.as_str()).or_default();
        kind.0 += referrals;
        kind.1.push(*cell);
    }
    let kind_cells: BTreeMap<&str, Cell> = kinds
        .iter()
        .map(|(kind, (total, parts))| {
            let cell = sheet.count(*total);
            let mut relation = vec![cell];
            relation.extend(parts);
            sheet.relate(&relation);
            (*kind, cell)
        })
        .collect();
    let referrals = sheet.count(kinds.values().map(|(total, _)| total).sum());
    let mut relation = vec![referrals];
    relation.extend(kind_cells.values());
    sheet.relate(&relation);

    let contacted = sheet.count(figures.contact_days.len() as i64);

    // Each provider's offers: accepted, rejected, unanswered (together, answered) and
    // awaiting.
    let all = ProviderOffers {
        provider_id: "all".to_owned(),
        offered: figures.providers.iter().map(|p| p.offered).sum(),
        accepted: figures.providers.iter().map(|p| p.accepted).sum(),
        rejected: figures.providers.iter().map(|p| p.rejected).sum(),
        unanswered: figures.providers.iter().map(|p| p.unanswered).sum(),
        awaiting: figures.providers.iter().map(|p| p.awaiting).sum(),
        median_days: None,
    };
    let providers: Vec<[Cell; 6]> = figures
        .providers
        .iter()
        .chain([&all])
        .map(|offers| {
            let answered = offers.accepted + offers.rejected + offers.unanswered;
            let cells = [
                sheet.count(offers.offered),
                sheet.count(offers.accepted),
                sheet.count(offers.rejected),
                sheet.count(offers.unanswered),
                sheet.count(offers.awaiting),
                sheet.count(answered),
            ];
            let [offered, accepted, rejected, unanswered, awaiting, answered] = cells;
            sheet.relate(&[offered, accepted, rejected, unanswered, awaiting]);
            sheet.relate(&[answered, accepted, rejected, unanswered]);
            sheet.relate(&[offered, answered, awaiting]);
            cells
        })
        .collect();
    // Each column of the providers' table adds up to the all-providers row (the last).
    if let Some((total, each)) = providers.split_last() {
        for column in 0..6 {
            let mut relation = vec![total[column]];
            relation.extend(each.iter().map(|cells| cells[column]));
            sheet.relate(&relation);
        }
    }

    let completions = sheet.count(figures.completions);
    let outcome = outcome_figures(&figures.pairs);
    let family = |sheet: &mut Sheet, (measured, improved): (i64, i64)| {
        let cells = (sheet.count(measured), sheet.count(improved));
        sheet.part_of(cells.0, &[cells.1]);
        sheet.part_of(completions, &[cells.0]);
        cells
    };
    let loneliness = family(&mut sheet, outcome.loneliness);
    let wellbeing = family(&mut sheet, outcome.wellbeing);
    let instruments: Vec<InstrumentCells<'_>> = outcome
        .instruments
        .iter()
        .map(|instrument| {
            let pairs = sheet.count(instrument.pairs.len() as i64);
            let cells = [
                pairs,
                sheet.count(instrument.improved),
                sheet.count(instrument.unchanged),
                sheet.count(instrument.worse),
            ];
            sheet.relate(&cells);
            let bands: Vec<(Cell, Cell)> = instrument
                .bands
                .iter()
                .map(|(_, _, baseline, follow_up)| {
                    (sheet.count(*baseline), sheet.count(*follow_up))
                })
                .collect();
            let mut before = vec![pairs];
            before.extend(bands.iter().map(|band| band.0));
            sheet.relate(&before);
            let mut after = vec![pairs];
            after.extend(bands.iter().map(|band| band.1));
            sheet.relate(&after);
            (instrument, cells, bands)
        })
        .collect();

    let people_attending = sheet.count(figures.people_attending);
    let accepted_referrals = sheet.count(figures.accepted_referrals);
    let consented = sheet.count(figures.consented);
    sheet.part_of(accepted_referrals, &[consented]);
    sheet.solve();

    let by_source = figures
        .by_source
        .iter()
        .zip(&months)
        .map(|((month, source, _), cell)| SourceMonth {
            month: month.clone(),
            source: source.clone(),
            referrals: sheet.get(*cell),
        })
        .collect();
    let by_source_total = kind_cells
        .iter()
        .map(|(kind, cell)| ((*kind).to_owned(), sheet.get(*cell)))
        .collect();
    let contact_shown = sheet.shown(&[contacted]);
    let first_contact = FirstContact {
        contacted: sheet.get(contacted),
        median_days: stats::median(&figures.contact_days)
            .filter(|_| contact_shown)
            .map(|days| stats::round(days, 1)),
        mean_days: stats::mean_with_interval(&figures.contact_days)
            .filter(|_| contact_shown)
            .map(|mean| stats::round(mean.mean, 1)),
    };
    let mut providers: Vec<ProviderResponse> = figures
        .providers
        .iter()
        .chain([&all])
        .zip(&providers)
        .map(|(offers, cells)| provider_response(&mut sheet, offers, cells))
        .collect();
    let all_providers = providers.pop();
    let improvement = |sheet: &mut Sheet, (measured, improved): (Cell, Cell)| Improvement {
        measured: sheet.get(measured),
        improved: sheet.get(improved),
        improved_percent: sheet.percent(improved, measured),
    };
    let outcomes = Outcomes {
        completers: sheet.get(completions),
        loneliness: improvement(&mut sheet, loneliness),
        wellbeing: improvement(&mut sheet, wellbeing),
        instruments: instruments
            .into_iter()
            .map(|(instrument, cells, bands)| {
                instrument_change(&mut sheet, instrument, cells, &bands)
            })
            .collect(),
    };
    let attending_shown = sheet.shown(&[people_attending]);
    let with_people = |value: i64| {
        if attending_shown {
            Count::shown(value)
        } else {
            Count::SUPPRESSED
        }
    };
    let activities = Activities {
        attended: with_people(figures.attended),
        people: sheet.get(people_attending),
        distinct_groups: with_people(figures.distinct_groups),
    };
    let consent = Consent {
        accepted_referrals: sheet.get(accepted_referrals),
        consented: sheet.get(consented),
        consent_percent: sheet.percent(consented, accepted_referrals),
    };
    ReferralReport {
        period,
        referrals: sheet.get(referrals),
        by_source,
        by_source_total,
        first_contact,
        providers,
        all_providers,
        completions: sheet.get(completions),
        outcomes,
        activities,
        consent,
        disclosure: sheet.note(),
    }
}

fn provider_response(
    sheet: &mut Sheet,
    offers: &ProviderOffers,
    cells: &[Cell; 6],
) -> ProviderResponse {
    let [offered, accepted, rejected, unanswered, awaiting, answered] = *cells;
    let acceptance_percent = sheet.percent(accepted, answered);
    let median_days_to_accept = offers
        .median_days
        .filter(|_| sheet.shown(&[accepted]))
        .map(|days| stats::round(days, 1));
    let summary = match (median_days_to_accept, acceptance_percent) {
        (Some(days), Some(percent)) => {
            format!("usually replies in {days} days, {percent}% accepted")
        }
        (None, Some(percent)) => format!("{percent}% accepted"),
        _ if sheet.get(answered).value() == Some(0) => "no answers yet".to_owned(),
        _ => "too few answers to publish".to_owned(),
    };
    ProviderResponse {
        provider_id: offers.provider_id.clone(),
        offered: sheet.get(offered),
        accepted: sheet.get(accepted),
        rejected: sheet.get(rejected),
        unanswered: sheet.get(unanswered),
        awaiting: sheet.get(awaiting),
        answered: sheet.get(answered),
        acceptance_percent,
        median_days_to_accept,
        summary,
    }
}

/// An instrument's figures and their cells: pairs, improved, unchanged, worse, then
/// each band's (baseline, follow-up).
type InstrumentCells<'a> = (&'a InstrumentFigures, [Cell; 4], Vec<(Cell, Cell)>);

/// One instrument's pairs, counted before disclosure control.
#[derive(Debug)]
struct InstrumentFigures {
    instrument: Instrument,
    pairs: Vec<(i64, i64)>,
    improved: i64,
    unchanged: i64,
    worse: i64,
    /// (low, high, people at baseline, people at follow-up) per band.
    bands: Vec<(i64, i64, i64, i64)>,
}

#[derive(Debug)]
struct OutcomeFigures {
    /// (measured, improved) for loneliness and for wellbeing.
    loneliness: (i64, i64),
    wellbeing: (i64, i64),
    instruments: Vec<InstrumentFigures>,
}

fn improved(instrument: Instrument, baseline: i64, follow_up: i64) -> bool {
    match instrument.direction() {
        Direction::HigherIsBetter => follow_up > baseline,
        Direction::LowerIsBetter => follow_up < baseline,
    }
}

fn outcome_figures(pairs: &[OutcomePair]) -> OutcomeFigures {
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
        let better = of_this
            .iter()
            .filter(|(baseline, follow_up)| improved(instrument, *baseline, *follow_up))
            .count() as i64;
        let unchanged = of_this.iter().filter(|(b, f)| b == f).count() as i64;
        let within = |score: i64, (low, high): (i64, i64)| score >= low && score <= high;
        let bands = bands(instrument)
            .into_iter()
            .map(|band| {
                let count = |pick: fn(&(i64, i64)) -> i64| {
                    of_this
                        .iter()
                        .filter(|pair| within(pick(pair), band))
                        .count() as i64
                };
                (band.0, band.1, count(|pair| pair.0), count(|pair| pair.1))
            })
            .collect();
        instruments.push(InstrumentFigures {
            instrument,
            improved: better,
            unchanged,
            worse: of_this.len() as i64 - better - unchanged,
            pairs: of_this,
            bands,
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
        (measured, better)
    };
    OutcomeFigures {
        loneliness: family(&[Instrument::Ucla3, Instrument::Djg6]),
        wellbeing: family(&[Instrument::Swemwbs, Instrument::Wemwbs]),
        instruments,
    }
}

fn instrument_change(
    sheet: &mut Sheet,
    figures: &InstrumentFigures,
    [pairs, improved, unchanged, worse]: [Cell; 4],
    bands: &[(Cell, Cell)],
) -> InstrumentChange {
    let instrument = figures.instrument;
    // A mean of suppressed pairs would be one of a few people's scores.
    let shown = sheet.shown(&[pairs]);
    let mean = |values: Vec<f64>| {
        stats::mean_with_interval(&values)
            .filter(|_| shown)
            .map(|mean| stats::round(mean.mean, 2))
    };
    let changes: Vec<f64> = figures
        .pairs
        .iter()
        .map(|(baseline, follow_up)| (follow_up - baseline) as f64)
        .collect();
    InstrumentChange {
        instrument: instrument.code().to_owned(),
        name: instrument.display().to_owned(),
        higher_is_better: instrument.direction() == Direction::HigherIsBetter,
        pairs: sheet.get(pairs),
        improved: sheet.get(improved),
        unchanged: sheet.get(unchanged),
        worse: sheet.get(worse),
        mean_baseline: mean(figures.pairs.iter().map(|(b, _)| *b as f64).collect()),
        mean_follow_up: mean(figures.pairs.iter().map(|(_, f)| *f as f64).collect()),
        change: stats::mean_with_interval(&changes).filter(|_| shown),
        distribution: figures
            .bands
            .iter()
            .zip(bands)
            .map(|((low, high, _, _), (baseline, follow_up))| ScoreBand {
                low: *low,
                high: *high,
                baseline: sheet.get(*baseline),
                follow_up: sheet.get(*follow_up),
            })
            .collect(),
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

    fn figures(pairs: Vec<OutcomePair>) -> Figures {
        let people = pairs.len() as i64;
        Figures {
            completions: people,
            pairs,
            ..Figures::default()
        }
    }

    fn march() -> Period {
        Period {
            start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            end: NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
        }
    }

    #[test]
    fn scores_are_banded_over_the_instruments_range() {
        assert_eq!(bands(Instrument::Ucla3), [(3, 4), (5, 6), (7, 8), (9, 9)]);
        assert_eq!(
            bands(Instrument::Swemwbs),
            [(7, 12), (13, 18), (19, 24), (25, 30), (31, 35)]
        );
        assert_eq!(bands(Instrument::Djg6), [(0, 1), (2, 3), (4, 5), (6, 6)]);
    }

    #[test]
    fn outcomes_carry_counts_per_band_and_no_persons_own_scores() {
        let pairs = vec![
            pair(1, Instrument::Ucla3, 8, 5),
            pair(2, Instrument::Ucla3, 6, 5),
            pair(3, Instrument::Ucla3, 8, 8),
        ];
        let report = publish(march(), &figures(pairs), Disclosure::none());
        let ucla = &report.outcomes.instruments[0];
        let band = |low, high, baseline, follow_up| ScoreBand {
            low,
            high,
            baseline: Count::shown(baseline),
            follow_up: Count::shown(follow_up),
        };
        assert_eq!(
            ucla.distribution,
            [
                band(3, 4, 0, 0),
                band(5, 6, 1, 2),
                band(7, 8, 2, 1),
                band(9, 9, 0, 0)
            ]
        );
        // Nothing in the published JSON is a list of scores in people's order.
        let json = serde_json::to_value(&report.outcomes).unwrap();
        for field in json["instruments"][0].as_object().unwrap().values() {
            if let Some(items) = field.as_array() {
                assert!(items.iter().all(|item| item.is_object()), "{field}");
            }
        }
    }

    /// Every count in a report, with where it is.
    fn counts(json: &serde_json::Value, path: &str, out: &mut Vec<(String, serde_json::Value)>) {
        match json {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    counts(value, &format!("{path}.{key}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, value) in items.iter().enumerate() {
                    counts(value, &format!("{path}[{index}]"), out);
                }
            }
            other => out.push((path.to_owned(), other.clone())),
        }
    }

    /// A period holding `people` people (1 to 4), referred by GPs and one hospital,
    /// contacted, accepted, completed and measured.
    fn few(people: u128) -> Figures {
        let pairs: Vec<OutcomePair> = (0..people)
            .flat_map(|person| {
                [
                    pair(person, Instrument::Ucla3, 8, 4 + person as i64),
                    pair(person, Instrument::Swemwbs, 20, 24),
                ]
            })
            .collect();
        Figures {
            by_source: vec![
                ("2026-03".into(), "gp".into(), people as i64 - 1),
                ("2026-03".into(), "hospital".into(), 1),
            ],
            contact_days: (0..people).map(|day| day as f64 + 1.0).collect(),
            providers: vec![ProviderOffers {
                provider_id: "connectors".into(),
                offered: people as i64,
                accepted: people as i64,
                rejected: 0,
                unanswered: 0,
                awaiting: 0,
                median_days: Some(2.0),
            }],
            completions: people as i64,
            pairs,
            attended: 3 * people as i64,
            people_attending: people as i64,
            distinct_groups: 2,
            accepted_referrals: people as i64,
            consented: people as i64,
        }
    }

    #[test]
    fn a_period_of_one_to_four_people_publishes_no_count_of_them_and_nothing_derived() {
        for people in 1..=4 {
            let report = publish(march(), &few(people), Disclosure::default());
            let json = serde_json::to_value(&report).unwrap();
            let mut cells = Vec::new();
            counts(&json, "", &mut cells);
            for (path, value) in &cells {
                if path.starts_with(".disclosure") || path.starts_with(".period") {
                    continue;
                }
                // Zero is shown (nobody rejected); every other number is gone, and
                // with it every percentage, mean, median and interval.
                if let Some(number) = value.as_f64() {
                    assert!(
                        number == 0.0 || path.ends_with(".low") || path.ends_with(".high"),
                        "{people} people: {path} = {value}"
                    );
                }
            }
            assert!(report.disclosure.suppressed_counts > 0);
            assert_eq!(report.referrals, Count::SUPPRESSED);
            assert_eq!(report.outcomes.loneliness.improved_percent, None);
            assert_eq!(report.first_contact.median_days, None);
            assert_eq!(report.providers[0].summary, "too few answers to publish");
        }
    }

    #[test]
    fn a_small_source_beside_large_ones_cannot_be_recovered_from_the_total() {
        let figures = Figures {
            by_source: vec![
                ("2026-03".into(), "gp".into(), 40),
                ("2026-03".into(), "hospital".into(), 12),
                ("2026-03".into(), "self".into(), 2),
            ],
            ..Figures::default()
        };
        let report = publish(march(), &figures, Disclosure::default());
        assert_eq!(report.referrals, Count::shown(54));
        assert_eq!(report.by_source_total["gp"], Count::shown(40));
        assert_eq!(report.by_source_total["self"], Count::SUPPRESSED);
        assert_eq!(
            report.by_source_total["hospital"],
            Count::SUPPRESSED,
            "54 - 40 would give the self-referrals away"
        );
        let shown: i64 = report
            .by_source_total
            .values()
            .filter_map(|count| count.value())
            .sum();
        assert_ne!(shown, 54 - 2);
        // The months under a kind follow the kind.
        assert!(report
            .by_source
            .iter()
            .all(|month| month.source == "gp" || month.referrals.is_suppressed()));
    }

    #[test]
    fn the_same_figures_with_suppression_off_are_the_worked_numbers() {
        let report = publish(march(), &few(3), Disclosure::none());
        assert_eq!(report.referrals, Count::shown(3));
        assert_eq!(report.first_contact.median_days, Some(2.0));
        assert_eq!(report.outcomes.loneliness.improved_percent, Some(100.0));
        assert_eq!(report.activities.attended, Count::shown(9));
        assert_eq!(report.disclosure.suppressed_counts, 0);
    }
}

//! The routing decision: pure, deterministic and explained.
//!
//! 1. **Eligibility.** Each provider of the directory is checked against the person:
//!    active, not tried before for this referral, serves their postcode, their age,
//!    at least one of their needs, their language, and (for self-referrals) takes
//!    self-referrals. Every rule a provider fails is recorded in words.
//! 2. **Needs first.** Eligible "need" services that handle one of the person's needs
//!    (money advice for money worries, talking therapy for low mood) come before
//!    "want" activities: the seed evaluations found people could not make use of a
//!    group while a pressing need went unmet. When every such service is full, the
//!    activities are next.
//! 3. **Capacity.** A provider whose active caseload has reached its capacity is
//!    passed over.
//! 4. **Least loaded** (active caseload over capacity, compared exactly), ties
//!    broken by provider id.
//!
//! The same directory, person and caseloads always give the same decision.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};
use linkwork_domain::event::{CandidateAssessment, ReferralReceived};
use linkwork_domain::{Need, Postcode, ProviderId, SourceKind};

use crate::directory::{
    need_mask, postcode_sector, primary_language, CompiledDirectory, CompiledProvider, ProviderKind,
};

/// What the rules look at, read off a referral.
#[derive(Debug, Clone)]
pub struct Person<'a> {
    pub source: SourceKind,
    pub needs: &'a [Need],
    pub age: Option<u32>,
    pub postcode: Option<&'a Postcode>,
    /// Preferred language, primary subtag; `None` when not given.
    pub language: Option<String>,
}

impl<'a> Person<'a> {
    /// The person of a referral, their age taken on `on`.
    pub fn of(received: &'a ReferralReceived, on: NaiveDate) -> Self {
        let subject = &received.subject;
        Self {
            source: received.source.kind(),
            needs: &received.needs,
            age: subject.birth_date.and_then(|born| age_on(born, on)),
            postcode: subject.postcode.as_ref(),
            language: subject.language.as_deref().map(primary_language),
        }
    }
}

/// Whole years from `born` to `on`; `None` when born after `on`.
pub fn age_on(born: NaiveDate, on: NaiveDate) -> Option<u32> {
    let mut years = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Route {
        provider: ProviderId,
        /// Which rule picked it, in words.
        rule: String,
        candidates: Vec<CandidateAssessment>,
    },
    Unroutable {
        reasons: Vec<String>,
        candidates: Vec<CandidateAssessment>,
    },
}

impl Decision {
    pub fn candidates(&self) -> &[CandidateAssessment] {
        match self {
            Decision::Route { candidates, .. } | Decision::Unroutable { candidates, .. } => {
                candidates
            }
        }
    }
}

/// Decides where the referral of `person` goes. `tried` lists providers that had it
/// already; `active` gives each provider's active caseload (missing means none).
pub fn decide(
    directory: &CompiledDirectory,
    person: &Person<'_>,
    tried: &[ProviderId],
    active: &HashMap<ProviderId, u32>,
) -> Decision {
    let person_needs = need_mask(person.needs);
    let district = person.postcode.map(Postcode::district);
    let sector = person.postcode.map(postcode_sector);
    let mut candidates: Vec<CandidateAssessment> = Vec::with_capacity(directory.providers.len());
    // Indices into `candidates` of eligible providers, by tier.
    let mut needs_first: Vec<usize> = Vec::new();
    let mut others: Vec<usize> = Vec::new();
    let reasons = PersonReasons::of(person, district);
    for compiled in &directory.providers {
        let excluded_because = eligibility(
            compiled,
            person,
            person_needs,
            district,
            sector.as_deref(),
            tried,
            &reasons,
        );
        let eligible = excluded_because.is_empty();
        if eligible {
            let index = candidates.len();
            if compiled.provider.kind == ProviderKind::Need && compiled.needs & person_needs != 0 {
                needs_first.push(index);
            } else {
                others.push(index);
            }
        }
        candidates.push(CandidateAssessment {
            provider_id: compiled.provider.id.clone(),
            eligible,
            excluded_because,
        });
    }
    if needs_first.is_empty() && others.is_empty() {
        return Decision::Unroutable {
            reasons: vec![format!(
                "no provider is eligible: {} in directory {} considered, each excluded for the reasons given",
                candidates.len(),
                directory.label
            )],
            candidates,
        };
    }

    let load = |index: usize| -> (u32, u32) {
        let compiled = &directory.providers[index];
        let active = active
            .get(&compiled.provider.id)
            .copied()
            .unwrap_or_default();
        (active, compiled.provider.capacity)
    };
    let mut chosen: Option<(usize, &'static str)> = None;
    for (tier, tier_name) in [
        (
            &needs_first,
            "needs first: a need service for the person's needs",
        ),
        (&others, "eligible"),
    ] {
        let with_room: Vec<usize> = tier
            .iter()
            .copied()
            .filter(|&index| {
                let (active, capacity) = load(index);
                active < capacity
            })
            .collect();
        for &index in tier {
            let (active, capacity) = load(index);
            if active >= capacity {
                candidates[index]
                    .excluded_because
                    .push(format!("at capacity ({active} of {capacity} active)"));
            }
        }
        if chosen.is_none() {
            if let Some(best) = with_room.iter().copied().min_by(|&a, &b| {
                compare_load(load(a), load(b))
                    .then_with(|| candidates[a].provider_id.cmp(&candidates[b].provider_id))
            }) {
                let (best_active, best_capacity) = load(best);
                for &index in &with_room {
                    if index != best {
                        let (active, capacity) = load(index);
                        let why = if compare_load((active, capacity), (best_active, best_capacity))
                            == Ordering::Equal
                        {
                            format!(
                                "as loaded ({active} of {capacity}) as {}, which comes first by id",
                                candidates[best].provider_id
                            )
                        } else {
                            format!(
                                "more loaded ({active} of {capacity} active) than {} ({best_active} of {best_capacity})",
                                candidates[best].provider_id
                            )
                        };
                        candidates[index].excluded_because.push(why);
                    }
                }
                chosen = Some((best, tier_name));
            }
        } else {
            for &index in tier {
                if candidates[index].excluded_because.is_empty() {
                    candidates[index].excluded_because.push(
                        "needs first: a need service for the person's needs had room".to_owned(),
                    );
                }
            }
        }
    }
    match chosen {
        Some((index, tier_name)) => {
            let (active, capacity) = load(index);
            Decision::Route {
                provider: candidates[index].provider_id.clone(),
                rule: format!(
                    "{tier_name}; least loaded with room ({active} of {capacity} active)"
                ),
                candidates,
            }
        }
        None => {
            let full: Vec<String> = needs_first
                .iter()
                .chain(&others)
                .map(|&index| {
                    let (active, capacity) = load(index);
                    format!("{} ({active} of {capacity})", candidates[index].provider_id)
                })
                .collect();
            Decision::Unroutable {
                reasons: vec![format!(
                    "every eligible provider is at capacity: {}",
                    full.join(", ")
                )],
                candidates,
            }
        }
    }
}

/// Compares active/capacity exactly (no floating point): a full provider of 0
/// capacity is the most loaded.
fn compare_load(
    (active_a, capacity_a): (u32, u32),
    (active_b, capacity_b): (u32, u32),
) -> Ordering {
    let left = u64::from(active_a) * u64::from(capacity_b.max(1));
    let right = u64::from(active_b) * u64::from(capacity_a.max(1));
    left.cmp(&right)
}

/// The words of the exclusions that depend on the person only, written once per
/// decision rather than once per provider excluded.
struct PersonReasons {
    area: String,
    needs: String,
    language: Option<String>,
}

impl PersonReasons {
    fn of(person: &Person<'_>, district: Option<&str>) -> Self {
        let needs: Vec<&str> = person.needs.iter().map(|need| need.code()).collect();
        Self {
            area: match district {
                // Reasons go on the log, which is kept for ever and is not sealed: they
                // name no value of the person's (district, age, language), which
                // would outlive an erasure.
                Some(_) => "does not serve the person's postcode district".to_owned(),
                None => "the referral gives no postcode to check the area against".to_owned(),
            },
            needs: format!("handles none of the person's needs ({})", needs.join(", ")),
            language: person
                .language
                .as_ref()
                .map(|_| "does not work in the person's language".to_owned()),
        }
    }
}

fn eligibility(
    compiled: &CompiledProvider,
    person: &Person<'_>,
    person_needs: u32,
    district: Option<&str>,
    sector: Option<&str>,
    tried: &[ProviderId],
    words: &PersonReasons,
) -> Vec<String> {
    let provider = &compiled.provider;
    let mut reasons = Vec::new();
    if !provider.active {
        reasons.push("not taking referrals (inactive in the directory)".to_owned());
    }
    if tried.contains(&provider.id) {
        reasons.push("has already had this referral".to_owned());
    }
    match (district, sector) {
        (Some(district), Some(sector)) => {
            if !compiled.postcodes.contains(district) && !compiled.postcodes.contains(sector) {
                reasons.push(words.area.clone());
            }
        }
        _ => reasons.push(words.area.clone()),
    }
    if !provider.ages.is_unbounded() {
        match person.age {
            Some(age) if provider.ages.contains(age) => {}
            Some(_) => reasons.push(format!(
                "serves {}; the person is outside it",
                provider.ages
            )),
            None => reasons.push(format!(
                "serves {}; the referral gives no birth date",
                provider.ages
            )),
        }
    }
    if compiled.needs & person_needs == 0 {
        reasons.push(words.needs.clone());
    }
    if let (Some(language), Some(words)) = (&person.language, &words.language) {
        if !compiled.languages.iter().any(|spoken| spoken == language) {
            reasons.push(words.clone());
        }
    }
    if person.source == SourceKind::SelfReferral && !provider.accepts_self_referrals {
        reasons.push("does not take self-referrals".to_owned());
    }
    reasons
}

#[cfg(test)]
mod tests;

//! A directory version compiled for deciding: the sets each rule checks, resolved once
//! per version instead of once per referral.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use linkwork_domain::{Need, ProviderId};

use super::*;

/// The sets the router checks, resolved once per directory version.
#[derive(Debug, Clone)]
pub struct CompiledProvider {
    pub provider: Provider,
    /// Districts and sectors served, directly or through places.
    pub postcodes: BTreeSet<String>,
    pub needs: u32,
    pub languages: Vec<String>,
}

/// A directory version ready for decisions.
#[derive(Debug, Clone)]
pub struct CompiledDirectory {
    pub version: i64,
    pub label: String,
    pub bank_holidays: BTreeSet<NaiveDate>,
    /// In id order, which is the stable tie-break.
    pub providers: Vec<CompiledProvider>,
}

impl CompiledDirectory {
    pub fn compile(stored: &StoredDirectory) -> Self {
        let document = &stored.document;
        let mut providers: Vec<CompiledProvider> = document
            .providers
            .iter()
            .map(|provider| {
                let mut postcodes = BTreeSet::new();
                for district in &provider.areas.postcode_districts {
                    postcodes.extend(normalise_area_postcode(district));
                }
                for code in provider
                    .areas
                    .local_authorities
                    .iter()
                    .chain(&provider.areas.wards)
                {
                    if let Some(place) = document.places.get(code) {
                        postcodes.extend(
                            place
                                .postcodes
                                .iter()
                                .filter_map(|postcode| normalise_area_postcode(postcode)),
                        );
                    }
                }
                CompiledProvider {
                    needs: need_mask(&provider.needs),
                    languages: provider
                        .languages
                        .iter()
                        .map(|language| primary_language(language))
                        .collect(),
                    postcodes,
                    provider: provider.clone(),
                }
            })
            .collect();
        providers.sort_by(|a, b| a.provider.id.cmp(&b.provider.id));
        Self {
            version: stored.version,
            label: stored.label(),
            bank_holidays: document.bank_holidays.iter().copied().collect(),
            providers,
        }
    }

    pub fn provider(&self, id: &ProviderId) -> Option<&CompiledProvider> {
        self.providers
            .binary_search_by(|each| each.provider.id.cmp(id))
            .ok()
            .map(|index| &self.providers[index])
    }
}

/// A bit per need, for fast overlap checks.
pub fn need_mask(needs: &[Need]) -> u32 {
    needs
        .iter()
        .fold(0, |mask, need| mask | (1 << (*need as u32)))
}

/// `pa` of `pa-IN`, lower case.
pub fn primary_language(tag: &str) -> String {
    tag.split(['-', '_'])
        .next()
        .unwrap_or(tag)
        .trim()
        .to_ascii_lowercase()
}

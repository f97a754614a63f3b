//! The provider directory: who takes which referrals, where, and how many at once.
//!
//! A directory is written in YAML (see `directory.example.yaml` at the top of the
//! repository) or imported from Open Referral UK JSON ([`oruk`]). Every change is
//! stored as a new numbered version in Postgres (`directory_versions`); the router
//! always decides with the newest version and records its label (`v<n>-<hash>`) in
//! each decision, so an auditor can see exactly which directory placed a referral.

pub mod oruk;

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use linkwork_domain::{Need, Postcode, ProviderId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The directory as written by people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryDocument {
    /// Days that are not working days besides Saturdays and Sundays (bank holidays).
    /// Acceptance deadlines count working days.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bank_holidays: Vec<NaiveDate>,
    /// Local authority and ward codes (ONS GSS codes, e.g. `E08000032`), each with
    /// the postcode districts (`BD20`) or sectors (`BD20 0`) it covers, so providers
    /// can name the areas they serve the way commissioners do.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub places: BTreeMap<String, Place>,
    pub providers: Vec<Provider>,
}

/// A local authority or ward, by the postcodes it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Postcode districts (`BD20`) or sectors (`BD20 0`).
    pub postcodes: Vec<String>,
}

/// One community provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Names its queue topic, `provider.<id>.referrals`.
    pub id: ProviderId,
    pub name: String,
    /// A "need" service (money advice, talking therapy, carers' support) or a "want"
    /// activity (groups, clubs, volunteering, befriending).
    pub kind: ProviderKind,
    pub areas: Areas,
    #[serde(default, skip_serializing_if = "AgeRange::is_unbounded")]
    pub ages: AgeRange,
    /// The needs of linkwork's taxonomy this provider handles.
    pub needs: Vec<Need>,
    /// Languages the provider works in (BCP 47 primary tags: `en`, `pa`, `ur`).
    #[serde(default = "english")]
    pub languages: Vec<String>,
    #[serde(default)]
    pub accepts_self_referrals: bool,
    /// Maximum active caseload: referrals requested from it or being supported by it.
    pub capacity: u32,
    /// Working days the provider has to accept or reject before the router escalates.
    pub accept_within_working_days: u32,
    /// False to stop sending it referrals without deleting it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    /// The Open Referral UK service id this entry was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oruk_service_id: Option<String>,
}

fn english() -> Vec<String> {
    vec!["en".to_owned()]
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Need,
    Want,
}

impl ProviderKind {
    pub fn code(self) -> &'static str {
        match self {
            ProviderKind::Need => "need",
            ProviderKind::Want => "want",
        }
    }
}

/// Where a provider works. A person is in area when their postcode's district or
/// sector is listed directly or through one of the places.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Areas {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postcode_districts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_authorities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wards: Vec<String>,
}

/// Ages served, inclusive; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl AgeRange {
    pub fn is_unbounded(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }

    pub fn contains(&self, age: u32) -> bool {
        self.min.is_none_or(|min| age >= min) && self.max.is_none_or(|max| age <= max)
    }
}

impl std::fmt::Display for AgeRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min, self.max) {
            (Some(min), Some(max)) => write!(formatter, "ages {min} to {max}"),
            (Some(min), None) => write!(formatter, "ages {min} and over"),
            (None, Some(max)) => write!(formatter, "ages up to {max}"),
            (None, None) => write!(formatter, "all ages"),
        }
    }
}

/// Why a directory cannot be used. Every problem is listed, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("the directory cannot be read: {0}")]
    Unreadable(String),
    #[error("the directory has {} problem(s): {}", .0.len(), .0.join("; "))]
    Invalid(Vec<String>),
}

impl DirectoryDocument {
    /// Reads YAML (JSON is YAML too) and checks it.
    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        let document: DirectoryDocument = serde_yaml_ng::from_str(text)
            .map_err(|error| DirectoryError::Unreadable(error.to_string()))?;
        document.validate()?;
        Ok(document)
    }

    /// Every rule a directory must keep, all problems at once.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let mut problems = Vec::new();
        for (code, place) in &self.places {
            if place.postcodes.is_empty() {
                problems.push(format!("places.{code}: lists no postcodes"));
            }
            for postcode in &place.postcodes {
                if normalise_area_postcode(postcode).is_none() {
                    problems.push(format!(
                        "places.{code}: {postcode:?} is not a postcode district (BD20) or sector (BD20 0)"
                    ));
                }
            }
        }
        let mut seen = HashSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let at = format!("providers[{index}] ({})", provider.id);
            if !seen.insert(&provider.id) {
                problems.push(format!("{at}: the id is used twice"));
            }
            if provider.name.trim().is_empty() {
                problems.push(format!("{at}: name is empty"));
            }
            if provider.needs.is_empty() {
                problems.push(format!("{at}: handles no needs"));
            }
            if provider.languages.is_empty() {
                problems.push(format!("{at}: works in no language"));
            }
            if let (Some(min), Some(max)) = (provider.ages.min, provider.ages.max) {
                if min > max {
                    problems.push(format!("{at}: ages.min {min} is above ages.max {max}"));
                }
            }
            for district in &provider.areas.postcode_districts {
                if normalise_area_postcode(district).is_none() {
                    problems.push(format!(
                        "{at}: {district:?} is not a postcode district (BD20) or sector (BD20 0)"
                    ));
                }
            }
            for code in provider
                .areas
                .local_authorities
                .iter()
                .chain(&provider.areas.wards)
            {
                if !self.places.contains_key(code) {
                    problems.push(format!(
                        "{at}: area {code} is not among the directory's places"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DirectoryError::Invalid(problems))
        }
    }

    /// SHA-256 of the canonical JSON form: equal directories hash equal however the
    /// YAML was laid out.
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Adds or replaces a provider (by id).
    pub fn upsert(&mut self, provider: Provider) {
        match self
            .providers
            .iter_mut()
            .find(|each| each.id == provider.id)
        {
            Some(existing) => *existing = provider,
            None => self.providers.push(provider),
        }
    }

    pub fn provider_ids(&self) -> Vec<ProviderId> {
        self.providers
            .iter()
            .map(|provider| provider.id.clone())
            .collect()
    }
}

/// `BD20` or `BD20 0` in canonical form; `None` when it is neither.
pub fn normalise_area_postcode(text: &str) -> Option<String> {
    let upper = text.trim().to_ascii_uppercase();
    let mut parts = upper.split_whitespace();
    let district = parts.next()?;
    let sector = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let district_ok = (2..=4).contains(&district.len())
        && district.as_bytes()[0].is_ascii_uppercase()
        && district.bytes().all(|b| b.is_ascii_alphanumeric())
        && district.bytes().any(|b| b.is_ascii_digit());
    if !district_ok {
        return None;
    }
    match sector {
        None => Some(district.to_owned()),
        Some(sector) if sector.len() == 1 && sector.as_bytes()[0].is_ascii_digit() => {
            Some(format!("{district} {sector}"))
        }
        Some(_) => None,
    }
}

/// The sector of a postcode (`BD20 0` of `BD20 0AB`).
pub fn postcode_sector(postcode: &Postcode) -> String {
    let text = postcode.as_str();
    text[..text.len() - 2].to_owned()
}

mod compiled;
mod store;

pub use compiled::*;
pub use store::*;

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../directory.example.yaml");

    #[test]
    fn the_example_directory_is_valid() {
        let document = DirectoryDocument::parse(EXAMPLE).unwrap();
        assert!(document.providers.len() >= 3);
    }

    #[test]
    fn every_problem_of_a_bad_directory_is_listed_with_its_place() {
        let text = r#"
places:
  E05000001: { postcodes: [BD20, "not a code"] }
providers:
  - id: same
    name: A
    kind: want
    areas: { postcode_districts: [BD20], wards: [E05999999] }
    ages: { min: 70, max: 60 }
    needs: []
    capacity: 1
    accept_within_working_days: 5
  - id: same
    name: " "
    kind: need
    areas: { postcode_districts: ["BD"] }
    needs: [loneliness]
    capacity: 1
    accept_within_working_days: 5
"#;
        let DirectoryError::Invalid(problems) = DirectoryDocument::parse(text).unwrap_err() else {
            panic!("expected validation problems");
        };
        let all = problems.join("\n");
        for expected in [
            "places.E05000001: \"not a code\" is not a postcode district",
            "providers[0] (same): handles no needs",
            "providers[0] (same): ages.min 70 is above ages.max 60",
            "providers[0] (same): area E05999999 is not among the directory's places",
            "providers[1] (same): the id is used twice",
            "providers[1] (same): name is empty",
            "providers[1] (same): \"BD\" is not a postcode district",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let text = "providers: []\ncapasity: 3\n";
        assert!(matches!(
            DirectoryDocument::parse(text),
            Err(DirectoryError::Unreadable(message)) if message.contains("capasity")
        ));
    }

    #[test]
    fn the_hash_ignores_layout_but_not_content() {
        let document = DirectoryDocument::parse(EXAMPLE).unwrap();
        let reformatted =
            DirectoryDocument::parse(&serde_json::to_string_pretty(&document).unwrap()).unwrap();
        assert_eq!(document.content_hash(), reformatted.content_hash());
        let mut changed = document.clone();
        changed.providers[0].capacity += 1;
        assert_ne!(document.content_hash(), changed.content_hash());
    }

    #[test]
    fn places_expand_into_the_postcodes_a_provider_serves() {
        let document = DirectoryDocument::parse(
            r#"
places:
  E08000032: { name: Bradford, postcodes: [BD1, BD2] }
  E05001355: { name: Craven, postcodes: ["BD20 0", bd20 9] }
providers:
  - id: connectors
    name: Connectors
    kind: want
    areas: { postcode_districts: [ls29], local_authorities: [E08000032], wards: [E05001355] }
    needs: [loneliness]
    capacity: 3
    accept_within_working_days: 5
"#,
        )
        .unwrap();
        let compiled = CompiledDirectory::compile(&StoredDirectory {
            version: 1,
            content_hash: document.content_hash(),
            document,
        });
        let served: Vec<&str> = compiled.providers[0]
            .postcodes
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(served, ["BD1", "BD2", "BD20 0", "BD20 9", "LS29"]);
    }

    #[test]
    fn area_codes_are_districts_or_sectors() {
        assert_eq!(normalise_area_postcode(" bd20 "), Some("BD20".into()));
        assert_eq!(normalise_area_postcode("bd20 0"), Some("BD20 0".into()));
        assert_eq!(normalise_area_postcode("BD20 0AB"), None);
        assert_eq!(normalise_area_postcode("20BD"), None);
        assert_eq!(normalise_area_postcode(""), None);
    }
}

//! linkwork's needs taxonomy (`<canonical>/CodeSystem/need`) and the SNOMED CT reason
//! codes that map onto it.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A need a referral asks a community provider to help with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    Loneliness,
    SocialIsolation,
    LowMoodAnxiety,
    Bereavement,
    Retirement,
    Relocation,
    LongTermCondition,
    Caring,
    MoneyWorries,
    DigitalExclusion,
}

impl Need {
    pub const ALL: [Need; 10] = [
        Need::Loneliness,
        Need::SocialIsolation,
        Need::LowMoodAnxiety,
        Need::Bereavement,
        Need::Retirement,
        Need::Relocation,
        Need::LongTermCondition,
        Need::Caring,
        Need::MoneyWorries,
        Need::DigitalExclusion,
    ];

    /// The code in linkwork's need CodeSystem.
    pub fn code(self) -> &'static str {
        match self {
            Need::Loneliness => "loneliness",
            Need::SocialIsolation => "social-isolation",
            Need::LowMoodAnxiety => "low-mood-anxiety",
            Need::Bereavement => "bereavement",
            Need::Retirement => "retirement",
            Need::Relocation => "relocation",
            Need::LongTermCondition => "long-term-condition",
            Need::Caring => "caring",
            Need::MoneyWorries => "money-worries",
            Need::DigitalExclusion => "digital-exclusion",
        }
    }

    /// A display text for the code.
    pub fn display(self) -> &'static str {
        match self {
            Need::Loneliness => "Loneliness",
            Need::SocialIsolation => "Social isolation",
            Need::LowMoodAnxiety => "Low mood or anxiety",
            Need::Bereavement => "Bereavement",
            Need::Retirement => "Retirement",
            Need::Relocation => "Relocation",
            Need::LongTermCondition => "Long-term condition",
            Need::Caring => "Caring responsibilities",
            Need::MoneyWorries => "Money worries",
            Need::DigitalExclusion => "Digital exclusion",
        }
    }

    /// Maps a SNOMED CT reason code onto the taxonomy. The table covers the findings
    /// GP and hospital systems commonly code for social prescribing referrals; a code
    /// not listed here is not a need linkwork knows.
    pub fn from_snomed(code: &str) -> Option<Need> {
        SNOMED_NEEDS
            .iter()
            .find(|(snomed, _, _)| *snomed == code)
            .map(|(_, need, _)| *need)
    }
}

/// SNOMED CT concepts mapped to needs: (concept id, need, preferred term).
///
/// Only concepts whose ids and terms were checked against published sources are listed
/// (a wrong clinical code is worse than none). Referrers can always code needs directly
/// with linkwork's need CodeSystem, and a deployment adds its own SNOMED CT mappings in
/// configuration.
pub const SNOMED_NEEDS: &[(&str, Need, &str)] = &[
    ("422650009", Need::SocialIsolation, "Social isolation"),
    ("267076002", Need::Loneliness, "Feeling lonely"),
    ("35489007", Need::LowMoodAnxiety, "Depressive disorder"),
    ("366979004", Need::LowMoodAnxiety, "Depressed mood"),
    ("48694002", Need::LowMoodAnxiety, "Anxiety"),
    ("197480006", Need::LowMoodAnxiety, "Anxiety disorder"),
    ("160932005", Need::MoneyWorries, "Financial problem"),
];

impl fmt::Display for Need {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.code())
    }
}

impl FromStr for Need {
    type Err = UnknownNeed;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Need::ALL
            .into_iter()
            .find(|need| need.code() == code)
            .ok_or_else(|| UnknownNeed(code.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a code of linkwork's need CodeSystem")]
pub struct UnknownNeed(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_need_round_trips_through_its_code_and_serde() {
        for need in Need::ALL {
            assert_eq!(need.code().parse::<Need>(), Ok(need));
            assert_eq!(serde_json::to_value(need).unwrap(), need.code());
        }
    }

    #[test]
    fn social_isolation_snomed_code_maps_as_the_design_says() {
        assert_eq!(Need::from_snomed("422650009"), Some(Need::SocialIsolation));
        assert_eq!(Need::from_snomed("0"), None);
    }

    #[test]
    fn the_snomed_table_has_no_duplicate_concepts() {
        let mut ids: Vec<&str> = SNOMED_NEEDS.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), SNOMED_NEEDS.len());
    }
}

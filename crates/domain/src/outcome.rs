//! Outcome instruments (`<canonical>/CodeSystem/outcome-instrument`) and their scores.
//!
//! A score is only ever constructed inside its instrument's valid range, so an
//! out-of-range value cannot reach the event log: it is refused at the HTTP edge and,
//! arriving on Kafka, fails to decode and goes to the dead-letter topic.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A validated outcome measure for one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "instrument",
    rename_all = "kebab-case",
    try_from = "UncheckedMeasure"
)]
pub enum OutcomeMeasure {
    /// UCLA 3-item loneliness scale, 3 (least lonely) to 9 (most lonely).
    #[serde(rename = "ucla-3")]
    Ucla3 { score: u8 },
    /// ONS4 personal wellbeing: four items scored 0 to 10. For anxiety, lower is better.
    Ons4 {
        life_satisfaction: u8,
        worthwhile: u8,
        happiness: u8,
        anxiety: u8,
    },
    /// Short Warwick-Edinburgh Mental Wellbeing Scale, raw score 7 to 35.
    Swemwbs { score: u8 },
    /// Warwick-Edinburgh Mental Wellbeing Scale, 14 to 70.
    Wemwbs { score: u8 },
    /// De Jong Gierveld 6-item loneliness scale, 0 (least lonely) to 6 (most lonely).
    #[serde(rename = "djg-6")]
    Djg6 { score: u8 },
}

/// The instruments linkwork records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Instrument {
    #[serde(rename = "ucla-3")]
    Ucla3,
    Ons4,
    Swemwbs,
    Wemwbs,
    #[serde(rename = "djg-6")]
    Djg6,
}

/// Whether a higher score means the person is doing better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

impl Instrument {
    pub const ALL: [Instrument; 5] = [
        Instrument::Ucla3,
        Instrument::Ons4,
        Instrument::Swemwbs,
        Instrument::Wemwbs,
        Instrument::Djg6,
    ];

    /// The code in linkwork's outcome-instrument CodeSystem.
    pub fn code(self) -> &'static str {
        match self {
            Instrument::Ucla3 => "ucla-3",
            Instrument::Ons4 => "ons4",
            Instrument::Swemwbs => "swemwbs",
            Instrument::Wemwbs => "wemwbs",
            Instrument::Djg6 => "djg-6",
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            Instrument::Ucla3 => "UCLA 3-item loneliness scale",
            Instrument::Ons4 => "ONS4 personal wellbeing",
            Instrument::Swemwbs => "Short Warwick-Edinburgh Mental Wellbeing Scale",
            Instrument::Wemwbs => "Warwick-Edinburgh Mental Wellbeing Scale",
            Instrument::Djg6 => "De Jong Gierveld 6-item loneliness scale",
        }
    }

    /// The SNOMED CT "score" concept, where SNOMED CT has one.
    pub fn snomed_code(self) -> Option<(&'static str, &'static str)> {
        match self {
            Instrument::Swemwbs => Some((
                "718466001",
                "Short Warwick-Edinburgh Mental Well-being Scale score",
            )),
            Instrument::Wemwbs => Some((
                "718426000",
                "Warwick-Edinburgh Mental Well-being Scale score",
            )),
            Instrument::Ucla3 | Instrument::Ons4 | Instrument::Djg6 => None,
        }
    }

    /// The valid range of the instrument's total (for ONS4, of each item).
    pub fn range(self) -> (u8, u8) {
        match self {
            Instrument::Ucla3 => (3, 9),
            Instrument::Ons4 => (0, 10),
            Instrument::Swemwbs => (7, 35),
            Instrument::Wemwbs => (14, 70),
            Instrument::Djg6 => (0, 6),
        }
    }

    /// Loneliness scales improve downwards, wellbeing scales upwards.
    pub fn direction(self) -> Direction {
        match self {
            Instrument::Ucla3 | Instrument::Djg6 => Direction::LowerIsBetter,
            Instrument::Ons4 | Instrument::Swemwbs | Instrument::Wemwbs => {
                Direction::HigherIsBetter
            }
        }
    }

    /// True for loneliness instruments, false for wellbeing ones.
    pub fn measures_loneliness(self) -> bool {
        matches!(self, Instrument::Ucla3 | Instrument::Djg6)
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.code())
    }
}

impl FromStr for Instrument {
    type Err = OutcomeError;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Instrument::ALL
            .into_iter()
            .find(|instrument| instrument.code() == code)
            .ok_or_else(|| OutcomeError::UnknownInstrument(code.to_owned()))
    }
}

/// The four ONS4 items, with their component codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ons4Item {
    LifeSatisfaction,
    Worthwhile,
    Happiness,
    Anxiety,
}

impl Ons4Item {
    pub const ALL: [Ons4Item; 4] = [
        Ons4Item::LifeSatisfaction,
        Ons4Item::Worthwhile,
        Ons4Item::Happiness,
        Ons4Item::Anxiety,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Ons4Item::LifeSatisfaction => "ons4-life-satisfaction",
            Ons4Item::Worthwhile => "ons4-worthwhile",
            Ons4Item::Happiness => "ons4-happiness",
            Ons4Item::Anxiety => "ons4-anxiety",
        }
    }
}

/// Why a score was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    #[error("{0:?} is not an outcome instrument linkwork records (ucla-3, ons4, swemwbs, wemwbs, djg-6)")]
    UnknownInstrument(String),
    #[error("{instrument} {item} score {score} is outside its range {min}-{max}")]
    OutOfRange {
        instrument: Instrument,
        item: &'static str,
        score: i64,
        min: u8,
        max: u8,
    },
}

impl OutcomeMeasure {
    /// A single-score instrument's measure, checked against the instrument's range.
    pub fn single(instrument: Instrument, score: i64) -> Result<Self, OutcomeError> {
        let score = check(instrument, "total", score)?;
        Ok(match instrument {
            Instrument::Ucla3 => Self::Ucla3 { score },
            Instrument::Swemwbs => Self::Swemwbs { score },
            Instrument::Wemwbs => Self::Wemwbs { score },
            Instrument::Djg6 => Self::Djg6 { score },
            Instrument::Ons4 => {
                return Err(OutcomeError::OutOfRange {
                    instrument,
                    item: "total (ONS4 has four item scores, not a total)",
                    score: i64::from(score),
                    min: 0,
                    max: 10,
                })
            }
        })
    }

    /// An ONS4 measure from its four item scores.
    pub fn ons4(
        life_satisfaction: i64,
        worthwhile: i64,
        happiness: i64,
        anxiety: i64,
    ) -> Result<Self, OutcomeError> {
        Ok(Self::Ons4 {
            life_satisfaction: check(
                Instrument::Ons4,
                Ons4Item::LifeSatisfaction.code(),
                life_satisfaction,
            )?,
            worthwhile: check(Instrument::Ons4, Ons4Item::Worthwhile.code(), worthwhile)?,
            happiness: check(Instrument::Ons4, Ons4Item::Happiness.code(), happiness)?,
            anxiety: check(Instrument::Ons4, Ons4Item::Anxiety.code(), anxiety)?,
        })
    }

    pub fn instrument(&self) -> Instrument {
        match self {
            Self::Ucla3 { .. } => Instrument::Ucla3,
            Self::Ons4 { .. } => Instrument::Ons4,
            Self::Swemwbs { .. } => Instrument::Swemwbs,
            Self::Wemwbs { .. } => Instrument::Wemwbs,
            Self::Djg6 { .. } => Instrument::Djg6,
        }
    }

    /// The total score of a single-score instrument; `None` for ONS4.
    pub fn total(&self) -> Option<u8> {
        match *self {
            Self::Ucla3 { score }
            | Self::Swemwbs { score }
            | Self::Wemwbs { score }
            | Self::Djg6 { score } => Some(score),
            Self::Ons4 { .. } => None,
        }
    }

    /// An ONS4 item score; `None` for other instruments.
    pub fn ons4_item(&self, item: Ons4Item) -> Option<u8> {
        match *self {
            Self::Ons4 {
                life_satisfaction,
                worthwhile,
                happiness,
                anxiety,
            } => Some(match item {
                Ons4Item::LifeSatisfaction => life_satisfaction,
                Ons4Item::Worthwhile => worthwhile,
                Ons4Item::Happiness => happiness,
                Ons4Item::Anxiety => anxiety,
            }),
            _ => None,
        }
    }
}

fn check(instrument: Instrument, item: &'static str, score: i64) -> Result<u8, OutcomeError> {
    let (min, max) = instrument.range();
    if (i64::from(min)..=i64::from(max)).contains(&score) {
        Ok(score as u8)
    } else {
        Err(OutcomeError::OutOfRange {
            instrument,
            item,
            score,
            min,
            max,
        })
    }
}

/// The wire shape before range checks; deserialization goes through it so that a
/// score out of range never becomes an [`OutcomeMeasure`]. Its schema is the one
/// published for `OutcomeMeasure`, with each instrument's range.
#[derive(Deserialize, JsonSchema)]
#[serde(tag = "instrument", rename_all = "kebab-case")]
#[schemars(rename = "OutcomeMeasure")]
enum UncheckedMeasure {
    /// UCLA 3-item loneliness scale.
    #[serde(rename = "ucla-3")]
    Ucla3 {
        #[schemars(range(min = 3, max = 9))]
        score: i64,
    },
    /// ONS4 personal wellbeing, four items.
    Ons4 {
        #[schemars(range(min = 0, max = 10))]
        life_satisfaction: i64,
        #[schemars(range(min = 0, max = 10))]
        worthwhile: i64,
        #[schemars(range(min = 0, max = 10))]
        happiness: i64,
        #[schemars(range(min = 0, max = 10))]
        anxiety: i64,
    },
    /// Short Warwick-Edinburgh Mental Wellbeing Scale (raw score).
    Swemwbs {
        #[schemars(range(min = 7, max = 35))]
        score: i64,
    },
    /// Warwick-Edinburgh Mental Wellbeing Scale.
    Wemwbs {
        #[schemars(range(min = 14, max = 70))]
        score: i64,
    },
    /// De Jong Gierveld 6-item loneliness scale.
    #[serde(rename = "djg-6")]
    Djg6 {
        #[schemars(range(min = 0, max = 6))]
        score: i64,
    },
}

impl TryFrom<UncheckedMeasure> for OutcomeMeasure {
    type Error = OutcomeError;
    fn try_from(unchecked: UncheckedMeasure) -> Result<Self, Self::Error> {
        match unchecked {
            UncheckedMeasure::Ucla3 { score } => Self::single(Instrument::Ucla3, score),
            UncheckedMeasure::Swemwbs { score } => Self::single(Instrument::Swemwbs, score),
            UncheckedMeasure::Wemwbs { score } => Self::single(Instrument::Wemwbs, score),
            UncheckedMeasure::Djg6 { score } => Self::single(Instrument::Djg6, score),
            UncheckedMeasure::Ons4 {
                life_satisfaction,
                worthwhile,
                happiness,
                anxiety,
            } => Self::ons4(life_satisfaction, worthwhile, happiness, anxiety),
        }
    }
}

/// When in the support a measure was taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Timepoint {
    /// At the start of support.
    Baseline,
    /// During support (optional interim reviews).
    Interim,
    /// At the end of support.
    FollowUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_score_instrument_accepts_its_bounds_and_refuses_beyond_them() {
        let cases = [
            (Instrument::Ucla3, 3, 9),
            (Instrument::Swemwbs, 7, 35),
            (Instrument::Wemwbs, 14, 70),
            (Instrument::Djg6, 0, 6),
        ];
        for (instrument, min, max) in cases {
            assert_eq!(instrument.range(), (min, max));
            assert_eq!(
                OutcomeMeasure::single(instrument, i64::from(min))
                    .unwrap()
                    .total(),
                Some(min)
            );
            assert_eq!(
                OutcomeMeasure::single(instrument, i64::from(max))
                    .unwrap()
                    .total(),
                Some(max)
            );
            for outside in [i64::from(min) - 1, i64::from(max) + 1, -100, 1_000] {
                assert!(
                    matches!(
                        OutcomeMeasure::single(instrument, outside),
                        Err(OutcomeError::OutOfRange { .. })
                    ),
                    "{instrument} {outside} should be refused"
                );
            }
        }
    }

    #[test]
    fn ons4_checks_each_item() {
        let measure = OutcomeMeasure::ons4(0, 10, 5, 7).unwrap();
        assert_eq!(measure.ons4_item(Ons4Item::Anxiety), Some(7));
        assert_eq!(measure.total(), None);
        let refused = OutcomeMeasure::ons4(5, 11, 5, 5).unwrap_err();
        assert_eq!(
            refused,
            OutcomeError::OutOfRange {
                instrument: Instrument::Ons4,
                item: "ons4-worthwhile",
                score: 11,
                min: 0,
                max: 10
            }
        );
        assert!(OutcomeMeasure::ons4(-1, 5, 5, 5).is_err());
        assert!(OutcomeMeasure::single(Instrument::Ons4, 5).is_err());
    }

    #[test]
    fn deserializing_an_out_of_range_score_fails() {
        let ok: OutcomeMeasure =
            serde_json::from_str(r#"{"instrument":"ucla-3","score":9}"#).unwrap();
        assert_eq!(ok, OutcomeMeasure::Ucla3 { score: 9 });
        assert!(
            serde_json::from_str::<OutcomeMeasure>(r#"{"instrument":"ucla-3","score":10}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<OutcomeMeasure>(r#"{"instrument":"swemwbs","score":6}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<OutcomeMeasure>(r#"{"instrument":"phq-9","score":6}"#).is_err()
        );
        let ons4 = r#"{"instrument":"ons4","life_satisfaction":4,"worthwhile":5,"happiness":6,"anxiety":11}"#;
        assert!(serde_json::from_str::<OutcomeMeasure>(ons4).is_err());
    }

    #[test]
    fn measures_serialize_with_their_instrument_code() {
        let value = serde_json::to_value(OutcomeMeasure::Djg6 { score: 2 }).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"instrument": "djg-6", "score": 2})
        );
        for instrument in Instrument::ALL {
            assert_eq!(instrument.code().parse::<Instrument>(), Ok(instrument));
            assert_eq!(serde_json::to_value(instrument).unwrap(), instrument.code());
        }
        assert!("phq-9".parse::<Instrument>().is_err());
    }

    #[test]
    fn loneliness_scales_improve_downwards() {
        assert_eq!(Instrument::Ucla3.direction(), Direction::LowerIsBetter);
        assert_eq!(Instrument::Djg6.direction(), Direction::LowerIsBetter);
        assert_eq!(Instrument::Swemwbs.direction(), Direction::HigherIsBetter);
        assert_eq!(
            Instrument::Wemwbs.snomed_code().map(|(code, _)| code),
            Some("718426000")
        );
        assert_eq!(
            Instrument::Swemwbs.snomed_code().map(|(code, _)| code),
            Some("718466001")
        );
    }
}

//! The NHS number: ten digits, the last a Modulus 11 check digit.
//!
//! Parsing follows what NHS services do with typed or transmitted numbers: spaces are
//! allowed anywhere (people write `943 476 5919`) and removed; anything else that is
//! not a digit, or a length other than ten digits, is refused, as is a number whose
//! check digit does not match or whose check computes to 10 (such numbers are never
//! issued).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The FHIR identifier system for NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A valid NHS number, stored as its ten digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NhsNumber([u8; 10]);

crate::ids::string_schema!(
    NhsNumber,
    r"^[0-9]{10}$",
    "NHS number: ten digits, the last a Modulus 11 check digit"
);

/// Why a string is not an NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("NHS number is empty")]
    Empty,
    #[error("NHS number contains {0:?}, which is not a digit")]
    NotADigit(char),
    #[error("NHS number has {0} digits; it must have 10")]
    WrongLength(usize),
    #[error("NHS number check digit computes to 10, so the number cannot have been issued")]
    CheckComputesToTen,
    #[error("NHS number check digit is {found}, but Modulus 11 requires {expected}")]
    CheckDigitMismatch { expected: u8, found: u8 },
}

impl NhsNumber {
    /// Parses an NHS number, ignoring spaces (`943 476 5919` is accepted).
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let mut digits = [0u8; 10];
        let mut count = 0usize;
        for character in input.chars() {
            if character == ' ' {
                continue;
            }
            let Some(digit) = character.to_digit(10) else {
                return Err(NhsNumberError::NotADigit(character));
            };
            if count < 10 {
                digits[count] = digit as u8;
            }
            count += 1;
        }
        match count {
            0 => return Err(NhsNumberError::Empty),
            10 => {}
            other => return Err(NhsNumberError::WrongLength(other)),
        }
        let expected = check_digit(&digits[..9]).ok_or(NhsNumberError::CheckComputesToTen)?;
        if expected != digits[9] {
            return Err(NhsNumberError::CheckDigitMismatch {
                expected,
                found: digits[9],
            });
        }
        Ok(Self(digits))
    }

    /// Builds a valid number from its first nine digits by computing the check digit,
    /// or `None` when the check computes to 10. Used to generate synthetic test data.
    pub fn from_first_nine(first_nine: [u8; 9]) -> Option<Self> {
        if first_nine.iter().any(|digit| *digit > 9) {
            return None;
        }
        let check = check_digit(&first_nine)?;
        let mut digits = [0u8; 10];
        digits[..9].copy_from_slice(&first_nine);
        digits[9] = check;
        Some(Self(digits))
    }

    /// True for numbers in the 999 range, which the NHS never issues and keeps for testing.
    pub fn is_test_range(&self) -> bool {
        self.0[..3] == [9, 9, 9]
    }

    /// The number in the NHS display format, `943 476 5919`.
    pub fn formatted(&self) -> String {
        let digits = self.to_string();
        format!("{} {} {}", &digits[..3], &digits[3..6], &digits[6..])
    }
}

/// The Modulus 11 check digit of the first nine digits, or `None` when it computes to 10.
fn check_digit(first_nine: &[u8]) -> Option<u8> {
    let sum: u32 = first_nine
        .iter()
        .zip((2..=10u32).rev())
        .map(|(digit, weight)| u32::from(*digit) * weight)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        check => Some(check as u8),
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for digit in self.0 {
            write!(formatter, "{digit}")?;
        }
        Ok(())
    }
}

/// Debug never prints the number itself: debug output ends up in logs, and an NHS
/// number in a log line is a disclosure.
impl fmt::Debug for NhsNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("NhsNumber(<redacted>)")
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl TryFrom<String> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(input: String) -> Result<Self, Self::Error> {
        Self::parse(&input)
    }
}

impl From<NhsNumber> for String {
    fn from(number: NhsNumber) -> Self {
        number.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_valid_numbers_parse() {
        for valid in ["9434765919", "9476719931", "9912003888"] {
            let number = NhsNumber::parse(valid).unwrap_or_else(|error| panic!("{valid}: {error}"));
            assert_eq!(number.to_string(), valid);
        }
    }

    #[test]
    fn spaces_are_ignored_as_in_nhs_services() {
        assert_eq!(
            NhsNumber::parse("943 476 5919").unwrap().to_string(),
            "9434765919"
        );
        assert_eq!(
            NhsNumber::parse(" 9434765919 ").unwrap().to_string(),
            "9434765919"
        );
        assert_eq!(
            NhsNumber::parse("943 476 5919").unwrap().formatted(),
            "943 476 5919"
        );
    }

    #[test]
    fn a_wrong_check_digit_is_refused_with_the_expected_digit() {
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigitMismatch {
                expected: 9,
                found: 8
            })
        );
        // A real published example with a mistake in it (BaRS validation-request).
        assert!(matches!(
            NhsNumber::parse("3478526985"),
            Err(NhsNumberError::CheckDigitMismatch { .. })
        ));
    }

    #[test]
    fn a_number_whose_check_computes_to_ten_is_refused() {
        // Find a nine-digit prefix whose check computes to 10, then show that no tenth
        // digit makes a valid number from it.
        let prefix = (0..1_000u32)
            .map(|n| {
                let digits: Vec<u8> = format!("{:09}", 999_000_000 + n)
                    .bytes()
                    .map(|b| b - b'0')
                    .collect();
                <[u8; 9]>::try_from(digits).unwrap()
            })
            .find(|digits| check_digit(digits).is_none())
            .expect("some prefix in 999000000..999001000 computes to 10");
        assert!(NhsNumber::from_first_nine(prefix).is_none());
        for last in 0..=9u8 {
            let candidate: String = prefix
                .iter()
                .chain(std::iter::once(&last))
                .map(|d| char::from(b'0' + d))
                .collect();
            assert_eq!(
                NhsNumber::parse(&candidate),
                Err(NhsNumberError::CheckComputesToTen),
                "{candidate}"
            );
        }
    }

    #[test]
    fn a_check_that_computes_to_eleven_means_zero() {
        // A weighted sum divisible by 11 gives 11 - 0 = 11, which the rule maps to 0.
        let prefix = (0..10_000u32)
            .map(|n| {
                let digits: Vec<u8> = format!("{:09}", 999_000_000 + n)
                    .bytes()
                    .map(|b| b - b'0')
                    .collect();
                <[u8; 9]>::try_from(digits).unwrap()
            })
            .find(|digits| {
                let sum: u32 = digits
                    .iter()
                    .zip((2..=10u32).rev())
                    .map(|(d, w)| u32::from(*d) * w)
                    .sum();
                sum % 11 == 0
            })
            .expect("a prefix with remainder 0 exists");
        let number = NhsNumber::from_first_nine(prefix).unwrap();
        assert!(number.to_string().ends_with('0'));
        assert_eq!(NhsNumber::parse(&number.to_string()), Ok(number));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Empty));
        assert_eq!(NhsNumber::parse("   "), Err(NhsNumberError::Empty));
        assert_eq!(
            NhsNumber::parse("943476591"),
            Err(NhsNumberError::WrongLength(9))
        );
        assert_eq!(
            NhsNumber::parse("94347659190"),
            Err(NhsNumberError::WrongLength(11))
        );
        assert_eq!(
            NhsNumber::parse("9434765919 1"),
            Err(NhsNumberError::WrongLength(11))
        );
    }

    #[test]
    fn letters_and_other_characters_are_refused() {
        assert_eq!(
            NhsNumber::parse("943476591X"),
            Err(NhsNumberError::NotADigit('X'))
        );
        assert_eq!(
            NhsNumber::parse("943-476-5919"),
            Err(NhsNumberError::NotADigit('-'))
        );
        assert_eq!(
            NhsNumber::parse("943\t476 5919"),
            Err(NhsNumberError::NotADigit('\t'))
        );
        assert_eq!(
            NhsNumber::parse("９４３4765919"),
            Err(NhsNumberError::NotADigit('９'))
        );
    }

    #[test]
    fn synthetic_numbers_are_in_the_test_range_and_valid() {
        let number = NhsNumber::from_first_nine([9, 9, 9, 0, 0, 0, 0, 0, 1]).unwrap();
        assert!(number.is_test_range());
        assert!(!NhsNumber::parse("9434765919").unwrap().is_test_range());
        assert_eq!(NhsNumber::parse(&number.to_string()), Ok(number));
    }

    #[test]
    fn debug_output_never_shows_the_number() {
        let number = NhsNumber::parse("9434765919").unwrap();
        assert!(!format!("{number:?}").contains("9434765919"));
    }

    #[test]
    fn serde_refuses_an_invalid_number() {
        assert!(serde_json::from_str::<NhsNumber>("\"9434765918\"").is_err());
        let number: NhsNumber = serde_json::from_str("\"9434765919\"").unwrap();
        assert_eq!(serde_json::to_string(&number).unwrap(), "\"9434765919\"");
    }
}

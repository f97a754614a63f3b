//! UK postcodes: `LS1 4AP`. Only the shape is checked (outward code of 2-4 characters
//! starting with a letter, inward code of a digit and two letters); whether the
//! postcode exists is for an address service to say.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A postcode in canonical form: upper case, one space before the inward code.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Postcode(String);

crate::ids::string_schema!(
    Postcode,
    r"^[A-Z][A-Z0-9]{1,3} [0-9][A-Z]{2}$",
    "A UK postcode, upper case with one space"
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UK postcode (e.g. LS1 4AP)")]
pub struct InvalidPostcode(pub String);

impl Postcode {
    /// Accepts any case and spacing (`ls14ap`, `LS1  4AP`).
    pub fn parse(input: &str) -> Result<Self, InvalidPostcode> {
        let compact: String = input
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        let invalid = || InvalidPostcode(input.to_owned());
        if !(5..=7).contains(&compact.len()) || !compact.is_ascii() {
            return Err(invalid());
        }
        let (outward, inward) = compact.split_at(compact.len() - 3);
        let inward_ok = {
            let bytes = inward.as_bytes();
            bytes[0].is_ascii_digit()
                && bytes[1].is_ascii_uppercase()
                && bytes[2].is_ascii_uppercase()
        };
        let outward_ok = outward.as_bytes()[0].is_ascii_uppercase()
            && outward
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && outward.bytes().any(|b| b.is_ascii_digit());
        if inward_ok && outward_ok {
            Ok(Self(format!("{outward} {inward}")))
        } else {
            Err(invalid())
        }
    }

    /// The outward code, which names the postcode district (`LS1`).
    pub fn district(&self) -> &str {
        self.0.split(' ').next().unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Postcode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Debug shows only the district: a full postcode narrows a person down to a street.
impl fmt::Debug for Postcode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Postcode({} ***)", self.district())
    }
}

impl TryFrom<String> for Postcode {
    type Error = InvalidPostcode;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Postcode> for String {
    fn from(postcode: Postcode) -> Self {
        postcode.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcodes_are_normalised() {
        for (input, canonical, district) in [
            ("LS1 4AP", "LS1 4AP", "LS1"),
            ("ls14ap", "LS1 4AP", "LS1"),
            ("SW1A  1AA", "SW1A 1AA", "SW1A"),
            ("M1 1AE", "M1 1AE", "M1"),
            ("B33 8TH", "B33 8TH", "B33"),
        ] {
            let postcode = Postcode::parse(input).unwrap();
            assert_eq!(postcode.as_str(), canonical);
            assert_eq!(postcode.district(), district);
        }
    }

    #[test]
    fn malformed_postcodes_are_refused() {
        for bad in [
            "",
            "LS1",
            "LS1 4A",
            "1S1 4AP",
            "LS1 AAP",
            "LSS 4AP",
            "LS1 4AP X",
            "LS1-4AP",
            "ＬS1 4AP",
        ] {
            assert!(Postcode::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_inward_code() {
        assert_eq!(
            format!("{:?}", Postcode::parse("LS1 4AP").unwrap()),
            "Postcode(LS1 ***)"
        );
    }
}

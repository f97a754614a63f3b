//! Pseudonyms for data-team topics: a keyed HMAC-SHA256, so the same person gets the
//! same pseudonym in every message (baseline and follow-up pair up) while nobody
//! without `LINKWORK_PSEUDONYM_KEY` can go back to the NHS number, or even test a guess.
//! Quasi-identifiers are coarsened: birth date to an age band, postcode to its district.

use chrono::{Datelike, NaiveDate};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use uuid::Uuid;

/// The secret behind the pseudonyms. Never logged: `Debug` prints nothing of it.
#[derive(Clone)]
pub struct PseudonymKey(SecretSlice<u8>);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PseudonymKey(redacted)")
    }
}

/// Why a key is refused.
#[derive(Debug, thiserror::Error)]
#[error("LINKWORK_PSEUDONYM_KEY must be at least 32 bytes (it is {0}); use a random secret")]
pub struct WeakKey(usize);

impl PseudonymKey {
    /// At least 32 bytes: the key is all that stands between a pseudonym and a
    /// dictionary of the ten billion possible NHS numbers.
    pub fn new(secret: &[u8]) -> Result<Self, WeakKey> {
        if secret.len() < 32 {
            return Err(WeakKey(secret.len()));
        }
        Ok(Self(SecretSlice::from(secret.to_vec())))
    }

    fn mac(&self, domain: &str, value: &str) -> [u8; 32] {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(domain.as_bytes());
        mac.update(&[0x1f]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The person's pseudonym (64 hex digits): of the NHS number when there is one,
    /// else of the referral.
    pub fn person(&self, nhs_number: Option<&str>, referral_id: &Uuid) -> String {
        let digest = match nhs_number {
            Some(number) => self.mac("nhs-number", number),
            None => self.mac("referral-subject", &referral_id.to_string()),
        };
        hex(&digest)
    }

    /// A stable id standing for `id` on pseudonymised topics, unlinkable to it without
    /// the key.
    pub fn id(&self, kind: &str, id: &Uuid) -> Uuid {
        let digest = self.mac(kind, &id.to_string());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The age band on `on` of someone born on `born`, in the bands of ONS outputs.
pub fn age_band(born: NaiveDate, on: NaiveDate) -> Option<&'static str> {
    let mut age = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        age -= 1;
    }
    Some(match age {
        i32::MIN..=-1 => return None,
        0..=17 => "0-17",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        65..=74 => "65-74",
        75..=84 => "75-84",
        _ => "85+",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PseudonymKey {
        PseudonymKey::new(&[byte; 32]).unwrap()
    }

    #[test]
    fn the_same_person_gets_the_same_pseudonym_and_other_keys_give_others() {
        let referral = Uuid::nil();
        let first = key(7).person(Some("9990000018"), &referral);
        assert_eq!(first, key(7).person(Some("9990000018"), &referral));
        assert_eq!(first.len(), 64);
        assert!(!first.contains("9990000018"));
        assert_ne!(first, key(8).person(Some("9990000018"), &referral));
        assert_ne!(first, key(7).person(Some("9990000026"), &referral));
        assert_ne!(first, key(7).person(None, &referral));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(PseudonymKey::new(b"too short").is_err());
        assert!(format!("{:?}", key(1)).contains("redacted"));
    }

    #[test]
    fn age_bands_turn_on_the_birthday() {
        let born = NaiveDate::from_ymd_opt(1950, 6, 15).unwrap();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(age_band(born, day(2025, 6, 14)), Some("65-74"));
        assert_eq!(age_band(born, day(2025, 6, 15)), Some("75-84"));
        assert_eq!(age_band(born, day(2040, 1, 1)), Some("85+"));
        assert_eq!(age_band(born, day(1960, 1, 1)), Some("0-17"));
        assert_eq!(age_band(born, day(1949, 1, 1)), None);
    }
}

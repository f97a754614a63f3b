//! Per-person keys for crypto-shredding. linkwork's log is immutable and kept for ever;
//! to erase a person from it, what identifies them is sealed (AES-256-GCM) under a
//! data key of that person's own, held in Postgres, and erasure destroys the key:
//! every copy of what was sealed — on the log, in dead letters, in backups — becomes
//! unreadable at once, and a replay rebuilds the read models without the person.
//!
//! - A person is named by a keyed hash ([`Person`]: HMAC-SHA256 of their NHS number,
//!   or of a referral for someone without one), never by an identifier.
//! - Data keys are stored wrapped under a key derived from the deployment's vault
//!   secret (`LINKWORK_VAULT_KEY`), so a copy of the database alone opens nothing.
//! - A sealed value ([`Sealed`]) names its person and is bound to them (the person is
//!   the AEAD's associated data): it opens with that person's key or not at all.
//! - [`Vault::erase`] deletes the key and records the erasure (the keyed hash and
//!   when, nothing else), so a key is never made for that person again.
//!
//! Written on RustCrypto's `aes-gcm` and `hmac`: what is linkwork's own is only where
//! the keys live and how a person is named.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgConnection;

/// The vault's migrations (run after the store's).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Why the vault could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault secret must be at least 32 bytes")]
    WeakSecret,
    #[error("person {0} was erased: their data cannot be sealed or opened")]
    Erased(Person),
    #[error("a sealed value could not be opened: {0}")]
    Unreadable(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A person, as the vault names them: a keyed hash, printed as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Person([u8; 32]);

impl Person {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_hex(text: &str) -> Option<Person> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(Person(bytes))
    }
}

impl fmt::Display for Person {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Person {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Person({self})")
    }
}

/// A value sealed under its person's key: what goes on the log in place of the
/// plaintext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The person, as a keyed hash in hex.
    pub person: String,
    /// The 96-bit nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Sealed")
            .field("person", &self.person)
            .field("bytes", &self.ciphertext.len())
            .finish()
    }
}

impl Sealed {
    /// The person it is sealed for.
    pub fn person(&self) -> Result<Person, VaultError> {
        Person::from_hex(&self.person)
            .ok_or(VaultError::Unreadable("the person is not 64 hex digits"))
    }
}

/// One person's data key, unwrapped.
#[derive(Clone)]
pub struct DataKey {
    person: Person,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "DataKey({})", self.person)
    }
}

impl DataKey {
    /// Seals `plaintext` for this key's person.
    pub fn seal(&self, plaintext: &[u8]) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = self.person.0;
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // AES-GCM fails only beyond 64 GiB of plaintext.
            .unwrap_or_default();
        Sealed {
            person: self.person.to_string(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        }
    }

    /// Opens what was sealed for this key's person.
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, VaultError> {
        if sealed.person()? != self.person {
            return Err(VaultError::Unreadable("sealed for another person"));
        }
        let nonce = BASE64
            .decode(&sealed.nonce)
            .ok()
            .filter(|nonce| nonce.len() == 12)
            .ok_or(VaultError::Unreadable(
                "the nonce is not 12 bytes of base64",
            ))?;
        let ciphertext = BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Unreadable("the ciphertext is not base64"))?;
        let aad = self.person.0;
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                VaultError::Unreadable("the tag does not verify (altered, or another key)")
            })
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The deployment's vault: names people and keeps their keys.
#[derive(Clone)]
pub struct Vault {
    /// Wraps data keys at rest.
    wrapping: Aes256Gcm,
    /// Names people.
    naming: [u8; 32],
}

impl fmt::Debug for Vault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Vault(<keys>)")
    }
}

fn derive(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

impl Vault {
    /// The vault of `secret` (32 bytes or more): the wrapping key and the naming key
    /// are derived from it, each for its purpose alone.
    pub fn new(secret: &SecretString) -> Result<Vault, VaultError> {
        let secret = secret.expose_secret().as_bytes();
        if secret.len() < 32 {
            return Err(VaultError::WeakSecret);
        }
        let wrapping = derive(secret, "linkwork-vault wrapping key v1");
        Ok(Vault {
            wrapping: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&wrapping)),
            naming: derive(secret, "linkwork-vault person naming key v1"),
        })
    }

    fn name(&self, kind: &str, value: &str) -> Person {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.naming)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(kind.as_bytes());
        mac.update(&[0x1f]);
        mac.update(value.as_bytes());
        Person(mac.finalize().into_bytes().into())
    }

    /// A person with an NHS number (ten digits, as written on the referral).
    pub fn person_with_nhs_number(&self, nhs_number: &str) -> Person {
        let digits: String = nhs_number.chars().filter(char::is_ascii_digit).collect();
        self.name("nhs-number", &digits)
    }

    /// A person known only through one referral (no NHS number).
    pub fn person_of_referral(&self, referral_id: &str) -> Person {
        self.name("referral", referral_id)
    }

    fn wrap(&self, person: &Person, key: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut wrapped = nonce.to_vec();
        wrapped.extend(
            self.wrapping
                .encrypt(
                    &nonce,
                    Payload {
                        msg: key,
                        aad: &person.0,
                    },
                )
                .unwrap_or_default(),
        );
        wrapped
    }

    fn unwrap(&self, person: Person, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        if wrapped.len() < 12 {
            return Err(VaultError::Unreadable("a wrapped key is too short"));
        }
        let (nonce, ciphertext) = wrapped.split_at(12);
        let key = self
            .wrapping
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &person.0,
                },
            )
            .map_err(|_| {
                VaultError::Unreadable("a stored key does not unwrap (another vault secret?)")
            })?;
        if key.len() != 32 {
            return Err(VaultError::Unreadable("a stored key is not 32 bytes"));
        }
        Ok(DataKey {
            person,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// The person's key, made now if they have none yet; [`VaultError::Erased`] when
    /// they were erased (nothing is sealed for them again).
    pub async fn key_for(
        &self,
        connection: &mut PgConnection,
        person: Person,
    ) -> Result<DataKey, VaultError> {
        let fresh = Aes256Gcm::generate_key(&mut OsRng);
        sqlx::query(
            "INSERT INTO vault_person_keys (person, wrapped_key)
             SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM vault_erasures WHERE person = $1)
             ON CONFLICT (person) DO NOTHING",
        )
        .bind(person.0.as_slice())
        .bind(self.wrap(&person, fresh.as_slice()))
        .execute(&mut *connection)
        .await?;
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped_key FROM vault_person_keys WHERE person = $1")
                .bind(person.0.as_slice())
                .fetch_optional(&mut *connection)
                .await?;
        match wrapped {
            Some(wrapped) => self.unwrap(person, &wrapped),
            None => Err(VaultError::Erased(person)),
        }
    }

    /// The keys of `people`, made now for those who have none yet, in two statements
    /// for the whole batch (ingest seals a group of referrals at once). Erased people
    /// are absent: nothing is sealed for them again.
    pub async fn keys_for(
        &self,
        connection: &mut PgConnection,
        people: &[Person],
    ) -> Result<HashMap<Person, DataKey>, VaultError> {
        let mut wanted: Vec<Person> = people.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let names: Vec<Vec<u8>> = wanted.iter().map(|person| person.0.to_vec()).collect();
        let wrapped: Vec<Vec<u8>> = wanted
            .iter()
            .map(|person| self.wrap(person, Aes256Gcm::generate_key(&mut OsRng).as_slice()))
            .collect();
        // In person order, so two batches never wait on each other's rows.
        sqlx::query(
            "INSERT INTO vault_person_keys (person, wrapped_key)
             SELECT batch.person, batch.wrapped_key
             FROM unnest($1::BYTEA[], $2::BYTEA[]) AS batch(person, wrapped_key)
             WHERE NOT EXISTS (SELECT 1 FROM vault_erasures e WHERE e.person = batch.person)
             ORDER BY batch.person
             ON CONFLICT (person) DO NOTHING",
        )
        .bind(&names)
        .bind(&wrapped)
        .execute(&mut *connection)
        .await?;
        self.keys(connection, &wanted).await
    }

    /// The keys of `people` that exist, in one query: an erased person (or one never
    /// given a key) is absent, and what was sealed for them stays shut.
    pub async fn keys(
        &self,
        connection: &mut PgConnection,
        people: &[Person],
    ) -> Result<HashMap<Person, DataKey>, VaultError> {
        let wanted: Vec<Vec<u8>> = people.iter().map(|person| person.0.to_vec()).collect();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT person, wrapped_key FROM vault_person_keys WHERE person = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *connection)
        .await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for (person, wrapped) in rows {
            let Ok(bytes) = <[u8; 32]>::try_from(person.as_slice()) else {
                return Err(VaultError::Unreadable("a stored person is not 32 bytes"));
            };
            let person = Person(bytes);
            keys.insert(person, self.unwrap(person, &wrapped)?);
        }
        Ok(keys)
    }

    /// Erases `person`: their key is destroyed and the erasure recorded (by whom, and
    /// when). Returns whether a key was destroyed (false: none existed, or erased
    /// before). Commit the connection's transaction for it to stand.
    pub async fn erase(
        &self,
        connection: &mut PgConnection,
        person: Person,
        by: &str,
    ) -> Result<bool, VaultError> {
        let destroyed = sqlx::query("DELETE FROM vault_person_keys WHERE person = $1")
            .bind(person.0.as_slice())
            .execute(&mut *connection)
            .await?
            .rows_affected()
            > 0;
        sqlx::query(
            "INSERT INTO vault_erasures (person, erased_at, erased_by) VALUES ($1, now(), $2)
             ON CONFLICT (person) DO NOTHING",
        )
        .bind(person.0.as_slice())
        .bind(by)
        .execute(&mut *connection)
        .await?;
        Ok(destroyed)
    }
}

#[cfg(test)]
mod tests;

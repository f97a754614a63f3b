//! Per-person keys for crypto-shredding. linkwork's log is immutable and kept for ever;
//! to erase a person from it, what identifies them is sealed (AES-256-GCM) under a
//! data key of that person's own, held in Postgres, and erasure destroys the key:
//! every copy of what was sealed — on the log, in dead letters, in backups — becomes
//! unreadable at once, and a replay rebuilds the read models without the person.
//!
//! - A person is named by a keyed hash ([`Person`]: HMAC-SHA256 of their NHS number,
//!   or of a referral for someone without one), never by an identifier, and only in
//!   the vault's own rows, which erasure deletes: NHS numbers are few enough (about
//!   10⁹) that whoever holds the vault secret could reverse such a hash by trying
//!   them all, so nothing kept after an erasure, and nothing on the log, carries it.
//! - What is sealed names its key by a random key id, not by the person: once the key
//!   row is gone the id points at nothing.
//! - Data keys are stored wrapped under a key derived from the deployment's vault
//!   secret (`LINKWORK_VAULT_KEY`), so a copy of the database alone opens nothing.
//! - A sealed value ([`Sealed`]) names its key id and is bound to it (the id is the
//!   AEAD's associated data): it opens with that key or not at all.
//! - [`Vault::erase`] deletes the key and the record of whose referrals are whose, and
//!   records that an erasure happened (when, by whom, how many referrals: nothing
//!   about the person). A later referral of the same person is new processing and
//!   gets a new key; what was sealed before stays shut, since no key but the
//!   destroyed one opens it.
//! - [`Vault::seal_referrals`] and [`Vault::open_referrals`] do this for the
//!   `ReferralReceived` events of a batch, one query each; which referrals are whose
//!   is kept (`vault_referrals`) so an erasure can name the referrals it redacts.
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
use linkwork_domain::event::{ReferralIdentity, ReferralReceived};
use linkwork_domain::{NhsNumber, ReferralId};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgConnection;

pub use linkwork_domain::event::Sealed;

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
    #[error("a sealed value could not be opened: {0}")]
    Unreadable(&'static str),
    /// A person's key was destroyed while a batch was being sealed for them: retry
    /// the batch (a new key is made).
    #[error("a person was erased while their data was being sealed")]
    ErasedMeanwhile,
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

    pub fn from_hex(text: &str) -> Option<Person> {
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

/// The key id a sealed value names.
pub fn sealed_key_id(sealed: &Sealed) -> Result<uuid::Uuid, VaultError> {
    uuid::Uuid::parse_str(&sealed.key)
        .map_err(|_| VaultError::Unreadable("the key id is not a UUID"))
}

/// One person's data key, unwrapped.
#[derive(Clone)]
pub struct DataKey {
    key_id: uuid::Uuid,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "DataKey({})", self.key_id)
    }
}

/// The first bytes of a value [`DataKey::seal_bytes`] sealed.
const SEALED_BYTES_MAGIC: &[u8; 4] = b"LWS1";

impl DataKey {
    /// The key's random id, which sealed values name.
    pub fn key_id(&self) -> uuid::Uuid {
        self.key_id
    }

    fn encrypt(&self, plaintext: &[u8]) -> (Nonce<<Aes256Gcm as AeadCore>::NonceSize>, Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: self.key_id.as_bytes(),
                },
            )
            // AES-GCM fails only beyond 64 GiB of plaintext.
            .unwrap_or_default();
        (nonce, ciphertext)
    }

    fn decrypt(&self, nonce: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, VaultError> {
        if nonce.len() != 12 {
            return Err(VaultError::Unreadable("the nonce is not 12 bytes"));
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: self.key_id.as_bytes(),
                },
            )
            .map_err(|_| {
                VaultError::Unreadable("the tag does not verify (altered, or another key)")
            })
    }

    /// Seals `plaintext` as compact bytes (`LWS1`, the key id, the nonce, the
    /// ciphertext): for bodies that must stay near their size (dead letters).
    pub fn seal_bytes(&self, plaintext: &[u8]) -> Vec<u8> {
        let (nonce, ciphertext) = self.encrypt(plaintext);
        let mut sealed = Vec::with_capacity(4 + 16 + 12 + ciphertext.len());
        sealed.extend_from_slice(SEALED_BYTES_MAGIC);
        sealed.extend_from_slice(self.key_id.as_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Seals `plaintext` for this key's person.
    pub fn seal(&self, plaintext: &[u8]) -> Sealed {
        let (nonce, ciphertext) = self.encrypt(plaintext);
        Sealed {
            key: self.key_id.to_string(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        }
    }

    /// Seals what identifies the person of `received` (this key's person), leaving
    /// placeholders in its place.
    pub fn seal_referral(&self, received: &mut ReferralReceived) {
        let identity = received.take_identity();
        // Plain structs: serializing them cannot fail.
        let plaintext = serde_json::to_vec(&identity).unwrap_or_default();
        received.sealed = Some(self.seal(&plaintext));
    }

    /// Opens what was sealed under this key.
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, VaultError> {
        if sealed_key_id(sealed)? != self.key_id {
            return Err(VaultError::Unreadable("sealed under another key"));
        }
        let nonce = BASE64
            .decode(&sealed.nonce)
            .map_err(|_| VaultError::Unreadable("the nonce is not base64"))?;
        let ciphertext = BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Unreadable("the ciphertext is not base64"))?;
        self.decrypt(&nonce, &ciphertext)
    }

    /// Opens what [`DataKey::seal_bytes`] sealed under this key.
    pub fn open_bytes(&self, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (key_id, nonce, ciphertext) = split_sealed_bytes(sealed)?;
        if key_id != self.key_id {
            return Err(VaultError::Unreadable("sealed under another key"));
        }
        self.decrypt(nonce, ciphertext)
    }
}

/// The first bytes of a value sealed for several people at once.
const SEALED_FOR_ALL_MAGIC: &[u8; 4] = b"LWM1";

/// Seals `plaintext` so that it opens only while every one of `keys` lives: under a
/// fresh content key split into XOR shares, each share sealed under one person's key.
/// Erasing any one of them shuts it (a dead letter naming several people).
pub fn seal_for_all(keys: &[&DataKey], plaintext: &[u8]) -> Vec<u8> {
    let content = Aes256Gcm::generate_key(&mut OsRng);
    let mut last = [0u8; 32];
    last.copy_from_slice(content.as_slice());
    let mut shares: Vec<[u8; 32]> = Vec::with_capacity(keys.len());
    for _ in 1..keys.len().max(1) {
        let share: [u8; 32] = Aes256Gcm::generate_key(&mut OsRng).into();
        for (byte, other) in last.iter_mut().zip(share) {
            *byte ^= other;
        }
        shares.push(share);
    }
    shares.push(last);
    let mut sealed = SEALED_FOR_ALL_MAGIC.to_vec();
    sealed.extend_from_slice(&u16::try_from(keys.len()).unwrap_or(u16::MAX).to_be_bytes());
    for (key, share) in keys.iter().zip(&shares) {
        let wrapped = key.seal_bytes(share);
        sealed.extend_from_slice(
            &u16::try_from(wrapped.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        sealed.extend_from_slice(&wrapped);
    }
    let cipher = Aes256Gcm::new(&content);
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: SEALED_FOR_ALL_MAGIC,
            },
        )
        // AES-GCM fails only beyond 64 GiB of plaintext.
        .unwrap_or_default();
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// The shares (each as [`DataKey::seal_bytes`] made it) and the sealed content of a
/// value [`seal_for_all`] made.
fn split_sealed_for_all(sealed: &[u8]) -> Result<(Vec<&[u8]>, &[u8]), VaultError> {
    let unreadable = VaultError::Unreadable("not a value sealed for its people");
    let mut rest = sealed
        .strip_prefix(SEALED_FOR_ALL_MAGIC.as_slice())
        .ok_or(unreadable)?;
    let take = |rest: &mut &[u8], count: usize| -> Result<Vec<u8>, VaultError> {
        if rest.len() < count {
            return Err(VaultError::Unreadable("a sealed value is cut short"));
        }
        let (head, tail) = rest.split_at(count);
        *rest = tail;
        Ok(head.to_vec())
    };
    let count = take(&mut rest, 2)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    let mut shares = Vec::with_capacity(count);
    for _ in 0..count {
        let length = take(&mut rest, 2)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if rest.len() < length {
            return Err(VaultError::Unreadable("a sealed value is cut short"));
        }
        let (share, tail) = rest.split_at(length);
        shares.push(share);
        rest = tail;
    }
    Ok((shares, rest))
}

/// The key id, nonce and ciphertext of bytes [`DataKey::seal_bytes`] made.
pub fn split_sealed_bytes(sealed: &[u8]) -> Result<(uuid::Uuid, &[u8], &[u8]), VaultError> {
    let rest = sealed
        .strip_prefix(SEALED_BYTES_MAGIC.as_slice())
        .ok_or(VaultError::Unreadable("not sealed bytes"))?;
    if rest.len() < 16 + 12 + 16 {
        return Err(VaultError::Unreadable("sealed bytes too short"));
    }
    let (id, rest) = rest.split_at(16);
    let (nonce, ciphertext) = rest.split_at(12);
    let key_id = uuid::Uuid::from_slice(id).map_err(|_| VaultError::Unreadable("bad key id"))?;
    Ok((key_id, nonce, ciphertext))
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

    fn unwrap(
        &self,
        person: Person,
        key_id: uuid::Uuid,
        wrapped: &[u8],
    ) -> Result<DataKey, VaultError> {
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
            key_id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// Key rows as read: (person, key id, wrapped key).
    fn unwrap_rows(
        &self,
        rows: Vec<(Vec<u8>, uuid::Uuid, Vec<u8>)>,
    ) -> Result<Vec<(Person, DataKey)>, VaultError> {
        rows.into_iter()
            .map(|(person, key_id, wrapped)| {
                let bytes = <[u8; 32]>::try_from(person.as_slice())
                    .map_err(|_| VaultError::Unreadable("a stored person is not 32 bytes"))?;
                let person = Person(bytes);
                Ok((person, self.unwrap(person, key_id, &wrapped)?))
            })
            .collect()
    }

    /// `people` in order without repeats, their names as bound, and a fresh key for
    /// each, wrapped (kept only for those new to the vault).
    fn candidates(
        &self,
        people: impl IntoIterator<Item = Person>,
    ) -> (Vec<Person>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut wanted: Vec<Person> = people.into_iter().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let names = wanted.iter().map(|person| person.0.to_vec()).collect();
        let wrapped = wanted
            .iter()
            .map(|person| self.wrap(person, Aes256Gcm::generate_key(&mut OsRng).as_slice()))
            .collect();
        (wanted, names, wrapped)
    }

    /// The person's key, made now if they have none (yet, or since an erasure).
    pub async fn key_for(
        &self,
        connection: &mut PgConnection,
        person: Person,
    ) -> Result<DataKey, VaultError> {
        self.keys_for(connection, &[person])
            .await?
            .remove(&person)
            .ok_or(VaultError::ErasedMeanwhile)
    }

    /// The keys of `people`, made now for those who have none yet, in two statements
    /// for the whole batch (ingest seals a group of referrals at once). Someone erased
    /// gets a new key: what was sealed before stays shut. The rows are read `FOR
    /// SHARE`: an erasure waits for the caller's transaction (in which it records whose
    /// its referrals are), so it never misses a referral being sealed.
    pub async fn keys_for(
        &self,
        connection: &mut PgConnection,
        people: &[Person],
    ) -> Result<HashMap<Person, DataKey>, VaultError> {
        let (wanted, names, wrapped) = self.candidates(people.iter().copied());
        // In person order, so two batches never wait on each other's rows.
        sqlx::query(
            "INSERT INTO vault_person_keys (person, wrapped_key)
             SELECT batch.person, batch.wrapped_key
             FROM unnest($1::BYTEA[], $2::BYTEA[]) AS batch(person, wrapped_key)
             ORDER BY batch.person
             ON CONFLICT (person) DO NOTHING",
        )
        .bind(&names)
        .bind(&wrapped)
        .execute(&mut *connection)
        .await?;
        let rows: Vec<(Vec<u8>, uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT person, key_id, wrapped_key FROM vault_person_keys
             WHERE person = ANY($1) ORDER BY person FOR SHARE",
        )
        .bind(&names)
        .fetch_all(&mut *connection)
        .await?;
        let keys: HashMap<Person, DataKey> = self.unwrap_rows(rows)?.into_iter().collect();
        if keys.len() < wanted.len() {
            // Erased between the two statements: sealed now, it would be for no one.
            return Err(VaultError::ErasedMeanwhile);
        }
        Ok(keys)
    }

    /// The keys of `people` that exist, in one query: an erased person (or one never
    /// given a key) is absent, and what was sealed for them stays shut.
    pub async fn keys(
        &self,
        connection: &mut PgConnection,
        people: &[Person],
    ) -> Result<HashMap<Person, DataKey>, VaultError> {
        let wanted: Vec<Vec<u8>> = people.iter().map(|person| person.0.to_vec()).collect();
        let rows: Vec<(Vec<u8>, uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT person, key_id, wrapped_key FROM vault_person_keys WHERE person = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *connection)
        .await?;
        Ok(self.unwrap_rows(rows)?.into_iter().collect())
    }

    /// The keys with these ids that still exist, in one query (what readers of sealed
    /// values need): a destroyed key is absent.
    pub async fn keys_by_id(
        &self,
        connection: &mut PgConnection,
        key_ids: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, DataKey>, VaultError> {
        let rows: Vec<(Vec<u8>, uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT person, key_id, wrapped_key FROM vault_person_keys WHERE key_id = ANY($1)",
        )
        .bind(key_ids)
        .fetch_all(&mut *connection)
        .await?;
        Ok(self
            .unwrap_rows(rows)?
            .into_iter()
            .map(|(_, key)| (key.key_id, key))
            .collect())
    }

    /// Erases `person`: their key is destroyed (after any transaction sealing for them
    /// has committed: see [`Vault::keys_for`]), the record of which referrals were
    /// theirs deleted, and that an erasure happened recorded (when, by whom, how many
    /// referrals; nothing about the person). Returns what it did. Commit the
    /// connection's transaction for it to stand.
    pub async fn erase(
        &self,
        connection: &mut PgConnection,
        person: Person,
        by: &str,
    ) -> Result<Erased, VaultError> {
        let key_destroyed = sqlx::query("DELETE FROM vault_person_keys WHERE person = $1")
            .bind(person.0.as_slice())
            .execute(&mut *connection)
            .await?
            .rows_affected()
            > 0;
        let mut referrals: Vec<uuid::Uuid> = sqlx::query_scalar(
            "DELETE FROM vault_referrals WHERE person = $1 RETURNING referral_id",
        )
        .bind(person.0.as_slice())
        .fetch_all(&mut *connection)
        .await?;
        referrals.sort_unstable();
        sqlx::query(
            "INSERT INTO vault_erasures (erased_at, erased_by, referrals) VALUES (now(), $1, $2)",
        )
        .bind(by)
        .bind(i32::try_from(referrals.len()).unwrap_or(i32::MAX))
        .execute(&mut *connection)
        .await?;
        Ok(Erased {
            key_destroyed,
            referrals: referrals.into_iter().map(ReferralId::from_uuid).collect(),
        })
    }
}

/// What [`Vault::erase`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Whether a key was destroyed (false: none existed, or erased before).
    pub key_destroyed: bool,
    /// The referrals sealed for the person, in id order.
    pub referrals: Vec<ReferralId>,
}

impl Vault {
    /// The person a referral is about: by NHS number when it has one, else by the
    /// referral alone.
    pub fn person_of(&self, received: &ReferralReceived) -> Person {
        self.person_with(received.subject.nhs_number.as_ref(), received.referral_id)
    }

    /// The person of a referral with this NHS number (if it has one).
    pub fn person_with(&self, nhs_number: Option<&NhsNumber>, referral_id: ReferralId) -> Person {
        match nhs_number {
            Some(number) => self.person_with_nhs_number(&number.to_string()),
            None => self.person_of_referral(&referral_id.to_string()),
        }
    }

    /// A dead letter's people: everyone whose valid NHS number is written in its
    /// bytes; none when it names nobody by NHS number.
    pub fn people_of_dead_letter(&self, bytes: &[u8]) -> Vec<Person> {
        let mut people: Vec<Person> = nhs_numbers_in(bytes)
            .iter()
            .map(|number| self.person_with_nhs_number(&number.to_string()))
            .collect();
        people.sort_unstable();
        people.dedup();
        people
    }

    /// The stand-in person of dead letters that name nobody by NHS number, one per
    /// `day` (`YYYY-MM-DD`): no erasure by NHS number reaches them, their topic's
    /// retention does, and the vault gains one key a day for them, not one each.
    pub fn person_of_anonymous_dead_letters(&self, day: &str) -> Person {
        self.name("dead-letters-of-day", day)
    }

    /// Seals what identifies the person of each referral under their key (made now
    /// for people new to the vault) and records whose each referral is, in one
    /// statement for the batch (ingest's group commit calls it once per group).
    /// Referrals already sealed are left as they are.
    pub async fn seal_referrals(
        &self,
        connection: &mut PgConnection,
        referrals: &mut [&mut ReferralReceived],
    ) -> Result<(), VaultError> {
        let people: Vec<(usize, Person)> = referrals
            .iter()
            .enumerate()
            .filter(|(_, received)| received.sealed.is_none())
            .map(|(index, received)| (index, self.person_of(received)))
            .collect();
        if people.is_empty() {
            return Ok(());
        }
        let (wanted, names, wrapped) = self.candidates(people.iter().map(|(_, person)| *person));
        let ids: Vec<uuid::Uuid> = people
            .iter()
            .map(|(index, _)| *referrals[*index].referral_id.as_uuid())
            .collect();
        let whose: Vec<Vec<u8>> = people.iter().map(|(_, person)| person.0.to_vec()).collect();
        // Keys made for people new to the vault, the others' read FOR SHARE (an erasure
        // waits for this statement, and then finds these referrals), and whose each
        // referral is: one statement, so one transaction. A row the statement inserts
        // is not in its own snapshot, so `fresh` and `existing` never overlap.
        let rows: Vec<(Vec<u8>, uuid::Uuid, Vec<u8>)> = sqlx::query_as(
            "WITH fresh AS (
                 INSERT INTO vault_person_keys (person, wrapped_key)
                 SELECT batch.person, batch.wrapped_key
                 FROM unnest($1::BYTEA[], $2::BYTEA[]) AS batch(person, wrapped_key)
                 ORDER BY batch.person
                 ON CONFLICT (person) DO NOTHING
                 RETURNING person, key_id, wrapped_key
             ), existing AS (
                 SELECT person, key_id, wrapped_key FROM vault_person_keys
                 WHERE person = ANY($1) ORDER BY person FOR SHARE
             ), recorded AS (
                 INSERT INTO vault_referrals (referral_id, person)
                 SELECT * FROM unnest($3::UUID[], $4::BYTEA[]) ORDER BY 1
                 ON CONFLICT (referral_id) DO NOTHING
             )
             SELECT person, key_id, wrapped_key FROM fresh
             UNION ALL SELECT person, key_id, wrapped_key FROM existing",
        )
        .bind(&names)
        .bind(&wrapped)
        .bind(&ids)
        .bind(&whose)
        .fetch_all(&mut *connection)
        .await?;
        let mut keys: HashMap<Person, DataKey> = self.unwrap_rows(rows)?.into_iter().collect();
        // Someone new whose key another batch made at the same moment: that row was
        // not in the statement's snapshot, but is committed now (the insert waited
        // for it), and a second look finds it.
        let missing: Vec<Person> = wanted
            .iter()
            .filter(|person| !keys.contains_key(person))
            .copied()
            .collect();
        if !missing.is_empty() {
            keys.extend(self.keys(connection, &missing).await?);
        }
        for (index, person) in people {
            // Erased meanwhile.
            let key = keys.get(&person).ok_or(VaultError::ErasedMeanwhile)?;
            key.seal_referral(referrals[index]);
        }
        Ok(())
    }

    /// Records whose each referral is (for erasure), in one statement.
    pub async fn record_referrals(
        &self,
        connection: &mut PgConnection,
        whose: &[(uuid::Uuid, Person)],
    ) -> Result<(), VaultError> {
        if whose.is_empty() {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = whose.iter().map(|(id, _)| *id).collect();
        let names: Vec<Vec<u8>> = whose.iter().map(|(_, person)| person.0.to_vec()).collect();
        sqlx::query(
            "INSERT INTO vault_referrals (referral_id, person)
             SELECT * FROM unnest($1::UUID[], $2::BYTEA[]) ORDER BY 1
             ON CONFLICT (referral_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&names)
        .execute(&mut *connection)
        .await?;
        Ok(())
    }

    /// Opens the sealed referrals of a batch with one query for their keys. Those
    /// whose person was erased (no key, or not the key they were sealed under) stay
    /// redacted; returns how many did.
    pub async fn open_referrals(
        &self,
        connection: &mut PgConnection,
        referrals: &mut [&mut ReferralReceived],
    ) -> Result<usize, VaultError> {
        let mut ids: Vec<uuid::Uuid> = referrals
            .iter()
            .filter_map(|received| received.sealed.as_ref())
            .filter_map(|sealed| sealed_key_id(sealed).ok())
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        ids.sort_unstable();
        ids.dedup();
        let keys = self.keys_by_id(connection, &ids).await?;
        let mut redacted = 0;
        for received in referrals.iter_mut() {
            let Some(sealed) = &received.sealed else {
                continue;
            };
            let opened = sealed_key_id(sealed)
                .and_then(|id| {
                    keys.get(&id)
                        .ok_or(VaultError::Unreadable("no key: the person was erased"))
                })
                .and_then(|key| key.open(sealed))
                .and_then(|plaintext| {
                    serde_json::from_slice::<ReferralIdentity>(&plaintext)
                        .map_err(|_| VaultError::Unreadable("the sealed identity does not parse"))
                });
            match opened {
                Ok(identity) => received.restore_identity(identity),
                Err(error) => {
                    tracing::debug!(referral = %received.referral_id, %error, "a referral stays redacted");
                    redacted += 1;
                }
            }
        }
        Ok(redacted)
    }

    /// Opens a value [`seal_for_all`] sealed, if every key it was sealed under still
    /// exists (one query).
    pub async fn open_sealed_for_all(
        &self,
        connection: &mut PgConnection,
        sealed: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let (shares, content) = split_sealed_for_all(sealed)?;
        let mut ids = Vec::with_capacity(shares.len());
        for share in &shares {
            ids.push(split_sealed_bytes(share)?.0);
        }
        let keys = self.keys_by_id(connection, &ids).await?;
        let mut key = [0u8; 32];
        for (share, id) in shares.iter().zip(&ids) {
            let opened = keys
                .get(id)
                .ok_or(VaultError::Unreadable(
                    "no key: one of its people was erased",
                ))?
                .open_bytes(share)?;
            if opened.len() != 32 {
                return Err(VaultError::Unreadable("a key share is not 32 bytes"));
            }
            for (byte, other) in key.iter_mut().zip(opened) {
                *byte ^= other;
            }
        }
        if content.len() < 12 {
            return Err(VaultError::Unreadable("a sealed value is cut short"));
        }
        let (nonce, ciphertext) = content.split_at(12);
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: SEALED_FOR_ALL_MAGIC,
                },
            )
            .map_err(|_| {
                VaultError::Unreadable("the tag does not verify (altered, or another key)")
            })
    }

    /// The person a referral was sealed for, if this vault sealed it.
    pub async fn person_of_sealed_referral(
        &self,
        connection: &mut PgConnection,
        referral_id: ReferralId,
    ) -> Result<Option<Person>, VaultError> {
        let found: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT person FROM vault_referrals WHERE referral_id = $1")
                .bind(referral_id.as_uuid())
                .fetch_optional(&mut *connection)
                .await?;
        Ok(found.and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Person)))
    }

    /// The referrals sealed for `person`, in id order.
    pub async fn referrals_of(
        &self,
        connection: &mut PgConnection,
        person: Person,
    ) -> Result<Vec<ReferralId>, VaultError> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT referral_id FROM vault_referrals WHERE person = $1 ORDER BY referral_id",
        )
        .bind(person.0.as_slice())
        .fetch_all(&mut *connection)
        .await?;
        Ok(ids.into_iter().map(ReferralId::from_uuid).collect())
    }
}

/// The valid NHS numbers written in `bytes` (ten digits, together or in groups
/// split by single spaces or hyphens, passing the Modulus 11 check), in the order they
/// appear.
pub fn nhs_numbers_in(bytes: &[u8]) -> Vec<NhsNumber> {
    nhs_numbers_at(bytes)
        .into_iter()
        .map(|(_, number)| number)
        .collect()
}

/// [`nhs_numbers_in`], with where each is written.
fn nhs_numbers_at(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, NhsNumber)> {
    let mut found = Vec::new();
    // A run of digit groups, each split from the next by one separator.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start: Option<usize> = None;
    let mut check = |groups: &mut Vec<std::ops::Range<usize>>| {
        for first in 0..groups.len() {
            let mut digits = String::new();
            let mut end = groups[first].start;
            for group in &groups[first..] {
                digits.extend(bytes[group.clone()].iter().map(|&byte| byte as char));
                end = group.end;
                if digits.len() >= 10 {
                    break;
                }
            }
            if digits.len() == 10 {
                if let Ok(number) = NhsNumber::parse(&digits) {
                    found.push((groups[first].start..end, number));
                }
            }
        }
        groups.clear();
    };
    for (index, &byte) in bytes.iter().enumerate() {
        if byte.is_ascii_digit() {
            start.get_or_insert(index);
            continue;
        }
        if let Some(from) = start.take() {
            groups.push(from..index);
            if matches!(byte, b' ' | b'-') {
                continue; // the run may go on after one separator
            }
        }
        check(&mut groups);
    }
    if let Some(from) = start {
        groups.push(from..bytes.len());
    }
    check(&mut groups);
    found
}

/// Where a full UK postcode (`LS1 4AP`, `ls14ap`) starts at `at` in `bytes`, its end.
fn postcode_at(bytes: &[u8], at: usize) -> Option<usize> {
    let letter = |index: usize| bytes.get(index).is_some_and(u8::is_ascii_alphabetic);
    let digit = |index: usize| bytes.get(index).is_some_and(u8::is_ascii_digit);
    if at > 0 && bytes[at - 1].is_ascii_alphanumeric() || !letter(at) {
        return None;
    }
    let mut index = at + 1;
    if letter(index) {
        index += 1;
    }
    if !digit(index) {
        return None;
    }
    index += 1;
    // The outward code may have one more letter or digit, then the inward code.
    for outward_end in [index + 1, index] {
        if outward_end > index && !(letter(index) || digit(index)) {
            continue;
        }
        let mut inward = outward_end;
        if bytes.get(inward) == Some(&b' ') {
            inward += 1;
        }
        if digit(inward)
            && letter(inward + 1)
            && letter(inward + 2)
            && !bytes.get(inward + 3).is_some_and(u8::is_ascii_alphanumeric)
        {
            return Some(inward + 3);
        }
    }
    None
}

/// `text` with every valid NHS number and full postcode in it masked: what may stand
/// in a header beside a sealed body (a dead letter's reason).
pub fn mask_identifiers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut masked: Vec<std::ops::Range<usize>> = nhs_numbers_at(bytes)
        .into_iter()
        .map(|(range, _)| range)
        .collect();
    let mut at = 0;
    while at < bytes.len() {
        match postcode_at(bytes, at) {
            Some(end) => {
                masked.push(at..end);
                at = end;
            }
            None => at += 1,
        }
    }
    masked.sort_by_key(|range| range.start);
    let mut out = String::with_capacity(text.len());
    let mut next = 0;
    for range in masked {
        if range.start < next {
            continue;
        }
        // Both kinds are ASCII, so their ends are character boundaries.
        out.push_str(&text[next..range.start]);
        out.push_str("[redacted]");
        next = range.end;
    }
    out.push_str(&text[next..]);
    out
}

#[cfg(test)]
mod tests;

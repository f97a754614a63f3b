use super::*;

fn vault(secret: &str) -> Vault {
    Vault::new(&SecretString::from(secret)).unwrap()
}

const SECRET: &str = "vault-tests-secret-0123456789abcdef0123456789";

/// A data key without the database: made and wrapped as `key_for` makes one.
fn key(vault: &Vault, person: Person) -> DataKey {
    let fresh = Aes256Gcm::generate_key(&mut OsRng);
    vault
        .unwrap(
            person,
            uuid::Uuid::now_v7(),
            &vault.wrap(&person, fresh.as_slice()),
        )
        .unwrap()
}

#[test]
fn a_sealed_value_opens_with_its_persons_key_and_no_other() {
    let vault = vault(SECRET);
    let ada = vault.person_with_nhs_number("999 000 0018");
    let tobias = vault.person_with_nhs_number("9990000026");
    let (ada_key, tobias_key) = (key(&vault, ada), key(&vault, tobias));
    let sealed = ada_key.seal(br#"{"family":"Brightwater"}"#);
    assert!(!sealed.ciphertext.contains("Brightwater"));
    assert_eq!(sealed_key_id(&sealed).unwrap(), ada_key.key_id());
    assert!(
        !sealed.key.contains(&ada.to_string()),
        "the person is not named"
    );
    assert_eq!(
        ada_key.open(&sealed).unwrap(),
        br#"{"family":"Brightwater"}"#
    );
    assert!(matches!(
        tobias_key.open(&sealed),
        Err(VaultError::Unreadable(_))
    ));
    // Claiming to be under Tobias's key does not help: the key id is bound into the tag.
    let relabelled = Sealed {
        key: tobias_key.key_id().to_string(),
        ..sealed.clone()
    };
    assert!(tobias_key.open(&relabelled).is_err());
    // Nor does a second key for the same person (erased, then made again).
    assert!(key(&vault, ada).open(&sealed).is_err());
}

#[test]
fn an_altered_value_does_not_open() {
    let vault = vault(SECRET);
    let key = key(&vault, vault.person_of_referral("r-1"));
    let mut sealed = key.seal(b"LS1 4AP");
    let mut bytes = BASE64.decode(&sealed.ciphertext).unwrap();
    bytes[0] ^= 1;
    sealed.ciphertext = BASE64.encode(bytes);
    assert!(matches!(key.open(&sealed), Err(VaultError::Unreadable(_))));
}

#[test]
fn people_are_named_by_a_keyed_hash_of_their_nhs_number_or_referral() {
    let vault = vault(SECRET);
    assert_eq!(
        vault.person_with_nhs_number("999 000 0018"),
        vault.person_with_nhs_number("9990000018"),
        "spacing does not matter"
    );
    assert_ne!(
        vault.person_with_nhs_number("9990000018"),
        vault.person_of_referral("9990000018"),
        "the kinds are kept apart"
    );
    let other = self::vault("another-deployments-secret-0123456789abcdef");
    assert_ne!(
        vault.person_with_nhs_number("9990000018"),
        other.person_with_nhs_number("9990000018"),
        "a person's name depends on the deployment's secret"
    );
    let name = vault.person_with_nhs_number("9990000018").to_string();
    assert_eq!(name.len(), 64);
    assert!(!name.contains("9990000018"));
    assert_eq!(
        Person::from_hex(&name),
        Some(vault.person_with_nhs_number("9990000018"))
    );
}

#[test]
fn a_stored_key_opens_only_under_the_vault_secret_that_wrapped_it() {
    let vault = vault(SECRET);
    let person = vault.person_of_referral("r-2");
    let wrapped = vault.wrap(&person, &[7u8; 32]);
    let id = uuid::Uuid::now_v7();
    assert!(vault.unwrap(person, id, &wrapped).is_ok());
    let other = self::vault("another-deployments-secret-0123456789abcdef");
    assert!(matches!(
        other.unwrap(person, id, &wrapped),
        Err(VaultError::Unreadable(_))
    ));
    // Nor under another person's name.
    assert!(vault
        .unwrap(vault.person_of_referral("r-3"), id, &wrapped)
        .is_err());
}

#[test]
fn a_short_vault_secret_is_refused() {
    assert!(matches!(
        Vault::new(&SecretString::from("short")),
        Err(VaultError::WeakSecret)
    ));
}

#[test]
fn nhs_numbers_are_found_in_bytes_however_they_are_spaced_and_only_when_valid() {
    let text = br#"{"nhs":"9990000018","note":"also 999 000 0026, 999-000-0034; not 9990000019; 12 9990000018 7"}"#;
    let found: Vec<String> = nhs_numbers_in(text)
        .iter()
        .map(ToString::to_string)
        .collect();
    // The last among other numbers still counts: better sealed for someone than missed.
    assert_eq!(
        found,
        ["9990000018", "9990000026", "9990000034", "9990000018"]
    );
    assert!(nhs_numbers_in(b"no numbers here, 12345").is_empty());
    assert!(
        nhs_numbers_in(b"99900000181").is_empty(),
        "eleven digits are not one"
    );
}

#[test]
fn a_dead_letters_people_are_everyone_it_names_by_nhs_number() {
    let vault = vault(SECRET);
    assert_eq!(
        vault.people_of_dead_letter(
            b"{\"a\":\"9990000026\",\"b\":\"9990000018\",\"c\":\"9990000018\"}"
        ),
        {
            let mut both = vec![
                vault.person_with_nhs_number("9990000018"),
                vault.person_with_nhs_number("9990000026"),
            ];
            both.sort_unstable();
            both
        }
    );
    assert!(vault.people_of_dead_letter(b"not json").is_empty());
    let day = vault.person_of_anonymous_dead_letters("2026-12-07");
    assert_eq!(day, vault.person_of_anonymous_dead_letters("2026-12-07"));
    assert_ne!(day, vault.person_of_anonymous_dead_letters("2026-12-08"));
}

#[test]
fn a_value_sealed_for_several_people_needs_every_ones_key() {
    let vault = vault(SECRET);
    let ada = key(&vault, vault.person_with_nhs_number("9990000018"));
    let tobias = key(&vault, vault.person_with_nhs_number("9990000026"));
    let sealed = seal_for_all(&[&ada, &tobias], b"both of them");
    let (shares, content) = split_sealed_for_all(&sealed).unwrap();
    assert_eq!(shares.len(), 2);
    assert!(!content.windows(12).any(|window| window == b"both of them"));
    // Each share opens with its own key only; the two together give the content key.
    let first = ada.open_bytes(shares[0]).unwrap();
    let second = tobias.open_bytes(shares[1]).unwrap();
    assert!(tobias.open_bytes(shares[0]).is_err());
    let mut content_key = [0u8; 32];
    for ((byte, a), b) in content_key.iter_mut().zip(first).zip(second) {
        *byte = a ^ b;
    }
    let (nonce, ciphertext) = content.split_at(12);
    let opened = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&content_key))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: SEALED_FOR_ALL_MAGIC,
            },
        )
        .unwrap();
    assert_eq!(opened, b"both of them");
    // One person alone: one share, which is the content key itself.
    let alone = seal_for_all(&[&ada], b"only Ada");
    assert_eq!(split_sealed_for_all(&alone).unwrap().0.len(), 1);
    // Cut short or not sealed at all: refused, not misread.
    assert!(split_sealed_for_all(&sealed[..10]).is_err());
    assert!(split_sealed_for_all(b"plain text").is_err());
}

#[test]
fn identifiers_in_a_reason_are_masked_and_the_rest_kept() {
    let reason = r#"{"diagnostics":"NHS number 999 000 0018 at LS1 4AP (and lw12ab) is not found; code X12 3 stays"}"#;
    let masked = mask_identifiers(reason);
    assert_eq!(
        masked,
        r#"{"diagnostics":"NHS number [redacted] at [redacted] (and [redacted]) is not found; code X12 3 stays"}"#
    );
    assert_eq!(mask_identifiers("nothing to hide"), "nothing to hide");
}

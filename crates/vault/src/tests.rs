use super::*;

fn vault(secret: &str) -> Vault {
    Vault::new(&SecretString::from(secret)).unwrap()
}

const SECRET: &str = "vault-tests-secret-0123456789abcdef0123456789";

/// A data key without the database: made and wrapped as `key_for` makes one.
fn key(vault: &Vault, person: Person) -> DataKey {
    let fresh = Aes256Gcm::generate_key(&mut OsRng);
    vault
        .unwrap(person, &vault.wrap(&person, fresh.as_slice()))
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
    assert_eq!(sealed_person(&sealed).unwrap(), ada);
    assert_eq!(
        ada_key.open(&sealed).unwrap(),
        br#"{"family":"Brightwater"}"#
    );
    assert!(matches!(
        tobias_key.open(&sealed),
        Err(VaultError::Unreadable(_))
    ));
    // Claiming to be Tobias's does not help: the person is bound into the tag.
    let relabelled = Sealed {
        person: tobias.to_string(),
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
    assert!(vault.unwrap(person, &wrapped).is_ok());
    let other = self::vault("another-deployments-secret-0123456789abcdef");
    assert!(matches!(
        other.unwrap(person, &wrapped),
        Err(VaultError::Unreadable(_))
    ));
    // Nor under another person's name.
    assert!(vault
        .unwrap(vault.person_of_referral("r-3"), &wrapped)
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
fn a_dead_letter_is_its_nhs_numbers_person_or_one_of_its_own() {
    let vault = vault(SECRET);
    assert_eq!(
        vault.person_of_dead_letter(b"{\"value\":\"9990000018\"}", "a"),
        vault.person_with_nhs_number("9990000018")
    );
    let anonymous = vault.person_of_dead_letter(b"not json", "a");
    assert_ne!(anonymous, vault.person_of_dead_letter(b"not json", "b"));
    assert_ne!(anonymous, vault.person_of_referral("a"));
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

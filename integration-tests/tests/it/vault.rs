//! The vault's keys in Postgres: one per person however often asked for, read in one
//! query for a batch, and gone for good when the person is erased; sealed referrals
//! open with them until then.

use linkwork_vault::{Vault, VaultError};
use secrecy::SecretString;

use crate::helpers::stack;

/// A database of the test's own with the vault's table, and a vault.
async fn vault_and_database() -> (linkwork_store::sqlx::PgPool, Vault) {
    let pool = stack().database().await;
    linkwork_vault::migrator().run(&pool).await.unwrap();
    let vault = Vault::new(&SecretString::from(
        "vault-integration-secret-0123456789abcdef0123",
    ))
    .unwrap();
    (pool, vault)
}

#[tokio::test]
async fn a_persons_key_is_made_once_read_in_batches_and_destroyed_by_erasure_for_good() {
    let (pool, vault) = vault_and_database().await;
    let ada = vault.person_with_nhs_number("9990000018");
    let tobias = vault.person_with_nhs_number("9990000026");
    let mut connection = pool.acquire().await.unwrap();

    // Made on first use, the same key after.
    let sealed = vault
        .key_for(&mut connection, ada)
        .await
        .unwrap()
        .seal(b"Ada Brightwater, 1 Invented Row");
    let again = vault.key_for(&mut connection, ada).await.unwrap();
    assert_eq!(
        again.open(&sealed).unwrap(),
        b"Ada Brightwater, 1 Invented Row"
    );
    let tobias_sealed = vault
        .key_for(&mut connection, tobias)
        .await
        .unwrap()
        .seal(b"Tobias Quillfeather");
    let stored: Vec<Vec<u8>> =
        linkwork_store::sqlx::query_scalar("SELECT wrapped_key FROM vault_person_keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2, "one key per person");

    // A batch of both, in one query.
    let keys = vault.keys(&mut connection, &[ada, tobias]).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[&tobias].open(&tobias_sealed).is_ok());

    // Erased: the key is gone, nothing opens.
    assert!(
        vault
            .erase(&mut connection, ada, "ig-lead")
            .await
            .unwrap()
            .key_destroyed
    );
    assert!(
        !vault
            .erase(&mut connection, ada, "ig-lead")
            .await
            .unwrap()
            .key_destroyed
    );
    let keys = vault.keys(&mut connection, &[ada, tobias]).await.unwrap();
    assert!(!keys.contains_key(&ada));
    assert!(
        keys[&tobias].open(&tobias_sealed).is_ok(),
        "others are untouched"
    );
    // Referred again later, Ada gets a new key, which opens nothing sealed before.
    let renewed = vault.key_for(&mut connection, ada).await.unwrap();
    assert!(matches!(
        renewed.open(&sealed),
        Err(VaultError::Unreadable(_))
    ));
    // Each erasure is recorded, and nothing of the person with it: no keyed hash of
    // the NHS number (reversible by whoever holds the vault secret) outlives it.
    let erasures: Vec<(String, i32)> = linkwork_store::sqlx::query_as(
        "SELECT erased_by, referrals FROM vault_erasures ORDER BY erased_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        erasures,
        vec![("ig-lead".to_owned(), 0), ("ig-lead".to_owned(), 0)]
    );
    let kept: i64 = linkwork_store::sqlx::query_scalar(
        "SELECT count(*) FROM vault_person_keys WHERE person = $1",
    )
    .bind(ada.as_bytes().as_slice())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 1, "only Ada's new key, made after the erasures");
    // What was sealed for Ada stays sealed under every key the vault holds.
    let keys = vault.keys(&mut connection, &[ada, tobias]).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.values().all(|key| key.open(&sealed).is_err()));
}

#[tokio::test]
async fn a_batch_of_people_gets_its_keys_in_one_go_and_an_erased_person_a_new_one() {
    let (pool, vault) = vault_and_database().await;
    let people: Vec<_> = linkwork_testkit::NHS_NUMBERS
        .iter()
        .map(|number| vault.person_with_nhs_number(number))
        .collect();
    let mut connection = pool.acquire().await.unwrap();
    // One of them already has a key; another was erased.
    let sealed = vault
        .key_for(&mut connection, people[0])
        .await
        .unwrap()
        .seal(b"kept");
    vault.key_for(&mut connection, people[1]).await.unwrap();
    vault
        .erase(&mut connection, people[1], "ig-lead")
        .await
        .unwrap();
    // The batch names someone twice.
    let mut batch = people.clone();
    batch.push(people[2]);
    let keys = vault.keys_for(&mut connection, &batch).await.unwrap();
    assert_eq!(
        keys.len(),
        people.len(),
        "one key each, the erased a new one"
    );
    assert_eq!(
        keys[&people[0]].open(&sealed).unwrap(),
        b"kept",
        "an existing key is kept, not replaced"
    );
    // Asking again changes nothing.
    let again = vault.keys_for(&mut connection, &batch).await.unwrap();
    let sealed_again = again[&people[3]].seal(b"same key");
    assert!(keys[&people[3]].open(&sealed_again).is_ok());
}

#[tokio::test]
async fn a_batch_of_referrals_is_sealed_on_the_log_opens_for_its_readers_and_stays_shut_once_erased(
) {
    use linkwork_domain::need::Need;
    use linkwork_domain::DomainEvent;
    let (pool, vault) = vault_and_database().await;
    let at = chrono::Utc::now();
    let originals = [
        crate::router::referral(1, &[Need::Loneliness], at),
        crate::router::referral(2, &[Need::Loneliness], at),
    ];
    let mut sealed = originals.clone();
    let mut connection = pool.acquire().await.unwrap();
    vault
        .seal_referrals(&mut connection, &mut sealed.iter_mut().collect::<Vec<_>>())
        .await
        .unwrap();
    // On the log: nothing that identifies either person.
    for (original, sealed) in originals.iter().zip(&sealed) {
        let body = String::from_utf8(
            linkwork_domain::ReferralEvent::Received(Box::new(sealed.clone())).encode(),
        )
        .unwrap();
        let number = original.subject.nhs_number.as_ref().unwrap().to_string();
        let family = original
            .subject
            .name
            .as_ref()
            .unwrap()
            .family
            .clone()
            .unwrap();
        for secret in [
            number.as_str(),
            family.as_str(),
            "LW1 2AB",
            "1950-05-17",
            "Dr Example",
        ] {
            assert!(!body.contains(secret), "{secret} is on the log: {body}");
        }
        assert!(sealed.is_redacted());
        assert_eq!(
            sealed.needs, original.needs,
            "what routing needs beyond the person stays"
        );
    }
    // Each referral is recorded as its person's; on the log it names only a random
    // key id.
    let first = vault.person_of(&originals[0]);
    assert_eq!(
        vault.referrals_of(&mut connection, first).await.unwrap(),
        vec![originals[0].referral_id]
    );
    let on_log = sealed[0].sealed.as_ref().unwrap();
    assert!(uuid::Uuid::parse_str(&on_log.key).is_ok(), "{on_log:?}");
    assert_eq!(
        vault
            .person_of_sealed_referral(&mut connection, originals[1].referral_id)
            .await
            .unwrap(),
        Some(vault.person_of(&originals[1]))
    );

    // A reader opens both, as they were.
    let mut opened = sealed.clone();
    let redacted = vault
        .open_referrals(&mut connection, &mut opened.iter_mut().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(redacted, 0);
    assert_eq!(opened, originals);

    // The first person is erased: theirs stays shut, the other's opens, and the
    // record of whose referral it was goes with the key.
    let erased = vault
        .erase(&mut connection, first, "admin:ig-lead")
        .await
        .unwrap();
    assert!(erased.key_destroyed);
    assert_eq!(erased.referrals, vec![originals[0].referral_id]);
    assert!(vault
        .referrals_of(&mut connection, first)
        .await
        .unwrap()
        .is_empty());
    let mut reopened = sealed.clone();
    let redacted = vault
        .open_referrals(
            &mut connection,
            &mut reopened.iter_mut().collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(redacted, 1);
    assert!(reopened[0].is_redacted());
    assert_eq!(
        reopened[0].subject,
        linkwork_domain::event::Subject::default()
    );
    assert!(reopened[0].service_request.text().contains("REDACTED"));
    assert_eq!(reopened[1], originals[1]);
}

//! The vault's keys in Postgres: one per person however often asked for, read in one
//! query for a batch, and gone for good when the person is erased.

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
async fn a_persons_key_is_made_once_read_in_batches_and_destroyed_by_erasure() {
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

    // Erased: the key is gone, nothing opens, and no key is made for Ada again.
    assert!(vault.erase(&mut connection, ada, "ig-lead").await.unwrap());
    assert!(!vault.erase(&mut connection, ada, "ig-lead").await.unwrap());
    let keys = vault.keys(&mut connection, &[ada, tobias]).await.unwrap();
    assert!(!keys.contains_key(&ada));
    assert!(
        keys[&tobias].open(&tobias_sealed).is_ok(),
        "others are untouched"
    );
    assert!(matches!(
        vault.key_for(&mut connection, ada).await,
        Err(VaultError::Erased(person)) if person == ada
    ));
    let erasures: Vec<(Vec<u8>, String)> =
        linkwork_store::sqlx::query_as("SELECT person, erased_by FROM vault_erasures")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        erasures,
        vec![(ada.as_bytes().to_vec(), "ig-lead".to_owned())]
    );
    // What was sealed for Ada stays sealed: the one key left is Tobias's.
    let keys = vault.keys(&mut connection, &[ada, tobias]).await.unwrap();
    assert!(keys.values().all(|key| key.open(&sealed).is_err()));
}

#[tokio::test]
async fn a_batch_of_people_gets_its_keys_in_one_go_and_an_erased_person_none() {
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
    assert_eq!(keys.len(), people.len() - 1);
    assert!(
        !keys.contains_key(&people[1]),
        "no key is made again for the erased"
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

//! The store's pool: a warmed pool has every connection open before it is used.

use crate::helpers::stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_pool_opens_every_connection_at_once_and_an_unwarmed_one_only_on_demand() {
    let stack = stack();
    let url = stack.admin_database_url().to_owned();
    let mut settings = linkwork_store::DatabaseSettings::new(url);
    settings.max_connections = 4;

    let warmed = linkwork_store::connect(&settings.clone().warm())
        .await
        .expect("a warmed pool");
    assert_eq!(warmed.size(), 4, "every connection opened");
    assert_eq!(warmed.num_idle(), 4, "and waiting, none in use");

    let on_demand = linkwork_store::connect(&settings)
        .await
        .expect("a pool opened on demand");
    assert_eq!(on_demand.size(), 1, "only the connection that tested it");
    warmed.close().await;
    on_demand.close().await;
}

/// A compressible JSON-like text of about `bytes` bytes.
fn document(bytes: usize) -> Vec<u8> {
    let mut text = String::from("{\"note\":\"");
    while text.len() < bytes {
        text.push_str("Synthetic Patient lives alone and would like company. ");
    }
    text.push_str("\"}");
    text.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_and_routing_rows_of_a_few_kilobytes_are_stored_as_written_and_larger_ones_compressed(
) {
    use linkwork_store::outbox::{self, NewOutboxMessage};
    use linkwork_store::sqlx;

    let stack = stack();
    let pool = stack.database().await;
    linkwork_router::migrate(&pool)
        .await
        .expect("router migrations");
    let mut messages = Vec::new();
    for (key, bytes) in [("few-kb", 4_000), ("over-a-page", 40_000)] {
        messages.push(NewOutboxMessage {
            event_id: uuid::Uuid::now_v7(),
            topic: "it.store-toast".into(),
            key: Some(key.into()),
            ce_type: "linkwork.test.v1".into(),
            ce_source: "linkwork/tests".into(),
            ce_time: chrono::Utc::now(),
            traceparent: None,
            tracestate: None,
            extra_headers: vec![],
            payload: document(bytes),
        });
        sqlx::query(
            "INSERT INTO router_referrals (referral_id, status, attempt, confirmed_attempt, tried, \
             reserved, directory_version, received) \
             VALUES ($1, 'requested', 0, 0, '', false, 'v1', $2)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(document(bytes))
        .execute(&pool)
        .await
        .expect("a routing row");
    }
    linkwork_store::in_transaction(&pool, async |connection| {
        outbox::insert(connection, messages).await
    })
    .await
    .expect("outbox rows");

    // pg_column_compression: null for a value stored as written.
    let outbox: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT message_key, pg_column_compression(payload) FROM outbox ORDER BY octet_length(payload)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outbox[0], (Some("few-kb".into()), None), "{outbox:?}");
    assert!(
        outbox[1].1.is_some(),
        "a payload over a page is still compressed: {outbox:?}"
    );
    let routing: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT pg_column_compression(received) FROM router_referrals ORDER BY octet_length(received)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(routing[0], None, "{routing:?}");
    assert!(routing[1].is_some(), "{routing:?}");
}

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

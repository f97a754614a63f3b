//! The pipeline against the local broker with SASL/SCRAM authentication on: the
//! security settings pass from configuration (`LINKWORK_KAFKA_*`) to every client
//! linkwork makes (topic admin, producers, consumers, the outbox relay), and a wrong
//! password gets nothing through.

use std::time::Duration;

use linkwork::topology::{HttpSettings, Services, Topology, TopologySettings};
use linkwork_auth::{Role, Verifier};
use linkwork_bus::{Names, Outbound, Producer};
use linkwork_domain::{ProviderId, ReferralId};
use linkwork_router::directory::{self, DirectoryDocument};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{eventually, stack, unique};

const DEV_SECRET: &str = "sasl-tests-development-secret-0123456789abcdef";

const DIRECTORY: &str = r#"
providers:
  - id: connectors
    name: Community Connectors
    kind: want
    areas: { postcode_districts: [LS1] }
    needs: [social-isolation, loneliness]
    capacity: 100
    accept_within_working_days: 5
"#;

#[tokio::test]
async fn the_pipeline_runs_against_a_broker_that_requires_sasl_scram() {
    let plain = stack();
    let secured = plain.over_sasl_scram(None);
    assert_eq!(
        secured.kafka.properties["security.protocol"], "SASL_PLAINTEXT",
        "the settings came through as configured"
    );
    let pool = secured.database().await;
    let names = Names::isolated(&unique("sasl"));
    let document = DirectoryDocument::parse(DIRECTORY).unwrap();
    // Topics created over the authenticated listener.
    secured.apply_topics(&names, &document.provider_ids()).await;
    linkwork_router::migrate(&pool).await.unwrap();
    let mut transaction = pool.begin().await.unwrap();
    directory::store(&mut transaction, &document, "test")
        .await
        .unwrap();
    transaction.commit().await.unwrap();

    let mut http = HttpSettings::new("127.0.0.1:0".parse().unwrap());
    http.verifier = Some(Verifier::dev(SecretString::from(DEV_SECRET)).unwrap());
    let mut settings = TopologySettings::new(
        secured.kafka.clone(),
        names.clone(),
        Services {
            ingest: true,
            router: true,
            projector: true,
            metrics: false,
        },
        http,
    )
    .unwrap();
    settings.pseudonym_key = Some(linkwork_projector::PseudonymKey::new(&[9u8; 32]).unwrap());
    let topology = Topology::build(settings, pool.clone()).await.unwrap();
    let address = format!("http://{}", topology.http_addr().expect("ingest listens"));
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(topology.run(shutdown.clone()));

    // A GP's referral, acknowledged on the log over SASL, routed, and on the queue.
    let gp = linkwork_auth::dev_token(
        &SecretString::from(DEV_SECRET),
        Role::Source,
        "gp:A81001",
        &Role::Source.default_scopes("gp:A81001"),
        600,
    )
    .unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{address}/fhir/ServiceRequest"))
        .bearer_auth(&gp)
        .header("content-type", "application/fhir+json")
        .body(linkwork_testkit::gp_referral(&unique("SASL")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    let referral = ReferralId::from_uuid(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap());
    let queue = names.provider_queue(&ProviderId::parse("connectors").unwrap());
    let queued = secured.read_topic(&queue, 1, Duration::from_secs(60)).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].key.as_deref(),
        Some(referral.to_string().as_str())
    );
    // And projected: the projector's consumer and the read API over the same settings.
    eventually(
        Duration::from_secs(60),
        "the referral projected",
        || async {
            let status: Option<String> = linkwork_store::sqlx::query_scalar(
                "SELECT status FROM projection.referrals WHERE referral_id = $1",
            )
            .bind(referral.as_uuid())
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
            status.as_deref() == Some("requested")
        },
    )
    .await;

    // A wrong password writes nothing.
    let intruder = plain.over_sasl_scram(Some("not-the-password"));
    let producer =
        Producer::with_delivery_timeout(&intruder.kafka, Duration::from_secs(5)).unwrap();
    let sent = producer
        .send(Outbound {
            topic: &queue,
            key: Some(b"intruder"),
            partition: None,
            payload: b"{}",
            headers: Default::default(),
        })
        .await;
    assert!(sent.is_err(), "a wrong SCRAM password is refused");
    let after = secured.read_topic(&queue, 1, Duration::from_secs(30)).await;
    assert_eq!(after.len(), 1, "nothing more on the queue");
}

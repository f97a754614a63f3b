//! `linkwork-demo --no-wait` on topics of its own: every channel is used, and the
//! summary it prints agrees with the read models and the metrics.

mod common;

use common::{count, figure_after, free_port, fresh_database};

#[test]
fn the_demo_without_waiting_drives_the_borough_and_its_summary_agrees_with_the_read_models_and_metrics(
) {
    let url = fresh_database();
    let names = common::isolated_names("demo");
    let output = common::with_names(&mut common::demo_on(&common::test_brokers()), &names)
        .args([
            "--no-wait",
            "--people",
            "60",
            "--days",
            "60",
            "--day-millis",
            "60",
        ])
        .env("LINKWORK_DATABASE_URL", &url)
        .env("LINKWORK_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LINKWORK_ADMIN_ADDR", "127.0.0.1:0")
        .env(
            "LINKWORK_AUTH_DEV_SECRET",
            "cli-tests-development-secret-0123456789abcdef",
        )
        .env(
            "LINKWORK_PSEUDONYM_KEY",
            "cli-tests-pseudonym-key-0123456789abcdef",
        )
        .env(
            "LINKWORK_VAULT_KEY",
            "demo-tests-vault-key-0123456789abcdef0123456",
        )
        .env("RUST_LOG", "error,tower_http=off")
        .output()
        .expect("linkwork-demo runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every channel was used.
    for channel in [
        "FHIR ServiceRequest:",
        "BaRS message:",
        "FHIR batch entry:",
        "referrals.inbound:",
        "call-log CSV:",
    ] {
        assert!(
            figure_after(&printed, channel) > 0,
            "{channel} in\n{printed}"
        );
    }

    // The printed figures, against the read models queried here.
    let query = |sql: &str| count(&url, sql);
    let received = figure_after(&printed, "referrals received:");
    assert_eq!(received, query("SELECT count(*) FROM projection.referrals"));
    assert!(received >= 60, "the borough's 60 referrals at least");
    assert_eq!(
        figure_after(&printed, "routed to a provider:"),
        query("SELECT count(DISTINCT referral_id) FROM projection.tasks")
    );
    assert_eq!(
        figure_after(&printed, "accepted by a provider:"),
        query("SELECT count(DISTINCT referral_id) FROM projection.history WHERE event_type = 'linkwork.referral.accepted.v1'")
    );
    let completed = figure_after(&printed, "completed:");
    assert_eq!(
        completed,
        query("SELECT count(*) FROM projection.referrals WHERE status = 'completed'")
    );
    assert!(completed > 0, "some people completed:\n{printed}");

    // And against the metrics API's figures for the printed period.
    let dashboard = printed
        .lines()
        .find(|line| line.contains("/dashboard?"))
        .expect("the dashboard URL");
    let period = dashboard.split('?').nth(1).unwrap().trim();
    let end = period.rsplit('=').next().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let snapshot = runtime.block_on(async {
        let pool = linkwork_store::connect(&linkwork_store::DatabaseSettings::new(url.clone()))
            .await
            .unwrap();
        linkwork_metrics::http::snapshot(
            &pool,
            linkwork_metrics::referrals::Period {
                start: chrono::NaiveDate::from_ymd_opt(2025, 5, 31).unwrap(),
                end: end.parse().unwrap(),
            },
            linkwork_metrics::disclosure::Disclosure::default(),
        )
        .await
        .unwrap()
    });
    let call_log = &snapshot.call_log;
    let line = printed
        .lines()
        .find(|line| line.contains("ASC call log:"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "{} -> {} open cases ({} fewer",
            call_log.open_at_baseline, call_log.open_at_end, call_log.reduction
        )),
        "{line} vs {call_log:?}"
    );
    assert!(
        call_log.open_at_baseline.value().unwrap() >= 920,
        "the seed evaluation's backlog"
    );
    let sources: String = snapshot
        .referrals
        .by_source_total
        .iter()
        .map(|(source, count)| format!("{source} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        printed.contains(&format!("({sources})")),
        "{sources} in\n{printed}"
    );
}

//! The ASC call-log feed over HTTP: rows become events, bad rows are reported by
//! line, and importing the same file twice adds nothing.

use linkwork_auth::Role;
use serde_json::Value;

use crate::helpers::{gp_token, spawn_app, token, TestApp};

async fn upload(app: &TestApp, token: &str, csv: &str) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/asc/call-log", app.address))
        .header("content-type", "text/csv")
        .bearer_auth(token)
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_log_imports_reports_bad_rows_by_line_and_a_reimport_adds_nothing() {
    let app = spawn_app().await;
    let prefix = format!("SYN{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let csv = format!(
        "case_id,opened_at,closed_at,closure_reason\n\
         {prefix}-1,2026-01-05T09:00:00Z,2026-02-01T10:00:00Z,diverted-to-community\n\
         {prefix}-2,2026-01-06T09:30:00Z,not-a-time,resolved\n\
         {prefix}-3,2026-01-07 14:00:00,,\n"
    );
    let asc = token(Role::Source, "asc");
    let (status, outcome) = upload(&app, &asc, &csv).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["issue"][0]["severity"], "information");
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .starts_with("3 rows read, 1 refused; 3 events published"));
    assert_eq!(outcome["issue"][1]["severity"], "warning");
    assert_eq!(outcome["issue"][1]["expression"][0], "line 3");
    assert!(outcome["issue"][1]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("closed_at"));

    let (status, again) = upload(&app, &asc, &csv).await;
    assert_eq!(status, 200);
    assert!(
        again["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("0 events published, 3 already on the log"),
        "{again}"
    );
    let events = app
        .read_topic(linkwork_bus::topics::ASC_CALL_LOG, 3)
        .await
        .into_iter()
        .filter(|(key, _, _)| key.starts_with(&prefix))
        .count();
    assert_eq!(
        events, 3,
        "opened and closed for case 1, opened for case 3: once each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_asc_may_send_the_call_log_and_only_as_csv() {
    let app = spawn_app().await;
    let (status, outcome) = upload(
        &app,
        &gp_token(),
        "case_id,opened_at,closed_at,closure_reason\n",
    )
    .await;
    assert_eq!(status, 403, "{outcome}");
    let response = app
        .client
        .post(format!("{}/asc/call-log", app.address))
        .header("content-type", "application/json")
        .bearer_auth(token(Role::Source, "asc"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let (status, outcome) = upload(&app, &token(Role::Source, "asc"), "id,when\nx,y\n").await;
    assert_eq!(status, 400, "{outcome}");
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("case_id,opened_at,closed_at,closure_reason"));
}

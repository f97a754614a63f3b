//! Every `linkwork serve` process answers `/healthz`, `/readyz` and `/metrics` on its
//! admin listener (`LINKWORK_ADMIN_ADDR`), and readiness means what it says: Postgres
//! and the broker answer and each consumer has its assignment.
//!
//! Each process runs on topics and consumer groups of its own (`Names::isolated`), so
//! these run beside every other test.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{free_port, fresh_database, run, Served};

const SECRET: &str = "admin-tests-dev-secret-0123456789abcdef";

struct Process {
    served: Served,
    admin: String,
    client: reqwest::blocking::Client,
}

fn linkwork(
    brokers: &str,
    names: &linkwork_bus::Names,
    database: &str,
    admin_port: u16,
) -> Command {
    let mut command = common::linkwork_on(brokers);
    common::with_names(&mut command, names);
    command
        .env("LINKWORK_DATABASE_URL", database)
        .env("LINKWORK_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LINKWORK_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("LINKWORK_AUTH_DEV_SECRET", SECRET)
        .env(
            "LINKWORK_PSEUDONYM_KEY",
            "admin-tests-pseudonym-key-0123456789abcdef",
        )
        .env(
            "LINKWORK_VAULT_KEY",
            "admin-tests-vault-key-0123456789abcdef012345",
        );
    command
}

impl Process {
    /// `linkwork serve <service>` on a fresh database, once its admin listener answers
    /// `/healthz`.
    fn start(service: &str, brokers: &str, names: &linkwork_bus::Names) -> Self {
        let database = fresh_database();
        let port = free_port();
        let mut child = linkwork(brokers, names, &database, port)
            .args(["serve", service])
            .spawn()
            .expect("linkwork serve starts");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let admin = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("linkwork serve {service} exited before answering: {status}");
            }
            let answered = client
                .get(format!("{admin}/healthz"))
                .send()
                .is_ok_and(|response| response.status().is_success());
            if answered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "serve {service}: no /healthz within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            served: Served(child),
            admin,
            client,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.admin))
            .send()
            .unwrap_or_else(|error| panic!("GET {path}: {error}"));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    }

    /// Polls `/readyz` until it answers `want` (or fails after 60 s); returns its body.
    fn readiness_becomes(&mut self, want: u16) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.served.0.try_wait() {
                panic!("the process exited: {status}");
            }
            let (status, body) = self.get("/readyz");
            if status == want {
                return serde_json::from_str(&body)
                    .unwrap_or_else(|error| panic!("/readyz body {body:?}: {error}"));
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still {status} after 60 s: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts `service`, waits for readiness and checks all three endpoints name each of
/// `consumers`.
fn answers_on_its_admin_listener(service: &str, consumers: &[&str]) {
    let brokers = common::test_brokers();
    let names = common::isolated_names(&format!("admin-{service}"));
    run(common::with_names(&mut common::linkwork_on(&brokers), &names).args(["topics", "apply"]));
    let mut process = Process::start(service, &brokers, &names);

    let (status, body) = process.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));

    let ready = process.readiness_becomes(200);
    assert_eq!(ready["service"], service, "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["postgres"], "ok", "{ready}");
    assert_eq!(ready["broker"], "ok", "{ready}");
    let listed = ready["consumers"].as_object().expect("consumers listed");
    let mut names: Vec<&str> = listed.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = consumers.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "{ready}");
    for consumer in consumers {
        assert_eq!(listed[*consumer]["state"], "assigned", "{ready}");
    }

    let (status, metrics) = process.get("/metrics");
    assert_eq!(status, 200);
    for line in [
        "# TYPE process_resident_memory_bytes gauge".to_owned(),
        "# TYPE process_cpu_seconds counter".to_owned(),
        format!("linkwork_up{{service=\"{service}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    for consumer in consumers {
        let ready_line = format!("linkwork_consumer_ready{{consumer=\"{consumer}\"}} 1");
        assert!(metrics.contains(&ready_line), "{ready_line} in\n{metrics}");
        let records = format!("linkwork_consumer_records_total{{consumer=\"{consumer}\"}}");
        assert!(metrics.contains(&records), "{records} in\n{metrics}");
    }
    // The deadline sweeper's figures, where the router runs and nowhere else.
    let sweeps = "# TYPE linkwork_router_deadline_sweeps counter";
    assert_eq!(
        metrics.contains(sweeps),
        consumers.contains(&"router"),
        "{sweeps} in\n{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let resident: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .expect("a resident memory figure");
    assert!(resident > 1_000_000.0, "resident memory {resident}");
}

#[test]
fn serve_router_answers_health_readiness_and_metrics_on_its_admin_listener() {
    answers_on_its_admin_listener("router", &["router"]);
}

#[test]
fn serve_projector_answers_health_readiness_and_metrics_on_its_admin_listener() {
    answers_on_its_admin_listener("projector", &["projector"]);
}

#[test]
fn serve_metrics_answers_health_readiness_and_metrics_on_its_admin_listener() {
    answers_on_its_admin_listener("metrics", &["metrics"]);
}

#[test]
fn serve_ingest_answers_health_readiness_and_metrics_on_its_admin_listener() {
    answers_on_its_admin_listener(
        "ingest",
        &["audit", "provider.responses", "referrals.inbound"],
    );
}

#[test]
fn serve_all_answers_health_readiness_and_metrics_on_its_admin_listener() {
    answers_on_its_admin_listener(
        "all",
        &[
            "audit",
            "metrics",
            "projector",
            "provider.responses",
            "referrals.inbound",
            "router",
        ],
    );
}

#[test]
fn serve_projector_is_alive_but_not_ready_while_the_broker_does_not_answer() {
    // A port nothing listens on: the broker is down.
    let brokers = format!("127.0.0.1:{}", free_port());
    let mut process = Process::start("projector", &brokers, &common::isolated_names("down"));
    let (status, _) = process.get("/healthz");
    assert_eq!(status, 200, "alive");
    let not_ready = process.readiness_becomes(503);
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    assert_eq!(not_ready["postgres"], "ok", "{not_ready}");
    assert_ne!(not_ready["broker"], "ok", "{not_ready}");
    assert_eq!(
        not_ready["consumers"]["projector"]["state"], "waiting for partitions",
        "{not_ready}"
    );
    let (_, metrics) = process.get("/metrics");
    assert!(
        metrics.contains("linkwork_consumer_ready{consumer=\"projector\"} 0"),
        "{metrics}"
    );
}

//! The `linkwork` binary as users run it, against the local stack.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{free_port, fresh_database, psql, run, sql_list, Served};

fn linkwork() -> Command {
    common::linkwork_on(&common::test_brokers())
}

#[test]
fn topics_apply_creates_missing_topics_then_says_nothing_changed() {
    let prefix = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let file = std::env::temp_dir().join(format!("{prefix}.yaml"));
    std::fs::write(
        &file,
        format!(
            "topics:\n  - {{name: {prefix}.events, partitions: 2, retention: forever, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n  - {{name: '{prefix}.provider.{{provider}}.referrals', per: provider, partitions: 1, retention: 90d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"
        ),
    )
    .unwrap();
    let apply = || {
        let mut command = linkwork();
        command
            .args(["topics", "apply", "--file"])
            .arg(&file)
            .args(["--provider", "townley-connectors"]);
        command
    };
    let first = run(&mut apply());
    assert!(
        first.contains(&format!("created    {prefix}.events")),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "created    {prefix}.provider.townley-connectors.referrals"
        )),
        "{first}"
    );
    assert!(first.contains("2 created"), "{first}");
    let second = run(&mut apply());
    assert!(
        second.contains("nothing to change: all 2 topics already as declared"),
        "{second}"
    );
    assert!(!second.contains("created "), "{second}");
}

#[test]
fn a_missing_broker_setting_is_named_in_the_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_linkwork"))
        .args(["topics", "apply"])
        .env_remove("LINKWORK_KAFKA_BROKERS")
        .output()
        .expect("linkwork runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LINKWORK_KAFKA_BROKERS"), "{stderr}");
}

/// One HTTP request as a stand-in OTLP collector received it.
struct Received {
    request_line: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Accepts one HTTP request on `listener` within `within`, answers 200, returns it.
fn receive_one(listener: TcpListener, within: Duration) -> Option<Received> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + within;
    let (stream, _) = loop {
        match listener.accept() {
            Ok(connection) => break connection,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    };
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut content_type = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(value.trim().to_owned()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .ok()?;
    Some(Received {
        request_line: request_line.trim_end().to_owned(),
        content_type,
        body,
    })
}

#[test]
fn traces_are_exported_over_otlp_and_flushed_before_the_process_exits() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = std::thread::spawn(move || receive_one(listener, Duration::from_secs(30)));

    let prefix = format!("otlp-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let file = std::env::temp_dir().join(format!("{prefix}.yaml"));
    std::fs::write(
        &file,
        format!("topics:\n  - {{name: {prefix}.events, partitions: 1, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"),
    )
    .unwrap();
    run(linkwork()
        .args(["topics", "apply", "--file"])
        .arg(&file)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));

    // The process has exited: whatever it exported was flushed on the way out.
    let received = collector
        .join()
        .unwrap()
        .expect("the collector received an export");
    assert_eq!(received.request_line, "POST /v1/traces HTTP/1.1");
    assert_eq!(
        received.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    let contains = |needle: &[u8]| {
        received
            .body
            .windows(needle.len())
            .any(|window| window == needle)
    };
    assert!(
        contains(b"linkwork.command"),
        "the command's span was exported"
    );
    assert!(
        contains(b"service.name") && contains(b"linkwork"),
        "with the service name"
    );
}

#[test]
fn dev_token_prints_a_token_the_server_accepts() {
    let secret = "cli-tests-development-secret-0123456789abcdef";
    let output = Command::new(env!("CARGO_BIN_EXE_linkwork"))
        .args(["dev-token", "--role", "source", "--client", "gp:A81001"])
        .env("LINKWORK_AUTH_DEV_SECRET", secret)
        .env_remove("LINKWORK_KAFKA_BROKERS")
        .output()
        .expect("linkwork runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = linkwork_auth::Verifier::dev(secrecy::SecretString::from(secret)).unwrap();
    let principal = verifier.verify(token.trim()).unwrap();
    assert_eq!(principal.source().unwrap().to_string(), "gp:A81001");
    assert!(principal.has_scope(linkwork_auth::scopes::REFERRAL_SUBMIT));

    // A client id that does not fit the role is refused at once, as the server would.
    let refused = Command::new(env!("CARGO_BIN_EXE_linkwork"))
        .args(["dev-token", "--role", "source", "--client", "surgery"])
        .env("LINKWORK_AUTH_DEV_SECRET", secret)
        .output()
        .expect("linkwork runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("surgery"), "{stderr}");
}

#[test]
fn asc_import_reports_bad_rows_by_line_and_a_second_import_adds_nothing() {
    let url = fresh_database();
    let prefix = format!("SYN{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let file = std::env::temp_dir().join(format!("{prefix}.csv"));
    std::fs::write(
        &file,
        format!(
            "case_id,opened_at,closed_at,closure_reason\n{prefix}-1,2026-01-05T09:00:00Z,,\n{prefix}-2,2026-01-05T09:00:00Z,2026-01-04T00:00:00Z,resolved\n"
        ),
    )
    .unwrap();
    run(linkwork().args(["topics", "apply"]));
    let import = || {
        let mut command = linkwork();
        command
            .args(["asc", "import"])
            .arg(&file)
            .env("LINKWORK_DATABASE_URL", &url);
        command
    };
    let first = run(&mut import());
    assert!(first.contains("refused    line 3: closed_at"), "{first}");
    assert!(
        first.contains("2 rows read, 1 refused; 1 events published, 0 already on the log"),
        "{first}"
    );
    let second = run(&mut import());
    assert!(
        second.contains("0 events published, 1 already on the log"),
        "{second}"
    );
}

#[test]
fn the_oruk_conformance_record_imports_into_a_new_directory_version_with_its_queue() {
    let url = fresh_database();
    let root = linkwork_testkit::workspace_root();
    let apply = run(linkwork()
        .args(["directory", "apply"])
        .arg(root.join("directory.example.yaml"))
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(apply.starts_with("directory stored as v1-"), "{apply}");
    let again = run(linkwork()
        .args(["directory", "apply"])
        .arg(root.join("directory.example.yaml"))
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(
        again.starts_with("directory unchanged; still v1-"),
        "{again}"
    );

    let import = run(linkwork()
        .args(["directory", "import"])
        .arg(linkwork_testkit::conformance_dir().join("oruk/service_full.json"))
        .args(["--area", "E99000001", "--capacity", "12"])
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(
        import.contains("imported Community Counselling as community-counselling (need service)"),
        "{import}"
    );
    assert!(import.contains("is not a UK postcode"), "{import}");
    assert!(import.contains("directory stored as v2-"), "{import}");
    assert!(import.contains("(7 providers)"), "{import}");

    let show = run(linkwork()
        .args(["directory", "show"])
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(
        show.contains("community-counselling (Community Counselling, need): capacity 12, 5 working days to accept, needs low-mood-anxiety"),
        "{show}"
    );
    // Its queue exists: applying the topics again finds nothing to create for it.
    let topics = run(linkwork()
        .args(["topics", "apply"])
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(
        !topics.contains("created    provider.community-counselling.referrals"),
        "{topics}"
    );
    assert!(
        topics.contains("provider.community-counselling.referrals")
            || topics.contains("nothing to change"),
        "{topics}"
    );
}

/// The rows of every per-referral read model for `referrals`, in a stable order, as
/// psql prints them. (Other tests write to the same `referral.events` topic, so the
/// comparison keeps to this test's referrals.)
fn dump_projection(url: &str, referrals: &[String]) -> String {
    let tables = [
        "referrals",
        "history",
        "superseded",
        "tasks",
        "observations",
        "contacts",
        "activities",
    ];
    let ids = sql_list(referrals);
    let sql: Vec<String> = tables
        .iter()
        .map(|table| {
            format!("SELECT '{table}', coalesce(json_agg(t ORDER BY t::text), '[]') FROM projection.{table} t WHERE referral_id IN ({ids});")
        })
        .collect();
    psql(url, &sql.join(" "))
}

#[test]
fn serve_all_takes_referrals_and_provider_responses_and_replay_rebuilds_the_same_read_models() {
    let deployment = ServeAll::new();
    let served = deployment.start();
    let client = &deployment.client;
    let base = deployment.base();
    let gp = deployment.token(linkwork_auth::Role::Source, "gp:A81001");
    let connectors = deployment.token(linkwork_auth::Role::Provider, "connectors");
    let referrals: Vec<String> = (0..3).map(|_| deployment.post_referral(&gp)).collect();
    let wait_for = |id: &str, status: &str| deployment.wait_for(&connectors, id, status);
    for id in &referrals {
        wait_for(id, "requested");
    }
    // The first is accepted over HTTP, the second over provider.responses.
    deployment.accept(&connectors, &referrals[0]);
    let kafka = linkwork_bus::KafkaSettings::new(common::test_brokers());
    let producer = linkwork_bus::Producer::new(&kafka).unwrap();
    let mut headers = linkwork_bus::headers::HeaderList::default();
    headers.push("linkwork-provider", "connectors");
    let body = accepted_task(&referrals[1]).to_string();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            producer.send(linkwork_bus::Outbound {
                topic: &deployment
                    .names
                    .topic(linkwork_bus::topics::PROVIDER_RESPONSES),
                key: Some(referrals[1].as_bytes()),
                partition: None,
                payload: body.as_bytes(),
                headers,
            }),
        )
        .expect("acknowledged");
    wait_for(&referrals[0], "accepted");
    wait_for(&referrals[1], "accepted");
    wait_for(&referrals[2], "requested");
    // The metrics routes are served beside ingest's in `serve all`, for those who
    // read aggregates.
    let commissioner = deployment.token(linkwork_auth::Role::Commissioner, "townley-icb");
    let refused = client
        .get(format!("{base}/api/metrics"))
        .bearer_auth(&gp)
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let metrics: serde_json::Value = client
        .get(format!("{base}/api/metrics"))
        .bearer_auth(&commissioner)
        .send()
        .unwrap()
        .json()
        .unwrap();
    // The three referrals are in the figures, and as fewer than five people they are
    // published as suppressed (the default threshold), never as 3.
    let by_source = metrics["referrals"]["by_source"].as_array().unwrap();
    assert!(
        by_source.iter().any(|row| row["source"] == "gp"),
        "{metrics}"
    );
    assert!(metrics["referrals"]["referrals"].is_null(), "{metrics}");
    assert_eq!(metrics["referrals"]["disclosure"]["threshold"], 5);
    assert!(
        !metrics.to_string().contains("\"referrals\":3"),
        "{metrics}"
    );
    let reports = client
        .get(format!(
            "{base}/fhir/MeasureReport?measure=provider-response"
        ))
        .bearer_auth(&commissioner)
        .send()
        .unwrap();
    assert_eq!(reports.status().as_u16(), 200);
    let dashboard = client
        .get(format!("{base}/dashboard"))
        .bearer_auth(&commissioner)
        .send()
        .unwrap();
    assert_eq!(dashboard.status().as_u16(), 200);
    assert!(dashboard
        .text()
        .unwrap()
        .contains("data-chart=\"providers\""));
    // Nothing in flight before taking the dump.
    deployment.wait_until_settled();
    let live = dump_projection(&deployment.url, &referrals);
    for id in &referrals {
        assert!(live.contains(id.as_str()), "{id} is in the read models");
    }

    drop(served);
    let replayed = run(&mut deployment.command(&["replay"]));
    assert!(
        replayed.contains("the rebuilt read models are live"),
        "{replayed}"
    );
    let events: u64 = replayed
        .split_whitespace()
        .nth(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("an event count in {replayed:?}"));
    // Received and routed for each, and the two acceptances (the log may hold more
    // from other runs against the same broker).
    assert!(events >= 8, "{replayed}");
    assert_eq!(
        dump_projection(&deployment.url, &referrals),
        live,
        "replay rebuilt the same read models"
    );
}

const SECRET: &str = "cli-tests-development-secret-0123456789abcdef";
const VAULT_KEY: &str = "cli-tests-vault-key-0123456789abcdef01234567";

/// `linkwork serve all` as an operator runs it: on a fresh database after `topics
/// apply`, with a directory of one provider (`connectors`, LS1) and development tokens.
struct ServeAll {
    url: String,
    /// This deployment's own topics and groups.
    names: linkwork_bus::Names,
    directory: std::path::PathBuf,
    port: u16,
    client: reqwest::blocking::Client,
}

impl ServeAll {
    fn new() -> Self {
        let url = fresh_database();
        let names = common::isolated_names("serve-all");
        run(common::with_names(&mut linkwork(), &names).args(["topics", "apply"]));
        let directory = std::env::temp_dir().join(format!(
            "linkwork-cli-directory-{}.yaml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(
            &directory,
            "providers:\n  - id: connectors\n    name: Community Connectors\n    kind: want\n    areas: { postcode_districts: [LS1] }\n    needs: [social-isolation, loneliness]\n    capacity: 1000\n    accept_within_working_days: 5\n",
        )
        .expect("the directory is written");
        Self {
            url,
            names,
            directory,
            port: free_port(),
            client: reqwest::blocking::Client::new(),
        }
    }

    /// Waits until nothing is in flight: the outbox is empty and the router and the
    /// projector have stored offsets at the end of `referral.events`, at one look.
    fn wait_until_settled(&self) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let topic = self.names.topic(linkwork_bus::topics::REFERRAL_EVENTS);
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::test_brokers())
            .create()
            .expect("a client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metadata = client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("metadata");
            let ends: Vec<(i32, i64, i64)> = metadata.topics()[0]
                .partitions()
                .iter()
                .map(|partition| {
                    let (low, high) = client
                        .fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))
                        .expect("watermarks");
                    (partition.id(), low, high)
                })
                .collect();
            let pending = common::count(&self.url, "SELECT count(*) FROM outbox");
            let stored = psql(
                &self.url,
                &format!(
                    "SELECT consumer, partition, next_offset FROM consumer_offsets WHERE topic = '{topic}'"
                ),
            );
            let stored: Vec<(String, i32, i64)> = stored
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split(' ');
                    Some((
                        fields.next()?.to_owned(),
                        fields.next()?.parse().ok()?,
                        fields.next()?.parse().ok()?,
                    ))
                })
                .collect();
            let caught_up = |consumer: &str| {
                ends.iter().all(|(partition, low, high)| {
                    low >= high
                        || stored.iter().any(|(name, stored_partition, next)| {
                            name == consumer && stored_partition == partition && next >= high
                        })
                })
            };
            if pending == 0
                && caught_up(linkwork_bus::topics::consumers::ROUTER)
                && caught_up(linkwork_bus::topics::consumers::PROJECTOR)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still in flight after 60 s: {pending} outbox rows, offsets {stored:?}, log ends {ends:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `linkwork` command with this deployment's settings.
    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = linkwork();
        common::with_names(&mut command, &self.names);
        command
            .args(arguments)
            .env("LINKWORK_DATABASE_URL", &self.url)
            .env("LINKWORK_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("LINKWORK_ADMIN_ADDR", "127.0.0.1:0")
            .env("LINKWORK_AUTH_DEV_SECRET", SECRET)
            .env(
                "LINKWORK_PSEUDONYM_KEY",
                "cli-tests-pseudonym-key-0123456789abcdef",
            )
            .env("LINKWORK_VAULT_KEY", VAULT_KEY)
            .env("LINKWORK_DIRECTORY", &self.directory);
        command
    }

    /// Starts `serve all` and waits until it answers `/readyz`, failing if it exits.
    fn start(&self) -> Served {
        self.start_with(&[])
    }

    /// [`ServeAll::start`] with more environment.
    fn start_with(&self, environment: &[(&str, &str)]) -> Served {
        let mut command = self.command(&["serve", "all"]);
        command.envs(environment.iter().copied());
        let mut served = Served(command.spawn().expect("linkwork serve all starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .client
            .get(format!("{}/readyz", self.base()))
            .send()
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "linkwork serve all did not become ready"
            );
            if let Ok(Some(status)) = served.0.try_wait() {
                panic!("linkwork serve all exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        served
    }

    fn token(&self, role: linkwork_auth::Role, client_id: &str) -> String {
        linkwork_auth::dev_token(
            &secrecy::SecretString::from(SECRET),
            role,
            client_id,
            &role.default_scopes(client_id),
            600,
        )
        .expect("a development token")
    }

    /// Posts a synthetic GP referral and returns its id.
    fn post_referral(&self, token: &str) -> String {
        let reference = format!("CLI-{}", uuid::Uuid::new_v4().simple());
        let response = self
            .client
            .post(format!("{}/fhir/ServiceRequest", self.base()))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(linkwork_testkit::gp_referral(&reference).to_string())
            .send()
            .expect("ingest answers");
        assert_eq!(response.status().as_u16(), 201);
        let created: serde_json::Value = response.json().expect("a ServiceRequest");
        created["id"].as_str().expect("an id").to_owned()
    }

    /// The status of a referral's first Task, as its provider reads it.
    fn status_of(&self, provider_token: &str, id: &str) -> Option<String> {
        let response = self
            .client
            .get(format!("{}/fhir/Task/{}", self.base(), task_id(id)))
            .bearer_auth(provider_token)
            .send()
            .ok()?;
        let task: serde_json::Value = response.json().ok()?;
        task["status"].as_str().map(str::to_owned)
    }

    fn wait_for(&self, provider_token: &str, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.status_of(provider_token, id).as_deref() != Some(status) {
            assert!(
                Instant::now() < deadline,
                "{id} did not reach {status} (is {:?})",
                self.status_of(provider_token, id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The provider accepts the referral's first Task over HTTP.
    fn accept(&self, provider_token: &str, id: &str) {
        let response = self
            .client
            .put(format!("{}/fhir/Task/{}", self.base(), task_id(id)))
            .bearer_auth(provider_token)
            .header("content-type", "application/fhir+json")
            .body(accepted_task(id).to_string())
            .send()
            .expect("ingest answers");
        assert_eq!(response.status().as_u16(), 200, "{id} accepted");
    }
}

impl Drop for ServeAll {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.directory);
    }
}

/// A referral's first Task, accepted.
#[test]
fn serve_takes_the_per_client_request_limit_from_the_environment() {
    let deployment = ServeAll::new();
    let refused = deployment
        .command(&["serve", "all"])
        .env("LINKWORK_REQUESTS_PER_MINUTE", "lots")
        .output()
        .expect("linkwork runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("LINKWORK_REQUESTS_PER_MINUTE"), "{stderr}");

    // Ten a minute: one may come at once, the next is told when to come back.
    let _served = deployment.start_with(&[("LINKWORK_REQUESTS_PER_MINUTE", "10")]);
    let gp = deployment.token(linkwork_auth::Role::Source, "gp:A81001");
    let post = || {
        deployment
            .client
            .post(format!("{}/fhir/ServiceRequest", deployment.base()))
            .bearer_auth(&gp)
            .header("content-type", "application/fhir+json")
            .body(
                linkwork_testkit::gp_referral(&format!("CLI-{}", uuid::Uuid::new_v4().simple()))
                    .to_string(),
            )
            .send()
            .expect("ingest answers")
    };
    assert_eq!(post().status().as_u16(), 201);
    let limited = post();
    assert_eq!(limited.status().as_u16(), 429);
    assert!(limited.headers().contains_key("retry-after"));
}

fn accepted_task(id: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Task",
        "id": task_id(id),
        "status": "accepted",
        "intent": "order",
        "focus": { "reference": format!("ServiceRequest/{id}") },
    })
}

/// For each referral: (events applied by the projector by type, as `type:count`
/// sorted, joined with commas). Every event id is unique in `history`, so a
/// re-published copy would not show; a second *decision* (a second routing, a second
/// acceptance) would.
fn applied_events(url: &str, referrals: &[String]) -> std::collections::BTreeMap<String, String> {
    let ids = sql_list(referrals);
    let sql = format!(
        "SELECT referral_id, string_agg(event_type || ':' || n, ',' ORDER BY event_type) FROM \
         (SELECT referral_id, event_type, count(*) AS n FROM projection.history \
          WHERE referral_id IN ({ids}) GROUP BY 1, 2) counted GROUP BY 1"
    );
    psql(url, &sql)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, counts)| (id.to_owned(), counts.to_owned()))
        .collect()
}

/// Kafka evicts a consumer-group member whose process died once its session times out,
/// so a `serve all` killed with SIGKILL in the middle of its work (referrals taken but
/// not yet routed or projected, acceptances in flight) and started again gets every
/// partition back. The transactional consumers and the outbox relay then make sure
/// that nothing acknowledged is lost and nothing is decided twice: each referral is
/// received once, routed once, and accepted once if it was.
#[test]
fn serve_all_killed_with_sigkill_mid_stream_and_restarted_loses_nothing_and_decides_nothing_twice()
{
    let deployment = ServeAll::new();
    let gp = deployment.token(linkwork_auth::Role::Source, "gp:A81001");
    let connectors = deployment.token(linkwork_auth::Role::Provider, "connectors");

    let mut first = deployment.start();
    let routed_before: Vec<String> = (0..20).map(|_| deployment.post_referral(&gp)).collect();
    for id in &routed_before {
        deployment.wait_for(&connectors, id, "requested");
    }
    // Acceptances and new referrals, acknowledged, and the process killed right after
    // the last answer: the router, projector and relay are still at work on them.
    let accepted = &routed_before[..8];
    for id in accepted {
        deployment.accept(&connectors, id);
    }
    let in_flight: Vec<String> = (0..30).map(|_| deployment.post_referral(&gp)).collect();
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    drop(first);

    let _second = deployment.start();
    // Referrals taken after the restart are routed too: the partitions came back.
    let after: Vec<String> = (0..10).map(|_| deployment.post_referral(&gp)).collect();
    for id in accepted {
        deployment.wait_for(&connectors, id, "accepted");
    }
    for id in routed_before[8..].iter().chain(&in_flight).chain(&after) {
        deployment.wait_for(&connectors, id, "requested");
    }
    let all: Vec<String> = routed_before
        .iter()
        .chain(&in_flight)
        .chain(&after)
        .cloned()
        .collect();
    // Nothing in flight before counting what was applied.
    deployment.wait_until_settled();
    let applied = applied_events(&deployment.url, &all);
    for id in &all {
        let expected = if accepted.contains(id) {
            "linkwork.referral.accepted.v1:1,linkwork.referral.received.v1:1,linkwork.referral.routed.v1:1"
        } else {
            "linkwork.referral.received.v1:1,linkwork.referral.routed.v1:1"
        };
        assert_eq!(
            applied.get(id).map(String::as_str),
            Some(expected),
            "{id}: each event applied once"
        );
    }
}

/// The Task of a referral's first routing attempt.
fn task_id(referral: &str) -> String {
    linkwork_domain::ReferralId::from_uuid(uuid::Uuid::parse_str(referral).expect("a referral id"))
        .task_id(1)
        .to_string()
}

#[test]
fn report_writes_markdown_and_html_and_refuses_a_backwards_period() {
    let url = fresh_database();
    let out =
        std::env::temp_dir().join(format!("linkwork-report-{}", uuid::Uuid::new_v4().simple()));
    let printed = run(linkwork()
        .args([
            "report",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-31",
            "--out",
        ])
        .arg(&out)
        .env("LINKWORK_DATABASE_URL", &url));
    assert!(
        printed.contains("open ASC cases 0 -> 0 (0 fewer), 0 referrals, 0 completed"),
        "{printed}"
    );
    let markdown =
        std::fs::read_to_string(out.join("linkwork-evaluation-2026-01-01-2026-01-31.md"))
            .expect("the Markdown file");
    assert!(markdown.contains("# Social prescribing for loneliness and isolation"));
    assert!(markdown.contains("not available"), "{markdown}");
    let html = std::fs::read_to_string(out.join("linkwork-evaluation-2026-01-01-2026-01-31.html"))
        .expect("the HTML file");
    assert!(html.starts_with("<!doctype html>"));

    let backwards = linkwork()
        .args(["report", "--from", "2026-02-01", "--to", "2026-01-01"])
        .env("LINKWORK_DATABASE_URL", &url)
        .output()
        .expect("linkwork runs");
    assert!(!backwards.status.success());
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("is after --to"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn topics_apply_exits_non_zero_when_it_refuses_to_grow_a_topic_ordered_by_key() {
    let prefix = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let file = std::env::temp_dir().join(format!("{prefix}.yaml"));
    let declare = |partitions: i32| {
        std::fs::write(
            &file,
            format!(
                "topics:\n  - {{name: {prefix}.events, partitions: {partitions}, retention: forever, cleanup_policy: delete, ordered_by_key: true, key: referral id, value: v, producers: [], consumers: []}}\n  - {{name: {prefix}.dlq, partitions: {partitions}, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"
            ),
        )
        .unwrap();
    };
    declare(1);
    run(linkwork().args(["topics", "apply", "--file"]).arg(&file));
    declare(2);
    let output = linkwork()
        .args(["topics", "apply", "--file"])
        .arg(&file)
        .output()
        .expect("linkwork runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "{prefix}.events: refused to add partitions (1 -> 2)"
        )) && stderr.contains("create a new topic with 2 partitions"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("grown      {prefix}.dlq: 1 -> 2 partitions")),
        "the rest is applied: {stdout}"
    );
}

#[test]
fn erase_by_nhs_number_destroys_the_key_and_the_referral_reads_back_redacted() {
    let deployment = ServeAll::new();
    let _served = deployment.start();
    let gp = deployment.token(linkwork_auth::Role::Source, "gp:A81001");
    let connectors = deployment.token(linkwork_auth::Role::Provider, "connectors");
    let id = deployment.post_referral(&gp);
    deployment.wait_for(&connectors, &id, "requested");
    let read = || -> serde_json::Value {
        deployment
            .client
            .get(format!("{}/fhir/ServiceRequest/{id}", deployment.base()))
            .bearer_auth(&gp)
            .send()
            .expect("ingest answers")
            .json()
            .expect("a ServiceRequest")
    };
    assert!(read().to_string().contains("Brightwater"));

    // A bad NHS number is named, and nothing is erased.
    let refused = deployment
        .command(&["erase", "--nhs-number", "9990000019"])
        .output()
        .expect("linkwork runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a valid NHS number"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The number from standard input, kept out of the process list.
    let mut erase = deployment
        .command(&["erase", "--nhs-number", "-", "--by", "ig-lead"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("linkwork runs");
    erase
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", linkwork_testkit::NHS_NUMBERS[0]).as_bytes())
        .unwrap();
    let output = erase.wait_with_output().expect("linkwork finishes");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("key destroyed, 1 referral(s) redacted") && printed.contains(&id),
        "{printed}"
    );
    // The running projector redacts its read model once ReferralErased comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = read();
        if now["meta"]["security"][0]["code"] == "REDACTED" {
            assert!(!now.to_string().contains("Brightwater"), "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "not redacted: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Erasing again destroys nothing more.
    let again = deployment
        .command(&["erase", "--nhs-number", linkwork_testkit::NHS_NUMBERS[0]])
        .output()
        .expect("linkwork runs");
    assert!(String::from_utf8_lossy(&again.stdout).contains("key already gone"));
}

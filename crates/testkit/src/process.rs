//! What tests of whole processes share: pointing a binary at a test's own topics,
//! running it, a fresh database, psql, a free port, figures read from its output, and
//! a served process stopped as an operator would stop it.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// The test broker of `make test` (`LINKWORK_TEST_KAFKA_BROKERS`).
pub fn test_brokers() -> String {
    std::env::var("LINKWORK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19192".into())
}

/// Topics and consumer groups of one test's own, so whole processes of several tests
/// run at once on one broker without sharing partitions.
pub fn isolated_names(label: &str) -> linkwork_bus::Names {
    let run = uuid::Uuid::new_v4().simple().to_string();
    linkwork_bus::Names::isolated(&format!("{label}-{}", &run[..12]))
}

/// Points `command` at the topics and groups of `names`.
pub fn with_names<'a>(command: &'a mut Command, names: &linkwork_bus::Names) -> &'a mut Command {
    command
        .env("LINKWORK_TOPIC_PREFIX", names.topic_prefix())
        .env("LINKWORK_GROUP_PREFIX", names.group_prefix())
}

/// Runs it to the end; fails the test unless it succeeded. Returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A new, empty database (`make test` drops `lw_test_*` ones); returns its URL.
pub fn fresh_database() -> String {
    let admin = std::env::var("LINKWORK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let database = format!("lw_test_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .arg(&admin)
        .args(["-qc", &format!("CREATE DATABASE {database}")])
        .status()
        .expect("psql runs");
    assert!(status.success());
    let base = admin.rsplit_once('/').expect("database URL has a path").0;
    format!("{base}/{database}")
}

/// Runs `sql` with psql against `url`: unaligned, no headers, fields separated by a
/// space; fails the test on any SQL error. Returns what it printed.
pub fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-tA", "-F", " ", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The number a `SELECT count(...)` gives.
pub fn count(url: &str, sql: &str) -> i64 {
    let printed = psql(url, sql);
    printed
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count from {sql}, not {printed:?}"))
}

/// Referral ids as an SQL list: `'a', 'b'`.
pub fn sql_list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The number after `label` on the line that starts with it.
pub fn figure_after(output: &str, label: &str) -> i64 {
    let line = output
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("a line starting {label:?} in:\n{output}"));
    line.trim_start()[label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("a number after {label:?} in {line:?}"))
}

/// A served process (`linkwork serve`). Dropping it
/// stops it as an operator would, with SIGTERM (its consumers leave their groups at
/// once); SIGKILL only if it has not stopped within 20 s. A process that dies without
/// leaving is evicted by Kafka after the consumers' session timeout:
/// `serve_all_killed_with_sigkill_...` shows it.
#[derive(Debug)]
pub struct Served(pub std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

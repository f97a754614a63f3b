//! The admin listener every `linkwork serve` process opens (`LINKWORK_ADMIN_ADDR`):
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when Postgres answers, the broker answers and every consumer of
//!   the process has been given its partitions by its group (an empty assignment
//!   counts: a group with more members than partitions leaves some idle); otherwise
//!   503. The body says which check failed, as JSON.
//! - `GET /metrics`: Prometheus text — the process (resident memory, CPU, open files,
//!   start time) and each consumer (partitions, records, batches, dead letters,
//!   readiness). No business figures and nothing about a person: those are the
//!   metrics service's, behind its own listener.
//!
//! It is the composition root's, not a service's: only here are all of a process's
//! parts known.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use linkwork_bus::health::BrokerProbe;
use linkwork_bus::ConsumerStatus;
use linkwork_router::SweeperStatus;
use linkwork_store::sqlx::{self, PgPool};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

/// How long a readiness check waits for Postgres or the broker.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin listener reports on.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `ingest`, `router`, `projector`, `metrics` or `all`.
    pub service: &'static str,
    pub pool: PgPool,
    pub broker: BrokerProbe,
    pub consumers: Vec<ConsumerStatus>,
    /// The router's deadline sweeper, when this process routes.
    pub sweeper: Option<SweeperStatus>,
}

pub fn router(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(admin))
}

async fn postgres_answers(pool: &PgPool) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn ready(State(admin): State<Arc<Admin>>) -> Response {
    let (postgres, broker) = tokio::join!(
        postgres_answers(&admin.pool),
        admin.broker.brokers(CHECK_TIMEOUT)
    );
    let broker = broker
        .map_err(|error| error.to_string())
        .and_then(|brokers| {
            if brokers == 0 {
                Err("the cluster reports no brokers".to_owned())
            } else {
                Ok(())
            }
        });
    let consumers: serde_json::Map<String, serde_json::Value> = admin
        .consumers
        .iter()
        .map(|status| {
            let snapshot = status.snapshot();
            let state = if snapshot.stopped {
                "stopped"
            } else if snapshot.assigned_once {
                "assigned"
            } else {
                "waiting for partitions"
            };
            (
                snapshot.name,
                json!({ "state": state, "partitions": snapshot.partitions }),
            )
        })
        .collect();
    let consumers_ready = admin.consumers.iter().all(ConsumerStatus::is_ready);
    let is_ready = postgres.is_ok() && broker.is_ok() && consumers_ready;
    let verdict = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.clone(),
    };
    let body = json!({
        "service": admin.service,
        "ready": is_ready,
        "postgres": verdict(&postgres),
        "broker": verdict(&broker),
        "consumers": consumers,
    });
    if !is_ready {
        tracing::debug!(%body, "not ready");
    }
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The process's own figures from `/proc/self` (Linux); absent elsewhere.
#[derive(Debug, Default)]
struct ProcessFigures {
    resident_bytes: Option<i64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<i64>,
    open_fds: Option<i64>,
}

fn process_figures() -> ProcessFigures {
    let page_size = 4096i64;
    let ticks_per_second = 100f64;
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map(|pages| pages * page_size);
    // Fields after the command name (which may hold spaces) start after its ')'.
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|text| text.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, starttime 22 (1-based); the slice
    // starts at field 3.
    let field = |number: usize| {
        fields
            .get(number - 3)
            .and_then(|value| value.parse::<f64>().ok())
    };
    let cpu_seconds = field(14)
        .zip(field(15))
        .map(|(user, system)| (user + system) / ticks_per_second);
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<f64>().ok())
    });
    let start_time_seconds = field(22)
        .zip(boot_time)
        .map(|(ticks, boot)| (boot + ticks / ticks_per_second) as i64);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as i64);
    ProcessFigures {
        resident_bytes,
        cpu_seconds,
        start_time_seconds,
        open_fds,
    }
}

/// The Prometheus text for the process, its consumers and its deadline sweeper.
pub fn metrics_text(
    service: &str,
    consumers: &[ConsumerStatus],
    sweeper: Option<&SweeperStatus>,
) -> String {
    let mut registry = Registry::default();
    let figures = process_figures();
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: Option<i64>| {
        if let Some(value) = value {
            let gauge: Gauge = Gauge::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    };
    gauge(
        &mut registry,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        figures.resident_bytes,
    );
    gauge(
        &mut registry,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds",
        figures.start_time_seconds,
    );
    gauge(
        &mut registry,
        "process_open_fds",
        "Number of open file descriptors",
        figures.open_fds,
    );
    if let Some(seconds) = figures.cpu_seconds {
        let cpu: Counter<f64> = Counter::default();
        cpu.inc_by(seconds);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
    }
    let up: Family<Vec<(String, String)>, Gauge> = Family::default();
    up.get_or_create(&vec![("service".to_owned(), service.to_owned())])
        .set(1);
    registry.register("linkwork_up", "The linkwork process is running", up);

    let partitions: Family<Vec<(String, String)>, Gauge> = Family::default();
    let ready: Family<Vec<(String, String)>, Gauge> = Family::default();
    let records: Family<Vec<(String, String)>, Counter> = Family::default();
    let batches: Family<Vec<(String, String)>, Counter> = Family::default();
    let dead_letters: Family<Vec<(String, String)>, Counter> = Family::default();
    for status in consumers {
        let snapshot = status.snapshot();
        let labels = vec![("consumer".to_owned(), snapshot.name.clone())];
        partitions
            .get_or_create(&labels)
            .set(i64::try_from(snapshot.partitions).unwrap_or(i64::MAX));
        ready
            .get_or_create(&labels)
            .set(i64::from(status.is_ready()));
        records.get_or_create(&labels).inc_by(snapshot.records);
        batches.get_or_create(&labels).inc_by(snapshot.batches);
        dead_letters
            .get_or_create(&labels)
            .inc_by(snapshot.dead_letters);
    }
    registry.register(
        "linkwork_consumer_partitions",
        "Partitions assigned to the consumer",
        partitions,
    );
    registry.register(
        "linkwork_consumer_ready",
        "1 when the consumer has its assignment and runs",
        ready,
    );
    registry.register(
        "linkwork_consumer_records",
        "Records in committed batches",
        records,
    );
    registry.register("linkwork_consumer_batches", "Batches committed", batches);
    registry.register(
        "linkwork_consumer_dead_letters",
        "Records sent to the consumer's dead-letter topic",
        dead_letters,
    );
    if let Some(sweeper) = sweeper {
        let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let counter: Counter = Counter::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        };
        counter(
            &mut registry,
            "linkwork_router_deadline_sweeps",
            "Deadline sweeps finished",
            sweeper.sweeps(),
        );
        counter(
            &mut registry,
            "linkwork_router_deadline_escalations",
            "Referrals escalated past their acceptance deadline",
            sweeper.escalations(),
        );
        counter(
            &mut registry,
            "linkwork_router_deadline_sweep_failures",
            "Deadline sweeps that failed and were retried",
            sweeper.failures(),
        );
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics_text(admin.service, &admin.consumers, admin.sweeper.as_ref()),
    )
        .into_response()
}

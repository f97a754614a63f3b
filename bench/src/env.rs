//! What the bench runs against: the broker and Postgres `make bench` started, the
//! `linkwork` binary beside this one, and each stage's own database and topics.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use linkwork_bus::{KafkaSettings, Names};
use linkwork_store::sqlx::{self, Connection, PgConnection};

/// The secrets every process of a bench run shares (development tokens, pseudonyms).
pub const DEV_SECRET: &str = "bench-development-secret-0123456789abcdef";
const PSEUDONYM_KEY: &str = "bench-pseudonym-key-0123456789abcdef0123";
const VAULT_KEY: &str = "bench-vault-key-0123456789abcdef0123456789";

/// The broker, Postgres and the `linkwork` binary.
#[derive(Debug, Clone)]
pub struct Bench {
    pub kafka: KafkaSettings,
    /// A Postgres URL whose user may create databases.
    admin_url: String,
    linkwork: PathBuf,
}

impl Bench {
    /// From `LINKWORK_BENCH_KAFKA_BROKERS` and `LINKWORK_BENCH_DATABASE_URL` (what
    /// `make bench` sets), and the `linkwork` binary built beside this one.
    pub fn from_env() -> anyhow::Result<Self> {
        let brokers = std::env::var("LINKWORK_BENCH_KAFKA_BROKERS")
            .context("LINKWORK_BENCH_KAFKA_BROKERS is not set (make bench sets it)")?;
        let admin_url = std::env::var("LINKWORK_BENCH_DATABASE_URL")
            .context("LINKWORK_BENCH_DATABASE_URL is not set (make bench sets it)")?;
        let linkwork = std::env::current_exe()?
            .parent()
            .context("the bench binary's folder")?
            .join("linkwork");
        if !linkwork.is_file() {
            bail!(
                "{} is missing: build it beside linkwork-bench (cargo build --release --bins)",
                linkwork.display()
            );
        }
        Ok(Self {
            kafka: KafkaSettings::new(brokers),
            admin_url,
            linkwork,
        })
    }

    /// A fresh deployment: its own database (migrated by the processes that start on
    /// it) and its own topics and groups, created as `linkwork topics apply` creates
    /// them.
    pub async fn deployment(&self, label: &str) -> anyhow::Result<Deployment> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let names = Names::isolated(&format!("bench-{label}-{}", &run[..10]));
        let database = format!("lw_bench_{}", &run[..16]);
        let mut connection = PgConnection::connect(&self.admin_url)
            .await
            .context("connecting to LINKWORK_BENCH_DATABASE_URL")?;
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut connection)
            .await?;
        let base = self
            .admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .context("the database URL has a path")?;
        let deployment = Deployment {
            bench: self.clone(),
            names,
            database_url: format!("{base}/{database}"),
            database,
        };
        deployment.run_linkwork(&["topics", "apply"])?;
        Ok(deployment)
    }
}

/// One stage run's database and topics.
#[derive(Debug)]
pub struct Deployment {
    pub bench: Bench,
    pub names: Names,
    pub database_url: String,
    database: String,
}

impl Deployment {
    /// A `linkwork` command with this deployment's environment.
    pub fn linkwork(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(&self.bench.linkwork);
        command
            .args(arguments)
            .env("LINKWORK_KAFKA_BROKERS", &self.bench.kafka.brokers)
            .env("LINKWORK_DATABASE_URL", &self.database_url)
            .env("LINKWORK_TOPIC_PREFIX", self.names.topic_prefix())
            .env("LINKWORK_GROUP_PREFIX", self.names.group_prefix())
            .env("LINKWORK_AUTH_DEV_SECRET", DEV_SECRET)
            .env("LINKWORK_PSEUDONYM_KEY", PSEUDONYM_KEY)
            .env("LINKWORK_VAULT_KEY", VAULT_KEY)
            .env("LINKWORK_REQUESTS_PER_MINUTE", "100000000")
            // Refusals under load are counted by the bench; their warnings would bury
            // the figures.
            .env(
                "RUST_LOG",
                std::env::var("LINKWORK_BENCH_RUST_LOG")
                    .unwrap_or_else(|_| "error,tower_http=off".to_owned()),
            )
            .env("LINKWORK_LOG_FORMAT", "text")
            .stdin(Stdio::null());
        command
    }

    /// Runs a one-shot `linkwork` command to the end.
    pub fn run_linkwork(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let output = self
            .linkwork(arguments)
            .output()
            .with_context(|| format!("running linkwork {arguments:?}"))?;
        if !output.status.success() {
            bail!(
                "linkwork {arguments:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `linkwork serve <service>` and waits until its admin listener says it
    /// is ready. `environment` adds to the deployment's.
    pub async fn serve(
        &self,
        service: &str,
        environment: &[(&str, String)],
    ) -> anyhow::Result<Served> {
        let http_port = free_port()?;
        let admin_port = free_port()?;
        let mut command = self.linkwork(&["serve", service]);
        command
            .env("LINKWORK_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("LINKWORK_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .envs(environment.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting linkwork serve {service}"))?;
        let served = Served::watch(service, child, http_port);
        let client = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{admin_port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(served);
            }
            if Instant::now() > deadline {
                bail!("linkwork serve {service} was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops the deployment's database (its topics stay: they are prefixed, and the
    /// bench broker's log is thrown away with its folder).
    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let mut connection = PgConnection::connect(&self.bench.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        ))
        .execute(&mut connection)
        .await?;
        Ok(())
    }
}

/// A running `linkwork serve` process, its peak resident memory sampled while it runs.
/// Dropping it stops it with SIGTERM (SIGKILL after 10 s).
#[derive(Debug)]
pub struct Served {
    service: String,
    child: Child,
    pub http_port: u16,
    peak_kib: Arc<AtomicU64>,
    sampling: Arc<std::sync::atomic::AtomicBool>,
}

impl Served {
    fn watch(service: &str, child: Child, http_port: u16) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pid = child.id();
        {
            let (peak_kib, sampling) = (peak_kib.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Acquire) {
                    match high_water_kib(pid) {
                        Some(kib) => {
                            peak_kib.fetch_max(kib, Ordering::AcqRel);
                        }
                        None => return,
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        Self {
            service: service.to_owned(),
            child,
            http_port,
            peak_kib,
            sampling,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The peak resident memory so far, in MiB (the kernel's high-water mark).
    pub fn peak_mib(&self) -> f64 {
        let now = high_water_kib(self.child.id()).unwrap_or(0);
        let peak = self.peak_kib.fetch_max(now, Ordering::AcqRel).max(now);
        peak as f64 / 1024.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.sampling.store(false, Ordering::Release);
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "linkwork-bench: linkwork serve {} did not stop within 10 s of SIGTERM; killing it",
            self.service
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmHWM` of a process: its peak resident set, in KiB.
pub fn high_water_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

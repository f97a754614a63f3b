//! `linkwork-bench` (`make bench`): every stage of linkwork measured in one run beside
//! the raw speed of the parts it stands on, each figure the median of several runs
//! with min and max. Prints a table and writes JSON under `target/bench/`.
//!
//! `make bench` starts a broker of the bench's own and Postgres and builds this binary
//! beside `linkwork`; each stage runs `linkwork serve ...` processes on a database and
//! topics of its own, so what is measured is what is deployed.
//!
//! `--peers` (`make bench-peers`) sets linkwork's parse + validate beside other FHIR
//! implementations on the same payloads in the same run (`peers`); alone it needs no
//! broker or Postgres, and with `--only` the stages named run first.

mod cpu;
mod env;
mod figures;
mod payload;
mod peers;
mod stages;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use figures::{Better, Figure};
use serde::Serialize;

/// Measure linkwork's stages beside the raw broker and Postgres.
#[derive(Debug, Parser)]
#[command(name = "linkwork-bench", version, about)]
struct Args {
    /// Small counts and one run each: proves every stage runs (about a minute).
    #[arg(long)]
    quick: bool,
    /// Runs of each stage; the median is reported (default 3, 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Where to write the JSON (default target/bench/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these stages (comma-separated: ingest, routing, projection, replay,
    /// latency); memory is reported for the processes of the stages run.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Parse + validate beside HAPI FHIR, fhir.resources and Medplum on the same
    /// payloads (each installed into the cache by scripts/peers when missing). Alone,
    /// only that runs; with --only, those stages run too.
    #[arg(long)]
    peers: bool,
}

/// How much each stage does.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sizes {
    produce: usize,
    http: usize,
    http_clients: usize,
    inbound: usize,
    routing: usize,
    projection: usize,
    replay: usize,
    latency_rate: u32,
    latency_warmup_seconds: u32,
    latency_seconds: u32,
}

impl Sizes {
    fn for_run(quick: bool) -> Self {
        if quick {
            Self {
                produce: 5_000,
                http: 1_000,
                http_clients: 32,
                inbound: 1_000,
                routing: 2_000,
                projection: 5_000,
                replay: 10_000,
                latency_rate: 100,
                latency_warmup_seconds: 1,
                latency_seconds: 3,
            }
        } else {
            Self {
                produce: 100_000,
                http: 20_000,
                http_clients: 256,
                inbound: 20_000,
                routing: 20_000,
                projection: 100_000,
                replay: 1_000_000,
                latency_rate: 500,
                latency_warmup_seconds: 5,
                latency_seconds: 20,
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    measured_at: String,
    machine: String,
    linkwork_version: &'static str,
    quick: bool,
    runs: usize,
    sizes: Sizes,
    figures: Vec<Figure>,
    /// Where the CPU went while each stage was timed, summed over its runs.
    cpu: Vec<cpu::Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<peers::Report>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("linkwork-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linkwork-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `stage` `runs` times, saying so on stderr.
async fn repeat<T, F, Fut>(label: &str, runs: usize, mut stage: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut results = Vec::with_capacity(runs);
    for run in 1..=runs {
        eprintln!("linkwork-bench: {label} (run {run} of {runs})");
        results.push(stage().await?);
    }
    Ok(results)
}

fn rates(measured: &[stages::Measured]) -> Vec<f64> {
    measured.iter().map(|one| one.per_second).collect()
}

fn peaks(measured: &[stages::Measured]) -> Vec<f64> {
    measured.iter().filter_map(|one| one.peak_mib).collect()
}

async fn run(args: Args) -> anyhow::Result<()> {
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let sizes = Sizes::for_run(args.quick);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    let (figures, cpu) = if !args.peers || !args.only.is_empty() {
        let (figures, cpu) = stages(&args, runs, sizes).await?;
        println!("{}", figures::table(&figures));
        println!("{}", cpu::table(&cpu));
        (figures, cpu)
    } else {
        (Vec::new(), Vec::new())
    };
    let peers = if args.peers {
        let script = peers_script();
        let dir = out.join("peers");
        let timing = peers::Timing::for_run(args.quick);
        let report =
            tokio::task::spawn_blocking(move || peers::run(&script, &dir, timing)).await??;
        println!("{}", peers::table(&report));
        Some(report)
    } else {
        None
    };

    let report = Report {
        measured_at: chrono::Utc::now().to_rfc3339(),
        machine: machine(),
        linkwork_version: env!("CARGO_PKG_VERSION"),
        quick: args.quick,
        runs,
        sizes,
        figures,
        cpu,
        peers,
    };
    std::fs::create_dir_all(&out)?;
    let file = out.join(format!(
        "bench-{}{}{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        if args.quick { "-quick" } else { "" },
        if report.figures.is_empty() {
            "-peers"
        } else {
            ""
        }
    ));
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&file, &text)?;
    std::fs::write(out.join("latest.json"), &text)?;
    println!("written: {}", file.display());
    Ok(())
}

/// `scripts/peers` of this checkout: `LINKWORK_PEERS_SCRIPT` (which `scripts/stack`
/// sets), else found from the workspace.
fn peers_script() -> PathBuf {
    std::env::var_os("LINKWORK_PEERS_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| linkwork_testkit::workspace_root().join("scripts/peers"))
}

/// The pipeline's stages (`--only` chooses), on the broker and Postgres `make bench`
/// started.
async fn stages(
    args: &Args,
    runs: usize,
    sizes: Sizes,
) -> anyhow::Result<(Vec<Figure>, Vec<cpu::Row>)> {
    let bench = env::Bench::from_env()?;
    let mut figures = Vec::new();
    let mut cpu = Vec::new();
    let mut memory: Vec<(&str, Vec<f64>)> = Vec::new();
    let runs_stage =
        |stage: &str| args.only.is_empty() || args.only.iter().any(|only| only == stage);

    // Ingest, beside the raw produce of the same events.
    if runs_stage("ingest") {
        let produced = repeat("raw produce", runs, || {
            stages::raw_produce(&bench, sizes.produce)
        })
        .await?;
        let raw_produce = Figure::new(
            "ingest",
            "raw produce (acks=all)",
            "events/s",
            rates(&produced),
        );
        let http = repeat("ingest over HTTP", runs, || {
            stages::ingest_http(&bench, sizes.http, sizes.http_clients)
        })
        .await?;
        figures.push(
            Figure::new("ingest", "HTTP ServiceRequest", "referrals/s", rates(&http))
                .beside(&raw_produce)
                .target("at least 10,000/s", Better::Higher, 10_000.0)
                .and_at_least_of_raw(0.5, "half"),
        );
        let inbound = repeat("ingest over referrals.inbound", runs, || {
            stages::ingest_inbound(&bench, sizes.inbound)
        })
        .await?;
        figures.push(
            Figure::new(
                "ingest",
                "referrals.inbound",
                "referrals/s",
                rates(&inbound),
            )
            .beside(&raw_produce),
        );
        memory.push(("ingest", [peaks(&http), peaks(&inbound)].concat()));
        cpu.push(cpu_row("ingest over HTTP", &http));
        cpu.push(cpu_row("ingest over referrals.inbound", &inbound));
        figures.insert(0, raw_produce);
        report_so_far(&figures);
    }

    // Routing, beside a raw consume-then-produce.
    if runs_stage("routing") {
        let forwarded = repeat("raw consume-then-produce", runs, || {
            stages::raw_forward(&bench, sizes.routing)
        })
        .await?;
        let raw_forward = Figure::new(
            "routing",
            "raw consume-then-produce",
            "events/s",
            rates(&forwarded),
        );
        let routed = repeat("routing", runs, || stages::routing(&bench, sizes.routing)).await?;
        figures.push(raw_forward.clone());
        figures.push(
            Figure::new(
                "routing",
                "decisions onto provider queues",
                "events/s",
                rates(&routed),
            )
            .beside(&raw_forward)
            .target("at least 20,000/s", Better::Higher, 20_000.0)
            .and_at_least_of_raw(0.5, "half"),
        );
        memory.push(("router", peaks(&routed)));
        cpu.push(cpu_row("raw consume-then-produce", &forwarded));
        cpu.push(cpu_row("routing", &routed));
        report_so_far(&figures);
    }

    // Projection, beside a raw COPY of the same events as rows.
    if runs_stage("projection") {
        let copied = repeat("raw COPY", runs, || {
            stages::raw_copy(&bench, sizes.projection)
        })
        .await?;
        let raw_copy = Figure::new(
            "projection",
            "raw COPY of the events",
            "rows/s",
            rates(&copied),
        );
        let projected = repeat("projection", runs, || {
            stages::projection(&bench, sizes.projection)
        })
        .await?;
        figures.push(raw_copy.clone());
        figures.push(
            Figure::new(
                "projection",
                "events into the read models",
                "events/s",
                rates(&projected),
            )
            .beside(&raw_copy)
            .target("at least 20,000/s", Better::Higher, 20_000.0)
            .and_at_least_of_raw(0.5, "half"),
        );
        memory.push(("projector", peaks(&projected)));
        cpu.push(cpu_row("projection", &projected));
        report_so_far(&figures);
    }

    // Replay.
    if runs_stage("replay") {
        let replayed = repeat("replay", runs, || stages::replay(&bench, sizes.replay)).await?;
        let seconds: Vec<f64> = replayed.iter().map(|(seconds, _)| *seconds).collect();
        let replay_label = format!("replay of {} events", sizes.replay);
        let mut replay_seconds = Figure::new("replay", &replay_label, "s", seconds);
        if sizes.replay >= 1_000_000 {
            replay_seconds = replay_seconds.target("under 60 s", Better::Lower, 60.0);
        }
        figures.push(replay_seconds);
        let replay_rates: Vec<stages::Measured> =
            replayed.iter().map(|(_, measured)| *measured).collect();
        figures.push(Figure::new(
            "replay",
            "replay rate",
            "events/s",
            rates(&replay_rates),
        ));
        memory.push(("replay", peaks(&replay_rates)));
        cpu.push(cpu_row("replay", &replay_rates));
        report_so_far(&figures);
    }

    // Latency at a fixed offered rate.
    if runs_stage("latency") {
        let latencies = repeat("latency", runs, || {
            stages::latency(
                &bench,
                sizes.latency_rate,
                sizes.latency_warmup_seconds,
                sizes.latency_seconds,
            )
        })
        .await?;
        let at = format!("at {}/s", sizes.latency_rate);
        figures.push(Figure::new(
            "latency",
            &format!("offered referrals refused {at}"),
            "%",
            latencies.iter().map(|l| l.refused_percent).collect(),
        ));
        for (name, pick) in [
            (
                "p50",
                (|l: &stages::Latency| l.p50) as fn(&stages::Latency) -> f64,
            ),
            ("p95", |l| l.p95),
            ("p99", |l| l.p99),
            ("max", |l| l.max),
        ] {
            let mut figure = Figure::new(
                "latency",
                &format!("2xx to provider queue {name} {at}"),
                "ms",
                latencies.iter().map(pick).collect(),
            );
            if name == "p99" && sizes.latency_rate >= 500 {
                figure = figure.target("under 50 ms", Better::Lower, 50.0);
            }
            figures.push(figure);
        }
        memory.push((
            "ingest",
            latencies.iter().map(|l| l.ingest_peak_mib).collect(),
        ));
        memory.push((
            "router",
            latencies.iter().map(|l| l.router_peak_mib).collect(),
        ));
        report_so_far(&figures);
    }

    // Peak resident memory of each kind of process, over every run it took part in.
    let mut by_process: Vec<(&str, Vec<f64>)> = Vec::new();
    for (process, values) in memory {
        match by_process.iter_mut().find(|(name, _)| *name == process) {
            Some((_, all)) => all.extend(values),
            None => by_process.push((process, values)),
        }
    }
    for (process, values) in by_process {
        figures.push(
            Figure::new(
                "memory",
                &format!("peak resident: {process}"),
                "MiB",
                values,
            )
            .target("under 64 MiB", Better::Lower, 64.0),
        );
    }

    Ok((figures, cpu))
}

fn cpu_row(stage: &str, measured: &[stages::Measured]) -> cpu::Row {
    let uses: Vec<cpu::CpuUse> = measured.iter().filter_map(|one| one.cpu).collect();
    cpu::Row::new(stage, &uses)
}

/// The figures so far, on stderr: a stage that fails later does not lose them.
fn report_so_far(figures: &[Figure]) {
    eprint!("{}", figures::table(figures));
}

/// The machine, as `/proc` tells it: CPUs and memory.
fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|value| value.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {memory}")
}

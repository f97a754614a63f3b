//! Peers side by side (`linkwork-bench --peers`): linkwork's parse + validate of GP
//! ServiceRequests and BaRS message Bundles beside other FHIR implementations doing the
//! same to the same payloads, in the same run, timed the same way.
//!
//! The payloads are written as NDJSON under the output folder; each peer is a small
//! harness kept in `bench/peers/` and installed into the cache by `scripts/peers`,
//! which this runs as `scripts/peers run PEER DIR WARMUP_SECONDS ROUNDS`. Every harness,
//! and linkwork here in-process, checks each payload once, runs parse + validate over all
//! of them for the warm-up, then times `rounds` passes over all of them and reports the
//! median pass's microseconds per payload as one JSON line. A peer that cannot be
//! installed or run is reported with its error; the others still run. linkwork is
//! measured again after the peers, so a change of the machine's load during the run
//! shows.

use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use linkwork_domain::Source;
use linkwork_fhir::{referral, IntakeRules, Issue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::figures::{median, number};

/// How many distinct payloads of each kind.
pub const PAYLOADS: usize = 200;

/// The peers, in the order they run: the name `scripts/peers` knows each by, and the
/// name it is shown by when it does not run far enough to say its own.
pub const PEERS: [(&str, &str); 3] = [
    ("hapi", "hapi-fhir"),
    ("python", "fhir.resources"),
    ("medplum", "medplum"),
];

/// The longest a peer may take, its install included (HAPI's first install fetches
/// about 150 MB of jars).
const PEER_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Warm-up and timed rounds, the same for every peer and for linkwork.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub warmup_seconds: f64,
    pub rounds: usize,
}

impl Timing {
    pub fn for_run(quick: bool) -> Self {
        if quick {
            Self {
                warmup_seconds: 1.0,
                rounds: 3,
            }
        } else {
            // Java's JIT needs a few seconds before HAPI runs at its speed.
            Self {
                warmup_seconds: 5.0,
                rounds: 10,
            }
        }
    }
}

/// The same payloads for everyone: GP referrals as posted to `POST /fhir/ServiceRequest`
/// and BaRS `servicerequest-request` messages as posted to `$process-message`, each the
/// compact JSON bytes linkwork's criterion bench reads.
#[derive(Debug, Clone)]
pub struct Payloads {
    pub service_requests: Vec<Vec<u8>>,
    pub bundles: Vec<Vec<u8>>,
}

impl Payloads {
    pub fn generate(count: usize) -> Self {
        let service_requests = (0..count)
            .map(|number| {
                linkwork_testkit::gp_referral(&format!("PEERS-SR-{number:06}"))
                    .to_string()
                    .into_bytes()
            })
            .collect();
        let bundles = (0..count)
            .map(|number| {
                linkwork_testkit::bars_message(&format!("PEERS-BARS-{number:06}"), "new", "active")
                    .to_string()
                    .into_bytes()
            })
            .collect();
        Self {
            service_requests,
            bundles,
        }
    }

    /// Writes `service-requests.ndjson` and `bundles.ndjson` (one payload a line; compact
    /// JSON holds no newline) into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, payloads) in [
            ("service-requests.ndjson", &self.service_requests),
            ("bundles.ndjson", &self.bundles),
        ] {
            let mut text = Vec::new();
            for payload in payloads {
                text.extend_from_slice(payload);
                text.push(b'\n');
            }
            std::fs::write(dir.join(file), text)
                .with_context(|| format!("writing {}", dir.join(file).display()))?;
        }
        Ok(())
    }
}

/// What one implementation measured: the JSON line each harness prints, and what
/// linkwork's own measurement here is recorded as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub peer: String,
    pub version: String,
    pub runtime: String,
    /// What "validate" means for this implementation, in a few words.
    #[serde(default)]
    pub validation: String,
    /// Median over the rounds of the microseconds per ServiceRequest.
    pub service_request_us: f64,
    pub bundle_us: f64,
    #[serde(default)]
    pub rounds: usize,
    #[serde(default)]
    pub service_requests: usize,
    #[serde(default)]
    pub bundles: usize,
    #[serde(default)]
    pub refused_service_requests: usize,
    #[serde(default)]
    pub refused_bundles: usize,
    /// The first few refusals, each with the implementation's own message.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// The first few issues below error it raised on the first payload of each kind.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Start-up and the check pass over every payload, in seconds.
    #[serde(default)]
    pub first_pass_seconds: Option<f64>,
}

/// The measurement in a harness's standard output: its last line that is a JSON
/// object (a runtime may print notices before it).
pub fn parse_line(stdout: &str) -> Result<Measured, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('{'))
        .ok_or_else(|| "printed no JSON line".to_owned())?;
    let measured: Measured = serde_json::from_str(line)
        .map_err(|error| format!("printed a line that is not a measurement ({error}): {line}"))?;
    for (what, value) in [
        ("service_request_us", measured.service_request_us),
        ("bundle_us", measured.bundle_us),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("printed {what} = {value}, not a time"));
        }
    }
    Ok(measured)
}

/// One peer's row: its measurement, or why there is none, and linkwork beside it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerResult {
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The peer's time over linkwork's: how many times faster linkwork is (below 1,
    /// slower).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_request_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_ratio: Option<f64>,
}

impl PeerResult {
    pub fn ran(linkwork: &Measured, measured: Measured) -> Self {
        Self {
            peer: measured.peer.clone(),
            service_request_ratio: ratio(measured.service_request_us, linkwork.service_request_us),
            bundle_ratio: ratio(measured.bundle_us, linkwork.bundle_us),
            measured: Some(measured),
            error: None,
        }
    }

    pub fn failed(peer: &str, error: String) -> Self {
        Self {
            peer: peer.to_owned(),
            measured: None,
            error: Some(error),
            service_request_ratio: None,
            bundle_ratio: None,
        }
    }
}

fn ratio(peer_us: f64, linkwork_us: f64) -> Option<f64> {
    (linkwork_us > 0.0 && peer_us.is_finite()).then(|| peer_us / linkwork_us)
}

/// linkwork's ratio to one peer, in words.
/// A peer's row of the table: who, its times, and how linkwork compares.
fn row(measured: &Measured, service_request: String, bundle: String) -> [String; 7] {
    [
        measured.peer.clone(),
        measured.version.clone(),
        measured.runtime.clone(),
        number(measured.service_request_us),
        number(measured.bundle_us),
        service_request,
        bundle,
    ]
}

pub fn ratio_text(ratio: Option<f64>) -> String {
    match ratio {
        // Two decimals near 1, where one would round 1.04 to "1.0x faster".
        Some(ratio) if ratio > 1.0 && ratio < 2.0 => format!("linkwork {ratio:.2}x faster"),
        Some(ratio) if ratio > 1.0 => format!("linkwork {ratio:.1}x faster"),
        Some(ratio) => format!("{ratio:.2}x: linkwork slower"),
        None => "-".to_owned(),
    }
}

/// The target "parse + validate faster than every peer on the same payloads".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Met,
    /// Slower than (or as slow as) these peers on these kinds, e.g. `medplum Bundle`.
    NotMet {
        slower_than: Vec<String>,
    },
    /// Faster than every peer that ran, but these did not run.
    Unknown {
        did_not_run: Vec<String>,
    },
}

impl Verdict {
    pub fn of(results: &[PeerResult]) -> Self {
        let mut slower_than = Vec::new();
        let mut did_not_run = Vec::new();
        for result in results {
            match (result.service_request_ratio, result.bundle_ratio) {
                (Some(service_request), Some(bundle)) => {
                    if service_request <= 1.0 {
                        slower_than.push(format!("{} ServiceRequest", result.peer));
                    }
                    if bundle <= 1.0 {
                        slower_than.push(format!("{} Bundle", result.peer));
                    }
                }
                _ => did_not_run.push(result.peer.clone()),
            }
        }
        if !slower_than.is_empty() {
            Self::NotMet { slower_than }
        } else if !did_not_run.is_empty() {
            Self::Unknown { did_not_run }
        } else {
            Self::Met
        }
    }

    pub fn text(&self) -> String {
        match self {
            Self::Met => "met".to_owned(),
            Self::NotMet { slower_than } => {
                format!("NOT MET (not faster than {})", slower_than.join(", "))
            }
            Self::Unknown { did_not_run } => format!(
                "not known ({} did not run; faster than every peer that did)",
                did_not_run.join(", ")
            ),
        }
    }
}

/// Everything `--peers` measured, as written into the bench JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub payloads: usize,
    pub payload_dir: PathBuf,
    pub timing: Timing,
    pub linkwork: Measured,
    /// linkwork measured again once the peers have run: on a shared machine the load
    /// can change during a run, and a large difference from `linkwork` says it did.
    pub linkwork_after: Measured,
    pub peers: Vec<PeerResult>,
    pub target: String,
    pub verdict: Verdict,
}

/// Runs linkwork's parse + validate here, then each peer's harness through `script`
/// (`scripts/peers`), on payloads written into `dir`.
pub fn run(script: &Path, dir: &Path, timing: Timing) -> anyhow::Result<Report> {
    let payloads = Payloads::generate(PAYLOADS);
    payloads.write(dir)?;
    eprintln!("linkwork-bench: peers: linkwork parse + validate (in process)");
    let linkwork = measure_linkwork(&payloads, timing)?;
    let mut peers = Vec::new();
    for (id, name) in PEERS {
        eprintln!("linkwork-bench: peers: {name} (scripts/peers run {id})");
        let result = match run_peer(script, id, dir, timing) {
            Ok(measured) => PeerResult::ran(&linkwork, measured),
            Err(error) => {
                eprintln!("linkwork-bench: peers: {name} did not run: {error}");
                PeerResult::failed(name, error)
            }
        };
        peers.push(result);
    }
    eprintln!("linkwork-bench: peers: linkwork again, after the peers");
    let linkwork_after = measure_linkwork(&payloads, timing)?;
    let verdict = Verdict::of(&peers);
    Ok(Report {
        payloads: PAYLOADS,
        payload_dir: dir.to_owned(),
        timing,
        linkwork,
        linkwork_after,
        peers,
        target: "parse + validate faster than every peer on the same payloads".to_owned(),
        verdict,
    })
}

/// linkwork's own parse + validate, the code path of `crates/fhir/benches/intake.rs`:
/// the bytes into JSON, then the ServiceRequest read as ingest reads it, or the Bundle
/// read as a BaRS message and its ServiceRequest validated.
fn measure_linkwork(payloads: &Payloads, timing: Timing) -> anyhow::Result<Measured> {
    let source = Source::parse("gp:A81001")?;
    let rules = IntakeRules::default();
    let now = Utc::now();
    let read_service_request = |bytes: &[u8]| -> Result<(), String> {
        let body: Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        referral::read_service_request(&source, &body, &rules, now)
            .map(|validated| drop(black_box(validated)))
            .map_err(|issues| issues_text(&issues))
    };
    let read_bundle = |bytes: &[u8]| -> Result<(), String> {
        let bundle: Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        referral::read_message(&source, &bundle, &rules, now)
            .map(|validated| drop(black_box(validated)))
            .map_err(|issues| issues_text(&issues))
    };

    let started = Instant::now();
    let mut refusals = Vec::new();
    let refused_service_requests = check(
        "ServiceRequest",
        &payloads.service_requests,
        &read_service_request,
        &mut refusals,
    );
    let refused_bundles = check("Bundle", &payloads.bundles, &read_bundle, &mut refusals);
    if !refusals.is_empty() {
        anyhow::bail!(
            "linkwork refuses its own synthetic payloads: {}",
            refusals.join("; ")
        );
    }
    let first_pass_seconds = started.elapsed().as_secs_f64();

    let warmup_ends = Instant::now() + Duration::from_secs_f64(timing.warmup_seconds);
    while Instant::now() < warmup_ends {
        pass(&payloads.service_requests, &read_service_request);
        pass(&payloads.bundles, &read_bundle);
    }
    let mut service_request_us = Vec::with_capacity(timing.rounds);
    let mut bundle_us = Vec::with_capacity(timing.rounds);
    for _ in 0..timing.rounds {
        service_request_us.push(pass(&payloads.service_requests, &read_service_request));
        bundle_us.push(pass(&payloads.bundles, &read_bundle));
    }
    service_request_us.sort_by(f64::total_cmp);
    bundle_us.sort_by(f64::total_cmp);
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    Ok(Measured {
        peer: "linkwork".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime: format!("rust, {build} build"),
        validation: "serde_json, then the R4B model and linkwork's intake rules".to_owned(),
        service_request_us: median(&service_request_us),
        bundle_us: median(&bundle_us),
        rounds: timing.rounds,
        service_requests: payloads.service_requests.len(),
        bundles: payloads.bundles.len(),
        refused_service_requests,
        refused_bundles,
        refusals,
        warnings: Vec::new(),
        first_pass_seconds: Some(first_pass_seconds),
    })
}

fn issues_text(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|issue| format!("{}: {}", issue.expression.join(", "), issue.diagnostics))
        .collect::<Vec<_>>()
        .join("; ")
}

fn check(
    kind: &str,
    payloads: &[Vec<u8>],
    read: &dyn Fn(&[u8]) -> Result<(), String>,
    refusals: &mut Vec<String>,
) -> usize {
    let mut refused = 0;
    for (index, payload) in payloads.iter().enumerate() {
        if let Err(error) = read(payload) {
            refused += 1;
            if refusals.len() < 5 {
                refusals.push(format!("{kind} {index}: {error}"));
            }
        }
    }
    refused
}

/// Microseconds per payload of one pass over all of them.
fn pass(payloads: &[Vec<u8>], read: &dyn Fn(&[u8]) -> Result<(), String>) -> f64 {
    let started = Instant::now();
    for payload in payloads {
        let _ = black_box(read(black_box(payload)));
    }
    started.elapsed().as_secs_f64() * 1e6 / payloads.len() as f64
}

/// Runs `script run ID DIR WARMUP ROUNDS` (which installs the peer first when its
/// cache is missing), passing its standard error through and keeping its last lines
/// for the error when it fails.
fn run_peer(script: &Path, id: &str, dir: &Path, timing: Timing) -> Result<Measured, String> {
    let mut child = Command::new("bash")
        .arg(script)
        .arg("run")
        .arg(id)
        .arg(dir)
        .arg(timing.warmup_seconds.to_string())
        .arg(timing.rounds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a peer past its deadline is stopped with its JVM.
        .process_group(0)
        .spawn()
        .map_err(|error| format!("could not start {}: {error}", script.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_thread = {
        let tail = Arc::clone(&tail);
        let id = id.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  {id}: {line}");
                let mut tail = tail.lock().expect("stderr tail");
                if tail.len() == 12 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
    };
    let stdout_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + PEER_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.wait();
                break Err(format!(
                    "stopped after {} minutes",
                    PEER_DEADLINE.as_secs() / 60
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => break Err(error.to_string()),
        }
    };
    let stdout = stdout_thread.join().unwrap_or_default();
    let _ = stderr_thread.join();
    let tail: Vec<String> = tail.lock().expect("stderr tail").iter().cloned().collect();
    let last_words = || {
        tail.iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    match status {
        Ok(status) if status.success() => parse_line(&stdout),
        Ok(status) => Err(format!("exited with {status}: {}", last_words())),
        Err(error) => Err(format!("{error}: {}", last_words())),
    }
}

/// The table for a terminal: one row per implementation, linkwork first, then the
/// refusals, the peers that did not run, and the verdict.
pub fn table(report: &Report) -> String {
    let mut rows = vec![[
        "peer".to_owned(),
        "version".to_owned(),
        "runtime".to_owned(),
        "µs/ServiceRequest".to_owned(),
        "µs/Bundle".to_owned(),
        "linkwork beside it: ServiceRequest".to_owned(),
        "Bundle".to_owned(),
    ]];
    let linkwork = &report.linkwork;
    rows.push(row(linkwork, String::new(), String::new()));
    let mut notes = Vec::new();
    for result in &report.peers {
        match &result.measured {
            Some(measured) => {
                rows.push(row(
                    measured,
                    ratio_text(result.service_request_ratio),
                    ratio_text(result.bundle_ratio),
                ));
                if measured.refused_service_requests + measured.refused_bundles > 0 {
                    notes.push(format!(
                        "{} refused {} of {} ServiceRequests and {} of {} Bundles: {}",
                        measured.peer,
                        measured.refused_service_requests,
                        measured.service_requests,
                        measured.refused_bundles,
                        measured.bundles,
                        measured.refusals.join("; ")
                    ));
                }
            }
            None => {
                rows.push([
                    result.peer.clone(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "did not run".to_owned(),
                    String::new(),
                ]);
                notes.push(format!(
                    "{} did not run: {}",
                    result.peer,
                    result.error.as_deref().unwrap_or("")
                ));
            }
        }
    }
    let mut text = format!(
        "parse + validate of the same {} GP ServiceRequests and {} BaRS message Bundles: \
         median of {} rounds after {} s of warm-up\n",
        report.linkwork.service_requests,
        report.linkwork.bundles,
        report.timing.rounds,
        report.timing.warmup_seconds
    );
    text.push_str(&crate::figures::aligned(&rows, 3..=4));
    notes.push(format!(
        "linkwork measured again after the peers: {} µs/ServiceRequest, {} µs/Bundle ({})",
        number(report.linkwork_after.service_request_us),
        number(report.linkwork_after.bundle_us),
        steadiness(&report.linkwork, &report.linkwork_after)
    ));
    for note in notes {
        text.push_str(&note);
        text.push('\n');
    }
    if cfg!(debug_assertions) {
        text.push_str("linkwork's figure is a debug build's: compare with make bench-peers\n");
    }
    text.push_str(&format!(
        "target: {}: {}\n",
        report.target,
        report.verdict.text()
    ));
    text
}

/// How the second measurement of linkwork compares with the first: on a shared machine
/// a load that changed during the run shows as a large difference.
fn steadiness(first: &Measured, again: &Measured) -> String {
    let change = |before: f64, after: f64| {
        if before > 0.0 {
            (after - before).abs() / before
        } else {
            f64::INFINITY
        }
    };
    let largest = change(first.service_request_us, again.service_request_us)
        .max(change(first.bundle_us, again.bundle_us));
    if largest <= 0.2 {
        format!(
            "within {:.0} % of the first: the machine's load held",
            largest * 100.0
        )
    } else {
        "far from the first: the machine's load changed during the run".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(peer: &str, service_request_us: f64, bundle_us: f64) -> Measured {
        parse_line(&format!(
            r#"{{"peer":"{peer}","version":"1.0","runtime":"test","service_request_us":{service_request_us},"bundle_us":{bundle_us}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_harness_line_is_read_after_whatever_the_runtime_printed_before_it() {
        let stdout = "Picked up JAVA_TOOL_OPTIONS: -Xmx1g\n\
            {\"peer\":\"hapi-fhir\",\"version\":\"8.8.0\",\"runtime\":\"java 17.0.15\",\
            \"validation\":\"FhirInstanceValidator\",\"service_request_us\":2104.5,\
            \"bundle_us\":3000,\"rounds\":10,\"service_requests\":200,\"bundles\":200,\
            \"refused_service_requests\":0,\"refused_bundles\":2,\
            \"refusals\":[\"Bundle 0: ERROR Bundle.entry[0]: no\"],\"warnings\":[],\
            \"first_pass_seconds\":12.5}\n";
        let line = parse_line(stdout).unwrap();
        assert_eq!(line.peer, "hapi-fhir");
        assert_eq!(line.version, "8.8.0");
        assert_eq!(line.runtime, "java 17.0.15");
        assert_eq!((line.service_request_us, line.bundle_us), (2104.5, 3000.0));
        assert_eq!(
            (line.refused_service_requests, line.refused_bundles),
            (0, 2)
        );
        assert_eq!(line.refusals, ["Bundle 0: ERROR Bundle.entry[0]: no"]);
        assert_eq!(line.first_pass_seconds, Some(12.5));
    }

    #[test]
    fn the_optional_fields_of_a_harness_line_default() {
        let line = measured("medplum", 40.0, 80.0);
        assert_eq!(line.rounds, 0);
        assert!(line.refusals.is_empty());
        assert_eq!(line.first_pass_seconds, None);
    }

    #[test]
    fn a_harness_that_printed_no_measurement_is_an_error_that_says_so() {
        assert_eq!(parse_line("").unwrap_err(), "printed no JSON line");
        assert!(parse_line("{\"peer\":\"x\"}")
            .unwrap_err()
            .starts_with("printed a line that is not a measurement"));
        let zero =
            r#"{"peer":"x","version":"1","runtime":"r","service_request_us":0,"bundle_us":1}"#;
        assert_eq!(
            parse_line(zero).unwrap_err(),
            "printed service_request_us = 0, not a time"
        );
    }

    #[test]
    fn the_ratio_is_the_peers_time_over_linkworks() {
        let linkwork = measured("linkwork", 100.0, 200.0);
        let peer = PeerResult::ran(&linkwork, measured("hapi-fhir", 620.0, 100.0));
        assert_eq!(peer.service_request_ratio, Some(6.2));
        assert_eq!(peer.bundle_ratio, Some(0.5));
        assert_eq!(
            ratio_text(peer.service_request_ratio),
            "linkwork 6.2x faster"
        );
        assert_eq!(ratio_text(peer.bundle_ratio), "0.50x: linkwork slower");
        assert_eq!(ratio_text(Some(1.04)), "linkwork 1.04x faster");
        assert_eq!(ratio_text(None), "-");
    }

    #[test]
    fn the_target_is_met_only_when_linkwork_is_faster_than_every_peer_at_both() {
        let linkwork = measured("linkwork", 100.0, 100.0);
        let faster = PeerResult::ran(&linkwork, measured("hapi-fhir", 900.0, 1200.0));
        let slower_at_bundles = PeerResult::ran(&linkwork, measured("medplum", 150.0, 90.0));
        let as_fast = PeerResult::ran(&linkwork, measured("fhir.resources", 100.0, 300.0));
        let failed = PeerResult::failed("medplum", "npm install failed".to_owned());

        assert_eq!(Verdict::of(std::slice::from_ref(&faster)), Verdict::Met);
        assert_eq!(
            Verdict::of(&[faster.clone(), slower_at_bundles.clone(), as_fast]),
            Verdict::NotMet {
                slower_than: vec![
                    "medplum Bundle".to_owned(),
                    "fhir.resources ServiceRequest".to_owned()
                ]
            }
        );
        assert_eq!(
            Verdict::of(&[faster.clone(), failed.clone()]),
            Verdict::Unknown {
                did_not_run: vec!["medplum".to_owned()]
            }
        );
        // Slower than a peer that ran is final, whatever did not run.
        assert!(matches!(
            Verdict::of(&[slower_at_bundles, failed]),
            Verdict::NotMet { .. }
        ));
        assert_eq!(Verdict::Met.text(), "met");
    }

    #[test]
    fn the_payloads_are_distinct_one_a_line_and_linkwork_accepts_them() {
        let payloads = Payloads::generate(3);
        assert_ne!(payloads.service_requests[0], payloads.service_requests[1]);
        assert!(payloads
            .service_requests
            .iter()
            .chain(&payloads.bundles)
            .all(|payload| !payload.contains(&b'\n')));
        let dir = std::env::temp_dir().join(format!("linkwork-peers-{}", std::process::id()));
        payloads.write(&dir).unwrap();
        let written = std::fs::read_to_string(dir.join("bundles.ndjson")).unwrap();
        assert_eq!(written.lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
        let measured = measure_linkwork(
            &payloads,
            Timing {
                warmup_seconds: 0.0,
                rounds: 1,
            },
        )
        .unwrap();
        assert_eq!(
            (measured.refused_service_requests, measured.refused_bundles),
            (0, 0)
        );
        assert!(measured.service_request_us > 0.0 && measured.bundle_us > 0.0);
    }

    #[test]
    fn the_table_shows_each_peer_its_ratio_why_one_did_not_run_and_the_verdict() {
        let linkwork = measured("linkwork", 100.0, 100.0);
        let peers = vec![
            PeerResult::ran(&linkwork, measured("hapi-fhir", 2000.0, 3000.0)),
            PeerResult::failed("medplum", "npm install failed".to_owned()),
        ];
        let verdict = Verdict::of(&peers);
        let report = Report {
            payloads: 200,
            payload_dir: PathBuf::from("target/bench/peers"),
            timing: Timing::for_run(false),
            linkwork_after: linkwork.clone(),
            linkwork,
            peers,
            target: "faster than every peer".to_owned(),
            verdict,
        };
        let table = table(&report);
        assert!(table.contains("linkwork 20.0x faster"), "{table}");
        assert!(table.contains("linkwork 30.0x faster"), "{table}");
        assert!(
            table.contains("medplum did not run: npm install failed"),
            "{table}"
        );
        assert!(
            table.contains("linkwork measured again after the peers: 100 µs/ServiceRequest"),
            "{table}"
        );
        assert!(table.contains("within 0 % of the first"), "{table}");
        assert!(
            table.contains("target: faster than every peer: not known (medplum did not run"),
            "{table}"
        );
    }

    #[test]
    fn a_second_linkwork_figure_far_from_the_first_is_called_so() {
        let first = measured("linkwork", 100.0, 200.0);
        assert_eq!(
            steadiness(&first, &measured("linkwork", 110.0, 190.0)),
            "within 10 % of the first: the machine's load held"
        );
        assert!(steadiness(&first, &measured("linkwork", 100.0, 300.0)).starts_with("far"));
    }
}

//! The stages, each measured on a deployment of its own, and the raw figures they are
//! set beside: what the broker and Postgres do with the same bytes and rows when
//! linkwork is not in the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use linkwork_auth::Role;
use linkwork_bus::topics::{consumers, REFERRALS_INBOUND, REFERRAL_EVENTS};
use linkwork_bus::{Outbound, Producer};
use linkwork_domain::ProviderId;
use linkwork_store::sqlx::{self, Connection, PgConnection};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use crate::cpu::{CpuUse, Snapshot};
use crate::env::{Bench, Deployment, Served, DEV_SECRET};
use crate::figures::percentile;
use crate::payload::{self, CHUNK};

/// A rate measured in one run, and the peak memory of the process that did the work.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub per_second: f64,
    pub peak_mib: Option<f64>,
    /// Where the CPU went in the timed window (stages with one clean window).
    pub cpu: Option<CpuUse>,
}

/// Ends a stage run whose process did the work: its rate, the process's peak memory,
/// the process stopped and the deployment's database dropped.
async fn finish(
    served: Served,
    deployment: Deployment,
    done: usize,
    elapsed: Duration,
    cpu: CpuUse,
) -> anyhow::Result<Measured> {
    let peak = served.peak_mib();
    drop(served);
    deployment.drop_database().await?;
    Ok(Measured {
        per_second: done as f64 / elapsed.as_secs_f64(),
        peak_mib: Some(peak),
        cpu: Some(cpu),
    })
}

/// The providers of the bench's directory: twenty services for LS1, where every
/// synthetic referral lives, so each decision weighs twenty candidates.
fn directory(dir: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, Vec<ProviderId>)> {
    let mut yaml = String::from("providers:\n");
    let mut ids = Vec::new();
    for index in 0..20 {
        let id = format!("bench-provider-{index:02}");
        yaml.push_str(&format!(
            "  - id: {id}\n    name: Bench Provider {index}\n    kind: want\n    areas: {{ postcode_districts: [LS1] }}\n    needs: [social-isolation, loneliness]\n    capacity: 100000000\n    accept_within_working_days: 5\n"
        ));
        ids.push(ProviderId::parse(&id)?);
    }
    let path = dir.join(format!(
        "linkwork-bench-directory-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, yaml)?;
    Ok((path, ids))
}

/// The sum of the high watermarks of `topics`: how many records they hold.
async fn records_on(bench: &Bench, topics: &[String]) -> i64 {
    let mut total = 0;
    for topic in topics {
        for (_, _, high) in linkwork_testkit::topic::log_ends(&bench.kafka, topic).await {
            total += high;
        }
    }
    total
}

/// Waits until `done` says so, polling every `every`; fails after `within`.
async fn until<F, Fut>(
    within: Duration,
    every: Duration,
    what: &str,
    mut done: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    while !done().await? {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {within:?}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Produces `events` onto `topic` in chunks with linkwork's producer (idempotent,
/// `acks=all`), each chunk queued whole before its acknowledgements are awaited.
async fn produce_all(
    producer: &Producer,
    topic: &str,
    events: &[(linkwork_domain::EventId, linkwork_domain::ReferralEvent)],
) -> anyhow::Result<()> {
    for result in producer
        .publish_batch(topic, "linkwork/bench", Utc::now(), events)
        .await
    {
        result?;
    }
    Ok(())
}

/// Raw: `ReferralReceived` events, as ingest writes them, straight onto a topic with the
/// same producer settings; no HTTP, no validation, no Postgres.
pub async fn raw_produce(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("produce").await?;
    let topic = deployment.names.topic(REFERRAL_EVENTS);
    let producer = Producer::new(&bench.kafka)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut elapsed = Duration::ZERO;
    for start in (0..count).step_by(CHUNK) {
        let events = payload::receipts(&run, start..(start + CHUNK).min(count), Utc::now())?;
        let began = Instant::now();
        produce_all(&producer, &topic, &events).await?;
        elapsed += began.elapsed();
    }
    deployment.drop_database().await?;
    Ok(Measured {
        per_second: count as f64 / elapsed.as_secs_f64(),
        peak_mib: None,
        cpu: None,
    })
}

/// Ingest over HTTP: `count` referrals posted by `concurrency` clients at once, each
/// validated, on the log with `acks=all` and answered 2xx.
pub async fn ingest_http(
    bench: &Bench,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("http").await?;
    let served = deployment.serve("ingest", &[]).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let bodies: Vec<String> = (0..count)
        .map(|number| payload::service_request(&run, number))
        .collect();
    let token = token()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{}/fhir/ServiceRequest", served.base_url());
    let permits = Arc::new(Semaphore::new(concurrency));
    let cpu = Snapshot::now();
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for body in bodies {
        let permit = permits.clone().acquire_owned().await?;
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tasks.spawn(async move {
            let status = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .map(|response| response.status().as_u16());
            drop(permit);
            status
        });
    }
    let mut accepted = 0usize;
    let mut refused: HashMap<String, usize> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(status) if (200..300).contains(&status) => accepted += 1,
            Ok(status) => *refused.entry(status.to_string()).or_default() += 1,
            Err(error) => *refused.entry(error.to_string()).or_default() += 1,
        }
    }
    let elapsed = began.elapsed();
    if !refused.is_empty() {
        bail!(
            "ingest refused {} of {count}: {refused:?}",
            count - accepted
        );
    }
    let used = Snapshot::now().since(&cpu, accepted);
    finish(served, deployment, accepted, elapsed, used).await
}

/// Ingest over `referrals.inbound`: `count` ServiceRequests put on the topic by an
/// integration engine, until all their `ReferralReceived` events are on the log.
pub async fn ingest_inbound(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("inbound").await?;
    let served = deployment.serve("ingest", &[]).await?;
    let inbound = deployment.names.topic(REFERRALS_INBOUND);
    let events = vec![deployment.names.topic(REFERRAL_EVENTS)];
    let producer = Producer::new(&bench.kafka)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let bodies: Vec<String> = (0..count)
        .map(|number| payload::service_request(&run, number))
        .collect();
    let cpu = Snapshot::now();
    let began = Instant::now();
    for chunk in bodies.chunks(CHUNK) {
        let outbound = chunk
            .iter()
            .map(|body| {
                let mut headers = linkwork_bus::headers::HeaderList::default();
                headers.push("linkwork-source", "gp:A81001");
                Outbound {
                    topic: &inbound,
                    key: None,
                    partition: None,
                    payload: body.as_bytes(),
                    headers,
                }
            })
            .collect();
        for delivered in producer.send_all(outbound).await {
            delivered?;
        }
    }
    until(
        Duration::from_secs(600),
        Duration::from_millis(20),
        "every inbound referral on the log",
        || async { Ok(records_on(bench, &events).await >= count as i64) },
    )
    .await?;
    let elapsed = began.elapsed();
    let used = Snapshot::now().since(&cpu, count);
    finish(served, deployment, count, elapsed, used).await
}

/// Routing: `count` received referrals on the log, decided and put on provider queues.
pub async fn routing(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("routing").await?;
    let (directory, providers) = directory(&std::env::temp_dir())?;
    let served = deployment
        .serve(
            "router",
            &[("LINKWORK_DIRECTORY", directory.display().to_string())],
        )
        .await?;
    let queues: Vec<String> = providers
        .iter()
        .map(|provider| deployment.names.provider_queue(provider))
        .collect();
    let events_topic = deployment.names.topic(REFERRAL_EVENTS);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut events = Vec::with_capacity(count);
    for start in (0..count).step_by(CHUNK) {
        events.extend(payload::receipts(
            &run,
            start..(start + CHUNK).min(count),
            Utc::now(),
        )?);
    }
    let producer = Producer::new(&bench.kafka)?;
    let cpu = Snapshot::now();
    let began = Instant::now();
    for chunk in events.chunks(CHUNK) {
        produce_all(&producer, &events_topic, chunk).await?;
    }
    drop(events);
    until(
        Duration::from_secs(600),
        Duration::from_millis(50),
        "every referral on a provider queue",
        || async { Ok(records_on(bench, &queues).await >= count as i64) },
    )
    .await?;
    let elapsed = began.elapsed();
    let _ = std::fs::remove_file(directory);
    let used = Snapshot::now().since(&cpu, count);
    finish(served, deployment, count, elapsed, used).await
}

/// Raw beside routing: the same received events read from the log and written to one
/// queue topic as they are, with linkwork's producer; no decision, no Postgres.
pub async fn raw_forward(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("forward").await?;
    let from = deployment.names.topic(REFERRAL_EVENTS);
    let to = deployment
        .names
        .topic(linkwork_bus::topics::TRIAGE_REFERRALS);
    let producer = Producer::new(&bench.kafka)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    for start in (0..count).step_by(CHUNK) {
        let events = payload::receipts(&run, start..(start + CHUNK).min(count), Utc::now())?;
        produce_all(&producer, &from, &events).await?;
    }
    let consumer: StreamConsumer = bench
        .kafka
        .client_config()
        .set("group.id", format!("bench-forward-{run}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&from])?;
    let cpu = Snapshot::now();
    let began = Instant::now();
    let mut forwarded = 0usize;
    while forwarded < count {
        let mut batch = Vec::new();
        let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("the log stopped giving records")??;
        batch.push(first.detach());
        while batch.len() < 1_000 {
            match tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                _ => break,
            }
        }
        let outbound = batch
            .iter()
            .map(|message| Outbound {
                topic: &to,
                key: message.key(),
                partition: None,
                payload: message.payload().unwrap_or_default(),
                headers: linkwork_bus::headers::HeaderList::from_kafka(message.headers()),
            })
            .collect();
        for delivered in producer.send_all(outbound).await {
            delivered?;
        }
        forwarded += batch.len();
        consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async)?;
    }
    let elapsed = began.elapsed();
    let used = Snapshot::now().since(&cpu, count);
    deployment.drop_database().await?;
    Ok(Measured {
        per_second: count as f64 / elapsed.as_secs_f64(),
        peak_mib: None,
        cpu: Some(used),
    })
}

/// Projection: `count` events (whole referral lives) on the log, then `serve projector`
/// folding them into the read models. Timed from its first committed batch to the one
/// that brings its stored offsets to the end of the log, counting the events in
/// between: the events are on the log before it starts, so neither the producer's rate
/// nor the process's start-up is in the figure.
pub async fn projection(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    let deployment = bench.deployment("projection").await?;
    let events_topic = deployment.names.topic(REFERRAL_EVENTS);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let lives = count.div_ceil(5);
    let producer = Producer::new(&bench.kafka)?;
    let mut produced = 0usize;
    for start in (0..lives).step_by(CHUNK / 5) {
        let events = payload::lives(&run, start..(start + CHUNK / 5).min(lives), Utc::now())?;
        produced += events.len();
        produce_all(&producer, &events_topic, &events).await?;
    }
    let total = produced as i64;
    let database = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&deployment.database_url)
        .await?;
    let projector = consumers::PROJECTOR;
    let applied = || {
        let query = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
        )
        .bind(projector)
        .bind(&events_topic);
        let database = database.clone();
        async move { anyhow::Ok(query.fetch_one(&database).await?.unwrap_or(0)) }
    };
    let served = deployment.serve("projector", &[]).await?;
    let mut first: Option<(Instant, i64)> = None;
    let mut cpu: Option<Snapshot> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    let finished = loop {
        let now = applied().await?;
        let at = Instant::now();
        if first.is_none() && now > 0 {
            first = Some((at, now));
            cpu = Some(Snapshot::now());
        }
        if now >= total {
            break at;
        }
        if at > deadline {
            bail!("gave up waiting for the projector at the end of the log after 900 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    database.close().await;
    let (began, already) = first.unwrap_or((finished, 0));
    let counted = usize::try_from(total - already).unwrap_or(0);
    if counted == 0 {
        bail!("the projector applied all {total} events in its first batch: too few to time");
    }
    let used = cpu
        .map(|start| Snapshot::now().since(&start, counted))
        .unwrap_or_default();
    finish(served, deployment, counted, finished - began, used).await
}

/// Raw beside projection: the same events as rows (id, referral, type, JSON body)
/// written into Postgres with `COPY`, in chunks, without any read model.
pub async fn raw_copy(bench: &Bench, count: usize) -> anyhow::Result<Measured> {
    use linkwork_domain::DomainEvent;
    let deployment = bench.deployment("copy").await?;
    let mut database = PgConnection::connect(&deployment.database_url).await?;
    sqlx::query(
        "CREATE TABLE bench_events (event_id uuid PRIMARY KEY, referral_id uuid NOT NULL, \
         event_type text NOT NULL, body jsonb NOT NULL)",
    )
    .execute(&mut database)
    .await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let lives = count.div_ceil(5);
    let mut elapsed = Duration::ZERO;
    let mut total = 0usize;
    for start in (0..lives).step_by(CHUNK / 5) {
        let events = payload::lives(&run, start..(start + CHUNK / 5).min(lives), Utc::now())?;
        let mut text = String::new();
        for (id, event) in &events {
            let body = String::from_utf8(event.encode())?;
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                id.as_uuid(),
                event.referral_id(),
                event.event_type(),
                body.replace('\\', "\\\\")
            ));
        }
        total += events.len();
        let began = Instant::now();
        let mut copy = database
            .copy_in_raw("COPY bench_events FROM STDIN (FORMAT text)")
            .await?;
        copy.send(text.as_bytes()).await?;
        copy.finish().await?;
        elapsed += began.elapsed();
    }
    drop(database);
    deployment.drop_database().await?;
    Ok(Measured {
        per_second: total as f64 / elapsed.as_secs_f64(),
        peak_mib: None,
        cpu: None,
    })
}

/// Replay: `count` events on the log, then `linkwork replay` rebuilding every read
/// model from offset 0. The wall time of the command, and its peak memory.
pub async fn replay(bench: &Bench, count: usize) -> anyhow::Result<(f64, Measured)> {
    let deployment = bench.deployment("replay").await?;
    let events_topic = deployment.names.topic(REFERRAL_EVENTS);
    let producer = Producer::new(&bench.kafka)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let lives = count.div_ceil(5);
    let mut total = 0usize;
    for start in (0..lives).step_by(CHUNK / 5) {
        let events = payload::lives(&run, start..(start + CHUNK / 5).min(lives), Utc::now())?;
        total += events.len();
        produce_all(&producer, &events_topic, &events).await?;
    }
    let mut command = deployment.linkwork(&["replay"]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let cpu = Snapshot::now();
    let began = Instant::now();
    let child = command.spawn().context("starting linkwork replay")?;
    let pid = child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let waiting = {
        let peak = peak.clone();
        tokio::task::spawn_blocking(move || {
            let sampler = std::thread::spawn({
                let peak = peak.clone();
                move || {
                    while let Some(kib) = crate::env::high_water_kib(pid) {
                        peak.fetch_max(kib, std::sync::atomic::Ordering::AcqRel);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
            let output = child.wait_with_output();
            let _ = sampler.join();
            output
        })
    };
    let output = waiting.await??;
    let elapsed = began.elapsed();
    let used = Snapshot::now().since(&cpu, total);
    if !output.status.success() {
        bail!(
            "linkwork replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    deployment.drop_database().await?;
    let seconds = elapsed.as_secs_f64();
    Ok((
        seconds,
        Measured {
            per_second: total as f64 / seconds,
            peak_mib: Some(peak.load(std::sync::atomic::Ordering::Acquire) as f64 / 1024.0),
            cpu: Some(used),
        },
    ))
}

/// End to end at a fixed rate: an open-loop generator posts `rate` referrals a second
/// for `seconds` (a slow answer does not slow the offered load); each referral's time
/// from its 2xx to its arrival on a provider queue. Percentiles in milliseconds, and
/// the two processes' peak memory.
pub struct Latency {
    /// Offered referrals answered other than 2xx (not in the percentiles).
    pub refused_percent: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub ingest_peak_mib: f64,
    pub router_peak_mib: f64,
}

/// The latency stage: `warmup` seconds of the offered rate first, not timed (pools,
/// producer metadata and the broker's new partitions warm up, as in any deployment
/// that has run for a while), then `seconds` timed.
pub async fn latency(
    bench: &Bench,
    rate: u32,
    warmup: u32,
    seconds: u32,
) -> anyhow::Result<Latency> {
    let deployment = bench.deployment("latency").await?;
    let (directory, providers) = directory(&std::env::temp_dir())?;
    let router = deployment
        .serve(
            "router",
            &[("LINKWORK_DIRECTORY", directory.display().to_string())],
        )
        .await?;
    let ingest = deployment.serve("ingest", &[]).await?;
    let queues: Vec<String> = providers
        .iter()
        .map(|provider| deployment.names.provider_queue(provider))
        .collect();

    // Arrivals on the queues, by referral id (the key), as soon as they are there.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer: StreamConsumer = bench
        .kafka
        .client_config()
        .set(
            "group.id",
            format!("bench-latency-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The broker answers a fetch as soon as any partition has a record, so this
        // only bounds how often an idle fetch is repeated: at 5 ms the bench's own
        // empty fetches of 60 partitions took broker CPU from what it measures.
        .set("fetch.wait.max.ms", "100")
        .create()?;
    // Every partition of every queue, from the start: no group to join, so nothing is
    // missed while a rebalance settles.
    let mut assignment = rdkafka::TopicPartitionList::new();
    for queue in &queues {
        for (partition, _, _) in linkwork_testkit::topic::log_ends(&bench.kafka, queue).await {
            assignment.add_partition_offset(queue, partition, rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let listening = tokio::spawn({
        let arrived = arrived.clone();
        async move {
            loop {
                if let Ok(message) = consumer.recv().await {
                    let now = Instant::now();
                    if let Some(key) = message.key() {
                        let key = String::from_utf8_lossy(key).into_owned();
                        arrived
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(key)
                            .or_insert(now);
                    }
                }
            }
        }
    });
    let token = token()?;
    let client = reqwest::Client::new();
    let url = format!("{}/fhir/ServiceRequest", ingest.base_url());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let acknowledged: Arc<Mutex<Vec<(String, Instant, bool)>>> = Arc::default();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let untimed = (rate * warmup) as usize;
    let total = untimed + (rate * seconds) as usize;
    for number in 0..total {
        let timed = number >= untimed;
        ticks.tick().await;
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let body = payload::service_request(&run, number);
        let acknowledged = acknowledged.clone();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await?;
            let at = Instant::now();
            if !response.status().is_success() {
                // Refused under the offered load: counted (in the timed part), not
                // timed. `Ok(false)` is a refusal to count.
                return Ok(!timed);
            }
            let id = response
                .headers()
                .get("location")
                .and_then(|location| location.to_str().ok())
                .and_then(|location| location.split("/fhir/ServiceRequest/").nth(1))
                .and_then(|rest| rest.split('/').next())
                .context("a Location")?
                .to_owned();
            acknowledged
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((id, at, timed));
            Ok::<bool, anyhow::Error>(true)
        });
    }
    let mut refused = 0usize;
    while let Some(joined) = tasks.join_next().await {
        if !joined?? {
            refused += 1;
        }
    }
    let acknowledged =
        std::mem::take(&mut *acknowledged.lock().unwrap_or_else(PoisonError::into_inner));
    until(
        Duration::from_secs(120),
        Duration::from_millis(50),
        "every referral on a provider queue",
        || async {
            let arrived = arrived.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(acknowledged
                .iter()
                .all(|(id, _, _)| arrived.contains_key(id)))
        },
    )
    .await?;
    listening.abort();
    let mut millis: Vec<f64> = {
        let arrived = arrived.lock().unwrap_or_else(PoisonError::into_inner);
        acknowledged
            .iter()
            .filter(|(_, _, timed)| *timed)
            .map(|(id, at, _)| {
                // A queue can have it before the client has read the 2xx: that is 0.
                arrived[id].saturating_duration_since(*at).as_secs_f64() * 1000.0
            })
            .collect()
    };
    millis.sort_by(f64::total_cmp);
    let figures = Latency {
        refused_percent: refused as f64 * 100.0 / (total - untimed) as f64,
        p50: percentile(&millis, 0.50),
        p95: percentile(&millis, 0.95),
        p99: percentile(&millis, 0.99),
        max: millis.last().copied().unwrap_or(f64::NAN),
        ingest_peak_mib: ingest.peak_mib(),
        router_peak_mib: router.peak_mib(),
    };
    drop((ingest, router));
    let _ = std::fs::remove_file(directory);
    deployment.drop_database().await?;
    Ok(figures)
}

/// A development token for the GP that sends every synthetic referral.
fn token() -> anyhow::Result<String> {
    let role = Role::Source;
    Ok(linkwork_auth::dev_token(
        &SecretString::from(DEV_SECRET),
        role,
        "gp:A81001",
        &role.default_scopes("gp:A81001"),
        3_600,
    )?)
}

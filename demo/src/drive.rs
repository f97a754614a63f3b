//! Drives the synthetic borough through linkwork's real interfaces on a manual clock:
//! every service runs in this process (`serve all`), the borough's day advances every
//! `day_millis`, referrals arrive over the FHIR API (ServiceRequest, BaRS, batch
//! Bundles) and on `referrals.inbound`, the call log arrives as CSV, and each
//! provider's system reads its queue topic and answers through the Task and
//! Observation API or on `provider.responses`, on the days its plan says.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use linkwork_auth::Role;
use linkwork_bus::headers::HeaderList;
use linkwork_bus::topics::{PROVIDER_RESPONSES, REFERRALS_INBOUND};
use linkwork_bus::{Outbound, Producer};
use linkwork_domain::{Clock, ProviderId, ReferralId, Source};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use linkwork::settings::Settings;
use linkwork_borough::{Borough, Channel, Chapter, Fate, Referral, Support};

/// The borough's provider directory (the example one; LW postcodes).
pub const DIRECTORY: &str = include_str!("../../directory.example.yaml");

/// Days the story runs on after the last referral can arrive, for follow-ups.
pub const FOLLOW_UP_DAYS: u32 = 120;

/// How big the story is, which part of it, and how fast it runs.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    pub seed: u64,
    pub people: usize,
    /// Days over which referrals arrive; the drive runs `FOLLOW_UP_DAYS` more.
    pub days: u32,
    /// Real milliseconds per borough day.
    pub day_millis: u64,
    /// Which run's part of the borough's story: its people and its first day.
    pub chapter: Chapter,
}

impl DriveOptions {
    /// Every day the drive moves the clock through.
    pub fn story_days(&self) -> u32 {
        self.days + FOLLOW_UP_DAYS
    }
}

/// A provider action due on a day.
#[derive(Debug, Clone)]
struct Due {
    provider: ProviderId,
    over_kafka: bool,
    referral_id: String,
    task_id: String,
    resource: Value,
    /// Times it met 503 (not projected yet) and was put off to the next day.
    retries: u8,
}

type Schedule = Arc<Mutex<BTreeMap<u32, Vec<Due>>>>;

/// What the drive did, for the summary.
#[derive(Debug, Clone, Default)]
pub struct Drove {
    pub sent: BTreeMap<&'static str, usize>,
    pub refused: usize,
    pub provider_actions: usize,
    pub provider_refusals: usize,
    pub end: Option<DateTime<Utc>>,
}

fn token(secret: &SecretString, role: Role, client: &str) -> anyhow::Result<String> {
    Ok(linkwork_auth::dev_token(
        secret,
        role,
        client,
        &role.default_scopes(client),
        24 * 3600,
    )?)
}

/// The referral's id as linkwork derives it.
fn referral_id(referral: &Referral) -> anyhow::Result<ReferralId> {
    let source = Source::parse(&referral.source)?;
    Ok(ReferralId::derive(
        &source,
        &linkwork_borough::reference_system(&referral.source),
        &referral.reference,
    ))
}

/// What the provider of `attempt` does: the support it gives, a rejection, or nothing.
fn plan_for(fate: &Fate, attempt: u32) -> Option<Result<&Support, &'static str>> {
    match (fate, attempt) {
        (Fate::Supported(support), _) => Some(Ok(support)),
        (Fate::RejectedFirst { reason, .. }, 1) => Some(Err(reason)),
        (Fate::RejectedFirst { then, .. }, _) => plan_for(then, 1),
        (Fate::NoAnswer, _) => None,
    }
}

/// Reads the providers' queue topics and schedules each provider's answers.
#[expect(
    clippy::too_many_arguments,
    reason = "the demo driver's parts are passed explicitly; the demo crate will hold them in one context"
)]
async fn provider_systems(
    settings: Settings,
    providers: Vec<ProviderId>,
    borough: Arc<Borough>,
    plans: Arc<HashMap<ReferralId, usize>>,
    schedule: Schedule,
    today: Arc<Mutex<u32>>,
    canonical_base: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = settings
        .kafka()?
        .client_config()
        .set(
            "group.id",
            format!("linkwork-demo-providers-{}", uuid::Uuid::now_v7()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()
        .context("the providers' queue reader")?;
    // Assigned, not subscribed: no group to join, reading from the end at once.
    let queues: HashMap<String, ProviderId> = providers
        .iter()
        .map(|provider| (settings.names.provider_queue(provider), provider.clone()))
        .collect();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in queues.keys() {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        for found in metadata.topics() {
            for partition in found.partitions() {
                assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::End)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let Some(provider) = queues.get(message.topic()).cloned() else {
            continue;
        };
        let Some(bundle) = message
            .payload()
            .and_then(|payload| serde_json::from_slice::<Value>(payload).ok())
        else {
            continue;
        };
        let Some(task) = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| &entry["resource"])
            .find(|resource| {
                resource["resourceType"] == "Task" && resource["status"] == "requested"
            })
        else {
            continue; // a withdrawal
        };
        let Some((referral, attempt)) = task["identifier"][0]["value"]
            .as_str()
            .and_then(|value| value.split_once('/'))
            .and_then(|(referral, attempt)| {
                Some((
                    ReferralId::from_uuid(uuid::Uuid::parse_str(referral).ok()?),
                    attempt.parse::<u32>().ok()?,
                ))
            })
        else {
            continue;
        };
        let Some(index) = plans.get(&referral) else {
            continue;
        };
        let planned = &borough.referrals[*index];
        let task_id = referral.task_id(attempt).to_string();
        let day = *today.lock().unwrap_or_else(PoisonError::into_inner);
        let arrived = borough.start + chrono::Duration::days(i64::from(day));
        let mut due = schedule.lock().unwrap_or_else(PoisonError::into_inner);
        match plan_for(&planned.fate, attempt) {
            None => {}
            Some(Err(reason)) => due.entry(day + 1).or_default().push(Due {
                provider: provider.clone(),
                over_kafka: false,
                referral_id: referral.to_string(),
                task_id: task_id.clone(),
                retries: 0,
                resource: serde_json::json!({
                    "resourceType": "Task",
                    "id": task_id,
                    "status": "rejected",
                    "intent": "order",
                    "statusReason": { "text": reason },
                    "focus": { "reference": format!("ServiceRequest/{referral}") },
                }),
            }),
            Some(Ok(support)) => {
                for step in support.steps(
                    &referral.to_string(),
                    &task_id,
                    &referral.patient_id().to_string(),
                    arrived,
                    &canonical_base,
                ) {
                    due.entry(day + step.after_days).or_default().push(Due {
                        provider: provider.clone(),
                        over_kafka: support.over_kafka,
                        referral_id: referral.to_string(),
                        task_id: task_id.clone(),
                        retries: 0,
                        resource: step.resource,
                    });
                }
            }
        }
    }
}

/// Runs the borough's story against the services at `base_url`.
pub async fn drive(
    settings: &Settings,
    options: &DriveOptions,
    clock: &Clock,
    base_url: &str,
    stop: CancellationToken,
) -> anyhow::Result<Drove> {
    let secret = std::env::var("LINKWORK_AUTH_DEV_SECRET")
        .map(SecretString::from)
        .map_err(|_| anyhow::anyhow!("LINKWORK_AUTH_DEV_SECRET is not set (make demo sets one)"))?;
    let canonical_base = linkwork_fhir::IntakeRules::default().canonical_base;
    let borough = Arc::new(linkwork_borough::chapter(
        options.seed,
        options.people,
        options.days,
        options.chapter,
    ));
    let plans: Arc<HashMap<ReferralId, usize>> = Arc::new(
        borough
            .referrals
            .iter()
            .enumerate()
            .map(|(index, referral)| Ok((referral_id(referral)?, index)))
            .collect::<anyhow::Result<_>>()?,
    );
    let directory = linkwork_router::directory::DirectoryDocument::parse(DIRECTORY)?;
    let providers = directory.provider_ids();
    let client = reqwest::Client::new();
    let channels = Channels {
        producer: Producer::new(settings.kafka()?)?,
        inbound: settings.names.topic(REFERRALS_INBOUND),
        responses: settings.names.topic(PROVIDER_RESPONSES),
    };
    let schedule: Schedule = Arc::default();
    let today = Arc::new(Mutex::new(0u32));
    let mut drove = Drove::default();

    clock.set(borough.start);
    let readers = tokio::spawn(provider_systems(
        settings.clone(),
        providers.clone(),
        borough.clone(),
        plans.clone(),
        schedule.clone(),
        today.clone(),
        canonical_base.clone(),
        stop.clone(),
    ));
    // Let the queue reader take its place at the end of each queue.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The call log, as ASC exports it (a later chapter's holds only its diversions,
    // and may hold none).
    let call_log = borough.call_log_csv();
    if call_log.lines().nth(1).is_some() {
        let response = client
            .post(format!("{base_url}/asc/call-log"))
            .bearer_auth(token(&secret, Role::Source, "asc")?)
            .header("content-type", "text/csv")
            .body(call_log)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "the call-log import was refused: {}",
                response.text().await?
            );
        }
        *drove.sent.entry("call-log CSV").or_default() += 1;
    }

    let mut by_day: BTreeMap<u32, Vec<&Referral>> = BTreeMap::new();
    for referral in &borough.referrals {
        by_day.entry(referral.day).or_default().push(referral);
    }
    let total_days = options.story_days();
    let bar = ProgressBar::new(u64::from(total_days)).with_style(
        ProgressStyle::with_template("   day {pos}/{len} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for day in 0..total_days {
        if stop.is_cancelled() {
            bail!("interrupted");
        }
        *today.lock().unwrap_or_else(PoisonError::into_inner) = day;
        clock.set(borough.start + chrono::Duration::days(i64::from(day)));
        if let Some(referrals) = by_day.get(&day) {
            send_referrals(
                &client,
                &channels,
                &secret,
                &borough,
                referrals,
                &canonical_base,
                base_url,
                &mut drove,
            )
            .await?;
        }
        let due = schedule
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&day)
            .unwrap_or_default();
        // Each referral's actions in order; different referrals' at the same time, so
        // one provider waiting on the projection does not hold up the borough.
        let mut by_referral: BTreeMap<String, Vec<Due>> = BTreeMap::new();
        for action in due {
            by_referral
                .entry(action.referral_id.clone())
                .or_default()
                .push(action);
        }
        let mut running = tokio::task::JoinSet::new();
        for (_, actions) in by_referral {
            let (client, channels, secret, base_url, schedule) = (
                client.clone(),
                channels.clone(),
                secret.clone(),
                base_url.to_owned(),
                schedule.clone(),
            );
            running.spawn(async move {
                let mut counts = Drove::default();
                for action in &actions {
                    act(
                        &client,
                        &channels,
                        &secret,
                        &base_url,
                        action,
                        &mut counts,
                        &schedule,
                        day,
                    )
                    .await?;
                }
                anyhow::Ok(counts)
            });
        }
        while let Some(finished) = running.join_next().await {
            let counts = finished.context("a provider's system")??;
            drove.provider_actions += counts.provider_actions;
            drove.provider_refusals += counts.provider_refusals;
        }
        bar.set_position(u64::from(day + 1));
        bar.set_message(format!(
            "{} referrals sent, {} provider updates",
            drove.sent.values().sum::<usize>(),
            drove.provider_actions
        ));
        tokio::time::sleep(Duration::from_millis(options.day_millis)).await;
    }
    bar.finish_and_clear();
    readers.abort();
    drove.end = Some(clock.now());
    Ok(drove)
}

/// The producer and the deployment's names of the topics the demo writes to as the
/// integration engines and providers' systems would.
#[derive(Clone)]
struct Channels {
    producer: Producer,
    inbound: String,
    responses: String,
}

#[expect(
    clippy::too_many_arguments,
    reason = "the demo driver's parts are passed explicitly; the demo crate will hold them in one context"
)]
async fn send_referrals(
    client: &reqwest::Client,
    channels: &Channels,
    secret: &SecretString,
    borough: &Borough,
    referrals: &[&Referral],
    canonical_base: &str,
    base_url: &str,
    drove: &mut Drove,
) -> anyhow::Result<()> {
    let mut batches: BTreeMap<&str, Vec<&Referral>> = BTreeMap::new();
    for referral in referrals {
        match referral.channel {
            Channel::Batch => batches.entry(&referral.source).or_default().push(referral),
            Channel::ServiceRequest => {
                let response = client
                    .post(format!("{base_url}/fhir/ServiceRequest"))
                    .bearer_auth(token(secret, Role::Source, &referral.source)?)
                    .header("content-type", "application/fhir+json")
                    .body(
                        borough
                            .service_request(referral, canonical_base)
                            .to_string(),
                    )
                    .send()
                    .await?;
                count(drove, "FHIR ServiceRequest", response.status().is_success());
            }
            Channel::Bars => {
                let response = client
                    .post(format!("{base_url}/fhir/$process-message"))
                    .bearer_auth(token(secret, Role::Source, &referral.source)?)
                    .header("content-type", "application/fhir+json")
                    .header("X-Request-Id", uuid::Uuid::now_v7().to_string())
                    .header("X-Correlation-Id", uuid::Uuid::now_v7().to_string())
                    .header("NHSD-End-User-Organisation-ODS", "LWH01")
                    .header("NHSD-Target-Identifier", bars_target(canonical_base))
                    .body(borough.bars_message(referral, canonical_base).to_string())
                    .send()
                    .await?;
                count(drove, "BaRS message", response.status().is_success());
            }
            Channel::Inbound => {
                let mut headers = HeaderList::default();
                headers.push(
                    linkwork_ingest::inbound::SOURCE_HEADER,
                    referral.source.as_str(),
                );
                let body = borough
                    .service_request(referral, canonical_base)
                    .to_string();
                channels
                    .producer
                    .send(Outbound {
                        topic: &channels.inbound,
                        key: Some(referral.source.as_bytes()),
                        partition: None,
                        payload: body.as_bytes(),
                        headers,
                    })
                    .await
                    .with_context(|| format!("publishing to {REFERRALS_INBOUND}"))?;
                count(drove, REFERRALS_INBOUND, true);
            }
        }
    }
    for (source, referrals) in batches {
        let response = client
            .post(format!("{base_url}/fhir"))
            .bearer_auth(token(secret, Role::Source, source)?)
            .header("content-type", "application/fhir+json")
            .body(borough.batch_bundle(&referrals, canonical_base).to_string())
            .send()
            .await?;
        let ok = response.status().is_success();
        for _ in &referrals {
            count(drove, "FHIR batch entry", ok);
        }
    }
    Ok(())
}

fn count(drove: &mut Drove, channel: &'static str, ok: bool) {
    if ok {
        *drove.sent.entry(channel).or_default() += 1;
    } else {
        drove.refused += 1;
    }
}

/// The `NHSD-Target-Identifier` naming linkwork's router: base64 of `{system, value}`.
fn bars_target(canonical_base: &str) -> String {
    use base64::Engine;
    let target =
        serde_json::json!({ "system": format!("{canonical_base}/Id/service"), "value": "router" });
    base64::engine::general_purpose::STANDARD.encode(target.to_string())
}

#[expect(
    clippy::too_many_arguments,
    reason = "the demo driver's parts are passed explicitly; the demo crate will hold them in one context"
)]
async fn act(
    client: &reqwest::Client,
    channels: &Channels,
    secret: &SecretString,
    base_url: &str,
    action: &Due,
    drove: &mut Drove,
    schedule: &Schedule,
    day: u32,
) -> anyhow::Result<()> {
    let resource_type = action.resource["resourceType"].as_str().unwrap_or("");
    if action.over_kafka {
        let mut headers = HeaderList::default();
        headers.push(
            linkwork_ingest::responses::PROVIDER_HEADER,
            action.provider.as_str(),
        );
        let body = action.resource.to_string();
        channels
            .producer
            .send(Outbound {
                topic: &channels.responses,
                key: Some(action.referral_id.as_bytes()),
                partition: None,
                payload: body.as_bytes(),
                headers,
            })
            .await
            .with_context(|| format!("publishing to {PROVIDER_RESPONSES}"))?;
        drove.provider_actions += 1;
        return Ok(());
    }
    let request = if resource_type == "Task" {
        client.put(format!("{base_url}/fhir/Task/{}", action.task_id))
    } else {
        client.post(format!("{base_url}/fhir/{resource_type}"))
    };
    let response = request
        .bearer_auth(token(secret, Role::Provider, action.provider.as_str())?)
        .header("content-type", "application/fhir+json")
        .body(action.resource.to_string())
        .send()
        .await?;
    let status = response.status();
    if status.is_success() {
        drove.provider_actions += 1;
    } else if status.as_u16() == 503 && action.retries < 2 {
        // The referral is still being routed or projected: try again tomorrow. (An
        // offer the router made as the deadline passed, just after this provider's
        // acceptance of the earlier one, is never projected: it lost on the log.)
        let mut again = action.clone();
        again.retries += 1;
        schedule
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(day + 1)
            .or_default()
            .push(again);
    } else {
        // Outside the lifecycle by now (re-routed, closed): the provider is told so.
        drove.provider_refusals += 1;
    }
    Ok(())
}

//! Every topic name linkwork uses (the only place they are written in code) and
//! `topics.yaml`, which declares each one with its settings; `apply` makes a cluster
//! match the declaration.

use std::collections::BTreeMap;
use std::time::Duration;

use linkwork_domain::ProviderId;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::settings::KafkaSettings;
use crate::BusError;

/// Raw FHIR from integration engines.
pub const REFERRALS_INBOUND: &str = "referrals.inbound";
/// The event log: every fact about every referral. Retained forever.
pub const REFERRAL_EVENTS: &str = "referral.events";
/// Referrals no provider can take, for a person to place.
pub const TRIAGE_REFERRALS: &str = "triage.referrals";
/// Task updates and outcome Observations from providers' systems.
pub const PROVIDER_RESPONSES: &str = "provider.responses";
/// Adult Social Care call-log events.
pub const ASC_CALL_LOG: &str = "asc.call-log";
/// Outcome Observations, identified, for referrers.
pub const OUTCOMES_OBSERVATIONS: &str = "outcomes.observations";
/// Outcome Observations, pseudonymised, for data teams.
pub const OUTCOMES_OBSERVATIONS_PSEUDONYMISED: &str = "outcomes.observations.pseudonymised";
/// Daily call-log reduction records for data teams.
pub const METRICS_CALL_LOG: &str = "metrics.call-log";
/// Each provider's queue, `provider.<id>.referrals`.
pub const PROVIDER_QUEUE_TEMPLATE: &str = "provider.{provider}.referrals";

/// Consumer names. Each consumer's offsets, processed event ids and dead-letter topic
/// (`<name>.dlq`) go by its name; a consumer that is the only reader of a topic is
/// named after it.
pub mod consumers {
    /// Ingest's reader of `referrals.inbound`.
    pub const INBOUND: &str = "referrals.inbound";
    /// Ingest's reader of `provider.responses`.
    pub const PROVIDER_RESPONSES: &str = "provider.responses";
    pub const ROUTER: &str = "router";
    pub const PROJECTOR: &str = "projector";
    pub const METRICS: &str = "metrics";

    pub const ALL: [&str; 5] = [INBOUND, PROVIDER_RESPONSES, ROUTER, PROJECTOR, METRICS];
}

/// Every fixed topic name (templates excluded, dead-letter topics included).
pub fn fixed_topics() -> Vec<String> {
    let mut names: Vec<String> = [
        REFERRALS_INBOUND,
        REFERRAL_EVENTS,
        TRIAGE_REFERRALS,
        PROVIDER_RESPONSES,
        ASC_CALL_LOG,
        OUTCOMES_OBSERVATIONS,
        OUTCOMES_OBSERVATIONS_PSEUDONYMISED,
        METRICS_CALL_LOG,
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .collect();
    names.extend(consumers::ALL.iter().map(|consumer| dlq(consumer)));
    names
}

/// The dead-letter topic of a consumer.
pub fn dlq(consumer: &str) -> String {
    format!("{consumer}.dlq")
}

/// A provider's queue topic.
pub fn provider_queue(provider: &ProviderId) -> String {
    PROVIDER_QUEUE_TEMPLATE.replace("{provider}", provider.as_str())
}

/// `topics.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    #[serde(default)]
    pub defaults: TopicDefaults,
    pub topics: Vec<TopicSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    pub replication_factor: i32,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            replication_factor: 3,
        }
    }
}

/// One declared topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The name, or a template with `{provider}` when `per` is `provider`.
    pub name: String,
    pub partitions: i32,
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// `forever`, or a number with a unit: `7d`, `12h`, `30m`.
    pub retention: String,
    pub cleanup_policy: CleanupPolicy,
    /// What the message key is.
    pub key: String,
    /// What the message value is.
    pub value: String,
    /// Files under `schemas/` describing the value (empty for FHIR or raw input).
    #[serde(default)]
    pub schemas: Vec<String>,
    pub producers: Vec<String>,
    pub consumers: Vec<String>,
    /// `provider`: one topic per directory provider.
    #[serde(default)]
    pub per: Option<TopicTemplate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicTemplate {
    Provider,
}

impl TopicsFile {
    pub fn parse(text: &str) -> Result<Self, BusError> {
        let file: TopicsFile =
            serde_yaml_ng::from_str(text).map_err(|error| BusError::Topics(error.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, BusError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            BusError::Topics(format!("cannot read {}: {error}", path.display()))
        })?;
        Self::parse(&text)
    }

    fn validate(&self) -> Result<(), BusError> {
        let mut seen = std::collections::HashSet::new();
        for topic in &self.topics {
            let problem =
                |message: String| Err(BusError::Topics(format!("{}: {message}", topic.name)));
            if !seen.insert(topic.name.as_str()) {
                return problem("declared twice".into());
            }
            if topic.partitions < 1 {
                return problem("partitions must be at least 1".into());
            }
            if let Err(message) = retention_ms(&topic.retention) {
                return problem(message);
            }
            let templated = topic.name.contains("{provider}");
            if templated != (topic.per == Some(TopicTemplate::Provider)) {
                return problem(
                    "a name with {provider} needs `per: provider`, and only then".into(),
                );
            }
            let concrete = topic.name.replace("{provider}", "x");
            let valid = !concrete.is_empty()
                && concrete.len() <= 249
                && concrete
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
            if !valid {
                return problem("not a valid Kafka topic name".into());
            }
        }
        Ok(())
    }

    /// Every concrete topic: fixed ones as declared, templates once per provider.
    pub fn expand(&self, providers: &[ProviderId]) -> Vec<(String, &TopicSpec)> {
        let mut expanded = Vec::new();
        for topic in &self.topics {
            match topic.per {
                None => expanded.push((topic.name.clone(), topic)),
                Some(TopicTemplate::Provider) => {
                    for provider in providers {
                        expanded.push((topic.name.replace("{provider}", provider.as_str()), topic));
                    }
                }
            }
        }
        expanded
    }
}

/// Kafka's `retention.ms` for a retention written as `forever`, `7d`, `12h`, `30m`.
pub fn retention_ms(retention: &str) -> Result<i64, String> {
    if retention == "forever" {
        return Ok(-1);
    }
    let split = retention
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(retention.len());
    let (number, unit) = retention.split_at(split);
    let number: i64 = number.parse().map_err(|_| {
        format!("retention {retention:?} is not `forever` or a number with a unit (d, h, m)")
    })?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => {
            return Err(format!(
                "retention {retention:?} has an unknown unit (use d, h or m)"
            ))
        }
    };
    number
        .checked_mul(unit_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("retention {retention:?} is out of range"))
}

/// What `apply` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    /// (topic, partitions before, partitions after)
    pub grown: Vec<(String, i32, i32)>,
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
}

impl ApplyReport {
    pub fn changed_anything(&self) -> bool {
        !self.created.is_empty() || !self.grown.is_empty()
    }
}

impl std::fmt::Display for ApplyReport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for name in &self.created {
            writeln!(formatter, "created    {name}")?;
        }
        for (name, before, after) in &self.grown {
            writeln!(
                formatter,
                "grown      {name}: {before} -> {after} partitions"
            )?;
        }
        for warning in &self.warnings {
            writeln!(formatter, "warning    {warning}")?;
        }
        if self.changed_anything() {
            write!(
                formatter,
                "{} created, {} grown, {} already as declared",
                self.created.len(),
                self.grown.len(),
                self.unchanged.len()
            )
        } else {
            write!(
                formatter,
                "nothing to change: all {} topics already as declared",
                self.unchanged.len()
            )
        }
    }
}

/// Creates missing topics and adds partitions where fewer exist than declared. Never
/// deletes or shrinks anything. Replication is capped at the number of brokers (with
/// a warning), so the same file serves a laptop and a cluster.
pub async fn apply(
    kafka: &KafkaSettings,
    file: &TopicsFile,
    providers: &[ProviderId],
) -> Result<ApplyReport, BusError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let metadata = {
        // Metadata requests block; a short-lived client keeps them off the async runtime.
        let config = kafka.client_config();
        tokio::task::spawn_blocking(move || {
            let client: BaseProducer = config.create()?;
            client
                .client()
                .fetch_metadata(None, Duration::from_secs(15))
        })
        .await
        .map_err(|error| BusError::Topics(format!("metadata lookup panicked: {error}")))??
    };
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_owned(), topic.partitions().len() as i32))
        .collect();
    let brokers = metadata.brokers().len().max(1) as i32;
    let mut report = ApplyReport::default();
    let mut to_create = Vec::new();
    let mut to_grow = Vec::new();
    for (name, spec) in file.expand(providers) {
        match existing.get(&name) {
            None => to_create.push((name, spec)),
            Some(&current) if current < spec.partitions => {
                to_grow.push((name, current, spec.partitions))
            }
            Some(&current) => {
                if current > spec.partitions {
                    report.warnings.push(format!(
                        "{name} has {current} partitions, more than the {} declared (partitions cannot be removed)",
                        spec.partitions
                    ));
                }
                report.unchanged.push(name);
            }
        }
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if !to_create.is_empty() {
        let mut capped = false;
        let settings: Vec<(String, i32, i32, String, &str)> = to_create
            .iter()
            .map(|(name, spec)| {
                let declared = spec
                    .replication_factor
                    .unwrap_or(file.defaults.replication_factor);
                let replication = declared.min(brokers);
                capped |= replication < declared;
                let retention = retention_ms(&spec.retention).unwrap_or(-1).to_string();
                (
                    name.clone(),
                    spec.partitions,
                    replication,
                    retention,
                    spec.cleanup_policy.as_str(),
                )
            })
            .collect();
        if capped {
            report.warnings.push(format!(
                "replication capped at {brokers}: the cluster has {brokers} broker(s)"
            ));
        }
        let new_topics: Vec<NewTopic<'_>> = settings
            .iter()
            .map(|(name, partitions, replication, retention, cleanup)| {
                NewTopic::new(name, *partitions, TopicReplication::Fixed(*replication))
                    .set("retention.ms", retention)
                    .set("cleanup.policy", cleanup)
            })
            .collect();
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => report.created.push(name),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => {
                    return Err(BusError::Topics(format!("creating {name} failed: {code}")))
                }
            }
        }
    }
    if !to_grow.is_empty() {
        let growth: Vec<NewPartitions<'_>> = to_grow
            .iter()
            .map(|(name, _, target)| NewPartitions::new(name, *target as usize))
            .collect();
        match admin.create_partitions(&growth, &options).await {
            Ok(results) => {
                for (result, (name, before, after)) in results.into_iter().zip(&to_grow) {
                    match result {
                        Ok(_) => report.grown.push((name.clone(), *before, *after)),
                        Err((_, code)) => {
                            return Err(BusError::Topics(format!(
                                "adding partitions to {name} failed: {code}"
                            )))
                        }
                    }
                }
            }
            // Some Kafka-compatible brokers (Tansu 0.6) do not implement CreatePartitions.
            Err(rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)) => {
                for (name, before, after) in &to_grow {
                    report.warnings.push(format!(
                        "{name} has {before} partitions, {after} declared, but the broker does not support adding partitions"
                    ));
                    report.unchanged.push(name.clone());
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    report.created.sort();
    report.unchanged.sort();
    Ok(report)
}

#[cfg(test)]
mod tests;

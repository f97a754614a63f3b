//! Every topic name linkwork uses (the only place they are written in code) and
//! `topics.yaml`, which declares each one with its settings; `apply` creates and grows
//! topics to match the declaration and reports where a cluster differs from it.

use std::collections::BTreeMap;
use std::time::Duration;

use linkwork_domain::{ProviderId, Source};
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
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
/// Outcome Observations, pseudonymised, for data teams.
pub const OUTCOMES_OBSERVATIONS_PSEUDONYMISED: &str = "outcomes.observations.pseudonymised";
/// Daily call-log reduction records for data teams.
pub const METRICS_CALL_LOG: &str = "metrics.call-log";
/// The audit trail: a FHIR AuditEvent per access to identifiable data.
pub const AUDIT_EVENTS: &str = "audit.events";
/// Each provider's queue, `provider.<id>.referrals`.
pub const PROVIDER_QUEUE_TEMPLATE: &str = "provider.{provider}.referrals";
/// Each referring organisation's identified outcomes and closing summaries,
/// `referrer.<source>.outcomes` (`referrer.gp.A81001.outcomes`): one topic per
/// referrer, so a referrer's system is granted its own people and no one else's.
pub const REFERRER_OUTCOMES_TEMPLATE: &str = "referrer.{referrer}.outcomes";

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
    /// Ingest's indexer of `audit.events`.
    pub const AUDIT: &str = "audit";

    pub const ALL: [&str; 6] = [
        INBOUND,
        PROVIDER_RESPONSES,
        ROUTER,
        PROJECTOR,
        METRICS,
        AUDIT,
    ];
}

/// Every fixed topic name (templates excluded, dead-letter topics included).
pub fn fixed_topics() -> Vec<String> {
    let mut names: Vec<String> = [
        REFERRALS_INBOUND,
        REFERRAL_EVENTS,
        TRIAGE_REFERRALS,
        PROVIDER_RESPONSES,
        ASC_CALL_LOG,
        OUTCOMES_OBSERVATIONS_PSEUDONYMISED,
        METRICS_CALL_LOG,
        AUDIT_EVENTS,
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

/// A referrer's outcomes topic.
pub fn referrer_outcomes(referrer: &Source) -> String {
    REFERRER_OUTCOMES_TEMPLATE.replace("{referrer}", &referrer.topic_segment())
}

/// Those a templated topic is made for: the directory's providers, the referrers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Members<'a> {
    pub providers: &'a [ProviderId],
    pub referrers: &'a [Source],
}

impl<'a> Members<'a> {
    pub fn providers(providers: &'a [ProviderId]) -> Self {
        Self {
            providers,
            referrers: &[],
        }
    }

    pub fn referrers(referrers: &'a [Source]) -> Self {
        Self {
            providers: &[],
            referrers,
        }
    }
}

/// `topics.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    #[serde(default)]
    pub defaults: TopicDefaults,
    pub topics: Vec<TopicSpec>,
}

/// Settings of every topic that does not declare its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Kafka's `min.insync.replicas`: with the producers' `acks=all`, a write is
    /// acknowledged only once this many replicas hold it.
    #[serde(default = "default_min_insync_replicas")]
    pub min_insync_replicas: i32,
}

fn default_replication_factor() -> i32 {
    3
}

fn default_min_insync_replicas() -> i32 {
    2
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            replication_factor: default_replication_factor(),
            min_insync_replicas: default_min_insync_replicas(),
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
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// `forever`, or a number with a unit: `7d`, `12h`, `30m`.
    pub retention: String,
    pub cleanup_policy: CleanupPolicy,
    /// Consumers rely on the order of messages with the same key. Adding partitions
    /// would send keys to other partitions, so `apply` refuses to grow such a topic.
    #[serde(default)]
    pub ordered_by_key: bool,
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
    Referrer,
}

impl TopicTemplate {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicTemplate::Provider => "provider",
            TopicTemplate::Referrer => "referrer",
        }
    }
}

/// A declared number and the one applied to a cluster too small for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capped {
    pub declared: i32,
    pub applied: i32,
}

impl Capped {
    fn at_most(declared: i32, limit: i32) -> Self {
        Self {
            declared,
            applied: declared.min(limit),
        }
    }

    pub fn is_capped(self) -> bool {
        self.applied < self.declared
    }
}

impl std::fmt::Display for Capped {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_capped() {
            write!(
                formatter,
                "{} ({} declared, capped to fit the cluster)",
                self.applied, self.declared
            )
        } else {
            write!(formatter, "{}", self.applied)
        }
    }
}

/// What a declaration asks of a particular cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: i32,
    /// Capped at the number of brokers.
    pub replication_factor: Capped,
    /// Capped at the applied replication factor: more would refuse every `acks=all`
    /// write.
    pub min_insync_replicas: Capped,
    pub retention_ms: i64,
    pub cleanup_policy: CleanupPolicy,
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
        replication_problem(
            self.defaults.replication_factor,
            self.defaults.min_insync_replicas,
        )
        .map_or(Ok(()), |message| {
            Err(BusError::Topics(format!("defaults: {message}")))
        })?;
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
            // A default min ISR above a topic's own replication is capped when applied;
            // a topic's own min ISR above its replication is a mistake.
            if topic.replication_factor.is_some() || topic.min_insync_replicas.is_some() {
                let replication = self.declared_replication_factor(topic);
                let min_insync = topic.min_insync_replicas.unwrap_or(1);
                if let Some(message) = replication_problem(replication, min_insync) {
                    return problem(message);
                }
            }
            if let Err(message) = retention_ms(&topic.retention) {
                return problem(message);
            }
            for (placeholder, template) in [
                ("{provider}", TopicTemplate::Provider),
                ("{referrer}", TopicTemplate::Referrer),
            ] {
                if topic.name.contains(placeholder) != (topic.per == Some(template)) {
                    return problem(format!(
                        "a name with {placeholder} needs `per: {}`, and only then",
                        template.as_str()
                    ));
                }
            }
            let concrete = topic
                .name
                .replace("{provider}", "x")
                .replace("{referrer}", "x");
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

    fn declared_replication_factor(&self, spec: &TopicSpec) -> i32 {
        spec.replication_factor
            .unwrap_or(self.defaults.replication_factor)
    }

    /// What `spec` asks of a cluster of `brokers` brokers: replication capped at the
    /// broker count, min ISR at the replication, so one file serves a laptop and a
    /// cluster.
    pub fn settings(&self, spec: &TopicSpec, brokers: i32) -> TopicSettings {
        let replication_factor =
            Capped::at_most(self.declared_replication_factor(spec), brokers.max(1));
        let min_insync_replicas = Capped::at_most(
            spec.min_insync_replicas
                .unwrap_or(self.defaults.min_insync_replicas),
            replication_factor.applied,
        );
        TopicSettings {
            partitions: spec.partitions,
            replication_factor,
            min_insync_replicas,
            // Validated on load.
            retention_ms: retention_ms(&spec.retention).unwrap_or(-1),
            cleanup_policy: spec.cleanup_policy,
        }
    }

    /// Every concrete topic: fixed ones as declared, templates once per provider or
    /// referrer.
    pub fn expand(&self, members: &Members<'_>) -> Vec<(String, &TopicSpec)> {
        let mut expanded = Vec::new();
        for topic in &self.topics {
            match topic.per {
                None => expanded.push((topic.name.clone(), topic)),
                Some(TopicTemplate::Provider) => {
                    for provider in members.providers {
                        expanded.push((topic.name.replace("{provider}", provider.as_str()), topic));
                    }
                }
                Some(TopicTemplate::Referrer) => {
                    for referrer in members.referrers {
                        expanded.push((
                            topic.name.replace("{referrer}", &referrer.topic_segment()),
                            topic,
                        ));
                    }
                }
            }
        }
        expanded
    }

    /// The declaration of one template's topics alone (to create a new provider's or
    /// referrer's topics without touching the rest).
    pub fn only(&self, template: TopicTemplate) -> TopicsFile {
        let mut file = self.clone();
        file.topics.retain(|topic| topic.per == Some(template));
        file
    }
}

fn replication_problem(replication: i32, min_insync: i32) -> Option<String> {
    if replication < 1 {
        Some("replication_factor must be at least 1".into())
    } else if min_insync < 1 {
        Some("min_insync_replicas must be at least 1".into())
    } else if min_insync > replication {
        Some(format!(
            "min_insync_replicas {min_insync} is more than the replication factor {replication}: no acks=all write could succeed"
        ))
    } else {
        None
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

/// `retention.ms` as Kafka writes it, with the topics.yaml spelling beside it.
fn describe_retention(ms: i64) -> String {
    let readable = match ms {
        -1 => "forever".to_owned(),
        ms if ms > 0 && ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms > 0 && ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms > 0 && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ => return ms.to_string(),
    };
    format!("{ms} ({readable})")
}

/// An ordered topic with fewer partitions than declared, left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub topic: String,
    /// What the key is, from topics.yaml.
    pub key: String,
    pub partitions: i32,
    pub declared: i32,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refusal {
            topic,
            key,
            partitions,
            declared,
        } = self;
        write!(
            formatter,
            "{topic}: refused to add partitions ({partitions} -> {declared}): its consumers rely on the order of messages with the same key ({key}), and more partitions would send existing keys to other partitions, so a key's new messages could be read before its old ones. \
             Keep `partitions: {partitions}` in topics.yaml, or create a new topic with {declared} partitions and move producers and consumers over to it (replay or mirror the old topic into it); declare partition counts generously up front"
        )
    }
}

/// A setting of an existing topic that differs from its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    /// The topic configuration key (`retention.ms`, `cleanup.policy`,
    /// `min.insync.replicas`), or `replication factor`.
    pub setting: &'static str,
    pub declared: String,
    pub actual: String,
}

/// The drift setting that is not a topic configuration key.
pub const REPLICATION_FACTOR: &str = "replication factor";

impl std::fmt::Display for Drift {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Drift {
            topic,
            setting,
            declared,
            actual,
        } = self;
        let remedy = if *setting == REPLICATION_FACTOR {
            "reassign its partitions (kafka-reassign-partitions.sh) or declare the actual value"
        } else {
            "left as it is: alter it (kafka-configs.sh --alter) or declare the actual value"
        };
        write!(
            formatter,
            "{topic}: {setting} is {actual}, declared {declared}; {remedy}"
        )
    }
}

/// How an existing topic differs from `declared`. `config` is the topic's configuration
/// as DescribeConfigs returns it; `replication` the smallest replica count of its
/// partitions.
pub fn drift(
    topic: &str,
    declared: &TopicSettings,
    replication: i32,
    config: &BTreeMap<String, String>,
) -> Vec<Drift> {
    let mut found = Vec::new();
    let mut differs = |setting: &'static str, declared: String, actual: String| {
        found.push(Drift {
            topic: topic.to_owned(),
            setting,
            declared,
            actual,
        })
    };
    let unset = || "not set".to_owned();

    let retention = config.get("retention.ms");
    match retention.map(|value| value.parse::<i64>()) {
        Some(Ok(actual)) if actual == declared.retention_ms => {}
        Some(Ok(actual)) => differs(
            "retention.ms",
            describe_retention(declared.retention_ms),
            describe_retention(actual),
        ),
        _ => differs(
            "retention.ms",
            describe_retention(declared.retention_ms),
            retention.cloned().unwrap_or_else(unset),
        ),
    }

    let cleanup = config.get("cleanup.policy");
    let policies = cleanup.map(|value| {
        let mut policies: Vec<&str> = value.split(',').map(str::trim).collect();
        policies.sort_unstable();
        policies
    });
    if policies != Some(vec![declared.cleanup_policy.as_str()]) {
        differs(
            "cleanup.policy",
            declared.cleanup_policy.as_str().to_owned(),
            cleanup.cloned().unwrap_or_else(unset),
        );
    }

    let min_insync = config.get("min.insync.replicas");
    if min_insync.and_then(|value| value.parse::<i32>().ok())
        != Some(declared.min_insync_replicas.applied)
    {
        differs(
            "min.insync.replicas",
            declared.min_insync_replicas.to_string(),
            min_insync.cloned().unwrap_or_else(unset),
        );
    }

    if replication != declared.replication_factor.applied {
        differs(
            REPLICATION_FACTOR,
            declared.replication_factor.to_string(),
            replication.to_string(),
        );
    }
    found
}

/// What `apply` did and found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    /// (topic, partitions before, partitions after)
    pub grown: Vec<(String, i32, i32)>,
    /// Topics ordered by key with fewer partitions than declared: left alone. The CLI
    /// exits non-zero when there are any.
    pub refused: Vec<Refusal>,
    /// Settings of existing topics that differ from the declaration: reported, not
    /// changed.
    pub drift: Vec<Drift>,
    /// Existing topics found as declared (warnings aside).
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
}

impl ApplyReport {
    pub fn changed_anything(&self) -> bool {
        !self.created.is_empty() || !self.grown.is_empty()
    }

    /// Nothing changed, refused or drifted.
    pub fn all_as_declared(&self) -> bool {
        !self.changed_anything() && self.refused.is_empty() && self.drift.is_empty()
    }

    fn drifted_topics(&self) -> usize {
        let topics: std::collections::BTreeSet<&str> = self
            .drift
            .iter()
            .map(|drift| drift.topic.as_str())
            .collect();
        topics.len()
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
        for refusal in &self.refused {
            writeln!(formatter, "refused    {refusal}")?;
        }
        for drift in &self.drift {
            writeln!(formatter, "drift      {drift}")?;
        }
        for warning in &self.warnings {
            writeln!(formatter, "warning    {warning}")?;
        }
        if self.all_as_declared() {
            return write!(
                formatter,
                "nothing to change: all {} topics already as declared",
                self.unchanged.len()
            );
        }
        write!(
            formatter,
            "{} created, {} grown, {} already as declared",
            self.created.len(),
            self.grown.len(),
            self.unchanged.len()
        )?;
        if !self.refused.is_empty() {
            write!(formatter, ", {} refused", self.refused.len())?;
        }
        if !self.drift.is_empty() {
            write!(formatter, ", {} with drift", self.drifted_topics())?;
        }
        Ok(())
    }
}

/// An existing topic as the cluster's metadata describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingTopic {
    pub partitions: i32,
    /// The smallest replica count of its partitions.
    pub replication: i32,
}

/// What `apply` will do, decided from the declaration and the cluster's metadata.
#[derive(Debug, Default)]
struct Plan<'a> {
    to_create: Vec<(String, &'a TopicSpec)>,
    /// (topic, partitions now, partitions declared)
    to_grow: Vec<(String, i32, i32)>,
    refused: Vec<Refusal>,
    /// Declared topics that exist, whose configuration to check.
    existing: Vec<(String, &'a TopicSpec, ExistingTopic)>,
    warnings: Vec<String>,
}

fn plan<'a>(
    file: &'a TopicsFile,
    members: &Members<'_>,
    cluster: &BTreeMap<String, ExistingTopic>,
) -> Plan<'a> {
    let mut planned = Plan::default();
    for (name, spec) in file.expand(members) {
        let Some(&existing) = cluster.get(&name) else {
            planned.to_create.push((name, spec));
            continue;
        };
        let current = existing.partitions;
        if current < spec.partitions {
            if spec.ordered_by_key {
                planned.refused.push(Refusal {
                    topic: name.clone(),
                    key: spec.key.clone(),
                    partitions: current,
                    declared: spec.partitions,
                });
            } else {
                planned
                    .to_grow
                    .push((name.clone(), current, spec.partitions));
            }
        } else if current > spec.partitions {
            planned.warnings.push(format!(
                "{name} has {current} partitions, more than the {} declared (partitions cannot be removed)",
                spec.partitions
            ));
        }
        planned.existing.push((name, spec, existing));
    }
    planned
}

/// Creates missing topics (with the declared retention, cleanup policy and min ISR)
/// and adds partitions where fewer exist than declared, except to topics ordered by
/// key, which it refuses. Reports existing topics whose configuration differs from
/// the declaration, without changing it. Never deletes or shrinks anything.
/// Replication is capped at the number of brokers and min ISR at the replication
/// (with a warning), so the same file serves a laptop and a cluster.
pub async fn apply(
    kafka: &KafkaSettings,
    file: &TopicsFile,
    members: &Members<'_>,
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
    let cluster: BTreeMap<String, ExistingTopic> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| {
            let replication = topic
                .partitions()
                .iter()
                .map(|partition| partition.replicas().len() as i32)
                .min()
                .unwrap_or(0);
            (
                topic.name().to_owned(),
                ExistingTopic {
                    partitions: topic.partitions().len() as i32,
                    replication,
                },
            )
        })
        .collect();
    let brokers = metadata.brokers().len().max(1) as i32;
    let planned = plan(file, members, &cluster);
    let mut report = ApplyReport {
        refused: planned.refused,
        warnings: planned.warnings,
        ..ApplyReport::default()
    };
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));

    if !planned.to_create.is_empty() {
        let settings: Vec<(String, TopicSettings, [String; 2])> = planned
            .to_create
            .iter()
            .map(|(name, spec)| {
                let settings = file.settings(spec, brokers);
                let values = [
                    settings.retention_ms.to_string(),
                    settings.min_insync_replicas.applied.to_string(),
                ];
                (name.clone(), settings, values)
            })
            .collect();
        if settings
            .iter()
            .any(|(_, settings, _)| settings.replication_factor.is_capped())
        {
            report.warnings.push(format!(
                "replication capped at {brokers}: the cluster has {brokers} broker(s)"
            ));
        }
        if settings
            .iter()
            .any(|(_, settings, _)| settings.min_insync_replicas.is_capped())
        {
            report.warnings.push(
                "min.insync.replicas capped at the replication factor: a higher value would refuse every acks=all write".into(),
            );
        }
        let new_topics: Vec<NewTopic<'_>> = settings
            .iter()
            .map(|(name, settings, [retention, min_insync])| {
                NewTopic::new(
                    name,
                    settings.partitions,
                    TopicReplication::Fixed(settings.replication_factor.applied),
                )
                .set("retention.ms", retention)
                .set("cleanup.policy", settings.cleanup_policy.as_str())
                .set("min.insync.replicas", min_insync)
            })
            .collect();
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => report.created.push(name),
                // Created meanwhile by someone else: theirs to answer for.
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => {
                    return Err(BusError::Topics(format!("creating {name} failed: {code}")))
                }
            }
        }
    }

    if !planned.to_grow.is_empty() {
        let growth: Vec<NewPartitions<'_>> = planned
            .to_grow
            .iter()
            .map(|(name, _, target)| NewPartitions::new(name, *target as usize))
            .collect();
        let results = admin.create_partitions(&growth, &options).await?;
        for (result, (name, before, after)) in results.into_iter().zip(&planned.to_grow) {
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

    if !planned.existing.is_empty() {
        let configs = describe_configs(&admin, &planned.existing, &options).await;
        for ((name, spec, existing), config) in planned.existing.iter().zip(configs) {
            match config {
                Ok(config) => {
                    let declared = file.settings(spec, brokers);
                    report
                        .drift
                        .extend(drift(name, &declared, existing.replication, &config));
                }
                Err(problem) => report.warnings.push(format!(
                    "{name}: cannot read its configuration ({problem}), so drift is not checked"
                )),
            }
        }
        for (name, _, _) in &planned.existing {
            let touched = report.grown.iter().any(|(grown, _, _)| grown == name)
                || report.refused.iter().any(|refusal| &refusal.topic == name)
                || report.drift.iter().any(|drift| &drift.topic == name);
            if !touched {
                report.unchanged.push(name.clone());
            }
        }
    }
    report.created.sort();
    report.unchanged.sort();
    Ok(report)
}

/// Each topic's configuration (key to value), in the order given; a topic whose
/// configuration cannot be read gets the reason instead.
async fn describe_configs(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[(String, &TopicSpec, ExistingTopic)],
    options: &AdminOptions,
) -> Vec<Result<BTreeMap<String, String>, String>> {
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|(name, _, _)| ResourceSpecifier::Topic(name))
        .collect();
    match admin.describe_configs(&resources, options).await {
        Ok(results) if results.len() == topics.len() => results
            .into_iter()
            .map(|result| {
                result
                    .map(|resource| {
                        resource
                            .entries
                            .into_iter()
                            .filter_map(|entry| Some((entry.name, entry.value?)))
                            .collect()
                    })
                    .map_err(|code| code.to_string())
            })
            .collect(),
        Ok(results) => {
            let problem = format!(
                "DescribeConfigs answered for {} of {} topics",
                results.len(),
                topics.len()
            );
            topics.iter().map(|_| Err(problem.clone())).collect()
        }
        Err(error) => topics.iter().map(|_| Err(error.to_string())).collect(),
    }
}

#[cfg(test)]
mod tests;

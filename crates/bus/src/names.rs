//! How a deployment names its topics and consumer groups: every name of
//! [`crate::topics`] with a prefix before it. Production uses no topic prefix and the
//! group prefix `linkwork.`; a test (or a second deployment sharing a cluster) gives
//! itself its own prefixes and so its own topics and groups, whatever else runs there.
//!
//! Consumer *names* (which key offsets and processed ids in Postgres) and derived event
//! ids do not change with the prefix: they belong to the database, not the cluster.

use linkwork_domain::ProviderId;

use crate::topics::{self, TopicsFile};
use crate::ConsumerConfig;

/// A deployment's naming scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    topic_prefix: String,
    group_prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new("", "linkwork.")
    }
}

impl Names {
    pub fn new(topic_prefix: impl Into<String>, group_prefix: impl Into<String>) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
            group_prefix: group_prefix.into(),
        }
    }

    /// A scheme of its own for one test run: `<run>.` before every topic and group.
    pub fn isolated(run: &str) -> Self {
        Self::new(format!("{run}."), format!("{run}.linkwork."))
    }

    /// From `LINKWORK_TOPIC_PREFIX` (default empty) and `LINKWORK_GROUP_PREFIX`
    /// (default `linkwork.`).
    pub fn from_env() -> Self {
        let defaults = Self::default();
        Self::new(
            std::env::var("LINKWORK_TOPIC_PREFIX").unwrap_or(defaults.topic_prefix),
            std::env::var("LINKWORK_GROUP_PREFIX").unwrap_or(defaults.group_prefix),
        )
    }

    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    pub fn group_prefix(&self) -> &str {
        &self.group_prefix
    }

    /// A topic of [`crate::topics`] as this deployment names it.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The consumer group of the consumer `consumer`.
    pub fn group(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.group_prefix)
    }

    /// The dead-letter topic of the consumer `consumer`.
    pub fn dlq(&self, consumer: &str) -> String {
        self.topic(&topics::dlq(consumer))
    }

    pub fn provider_queue(&self, provider: &ProviderId) -> String {
        self.topic(&topics::provider_queue(provider))
    }

    /// A referrer's outcomes topic.
    pub fn referrer_outcomes(&self, referrer: &linkwork_domain::Source) -> String {
        self.topic(&topics::referrer_outcomes(referrer))
    }

    /// A consumer named `consumer` reading `reads` (names of [`crate::topics`]), with
    /// its group, dead-letter topic and topics named by this scheme.
    pub fn consumer(&self, consumer: &str, reads: &[&str]) -> ConsumerConfig {
        let topics: Vec<String> = reads.iter().map(|topic| self.topic(topic)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut config = ConsumerConfig::new(consumer, &topics);
        config.group_id = self.group(consumer);
        config.dlq_topic = self.dlq(consumer);
        config
    }

    /// The declaration with every topic (and template) named by this scheme.
    pub fn declaration(&self, declaration: &TopicsFile) -> TopicsFile {
        let mut named = declaration.clone();
        for topic in &mut named.topics {
            topic.name = self.topic(&topic.name);
        }
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_are_the_declared_ones_and_groups_are_linkwork_dot_consumer() {
        let names = Names::default();
        assert_eq!(
            names.topic(topics::REFERRAL_EVENTS),
            topics::REFERRAL_EVENTS
        );
        assert_eq!(names.group("router"), "linkwork.router");
        assert_eq!(names.dlq("router"), topics::dlq("router"));
        let config = names.consumer("projector", &[topics::REFERRAL_EVENTS]);
        assert_eq!(config.group_id, "linkwork.projector");
        assert_eq!(config.topics, vec![topics::REFERRAL_EVENTS.to_owned()]);
        assert_eq!(config.dlq_topic, topics::dlq("projector"));
        assert_eq!(config.name, "projector");
    }

    #[test]
    fn an_isolated_run_prefixes_every_topic_queue_group_and_dead_letter_topic() {
        let names = Names::isolated("t42");
        let provider = ProviderId::parse("connectors").unwrap();
        assert_eq!(
            names.topic(topics::REFERRAL_EVENTS),
            format!("t42.{}", topics::REFERRAL_EVENTS)
        );
        assert_eq!(
            names.provider_queue(&provider),
            format!("t42.{}", topics::provider_queue(&provider))
        );
        let config = names.consumer("router", &[topics::REFERRAL_EVENTS]);
        assert_eq!(config.group_id, "t42.linkwork.router");
        assert_eq!(config.dlq_topic, format!("t42.{}", topics::dlq("router")));
        assert_eq!(
            config.name, "router",
            "offsets stay keyed by the consumer's name"
        );
        let declared = TopicsFile::parse(include_str!("../../../topics.yaml")).unwrap();
        let named = names.declaration(&declared);
        assert!(named
            .topics
            .iter()
            .all(|topic| topic.name.starts_with("t42.")));
        assert_eq!(named.topics.len(), declared.topics.len());
    }
}

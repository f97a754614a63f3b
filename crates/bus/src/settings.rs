//! Kafka client settings from the environment.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

use crate::BusError;

/// librdkafka's `fetch.queue.backoff.ms` for linkwork's consumers: how long it waits to
/// fetch again once its prefetch queue (`queued.max.messages.kbytes`, kept small so
/// memory stays flat) was full; librdkafka's default is a second.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// librdkafka's `fetch.max.bytes` for linkwork's consumers (default 50 MB): at most one
/// fetch response of this size is buffered at a time, beside the prefetch queue. 1 MiB,
/// or the client's `message.max.bytes` when `LINKWORK_KAFKA_MESSAGE_MAX_BYTES` raises it
/// above that: librdkafka refuses to create a consumer whose `fetch.max.bytes` is below
/// it.
pub fn fetch_max_bytes(kafka: &KafkaSettings) -> String {
    const DEFAULT: u64 = 1024 * 1024;
    kafka
        .properties
        .get("message.max.bytes")
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or(DEFAULT, |largest| largest.max(DEFAULT))
        .to_string()
}

/// librdkafka's `queued.max.messages.kbytes` for linkwork's consumers (default 64 MiB):
/// what it prefetches beyond what the poll thread has taken.
pub const QUEUED_MAX_MESSAGES_KBYTES: &str = "2048";

/// Bootstrap servers plus librdkafka properties passed through from
/// `LINKWORK_KAFKA_<property>` (security settings, mostly).
#[derive(Clone, Default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Reads `LINKWORK_KAFKA_BROKERS` and every other `LINKWORK_KAFKA_*` variable as a
    /// librdkafka property. The suffix is used as written when it contains a dot
    /// (`LINKWORK_KAFKA_security.protocol`), otherwise lower-cased with `_` read as
    /// `.` (`LINKWORK_KAFKA_SECURITY_PROTOCOL`).
    pub fn from_env() -> Result<Self, BusError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, BusError> {
        let mut settings = Self::default();
        for (name, value) in vars {
            let Some(suffix) = name.strip_prefix("LINKWORK_KAFKA_") else {
                continue;
            };
            if suffix == "BROKERS" {
                settings.brokers = value;
            } else if !suffix.is_empty() {
                let property = if suffix.contains('.') {
                    suffix.to_owned()
                } else {
                    suffix.to_ascii_lowercase().replace('_', ".")
                };
                settings.properties.insert(property, value);
            }
        }
        if settings.brokers.trim().is_empty() {
            return Err(BusError::Config(
                "LINKWORK_KAFKA_BROKERS is not set (bootstrap servers, e.g. 127.0.0.1:19092)"
                    .into(),
            ));
        }
        Ok(settings)
    }

    /// A client config with the bootstrap servers and pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // Our own logs go through tracing; librdkafka's go through the client context.
        config.set("log.connection.close", "false");
        for (property, value) in &self.properties {
            config.set(property, value);
        }
        config
    }
}

fn is_secret(property: &str) -> bool {
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|word| property.contains(word))
}

/// Debug output redacts anything that looks like a credential.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(property, value)| {
                let shown = if is_secret(property) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (property.as_str(), shown)
            })
            .collect();
        formatter
            .debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn consumers_fetch_a_mebibyte_unless_the_largest_message_is_larger() {
        let plain =
            KafkaSettings::from_vars(vars(&[("LINKWORK_KAFKA_BROKERS", "b:9092")])).expect("valid");
        assert_eq!(fetch_max_bytes(&plain), "1048576");
        let large = KafkaSettings::from_vars(vars(&[
            ("LINKWORK_KAFKA_BROKERS", "b:9092"),
            ("LINKWORK_KAFKA_MESSAGE_MAX_BYTES", "4000000"),
        ]))
        .expect("valid");
        assert_eq!(fetch_max_bytes(&large), "4000000");
    }

    #[test]
    fn properties_pass_through_in_both_spellings() {
        let settings = KafkaSettings::from_vars(vars(&[
            ("LINKWORK_KAFKA_BROKERS", "b1:9092,b2:9092"),
            ("LINKWORK_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("LINKWORK_KAFKA_sasl.mechanisms", "SCRAM-SHA-512"),
            ("LINKWORK_KAFKA_SASL_PASSWORD", "hunter2"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(settings.brokers, "b1:9092,b2:9092");
        assert_eq!(settings.properties["security.protocol"], "SASL_SSL");
        assert_eq!(settings.properties["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(settings.properties["sasl.password"], "hunter2");
        assert_eq!(
            settings.client_config().get("security.protocol"),
            Some("SASL_SSL")
        );
    }

    #[test]
    fn debug_output_redacts_credentials() {
        let settings = KafkaSettings::from_vars(vars(&[
            ("LINKWORK_KAFKA_BROKERS", "b1:9092"),
            ("LINKWORK_KAFKA_SASL_PASSWORD", "hunter2"),
            ("LINKWORK_KAFKA_SSL_KEY_PASSWORD", "swordfish"),
        ]))
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert!(shown.contains("b1:9092"));
    }

    #[test]
    fn brokers_are_required() {
        assert!(KafkaSettings::from_vars(vars(&[("LINKWORK_KAFKA_ACKS", "all")])).is_err());
    }
}

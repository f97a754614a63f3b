//! Whether the broker answers: one long-lived client asked for cluster metadata, for
//! readiness probes (a client per probe would open connections at every scrape).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{BusError, KafkaSettings};

/// A client kept for asking the cluster whether it is there.
#[derive(Clone)]
pub struct BrokerProbe {
    client: Arc<BaseConsumer>,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BrokerProbe")
            .finish_non_exhaustive()
    }
}

impl BrokerProbe {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, BusError> {
        let client: BaseConsumer = kafka.client_config().create()?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// The number of brokers the cluster reports, or why it could not be asked within
    /// `timeout`.
    pub async fn brokers(&self, timeout: Duration) -> Result<usize, BusError> {
        let client = self.client.clone();
        let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout))
            .await
            .map_err(|error| BusError::Config(format!("metadata lookup panicked: {error}")))??;
        Ok(metadata.brokers().len())
    }
}

//! The Kafka source's lag: per partition, the messages between the
//! committed offset and the high watermark (Kafka's consumer lag).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_api::{Backlog, ConnectorError, Lag, Positions};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{KafkaSourceConfig, Start, client_config};

/// A client of its own (no group membership: it only asks for watermarks).
pub(crate) struct KafkaBacklog {
    consumer: Arc<BaseConsumer>,
    topics: Vec<String>,
    start: Start,
}

const ASK: Duration = Duration::from_secs(5);

impl KafkaBacklog {
    pub(crate) fn new(config: &KafkaSourceConfig, pipeline: &str) -> Result<Self, ConnectorError> {
        let mut c = client_config(&config.brokers, &config.options);
        c.set("group.id", format!("ferry-lag-{pipeline}"));
        let consumer: BaseConsumer = c
            .create()
            .map_err(|e| ConnectorError::Fatal(format!("creating a Kafka client: {e}")))?;
        Ok(KafkaBacklog {
            consumer: Arc::new(consumer),
            topics: config.topics.clone(),
            start: config.start,
        })
    }
}

impl KafkaBacklog {
    /// The low and high watermarks of `topic`'s partition `id`; an
    /// unknown partition is refused.
    pub(crate) async fn watermarks(
        &self,
        topic: &str,
        id: i32,
    ) -> Result<(i64, i64), ConnectorError> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let unanswered = |e| ConnectorError::Retriable(format!("Kafka's watermarks: {e}"));
            let metadata = consumer
                .fetch_metadata(Some(&topic), ASK)
                .map_err(unanswered)?;
            let known = metadata
                .topics()
                .iter()
                .any(|t| t.partitions().iter().any(|p| p.id() == id) && t.error().is_none());
            if !known {
                return Err(ConnectorError::Fatal(format!(
                    "the brokers know no partition {id} of topic {topic:?}"
                )));
            }
            consumer
                .fetch_watermarks(&topic, id, ASK)
                .map_err(unanswered)
        })
        .await
        .map_err(|e| ConnectorError::Fatal(format!("asking for watermarks: {e}")))?
    }
}

#[async_trait]
impl Backlog for KafkaBacklog {
    async fn measure(&mut self, committed: &Positions) -> Result<Vec<Lag>, ConnectorError> {
        // The topics named, and those read through a pattern so far.
        let mut topics = self.topics.clone();
        for p in committed.iter() {
            if let Some((topic, _)) = p.partition.key.rsplit_once('/')
                && !topics.iter().any(|t| t == topic)
            {
                topics.push(topic.to_string());
            }
        }
        let (consumer, committed, start) = (self.consumer.clone(), committed.clone(), self.start);
        tokio::task::spawn_blocking(move || measure(&consumer, &topics, &committed, start))
            .await
            .map_err(|e| ConnectorError::Fatal(format!("measuring the lag: {e}")))?
    }
}

fn measure(
    consumer: &BaseConsumer,
    topics: &[String],
    committed: &Positions,
    start: Start,
) -> Result<Vec<Lag>, ConnectorError> {
    let unanswered = |e| ConnectorError::Retriable(format!("Kafka's watermarks: {e}"));
    let metadata = consumer.fetch_metadata(None, ASK).map_err(unanswered)?;
    let mut lags = Vec::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for partition in topic.partitions() {
            let key = format!("{}/{}", topic.name(), partition.id());
            let (low, high) = consumer
                .fetch_watermarks(topic.name(), partition.id(), ASK)
                .map_err(unanswered)?;
            let done = committed.get(&key).and_then(|p| p.offset.as_i64());
            // Not read yet: where the source would start it (the group may
            // have committed further: an estimate).
            let (from, estimate) = match (done, start) {
                (Some(offset), _) => (offset, false),
                (None, Start::Earliest) => (low, true),
                (None, Start::Latest) => (high, true),
            };
            lags.push(Lag {
                label: key.clone(),
                partition: key,
                amount: (high - from).max(0) as f64,
                unit: "messages",
                estimate,
            });
        }
    }
    Ok(lags)
}

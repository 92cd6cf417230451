//! # ferry-connector-kafka — Kafka topics in and out
//!
//! **Source** (`type: kafka`): a member of a consumer group (Kafka's own
//! group protocol, so several ferry daemons running the same pipeline share
//! the partitions). Positions are `(topic, partition, next offset)`. Offsets
//! are committed to the group only after the sink made the records durable,
//! never by librdkafka's auto-commit; an assigned partition starts at the
//! further of the group's offset and the position the sink (or ferry's
//! offset store) holds. See `source.rs` for the rebalance rules.
//!
//! **Sink** (`type: kafka`): an idempotent producer with `acks=all`,
//! ordered per key; at-least-once (a replay after a crash sends records
//! again). A message the broker refuses goes through the error-tolerance
//! path.

mod client;
mod config;
mod librdkafka;
mod sink;
mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig};

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::{ConnectorError, SinkPlugin, SourcePlugin, Value, deserialize};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// `ferry validate --check-connections`: the cluster answers a metadata
/// request.
pub(crate) async fn check_brokers(
    brokers: &str,
    options: &BTreeMap<String, Value>,
    pipeline: &str,
) -> Result<(), ConnectorError> {
    let mut c = config::client_config(brokers, options);
    c.set("group.id", format!("ferry-check-{pipeline}"));
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = c
            .create()
            .map_err(|e| ConnectorError::Fatal(format!("creating a Kafka client: {e}")))?;
        consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|_| ())
            .map_err(|e| {
                ConnectorError::Retriable(format!("no answer from Kafka at {brokers}: {e}"))
            })
    })
    .await
    .map_err(|e| ConnectorError::Fatal(format!("the check failed: {e}")))?
}

/// The `kafka` source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "kafka",
        parse: |v| Ok(Box::new(deserialize::<KafkaSourceConfig>(v)?)),
    }
}

/// The `kafka` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "kafka",
        parse: |v| Ok(Box::new(deserialize::<KafkaSinkConfig>(v)?)),
    }
}

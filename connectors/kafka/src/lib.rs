//! # ferry-connector-kafka — Kafka topics in and out
//!
//! **Source** (`type: kafka`): a member of a consumer group (Kafka's own
//! group protocol, so several ferry daemons running the same pipeline share
//! the partitions). Positions are `(topic, partition, next offset)`. Offsets
//! are committed to the group only after the sink made the records durable,
//! never by librdkafka's auto-commit; an assigned partition starts at the
//! further of the group's offset and the position the sink (or ferry's
//! offset store) holds. See `source/mod.rs` for the rebalance rules.
//!
//! **Sink** (`type: kafka`): an idempotent producer with `acks=all`,
//! ordered per key; at-least-once (a replay after a crash sends records
//! again). A message the broker refuses goes through the error-tolerance
//! path.

mod backlog;
mod client;
mod config;
mod librdkafka;
mod sink;
mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig};

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::{ConnectorError, SinkPlugin, SourcePlugin, Value, deserialize, schema_of};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// `ferry validate --check-connections`: the cluster answers a metadata
/// request, and each of `topics` exists in it (a source would wait for a
/// missing one without reading anything). The request asks for all topics:
/// asking for one by name lets a broker with auto-creation create it.
pub(crate) async fn check_brokers(
    brokers: &str,
    options: &BTreeMap<String, Value>,
    pipeline: &str,
    topics: &[String],
) -> Result<(), ConnectorError> {
    let mut c = config::client_config(brokers, options);
    c.set("group.id", format!("ferry-check-{pipeline}"));
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<LastError> = c
            .create_with_context(LastError::default())
            .map_err(|e| ConnectorError::Fatal(format!("creating a Kafka client: {e}")))?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| {
                // The metadata call says only "transport failure"; the
                // client's own report says why (an untrusted certificate,
                // a refused connection). It is handed over by a poll.
                let _ = consumer.poll(Duration::from_millis(100));
                let why = match consumer.context().0.lock() {
                    Ok(last) => last.clone().map(|r| format!(" ({r})")).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                ConnectorError::Retriable(format!("no answer from Kafka at {brokers}: {e}{why}"))
            })?;
        let exists = |t: &str| {
            metadata
                .topics()
                .iter()
                .any(|m| m.name() == t && m.error().is_none())
        };
        // A name starting with `^` is a pattern to librdkafka.
        let missing: Vec<&str> = topics
            .iter()
            .map(String::as_str)
            .filter(|t| !t.starts_with('^') && !exists(t))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::Fatal(format!(
                "no topic {} at {brokers} (the source would wait for it, reading nothing)",
                missing.join(", ")
            )))
        }
    })
    .await
    .map_err(|e| ConnectorError::Fatal(format!("the check failed: {e}")))?
}

/// The last error a check's client reported.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    fn keep(&self, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_string());
        }
    }
}

/// Errors reach a consumer's error callback only when it is polled (the
/// check polls once after a failed metadata request); librdkafka's log
/// lines, when its log level lets them through, come from its own threads.
impl rdkafka::ClientContext for LastError {
    fn error(&self, _error: rdkafka::error::KafkaError, reason: &str) {
        self.keep(reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, _facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            self.keep(message);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// The `kafka` source, for the runtime's registry.
pub fn source_plugin() -> SourcePlugin {
    SourcePlugin {
        kind: "kafka",
        parse: |v| Ok(Box::new(deserialize::<KafkaSourceConfig>(v)?)),
        schema: schema_of::<KafkaSourceConfig>,
    }
}

/// The `kafka` sink, for the runtime's registry.
pub fn sink_plugin() -> SinkPlugin {
    SinkPlugin {
        kind: "kafka",
        parse: |v| Ok(Box::new(deserialize::<KafkaSinkConfig>(v)?)),
        schema: schema_of::<KafkaSinkConfig>,
    }
}

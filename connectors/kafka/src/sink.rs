//! The Kafka sink: an idempotent producer (`acks=all`), ordered per key.
//!
//! `write` enqueues the batch and waits for the broker's acknowledgement of
//! every message of it, so it can report the ones the broker refused (too
//! large, invalid) by index; the others are durable when it returns, and
//! `commit` has nothing left to wait for but a final flush.
//!
//! While the brokers cannot be reached librdkafka keeps the messages and
//! retries by itself; the sink reports that as it happens ([`Troubles`]),
//! gives a message up after `message.timeout.ms` (30 s unless set: the
//! write fails, retriably, and the runtime starts again from the committed
//! positions), and stops waiting as soon as ferry stops.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_api::{
    ConnectorError, Payload, Positions, Record, Rejected, Retries, Sink, Stopping, Value,
};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};

use crate::client::Troubles;
use crate::config::{KafkaSinkConfig, SinkFormat, TopicSpec, client_config};

/// How long librdkafka keeps trying to deliver a message, unless the
/// pipeline's `options` say otherwise (librdkafka's default is 5 minutes,
/// during which a write would wait without a word).
const MESSAGE_TIMEOUT_MS: &str = "30000";

/// How long a write still waits for acknowledgements once ferry stops.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The producer's reports go to the pipeline's log and `retries`.
pub(crate) struct SinkCtx(Arc<Troubles>);

impl ClientContext for SinkCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }
}

pub(crate) struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Option<FutureProducer<SinkCtx>>,
    troubles: Arc<Troubles>,
    stopping: Stopping,
}

impl KafkaSink {
    pub(crate) fn new(
        config: KafkaSinkConfig,
        pipeline: &str,
        retries: Retries,
        stopping: Stopping,
    ) -> Self {
        KafkaSink {
            config,
            producer: None,
            troubles: Arc::new(Troubles::new(pipeline, retries)),
            stopping,
        }
    }

    /// Waits for one delivery, or until ferry stops.
    async fn delivered(
        &self,
        delivery: DeliveryFuture,
    ) -> Result<Result<(), KafkaError>, ConnectorError> {
        tokio::select! {
            result = delivery => match result {
                Ok(Ok(_)) => Ok(Ok(())),
                Ok(Err((e, _))) => Ok(Err(e)),
                Err(_) => Err(ConnectorError::Retriable(
                    "the producer went away before delivering".into(),
                )),
            },
            // Acknowledgements due any moment are still taken: giving them
            // up would send their records again after the restart.
            _ = async {
                self.stopping.wait().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => Err(stopping_error()),
        }
    }

    fn payload(&self, v: &Payload) -> Vec<u8> {
        match (self.config.format, v.json_text()) {
            // The source's JSON text as it came.
            (SinkFormat::Json, Some(text)) => text.as_bytes().to_vec(),
            (SinkFormat::Text, _) if v.is_string() => {
                v.as_str().unwrap_or_default().as_bytes().to_vec()
            }
            _ => serde_json::to_vec(&**v).expect("a JSON value serializes"),
        }
    }
}

/// The broker refused this message for what it is: the record goes to the
/// error-tolerance path. Anything else is the connection's or the
/// cluster's trouble: retried.
fn refused(e: &KafkaError) -> bool {
    // A topic (or key) with a NUL byte cannot even be handed to librdkafka.
    matches!(e, KafkaError::Nul(_))
        || matches!(
            e,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidTimestamp
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::InvalidTopic
            )
        )
}

fn stopping_error() -> ConnectorError {
    ConnectorError::Retriable(
        "ferry is stopping: not waiting for the broker's acknowledgements (nothing of this write is committed)"
            .into(),
    )
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self) -> Result<Option<Positions>, ConnectorError> {
        let mut c = client_config(&self.config.brokers, &self.config.options);
        // Idempotence keeps librdkafka's own retries from writing a message
        // twice or out of order; it implies acks=all.
        c.set("enable.idempotence", "true").set("acks", "all");
        if !self.config.options.contains_key("message.timeout.ms")
            && !self.config.options.contains_key("delivery.timeout.ms")
        {
            c.set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
        }
        let producer: FutureProducer<SinkCtx> = c
            .create_with_context(SinkCtx(self.troubles.clone()))
            .map_err(|e| ConnectorError::Fatal(format!("creating the Kafka producer: {e}")))?;
        self.producer = Some(producer);
        Ok(None)
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        let producer = self.producer.clone().expect("written after open");
        let mut rejected = Vec::new();
        let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let topic: &str = match (&r.destination, &self.config.topic) {
                (Some(routed), _) => routed,
                (None, TopicSpec::Static(t)) => t,
                (None, TopicSpec::Field { field }) => match r.value.get(field) {
                    Some(Value::String(t)) if !t.is_empty() => t,
                    _ => {
                        rejected.push(Rejected {
                            index: i,
                            error: ConnectorError::Fatal(format!(
                                "field `{field}` (the topic) is missing or not a string"
                            )),
                        });
                        continue;
                    }
                },
            };
            let key = match &self.config.key {
                Some(field) => r.value.get(field).map(text_of),
                None => None,
            };
            let payload = self.payload(&r.value);
            let mut record: FutureRecord<'_, String, Vec<u8>> =
                FutureRecord::to(topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(ts) = r.timestamp_ms {
                record = record.timestamp(ts);
            }
            // A full local queue waits for deliveries to make room: memory
            // stays bounded by librdkafka's queue.buffering.max settings.
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((i, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        if !self.stopping.sleep(Duration::from_millis(5)).await {
                            return Err(stopping_error());
                        }
                    }
                    Err((e, _)) if refused(&e) => {
                        rejected.push(Rejected {
                            index: i,
                            error: ConnectorError::Fatal(e.to_string()),
                        });
                        break;
                    }
                    Err((e, _)) => {
                        return Err(ConnectorError::Retriable(format!(
                            "producing to {topic}: {e}"
                        )));
                    }
                }
            }
        }
        for (i, delivery) in pending {
            match self.delivered(delivery).await? {
                Ok(()) => {}
                Err(e) if refused(&e) => rejected.push(Rejected {
                    index: i,
                    error: ConnectorError::Fatal(format!("the broker refused the message: {e}")),
                }),
                Err(e) => {
                    return Err(ConnectorError::Retriable(format!(
                        "producing to Kafka at {}: {e}",
                        self.config.brokers
                    )));
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(rejected)
    }

    async fn commit(&mut self, _positions: &Positions) -> Result<(), ConnectorError> {
        // Every write already waited for its acknowledgements.
        Ok(())
    }

    /// Every write waited for its deliveries, so what is still queued
    /// belongs to a write that failed or was cut short by a stop: nothing of
    /// it was committed, and the source sends it again. It gets a second to
    /// be delivered, then is dropped rather than waited for (with the
    /// brokers gone that wait was the message timeout).
    async fn close(&mut self) {
        if let Some(producer) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if producer.flush(Duration::from_secs(1)).is_err() {
                    producer.purge(PurgeConfig::default().queue().inflight());
                    let _ = producer.flush(Duration::from_millis(100));
                }
            })
            .await;
        }
    }
}

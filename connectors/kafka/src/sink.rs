//! The Kafka sink: an idempotent producer (`acks=all`), ordered per key.
//!
//! `write` enqueues the batch and waits for the broker's acknowledgement of
//! every message of it, so it can report the ones the broker refused (too
//! large, invalid) by index; the others are durable when it returns, and
//! `commit` has nothing left to wait for but a final flush.

use std::time::Duration;

use async_trait::async_trait;
use ferry_api::{ConnectorError, Payload, Positions, Record, Rejected, Sink, Value};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::config::{KafkaSinkConfig, SinkFormat, TopicSpec, client_config};

pub(crate) struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Option<FutureProducer>,
}

impl KafkaSink {
    pub(crate) fn new(config: KafkaSinkConfig) -> Self {
        KafkaSink {
            config,
            producer: None,
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
    matches!(
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
        let producer: FutureProducer = c
            .create()
            .map_err(|e| ConnectorError::Fatal(format!("creating the Kafka producer: {e}")))?;
        self.producer = Some(producer);
        Ok(None)
    }

    async fn write(&mut self, batch: &[Record]) -> Result<Vec<Rejected>, ConnectorError> {
        let producer = self.producer.clone().expect("written after open");
        let mut rejected = Vec::new();
        let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let topic: &str = match &self.config.topic {
                TopicSpec::Static(t) => t,
                TopicSpec::Field { field } => match r.value.get(field) {
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
                        tokio::time::sleep(Duration::from_millis(5)).await;
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
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) if refused(&e) => rejected.push(Rejected {
                    index: i,
                    error: ConnectorError::Fatal(format!("the broker refused the message: {e}")),
                }),
                Ok(Err((e, _))) => {
                    return Err(ConnectorError::Retriable(format!("producing: {e}")));
                }
                Err(_) => {
                    return Err(ConnectorError::Retriable(
                        "the producer went away before delivering".into(),
                    ));
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

    async fn close(&mut self) {
        if let Some(producer) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = producer.flush(Duration::from_secs(10));
            })
            .await;
        }
    }
}

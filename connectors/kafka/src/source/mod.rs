//! The Kafka source: a consumer group member whose offsets are committed
//! only after the sink made the records durable.
//!
//! * **Start of a partition.** When a partition is assigned, it starts at the
//!   further of the group's committed offset and the position ferry knows to
//!   be durable (from the sink, when the sink keeps positions, or from ferry's
//!   offset store). Both are points below which everything is durable in the
//!   sink, so the further one is right: the sink's, when a crash came between
//!   the sink's commit and the group commit; the group's, when another
//!   process moved the partition on since.
//! * **Commits.** After each durable sink commit the engine calls
//!   [`Source::committed`]; the source commits those offsets to the group, for
//!   the partitions it still owns only. librdkafka's auto-commit and offset
//!   store are off.
//! * **Revocation.** Before partitions are revoked, the source has the
//!   runtime write and commit everything it handed over
//!   ([`SourceContext::make_durable_blocking`]), then
//!   commits the offsets of the revoked partitions to the group
//!   synchronously, while this process still owns them; a poll interrupted by
//!   a rebalance drops what it read of revoked partitions but had not handed
//!   over. So the next owner starts exactly after what this one wrote.
//! * **A dead owner.** A process killed between its sink's commit and its
//!   group commit leaves the group behind its sink. On assignment the source
//!   therefore also asks the sink for the positions of every writer sharing
//!   its storage ([`ferry_api::Sink::shared_positions`]) and starts after the
//!   furthest.
//!
//! * **Read once per assignment.** A partition the consumer reads again
//!   from an earlier offset (librdkafka resets it when the broker answers
//!   "offset out of range") hands nothing over twice: the polling thread
//!   skips the offsets this assignment read already, and says so (`Ahead`).
//! * **Polling ahead.** The consumer is polled on a thread of its own
//!   (librdkafka calls the rebalance callback from inside `poll`, and that
//!   callback does blocking broker calls), which reads and converts the next
//!   chunk while the runtime writes the last one, at most [`AHEAD`] chunks
//!   ahead. A rebalance can therefore happen while chunks are on their way;
//!   the [`Handover`] keeps that safe: chunks are handed to the runtime under
//!   it, a revocation first takes the partitions out of it (nothing more of
//!   theirs is handed over: the next owner reads it) and then has the
//!   runtime flush exactly as many items as were handed over.

//!
//! Files by job: `rebalance.rs` (what the group's callbacks do, and the
//! handover they share with the polling thread), `poll.rs` (the polling thread),
//! `convert.rs` (messages into records); this file is the `Source`.

mod convert;
pub(crate) use convert::partition_of;
mod poll;
mod rebalance;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ferry_api::{
    ConnectorError, Invalid, Partition, Payload, Position, Positions, Raw, Record, Retries, Source,
    SourceContext, SourceItem, Value,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::client::Troubles;
use crate::config::{Format, KafkaSourceConfig, Start, client_config};

use convert::{Converter, Read};
use poll::{Chunk, Poller, poll_ahead};
use rebalance::{GroupContext, GroupState};

type TopicPartition = (String, i32);

/// Chunks the polling thread reads ahead of the runtime.
const AHEAD: usize = 2;

/// How long closing waits for the consumer to leave its group.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

pub(crate) struct KafkaSource {
    config: KafkaSourceConfig,
    group: String,
    shared: Arc<GroupState>,
    consumer: Option<Arc<BaseConsumer<GroupContext>>>,
    /// Until the first poll starts the polling thread.
    converter: Option<Converter>,
    poller: Option<Poller>,
    /// The last chunk had partitions and read them up to their ends.
    caught_up: bool,
    /// The last chunk was caught up and brought records: if no chunk is
    /// ready at the next poll, it returns empty at once, so `--once` stops
    /// without waiting out a poll that finds nothing.
    report_idle: bool,
}

impl KafkaSource {
    pub(crate) fn new(config: KafkaSourceConfig, pipeline: &str, retries: Retries) -> Self {
        KafkaSource {
            group: config.group(pipeline),
            converter: Some(Converter {
                format: config.format,
                partitions: HashMap::new(),
                last: None,
            }),
            config,
            shared: Arc::new(GroupState::new(Troubles::new(pipeline, retries))),
            consumer: None,
            poller: None,
            caught_up: false,
            report_idle: false,
        }
    }

    fn report_consume_error(&self, e: &KafkaError) {
        let code = e.rdkafka_error_code();
        if Troubles::is_connection(code) {
            return;
        }
        let kind = code.map_or_else(|| "consume".to_string(), |c| format!("consume {c:?}"));
        let message = match code {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                format!(
                    "kafka: a topic of {} does not exist (deleted, or not created yet): {e}; \
                     the source reads it when it exists",
                    self.config.describe_topics()
                )
            }
            _ => format!("kafka: consuming: {e}; librdkafka keeps retrying"),
        };
        self.shared.troubles.report(&kind, &message);
    }

    /// Stops the polling thread (within one poll timeout).
    fn stop_polling(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Dropping the receiver also wakes a thread waiting to hand a chunk.
        self.poller.take().map(|p| p.thread)
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Not joined: the thread notices within one poll timeout and drops
        // its handle of the consumer.
        self.stop_polling();
    }
}

/// `topic/partition` positions → (topic, partition, next offset).
fn parse_position(p: &Position) -> Option<(TopicPartition, i64)> {
    let topic = p.partition.info.get("topic")?.as_str()?.to_string();
    let partition = i32::try_from(p.partition.info.get("partition")?.as_i64()?).ok()?;
    Some(((topic, partition), p.offset.as_i64()?))
}

#[async_trait]
impl Source for KafkaSource {
    async fn open(
        &mut self,
        committed: &Positions,
        ctx: &SourceContext,
    ) -> Result<(), ConnectorError> {
        let _ = self.shared.runtime.set(ctx.clone());
        {
            let mut durable = self.shared.durable.lock().expect("not poisoned");
            for p in committed.iter() {
                if let Some((tp, n)) = parse_position(p) {
                    durable.insert(tp, n);
                }
            }
        }
        let mut c = client_config(&self.config.brokers, &self.config.options);
        if !self.config.options.contains_key("fetch.queue.backoff.ms") {
            // librdkafka stops fetching a partition for this long once its
            // local queue passed `queued.min.messages`; at the default (1 s)
            // a consumer that drains a backlog fast sits idle for most of
            // each second (measured: 116k msgs/s against 1.2M without).
            c.set("fetch.queue.backoff.ms", "10");
        }
        c.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.config.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            );
        let consumer: BaseConsumer<GroupContext> = c
            .create_with_context(GroupContext {
                shared: self.shared.clone(),
            })
            .map_err(|e| ConnectorError::Fatal(format!("creating the Kafka consumer: {e}")))?;
        let topics = self.config.subscription();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConnectorError::Fatal(format!("subscribing to {topics:?}: {e}")))?;
        // Joined once the group assigns partitions (the rebalance callback
        // says so): a broker that cannot be reached shows as troubles first.
        tracing::info!(group = %self.group, topics = ?topics, "kafka: subscribed; joining the group");
        self.consumer = Some(Arc::new(consumer));
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        if self.poller.is_none() {
            let consumer = self.consumer.clone().expect("polled after open");
            let converter = self.converter.take().ok_or_else(|| {
                ConnectorError::Fatal("the Kafka source was polled after it closed".into())
            })?;
            let shared = self.shared.clone();
            let latest = self.config.start == Start::Latest;
            let (tx, chunks) = tokio::sync::mpsc::channel(AHEAD);
            let thread = std::thread::Builder::new()
                .name("ferry-kafka-poll".into())
                .spawn(move || poll_ahead(consumer, converter, shared, max, latest, tx))
                .map_err(|e| {
                    ConnectorError::Fatal(format!("starting the Kafka poll thread: {e}"))
                })?;
            self.poller = Some(Poller { chunks, thread });
        }
        let poller = self.poller.as_mut().expect("started");
        let chunk = if std::mem::take(&mut self.report_idle) {
            match poller.chunks.try_recv() {
                Ok(chunk) => Some(chunk),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(Vec::new()),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            poller.chunks.recv().await
        };
        let Some(chunk) = chunk else {
            return Err(ConnectorError::Fatal(
                "the Kafka poll thread stopped".into(),
            ));
        };
        if self.shared.lost.load(Ordering::SeqCst) {
            return Err(ConnectorError::Retriable(
                "the group took this process's partitions away (its session expired, e.g. after a long pause): \
                 starting again from the committed positions"
                    .into(),
            ));
        }
        let Chunk {
            items,
            error,
            caught_up,
            generation,
        } = chunk;
        // Checked before taking the handover lock, which the polling thread's
        // rebalance callback takes too.
        let mut items: Vec<SourceItem> = items.into_iter().map(Read::finish).collect();
        let mut handover = self.shared.handover.lock().expect("not poisoned");
        let current = self.shared.generation.load(Ordering::SeqCst);
        if current != generation {
            // Read before a rebalance: what belongs to partitions revoked
            // since is the next owner's to read — even if they came back
            // (assigned after this chunk was read), as the new assignment
            // starts them again after what is durable.
            items.retain(|it| {
                parse_position(it.position()).is_some_and(|(tp, _)| {
                    handover
                        .assigned
                        .get(&tp)
                        .is_some_and(|&since| since <= generation)
                })
            });
        }
        handover.handed += items.len() as u64;
        drop(handover);
        self.caught_up = caught_up && current == generation;
        self.report_idle = self.caught_up && !items.is_empty();
        if let Some(e) = error {
            // Broker trouble shows here as well as in the error callback;
            // librdkafka keeps retrying, so does the source.
            self.report_consume_error(&e);
        }
        Ok(items)
    }

    /// Caught up once partitions are assigned and each was read up to its
    /// high watermark: joining a group takes seconds, and `--once` must not
    /// stop before it has even started reading, nor between two fetches.
    fn idle(&self) -> bool {
        self.caught_up
    }

    /// Commits the durable offsets of the partitions still owned.
    async fn committed(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let mut durable = self.shared.durable.lock().expect("not poisoned");
        let handover = self.shared.handover.lock().expect("not poisoned");
        let mut tpl = TopicPartitionList::new();
        for p in positions.iter() {
            if let Some((tp, n)) = parse_position(p) {
                if handover.assigned.contains_key(&tp) && durable.get(&tp) != Some(&n) {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(n));
                }
                durable.insert(tp, n);
            }
        }
        drop((durable, handover));
        if tpl.count() > 0 {
            consumer.commit(&tpl, CommitMode::Async).map_err(|e| {
                ConnectorError::Retriable(format!("committing offsets to the group: {e}"))
            })?;
        }
        Ok(())
    }

    /// Leaves the group, but does not wait for ever: with the coordinator
    /// gone, librdkafka keeps a commit waiting for it up to the session
    /// timeout (45 s by default) and will not close before. Past
    /// [`CLOSE_LIMIT`] the consumer is left to finish on its own thread; what
    /// it would commit is durable with the sink's data already, and it owns
    /// no partition any more (the revocation ran first).
    async fn close(&mut self) {
        let thread = self.stop_polling();
        if let Some(consumer) = self.consumer.take() {
            // Leaving the group runs the revocation (a bounded commit), on
            // this thread once the polling thread let go of the consumer.
            let leave = tokio::task::spawn_blocking(move || {
                if let Some(thread) = thread {
                    let _ = thread.join();
                }
                drop(consumer)
            });
            if tokio::time::timeout(CLOSE_LIMIT, leave).await.is_err() {
                self.shared.troubles.report(
                    "close",
                    &format!(
                        "kafka: the consumer did not leave group {} within {CLOSE_LIMIT:?} \
                         (is the coordinator gone?); not waiting for it",
                        self.group
                    ),
                );
            }
        }
    }
}

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
//!   runtime write and commit everything it handed over ([`Flush`]), then
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
//! * **Polling ahead.** The consumer is polled on a thread of its own
//!   (librdkafka calls the rebalance callback from inside `poll`, and that
//!   callback does blocking broker calls), which reads and converts the next
//!   chunk while the runtime writes the last one, at most [`AHEAD`] chunks
//!   ahead. A rebalance can therefore happen while chunks are on their way;
//!   the [`Gate`] keeps that safe: chunks are handed to the runtime under
//!   it, a revocation first takes the partitions out of it (nothing more of
//!   theirs is handed over: the next owner reads it) and then has the
//!   runtime flush exactly as many items as were handed over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ferry_api::{
    ConnectorError, Flush, Invalid, Partition, Payload, Position, Positions, Raw, Record, Retries,
    Source, SourceItem, Value,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::client::Troubles;
use crate::config::{Format, KafkaSourceConfig, Start, client_config};

type Tp = (String, i32);

/// Chunks the polling thread reads ahead of the runtime.
const AHEAD: usize = 2;

/// What the partitions owned and the chunks handed over change under, so
/// that a revocation knows exactly what the runtime was given of them.
#[derive(Default)]
struct Gate {
    /// The partitions this member owns now, with the rebalance generation
    /// that assigned them.
    assigned: HashMap<Tp, u64>,
    /// Items handed to the runtime since `open` ([`Flush::blocking`]).
    handed: u64,
}

/// What the consumer's rebalance callback, the polling thread and the
/// source share.
struct Shared {
    /// The next offset to read of each partition, known durable in the sink.
    durable: Mutex<HashMap<Tp, i64>>,
    gate: Mutex<Gate>,
    /// Bumped (under the gate) by every rebalance: a chunk read in an older
    /// generation is checked against the partitions owned when handed over,
    /// and the poll in progress stops.
    generation: AtomicU64,
    /// The next offset this member reads of each owned partition, once
    /// known (the start offset it assigned, then past each message read).
    /// The polling thread's own (the callback runs on it too).
    next: Mutex<HashMap<Tp, i64>>,
    /// The source is closing: the polling thread stops.
    closing: AtomicBool,
    /// Asks the runtime to make durable what the source handed over.
    flush: OnceLock<Flush>,
    troubles: Troubles,
    /// The first assignment came: this member is in the group.
    joined: AtomicBool,
    /// The group took partitions away without a revocation (this member's
    /// session expired): what is in the pipeline may already be another
    /// member's to write.
    lost: AtomicBool,
}

/// How long a rebalance waits for the runtime's flush; well within the
/// group's default rebalance timeout (`max.poll.interval.ms`, 5 minutes).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

impl Shared {
    fn new(troubles: Troubles) -> Shared {
        Shared {
            durable: Mutex::default(),
            gate: Mutex::default(),
            generation: AtomicU64::default(),
            next: Mutex::default(),
            closing: AtomicBool::default(),
            flush: OnceLock::new(),
            troubles,
            joined: AtomicBool::default(),
            lost: AtomicBool::default(),
        }
    }

    /// Has the runtime write and commit all it was handed, and records what
    /// became durable. `None` when that could not be done (the pipeline is
    /// stopping or failing): the durable map is then all there is to know.
    fn flush(&self, why: &str) -> Option<Vec<Positions>> {
        let flush = self.flush.get()?;
        let handed = self.gate.lock().expect("not poisoned").handed;
        match flush.blocking(handed, FLUSH_TIMEOUT) {
            Ok(flushed) => {
                let mut durable = self.durable.lock().expect("not poisoned");
                for p in flushed.committed.iter() {
                    if let Some((tp, n)) = parse_position(p) {
                        durable.insert(tp, n);
                    }
                }
                Some(flushed.shared)
            }
            Err(e) => {
                tracing::info!("kafka: no flush {why}: {e}");
                None
            }
        }
    }
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.troubles.client_error(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.shared.troubles.log(level, facility, message);
    }
}

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if !self.shared.joined.swap(true, Ordering::SeqCst) {
                    tracing::info!(partitions = tpl.count(), "kafka: joined the group");
                }
                let shared = self.shared.flush("on assignment").unwrap_or_default();
                let mut durable = self.shared.durable.lock().expect("not poisoned").clone();
                // Other writers' positions: a previous owner that died after
                // its sink's commit but before its group commit.
                for positions in &shared {
                    for p in positions.iter() {
                        if let Some((tp, n)) = parse_position(p) {
                            let known = durable.entry(tp).or_insert(n);
                            *known = (*known).max(n);
                        }
                    }
                }
                let group = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
                    Ok(group) => group,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka: reading the group's committed offsets");
                        TopicPartitionList::new()
                    }
                };
                let partitions = tps(tpl);
                for (topic, partition) in &partitions {
                    let committed =
                        group
                            .find_partition(topic, *partition)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(n) => Some(n),
                                _ => None,
                            });
                    let ours = durable.get(&(topic.clone(), *partition)).copied();
                    let start = committed.max(ours);
                    if let Some(start) = start {
                        let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(start));
                    }
                    let mut next = self.shared.next.lock().expect("not poisoned");
                    match start {
                        Some(n) => next.insert((topic.clone(), *partition), n),
                        None => next.remove(&(topic.clone(), *partition)),
                    };
                    tracing::info!(topic, partition, ?committed, durable = ?ours, "kafka: partition assigned");
                }
                let mut gate = self.shared.gate.lock().expect("not poisoned");
                let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                gate.assigned
                    .extend(partitions.into_iter().map(|tp| (tp, generation)));
                drop(gate);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "kafka: assigning partitions");
                }
            }
            _ => {
                let revoked = if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tps(tpl)
                } else {
                    tracing::warn!(?err, "kafka: rebalance error; giving up every partition");
                    let gate = self.shared.gate.lock().expect("not poisoned");
                    gate.assigned.keys().cloned().collect()
                };
                // From here on nothing more of these partitions is handed
                // over (what was read ahead of them is dropped: the next
                // owner reads it), and nothing more is committed for them
                // but what is committed below.
                let mut gate = self.shared.gate.lock().expect("not poisoned");
                for tp in &revoked {
                    gate.assigned.remove(tp);
                }
                self.shared.generation.fetch_add(1, Ordering::SeqCst);
                drop(gate);
                if consumer.assignment_lost() {
                    // Not ours any more: writing what the pipeline holds
                    // could duplicate the new owner's records, and the
                    // group refuses our commits. The source fails instead
                    // and the pipeline starts again from what is committed
                    // (a transactional sink discards the rest).
                    tracing::warn!(partitions = ?revoked, "kafka: partitions lost (the session expired)");
                    self.shared.lost.store(true, Ordering::SeqCst);
                    let result = if cooperative {
                        consumer.incremental_unassign(tpl)
                    } else {
                        consumer.unassign()
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "kafka: giving up lost partitions");
                    }
                    return;
                }
                // Everything handed over for these partitions becomes
                // durable, then is committed while they are still ours
                // (in the group's eyes: the revocation is not complete yet).
                self.shared.flush("before revocation");
                let durable = self.shared.durable.lock().expect("not poisoned").clone();
                let mut commit = TopicPartitionList::new();
                for tp in &revoked {
                    if let Some(n) = durable.get(tp) {
                        let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(*n));
                    }
                }
                if commit.count() > 0
                    && let Err(e) = commit_within(consumer, &commit, &self.shared.closing)
                {
                    // Safe all the same: the positions are durable with
                    // the sink's data (or in ferry's offset store), and an
                    // assignment starts after the further of those and
                    // the group's.
                    tracing::warn!(partitions = ?revoked, "kafka: committing offsets of revoked partitions: {e}");
                }
                let mut next = self.shared.next.lock().expect("not poisoned");
                for tp in &revoked {
                    next.remove(tp);
                }
                drop(next);
                tracing::info!(partitions = ?revoked, "kafka: partitions revoked");
                let result =
                    if cooperative && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                        consumer.incremental_unassign(tpl)
                    } else {
                        consumer.unassign()
                    };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "kafka: revoking partitions");
                }
            }
        }
    }
}

/// How long closing waits for the consumer to leave its group.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// How long a revocation waits for the group to confirm its commit: while
/// running, and once the source is closing (ferry stopping, or the
/// pipeline starting again).
const REVOKE_COMMIT_LIMIT: Duration = Duration::from_secs(30);
const REVOKE_COMMIT_LIMIT_CLOSING: Duration = Duration::from_secs(5);

/// Commits `offsets` and waits for the coordinator's answer, but not for
/// ever: rdkafka's synchronous commit has no timeout, and with the
/// coordinator gone it held a stopping source for 45 s
/// (`WaitingForCoordinator`). The answer comes on a queue of its own,
/// polled in slices so that a close during the wait shortens it.
fn commit_within(
    consumer: &BaseConsumer<Ctx>,
    offsets: &TopicPartitionList,
    closing: &AtomicBool,
) -> Result<(), String> {
    use rdkafka::bindings as rd;
    let started = std::time::Instant::now();
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is a live client for the whole call (borrowed), the
    // queue is made and destroyed here, and librdkafka copies `offsets`
    // before `rd_kafka_commit_queue` returns; an answer that comes after
    // the queue is destroyed is dropped by librdkafka (the request holds
    // its own reference to the queue).
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let err = rd::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        let result = if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(rdkafka::error::RDKafkaErrorCode::from(err).to_string())
        } else {
            loop {
                let limit = if closing.load(Ordering::SeqCst) {
                    REVOKE_COMMIT_LIMIT_CLOSING
                } else {
                    REVOKE_COMMIT_LIMIT
                };
                if started.elapsed() >= limit {
                    break Err(format!(
                        "no answer from the group coordinator within {limit:?}"
                    ));
                }
                let event = rd::rd_kafka_queue_poll(queue, 100);
                if event.is_null() {
                    continue;
                }
                let err = rd::rd_kafka_event_error(event);
                rd::rd_kafka_event_destroy(event);
                break match err {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                    e => Err(rdkafka::error::RDKafkaErrorCode::from(e).to_string()),
                };
            }
        };
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

/// Turns messages into records; lives on the polling thread.
struct Converter {
    format: Format,
    partitions: HashMap<Tp, Arc<Partition>>,
    /// The partition of the last message: (topic, partition number).
    last: Option<(Tp, Arc<Partition>)>,
}

fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

impl Converter {
    /// The partition of a message. Messages come in runs of one partition
    /// (a fetched batch), so the last one answers most lookups without
    /// hashing or allocating.
    fn partition(&mut self, m: &BorrowedMessage<'_>) -> Arc<Partition> {
        if let Some(((topic, p), partition)) = &self.last
            && *p == m.partition()
            && topic == m.topic()
        {
            return partition.clone();
        }
        let partition = self
            .partitions
            .entry((m.topic().to_string(), m.partition()))
            .or_insert_with(|| {
                Arc::new(Partition {
                    key: format!("{}/{}", m.topic(), m.partition()),
                    info: serde_json::json!({"topic": m.topic(), "partition": m.partition()}),
                })
            })
            .clone();
        self.last = Some(((m.topic().to_string(), m.partition()), partition.clone()));
        partition
    }

    fn convert(&mut self, m: &BorrowedMessage<'_>) -> Read {
        let partition = self.partition(m);
        // The offset to resume after this message.
        let position = Position {
            partition,
            offset: Value::from(m.offset() + 1),
        };
        let value = match (m.payload(), self.format) {
            // A tombstone (no payload at all).
            (None, _) => Value::Null,
            // Checked on the source's task (see `Read`).
            (Some(p), Format::Json) => return Read::Json(Meta::of(m), position, p.to_vec()),
            (Some(p), Format::Text) => match std::str::from_utf8(p) {
                Ok(s) => Value::String(s.to_string()),
                Err(e) => {
                    let error = format!("not UTF-8 text: {e}");
                    return Read::Item(SourceItem::Invalid(invalid(p, error, position)));
                }
            },
            (Some(p), Format::Bytes) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(p))
            }
        };
        Read::Item(SourceItem::Record(
            Meta::of(m).record(value.into(), position),
        ))
    }
}

/// What a record keeps of its message beside the value.
struct Meta {
    key: Option<Value>,
    timestamp_ms: Option<i64>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of(m: &BorrowedMessage<'_>) -> Meta {
        Meta {
            key: m.key().map(text_or_base64),
            timestamp_ms: m.timestamp().to_millis(),
            headers: m.headers().map(headers_of).unwrap_or_default(),
        }
    }

    fn record(self, value: Payload, position: Position) -> Record {
        let mut r = Record::new(value, position);
        r.key = self.key;
        r.timestamp_ms = self.timestamp_ms;
        r.headers = self.headers;
        r
    }
}

/// A message's headers. rdkafka's own accessors panic on a header name
/// that is not UTF-8 (`CStr::to_str().unwrap()`), and a producer may send
/// any bytes: names are read here with invalid bytes replaced instead.
fn headers_of(headers: &BorrowedHeaders) -> Vec<(String, Vec<u8>)> {
    use rdkafka::bindings as rd;
    // SAFETY: a `BorrowedHeaders` is a view of librdkafka's native headers
    // (rdkafka itself casts between the two pointers); the names and values
    // librdkafka hands out live as long as the message, and are copied
    // before this returns.
    let native = headers as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    (0..headers.count())
        .filter_map(|idx| unsafe {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0usize;
            let err = rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size);
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            let value = if value.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(value as *const u8, size).to_vec()
            };
            Some((name, value))
        })
        .collect()
}

/// The whole message is kept (the broker bounds its size), so that its
/// dead letter can be replayed.
fn invalid(raw: &[u8], error: String, position: Position) -> Invalid {
    Invalid {
        raw: Raw::of(raw),
        error,
        position,
    }
}

/// A message as the polling thread leaves it. JSON is checked on the
/// source's task, not on the polling thread: the thread, which librdkafka
/// already keeps busy, only reads and copies, and the check runs beside it
/// on another core.
enum Read {
    Item(SourceItem),
    /// A record whose value is still the message's bytes.
    Json(Meta, Position, Vec<u8>),
}

impl Read {
    fn position(&self) -> &Position {
        match self {
            Read::Item(item) => item.position(),
            Read::Json(_, position, _) => position,
        }
    }

    /// The item, its JSON checked (and handed over as text: parsed only if
    /// the sink needs the value; a JSON-lines file or a topic does not).
    fn finish(self) -> SourceItem {
        let (meta, position, bytes) = match self {
            Read::Item(item) => return item,
            Read::Json(meta, position, bytes) => (meta, position, bytes),
        };
        let checked = match String::from_utf8(bytes) {
            Ok(text) => Payload::from_json(text)
                .map_err(|(e, text)| (format!("not JSON: {e}"), text.into_bytes())),
            Err(e) => Err((
                format!("not JSON: not UTF-8 text: {}", e.utf8_error()),
                e.into_bytes(),
            )),
        };
        match checked {
            Ok(value) => SourceItem::Record(meta.record(value, position)),
            Err((error, raw)) => SourceItem::Invalid(invalid(&raw, error, position)),
        }
    }
}

pub(crate) struct KafkaSource {
    config: KafkaSourceConfig,
    group: String,
    shared: Arc<Shared>,
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
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

/// The polling thread and the chunks it read ahead.
struct Poller {
    chunks: tokio::sync::mpsc::Receiver<Chunk>,
    thread: std::thread::JoinHandle<()>,
}

/// What one poll of the consumer read.
struct Chunk {
    items: Vec<Read>,
    error: Option<KafkaError>,
    /// Every owned partition was read up to its high watermark.
    caught_up: bool,
    /// The rebalance generation the poll started in.
    generation: u64,
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
            shared: Arc::new(Shared::new(Troubles::new(pipeline, retries))),
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

/// The polling thread: reads chunks of up to `max` items until the source
/// closes, at most [`AHEAD`] chunks ahead of the runtime.
fn poll_ahead(
    consumer: Arc<BaseConsumer<Ctx>>,
    mut converter: Converter,
    shared: Arc<Shared>,
    max: usize,
    latest: bool,
    chunks: tokio::sync::mpsc::Sender<Chunk>,
) {
    while !shared.closing.load(Ordering::SeqCst) {
        let chunk = poll_chunk(&consumer, &mut converter, &shared, max, latest);
        if chunks.blocking_send(chunk).is_err() {
            break;
        }
    }
}

/// One poll: up to `max` items, or what came within half a second.
fn poll_chunk(
    consumer: &BaseConsumer<Ctx>,
    converter: &mut Converter,
    shared: &Shared,
    max: usize,
    latest: bool,
) -> Chunk {
    let generation = shared.generation.load(Ordering::SeqCst);
    let mut items = Vec::with_capacity(max);
    let mut timeout = Duration::from_millis(500);
    let mut error = None;
    while items.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(m)) => items.push(converter.convert(&m)),
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
            None => break,
        }
        // A rebalance ran inside that poll.
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        timeout = Duration::ZERO;
    }
    let rebalanced = shared.generation.load(Ordering::SeqCst) != generation;
    let gate = shared.gate.lock().expect("not poisoned");
    let mut next = shared.next.lock().expect("not poisoned");
    // Items come in runs of one partition, in offset order: the end of each
    // run moves that partition's next offset.
    let mut ends: Vec<&Position> = Vec::new();
    for item in &items {
        let p = item.position();
        match ends.last_mut() {
            Some(last) if Arc::ptr_eq(&last.partition, &p.partition) => *last = p,
            _ => ends.push(p),
        }
    }
    for p in ends {
        if let Some((tp, n)) = parse_position(p)
            && gate.assigned.contains_key(&tp)
        {
            next.insert(tp, n);
        }
    }
    // Caught up: every owned partition read up to the high watermark of the
    // last fetch (an empty poll alone proves nothing: fetches of many
    // partitions come and go). Chunks reach the runtime in order, so when
    // this one does, everything read before it has too.
    let caught_up = error.is_none()
        && !rebalanced
        && !gate.assigned.is_empty()
        && gate
            .assigned
            .keys()
            .all(|tp| match cached_watermarks(consumer, tp) {
                Some((lo, hi)) if hi >= 0 => next.get(tp).map_or(hi <= lo || latest, |&n| n >= hi),
                // Not fetched yet.
                _ => false,
            });
    drop((next, gate));
    Chunk {
        items,
        error,
        caught_up,
        generation,
    }
}

/// The low and high watermarks of a partition as of the consumer's last
/// fetch response: no broker round trip (rdkafka wraps only the one that
/// asks the broker). `None` when librdkafka has none.
fn cached_watermarks(consumer: &BaseConsumer<Ctx>, (topic, partition): &Tp) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic.as_str()).ok()?;
    let (mut lo, mut hi) = (-1i64, -1i64);
    // SAFETY: a live client handle, a NUL-terminated topic name that
    // outlives the call, and two valid out-pointers; the call only reads
    // librdkafka's own cache under its lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            *partition,
            &mut lo,
            &mut hi,
        )
    };
    (err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).then_some((lo, hi))
}

/// `topic/partition` positions → (topic, partition, next offset).
fn parse_position(p: &Position) -> Option<(Tp, i64)> {
    let topic = p.partition.info.get("topic")?.as_str()?.to_string();
    let partition = i32::try_from(p.partition.info.get("partition")?.as_i64()?).ok()?;
    Some(((topic, partition), p.offset.as_i64()?))
}

#[async_trait]
impl Source for KafkaSource {
    async fn open(&mut self, committed: &Positions) -> Result<(), ConnectorError> {
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
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx {
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
        // Checked before taking the gate, which the polling thread's
        // rebalance callback takes too.
        let mut items: Vec<SourceItem> = items.into_iter().map(Read::finish).collect();
        let mut gate = self.shared.gate.lock().expect("not poisoned");
        let current = self.shared.generation.load(Ordering::SeqCst);
        if current != generation {
            // Read before a rebalance: what belongs to partitions revoked
            // since is the next owner's to read — even if they came back
            // (assigned after this chunk was read), as the new assignment
            // starts them again after what is durable.
            items.retain(|it| {
                parse_position(it.position()).is_some_and(|(tp, _)| {
                    gate.assigned
                        .get(&tp)
                        .is_some_and(|&since| since <= generation)
                })
            });
        }
        gate.handed += items.len() as u64;
        drop(gate);
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
        let gate = self.shared.gate.lock().expect("not poisoned");
        let mut tpl = TopicPartitionList::new();
        for p in positions.iter() {
            if let Some((tp, n)) = parse_position(p) {
                if gate.assigned.contains_key(&tp) && durable.get(&tp) != Some(&n) {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(n));
                }
                durable.insert(tp, n);
            }
        }
        drop((durable, gate));
        if tpl.count() > 0 {
            consumer.commit(&tpl, CommitMode::Async).map_err(|e| {
                ConnectorError::Retriable(format!("committing offsets to the group: {e}"))
            })?;
        }
        Ok(())
    }

    fn attach_flush(&mut self, flush: Flush) {
        let _ = self.shared.flush.set(flush);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_that_are_not_utf8_do_not_panic() {
        use rdkafka::bindings as rd;
        // SAFETY: headers made and freed here; the cast is the one rdkafka
        // makes from native headers to `BorrowedHeaders`.
        unsafe {
            let native = rd::rd_kafka_headers_new(2);
            let (bad, ok) = (b"k\xfe", b"trace");
            rd::rd_kafka_header_add(native, bad.as_ptr().cast(), 2, b"v1".as_ptr().cast(), 2);
            rd::rd_kafka_header_add(native, ok.as_ptr().cast(), 5, std::ptr::null(), 0);
            let borrowed = &*(native as *const BorrowedHeaders);
            assert_eq!(
                headers_of(borrowed),
                [
                    ("k\u{fffd}".to_string(), b"v1".to_vec()),
                    ("trace".to_string(), Vec::new())
                ]
            );
            rd::rd_kafka_headers_destroy(native);
        }
    }
}

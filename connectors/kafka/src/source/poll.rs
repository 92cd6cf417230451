//! The polling thread: reads chunks ahead of the runtime.

use super::*;

/// The polling thread and the chunks it read ahead.
pub(super) struct Poller {
    pub(super) chunks: tokio::sync::mpsc::Receiver<Chunk>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

/// What one poll of the consumer read.
pub(super) struct Chunk {
    pub(super) items: Vec<Read>,
    pub(super) error: Option<KafkaError>,
    /// Every owned partition was read up to its high watermark.
    pub(super) caught_up: bool,
    /// The rebalance generation the poll started in.
    pub(super) generation: u64,
}

/// The polling thread: reads chunks of up to `max` items until the source
/// closes, at most [`AHEAD`] chunks ahead of the runtime.
pub(super) fn poll_ahead(
    consumer: Arc<BaseConsumer<GroupContext>>,
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
pub(super) fn poll_chunk(
    consumer: &BaseConsumer<GroupContext>,
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
pub(super) fn cached_watermarks(
    consumer: &BaseConsumer<GroupContext>,
    (topic, partition): &TopicPartition,
) -> Option<(i64, i64)> {
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

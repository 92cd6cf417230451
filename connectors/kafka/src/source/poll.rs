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
    shared: Arc<GroupState>,
    max: usize,
    latest: bool,
    chunks: tokio::sync::mpsc::Sender<Chunk>,
) {
    let mut ahead = Ahead::default();
    while !shared.closing.load(Ordering::SeqCst) {
        let chunk = poll_chunk(&consumer, &mut converter, &mut ahead, &shared, max, latest);
        if chunks.blocking_send(chunk).is_err() {
            break;
        }
    }
}

/// One poll: up to `max` items, or what came within half a second.
pub(super) fn poll_chunk(
    consumer: &BaseConsumer<GroupContext>,
    converter: &mut Converter,
    ahead: &mut Ahead,
    shared: &GroupState,
    max: usize,
    latest: bool,
) -> Chunk {
    let generation = shared.generation.load(Ordering::SeqCst);
    let mut items = Vec::with_capacity(max);
    let mut timeout = Duration::from_millis(500);
    let mut error = None;
    // A rebalance came since the last chunk (the chunk ends at one): the
    // partitions start over.
    ahead.assignment(generation);
    while items.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                if ahead.take(m.topic(), m.partition(), m.offset()) {
                    items.push(converter.convert(&m));
                }
            }
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
    ahead.report_rewinds();
    let rebalanced = shared.generation.load(Ordering::SeqCst) != generation;
    let handover = shared.handover.lock().expect("not poisoned");
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
            && handover.assigned.contains_key(&tp)
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
        && !handover.assigned.is_empty()
        && handover
            .assigned
            .keys()
            .all(|tp| match cached_watermarks(consumer, tp) {
                Some((lo, hi)) if hi >= 0 => next.get(tp).map_or(hi <= lo || latest, |&n| n >= hi),
                // Not fetched yet.
                _ => false,
            });
    drop((next, handover));
    Chunk {
        items,
        error,
        caught_up,
        generation,
    }
}

/// What the consumer read of each partition in the current assignment, so
/// that a partition read again hands nothing over twice. librdkafka goes
/// back when the broker answers a fetch with "offset out of range" and
/// `auto.offset.reset` is `earliest` (seen with a broker whose high
/// watermark lagged under load: a partition read up to 1017 started again
/// at 0, and the runtime was handed those records already). Only offsets
/// this assignment read are skipped: a start beyond the log (a topic
/// deleted and created again) that resets to the beginning reads the new
/// records, as before.
#[derive(Default)]
pub(super) struct Ahead {
    /// The rebalance generation the spans are of.
    generation: u64,
    /// Per partition: the first offset read in this assignment and the next.
    spans: Vec<(TopicPartition, i64, i64)>,
    /// Index of the span the last message matched (messages come in runs).
    last: usize,
    /// Per partition: the first offset read again and how many were.
    rewinds: Vec<(TopicPartition, i64, i64, u64)>,
}

impl Ahead {
    /// Forgets what was read when a rebalance came since.
    pub(super) fn assignment(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.spans.clear();
            self.last = 0;
        }
    }

    fn span(&mut self, topic: &str, partition: i32) -> Option<&mut (TopicPartition, i64, i64)> {
        let matches = |((t, p), ..): &(TopicPartition, i64, i64)| *p == partition && t == topic;
        if !self.spans.get(self.last).is_some_and(matches) {
            self.last = self.spans.iter().position(matches)?;
        }
        self.spans.get_mut(self.last)
    }

    /// Whether the message at `offset` is to be handed over: not when this
    /// assignment read it already.
    pub(super) fn take(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some((_, first, next)) = self.span(topic, partition) else {
            self.spans
                .push(((topic.to_string(), partition), offset, offset + 1));
            self.last = self.spans.len() - 1;
            return true;
        };
        if offset >= *next {
            *next = offset + 1;
            return true;
        }
        if offset < *first {
            // Before anything this assignment read: not a repeat.
            return true;
        }
        let next = *next;
        match self
            .rewinds
            .iter_mut()
            .find(|((t, p), ..)| *p == partition && t == topic)
        {
            Some((.., count)) => *count += 1,
            None => self
                .rewinds
                .push(((topic.to_string(), partition), offset, next, 1)),
        }
        false
    }

    pub(super) fn report_rewinds(&mut self) {
        for ((topic, partition), from, next, count) in self.rewinds.drain(..) {
            tracing::warn!(
                topic,
                partition,
                "kafka: the consumer went back to offset {from} after it had read up to {}: \
                 skipped {count} records it had read already (an offset reset? see librdkafka's OFFSET line)",
                next - 1
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_read_again_from_an_earlier_offset_hands_nothing_twice() {
        let mut ahead = Ahead::default();
        ahead.assignment(1);
        for offset in 0..3 {
            assert!(ahead.take("t", 1, offset));
        }
        assert!(ahead.take("t", 0, 10));
        // A reset to the beginning: what was read is skipped, the rest not.
        assert!(!ahead.take("t", 1, 0));
        assert!(!ahead.take("t", 1, 1));
        assert!(!ahead.take("t", 1, 2));
        assert!(ahead.take("t", 1, 3));
        // Below what this assignment read (a start beyond the log that
        // reset to the beginning): new records, handed over.
        assert!(ahead.take("t", 0, 0));
        assert!(!ahead.take("t", 0, 10));
        assert_eq!(ahead.rewinds.len(), 2);
        assert_eq!(ahead.rewinds[0], (("t".to_string(), 1), 0, 3, 3));
        // A rebalance: the partitions start over.
        ahead.assignment(2);
        assert!(ahead.take("t", 1, 0));
    }
}

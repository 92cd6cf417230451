//! The group's rebalance callbacks and what they share with the polling
//! thread and the source (see the module doc of `source`).

use super::*;

/// What the partitions owned and the chunks handed over change under, so
/// that a revocation knows exactly what the runtime was given of them.
#[derive(Default)]
pub(super) struct Handover {
    /// The partitions this member owns now, with the rebalance generation
    /// that assigned them.
    pub(super) assigned: HashMap<TopicPartition, u64>,
    /// Items handed to the runtime since `open`
    /// ([`SourceContext::make_durable_blocking`]).
    pub(super) handed: u64,
}

/// What the consumer's rebalance callback, the polling thread and the
/// source share.
pub(super) struct GroupState {
    /// The next offset to read of each partition, known durable in the sink.
    pub(super) durable: Mutex<HashMap<TopicPartition, i64>>,
    pub(super) handover: Mutex<Handover>,
    /// Bumped (under the handover lock) by every rebalance: a chunk read in an older
    /// generation is checked against the partitions owned when handed over,
    /// and the poll in progress stops.
    pub(super) generation: AtomicU64,
    /// The next offset this member reads of each owned partition, once
    /// known (the start offset it assigned, then past each message read).
    /// The polling thread's own (the callback runs on it too).
    pub(super) next: Mutex<HashMap<TopicPartition, i64>>,
    /// The source is closing: the polling thread stops.
    pub(super) closing: AtomicBool,
    /// Asks the runtime to make durable what the source handed over.
    pub(super) runtime: OnceLock<SourceContext>,
    pub(super) troubles: Troubles,
    /// The first assignment came: this member is in the group.
    pub(super) joined: AtomicBool,
    /// The group took partitions away without a revocation (this member's
    /// session expired): what is in the pipeline may already be another
    /// member's to write.
    pub(super) lost: AtomicBool,
}

/// How long a rebalance waits for the runtime's flush; well within the
/// group's default rebalance timeout (`max.poll.interval.ms`, 5 minutes).
pub(super) const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

impl GroupState {
    pub(super) fn new(troubles: Troubles) -> GroupState {
        GroupState {
            durable: Mutex::default(),
            handover: Mutex::default(),
            generation: AtomicU64::default(),
            next: Mutex::default(),
            closing: AtomicBool::default(),
            runtime: OnceLock::new(),
            troubles,
            joined: AtomicBool::default(),
            lost: AtomicBool::default(),
        }
    }

    /// Has the runtime write and commit all it was handed, and records what
    /// became durable. `None` when that could not be done (the pipeline is
    /// stopping or failing): the durable map is then all there is to know.
    fn flush(&self, why: &str) -> Option<Vec<Positions>> {
        let runtime = self.runtime.get()?;
        let handed = self.handover.lock().expect("not poisoned").handed;
        match runtime.make_durable_blocking(handed, FLUSH_TIMEOUT) {
            Ok(flushed) => {
                let mut durable = self.durable.lock().expect("not poisoned");
                for p in flushed.committed.iter() {
                    if let Some((tp, n)) = parse_position(p) {
                        durable.insert(tp, n);
                    }
                }
                Some(flushed.held_by_sink)
            }
            Err(e) => {
                tracing::info!("kafka: no flush {why}: {e}");
                None
            }
        }
    }
}

pub(super) struct GroupContext {
    pub(super) shared: Arc<GroupState>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.troubles.client_error(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.shared.troubles.log(level, facility, message);
    }
}

pub(super) fn tps(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for GroupContext {
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
                self.assigned(consumer, tpl);
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
                let partial =
                    cooperative && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
                self.revoked(consumer, err, tpl);
                let result = if partial {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "kafka: giving up partitions");
                }
            }
        }
    }
}

impl GroupContext {
    /// Partitions come: each starts after the furthest of what the group
    /// committed, what this process knows durable and what other writers of
    /// the same sink storage hold; the start offsets are set in `tpl`.
    fn assigned(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if !self.shared.joined.swap(true, Ordering::SeqCst) {
            tracing::info!(partitions = tpl.count(), "kafka: joined the group");
        }
        let durable = self.known_durable();
        let group = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Ok(group) => group,
            Err(e) => {
                tracing::warn!(error = %e, "kafka: reading the group's committed offsets");
                TopicPartitionList::new()
            }
        };
        let partitions = tps(tpl);
        let mut next = self.shared.next.lock().expect("not poisoned");
        for (topic, partition) in &partitions {
            let committed =
                group
                    .find_partition(topic, *partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(n) => Some(n),
                        _ => None,
                    });
            let tp = (topic.clone(), *partition);
            let ours = durable.get(&tp).copied();
            let start = committed.max(ours);
            match start {
                Some(n) => {
                    let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(n));
                    next.insert(tp, n)
                }
                None => next.remove(&tp),
            };
            tracing::info!(topic, partition, ?committed, durable = ?ours, "kafka: partition assigned");
        }
        drop(next);
        let mut handover = self.shared.handover.lock().expect("not poisoned");
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        handover
            .assigned
            .extend(partitions.into_iter().map(|tp| (tp, generation)));
    }

    /// What this process knows to be durable of each partition, after the
    /// runtime flushed what it was handed: its own commits, and those of
    /// other writers sharing the sink's storage (a previous owner that died
    /// after its sink's commit but before its group commit).
    fn known_durable(&self) -> HashMap<TopicPartition, i64> {
        let shared = self.shared.flush("on assignment").unwrap_or_default();
        let mut durable = self.shared.durable.lock().expect("not poisoned").clone();
        for p in shared.iter().flat_map(Positions::iter) {
            if let Some((tp, n)) = parse_position(p) {
                let known = durable.entry(tp).or_insert(n);
                *known = (*known).max(n);
            }
        }
        durable
    }

    /// Partitions go (or, on a rebalance error, every partition): nothing
    /// more of theirs is handed over, what was handed is made durable and
    /// committed to the group while they are still ours. Lost partitions
    /// (the session expired) are not ours any more: nothing is committed and
    /// the source fails, to start again from what is committed.
    fn revoked(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &TopicPartitionList,
    ) {
        let mut handover = self.shared.handover.lock().expect("not poisoned");
        let revoked = if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
            tps(tpl)
        } else {
            tracing::warn!(?err, "kafka: rebalance error; giving up every partition");
            handover.assigned.keys().cloned().collect()
        };
        // From here on nothing more of these partitions is handed over
        // (what was read ahead of them is dropped: the next owner reads it).
        for tp in &revoked {
            handover.assigned.remove(tp);
        }
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        drop(handover);
        if consumer.assignment_lost() {
            // Writing what the pipeline holds could duplicate the new
            // owner's records, and the group refuses our commits. (A
            // transactional sink discards the rest at the restart.)
            tracing::warn!(partitions = ?revoked, "kafka: partitions lost (the session expired)");
            self.shared.lost.store(true, Ordering::SeqCst);
            return;
        }
        // Everything handed over for these partitions becomes durable, then
        // is committed while they are still ours (in the group's eyes: the
        // revocation is not complete yet).
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
            // Safe all the same: the positions are durable with the sink's
            // data (or in ferry's offset store), and an assignment starts
            // after the further of those and the group's.
            tracing::warn!(partitions = ?revoked, "kafka: committing offsets of revoked partitions: {e}");
        }
        let mut next = self.shared.next.lock().expect("not poisoned");
        for tp in &revoked {
            next.remove(tp);
        }
        drop(next);
        tracing::info!(partitions = ?revoked, "kafka: partitions revoked");
    }
}

/// How long a revocation waits for the group to confirm its commit: while
/// running, and once the source is closing (ferry stopping, or the
/// pipeline starting again).
pub(super) const REVOKE_COMMIT_LIMIT: Duration = Duration::from_secs(30);
pub(super) const REVOKE_COMMIT_LIMIT_CLOSING: Duration = Duration::from_secs(5);

/// Commits `offsets` and waits for the coordinator's answer, but not for
/// ever: rdkafka's synchronous commit has no timeout, and with the
/// coordinator gone it held a stopping source for 45 s
/// (`WaitingForCoordinator`). The answer comes on a queue of its own,
/// polled in slices so that a close during the wait shortens it.
pub(super) fn commit_within(
    consumer: &BaseConsumer<GroupContext>,
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
